#!/usr/bin/env bash
# Runs inside L1 (see run-l1.sh), where /dev/kvm is real KVM (kvm_amd): the
# built-in VMM's tests and the end-to-end tests (networking included, with
# passt from the shared host root), every one against the kvm backend, each under a deadline and retried once if it fails.
#
#   inner.sh RESULTS TESTLIST KERNEL ROOTFS AGENT
#
# TESTLIST has one line a test binary: `PATH|FILTER|DEADLINE` (FILTER and
# DEADLINE may be empty). Per-test logs and a summary go
# to RESULTS. Why retries: TCG's emulated SVM itself loses a few nested boots
# (tests/nested/README.md); a retry that passes is counted and reported as
# an environment retry, a test that fails twice fails the tier, and so do
# retries above RETRY_LIMIT_PCT percent of the tests.
set -uo pipefail

results="$1" list="$2"
export RUNNER_KERNEL="$3" RUNNER_ROOTFS="$4" RUNNER_AGENT="$5"
# A test's deadline: its line in TESTLIST, or this.
readonly default_deadline="${NESTED_TEST_DEADLINE:-420}"
readonly retry_limit_pct="${NESTED_RETRY_LIMIT_PCT:-10}"
mkdir -p "$results/logs"
export RUNNER_BACKEND=kvm RUNNER_NESTED=1 CI=true RUST_BACKTRACE=0
# HOME (and RUNNER_CACHE, XDG_CACHE_HOME) as run.sh had them: the runner
# cache L1 sees is the host's, through L1's writable overlay.
set -a
# shellcheck source=/dev/null
. "$results/host-env"
set +a
# Cold boots for every test but the warm-start ones, which turn snapshots on
# themselves: the boot path stays proven, and no test depends on a cache.
export RUNNER_COLD=1
# l1-init gives the chroot only /bin; image builds run debugfs and mke2fs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "nested: $*"; }

runner="$(cat "$results/runner-path")"
# Images run.sh built on this machine for the tests: their files are other
# inodes here, so the runner checks their content against their seals once
# (and seals them for L1) before any test's deadline starts.
if [ -f "$results/image-pipelines" ]; then
    while read -r pipeline; do
        say "checking the images of $pipeline"
        if ! "$runner" image build "$pipeline" >/dev/null 2>"$results/image-check.log"; then
            say "FAIL the images of $pipeline: $(tail -n 3 "$results/image-check.log")"
            echo "images $pipeline" >>"$results/failed"
        fi
    done <"$results/image-pipelines"
fi
say "runner doctor:"
"$runner" doctor | tee "$results/doctor.txt"
if ! grep -qE 'backend auto +picks kvm' "$results/doctor.txt"; then
    say "FAIL runner doctor did not pick kvm under real KVM"
    echo "doctor" >>"$results/failed"
fi

