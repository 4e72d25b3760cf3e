#!/usr/bin/env bash
# Benchmarks of `runner test`, printed as ratios measured in one run:
#  (a) 8 one-step jobs (`uname`) through `runner test --jobs 2` against 8 raw
#      QEMU boots of the same kernel and rootfs, 2 at a time, each running
#      `uname` as init and ending when it exits (target: ratio <= 1.10);
#  (b) the same pipeline with --jobs 2 against --jobs 1 (target: >= 1.8x),
#      printed beside the same speed-up for the raw QEMU boots: that is the
#      ceiling this host's CPUs allow two emulated guests, whatever runs them.
#
# Usage: tests/bench/pipeline.sh   (images as for the tests: RUNNER_KERNEL /
# RUNNER_ROOTFS, or built on first use)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --quiet -p runner
target="${CARGO_TARGET_DIR:-target}"
runner="$target/release/runner"
kernel="${RUNNER_KERNEL:-$("$runner" image build kernel)}"
rootfs="${RUNNER_ROOTFS:-$("$runner" image build minimal)}"
export RUNNER_KERNEL="$kernel" RUNNER_ROOTFS="$rootfs" CI=true

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
command='uname'
{
  echo "name: bench"
  echo "image: minimal"
  echo "defaults: { files: none, timeout: 2m }"
  echo "jobs:"
  for i in 1 2 3 4 5 6 7 8; do
    echo "  job$i: { steps: [ '$command' ] }"
  done
} > "$work/bench.yml"

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

run_pipeline() {
  local jobs=$1 start end
  start=$(now)
  "$runner" test "$work/bench.yml" --jobs "$jobs" --out "$work/out-$jobs" > "$work/log-$jobs" 2>&1 \
    || { cat "$work/log-$jobs"; echo "bench: runner test failed" >&2; exit 1; }
  end=$(now)
  elapsed "$start" "$end"
}

raw_boot() {
  # Same machine, kernel and disk as the qemu backend; the command is init.
  # When it exits the kernel panics, and panic=-1 with -no-reboot ends QEMU.
  # (Arguments after `--` are not possible: QEMU appends its virtio-mmio
  # device list to the end of the command line.)
  timeout 300 qemu-system-x86_64 -accel tcg -cpu max -M microvm,acpi=off -m 256M -smp 1 \
    -kernel "$kernel" \
    -append "console=ttyS0 reboot=k panic=-1 no_timer_check root=/dev/vda ro rootfstype=ext4 init=/bin/$command" \
    -drive "id=root,file=$rootfs,format=raw,if=none,readonly=on" \
    -device virtio-blk-device,drive=root \
    -display none -nodefaults -no-user-config -serial null -no-reboot
}
export -f raw_boot
export kernel rootfs command

raw_boots() {
  local start end
  start=$(now)
  seq 8 | xargs -P "$1" -I{} bash -c raw_boot
  end=$(now)
  elapsed "$start" "$end"
}
raw=$(raw_boots 2)
raw1=$(raw_boots 1)
jobs2=$(run_pipeline 2)
jobs1=$(run_pipeline 1)

ratio_a=$(echo "scale=3; $jobs2 / $raw" | bc)
ratio_b=$(echo "scale=3; $jobs1 / $jobs2" | bc)
ceiling=$(echo "scale=3; $raw1 / $raw" | bc)
verdict() { if [ "$(echo "$1" | bc)" -eq 1 ]; then echo met; else echo MISSED; fi; }
printf '(a) 8 jobs: runner test --jobs 2 %.2fs vs 8 raw QEMU boots (2 at a time) %.2fs: ratio %.2f (target <= 1.10, %s)\n' \
  "$jobs2" "$raw" "$ratio_a" "$(verdict "$ratio_a <= 1.10")"
printf '(b) 8 jobs: --jobs 1 %.2fs vs --jobs 2 %.2fs: speed-up %.2fx (target >= 1.8x, %s); raw QEMU 1 vs 2 at a time: %.2fx on this host\n' \
  "$jobs1" "$jobs2" "$ratio_b" "$(verdict "$ratio_b >= 1.8")" "$ceiling"
