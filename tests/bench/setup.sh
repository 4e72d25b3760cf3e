# Sourced by the benches, from the checkout's root: builds the release
# runner and the static guest agent, then sets
#   runner          the release runner's path;
#   RUNNER_AGENT    the prebuilt agent (the runner would otherwise ask cargo
#                   on every run);
#   RUNNER_KERNEL, RUNNER_ROOTFS   as given, or the named images, built on
#                   first use;
# and exports them with CI=true (no progress bars in the timings).
cargo build --release --quiet -p runner
cargo build --quiet --profile agent -p guest-agent --target x86_64-unknown-linux-gnu
target="$(realpath "${CARGO_TARGET_DIR:-target}")"
runner="$target/release/runner"
RUNNER_AGENT="$target/x86_64-unknown-linux-gnu/agent/guest-agent"
export RUNNER_AGENT CI=true
RUNNER_KERNEL="${RUNNER_KERNEL:-$("$runner" image build kernel)}"
RUNNER_ROOTFS="${RUNNER_ROOTFS:-$("$runner" image build minimal)}"
export RUNNER_KERNEL RUNNER_ROOTFS
