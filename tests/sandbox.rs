//! Least privilege: each VM's device models run in a VM process of its own
//! under seccomp filters. A disallowed syscall there (made on purpose by
//! the test hook, `RUNNER_TEST_HOOK_SECCOMP_VIOLATION`) kills that VM's
//! process only: its job fails with the seccomp message, a job running in
//! parallel finishes normally, and so does the runner.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use e2e_tests::{images, runner_bin, runner_test};
use runner_machine::vm_process::child::TEST_HOOK_ENV;

/// The victim is killed this long after its filters are in place: after its
/// boot on an idle machine (about 2 s under TCG), while its second step
/// runs. On a slower machine the kill may come during boot instead, which
/// fails the same job with the same message.
const KILL_AFTER_MS: u32 = 6000;

const PIPELINE: &str = r#"
name: sandbox
defaults:
  files: none
  timeout: 2m
jobs:
  victim:
    steps:
      - name: runs before the kill
        run: echo victim ran
      - name: is killed
        run: sleep 100
  bystander:
    steps:
      - name: outlives the kill
        run: sleep 12; echo bystander alive
      - name: runs after it
        run: echo still here
"#;

fn run_pipeline(dir: &Path) -> Output {
    runner_test(dir, PIPELINE)
        .env("RUNNER_BACKEND", "qemu")
        .env_remove("RUNNER_SECCOMP")
        .env(TEST_HOOK_ENV, format!("victim:{KILL_AFTER_MS}"))
        .args(["--jobs", "2"])
        .output()
        .unwrap()
}

fn suite<'a, 'i>(doc: &'a roxmltree::Document<'i>, job: &str) -> roxmltree::Node<'a, 'i> {
    doc.descendants()
        .find(|n| {
            n.has_tag_name("testsuite") && n.attribute("name").is_some_and(|s| s.ends_with(job))
        })
        .unwrap_or_else(|| panic!("no testsuite for {job}"))
}

fn failures(suite: roxmltree::Node) -> Vec<String> {
    suite
        .descendants()
        .filter(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
        .map(|n| {
            format!(
                "{} {}",
                n.attribute("message").unwrap_or(""),
                n.text().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn a_seccomp_kill_fails_only_that_vms_job() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run_pipeline(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The runner itself ended normally: exit code 1 for a failed job, not
    // a signal, and well before the victim's `sleep 100` would have.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );

    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let victim = failures(suite(&doc, "victim"));
    assert!(
        victim
            .iter()
            .any(|f| f.contains("the VM process was killed by seccomp")),
        "{xml}"
    );
    eprintln!("victim: {}", victim.join(" | "));
    let bystander = suite(&doc, "bystander");
    assert_eq!(failures(bystander), Vec::<String>::new(), "{xml}");
    assert!(
        xml.contains("bystander alive") && xml.contains("still here"),
        "{xml}"
    );
    // The console summary names the cause too.
    assert!(
        stdout.contains("killed by seccomp") || stderr.contains("killed by seccomp"),
        "{stdout}\n{stderr}"
    );

    // Nothing left behind: every VM directory is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("runner-vm-"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_sandbox_settings_are_one_line_errors() {
    let images = images();
    for (var, value, expected) in [
        (
            "RUNNER_SECCOMP",
            "maybe",
            "RUNNER_SECCOMP=maybe is not valid",
        ),
        (
            "RUNNER_EXE",
            "/nonexistent/runner",
            "RUNNER_EXE=/nonexistent/runner is not a file",
        ),
    ] {
        let out = std::process::Command::new(runner_bin())
            .env("RUNNER_KERNEL", &images.kernel)
            .env("RUNNER_ROOTFS", &images.rootfs)
            .env("RUNNER_BACKEND", "qemu")
            .env(var, value)
            .args(["exec", "--", "true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}
