#!/usr/bin/env bash
# Runs the fuzz targets one after another, SECONDS each (default 600), and
# prints for each how long it ran, how many inputs it executed and whether
# it crashed. Usage: fuzz/run.sh [SECONDS] [TARGET...]   (see fuzz/README.md)
#
# One libFuzzer process at a time, under nice: the machine is shared. Each
# target keeps its corpus in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>), crashes go to fuzz/artifacts/<target>/ and the log
# of the last run to fuzz/logs/<target>.log.
set -euo pipefail

cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
all=(frame vsock_packet block_request layer_file device_state net_filter pipeline unpack junit libtest
    mmio_transport snapshot safe_untar oci_layer segment)
targets=("${@:-${all[@]}}")

# cargo-fuzz needs nightly-only flags (-Zsanitizer); RUSTC_BOOTSTRAP lets the
# stable toolchain accept them. -a: debug assertions, so integer overflow
# panics (and so counts as a crash) as it would in a test build.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "install it: cargo install cargo-fuzz" >&2; exit 1; }
for t in "${targets[@]}"; do
    [[ -f fuzz_targets/$t.rs ]] || { echo "no such target: $t" >&2; exit 1; }
done
nice -n 10 cargo fuzz build -a >&2

# Longest input per target: tar needs room for several 512-byte blocks, a
# chain input is a 129-byte table plus the memory it points at, a block
# device state and a layer file carry whole 4 KiB chunks (and a snapshot's state the VM's
# zero-padded KVM structs), a report needs room for a few testcases, register operations
# for a whole driver set-up and the rings after them.
max_len() {
    case $1 in
        unpack|snapshot|safe_untar|oci_layer|layer_file) echo 16384 ;;
        pipeline|junit|libtest) echo 8192 ;;
        device_state) echo 32768 ;;
        *) echo 4096 ;;
    esac
}

mkdir -p logs
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    before=$(find "artifacts/$t" -type f | wc -l)
    start=$(date +%s)
    status=0
    # -timeout: an input that takes over 10 s is a hang, reported as a crash.
    nice -n 10 cargo fuzz run -a "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -max_len="$(max_len "$t")" \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -n 1)
    crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
    line=$(printf '%-14s %5ss  runs: %-10s crashes: %s%s' "$t" "$elapsed" "${runs:-?}" "$crashes" \
        "$( ((status != 0)) && echo "  (exit $status, see fuzz/logs/$t.log)" || true)")
    echo "$line"
    summary+=("$line")
done
echo "--- summary"
printf '%s\n' "${summary[@]}"
