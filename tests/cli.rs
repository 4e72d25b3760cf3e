//! The `runner` command as a user runs it: output, exit codes, one-line
//! errors, and nothing left behind after Ctrl-C.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{images, runner_bin};

fn runner(tmp: &Path, args: &[&str]) -> Command {
    let images = images();
    let mut cmd = Command::new(runner_bin());
    cmd.env("TMPDIR", tmp)
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_one_clean_line(out: &Output) {
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    assert!(stderr.starts_with("runner: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn exec_streams_output_and_passes_the_exit_code_on() {
    let tmp = tempfile::tempdir().unwrap();
    let out = runner(tmp.path(), &["exec", "--", "uname", "-sr"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("Linux 6.1"),
        "{}",
        text(&out.stdout)
    );

    let out = runner(tmp.path(), &["exec", "--sh", "--", "echo oops >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr), "oops\n");
    assert_no_leftovers(tmp.path());
}

#[test]
fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = runner(
        tmp.path(),
        &["exec", "--kernel", "/nonexistent/vmlinux", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_one_clean_line(&out);
    assert!(text(&out.stderr).contains("kernels/build.sh"));

    let out = runner(
        tmp.path(),
        &["exec", "--rootfs", "./nope.ext4", "--", "true"],
    )
    .output()
    .unwrap();
    assert_one_clean_line(&out);
    assert!(text(&out.stderr).contains("rootfs/build.sh"));

    // No QEMU on PATH, for the backend that needs it (whichever backend
    // the suite runs on otherwise).
    let out = runner(tmp.path(), &["exec", "--", "true"])
        .env("PATH", "/nonexistent")
        .env("RUNNER_BACKEND", "qemu")
        .output()
        .unwrap();
    assert_one_clean_line(&out);
    assert!(
        text(&out.stderr).contains("apt-get install"),
        "{}",
        text(&out.stderr)
    );

    let out = runner(tmp.path(), &["exec", "--env", "NOEQUALS", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_one_clean_line(&out);

    // The OS error is said once, not once per error in anyhow's chain.
    let out = runner(tmp.path(), &["test", "missing.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_one_clean_line(&out);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert_no_leftovers(tmp.path());
}

#[test]
fn ctrl_c_tears_everything_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = runner(tmp.path(), &["exec", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest runs the command: its VM directory exists and the
    // agent announced itself on the console.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !agent_ready(tmp.path()) {
        assert!(Instant::now() < deadline, "guest never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = child.wait().unwrap();
    // A backstop against a hung teardown, far above what any machine needs.
    assert!(start.elapsed() < Duration::from_secs(60), "slow teardown");
    assert_eq!(status.code(), Some(130));
    assert_no_leftovers(tmp.path());
}

fn agent_ready(tmp: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(tmp) else {
        return false;
    };
    dirs.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("serial.log"))
            .map(|log| log.contains("runner-agent: ready"))
            .unwrap_or(false)
    })
}

/// No temp directories and no process still using them.
fn assert_no_leftovers(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let needle = tmp.to_string_lossy().into_owned();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) {
            let cmdline = text(&cmdline).replace('\0', " ");
            assert!(
                !cmdline.contains(&needle),
                "process still running: {cmdline}"
            );
        }
    }
}
