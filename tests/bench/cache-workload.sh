#!/usr/bin/env bash
# The caches' real workload (issue 20): pipelines/cache-rust.yml builds and
# tests a real crate, examples/cache-rust, whose dependencies come from
# crates.io, with its cargo home and target/ in a cache.
#  run 1: `--filter fetch-and-test --allow-network=index.crates.io:443,
#         static.crates.io:443`, an empty cache store:
#         downloads the crates, builds everything, fills the cache;
#  run 2: `--filter test-offline`, no NIC at all: builds and tests from
#         the cache alone.
# Prints each run's end-to-end time (the `runner test` command's wall
# time) and run 1 / run 2 (target: at least 5x), with how many crates each
# compiled. The toolchain image is built (or found) first and not timed.
#
# Under TCG run 1 takes minutes, so this is a benchmark, not a test of
# scripts/test. It needs the host to reach crates.io (index.crates.io and
# static.crates.io) and deb.debian.org (the image, first time only).
#
# Usage: tests/bench/cache-workload.sh   (images as for the tests:
# RUNNER_KERNEL / RUNNER_ROOTFS, or built on first use)
set -euo pipefail
cd "$(dirname "$0")/../.."

. tests/bench/setup.sh

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# An empty cache store of this run's own; the toolchain image stays in the
# runner's usual cache, built once.
export RUNNER_CACHE_DIR="$work/caches"
# The pipeline and the crate in a workspace of their own, where run 1 also
# gets the host's CA bundle for cargo: a host whose HTTPS goes through an
# intercepting proxy trusts its CA, and the guest must too.
mkdir -p "$work/ws/examples"
cp -r examples/cache-rust "$work/ws/examples/"
rm -rf "$work/ws/examples/cache-rust/target"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$work/ws/host-ca.crt"
pipeline="$work/ws/cache-rust.yml"
awk '{ print } /^  fetch-and-test:$/ {
  print "    files: [examples/cache-rust, { from: host-ca.crt, to: /usr/local/share/host-ca.crt }]"
  print "    env: { CARGO_HTTP_CAINFO: /usr/local/share/host-ca.crt }"
}' pipelines/cache-rust.yml > "$pipeline"

"$runner" image build "$pipeline" > /dev/null 2> "$work/image.log" || { cat "$work/image.log"; exit 1; }
sed 's/^/    image: /' "$work/image.log" | tail -n 1

run() { # out, runner test arguments...
  local out=$1 start end
  shift
  start=${EPOCHREALTIME/./}
  "$runner" test "$pipeline" --out "$work/$out" "$@" > "$work/$out.console" 2>&1 ||
    { cat "$work/$out.console" "$work/$out"/logs/* >&2; echo "bench: $out failed" >&2; exit 1; }
  end=${EPOCHREALTIME/./}
  echo $((end - start))
}
# The grant names the two hosts, as the job's `allow` does: that also
# covers a host whose resolver maps them to a proxy at a private address.
run1=$(run run1 --filter fetch-and-test --allow-network=index.crates.io:443,static.crates.io:443)
run2=$(run run2 --filter test-offline)

log1=$(cat "$work"/run1/logs/*)
log2=$(cat "$work"/run2/logs/*)
grep -q "network: eth0 is up" <<< "$log1" || { echo "bench: run 1 had no network" >&2; exit 1; }
! grep -q "network:" <<< "$log2" || { echo "bench: run 2 had a network" >&2; exit 1; }
grep -q "restored version" <<< "$log2" || { echo "$log2"; echo "bench: run 2 restored no cache" >&2; exit 1; }
tests=$(grep -o 'test result: ok. [0-9]* passed' <<< "$log2" | head -n 1)
compiled() { grep -c '^ *Compiling ' <<< "$1" || true; }
secs() { echo "scale=1; $1 / 1000000" | bc; }
echo "real workload: examples/cache-rust, $(grep -o '^cargo [0-9.]*' <<< "$log2" | head -n 1), end to end:"
echo "    run 1 (network, empty cache)  $(secs "$run1") s, $(compiled "$log1") crates compiled; $(grep -o 'cache `[^`]*`: committed version [^;]*' <<< "$log1")"
echo "    run 2 (no network, the cache) $(secs "$run2") s, $(compiled "$log2") crates compiled; $tests"
ratio=$(echo "scale=2; $run1 / $run2" | bc)
verdict=MISSED
[ "$(echo "$ratio >= 5" | bc)" = 1 ] && verdict=met
printf '    run 2 is %.1fx faster (target >= 5x, %s)\n' "$ratio" "$verdict"