# RESULTS survives a frozen L1 that run.sh restarts: `done` lists finished
# tests (they are not run again), `current` the one L1 was running when it
# froze, whose next run counts as its retry.
touch "$results/done"
run_one() { # BIN TEST LOG
    timeout --kill-after=10 "${deadline:-$default_deadline}" "$1" --exact "$2" --test-threads 1 --nocapture \
        >"$3" 2>&1 </dev/null
}
# run-l1.sh takes L1 for frozen when nothing is written to RESULTS for
# minutes; a test that runs longer than that (its output comes at its end)
# must not look like a frozen L1. A frozen L1 stops this beat too.
( while sleep 60; do date +%s >"$results/heartbeat"; done ) &
heartbeat=$!
trap 'kill $heartbeat 2>/dev/null' EXIT
finished() { awk -v k="$1" '$2 == k {found = 1} END {exit !found}' "$results/done"; }
while IFS='|' read -r bin filter deadline; do
    [ -n "$bin" ] || continue
    name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    mapfile -t tests < <("$bin" --list --format terse ${filter:+"$filter"} 2>/dev/null | sed -n 's/: test$//p')
    [ "${#tests[@]}" -gt 0 ] || { say "FAIL    $name: no test matches '${filter}'"; echo "$name" >>"$results/failed"; }
    for t in "${tests[@]}"; do
        key="$name::$t"
        finished "$key" && continue
        log="$results/logs/$name--${t//[^A-Za-z0-9_]/_}"
        if [ "$(cat "$results/current" 2>/dev/null)" = "$key" ]; then
            say "retry   $key (L1 froze while running it)"
            echo "$key" >>"$results/retried"
        else
            echo "$key" >"$results/current"
            start=$(date +%s)
            rc=0
            run_one "$bin" "$t" "$log.log" || rc=$?
            if [ "$rc" -eq 0 ]; then
                echo "ok $key" >>"$results/done"
                say "ok      $key ($(($(date +%s) - start)) s)"
                continue
            fi
            say "retry   $key (first attempt failed, exit $rc); its output ended with:"
            tail -n 15 "$log.log" | sed 's/^/    /'
            echo "$key" >>"$results/retried"
        fi
        if run_one "$bin" "$t" "$log.retry.log"; then
            echo "ok $key" >>"$results/done"
            say "ok      $key on the retry (environment retry)"
        else
            echo "failed $key" >>"$results/done"
            echo "$key" >>"$results/failed"
            say "FAIL    $key failed twice; its output:"
            tail -n 60 "$log.retry.log" | sed 's/^/    /'
        fi
    done
done <"$list"
rm -f "$results/current"

# Warm start's build-and-restore rounds, each from an empty snapshot
# directory, every other one with 2 vCPUs (issue 17: half of all snapshots
# were dead on restore). No retry: a dead snapshot is what they look for.
if [ -f "$results/snapshot-rounds" ] && ! finished snapshot-rounds; then
    rounds=$(cat "$results/snapshot-rounds")
    echo "snapshot-rounds" >"$results/current"
    start=$(date +%s)
    if RUNNER_COLD=0 tests/nested/snapshot-rounds-inner.sh "$runner" "$rounds" "$results/rounds" \
        >"$results/logs/snapshot-rounds.log" 2>&1; then
        echo "ok snapshot-rounds" >>"$results/done"
        say "ok      snapshot-rounds: $rounds build-and-restore rounds ($(($(date +%s) - start)) s)"
    else
        echo "failed snapshot-rounds" >>"$results/done"
        echo "snapshot-rounds" >>"$results/failed"
        say "FAIL    snapshot-rounds; its output:"
        tail -n 60 "$results/logs/snapshot-rounds.log" | sed 's/^/    /'
    fi
    rm -f "$results/current"
fi

# CPUID/MSR hygiene: no boot may leave KVM complaining about an MSR the
# guest touched (on hardware too that would be a log line per boot).
dmesg >"$results/l1-dmesg.txt" 2>&1
if grep -iE 'unhandled (wr|rd)msr|perfctr wrmsr' "$results/l1-dmesg.txt" >"$results/msr-warnings.txt"; then
    say "FAIL L1's kernel logged MSR accesses KVM did not handle:"
    sed 's/^/    /' "$results/msr-warnings.txt" | head -n 20
    echo "msr-hygiene" >>"$results/failed"
fi

passed=$(grep -c '^ok ' "$results/done")
failed=$(grep -c '^failed ' "$results/done")
retried=0
[ -f "$results/retried" ] && retried=$(wc -l <"$results/retried")
total=$((passed + failed))
echo "$passed $failed $retried $total" >"$results/counts"
say "$passed passed, $failed failed, $retried environment retries, of $total tests"
if ((total == 0)); then
    say "FAIL no test ran"
    exit 1
fi
if ((retried * 100 > total * retry_limit_pct)); then
    say "FAIL $retried retries of $total tests is over ${retry_limit_pct}%"
    exit 1
fi
[ ! -s "$results/failed" ]
