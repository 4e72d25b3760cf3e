#!/usr/bin/env bash
# What the VM process's jail costs (runner/machine/src/vm_process/jail.rs),
# under real KVM in the nested tier's L1: the vm_process bench there, whose
# last part starts each VM process jailed and not jailed (median of 10
# each) and prints start-up and memory as ratios, for the QEMU backend's
# device process and the kvm backend's VMM process.
#   tests/bench/jail.sh        (RUNNER_KERNEL / RUNNER_ROOTFS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RUNNER_KERNEL:?set RUNNER_KERNEL}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"
cargo build --release --quiet -p runner
bench=$(cargo bench --no-run --quiet -p runner --bench vm_process --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "vm_process") | .executable')
out=target/nested-jail-bench
rm -rf "$out"
mkdir -p "$out"
cat >"$out/inner.sh" <<INNER
set -eu
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS")
export RUNNER_EXE=$(printf %q "$PWD/target/release/runner")
$(printf %q "$bench") 2>&1 | tee /nested-out/bench.txt
INNER
tests/nested/run-l1.sh --stall 600 --deadline 3600 "$out" "$out/inner.sh"
grep -E "jailed|VM process|device process" "$out/bench.txt" || true
