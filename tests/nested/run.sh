#!/usr/bin/env bash
# The nested KVM tier: proves the built-in VMM end to end under real KVM.
#
#   tests/nested/run.sh            (scripts/test runs it after the host suite)
#
# Needs RUNNER_KERNEL and RUNNER_ROOTFS (scripts/test sets them). It builds
# the test binaries, boots L1 (tests/nested/l1-image.sh, run-l1.sh: Debian's
# kernel under QEMU TCG, whose emulated AMD SVM gives kvm_amd a real
# /dev/kvm), and runs tests/nested/inner.sh there: `runner doctor` must pick
# kvm, then the VMM, kvm backend and end-to-end tests run with
# RUNNER_BACKEND=kvm. Results land in target/nested/; any failure fails this
# script with the failing test's output.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${RUNNER_KERNEL:?set RUNNER_KERNEL (scripts/test does)}"
: "${RUNNER_ROOTFS:?set RUNNER_ROOTFS (scripts/test does)}"
# The whole tier's deadline: L1 is killed past it, and its console tail shown.
readonly deadline="${NESTED_DEADLINE:-3600}"
readonly out=target/nested

# The binaries the tier runs, by test target: the VMM on tiny guests, the
# kvm backend on the real kernel, then everything a user does end to end,
# the fault drill (a guest that panics, powers off, freezes its agent...),
# opt-in networking (our virtio-net device on passt), the on-disk root
# of images with a `size` (our virtio-blk copy-on-write layer, written), and
# cache volumes (a persistent layer; cold, and attached to a restored
# clone's empty slot), and Docker and Podman in restored clones.
# NESTED_TARGETS="network" runs only the targets it names; `TARGET:FILTER`
# runs only that target's tests whose names contain FILTER.
# The containers target runs two of its tests here by default: Podman's
# example (build, run, rootless) and Docker's granted network (dockerd, its
# bridge and NAT), in restored clones; the host tier runs all of them.
# `snapshot_rounds` is not a test binary: it is warm start's build-and-restore
# rounds (snapshot-rounds-inner.sh), NESTED_SNAPSHOT_ROUNDS of them (20).
read -ra targets <<<"${NESTED_TARGETS:-kvm_guests kvm_virtio linux_early_boot kvm_backend kvm_interrupt agent cli pipeline faults network segment services:a_service_that services:the_example_pipeline metering job_disk cache_disks caches containers:podman_builds containers:a_docker_container snapshot warm_start hostile:jailed snapshot_rounds}"
readonly targets
cargo build --quiet -p runner
# The static guest agent, as the runner builds it (images.rs): spec images
# built inside L1 (tests/job_disk.rs) add it, and L1 has no cargo.
agent_target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile agent -p guest-agent --target "$agent_target"
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
agent="$target_dir/$agent_target/agent/guest-agent"
json=$(cargo test --no-run --quiet -p runner-vmm -p runner -p e2e-tests --message-format=json)
rm -rf "$out"
mkdir -p "$out"
echo "$target_dir/debug/runner" >"$out/runner-path"
# L1 is this machine (its root, read-only), so its runner uses this
# machine's runner cache: the images built here are found there. Its own
# init gives it no HOME.
printf 'HOME=%q\n' "$HOME" >"$out/host-env"
for var in RUNNER_CACHE XDG_CACHE_HOME; do
    [ -z "${!var:-}" ] || printf '%s=%q\n' "$var" "${!var}" >>"$out/host-env"
done
# Debian spec images cannot be built in L1 (no network there): the
# containers and services targets' images are built here first. L1 sees them in this
# machine's runner cache, as other inodes: inner.sh has the runner check
# their content against their seals once, before the tests.
build_images() {
    RUNNER_AGENT="$agent" "$target_dir/debug/runner" image build "$1" >/dev/null
    echo "$PWD/$1" >>"$out/image-pipelines"
}
if printf '%s\n' "${targets[@]}" | grep -qE '^containers(:|$)'; then
    build_images pipelines/containers.yml
fi
# The services target's example runs PostgreSQL, warm-started.
if printf '%s\n' "${targets[@]}" | grep -qE '^services(:the_example|$)'; then
    build_images pipelines/services.yml
fi
for t in "${targets[@]}"; do
    if [ "$t" = snapshot_rounds ]; then
        echo "${NESTED_SNAPSHOT_ROUNDS:-20}" >"$out/snapshot-rounds"
        continue
    fi
    name=${t%%:*} filter=
    [ "$name" = "$t" ] || filter=${t#*:}
    bin=$(jq -r --arg t "$name" 'select(.reason == "compiler-artifact" and .target.name == $t
        and (.target.kind | index("test")) and .executable != null) | .executable' <<<"$json")
    [ -n "$bin" ] || { echo "nested: no test binary for target $name" >&2; exit 1; }
    # A test's deadline in L1: inner.sh's default (420 s), but more for the
    # containers target, whose jobs run one at a time there (two container
    # VMs at once on L1's two emulated CPUs starve dockerd).
    test_deadline=
    # So does the services example: PostgreSQL, booted for its snapshot
    # and then restored.
    case "$t" in containers* | services | services:the_example*) test_deadline=900 ;; esac
    echo "$bin|$filter|$test_deadline" >>"$out/tests.txt"
done

# A test that hangs is killed by inner.sh at its deadline; L1 writing nothing
# to the results for longer (not even inner.sh's heartbeat, once a minute)
# means L1 itself froze (an environment failure):
# it is killed and restarted, and inner.sh resumes after the finished tests.
readonly stall=540
for attempt in 1 2 3; do
    echo "nested: booting L1 (QEMU TCG, emulated AMD SVM, kvm-amd npt=0)" >&2
    set +e
    tests/nested/run-l1.sh --deadline "$deadline" --stall "$stall" "$out" \
        tests/nested/inner.sh /nested-out /nested-out/tests.txt "$RUNNER_KERNEL" "$RUNNER_ROOTFS" "$agent"
    status=$?
    set -e
    [ "$status" -eq 124 ] && [ "$attempt" -lt 3 ] || break
    echo "nested: L1 froze (the environment, not a test): restarting it ($attempt of 2), resuming" >&2
    echo "$attempt" >>"$out/l1-restarts"
done
if [ "$status" -ne 0 ]; then
    echo "nested: FAILED (exit $status); per-test logs in $out/logs" >&2
    [ -s "$out/failed" ] && sed 's/^/nested: failed: /' "$out/failed" >&2
    exit 1
fi
restarts=0
[ -f "$out/l1-restarts" ] && restarts=$(wc -l <"$out/l1-restarts")
read -r passed _ retried _ <"$out/counts"
echo "nested: passed ($passed tests, $retried environment retries, $restarts L1 restarts)" >&2
