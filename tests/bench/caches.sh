#!/usr/bin/env bash
# Benchmarks of caches (`cache:`, docs/caches.md), printed as ratios
# measured in one run:
#  (a) restore cost against size (target: at most 1.1x): a job's time from
#      its start to its first step (the `job-started` and `step-started`
#      events of `--message-format json`, stamped as they arrive), with a
#      4 GiB cache holding BENCH_FILL_MIB (default 512) MiB against a 16 MiB
#      cache (the smallest `size`) holding 4 MiB. Both keys hold a committed
#      version before the first measurement, so neither run makes an empty
#      image; the measured jobs only pull. BENCH_RUNS (default 5) runs of
#      each, interleaved; prints the medians and their ratio.
#  (b) commit throughput: a job copies BENCH_COMMIT_MIB (default 256) MiB
#      in 1,024 files (half random bytes, as in downloaded archives; half
#      base64 text, which gzip shrinks to 3/4), given to it with `files:`,
#      into a `policy: push` cache; the commit time is the job's `caches`
#      phase in report.html's timeline (the job log's "committed version N
#      (X written, Y s)" line, to the millisecond). Against GitLab's way of
#      keeping a cache, `tar czf` of the same tree on the host (output not
#      fsynced, unlike a commit), timed the same way. BENCH_COMMIT_RUNS
#      (default 3) of each, alternating; medians in MB/s and their ratio.
#
# Usage: tests/bench/caches.sh   (images as for the tests: RUNNER_KERNEL /
# RUNNER_ROOTFS, or built on first use)
set -euo pipefail
cd "$(dirname "$0")/../.."

. tests/bench/setup.sh

