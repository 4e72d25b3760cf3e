#!/usr/bin/env bash
# The built-in VMM against QEMU-kvm under real KVM, in the nested tier's L1
# (tests/nested/run-l1.sh: kvm_amd inside QEMU TCG). Everything there is
# emulated, 10-50x slower than hardware, so only the ratios between the two
# VMMs, measured in the same L1 in one run, mean anything:
#
#  (a) process start -> first serial byte of the kernel (kvm_boot bench);
#  (b) `runner exec` start -> guest agent ready, median of N;
#  (c) `runner exec -- true` wall time, median of N;
#  (d) VMM resident memory beyond guest memory (kvm_boot bench);
#  (e) `runner test`, 8 one-step jobs, --jobs 2 against --jobs 1 (L1 has 2 vCPUs).
#
# Targets: (a), (b) at most 0.8x QEMU's time; (d) at most 3 MiB.
#   tests/bench/nested.sh [--runs N]      (RUNNER_KERNEL / RUNNER_ROOTFS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=5
[ "${1:-}" = --runs ] && runs="$2"
: "${RUNNER_KERNEL:?set RUNNER_KERNEL}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"

cargo build --release --quiet -p runner
bench=$(cargo bench --no-run --quiet -p runner --bench kvm_boot --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "kvm_boot") | .executable')
out=target/nested-bench
rm -rf "$out"
mkdir -p "$out"
{
    echo "name: bench"
    echo "defaults: { files: none, timeout: 5m }"
    echo "jobs:"
    for i in 1 2 3 4 5 6 7 8; do echo "  job$i: { steps: [ 'uname' ] }"; done
} >"$out/eight.yml"

cat >"$out/inner.sh" <<INNER
set -eu
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS") CI=true
runner=target/release/runner
median() { sort -n | awk '{a[NR] = \$1} END {print a[int((NR + 1) / 2)]}'; }
ms() { echo \$(( \$(date +%s%N) / 1000000 )); }
echo "== kvm_boot bench (a, d)"
$(printf %q "$bench")
for backend in kvm qemu; do
    for i in \$(seq $runs); do
        start=\$(ms)
        RUST_LOG=info timeout 400 \$runner exec --backend \$backend --boot-timeout 300s -- true 2>/nested-out/exec.err ||
            { cat /nested-out/exec.err; exit 1; }
        echo \$(( \$(ms) - start )) >>/nested-out/wall-\$backend
        sed -n 's/.*guest agent ready \\([0-9]*\\) ms.*/\\1/p' /nested-out/exec.err >>/nested-out/ready-\$backend
    done
done
for what in ready wall; do
    k=\$(median </nested-out/\$what-kvm) q=\$(median </nested-out/\$what-qemu)
    echo "\$what kvm \$k qemu \$q" >>/nested-out/medians
done
for jobs in 1 2; do
    start=\$(ms)
    timeout 1200 \$runner test --backend kvm --boot-timeout 300s --jobs \$jobs --out /tmp/out-\$jobs /nested-out/eight.yml >/nested-out/test-\$jobs.log 2>&1 ||
        { cat /nested-out/test-\$jobs.log; exit 1; }
    echo "jobs\$jobs \$(( \$(ms) - start ))" >>/nested-out/medians
done
INNER
tests/nested/run-l1.sh --deadline 3600 --stall 600 "$out" "$out/inner.sh" | tee "$out/l1.log"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
read -r _ _ rk _ rq < <(grep '^ready' "$out/medians")
read -r _ _ wk _ wq < <(grep '^wall' "$out/medians")
j1=$(awk '/^jobs1/ {print $2}' "$out/medians")
j2=$(awk '/^jobs2/ {print $2}' "$out/medians")
echo
echo "nested bench (L1: QEMU TCG + kvm_amd; ratios only):"
echo "(a), (d): see the kvm_boot lines above (first serial byte ratio; VMM memory)"
echo "(b) exec start -> agent ready: kvm $rk ms, qemu $rq ms, ratio $(ratio "$rk" "$rq") (target <= 0.8)"
echo "(c) exec -- true wall:          kvm $wk ms, qemu $wq ms, ratio $(ratio "$wk" "$wq")"
echo "(e) runner test 8 jobs: --jobs 1 $j1 ms, --jobs 2 $j2 ms, speed-up $(ratio "$j1" "$j2")x"
