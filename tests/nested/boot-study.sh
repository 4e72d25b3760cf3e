#!/usr/bin/env bash
# Counts boot failures under real KVM in L1, for our VMM and for QEMU-kvm
# (`--backend qemu` uses -accel kvm there) on the same kernel and rootfs:
# BOOTS boots one at a time and BOOTS boots two at a time, per backend.
# A boot is `runner exec -- true`, with a host-side deadline (300 s: a boot
# that fails here hung or crashed; a slow one, on a busy machine, is not a
# failure).
#
#   tests/nested/boot-study.sh [--npt 0|1] [--smp N] [--thread multi|single] [--cpu MODEL]
#                              [--no-anchor] [--boots N] [--backends "kvm qemu"]
#
# The L1 knobs are run-l1.sh's (the candidates of the configuration study).
# Needs RUNNER_KERNEL and RUNNER_ROOTFS and a built target/release/runner,
# which is copied first, so a rebuild during a long study changes nothing.
# Prints one line per (backend, mode): boots, failures, median seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
npt=0 smp=2 thread=multi cpu=max anchor= boots=30 backends="kvm qemu"
while [ $# -gt 0 ]; do
    case "$1" in
        --npt) npt="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --thread) thread="$2"; shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        --no-anchor) anchor=--no-anchor; shift ;;
        --boots) boots="$2"; shift 2 ;;
        --backends) backends="$2"; shift 2 ;;
        *) echo "usage: boot-study.sh [--npt 0|1] [--smp N] [--thread multi|single] [--cpu MODEL] [--no-anchor] [--boots N] [--backends LIST]" >&2; exit 2 ;;
    esac
done
: "${RUNNER_KERNEL:?set RUNNER_KERNEL}" "${RUNNER_ROOTFS:?set RUNNER_ROOTFS}"
[ -x target/release/runner ] || cargo build --release -q -p runner
config="npt=$npt smp=$smp thread=$thread cpu=$cpu${anchor:+ no-anchor}"
out="target/nested-study/npt$npt-smp$smp-$thread-$cpu${anchor:+-no-anchor}"
rm -rf "$out"
mkdir -p "$out"
cp target/release/runner "$out/runner"
cat >"$out/study.sh" <<INNER
set -u
export RUNNER_KERNEL=$(printf %q "$RUNNER_KERNEL") RUNNER_ROOTFS=$(printf %q "$RUNNER_ROOTFS")
boot() { # BACKEND LOG: one boot, its wall time in ms and ok/fail
    local start=\$(date +%s%N) rc=0
    timeout -k 5 360 /nested-out/runner exec --backend "\$1" --boot-timeout 300s -- true >"\$2" 2>&1 || rc=\$?
    echo "\$(( (\$(date +%s%N) - start) / 1000000 )) \$rc"
    # A failed boot's log is kept for the report.
    [ \$rc = 0 ] || cp "\$2" "/nested-out/failed-\$(date +%s%N).log"
}
for backend in $backends; do
    for i in \$(seq $boots); do boot \$backend /nested-out/last-\$backend.log; done >/nested-out/\$backend-serial.txt
    for i in \$(seq \$(( ($boots + 1) / 2 ))); do
        boot \$backend /nested-out/last-\$backend-a.log >/nested-out/a.txt &
        boot \$backend /nested-out/last-\$backend-b.log >/nested-out/b.txt
        wait
        cat /nested-out/a.txt /nested-out/b.txt
    done >/nested-out/\$backend-pairs.txt
done
dmesg | grep -iE 'soft lockup|rcu.*stall|unhandled' >/nested-out/dmesg-problems.txt
true
INNER
# A generous deadline: 150 s for each of a backend's 2 x BOOTS boots, which
# take 15-45 s, more on a busy machine (a boot only fails at its own 300 s
# limit). L1 writing nothing for 5 minutes has frozen: the environment's
# failure, reported as such with the counts so far.
tests/nested/run-l1.sh --npt "$npt" --smp "$smp" --thread "$thread" --cpu "$cpu" $anchor --stall 300 \
    --deadline $((boots * 2 * $(wc -w <<<"$backends") * 150 + 600)) "$out" "$out/study.sh" >"$out/l1.log" 2>&1 ||
    echo "$config: L1 ended with status $? (124: it froze or ran out of time; see $out/l1.log)" | tee "$out/l1-status.txt"
for f in "$out"/*-serial.txt "$out"/*-pairs.txt; do
    [ -f "$f" ] || continue
    n=$(wc -l <"$f")
    failed=$(awk '$2 != 0' "$f" | wc -l)
    median=$(cut -d' ' -f1 "$f" | sort -n | awk '{a[NR] = $1} END {if (NR) printf "%.1f", a[int((NR + 1) / 2)] / 1000}')
    printf '%-36s %-14s boots %3d  failed %3d  median %s s\n' "$config" "$(basename "$f" .txt)" "$n" "$failed" "$median"
done | tee "$out/summary.txt"
[ -s "$out/dmesg-problems.txt" ] && { echo "L1 kernel problems:"; head "$out/dmesg-problems.txt"; }
true
