#!/usr/bin/env bash
# Benchmark of runner's virtio-blk device (runner-vhost's BlockServer, served
# to QEMU over vhost-user-blk) against QEMU's own virtio-blk-device.
#
#   tests/bench/block.sh [--rounds N] [--size MB] [--write MB]
#
# For each backend and round: boot time of the minimal rootfs to the agent's
# ready line, then an initramfs guest that reads a SIZE MB random data disk
# with dd (1 MiB, O_DIRECT) and writes WRITE MB to it (O_DIRECT + fsync), into
# a throwaway overlay on both sides (ours / QEMU's snapshot=on). Prints the
# medians and the ours/qemu ratio. The driver is the ignored Rust test
# runner/vhost/tests/block_bench.rs.
#
# Needs: qemu-system-x86_64, cpio, gzip, debugfs (e2fsprogs), cargo; the guest
# kernel and rootfs from RUNNER_KERNEL / RUNNER_ROOTFS or the image cache
# (kernels/build.sh, rootfs/build.sh).
set -euo pipefail

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

rounds=3
size_mb=256
write_mb=64
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --size) size_mb="$2"; shift 2 ;;
        --write) write_mb="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "block.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "block.sh: error: $*" >&2; exit 1; }
log() { echo "block.sh: $*" >&2; }

for tool in qemu-system-x86_64 cpio gzip debugfs cargo; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[ "$write_mb" -le "$size_mb" ] || die "--write ($write_mb) must not exceed --size ($size_mb)"

cache="${RUNNER_CACHE:-$HOME/.cache/runner}"
kernel="${RUNNER_KERNEL:-$(ls -t "$cache"/kernels/*/vmlinux 2>/dev/null | head -n1 || true)}"
rootfs="${RUNNER_ROOTFS:-$(ls -t "$cache"/rootfs/minimal-*.ext4 2>/dev/null | head -n1 || true)}"
[ -n "$kernel" ] && [ -e "$kernel" ] ||
    die "no guest kernel: set RUNNER_KERNEL or run kernels/build.sh (scripts/test does both)"
[ -n "$rootfs" ] && [ -f "$rootfs" ] ||
    die "no rootfs: set RUNNER_ROOTFS or run rootfs/build.sh (scripts/test does both)"

work="$(mktemp -d /tmp/runner-block-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

log "building the dd initramfs (busybox from $rootfs)"
mkdir -p "$work/initrd/bin" "$work/initrd/proc" "$work/initrd/dev"
debugfs -R "dump /bin/busybox $work/initrd/bin/busybox" "$rootfs" 2>/dev/null
[ -s "$work/initrd/bin/busybox" ] || die "cannot extract /bin/busybox from $rootfs"
chmod 755 "$work/initrd/bin/busybox"
cat > "$work/initrd/init" <<'INIT'
#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t devtmpfs dev /dev
mb=64
for arg in $($bb cat /proc/cmdline); do
    case "$arg" in bench_write_mb=*) mb="${arg#bench_write_mb=}" ;; esac
done
up() { $bb cut -d' ' -f1 /proc/uptime; }
echo "BENCH read-start $(up)"
$bb dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null || echo "BENCH read failed"
echo "BENCH read-end $(up)"
echo "BENCH write-start $(up)"
$bb dd if=/dev/zero of=/dev/vda bs=1M count="$mb" oflag=direct conv=fsync 2>/dev/null || echo "BENCH write failed"
echo "BENCH write-end $(up)"
echo "BENCH done"
$bb reboot -f
INIT
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/initrd.gz")

log "creating a ${size_mb} MiB random data disk"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/data.img"

log "running $rounds round(s)"
cd "$ROOT"
RUNNER_KERNEL="$kernel" RUNNER_ROOTFS="$rootfs" \
    BLOCK_BENCH_INITRD="$work/initrd.gz" BLOCK_BENCH_DATA="$work/data.img" \
    BLOCK_BENCH_ROUNDS="$rounds" BLOCK_BENCH_WRITE_MB="$write_mb" \
    cargo test --release --quiet -p runner-vhost --test block_bench -- --ignored --nocapture
