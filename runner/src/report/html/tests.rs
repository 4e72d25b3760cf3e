use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::results::tests::{failed, job, job_with_services, run, step};
use crate::results::{JobOutcome, Output, Phase, PhaseKind, StepStatus};

/// The embedded data, parsed back.
fn data(page: &str) -> serde_json::Value {
    let start = page.find(r#"id="runner-data">"#).unwrap() + r#"id="runner-data">"#.len();
    let len = page[start..].find("</script>").unwrap();
    serde_json::from_str(&page[start..start + len]).unwrap()
}

fn failing_run(stdout: &[u8]) -> crate::results::RunResults {
    let mut bad = step("make test", failed(2));
    bad.stdout = Output::from_bytes(stdout);
    run(vec![
        job(
            "lint",
            JobOutcome::Passed,
            vec![step("clippy", StepStatus::Passed)],
        ),
        job("build", JobOutcome::Failed, vec![bad]),
    ])
}

#[test]
fn hostile_output_cannot_leave_its_script_element() {
    let hostile = b"</script><script>alert(1)</script><!-- <script>\n\x1b[1;31mred\x1b[0m \x00nul\xff\xfe end\n";
    let page = render(&failing_run(hostile)).unwrap();
    // Only the template's own elements: the data adds no tag of any kind.
    let template_closers = TEMPLATE.matches("</script>").count();
    assert_eq!(page.matches("</script>").count(), template_closers);
    assert_eq!(
        page.matches("<!--").count(),
        TEMPLATE.matches("<!--").count()
    );
    let data = data(&page);
    let output = data["failures"][0]["outputs"][0][1].as_str().unwrap();
    assert!(output.starts_with("</script><script>alert(1)</script><!-- <script>\n"));
    assert!(output.contains("red nul\u{fffd}\u{fffd} end"), "{output:?}");
    assert!(!output.contains('\x1b') && !output.contains('\0'));
    assert_eq!(data["failures"][0]["title"], "build › make test");
    assert_eq!(data["failures"][0]["message"], "exit code 2");
}

#[test]
fn ten_megabytes_of_output_are_cut_to_head_and_tail() {
    let mut big = b"FIRST LINE\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcde\n".as_slice(), 10 << 16).flatten());
    big.extend(b"LAST LINE: assertion failed\n");
    let mut results = failing_run(&big);
    results.jobs[1].log_path = Some(PathBuf::from("runner-out/logs/build.log"));
    results.jobs[1].steps[0].stdout.log_path = results.jobs[1].log_path.clone();
    let page = render(&results).unwrap();
    assert!(
        page.len() < TEMPLATE.len() + 64 * 1024,
        "{} bytes",
        page.len()
    );
    let output = data(&page)["failures"][0]["outputs"][0][1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(output.starts_with("FIRST LINE\n"));
    assert!(output.ends_with("LAST LINE: assertion failed\n"));
    let marker = output
        .lines()
        .find(|l| l.contains("bytes not shown here"))
        .unwrap();
    let omitted: usize = marker["[... ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Shown and omitted make the whole, but for the marker's line and the
    // line end put before it when the head was cut mid-line.
    let shown = big.len() - omitted;
    let around_marker = output.len() - marker.len();
    assert!(shown + 1 == around_marker || shown + 2 == around_marker);
    assert!(marker.ends_with("full output in runner-out/logs/build.log ...]"));
}

#[test]
fn a_thousand_failing_jobs_stay_under_five_megabytes() {
    let noisy = vec![b'<'; 64 * 1024];
    let jobs = (0..1000)
        .map(|i| {
            let mut bad = step("make test", failed(1));
            bad.stdout = Output::from_bytes(&noisy);
            bad.stderr = Output::from_bytes(&noisy);
            job(&format!("job-{i}"), JobOutcome::Failed, vec![bad])
        })
        .collect();
    let page = render(&run(jobs)).unwrap();
    assert!(page.len() < 5 << 20, "{} bytes", page.len());
    let data = data(&page);
    assert_eq!(data["jobs"].as_array().unwrap().len(), 1000);
    assert_eq!(data["failures"].as_array().unwrap().len(), 1000);
    // Every failure still shows some of its output.
    let last = data["failures"][999]["outputs"][1][1].as_str().unwrap();
    assert!(last.starts_with("<<<<"), "{last:?}");
}

#[test]
fn statuses_match_the_run() {
    let mut retried = job(
        "retried",
        JobOutcome::Passed,
        vec![step("t", StepStatus::Passed)],
    );
    let mut first = job("retried", JobOutcome::Failed, vec![step("t", failed(1))]);
    first.attempt.of = 2;
    retried.attempt = first.attempt.next();
    retried.earlier_attempts = vec![first];
    let mut allowed = job("lint", JobOutcome::Failed, vec![step("t", failed(1))]);
    allowed.allow_failure = true;
    let boot = JobOutcome::BootError {
        message: "agent silent".into(),
        serial_tail: vec!["Kernel panic".into()],
    };
    let cancelled = JobOutcome::Cancelled {
        reason: "interrupted".into(),
    };
    let jobs = [
        (
            job(
                "ok",
                JobOutcome::Passed,
                vec![step("t", StepStatus::Passed)],
            ),
            "passed",
        ),
        (retried, "flaky"),
        (allowed, "allowed failure"),
        (job("boot", boot, Vec::new()), "error"),
        (job("later", cancelled, Vec::new()), "skipped"),
        (
            job("bad", JobOutcome::Failed, vec![step("t", failed(1))]),
            "failed",
        ),
    ];
    for (job, status) in &jobs {
        assert_eq!(job_status(job), *status, "{}", job.name);
    }
    let data = data(&render(&run(jobs.into_iter().map(|(j, _)| j).collect())).unwrap());
    let titles: Vec<&str> = data["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    // The flaky job's failed first attempt is a failure too.
    assert_eq!(
        titles,
        ["retried › t", "lint › t", "boot › (boot)", "bad › t"]
    );
    assert_eq!(data["failures"][0]["attempt"], "attempt 1/2");
    assert_eq!(data["failures"][2]["outputs"][0][0], "serial console");
    assert_eq!(data["failures"][2]["outputs"][0][1], "Kernel panic");
}

#[test]
fn the_timeline_is_on_the_run_s_clock() {
    let mut build = job(
        "build",
        JobOutcome::Failed,
        vec![step("make", StepStatus::Passed), step("test", failed(1))],
    );
    build.started += Duration::from_secs(2);
    build.steps[1].earlier_attempts = vec![step("test", failed(1))];
    build.steps[1].attempt.of = 2;
    build.steps[1].attempt.number = 2;
    let phase = |kind, start: u64, ms: u64| Phase {
        kind,
        start: Duration::from_millis(start),
        duration: Duration::from_millis(ms),
    };
    build.timeline = vec![
        phase(PhaseKind::Boot, 0, 1500),
        phase(
            PhaseKind::Step {
                index: 0,
                attempt: 1,
            },
            1500,
            1000,
        ),
        phase(
            PhaseKind::Step {
                index: 1,
                attempt: 1,
            },
            2500,
            250,
        ),
        phase(
            PhaseKind::Step {
                index: 1,
                attempt: 2,
            },
            2750,
            250,
        ),
        phase(PhaseKind::Artifacts, 3000, 125),
    ];
    let data = data(&render(&run(vec![build])).unwrap());
    let phases = &data["jobs"][0]["vms"][0]["phases"];
    assert_eq!(
        phases[0],
        serde_json::json!(["boot", "boot", 2.0, 1.5, "passed"])
    );
    assert_eq!(
        phases[1],
        serde_json::json!(["step", "make", 3.5, 1.0, "passed"])
    );
    assert_eq!(
        phases[3],
        serde_json::json!(["step", "test (attempt 2/2)", 4.75, 0.25, "failed"])
    );
    assert_eq!(
        phases[4],
        serde_json::json!(["artifacts", "artifacts", 5.0, 0.125, "passed"])
    );
    assert_eq!(data["jobs"][0]["vms"][0]["start"], 2.0);
}

#[test]
fn the_report_is_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/report.html");
    write(&failing_run(b"x\n"), &path).unwrap();
    let page = std::fs::read_to_string(&path).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    // Nothing else is left in the directory: the temporary was renamed.
    assert_eq!(
        std::fs::read_dir(dir.path().join("out")).unwrap().count(),
        1
    );
    let err = write(&failing_run(b"x\n"), &path.join("below-a-file")).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot write HTML report"),
        "{err}"
    );
}

