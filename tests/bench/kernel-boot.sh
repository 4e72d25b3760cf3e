#!/usr/bin/env bash
# Boot time of the guest kernel against a baseline kernel, in one run:
# exec start -> guest agent ready for `runner exec --cold -- true`, the two
# kernels interleaved, median of N each. Used to check that a kernel config
# change (the container options, docs/containers.md) keeps boot time:
# target ratio <= 1.15.
#
#   RUNNER_BASELINE_KERNEL=/path/old/vmlinux tests/bench/kernel-boot.sh [--runs N] [--nested]
#
# RUNNER_KERNEL (default: `runner image build kernel`) is the kernel under
# test, RUNNER_ROOTFS (default: the minimal image) the rootfs for both.
# Without --nested: the host tier (QEMU TCG, `auto` backend). With --nested:
# in the nested tier's L1 (tests/nested/run-l1.sh) on the kvm backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=9 nested=
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --nested) nested=1; shift ;;
        *) echo "usage: tests/bench/kernel-boot.sh [--runs N] [--nested]" >&2; exit 2 ;;
    esac
done
[ -n "${RUNNER_BASELINE_KERNEL:-}" ] ||
    { echo "kernel-boot bench: set RUNNER_BASELINE_KERNEL to the vmlinux to compare against" >&2; exit 2; }
[ -f "$RUNNER_BASELINE_KERNEL" ] ||
    { echo "kernel-boot bench: RUNNER_BASELINE_KERNEL is not a file: $RUNNER_BASELINE_KERNEL" >&2; exit 2; }

. tests/bench/setup.sh
out=target/kernel-boot-bench
rm -rf "$out"
mkdir -p "$out"

# The same script runs on the host or in L1; RESULTS is where it writes.
cat >"$out/inner.sh" <<INNER
set -eu
export RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS") CI=true
results=\$1 backend=\$2
runner=$(printf %q "$runner")
exec_ready() { # KERNEL: prints exec start -> agent ready in ms
    RUNNER_KERNEL=\$1 RUST_LOG=info timeout 900 \$runner exec --cold --backend \$backend --boot-timeout 600s -- true \
        2>\$results/exec.err || { cat \$results/exec.err >&2; exit 1; }
    sed -n 's/.*guest agent ready \\([0-9]*\\) ms.*/\\1/p' \$results/exec.err
}
exec_ready $(printf %q "$RUNNER_KERNEL") >/dev/null # warms the page cache; not measured
for i in \$(seq $runs); do
    exec_ready $(printf %q "$RUNNER_BASELINE_KERNEL") >>\$results/ready-baseline
    exec_ready $(printf %q "$RUNNER_KERNEL") >>\$results/ready-new
done
INNER

if [ -n "$nested" ]; then
    tests/nested/run-l1.sh --deadline 5400 --stall 900 "$out" "$out/inner.sh" /nested-out kvm >"$out/l1.log"
    where="nested tier, kvm backend"
else
    bash "$out/inner.sh" "$out" auto
    where="host tier, auto backend"
fi

median() { sort -n "$1" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
base=$(median "$out/ready-baseline") new=$(median "$out/ready-new")
echo "kernel boot bench ($where, $runs interleaved runs each; exec start -> agent ready):"
echo "  baseline $RUNNER_BASELINE_KERNEL: median $base ms ($(tr '\n' ' ' <"$out/ready-baseline"))"
echo "  new      $RUNNER_KERNEL: median $new ms ($(tr '\n' ' ' <"$out/ready-new"))"
echo "  ratio new/baseline: $(awk -v a="$new" -v b="$base" 'BEGIN {printf "%.2f", a / b}') (target <= 1.15)"
