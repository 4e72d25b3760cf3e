//! Bounded disk with real guests: a console flood and a step that prints
//! megabytes leave logs no bigger than their caps, with head, tail and a
//! marker saying how much was left out.

use std::time::{Duration, Instant};

use e2e_tests::{images, runner_bin, sh, spec};
use runner::session::wait_for_agent;
use runner_machine::select;

#[test]
fn a_console_flood_leaves_a_capped_serial_log() {
    let limit = 16 * 1024;
    let backend = select::from_env().expect("a backend");
    let mut spec = spec("serial-cap");
    spec.serial_log_limit = Some(limit);
    let mut vm = backend.start(&spec).expect("VM starts");
    let mut session = wait_for_agent(vm.as_mut(), spec.boot_timeout).expect("ready");
    let flood = sh(
        &mut session,
        "head -c 200000 /dev/zero | tr '\\0' x | fold -w 100 > /dev/console; echo flood done > /dev/console",
    );
    assert!(flood.status.success(), "{}", flood.stderr());
    // The console reaches the log through a thread: wait for the last line
    // (a condition, not a time; the bound only catches a hang). Not only as
    // the very last line: a loaded host makes the kernel log lines of its
    // own (timer warnings) after it.
    let until = Instant::now() + Duration::from_secs(600);
    let lines = loop {
        let lines = vm.serial_tail(10_000);
        if lines.iter().any(|l| l.contains("flood done")) {
            break lines;
        }
        assert!(
            Instant::now() < until,
            "the console's end never arrived; it ends with:\n{}",
            lines[lines.len().saturating_sub(5)..].join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes as u64 <= limit, "{bytes} bytes of console kept");
    // The head is the kernel's first words; the marker says what is gone.
    assert!(lines[0].starts_with("[ "), "{:?}", &lines[..3]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[runner: ") && l.ends_with(" bytes omitted here]")),
        "no omission marker"
    );
}

#[test]
fn job_logs_are_capped_by_log_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yml");
    std::fs::write(
        &file,
        "name: t\ndefaults: { files: none }\njobs:\n  loud:\n    steps:\n      - name: prints three megabytes\n        run: head -c 3000000 /dev/zero | tr '\\0' x; echo; echo the end\n",
    )
    .unwrap();
    let images = images();
    let out = std::process::Command::new(runner_bin())
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .arg("test")
        .arg(&file)
        .args(["--out", "out", "--log-limit", "64K"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("out/logs/01-loud.log")).unwrap();
    assert!(log.len() <= 64 * 1024, "{} bytes", log.len());
    assert!(log.starts_with("==> booting loud"), "{}", &log[..100]);
    assert!(log.contains(" bytes omitted here]\n"));
    assert!(
        log.contains("the end\n==> step 1: ok"),
        "{}",
        &log[log.len() - 300..]
    );
}
