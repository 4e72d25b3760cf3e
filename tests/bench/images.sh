#!/usr/bin/env bash
# Benchmarks of images built from pipeline specs (runner/machine/src/images):
#  (a) what a cache hit adds to a run (target: under 50 ms): `runner image
#      build PIPELINE` resolves every image a pipeline uses, as `runner test`
#      does before booting anything. Timed for a pipeline whose image is a
#      cached spec and for the same pipeline with the named `minimal` image,
#      alternating, in one run; prints both medians, the difference and the
#      ratio.
#  (b) a cold Debian build's time per phase (download and bootstrap, setup,
#      ext4), in an empty cache: nothing downloaded before, as on a new
#      machine. Skip it with BENCH_COLD=0 (it fetches from the Debian mirror
#      and takes minutes).
#
# Usage: tests/bench/images.sh   (images as for the tests: RUNNER_KERNEL /
# RUNNER_ROOTFS, or built on first use)
set -euo pipefail
cd "$(dirname "$0")/../.."

. tests/bench/setup.sh

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export RUNNER_CACHE="$work/cache"
mkdir -p "$work/ws"
printf 'export GREETING=hello\n' > "$work/ws/profile.sh"
cat > "$work/ws/spec.yml" <<'EOF'
image:
  base: minimal
  files: [{ from: profile.sh, to: /etc/profile.d/greeting.sh }]
  setup: mkdir -p /opt/tools
jobs:
  a: { steps: [true] }
EOF
cat > "$work/ws/named.yml" <<'EOF'
image: minimal
jobs:
  a: { steps: [true] }
EOF
"$runner" image build "$work/ws/spec.yml" > /dev/null 2>&1 # the one cold build

now() { date +%s%N; }
runs=30
spec_times=() named_times=()
for _ in $(seq "$runs"); do
  t0=$(now); "$runner" image build "$work/ws/spec.yml" > /dev/null 2>&1; t1=$(now)
  "$runner" image build "$work/ws/named.yml" > /dev/null 2>&1; t2=$(now)
  spec_times+=($(( (t1 - t0) / 1000 ))) named_times+=($(( (t2 - t1) / 1000 )))
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
spec_us=$(median "${spec_times[@]}")
named_us=$(median "${named_times[@]}")
echo "(a) image resolution, median of $runs runs each, alternating:"
printf '    cached spec   %6.1f ms\n' "$(echo "$spec_us / 1000" | bc -l)"
printf '    named image   %6.1f ms\n' "$(echo "$named_us / 1000" | bc -l)"
printf '    difference    %6.1f ms (target: under 50 ms), ratio %.2f\n' \
  "$(echo "($spec_us - $named_us) / 1000" | bc -l)" "$(echo "$spec_us / $named_us" | bc -l)"

if [ "${BENCH_COLD:-1}" = 0 ]; then
  echo "(b) skipped (BENCH_COLD=0)"
  exit 0
fi
export RUNNER_CACHE="$work/cold"
cat > "$work/ws/cold.yml" <<'EOF'
image:
  base: debian
  packages: [make]
  setup: make --version > /etc/make-version
jobs:
  a: { steps: [true] }
EOF
"$runner" image build "$work/ws/cold.yml" 2> "$work/cold.log" > /dev/null || { cat "$work/cold.log"; exit 1; }
echo "(b) cold Debian build (minbase + make, setup; empty cache):"
sed -n 's/.*: built in \([0-9.]*s\) (\(.*\)),.*/    total \1: \2/p' "$work/cold.log"
