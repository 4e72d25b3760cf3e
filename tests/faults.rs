//! The fault drill: one `runner test` run, as a user runs it, whose every
//! job is a fault a pull request could plant in its guest. The runner must
//! survive each one, report it as what it is, on time, and leave nothing
//! behind. The figures (jobs tried, faults survived, bytes refused, time to
//! report each fault) are printed for the closing notes of the hardening
//! work: `cargo test -p e2e-tests --test faults -- --nocapture`.
//!
//! Nothing here depends on the machine's speed: every fault either ends the
//! step at once (a panic, a power-off, the OOM killer) or can never end by
//! itself (a frozen agent, endless output), so only a limit can stop it.

use std::path::Path;
use std::process::Command;

use e2e_tests::{images, processes_mentioning, runner_bin, vm_dirs};

const DRILL: &str = r#"
name: drill
defaults: { files: none }
jobs:
  frozen-agent:
    steps:
      # The agent (PID 1) moved into a cgroup and frozen: it can neither
      # stop the step at its timeout nor answer; only the host can end this.
      - name: freezes the agent
        run: mkdir /sys/fs/cgroup/f; echo 1 > /sys/fs/cgroup/f/cgroup.procs; echo 1 > /sys/fs/cgroup/f/cgroup.freeze; sleep 1000
        timeout: 10s
  kernel-panic:
    # Little memory, so that filling it (slow under nested KVM) is quick.
    memory: 128M
    steps:
      - name: panics the kernel
        run: echo 1 > /proc/sys/vm/panic_on_oom; tail /dev/zero; sleep 1000
        timeout: 30m
  power-off:
    steps:
      - name: powers off
        run: poweroff -f; sleep 1000
        timeout: 30m
  endless-output:
    steps:
      - name: prints for ever
        run: yes
        timeout: 10s
  out-of-memory:
    memory: 128M
    steps:
      - name: eats all memory
        run: tail /dev/zero; echo "tail ended with $?"
      - name: the agent lives on
        run: echo still here
  artifact-bombs:
    steps:
      - name: plants bombs
        run: |
          mkdir -p /tmp/a && cd /tmp/a
          ln -s /etc/shadow shadow
          echo x > suid && chmod 4755 suid
          truncate -s 50G big
    artifacts: [ /tmp/a/shadow, /tmp/a/suid, /tmp/a/big ]
"#;

/// Each fault: its job, the step that plants it, and what the JUnit report
/// must say about it.
const FAULTS: &[(&str, &str, &str)] = &[
    ("frozen-agent", "freezes the agent", "host deadline"),
    ("kernel-panic", "panics the kernel", "Kernel panic"),
    ("power-off", "powers off", "closed the connection"),
    ("endless-output", "prints for ever", "timed out after 10s"),
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// VM directories and processes left behind in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = vm_dirs(dir);
    found.extend(processes_mentioning(&dir.to_string_lossy()));
    found
}

#[test]
fn every_planted_fault_is_survived_reported_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yml"), DRILL).unwrap();
    let images = images();
    let started = std::time::Instant::now();
    let out = Command::new(runner_bin())
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .args(["test", "pipeline.yml", "--jobs", "2", "--out", "out"])
        .output()
        .unwrap();
    let wall = started.elapsed();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("the report is whole");
    let case = |job: &str, step: &str| {
        doc.descendants()
            .find(|n| {
                n.has_tag_name("testcase")
                    && n.attribute("classname") == Some(job)
                    && n.attribute("name") == Some(step)
            })
            .unwrap_or_else(|| panic!("no testcase {job}/{step} in\n{xml}"))
    };
    let mut report = Vec::new();
    for (job, step, expected) in FAULTS {
        let case = case(job, step);
        let problem = case
            .children()
            .find(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
            .unwrap_or_else(|| panic!("{job}/{step} did not fail:\n{xml}"));
        let said = format!(
            "{} {}",
            problem.attribute("message").unwrap_or_default(),
            problem.text().unwrap_or_default()
        );
        assert!(said.contains(expected), "{job}: no {expected:?} in {said}");
        let seconds: f64 = case.attribute("time").unwrap().parse().unwrap();
        // The step's time: planting the fault (filling memory takes a
        // while), the fault, and noticing it.
        report.push(format!(
            "{job}: step ended and reported after {seconds:.1}s ({expected})"
        ));
    }

    // The OOM killer took the step's process, not the agent: the next step
    // ran in the same VM.
    let oom = case("out-of-memory", "eats all memory");
    assert!(!oom.children().any(|n| n.has_tag_name("failure")), "{xml}");
    assert!(case("out-of-memory", "the agent lives on")
        .children()
        .all(|n| !n.has_tag_name("failure") && !n.has_tag_name("error")));
    let log = std::fs::read_to_string(dir.path().join("out/logs/05-out-of-memory.log")).unwrap();
    assert!(log.contains("tail ended with 137"), "{log}");
    assert!(log.contains("still here"), "{log}");

    // Artifacts come back as data or not at all, and the refusal is counted.
    let got = dir.path().join("out/artifacts/06-artifact-bombs/tmp/a");
    assert!(std::fs::symlink_metadata(got.join("shadow")).is_err());
    assert!(std::fs::symlink_metadata(got.join("big")).is_err());
    if let Ok(meta) = std::fs::metadata(got.join("suid")) {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7000, 0, "setuid kept");
    }
    let refused: u64 = stdout
        .lines()
        .filter_map(|l| l.split("its ").nth(1)?.split(" bytes would").next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(refused >= 50 << 30, "no 50 GiB refusal in:\n{stdout}");
    assert!(
        stdout.contains("symlink to /etc/shadow leads out"),
        "{stdout}"
    );

    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    eprintln!(
        "fault drill: 6 jobs tried, {} faults survived and reported, {refused} bytes refused, {:.0}s in all",
        FAULTS.len() + 2,
        wall.as_secs_f64()
    );
    for line in report {
        eprintln!("  {line}");
    }
}
