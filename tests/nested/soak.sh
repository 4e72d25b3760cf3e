#!/usr/bin/env bash
# The warm-start soak (issue 17): JOBS jobs (default 500) through one
# `runner test --jobs 2` on the kvm backend with snapshots, in L1 (real
# KVM), about 5% of them faulting (kernel panic, power-off, a hang that
# hits its timeout). Every job must end as its kind must, and from job 100
# to the end the runner's RSS and open fds, the processes, VM directories
# and snapshot files must not grow (soak-inner.sh prints the figures).
# Too long for CI; the closing notes give its figures.
#
#   tests/nested/soak.sh [--jobs N] [--runner PATH]
#
# Needs RUNNER_KERNEL and RUNNER_ROOTFS (what scripts/test prints); builds
# and copies target/release/runner unless --runner names another.
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=500 runner=
while [ $# -gt 0 ]; do
    case "$1" in
        --jobs) jobs="$2"; shift 2 ;;
        --runner) runner="$2"; shift 2 ;;
        *) echo "usage: soak.sh [--jobs N] [--runner PATH]" >&2; exit 2 ;;
    esac
done
: "${RUNNER_KERNEL:?set RUNNER_KERNEL (scripts/test prints it)}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"
if [ -z "$runner" ]; then
    cargo build --quiet --release -p runner
    runner=target/release/runner
fi
out=${SOAK_OUT:-target/nested-soak}
rm -rf "$out"
mkdir -p "$out"
cp "$runner" "$out/runner"
cat >"$out/soak.sh" <<INNER
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS")
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec $(printf %q "$PWD/tests/nested/soak-inner.sh") /nested-out/runner $jobs /nested-out
INNER
start=$(date +%s)
status=0
tests/nested/run-l1.sh --stall 600 --deadline $((jobs * 20 + 900)) "$out" "$out/soak.sh" || status=$?
echo "soak: $(( $(date +%s) - start )) s in all (L1 boot included); samples in $out/samples.txt"
exit "$status"
