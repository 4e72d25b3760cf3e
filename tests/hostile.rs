//! Hostile guests and pipelines, and cleaning up after a killed runner:
//! `runner test` as a user runs it.
//!
//! The first tests need no VM (they stop before one boots); the others boot
//! real guests and need the images (see support.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{images, processes_mentioning, runner_bin, vm_dirs};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `runner test pipeline.yml` in `dir`, with `dir` as the temp dir too.
fn runner_test(dir: &Path, yaml: &str, args: &[&str], with_images: bool) -> Command {
    std::fs::write(dir.join("pipeline.yml"), yaml).unwrap();
    let mut cmd = Command::new(runner_bin());
    if with_images {
        let images = images();
        cmd.env("RUNNER_KERNEL", &images.kernel)
            .env("RUNNER_ROOTFS", &images.rootfs);
    }
    cmd.env("CI", "true")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .args(["test", "pipeline.yml"])
        .args(args);
    cmd
}

fn one_line_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "expected one line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

const TRIVIAL: &str = "name: t\ndefaults: { files: none }\njobs:\n  a:\n    steps: [\"true\"]\n";

#[test]
fn out_dot_never_deletes_the_user_s_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/keep.txt"), "mine").unwrap();
    let out = runner_test(dir.path(), TRIVIAL, &["--out", "."], false)
        .output()
        .unwrap();
    let stderr = one_line_error(&out);
    assert!(stderr.contains("was not created by runner"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("logs/keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn files_from_outside_the_workspace_need_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: t\njobs:\n  a:\n    files:\n      - from: /etc/passwd\n        to: /tmp/\n    steps: [\"true\"]\n";
    let out = runner_test(dir.path(), yaml, &["--out", "out"], false)
        .output()
        .unwrap();
    let stderr = one_line_error(&out);
    assert!(
        stderr.contains("`/etc/passwd` is outside the workspace")
            && stderr.contains("--allow-host-files"),
        "{stderr}"
    );
    assert!(!dir.path().join("out/logs").exists());
}

/// A guest that returns every kind of hostile artifact.
const HOSTILE: &str = r#"
name: hostile
defaults: { files: none }
jobs:
  evil:
    workdir: /tmp
    steps:
      - name: plant
        run: |
          echo '#!/bin/sh' > suid && chmod 4755 suid
          ln -s /etc/shadow shadow
          mknod null c 1 3
          echo '<testsuite/>' > /tmp/pytest-junit.xml
          truncate -s 50G big
    artifacts:
      - suid
      - shadow
      - null
      - /tmp/pytest-junit.xml
      - missing.xml
      - big
      - suid
"#;

#[test]
fn hostile_artifacts_come_back_as_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), HOSTILE, &["--out", "out"], true)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let got = dir.path().join("out/artifacts/01-evil");
    let mode = std::fs::metadata(got.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(std::fs::symlink_metadata(got.join("shadow")).is_err());
    assert!(std::fs::symlink_metadata(got.join("null")).is_err());
    assert!(std::fs::symlink_metadata(got.join("big")).is_err());
    // An absolute artifact lands under its path minus the leading `/`.
    assert_eq!(
        std::fs::read_to_string(got.join("tmp/pytest-junit.xml")).unwrap(),
        "<testsuite/>\n"
    );
    for expected in [
        "==== evil: 5 artifact problems ====",
        "artifact refused: shadow: symlink to /etc/shadow leads out",
        "artifact `missing.xml` not collected",
        "artifact `big`: artifact limit reached: big",
        "artifact `suid` not collected: the transfer was stopped at the artifact limit",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // The agent's tar builder cannot archive a device node at all (it
    // reports an error), so the host's own refusal of devices is only
    // reached by forged archives (runner/src/session/unpack_tests.rs).
    assert!(
        stdout.contains("artifact refused: null: device nodes are not copied out")
            || stdout.contains("artifact `null` not collected"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    assert!(xml.contains("symlink to /etc/shadow leads out"), "{xml}");
}

/// Polls `done` until it holds; the limit is only a backstop against a
/// hung test, far above what a slow machine needs.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_runner_leaves_no_vm_behind_and_its_dir_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let slow = "name: t\ndefaults: { files: none }\njobs:\n  a:\n    steps: [\"sleep 3600\"]\n";
    let mut runner = runner_test(dir.path(), slow, &["--out", "out"], true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The VM process names its sockets in the temp dir: once it runs, kill.
    let needle = dir.path().to_string_lossy().into_owned();
    eventually("a VM process to start", || {
        !processes_mentioning(&needle).is_empty()
    });
    runner.kill().unwrap(); // SIGKILL: no cleanup runs
    runner.wait().unwrap();
    eventually("the VM processes to die", || {
        processes_mentioning(&needle).is_empty()
    });
    assert_eq!(vm_dirs(dir.path()).len(), 1, "the dead runner's VM dir");

    // The next run sweeps it (and cleans up its own).
    let out = runner_test(dir.path(), TRIVIAL, &["--out", "out"], true)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
