//! Containers inside the job's VM, end to end: `pipelines/containers.yml`
//! as it is (moby's check-config.sh passes in the guest; Podman builds and
//! runs an image rootful and rootless; Docker builds, saves, loads and runs
//! one), then the same images with what can go wrong: a container's exit
//! code is its step's, a container that fills the disk gets ENOSPC, a fork
//! bomb ends at its step's timeout, and a container reaches a server on the
//! host only through a network the operator granted and the job asked for.
//! Everything is offline: the container images are `FROM scratch` with the
//! guest's busybox (examples/containers).
//!
//! Runs on the backend `RUNNER_BACKEND` names. The nested tier runs two of
//! these tests (tests/nested/run.sh says which) with the kvm backend and
//! warm start on, so every job there is a clone restored
//! from a snapshot of the booted image: cgroups and netfilter must come back
//! usable. The Debian images are built on the host (tests/nested/run.sh
//! builds them before L1 boots; L1 has no network).

use std::path::Path;
use std::process::Output;

use e2e_tests::{both, job_log, repo, require_tool, runner_test, HttpServer};

fn on_kvm() -> bool {
    std::env::var("RUNNER_BACKEND").as_deref() == Ok("kvm")
}

/// `pipelines/containers.yml`, with the `extra` jobs added (`args` then
/// select them with `--filter`), run in `dir` next to a copy of
/// examples/containers. The extra jobs name the example's images by their
/// YAML anchors (`*podman`, `*docker`), so they boot the same cached images.
fn run(dir: &Path, extra: Option<&str>, args: &[&str]) -> Output {
    let example = std::fs::read_to_string(repo().join("pipelines/containers.yml")).unwrap();
    let yaml = match extra {
        None => example,
        // The example's jobs stay: anchors must come before their aliases.
        Some(jobs) => format!("{example}{jobs}"),
    };
    let ctx = dir.join("examples/containers");
    std::fs::create_dir_all(&ctx).unwrap();
    for file in std::fs::read_dir(repo().join("examples/containers")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), ctx.join(file.file_name())).unwrap();
    }
    let mut cmd = runner_test(dir, &yaml);
    let mut jobs = "2";
    if on_kvm() {
        // Warm start: each job is a restored clone of a snapshot made once
        // per image. The runner cache is the default one, where the images
        // are. One job at a time: in the nested tier's L1 (two emulated
        // CPUs), dockerd beside another container VM took over 300 s.
        cmd.env("RUNNER_COLD", "0");
        jobs = "1";
    }
    cmd.args(["--jobs", jobs]).args(args).output().unwrap()
}

/// On kvm, the jobs were restored clones: a snapshot was built, and no job
/// fell back to a cold boot.
fn were_clones(out: &Output) {
    if on_kvm() {
        let text = both(out);
        assert!(text.contains("runner: snapshot "), "{text}");
        assert!(!text.contains("booting cold"), "{text}");
    }
}

/// A container image made from the guest's busybox without running a
/// container (`import`, not `build`, which the example covers): the jobs
/// below test what containers do, and the nested tier's time is short.
fn import(tool: &str, tag: &str) -> String {
    format!(
        "      - mkdir -p rootfs/bin && cp /bin/busybox rootfs/bin/ && for applet in sh fallocate timeout wget; do ln -s busybox rootfs/bin/$applet; done && tar -C rootfs -c . | {tool} import --change 'ENV PATH=/bin' - {tag}\n"
    )
}

/// Starts Docker's daemon as the example does, in one step.
const DOCKERD: &str = "      - \"dockerd >/var/log/dockerd.log 2>&1 & timeout 300 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done'\"\n";

// The example's two jobs run in two tests, so the nested tier can run one
// of them (Podman's) without the other: each is minutes there.

#[test]
fn podman_builds_and_runs_an_image_rootful_and_rootless_in_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), None, &["-f", "podman"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    were_clones(&out);
    let podman = job_log(dir.path(), "podman");
    // Once rootful, once rootless; each container sees only its own root.
    assert_eq!(
        podman.matches("hello from a container: pid 1,").count(),
        2,
        "{podman}"
    );
    // Rootless: the user's container runs as root of its user namespace.
    let rootless = podman.split("rootless").last().unwrap();
    assert!(rootless.lines().any(|l| l.trim() == "0"), "{podman}");
}

#[test]
fn docker_passes_check_config_then_builds_loads_and_runs_an_image_in_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), None, &["-f", "docker"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    were_clones(&out);
    let docker = job_log(dir.path(), "docker");
    assert!(docker.contains("Generally Necessary:"), "{docker}");
    assert!(
        docker.contains("check-kernel: every option Docker and Podman need is enabled"),
        "{docker}"
    );
    assert!(docker.contains("Loaded image: hello:latest"), "{docker}");
    assert!(
        docker.contains("hello from a container: pid 1,"),
        "{docker}"
    );
}

