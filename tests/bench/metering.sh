#!/usr/bin/env bash
# What metering costs a step: the agent samples the guest's memory ten
# times a second while a job runs. The same CPU-bound loop, timed inside
# the guest, in a job (`runner test`: metered) and in `runner exec` (not:
# nothing asks the agent to sample), interleaved, median of N each, on the
# host tier (QEMU TCG, 1 vCPU, 256 MiB both). Target: at most 1.02x.
#
#   tests/bench/metering.sh [--runs N]   (RUNNER_KERNEL / RUNNER_ROOTFS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/setup.sh
bench_args metering 7 "$@"
# Timed by the guest's uptime (busybox's date has no %N).
loop='t() { awk "{printf \"%d\", \$1 * 1000}" /proc/uptime; }; s=$(t); i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo loop_ms=$(($(t) - s))'
cat >"$out/busy.yml" <<YAML
name: metering-cost
memory: 256M
defaults: { files: none }
jobs:
  busy:
    steps:
      - |
        $loop
YAML
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for i in $(seq "$runs"); do
    "$runner" exec --cold --memory 256 -- sh -c "$loop" 2>"$out/exec.err" | sed -n 's/^loop_ms=//p' >>"$out/off"
    rm -rf "$out/run"
    "$runner" test --cold --out "$out/run" "$out/busy.yml" >"$out/test.log" 2>&1 ||
        { cat "$out/test.log" >&2; exit 1; }
    grep -q 'memory [0-9]*/[0-9]* MiB' "$out/test.log" || { echo "the job was not metered:" >&2; cat "$out/test.log" >&2; exit 1; }
    sed -n 's/^loop_ms=//p' "$out"/run/logs/*busy*.log >>"$out/on"
done
off=$(median <"$out/off") on=$(median <"$out/on")
echo "metering cost (host tier, QEMU TCG; the same loop timed in the guest, $runs interleaved runs each):"
echo "  not metered (runner exec): median $off ms ($(tr '\n' ' ' <"$out/off"))"
echo "  metered     (runner test): median $on ms ($(tr '\n' ' ' <"$out/on"))"
echo "  ratio metered/not: $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.3f", a / b}') (target <= 1.02)"
