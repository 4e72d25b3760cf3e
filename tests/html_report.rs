//! `report.html` in a real browser: Debian's headless Chromium loads the
//! file, its script draws the page, and the DOM it built is read back.
//!
//! * a real `runner test` run (QEMU) with a passing and a failing job:
//!   job names, statuses, the timeline's bars and the failing step's output;
//! * a report built from results with hostile output (`</script>`, ANSI
//!   sequences, NUL bytes, invalid UTF-8, 10 MB): the page shows the
//!   literal text, runs no script of the guest's, and stays small.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use e2e_tests::chromium::{dump_dom, dump_dom_at, texts_of, unescape};
use e2e_tests::runner_test;
use runner::results::{
    Attempt, ExitStatus, ImportedTests, JobOutcome, JobResult, Output, Phase, PhaseKind,
    RunResults, StepResult, StepStatus,
};

/// Each job's row of the rendered page: its `data-status` and its name.
fn job_rows(dom: &str) -> Vec<(String, String)> {
    dom.split(r#"<div class="job""#)
        .skip(1)
        .map(|row| {
            let status = row
                .split_once(r#"data-status=""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(status, _)| status.to_string())
                .unwrap_or_default();
            // `title` holds the name too; a serialised attribute has no `"`.
            let name = row
                .split_once(r#"<span class="name" title=""#)
                .and_then(|(_, rest)| rest.split_once("\">"))
                .and_then(|(_, rest)| rest.split_once("</span>"))
                .map(|(name, _)| unescape(name))
                .unwrap_or_default();
            (status, name)
        })
        .collect()
}

fn rendered(dom: &str) {
    assert!(
        dom.contains(r#"data-rendered="true""#),
        "the page's script did not finish: {}",
        &dom[..dom.len().min(2000)]
    );
}

const PIPELINE: &str = r#"
name: html-e2e
image: minimal
defaults:
  files: none
  timeout: 2m
jobs:
  good:
    steps:
      - name: greet
        run: echo hello > /tmp/greeting.txt && echo greeted
    artifacts: [/tmp/greeting.txt]
  bad:
    steps:
      - name: compare
        run: |
          printf '\033[1;31mboom\033[0m: expected 42, got 41\n'
          echo '</script><!-- stderr' >&2
          exit 3
      - name: never runs
        run: "true"
"#;

#[test]
fn a_real_run_s_report_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), PIPELINE).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report = dir.path().join("out/report.html");
    assert!(
        stderr.contains("runner: HTML report in out/report.html"),
        "{stderr}"
    );
    assert!(dir.path().join("out/junit.xml").is_file());
    // Nothing half-written beside it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (dom, _) = dump_dom(&report);
    rendered(&dom);
    assert_eq!(
        job_rows(&dom),
        [
            ("passed".to_string(), "good".to_string()),
            ("failed".to_string(), "bad".to_string())
        ]
    );
    // The failing step, open, with both streams; escapes gone.
    assert!(dom.contains("bad › compare"), "{dom}");
    assert!(dom.contains("exit code 3"));
    let outputs = texts_of(&dom, r#"<pre class="output">"#);
    assert!(
        outputs.contains(&"boom: expected 42, got 41\n".to_string()),
        "{outputs:?}"
    );
    assert!(outputs.contains(&"</script><!-- stderr\n".to_string()));
    assert!(!dom.contains('\x1b') && !dom.contains("[1;31m"));
    // The timeline: both VMs booted; the good job's artifacts were
    // collected and its step passed; the bad job's step failed.
    assert_eq!(dom.matches(r#"class="bar k-boot"#).count(), 2, "{dom}");
    assert_eq!(dom.matches(r#"class="bar k-artifacts"#).count(), 1);
    assert_eq!(dom.matches(r#"class="bar k-step s-passed""#).count(), 1);
    assert_eq!(dom.matches(r#"class="bar k-step s-failed""#).count(), 1);
    assert!(dom.contains(r#"title="compare: failed, "#), "{dom}");
    // The status filters, all on.
    for status in [
        "failed",
        "error",
        "allowed failure",
        "flaky",
        "passed",
        "skipped",
    ] {
        let checkbox = format!(r#"type="checkbox" value="{status}""#);
        assert!(dom.contains(&checkbox), "{status}");
    }
    assert!(dom.contains("(2 of 2)"));

    // Filtered to failures through the address: the passing job is hidden.
    let (dom, _) = dump_dom_at(&report, "#status=failed");
    rendered(&dom);
    let good = r#"<div class="job" data-status="passed" data-index="0" hidden="">"#;
    assert!(dom.contains(good), "{dom}");
    assert!(dom.contains(r#"<div class="job" data-status="failed" data-index="1">"#));
    assert!(dom.contains("(1 of 2)"));
}

fn step(name: &str, status: StepStatus, stdout: &[u8], stderr: &[u8]) -> StepResult {
    StepResult {
        name: name.to_string(),
        status,
        duration: Duration::from_millis(800),
        stdout: Output::from_bytes(stdout),
        stderr: Output::from_bytes(stderr),
        attempt: Attempt::first(0),
        earlier_attempts: Vec::new(),
    }
}

fn job(name: &str, outcome: JobOutcome, steps: Vec<StepResult>, started: SystemTime) -> JobResult {
    let timeline = std::iter::once(Phase {
        kind: PhaseKind::Boot,
        start: Duration::ZERO,
        duration: Duration::from_millis(1500),
    })
    .chain((0..steps.len()).map(|index| Phase {
        kind: PhaseKind::Step { index, attempt: 1 },
        start: Duration::from_millis(1500 + 800 * index as u64),
        duration: Duration::from_millis(800),
    }))
    .collect();
    JobResult {
        name: name.to_string(),
        classname: name.to_string(),
        allow_failure: false,
        started,
        duration: Duration::from_secs(3),
        boot: Some(Duration::from_millis(1500)),
        outcome,
        steps,
        log_path: Some(PathBuf::from(format!("runner-out/logs/{name}.log"))),
        artifacts: Vec::new(),
        artifact_notes: Vec::new(),
        cache_notes: Vec::new(),
        imported: ImportedTests::default(),
        attempt: Attempt::first(0),
        earlier_attempts: Vec::new(),
        timeline,
        services: Vec::new(),
        metering: Default::default(),
    }
}

fn exit(code: i32) -> StepStatus {
    StepStatus::Failed {
        exit: ExitStatus {
            code: Some(code),
            ..ExitStatus::default()
        },
    }
}

/// `runner-out`-like results: a passing job, a job whose output is hostile
/// and one that printed 10 MB.
fn hostile_results() -> RunResults {
    let started = SystemTime::now();
    let hostile = b"</script><script>document.title='pwned'</script><!-- x\n\
        \x1b[1;31mred alert\x1b[0m \x1b]0;title\x07tail\x00NUL\xc3\x28bad utf-8\n";
    let mut big = b"FIRST of ten megabytes\n".to_vec();
    big.resize(10 << 20, b'.');
    big.extend(b"\nLAST: the real error\n");
    let mut loud = step("prints 10 MB", exit(1), &big, b"");
    loud.stdout.log_path = Some(PathBuf::from("runner-out/logs/loud.log"));
    RunResults {
        pipeline_name: "hostile </script> pipeline".to_string(),
        pipeline_path: PathBuf::from("hostile.yml"),
        started,
        wall: Duration::from_secs(5),
        jobs: vec![
            job(
                "fine",
                JobOutcome::Passed,
                vec![step("ok", StepStatus::Passed, b"ok\n", b"")],
                started,
            ),
            job(
                "evil <b>name</b>",
                JobOutcome::Failed,
                vec![step("inject", exit(2), hostile, b"\x00\x00</script>\n")],
                started + Duration::from_secs(1),
            ),
            job("loud", JobOutcome::Failed, vec![loud], started),
        ],
    }
}

#[test]
fn hostile_output_shows_as_text_and_ten_megabytes_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    runner::report::html::write(&hostile_results(), &report).unwrap();
    let size = std::fs::metadata(&report).unwrap().len();
    assert!(size < 256 << 10, "report.html is {size} bytes");

    let (dom, _) = dump_dom(&report);
    rendered(&dom);
    // No script of the guest's ran, nothing of it became an element.
    assert!(dom.contains("<title>hostile &lt;/script&gt; pipeline — runner report</title>"));
    assert!(!dom.contains("pwned</title>"));
    assert!(!dom.contains("<b>name</b>"));
    assert_eq!(
        job_rows(&dom),
        [
            ("passed".to_string(), "fine".to_string()),
            ("failed".to_string(), "evil <b>name</b>".to_string()),
            ("failed".to_string(), "loud".to_string())
        ]
    );
    let outputs = texts_of(&dom, r#"<pre class="output">"#);
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert_eq!(
        outputs[0],
        "</script><script>document.title='pwned'</script><!-- x\n\
         red alert tailNUL\u{fffd}(bad utf-8\n"
    );
    assert_eq!(outputs[1], "</script>\n");
    assert!(!dom.contains('\x1b') && !dom.contains('\0') && !dom.contains("[1;31m"));
    // The 10 MB: its head and its end, and how much is not shown.
    let loud = &outputs[2];
    assert!(loud.starts_with("FIRST of ten megabytes\n"), "{loud:.200}");
    assert!(loud.ends_with("\nLAST: the real error\n"));
    assert!(
        loud.contains("bytes not shown here; full output in runner-out/logs/loud.log ...]"),
        "{loud:.300}"
    );
    assert!(loud.len() < 40 << 10, "{} bytes shown", loud.len());
}

#[test]
fn an_unwritable_report_path_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let err = runner::report::html::write(&hostile_results(), &blocker.join("report.html"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot write HTML report"), "{err}");
    assert_eq!(err.lines().count(), 1);
    let _ = Path::new(&err);
}