#[test]
fn a_container_s_exit_code_disk_and_processes_are_bounded_by_its_job() {
    let podman = import("podman", "localhost/hello");
    let jobs = format!(
        r#"
  bounded:
    image: *podman
    steps:
{podman}      - name: fill
        run: "if podman run --rm localhost/hello fallocate -l 8G /big 2>/dev/shm/err; then exit 1; fi; cat /dev/shm/err; grep -i 'no space left' /dev/shm/err"
      # The container's layer went with it: the disk has room again.
      - df -m / && touch /var/after-the-fill
      - name: exit-code
        run: podman run --rm localhost/hello sh -c 'exit 7'
  fork-bomb:
    image: *podman
    steps:
{podman}      - name: bomb
        run: "podman run --rm localhost/hello sh -c 'bomb() {{ bomb | bomb & }}; bomb; sleep 100000'"
        timeout: 1m
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        Some(&jobs),
        &["-f", "bounded", "-f", "fork-bomb"],
    );
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    were_clones(&out);
    // Each failure is reported with its own reason.
    assert!(text.contains("exit-code: exit code 7"), "{text}");
    // The guest's agent stops the step, or, when the bomb starves it, the
    // host's deadline ends the VM: either way the step timed out.
    assert!(text.contains("bomb: timed out after 1m"), "{text}");
    assert!(text.contains("(step timeout 1m"), "{text}");
    // The disk filler's job passed: ENOSPC reached the container.
    let bounded = job_log(dir.path(), "bounded");
    assert!(
        bounded.to_lowercase().contains("no space left"),
        "{bounded}"
    );
    assert!(text.contains("[bounded] fill ... ok"), "{text}");
}

/// How the second job of [`reaches_the_host_only_when_granted`] is kept
/// from the host's server.
enum Denied {
    /// Its network is granted, but its `allow` names another port.
    OtherPort,
    /// It has no network.
    NoNetwork,
}

/// Two jobs on `tool`'s image (`podman` or `docker`): the first has a
/// granted network that allows the host's test server, and its container
/// on the default bridge fetches from it; the second's container cannot
/// reach it. The server's own record shows which requests arrived.
fn reaches_the_host_only_when_granted(tool: &str, denied: Denied) {
    require_tool("passt", "passt");
    let server = HttpServer::start(|path| format!("hello {path} from the host"));
    let port = server.port;
    let other = if port == 65535 { 1 } else { port + 1 };
    let (tag, prepare) = match tool {
        "podman" => ("localhost/hello", import("podman", "localhost/hello")),
        _ => ("hello", format!("{DOCKERD}{}", import("docker", "hello"))),
    };
    // `timeout` bounds a dropped SYN (busybox wget's own -T crashes): a
    // generous one where the fetch must work, a short one where it cannot.
    let wget = |path: &str, secs: u32| {
        format!("{tool} run --rm {tag} timeout {secs} wget -q -O - http://10.0.2.2:{port}/{path}")
    };
    let (granted, kept_out) = (format!("{tool}-granted"), format!("{tool}-kept-out"));
    let fetch = wget(&granted, 120);
    // wget itself must fail (1, or 143 from `timeout`): 125 to 127 would
    // be the runtime or a missing command, not the network.
    let cannot = format!(
        "rc=0; {} || rc=$?; echo wget-exit-$rc; test $rc = 1 -o $rc = 143 && echo no-route-as-expected",
        wget(&kept_out, 15)
    );
    let network = match denied {
        Denied::OtherPort => format!("    network: {{ allow: [\"127.0.0.1:{other}\"] }}\n"),
        Denied::NoNetwork => String::new(),
    };
    let jobs = format!(
        r#"
  {granted}:
    image: *{tool}
    network: {{ allow: ["127.0.0.1:{port}"] }}
    steps:
{prepare}      - "{fetch}"
  {kept_out}:
    image: *{tool}
{network}    steps:
{prepare}      - "{cannot}"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let grant = format!("--allow-network=public,127.0.0.1:{port},127.0.0.1:{other}");
    let out = run(
        dir.path(),
        Some(&jobs),
        &["-f", &granted, "-f", &kept_out, &grant],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    were_clones(&out);
    let log = job_log(dir.path(), &granted);
    assert!(
        log.contains(&format!("hello /{granted} from the host")),
        "{log}"
    );
    let log = job_log(dir.path(), &kept_out);
    assert!(log.contains("no-route-as-expected"), "{log}");
    assert_eq!(server.paths(), [format!("/{granted}")]);
}

#[test]
fn a_podman_container_reaches_the_host_only_through_what_its_job_allows() {
    reaches_the_host_only_when_granted("podman", Denied::OtherPort);
}

#[test]
fn a_docker_container_reaches_the_host_only_through_a_granted_network() {
    reaches_the_host_only_when_granted("docker", Denied::NoNetwork);
}
