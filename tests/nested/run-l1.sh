#!/usr/bin/env bash
# Boots the nested tier's outer guest (L1) under QEMU TCG with emulated AMD
# SVM and runs a script there, as root, on a writable overlay of this
# machine's root file system (shared read-only over 9p).
#
#   tests/nested/run-l1.sh [--deadline SECS] [--npt 0|1] [--smp N] [--cpu MODEL] OUT SCRIPT [ARGS...]
#
# OUT is a fresh results folder shared writable with L1 (at /nested-out
# there); SCRIPT runs from it with ARGS. L1's console (the script's output) goes to stdout and OUT/console.log.
# The exit code is the script's; 124 if L1 did not finish within the
# deadline (it is killed and its console tail printed), 125 if L1 failed
# before running the script.
set -euo pipefail

readonly here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deadline=1200 npt=0 smp=2 cpu=max
while [ $# -gt 0 ]; do
    case "$1" in
        --deadline) deadline="$2"; shift 2 ;;
        --npt) npt="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: run-l1.sh [--deadline S] [--npt 0|1] [--smp N] [--cpu MODEL] OUT SCRIPT [ARGS...]" >&2; exit 2; }
out="$1" script="$2"; shift 2
command -v qemu-system-x86_64 >/dev/null ||
    { echo "nested: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)" >&2; exit 125; }
image="$("$here/l1-image.sh")"

mkdir -p "$out"
rm -f "$out/rc"
# The script runs inside L1 from the results folder (L1 has its own /tmp),
# in this directory, with its arguments quoted once more for the shell there.
cp "$script" "$out/script"
{
    echo "cd $(printf '%q' "$PWD")"
    printf 'exec /bin/bash /nested-out/script'
    printf ' %q' "$@"
    echo
} >"$out/run"

# The host's root read-only (multidevs=remap keeps inode numbers unique
# across its mounts), the results folder writable.
qemu=(qemu-system-x86_64 -accel tcg,thread=multi -cpu "$cpu" -smp "$smp" -m 6G
    -display none -no-reboot -nodefaults
    -chardev "stdio,id=console,signal=off,logfile=$out/console.log" -serial chardev:console
    -kernel "$image/vmlinuz" -initrd "$image/initrd.gz"
    -append "console=ttyS0 quiet panic=-1 nested.npt=$npt"
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$(realpath "$out"),mount_tag=out,security_model=none")
set +e
timeout --kill-after=10 "$deadline" "${qemu[@]}" </dev/null
status=$?
set -e
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
