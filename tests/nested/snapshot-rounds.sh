#!/usr/bin/env bash
# Warm start's build-and-restore rounds in L1 (real KVM), more of them than
# the tier's 20: the study behind "no dead snapshots" (issue 17).
#
#   tests/nested/snapshot-rounds.sh [--rounds N] [--runner PATH]     (default 200 rounds)
#
# Needs RUNNER_KERNEL and RUNNER_ROOTFS (what scripts/test prints). The
# runner binary is copied first (target/release/runner, as users run it),
# so a rebuild during a long study changes nothing; --runner names another
# build (an older one, to compare). Prints one line per failed
# round and a summary; results and logs in target/nested-rounds/.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=200 runner=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --runner) runner="$2"; shift 2 ;;
        *) echo "usage: snapshot-rounds.sh [--rounds N] [--runner PATH]" >&2; exit 2 ;;
    esac
done
: "${RUNNER_KERNEL:?set RUNNER_KERNEL (scripts/test prints it)}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"
if [ -z "$runner" ]; then
    cargo build --quiet --release -p runner
    runner=target/release/runner
fi
out=${ROUNDS_OUT:-target/nested-rounds}
rm -rf "$out"
mkdir -p "$out"
cp "$runner" "$out/runner"
cat >"$out/study.sh" <<INNER
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS")
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export ROUNDS_BOOT_TIMEOUT=${ROUNDS_BOOT_TIMEOUT:-60s} ROUNDS_MEMORY=${ROUNDS_MEMORY:-128} ${RUST_LOG:+RUST_LOG=$(printf %q "$RUST_LOG")}
exec $(printf %q "$PWD/tests/nested/snapshot-rounds-inner.sh") /nested-out/runner $rounds /nested-out
INNER
start=$(date +%s)
# A round takes 10-30 s in L1; a frozen L1 writes nothing for 5 minutes.
status=0
tests/nested/run-l1.sh --stall 300 --deadline $((rounds * 90 + 600)) "$out" "$out/study.sh" || status=$?
echo "snapshot rounds: $(wc -l <"$out/rounds.txt") rounds done in $(( $(date +%s) - start )) s (L1 boot included); per round: $out/rounds.txt"
exit "$status"
