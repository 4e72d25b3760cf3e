#!/usr/bin/env bash
# Warm services against cold ones, under real KVM in the nested tier's L1
# (tests/nested/run-l1.sh: kvm_amd inside QEMU TCG), with the example's
# PostgreSQL service (pipelines/services.yml). Only ratios measured in the
# same L1 in one run mean anything:
#
#  (a) job start -> every service ready (the job log's "service db is
#      ready (N s after the job started it)"), `runner test` warm (a
#      restored clone of the service's snapshot, taken once `ready` passed)
#      against --cold (boot, `run`, `ready`), interleaved, median of N each
#      (target: warm 10x faster);
#  (b) memory of 3 jobs at once, each with its PostgreSQL service and a
#      step that sleeps: summed RSS and PSS of every VM process (the jobs',
#      the services', the switches'), warm against cold. Clones map guest
#      memory privately from one snapshot file, so the pages PostgreSQL
#      had when it was saved are shared: PSS shows it.
#
#   tests/bench/services.sh [--runs N]   (RUNNER_KERNEL / RUNNER_ROOTFS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/setup.sh
bench_args services 7 "$@"
# Debian's PostgreSQL image is built here: L1 has no network. L1 sees this
# machine's runner cache through its writable overlay, where the snapshots
# go and vanish with it.
"$runner" image build pipelines/services.yml >/dev/null
cp pipelines/services.yml "$out/services.yml"
{
    # The example's image (its anchor), each job's VM at 256M.
    sed -n '/^name:/,/^defaults:/p' pipelines/services.yml | sed 's/^name: services/name: services-memory/;/^defaults:/d'
    echo "memory: 256M"
    echo "defaults: { files: none, timeout: 30m }"
    echo "jobs:"
    for i in 1 2 3; do
        cat <<JOB
  sleeper$i:
    services:
      - name: db
        image: *postgres
        memory: 512M
        env: { POSTGRES_PASSWORD: test }
        run: |
          install -d -o postgres -g postgres /run/postgresql
          pg_ctlcluster "\$(ls /etc/postgresql)" main start
        ready: pg_isready -h 127.0.0.1
        ready_timeout: 10m
    steps: [ 'sleep 600' ]
JOB
    done
} >"$out/memory.yml"

cat >"$out/inner.sh" <<INNER
set -eu
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS") CI=true
export RUNNER_AGENT=$(printf %q "$RUNNER_AGENT") HOME=$(printf %q "$HOME")
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
runner=$(printf %q "$runner")
results=/nested-out
# The image's files are other inodes here: checked against their seals once.
\$runner image build \$results/services.yml >/dev/null
median() { sort -n | awk '{a[NR] = \$1} END {print a[int((NR + 1) / 2)]}'; }
ready_after() { # NAME [--cold]: prints job start -> db ready, in ms
    rm -rf /tmp/out-\$1
    timeout 1200 \$runner test --backend kvm --boot-timeout 600s \${2:-} --out /tmp/out-\$1 \
        \$results/services.yml >\$results/test-\$1.log 2>&1 || { tail -n 40 \$results/test-\$1.log >&2; exit 1; }
    sed -n 's/.*service db is ready (\\([0-9.]*\\) s after.*/\\1/p' /tmp/out-\$1/logs/*queries*.log |
        awk '{printf "%d\\n", \$1 * 1000}'
}
echo "== building the snapshots (not measured)"
ready_after build >/dev/null
grep 'runner: snapshot' \$results/test-build.log || true
for i in \$(seq $runs); do
    ready_after cold --cold >>\$results/ready-cold
    ready_after warm >>\$results/ready-warm
    grep -q 'boots cold\\|is dead' \$results/test-warm.log && { echo "a warm run booted cold:" >&2; cat \$results/test-warm.log >&2; exit 1; }
    # Where a warm service's time went: its log's notes, with their times.
    grep -h '^==> ' /tmp/out-warm/logs/*service-db*.log >>\$results/warm-notes
done
echo "ready cold \$(median <\$results/ready-cold) warm \$(median <\$results/ready-warm)" >>\$results/results

# Memory: 3 jobs and their services up at once, each job sleeping.
mem_of_3() { # NAME [--cold]
    \$runner test --backend kvm --boot-timeout 600s --jobs 6 \${2:-} --out /tmp/out-\$1 --message-format json \
        \$results/memory.yml >\$results/events-\$1.jsonl 2>\$results/mem-\$1.log &
    local test_pid=\$! pids=
    # A job's step starts once its VM answered and its service is ready.
    for _ in \$(seq 1800); do
        [ "\$(grep -c '"type":"step-started"' \$results/events-\$1.jsonl)" -ge 3 ] && break
        kill -0 \$test_pid 2>/dev/null || { cat \$results/mem-\$1.log >&2; exit 1; }
        sleep 1
    done
    sleep 5
    pids=\$(pgrep -f -- '__vm-process' || true)
    local rss=0 pss=0
    for p in \$pids; do
        r=\$(awk '/^Rss:/ {print \$2}' /proc/\$p/smaps_rollup) q=\$(awk '/^Pss:/ {print \$2}' /proc/\$p/smaps_rollup)
        rss=\$((rss + r)) pss=\$((pss + q))
    done
    echo "mem \$1 processes \$(echo \$pids | wc -w) rss_kib \$rss pss_kib \$pss" >>\$results/results
    kill \$test_pid; wait \$test_pid || true
}
mem_of_3 warm
mem_of_3 cold --cold
cat \$results/results
INNER
tests/nested/run-l1.sh --deadline 7200 --stall 900 "$out" "$out/inner.sh" | tee "$out/l1.log"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
read -r _ _ cold _ warm < <(grep '^ready' "$out/results")
read -r _ _ _ nw _ rw _ pw < <(grep '^mem warm' "$out/results")
read -r _ _ _ nc _ rc _ pc < <(grep '^mem cold' "$out/results")
echo
echo "services bench (L1: QEMU TCG + kvm_amd; PostgreSQL as a service; ratios only):"
echo "(a) job start -> every service ready, median of $runs: cold $cold ms, warm $warm ms:" \
    "warm is $(ratio "$cold" "$warm")x faster (target >= 10x)"
echo "    cold runs: $(tr '\n' ' ' <"$out/ready-cold")"
echo "    warm runs: $(tr '\n' ' ' <"$out/ready-warm")"
echo "(b) 3 jobs, each with its service, at once: warm ($nw processes) RSS $((rw / 1024)) MiB, PSS $((pw / 1024)) MiB"
echo "                                             cold ($nc processes) RSS $((rc / 1024)) MiB, PSS $((pc / 1024)) MiB"
echo "    PSS warm/cold: $(awk -v a="$pw" -v b="$pc" 'BEGIN {printf "%.2f", a / b}')"
