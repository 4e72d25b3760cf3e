#!/usr/bin/env bash
# Runs in L1 (real KVM): the warm-start soak (see soak.sh). One `runner test
# --jobs 2` of JOBS jobs on the kvm backend with snapshots, about 5% of
# them faults: a kernel panic, a power-off, a step that hangs until its
# timeout. A sampler records the runner's open fds and RSS, the processes,
# the VM directories and the snapshot files, against jobs finished.
#
#   soak-inner.sh RUNNER JOBS OUT
#
# Prints every job whose outcome is not the one its kind must give, the
# figures at job 100 and at the end, and exits non-zero on a wrong
# outcome or on growth.
set -uo pipefail
runner="$1" jobs="$2" out="$3"
export RUNNER_CACHE="${TMPDIR:-/tmp}/soak-cache" RUNNER_COLD=0 CI=true
work="${TMPDIR:-/tmp}/soak-work"
rm -rf "$RUNNER_CACHE" "$work"
mkdir -p "$work" "$out"

# Every 20th job is a fault, the kinds in turn.
kind_of() { # N -> kind
    if (( $1 % 20 != 0 )); then echo ok; return; fi
    case $(( ($1 / 20) % 3 )) in
        0) echo panic ;; 1) echo poweroff ;; *) echo hang ;;
    esac
}
{
    echo "name: soak"
    echo "defaults: { files: none, timeout: 2m }"
    echo "jobs:"
    for n in $(seq "$jobs"); do
        kind=$(kind_of "$n")
        printf '  %s-%03d:\n' "$kind" "$n"
        case $kind in
            ok) echo "    steps: [ 'echo job $n; test -d /proc' ]" ;;
            # Little memory, so that filling it is quick under nested KVM.
            panic) echo "    memory: 128M"
                   echo "    steps: [ 'echo 1 > /proc/sys/vm/panic_on_oom; tail /dev/zero; sleep 1000' ]" ;;
            poweroff) echo "    steps: [ 'poweroff -f; sleep 1000' ]" ;;
            hang) echo "    steps: [ { run: 'sleep 100000', timeout: 5s } ]" ;;
        esac
    done
} >"$work/soak.yml"

cd "$work"
"$runner" test soak.yml --backend kvm --jobs 2 --message-format json \
    >"$out/events.jsonl" 2>"$out/stderr.log" &
pid=$!
# jobs-finished rss-kib fds processes vm-dirs snapshot-files
: >"$out/samples.txt"
while kill -0 "$pid" 2>/dev/null; do
    finished=$(grep -c '"type":"job-finished"' "$out/events.jsonl")
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    # A process may end between the glob and ls: not worth a line each.
    procs=$(ls -d /proc/[0-9]* 2>/dev/null | wc -l)
    dirs=$(ls -d "${TMPDIR:-/tmp}"/runner-vm-* 2>/dev/null | wc -l)
    snaps=$(find "$RUNNER_CACHE/snapshots" -type f 2>/dev/null | wc -l)
    [ -n "$rss" ] && echo "$finished $rss $fds $procs $dirs $snaps" >>"$out/samples.txt"
    sleep 2
done
wait "$pid"
status=$?
echo "soak: runner test exited $status after $(grep -c '"type":"job-finished"' "$out/events.jsonl") jobs"

# The outcome each kind must give.
wrong=0
while read -r job outcome; do
    kind=${job%-*}
    case $kind:$outcome in
        ok:passed | panic:error | poweroff:error | hang:failed) ;;
        *) echo "soak: WRONG $job ended $outcome"; wrong=$((wrong + 1)) ;;
    esac
done < <(jq -r 'select(.type == "job-finished") | "\(.job) \(.outcome)"' "$out/events.jsonl")
seen=$(jq -r 'select(.type == "job-finished") | .job' "$out/events.jsonl" | sort -u | wc -l)
[ "$seen" -eq "$jobs" ] || { echo "soak: WRONG only $seen of $jobs jobs finished"; wrong=$((wrong + 1)); }
grep -h 'panic-' "$out/events.jsonl" | jq -r 'select(.type == "job-finished") | .message' | sort | uniq -c | head -3
echo "soak: $wrong jobs with a wrong outcome; dead-snapshot warnings: $(grep -cE 'is dead|failed its check' "$out/stderr.log")"

# Growth between job 100 and the end: the largest figure seen around job
# 100 (jobs 100-150, with up to two VMs in flight) against the largest
# around the end (the last 50 jobs).
summary() { # FROM TO -> max of each column
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b {
        for (i = 2; i <= 6; i++) if ($i > m[i]) m[i] = $i; n++ }
        END { printf "%d %d %d %d %d %d\n", n, m[2], m[3], m[4], m[5], m[6] }' "$out/samples.txt"
}
read -r n1 rss1 fds1 procs1 dirs1 snaps1 < <(summary 100 150)
read -r n2 rss2 fds2 procs2 dirs2 snaps2 < <(summary $((jobs - 50)) "$jobs")
printf 'soak: %-22s %10s %10s\n' "" "jobs 100-150" "jobs $((jobs - 50))-$jobs"
printf 'soak: %-22s %10s %10s\n' "runner RSS (KiB)" "$rss1" "$rss2" "runner open fds" "$fds1" "$fds2" \
    "processes" "$procs1" "$procs2" "VM directories" "$dirs1" "$dirs2" "snapshot files" "$snaps1" "$snaps2"
grown=0
# RSS: the allocator keeps some slack; more than 1 MiB would be a leak
# of about 2 KiB a job.
(( rss2 > rss1 + 1024 )) && { echo "soak: GREW runner RSS"; grown=1; }
(( fds2 > fds1 )) && { echo "soak: GREW open fds"; grown=1; }
(( procs2 > procs1 )) && { echo "soak: GREW processes"; grown=1; }
(( dirs2 > dirs1 )) && { echo "soak: GREW VM directories"; grown=1; }
(( snaps2 > snaps1 )) && { echo "soak: GREW snapshot files"; grown=1; }
(( n1 > 0 && n2 > 0 )) || { echo "soak: too few samples ($n1, $n2)"; grown=1; }
left=$(ls -d "${TMPDIR:-/tmp}"/runner-vm-* 2>/dev/null | wc -l)
echo "soak: VM directories left after the run: $left"
[ "$wrong" -eq 0 ] && [ "$grown" -eq 0 ] && [ "$left" -eq 0 ]
