#!/usr/bin/env bash
# Runs in L1 (real KVM): ROUNDS rounds of warm start's build-and-restore,
# each from an empty snapshot directory, every other one with 2 vCPUs.
# Guests get ROUNDS_MEMORY MiB (128): the race this hunts is in the
# devices' queues at the moment of the snapshot, not in memory, and a
# smaller guest is written and checked sooner.
# A round is two `runner exec`s: the first builds the snapshot (and checks
# a clone of it before publishing it), then runs its command in a restored
# clone; the second restores the published file again. Both commands must
# print their marker, and the runner must not have found the snapshot it
# built dead (its "failed its check" or "quarantined" warnings).
#
#   snapshot-rounds-inner.sh RUNNER ROUNDS OUT
#
# Writes OUT/rounds.txt (round vcpus build-rc restore-rc dead-warnings
# build-ms restore-ms caught-up), OUT/rounds-logs/ for every failed round,
# and prints a one-line summary. Exit 0 only if every round passed.
# caught-up counts the queues that had work left when the snapshot's vCPUs
# stopped (the VMM logs them at debug level: RUST_LOG=runner_vmm=debug).
set -uo pipefail
runner="$1" rounds="$2" out="$3"
mkdir -p "$out/rounds-logs"
: >"$out/rounds.txt"
# The snapshots of this study only: emptied before every round. Images
# (RUNNER_KERNEL, RUNNER_ROOTFS) are named by the environment.
export RUNNER_CACHE="${TMPDIR:-/tmp}/snapshot-rounds-cache"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
one() { # LOG VCPUS MARKER: one exec; prints "rc ms"
    local start rc=0
    start=$(ms)
    # The kill is the last resort: the runner's own limits end a dead clone.
    timeout -k 5 300 "$runner" exec --backend kvm --vcpus "$2" --memory "${ROUNDS_MEMORY:-128}" \
        --boot-timeout "${ROUNDS_BOOT_TIMEOUT:-60s}" -- echo "$3" >"$1" 2>&1 || rc=$?
    grep -qx "$3" "$1" || [ "$rc" -ne 0 ] || rc=1
    echo "$rc $(( $(ms) - start ))"
}
failed=0 dead=0
for i in $(seq "$rounds"); do
    vcpus=$(( i % 2 == 0 ? 2 : 1 ))
    rm -rf "$RUNNER_CACHE/snapshots"
    read -r build_rc build_ms < <(one "$out/build.log" "$vcpus" "B$i")
    read -r restore_rc restore_ms < <(one "$out/restore.log" "$vcpus" "R$i")
    warnings=$(cat "$out/build.log" "$out/restore.log" | grep -cE 'failed its check|quarantined')
    caught=$(grep -c 'had work the vCPUs left' "$out/build.log")
    echo "$i $vcpus $build_rc $restore_rc $warnings $build_ms $restore_ms $caught" >>"$out/rounds.txt"
    if [ "$build_rc" != 0 ] || [ "$restore_rc" != 0 ] || [ "$warnings" != 0 ]; then
        failed=$((failed + 1))
        [ "$warnings" != 0 ] && dead=$((dead + 1))
        cp "$out/build.log" "$out/rounds-logs/$i-build.log"
        cp "$out/restore.log" "$out/rounds-logs/$i-restore.log"
        echo "snapshot rounds: round $i ($vcpus vCPU) failed: build exec $build_rc, restore exec $restore_rc, $warnings dead-snapshot warnings; its logs:"
        tail -n 20 "$out/build.log" "$out/restore.log" | sed 's/^/    /'
    fi
done
caught=$(awk '{n += $8} END {print n + 0}' "$out/rounds.txt")
echo "snapshot rounds: $rounds rounds, $failed failed, $dead with a dead snapshot found, $caught queues caught up before saving"
[ "$failed" -eq 0 ]