#[test]
fn a_capture_s_head_and_tail_are_cut_again_to_the_report_s_share() {
    // What the capture keeps of 10 MB with a 64 KiB limit.
    let output = Output {
        head: [b"HEAD\n".as_slice(), &[b'h'; 32 << 10]].concat(),
        tail: [&[b't'; 32 << 10], b"\nTAIL\n".as_slice()].concat(),
        total_bytes: 10 << 20,
        truncated: true,
        log_path: Some(PathBuf::from("logs/a.log")),
    };
    let text = excerpt::excerpt(&output, 16 << 10, output.log_path.as_deref());
    assert!(text.len() <= 16 << 10, "{}", text.len());
    assert!(text.starts_with("HEAD\nhhh"));
    assert!(text.ends_with("ttt\nTAIL\n"));
    let marker = text.lines().find(|l| l.starts_with("[... ")).unwrap();
    let omitted: u64 = marker[5..].split(' ').next().unwrap().parse().unwrap();
    let shown = text.len() - marker.len() - 2; // the marker's line and the line end before it
    assert_eq!(omitted + shown as u64, 10 << 20);
    assert!(marker.ends_with("full output in logs/a.log ...]"));
}

#[test]
fn multi_byte_characters_are_not_split_at_a_cut() {
    let text: String = std::iter::repeat_n("é✓", 20_000).collect();
    let cut = excerpt::excerpt(&Output::from_bytes(text.as_bytes()), 4096, None);
    assert!(!cut.contains('\u{fffd}'), "a character was split");
    assert!(cut.len() <= 4096);
}

