#!/usr/bin/env bash
# Warm start (kvm backend restoring a snapshot) against cold boot, under
# real KVM in the nested tier's L1 (tests/nested/run-l1.sh: kvm_amd inside
# QEMU TCG). Everything there is emulated, so only ratios measured in the
# same L1 in one run mean anything:
#
#  (a) `runner exec -- true`: exec start -> guest agent ready, cold boot
#      against restore, median of N each (target: restore 10x faster);
#  (b) memory of 8 VMs at once (8 jobs that sleep, --jobs 8): summed RSS
#      and PSS of their VM processes, 8 clones of one snapshot against 8
#      cold boots. Clones map guest memory privately from the one snapshot
#      file, so their unwritten pages are shared: PSS shows it.
#
#   tests/bench/warm_start.sh [--runs N]   (RUNNER_KERNEL / RUNNER_ROOTFS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=5
[ "${1:-}" = --runs ] && runs="$2"
: "${RUNNER_KERNEL:?set RUNNER_KERNEL}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"

cargo build --release --quiet -p runner
out=target/warm-bench
rm -rf "$out"
mkdir -p "$out"
{
    echo "name: sleepers"
    echo "memory: 128M"
    echo "defaults: { files: none, timeout: 20m }"
    echo "jobs:"
    for i in 1 2 3 4 5 6 7 8; do echo "  sleeper$i: { steps: [ 'sleep 300' ] }"; done
} >"$out/sleepers.yml"

cat >"$out/inner.sh" <<INNER
set -eu
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS") CI=true
export RUNNER_CACHE=/tmp/warm-cache
runner=target/release/runner
median() { sort -n | awk '{a[NR] = \$1} END {print a[int((NR + 1) / 2)]}'; }
exec_ready() { # ARGS...: prints exec start -> agent ready in ms
    RUST_LOG=info timeout 600 \$runner exec --backend kvm --boot-timeout 300s "\$@" -- true 2>/nested-out/exec.err ||
        { cat /nested-out/exec.err >&2; exit 1; }
    sed -n 's/.*guest agent ready \\([0-9]*\\) ms.*/\\1/p' /nested-out/exec.err
}
echo "== building the snapshot (not measured)"
exec_ready >/dev/null
grep 'runner: snapshot' /nested-out/exec.err || true
for i in \$(seq $runs); do
    exec_ready --cold >>/nested-out/ready-cold
    exec_ready >>/nested-out/ready-warm
done
echo "ready cold \$(median </nested-out/ready-cold) warm \$(median </nested-out/ready-warm)" >>/nested-out/results

# Memory: 8 VMs up at once, each job sleeping; sum over the VM processes.
mem_of_8() { # NAME [--cold]
    \$runner test --backend kvm --boot-timeout 600s --jobs 8 \${2:-} --out /tmp/out-\$1 --message-format json \
        /nested-out/sleepers.yml >/nested-out/events-\$1.jsonl 2>/nested-out/test-\$1.log &
    local test_pid=\$! pids=
    # A job's step has started once its VM is up and its agent answered.
    for _ in \$(seq 1200); do
        [ "\$(grep -c '"type":"step-started"' /nested-out/events-\$1.jsonl)" -ge 8 ] && break
        kill -0 \$test_pid 2>/dev/null || { cat /nested-out/test-\$1.log >&2; exit 1; }
        sleep 1
    done
    pids=\$(pgrep -f -- '__vm-process' || true)
    sleep 5
    local rss=0 pss=0
    for p in \$pids; do
        r=\$(awk '/^Rss:/ {print \$2}' /proc/\$p/smaps_rollup) q=\$(awk '/^Pss:/ {print \$2}' /proc/\$p/smaps_rollup)
        rss=\$((rss + r)) pss=\$((pss + q))
    done
    echo "mem \$1 vms \$(echo \$pids | wc -w) rss_kib \$rss pss_kib \$pss" >>/nested-out/results
    kill \$test_pid; wait \$test_pid || true
}
mem_of_8 warm
mem_of_8 cold --cold
cat /nested-out/results
INNER
tests/nested/run-l1.sh --deadline 5400 --stall 900 "$out" "$out/inner.sh" | tee "$out/l1.log"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
read -r _ _ cold _ warm < <(grep '^ready' "$out/results")
read -r _ _ _ nw _ rw _ pw < <(grep '^mem warm' "$out/results")
read -r _ _ _ nc _ rc _ pc < <(grep '^mem cold' "$out/results")
echo
echo "warm start bench (L1: QEMU TCG + kvm_amd; ratios only):"
echo "(a) exec start -> agent ready: cold boot $cold ms, restore $warm ms: restore is $(ratio "$cold" "$warm")x faster (target >= 10x)"
echo "(b) 8 VMs at once: clones  ($nw VM processes) RSS $((rw / 1024)) MiB, PSS $((pw / 1024)) MiB"
echo "                   cold    ($nc VM processes) RSS $((rc / 1024)) MiB, PSS $((pc / 1024)) MiB"
echo "    PSS clones/cold: $(awk -v a="$pw" -v b="$pc" 'BEGIN {printf "%.2f", a / b}')"
