#!/usr/bin/env bash
# Boots the nested tier's outer guest (L1) under QEMU TCG with emulated AMD
# SVM and runs a script there, as root, on a writable overlay of this
# machine's root file system (shared read-only over 9p).
#
#   tests/nested/run-l1.sh [--deadline SECS] [--npt 0|1] [--smp N] [--cpu MODEL] [--thread multi|single]
#                          [--stall SECS] [--no-anchor] OUT SCRIPT [ARGS...]
#
# OUT is a results folder shared writable with L1 (at /nested-out there);
# SCRIPT runs from it with ARGS. L1's console (the script's output) goes to stdout and OUT/console.log.
# The exit code is the script's; 124 if L1 did not finish within the
# deadline, or (with --stall) wrote nothing to OUT for that long (it is
# killed and its console tail printed); 125 if L1 failed before running the
# script. OUT is kept between runs, so a script can resume where a killed L1
# stopped.
set -euo pipefail

readonly here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deadline=1200 npt=0 smp=2 cpu=max thread=multi stall=0 anchor=1
while [ $# -gt 0 ]; do
    case "$1" in
        --deadline) deadline="$2"; shift 2 ;;
        --npt) npt="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        --thread) thread="$2"; shift 2 ;;
        --stall) stall="$2"; shift 2 ;;
        --no-anchor) anchor=; shift ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: run-l1.sh [--deadline S] [--npt 0|1] [--smp N] [--cpu MODEL] [--thread multi|single] [--stall SECS] [--no-anchor] OUT SCRIPT [ARGS...]" >&2; exit 2; }
out="$1" script="$2"; shift 2
command -v qemu-system-x86_64 >/dev/null ||
    { echo "nested: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)" >&2; exit 125; }
command -v python3 >/dev/null ||
    { echo "nested: python3 is missing (apt-get install python3)" >&2; exit 125; }
image="$("$here/l1-image.sh")"

mkdir -p "$out"
rm -f "$out/rc"
# The script runs inside L1 from the results folder (so L1 runs exactly this
# copy of it), in this directory, with its arguments quoted once more for
# the shell there.
cp "$script" "$out/script"
{
    echo "cd $(printf '%q' "$PWD")"
    # An idle VM held for L1's lifetime (kvm-anchor.py says why; --no-anchor
    # leaves it out, to compare).
    if [ -n "$anchor" ]; then
        echo "python3 $(printf '%q' "$here/kvm-anchor.py") >/nested-out/.anchor 2>&1 &"
        echo 'for i in $(seq 300); do grep -q holding /nested-out/.anchor && break; sleep 0.1; done'
        echo 'grep -q holding /nested-out/.anchor || { echo "nested: the KVM anchor did not start:"; cat /nested-out/.anchor; exit 1; }'
    fi
    printf 'exec /bin/bash /nested-out/script'
    printf ' %q' "$@"
    echo
} >"$out/run"

# QEMU's monitor (for l1-where.py) in a short path: a Unix socket path must
# fit in 108 bytes, and OUT may be deep.
monitor_dir=$(mktemp -d /tmp/runner-l1-XXXXXX)
trap 'rm -rf "$monitor_dir"' EXIT
# The host's root read-only (multidevs=remap keeps inode numbers unique
# across its mounts), the results folder writable.
qemu=(qemu-system-x86_64 -accel "tcg,thread=$thread" -cpu "$cpu" -smp "$smp" -m 6G
    -display none -no-reboot -nodefaults -monitor "unix:$monitor_dir/monitor,server,nowait"
    -chardev "stdio,id=console,signal=off,logfile=$out/console.log" -serial chardev:console
    -kernel "$image/vmlinuz" -initrd "$image/initrd.gz"
    -append "console=ttyS0 quiet panic=-1 nokaslr nested.npt=$npt"
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$(realpath "$out"),mount_tag=out,security_model=none")
# L1 itself sometimes freezes under TCG (soft lockups on every vCPU; see
# README.md): with --stall, a watchdog kills it when nothing in OUT has
# changed for that long, instead of waiting out the whole deadline.
timeout --kill-after=10 "$deadline" "${qemu[@]}" </dev/null &
l1=$!
stalled="$out/.stalled"
rm -f "$stalled"
if [ "$stall" -gt 0 ]; then
    (
        while sleep 10; do
            newest=$(find "$out" -type f ! -name console.log -printf '%T@\n' | sort -n | tail -n 1)
            if [ $(($(date +%s) - ${newest%.*})) -gt "$stall" ]; then
                # Where the vCPUs spin, by kernel symbol, before killing L1.
                python3 "$here/l1-where.py" "$monitor_dir/monitor" "$out/.kallsyms" \
                    >"$out/l1-stall.txt" 2>&1 || true
                touch "$stalled"
                kill "$l1" 2>/dev/null
                exit
            fi
        done
    ) &
    watchdog=$!
fi
set +e
wait "$l1"
status=$?
set -e
if [ -n "${watchdog:-}" ]; then kill "$watchdog" 2>/dev/null || true; fi
if [ -f "$stalled" ]; then
    echo "nested: L1 showed no sign of life for ${stall}s and was killed; its console ended with:" >&2
    tail -n 30 "$out/console.log" >&2
    if [ -s "$out/l1-stall.txt" ]; then
        echo "nested: where L1's vCPUs were (tests/nested/l1-where.py):" >&2
        cat "$out/l1-stall.txt" >&2
    fi
    exit 124
fi
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "nested: L1 did not finish within ${deadline}s; its console ended with:" >&2
    tail -n 30 "$out/console.log" >&2
    exit 124
fi
if [ ! -f "$out/rc" ]; then
    # l1-init names what it could not set up (no SVM, no 9p...) in one line.
    reason=$(grep -a 'l1-init: ' "$out/console.log" | tail -n 1 | tr -d '\r')
    echo "nested: L1 stopped before running the script: ${reason:-QEMU exit $status}" >&2
    echo "nested: L1's console ended with:" >&2
    tail -n 30 "$out/console.log" >&2
    exit 125
fi
exit "$(cat "$out/rc")"