#[test]
fn failing_tests_of_the_guest_s_reports_are_failures_too() {
    use crate::results::{ImportedCase, ImportedResult, Problem};
    let mut job = job(
        "unit",
        JobOutcome::Passed,
        vec![step("pytest", StepStatus::Passed)],
    );
    for i in 0..60 {
        let mut case = ImportedCase::new(format!("test_{i}"));
        case.classname = Some("tests.test_math".into());
        case.file = Some("tests/test_math.py".into());
        case.line = Some(12);
        case.result = ImportedResult::Failed(Problem {
            message: "assert 41 == 42".into(),
            kind: "AssertionError".into(),
            body: Output::from_bytes(b"\x1b[31mTraceback\x1b[0m (most recent call last)\n"),
        });
        job.imported.cases.push(case);
    }
    let data = data(&render(&run(vec![job])).unwrap());
    assert_eq!(data["jobs"][0]["status"], "failed");
    assert_eq!(data["jobs"][0]["tests"], serde_json::json!([0, 60, 0]));
    let failures = data["failures"].as_array().unwrap();
    // 50 listed one by one, then a line for the rest.
    assert_eq!(failures.len(), 51);
    assert_eq!(failures[0]["title"], "unit › tests.test_math::test_0");
    assert_eq!(
        failures[0]["message"],
        "failed: assert 41 == 42 (tests/test_math.py:12)"
    );
    assert_eq!(
        failures[0]["outputs"],
        serde_json::json!([["trace", "Traceback (most recent call last)\n"]])
    );
    assert_eq!(
        failures[50]["message"],
        "10 more failing tests; the JUnit file lists them all"
    );
}

#[test]
fn each_service_has_a_lane_and_a_failed_one_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let page = render(&run(vec![job_with_services(dir.path())])).unwrap();
    let data = data(&page);
    let job = &data["jobs"][0];
    assert_eq!(job["status"], "error");
    let why = "was not ready within 2s (`ready` failed 3 times: redis-cli ping)";
    assert_eq!(job["summary"], format!("service `cache` failed: {why}"));
    let vm = &job["vms"][0];
    // The job waited for its services in vain.
    assert_eq!(
        vm["phases"][1],
        serde_json::json!(["services", "waiting for services", 1.2, 2.2, "error"])
    );
    assert_eq!(
        vm["services"],
        serde_json::json!([
            {
                "name": "db",
                "status": "passed",
                "detail": "ready after 3.2s",
                "phases": [
                    ["boot", "boot", 0.0, 1.5, "passed"],
                    ["services", "waiting for ready", 1.5, 1.7, "passed"]
                ]
            },
            {
                "name": "cache",
                "status": "error",
                "detail": format!("failed: {why}"),
                "phases": [
                    ["boot", "boot", 0.0, 1.4, "passed"],
                    ["services", "waiting for ready", 1.4, 2.0, "error"]
                ]
            }
        ])
    );
    // Its failure, with its log, is the job's only one.
    let failures = data["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["title"], "queries › service cache");
    assert_eq!(failures[0]["message"], why);
    assert_eq!(failures[0]["outputs"][0][0], "log");
    let log = failures[0]["outputs"][0][1].as_str().unwrap();
    assert!(
        log.starts_with("==> booting service cache (qemu)\n"),
        "{log}"
    );
    assert!(
        log.contains("\nCould not connect\nCould not connect\n"),
        "{log}"
    );
    // The page colours and names the phase the job waits in.
    assert!(TEMPLATE.contains(".k-services {"));
    assert!(TEMPLATE.contains(r#"["waiting for services", "k-services"]"#));
}

#[test]
fn a_huge_service_log_is_cut_to_the_report_s_share() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(vec![job_with_services(dir.path())]);
    let cache_log = &results.jobs[0].services[1].log_path;
    let mut big = b"FIRST LINE\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcde\n".as_slice(), 10 << 16).flatten());
    big.extend(b"LAST LINE: not ready\n");
    std::fs::write(cache_log, &big).unwrap();
    let page = render(&results).unwrap();
    assert!(
        page.len() < TEMPLATE.len() + 64 * 1024,
        "{} bytes",
        page.len()
    );
    let log = data(&page)["failures"][0]["outputs"][0][1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(log.starts_with("FIRST LINE\n"), "{log}");
    assert!(log.ends_with("LAST LINE: not ready\n"));
    assert!(log.contains(&format!("full output in {} ...]", cache_log.display())));
}

#[test]
fn a_jobs_network_table_is_in_the_page() {
    let page = render(&run(vec![crate::results::tests::networked("build", true)])).unwrap();
    let network = &data(&page)["jobs"][0]["usage"]["network"];
    assert_eq!(network["audit"], true);
    assert_eq!(network["summary"], "net 1.3 KiB out, 34.2 KiB in");
    assert_eq!(network["rows"][0]["name"], "crates.io");
    assert_eq!(network["rows"][0]["address"], "151.101.0.1:443");
    assert_eq!(network["rows"][1]["allowed"], false);
    assert_eq!(network["refused_names"][0], "evil.example");
    assert!(page.contains("function networkTable("));
}
