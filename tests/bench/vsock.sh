#!/usr/bin/env bash
# Real-driver check and benchmark of runner's vsock device (runner-vhost's
# VsockServer, served to QEMU over vhost-user) against vhost-device-vsock.
#
#   tests/bench/vsock.sh [--rounds N] [--size MB] [--only ours|theirs]
#
# Boots the guest kernel under QEMU TCG with a static test program as /init
# (runner/vhost/tests/guest/vsock_guest.rs), then drives it from the host through the
# hybrid-vsock Unix socket (tests/bench/vsock/host.py):
#   - functional checks: echo, connect to a closed guest port, guest-initiated
#     connection, SIZE MB echoed intact with a host half-close (must pass for
#     ours; run on vhost-device-vsock for information);
#   - measurements (both backends, alternating, N rounds): SIZE MB host->guest
#     and guest->host with CRC checks, SIZE MB echo, 64-byte round trip time,
#     connect+close rate. Medians and the ours/theirs ratio are printed; a
#     backend that fails a step keeps the measurements it finished.
#
# Needs: qemu-system-x86_64, python3, cpio, gzip, cargo, rustc; the guest kernel from
# RUNNER_KERNEL or kernels/build.sh's cache; vhost-device-vsock from
# VHOST_DEVICE_VSOCK, PATH or /work/tools/bin (else only ours is measured;
# install with `cargo install vhost-device-vsock --root /work/tools`).
set -euo pipefail

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly HERE="$ROOT/tests/bench/vsock"

rounds=3
size_mb=20
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --size) size_mb="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "vsock.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "vsock.sh: error: $*" >&2; exit 1; }
log() { echo "vsock.sh: $*" >&2; }

for tool in qemu-system-x86_64 python3 cpio gzip cargo rustc; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

kernel="${RUNNER_KERNEL:-}"
if [ -z "$kernel" ]; then
    kernel="$(ls -t "${RUNNER_CACHE:-$HOME/.cache/runner}"/kernels/*/vmlinux 2>/dev/null | head -n1 || true)"
fi
[ -n "$kernel" ] && [ -f "$kernel" ] ||
    die "no guest kernel: set RUNNER_KERNEL to a vmlinux or run kernels/build.sh first"

theirs_bin="${VHOST_DEVICE_VSOCK:-$(command -v vhost-device-vsock || true)}"
[ -z "$theirs_bin" ] && [ -x /work/tools/bin/vhost-device-vsock ] && theirs_bin=/work/tools/bin/vhost-device-vsock
backends="ours theirs"
if [ -n "$only" ]; then
    backends="$only"
elif [ -z "$theirs_bin" ]; then
    log "vhost-device-vsock not found; measuring ours only"
    backends="ours"
fi

work="$(mktemp -d /tmp/runner-vsock-bench.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- guest program and initramfs -------------------------------------------
# The same guest program as runner/vhost/tests/vsock_qemu.rs, built with plain
# rustc (it needs no crates).
log "building the guest program"
mkdir -p "$work/initrd/dev"
"${RUSTC:-rustc}" --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
    "$ROOT/runner/vhost/tests/guest/vsock_guest.rs" -o "$work/initrd/init" ||
    die "building the guest program failed"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -9 > "$work/initrd.gz")

log "building runner-vhost's vsock_server example"
(cd "$ROOT" && cargo build --release --quiet -p runner-vhost --example vsock_server) ||
    die "building vsock_server failed"
ours_bin="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/vsock_server"
[ -x "$ours_bin" ] || die "vsock_server not found at $ours_bin"