runs="${BENCH_RUNS:-5}"
fill_mib="${BENCH_FILL_MIB:-512}"
commit_mib="${BENCH_COMMIT_MIB:-256}"
commit_runs="${BENCH_COMMIT_RUNS:-3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The runner's cache (and so its cache store) for this run alone.
export RUNNER_CACHE="$work/runner-cache"
mkdir -p "$work/ws"

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Runs `runner test` on a pipeline; prints the events, each line prefixed
# with the time it arrived (bash's clock, microseconds).
run_stamped() {
  local pipeline=$1 out=$2
  if ! "$runner" test "$work/ws/$pipeline.yml" --out "$work/$out" --message-format json 2> "$work/$out.err" |
    while IFS= read -r line; do printf '%s %s\n' "${EPOCHREALTIME/./}" "$line"; done; then
    cat "$work/$out.err" "$work/$out"/logs/* >&2
    echo "bench: $pipeline failed" >&2
    exit 1
  fi
}

# Microseconds from the job's start to its first step, from stamped events.
to_first_step() {
  awk '/"type":"job-started"/ { s = $1 } /"type":"step-started"/ && s { print $1 - s; exit }'
}

# --- (a) restore cost against size ------------------------------------------
restore_pipeline() { # name key size step policy
  cat > "$work/ws/$1.yml" <<EOF
image: minimal
memory: 256M
defaults: { files: none, timeout: 10m }
jobs:
  restore:
    cache: { key: $2, paths: [/var/cache/job], size: $3, policy: $5 }
    steps: [ '$4' ]
EOF
}
fill() { echo "dd if=/dev/urandom of=/var/cache/job/blob bs=1M count=$1 2>/dev/null && echo filled > /var/cache/job/marker"; }
restore_pipeline fill-small small 16M "$(fill 4)" push
restore_pipeline fill-big big 4G "$(fill "$fill_mib")" push
restore_pipeline small small 16M 'test -e /var/cache/job/marker' pull
restore_pipeline big big 4G 'test -e /var/cache/job/marker' pull
run_stamped fill-small fill-small > /dev/null
run_stamped fill-big fill-big > /dev/null
grep -h 'committed version' "$work"/fill-*/logs/* | sed 's/^==> /    warm-up: /'

small_times=() big_times=()
for i in $(seq "$runs"); do
  # Alternate which goes first, so a drift in the machine's load hits both.
  if [ $((i % 2)) = 1 ]; then order="small big"; else order="big small"; fi
  for size in $order; do
    t=$(run_stamped "$size" "restore-$size-$i" | to_first_step)
    [ -n "$t" ] || { echo "bench: no step-started event" >&2; exit 1; }
    grep -q "restored version" "$work/restore-$size-$i"/logs/* ||
      { cat "$work/restore-$size-$i"/logs/*; echo "bench: the $size cache was not restored" >&2; exit 1; }
    if [ "$size" = small ]; then small_times+=("$t"); else big_times+=("$t"); fi
  done
done
small_us=$(median "${small_times[@]}")
big_us=$(median "${big_times[@]}")
ratio_a=$(echo "scale=3; $big_us / $small_us" | bc)
verdict() { if [ "$(echo "$1" | bc)" -eq 1 ]; then echo met; else echo MISSED; fi; }
echo "(a) job start to first step, median of $runs runs each, interleaved:"
printf '    16 MiB cache (4 MiB in it)          %7.3f s   (runs: %s)\n' \
  "$(echo "$small_us / 1000000" | bc -l)" "$(printf '%s ' "${small_times[@]}" | awk '{ for (i = 1; i <= NF; i++) printf "%.2f ", $i / 1e6 }')"
printf '    4 GiB cache (%s MiB in it)         %7.3f s   (runs: %s)\n' "$fill_mib" \
  "$(echo "$big_us / 1000000" | bc -l)" "$(printf '%s ' "${big_times[@]}" | awk '{ for (i = 1; i <= NF; i++) printf "%.2f ", $i / 1e6 }')"
printf '    ratio %.2f (target <= 1.10, %s), difference %+.0f ms\n' \
  "$ratio_a" "$(verdict "$ratio_a <= 1.10")" "$(echo "($big_us - $small_us) / 1000" | bc -l)"

# --- (b) commit throughput against tar czf -----------------------------------
files=1024
file_kib=$((commit_mib * 1024 / files))
data="$work/ws/data"
for d in $(seq 0 15); do mkdir -p "$data/d$d"; done
for i in $(seq 0 $((files - 1))); do
  f="$data/d$((i % 16))/f$i"
  if [ $((i % 2)) = 0 ]; then
    head -c "${file_kib}K" /dev/urandom > "$f"
  else
    # base64 of 3/4 of the size is the size again.
    head -c $((file_kib * 768)) /dev/urandom | base64 -w 0 > "$f"
  fi
done
tree_bytes=$(find "$data" -type f -printf '%s\n' | awk '{ n += $1 } END { print n }')
cat > "$work/ws/commit.yml" <<EOF
image: minimal
memory: $((commit_mib * 2 + 512))M
defaults: { timeout: 20m }
jobs:
  commit:
    files: [ { from: data, to: /workspace/data } ]
    cache: { key: commit, paths: [/var/cache/job], size: $((commit_mib * 2 + 256))M, policy: push }
    steps: [ 'cp -a /workspace/data /var/cache/job/ && du -s /var/cache/job/data' ]
EOF

commit_secs=() tar_secs=() written=""
for i in $(seq "$commit_runs"); do
  run_stamped commit "commit-$i" > /dev/null
  # "cache `commit`: committed version N (X written, Y s)"
  line=$(grep -h 'committed version' "$work/commit-$i"/logs/*) ||
    { cat "$work/commit-$i"/logs/*; echo "bench: no commit" >&2; exit 1; }
  written=$(sed -n 's/.*(\([0-9.]*[BKMGT]\) written, .*/\1/p' <<< "$line")
  # The same span to the millisecond: the report's `caches` phase
  # (["caches", label, start, duration, status]).
  commit_secs+=("$(grep -o '\["caches","caches",[0-9.]*,[0-9.]*' "$work/commit-$i/report.html" | cut -d, -f4)")
  t0=${EPOCHREALTIME/./}
  tar czf "$work/cache.tgz" -C "$work/ws" data
  t1=${EPOCHREALTIME/./}
  tar_secs+=("$(echo "scale=3; ($t1 - $t0) / 1000000" | bc)")
done
tgz_bytes=$(stat -c %s "$work/cache.tgz")
commit_s=$(median "${commit_secs[@]}")
tar_s=$(median "${tar_secs[@]}")
mbps() { echo "scale=1; $tree_bytes / 1000000 / $1" | bc; }
echo "(b) committing $(echo "scale=1; $tree_bytes / 1048576" | bc) MiB in $files files, median of $commit_runs runs each:"
echo "    commit   $commit_s s ($(mbps "$commit_s") MB/s; $written written; runs: ${commit_secs[*]})"
echo "    tar czf  $tar_s s ($(mbps "$tar_s") MB/s, $((tgz_bytes / 1048576)) MiB archive; runs: ${tar_secs[*]})"
ratio_b=$(echo "scale=2; $tar_s / $commit_s" | bc)
printf '    commit is %.1fx the speed of tar czf (target > 1, %s)\n' "$ratio_b" "$(verdict "$ratio_b > 1")"
