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

# bench_args NAME RUNS [--runs N]: sets `runs` (RUNS unless given) and
# `out`, the bench's emptied output directory, target/NAME-bench.
bench_args() {
    local name="$1"
    runs="$2"
    shift 2
    case "${1:-}" in
        --runs) runs="$2" ;;
        "") ;;
        *) echo "usage: tests/bench/$name.sh [--runs N]" >&2; exit 2 ;;
    esac
    out="target/$name-bench"
    rm -rf "$out"
    mkdir -p "$out"
}