# --- one boot ---------------------------------------------------------------
# run_vm BACKEND TEST... : boots a VM with BACKEND serving vsock, runs host.py,
# prints host.py's output. Fails if any check fails or QEMU does not exit.
run_vm() {
    local backend="$1"; shift
    local dir="$work/run"
    rm -rf "$dir"; mkdir -p "$dir"
    if [ "$backend" = ours ]; then
        RUST_LOG="${RUST_LOG:-warn}" "$ours_bin" --socket "$dir/vu.sock" --uds "$dir/vm.vsock" --cid 3 \
            2> "$dir/server.log" &
    else
        "$theirs_bin" --guest-cid 3 --socket "$dir/vu.sock" --uds-path "$dir/vm.vsock" 2> "$dir/server.log" &
    fi
    local spid=$!
    pids+=("$spid")
    for _ in $(seq 100); do [ -S "$dir/vu.sock" ] && break; sleep 0.05; done
    [ -S "$dir/vu.sock" ] || die "$backend did not create its vhost-user socket: $(cat "$dir/server.log")"
    qemu-system-x86_64 -accel tcg -M microvm,acpi=off,memory-backend=mem -cpu max -m 256 -smp 1 \
        -object memory-backend-memfd,id=mem,size=256M,share=on \
        -chardev socket,id=vs,path="$dir/vu.sock" -device vhost-user-vsock-device,chardev=vs \
        -kernel "$kernel" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 panic=-1 rdinit=/init quiet" \
        -display none -serial file:"$dir/serial.log" -no-reboot &
    local qpid=$!
    pids+=("$qpid")
    local rc=0
    timeout 900 python3 "$HERE/host.py" "$dir/vm.vsock" "$size_mb" "$@" reboot || rc=$?
    for _ in $(seq 300); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$qpid" 2>/dev/null; then
        log "QEMU did not exit after the guest rebooted; killing it"
        kill "$qpid" 2>/dev/null || true
    fi
    wait "$qpid" 2>/dev/null || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        log "$backend: host checks failed (rc=$rc); serial log tail:"
        tail -n 20 "$dir/serial.log" >&2 || true
        log "$backend: server log tail:"
        tail -n 20 "$dir/server.log" >&2 || true
        return "$rc"
    fi
    if [ "$backend" = ours ] && [ -n "$(ls "$dir" | grep -v -e serial.log -e server.log)" ]; then
        die "ours left files behind: $(ls "$dir")"
    fi
}

results="$work/results.jsonl"
: > "$results"

if [[ " $backends " == *" ours "* ]]; then
    log "functional checks against the real driver (ours)"
    run_vm ours echo refused dial large
fi
if [[ " $backends " == *" theirs "* ]]; then
    # For comparison only: the same checks against vhost-device-vsock.
    log "functional checks against the real driver (vhost-device-vsock, informational)"
    if run_vm theirs echo refused dial large >&2; then
        log "vhost-device-vsock passed the functional checks"
    else
        log "vhost-device-vsock FAILED the functional checks (see above)"
    fi
fi

log "measuring: $rounds round(s), $size_mb MB transfers, backends: $backends"
failures=0
for round in $(seq "$rounds"); do
    for backend in $backends; do
        rc=0
        out="$(run_vm "$backend" sink source large-noclose rtt connects)" || rc=$?
        echo "$out" | sed "s/^/  [$backend #$round] /" >&2
        if [ "$rc" -ne 0 ]; then
            [ "$backend" = ours ] && die "ours failed in round $round"
            log "$backend failed in round $round; the measurements it finished still count"
            failures=$((failures + 1))
        fi
        echo "$out" | sed -n "s/^RESULTS //p" | python3 -c \
            "import json,sys; d=json.load(sys.stdin); d['backend']='$backend'; print(json.dumps(d))" >> "$results"
    done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
metrics = [("h2g_mbps", "host->guest MB/s", True), ("g2h_mbps", "guest->host MB/s", True),
           ("echo_mbps", "echo MB/s (each way)", True), ("rtt_us", "64 B round trip us", False),
           ("connect_ms", "connect+close ms", False)]
backends = sorted({r["backend"] for r in rows}, key=lambda b: b != "ours")
def median(b, m):
    vals = [r[m] for r in rows if r["backend"] == b and m in r]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)
print("%-24s" % "median (runs)" + "".join("%16s" % b for b in backends)
      + ("%14s" % "ours/theirs" if len(backends) == 2 else ""))
for m, label, higher in metrics:
    cells = [median(b, m) for b in backends]
    line = "%-24s" % label + "".join(
        "%16s" % ("%.1f (%d)" % c if c[0] is not None else "n/a (0)") for c in cells)
    if len(backends) == 2 and all(c[0] for c in cells):
        line += "%13.2fx %s" % (cells[0][0] / cells[1][0], "higher is better" if higher else "lower is better")
    print(line)
for r in rows:
    if "failed" in r:
        print("%s failed: %s" % (r["backend"], r["failed"]))
EOF
[ "$failures" -eq 0 ] || log "vhost-device-vsock failed $failures of $rounds measurement round(s)"
