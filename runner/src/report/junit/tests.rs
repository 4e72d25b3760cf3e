//! The JUnit file is parsed back and checked for structure, order,
//! escaping and attributes; and validated with xmllint against junit.xsd.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use roxmltree::{Document, Node};

use super::*;
use crate::results::tests::{failed, job, job_with_services, run, step};
use crate::results::{ExitStatus, JobOutcome, Output, OutputCapture, StepResult, StepStatus};

pub(super) fn sample() -> RunResults {
    let mut build = job(
        "build (os=alpine, mode=debug)",
        JobOutcome::Failed,
        vec![
            step("make", StepStatus::Passed),
            step("make", StepStatus::Passed),
            step("make test", failed(2)),
            StepResult::skipped("deploy", "not run: step `make test` failed"),
        ],
    );
    build.steps[2].stderr = Output::from_bytes(b"line 1\nassertion failed: x == y\n");
    let mut flaky = job(
        "flaky",
        JobOutcome::Failed,
        vec![step(
            "sleep",
            StepStatus::TimedOut {
                limit: Duration::from_secs(5),
                by: crate::results::TimeLimit::Step(Duration::from_secs(5)),
                exit: None,
                host_deadline: false,
            },
        )],
    );
    flaky.allow_failure = true;
    let boot = job(
        "needs-debian",
        JobOutcome::BootError {
            message: "no answer from the agent within 60s".into(),
            serial_tail: vec![
                "[    0.81] Run /init as init process".into(),
                "Kernel panic - not syncing".into(),
            ],
        },
        vec![],
    );
    run(vec![build, flaky, boot])
}

pub(super) fn parse(xml: &str) -> Document<'_> {
    Document::parse(xml).unwrap_or_else(|err| panic!("invalid XML ({err}):\n{xml}"))
}

fn elements<'a, 'i>(node: Node<'a, 'i>, tag: &str) -> Vec<Node<'a, 'i>> {
    node.children().filter(|n| n.has_tag_name(tag)).collect()
}

fn child_tags(node: Node) -> Vec<String> {
    node.children()
        .filter(Node::is_element)
        .map(|n| n.tag_name().name().to_string())
        .collect()
}

#[test]
fn one_suite_per_job_one_case_per_step() {
    let xml = render(&sample(), &JunitOptions::default()).unwrap();
    let doc = parse(&xml);
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("name"), Some("demo"));
    assert_eq!(root.attribute("tests"), Some("6"));
    assert_eq!(root.attribute("failures"), Some("2"));
    assert_eq!(root.attribute("errors"), Some("1"));
    // Not on the root: see `ROOT_ATTRIBUTES` and junit_strict_tests.rs.
    assert_eq!(root.attribute("skipped"), None);
    assert_eq!(root.attribute("time"), Some("34.540"));

    let suites = elements(root, "testsuite");
    let names: Vec<_> = suites
        .iter()
        .map(|s| s.attribute("name").unwrap())
        .collect();
    assert_eq!(
        names,
        ["build (os=alpine, mode=debug)", "flaky", "needs-debian"]
    );
    for suite in &suites {
        assert_eq!(suite.attribute("package"), None);
        assert_eq!(
            suite.attribute("timestamp"),
            Some("2023-11-14T22:13:20.000+00:00")
        );
        assert_eq!(suite.attribute("time"), Some("3.000"));
    }
    let build = suites[0];
    assert_eq!(build.attribute("tests"), Some("4"));
    assert_eq!(build.attribute("failures"), Some("1"));
    assert_eq!(build.attribute("skipped"), Some("1"));

    let mut seen = HashSet::new();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let key = (
            case.attribute("classname").unwrap(),
            case.attribute("name").unwrap(),
        );
        assert!(seen.insert(key), "duplicate testcase {key:?}");
        assert_eq!(case.parent().unwrap().attribute("name"), Some(key.0));
    }
    let cases = elements(build, "testcase");
    let case_names: Vec<_> = cases.iter().map(|c| c.attribute("name").unwrap()).collect();
    assert_eq!(case_names, ["make", "make #2", "make test", "deploy"]);
    assert_eq!(
        cases[0].attribute("classname"),
        Some("build (os=alpine, mode=debug)")
    );
    assert_eq!(cases[0].attribute("time"), Some("1.200"));
    assert!(!xml.contains("package="));
}

#[test]
fn failures_skips_and_boot_errors_carry_their_story() {
    let xml = render(&sample(), &JunitOptions::default()).unwrap();
    let doc = parse(&xml);
    let suites = elements(doc.root_element(), "testsuite");
    let build_cases = elements(suites[0], "testcase");

    let failing = build_cases[2];
    assert_eq!(child_tags(failing), ["failure", "system-out", "system-err"]);
    let failure = elements(failing, "failure")[0];
    assert_eq!(failure.attribute("message"), Some("exit code 2"));
    assert_eq!(failure.attribute("type"), Some("exit"));
    let body = failure.text().unwrap();
    assert!(
        body.starts_with("step `make test` of job `build (os=alpine, mode=debug)`: exit code 2\n")
    );
    assert!(body.contains("--- stderr, last 2 lines ---\nline 1\nassertion failed: x == y\n"));
    assert!(body.contains("full log: out/01-a/job.log"));
    assert_eq!(
        elements(failing, "system-err")[0].text(),
        Some("line 1\nassertion failed: x == y\n")
    );

    let skipped = build_cases[3];
    assert_eq!(child_tags(skipped), ["skipped"]);
    assert_eq!(
        elements(skipped, "skipped")[0].attribute("message"),
        Some("not run: step `make test` failed")
    );

    let flaky = elements(suites[1], "testcase")[0];
    let failure = elements(flaky, "failure")[0];
    assert_eq!(
        failure.attribute("message"),
        Some("allowed failure: timed out after 5s (step timeout 5s)")
    );
    assert_eq!(failure.attribute("type"), Some("timeout"));
    let properties = elements(elements(suites[1], "properties")[0], "property");
    assert!(properties
        .iter()
        .any(|p| p.attribute("name") == Some("allow_failure")
            && p.attribute("value") == Some("true")));

    let boot_cases = elements(suites[2], "testcase");
    assert_eq!(boot_cases.len(), 1);
    assert_eq!(boot_cases[0].attribute("name"), Some("(boot)"));
    assert_eq!(boot_cases[0].attribute("time"), Some("3.000"));
    let error = elements(boot_cases[0], "error")[0];
    assert_eq!(error.attribute("type"), Some("boot"));
    assert_eq!(
        error.attribute("message"),
        Some("VM failed to boot: no answer from the agent within 60s")
    );
    assert!(error
        .text()
        .unwrap()
        .ends_with("--- serial console, last 2 lines ---\n[    0.81] Run /init as init process\nKernel panic - not syncing\n"));
}

#[test]
fn hostile_output_is_escaped_and_cleaned() {
    let nasty =
        "a]]>b <tag attr=\"x\"> & 'q'\x1b[31mred\x1b[0m\x00\x01\x1b\tcol2\u{F0009}\r\nend\n";
    let mut r = run(vec![job(
        "j<&>\"",
        JobOutcome::Failed,
        vec![step("s\x1b[1m\n2", failed(1))],
    )]);
    r.jobs[0].steps[0].stdout = Output::from_bytes(nasty.as_bytes());
    r.jobs[0].steps[0].status = StepStatus::Failed {
        exit: ExitStatus {
            code: Some(1),
            error: Some("bad\x07 \"thing\"".into()),
            ..ExitStatus::default()
        },
    };
    let xml = render(&r, &JunitOptions::default()).unwrap();
    let doc = parse(&xml);
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase"))
        .unwrap();
    assert_eq!(case.attribute("classname"), Some("j<&>\""));
    // Attribute values are one line (a parser would turn `\n` into a space).
    assert_eq!(case.attribute("name"), Some("s 2"));
    let out = elements(case, "system-out")[0].text().unwrap();
    assert_eq!(out, "a]]>b <tag attr=\"x\"> & 'q'red\tcol2\nend\n");
    let failure = elements(case, "failure")[0];
    assert_eq!(
        failure.attribute("message"),
        Some("exit code 1 (bad \"thing\")")
    );
    assert!(!xml.contains('\u{1b}') && !xml.contains('\0') && !xml.contains('\u{F0009}'));
}

#[test]
fn long_output_is_trimmed_with_a_pointer_to_the_log() {
    let mut capture = OutputCapture::new(1 << 20);
    for i in 0..10_000 {
        capture.push(format!("line {i}\n").as_bytes());
    }
    let mut output = capture.finish();
    assert!(!output.truncated);
    output.log_path = Some(PathBuf::from("out/01-a/job.log"));
    let mut r = run(vec![job(
        "j",
        JobOutcome::Passed,
        vec![step("s", StepStatus::Passed)],
    )]);
    r.jobs[0].steps[0].stdout = output.clone();
    let xml = render(&r, &SMALL_OUTPUT).unwrap();
    let out = first_system_out(&xml);
    assert!(out.starts_with("line 0\nline 1\n"), "{out}");
    assert!(out.ends_with("line 9999\n"), "{out}");
    let omitted = output.total_bytes - 100;
    assert!(out.contains(&format!(
        "[... {omitted} bytes omitted; full output in out/01-a/job.log ...]"
    )));
    assert!(out.len() < 200);
}

#[test]
fn each_service_is_a_case_with_its_log_and_its_failure() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(vec![job_with_services(dir.path())]);
    let options = JunitOptions {
        failure_tail_lines: 3,
        ..JunitOptions::default()
    };
    let xml = render(&results, &options).unwrap();
    let doc = parse(&xml);
    let suite = elements(doc.root_element(), "testsuite")[0];
    let cases = elements(suite, "testcase");
    let names: Vec<_> = cases.iter().map(|c| c.attribute("name").unwrap()).collect();
    // The service carries the job's error: no `(job)` case repeats it.
    assert_eq!(names, ["service db", "service cache"]);
    assert!(cases
        .iter()
        .all(|c| c.attribute("classname") == Some("queries")));

    let db = cases[0];
    assert_eq!(child_tags(db), ["system-out"]);
    assert_eq!(db.attribute("time"), Some("3.200"));
    assert!(elements(db, "system-out")[0]
        .text()
        .unwrap()
        .ends_with("listening on 5432\n==> ready\n"));

    let cache = cases[1];
    assert_eq!(child_tags(cache), ["error", "system-out"]);
    assert_eq!(cache.attribute("time"), Some("0.000"));
    let error = elements(cache, "error")[0];
    assert_eq!(error.attribute("type"), Some("service"));
    let why = "was not ready within 2s (`ready` failed 3 times: redis-cli ping)";
    assert_eq!(error.attribute("message"), Some(why));
    let log = results.jobs[0].services[1].log_path.display().to_string();
    assert_eq!(
        error.text(),
        Some(
            format!(
                "service `cache` of job `queries`: {why}\n\n--- log, last 3 lines ---\n\
                 Could not connect\nCould not connect\n==> {why}\n\nfull log: {log}\n"
            )
            .as_str()
        )
    );
    let out = elements(cache, "system-out")[0].text().unwrap();
    assert!(
        out.starts_with("==> booting service cache (qemu)\n"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "{out}");

    // The counts are the console's.
    let counts = results.counts();
    assert_eq!((counts.passed, counts.failed), (1, 1));
    assert_eq!(suite.attribute("tests"), Some("2"));
    assert_eq!(suite.attribute("errors"), Some("1"));
    assert_eq!(doc.root_element().attribute("errors"), Some("1"));
    assert_valid(&results);
}

#[test]
fn a_long_service_log_is_read_and_cut_like_step_output() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(vec![job_with_services(dir.path())]);
    let db_log = &results.jobs[0].services[0].log_path;
    let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(db_log, &text).unwrap();
    let xml = render(&results, &SMALL_OUTPUT).unwrap();
    let out = first_system_out(&xml);
    assert!(out.starts_with("line 0\nline 1\n"), "{out}");
    assert!(out.ends_with("line 99999\n"), "{out}");
    let omitted = text.len() - 100;
    assert!(out.contains(&format!(
        "[... {omitted} bytes omitted; full output in {} ...]",
        db_log.display()
    )));
    assert!(out.len() < 300, "{out}");
}

#[test]
fn write_is_atomic_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports/junit.xml");
    write(&sample(), &path, &JunitOptions::default()).unwrap();
    std::fs::write(dir.path().join("reports/other"), "x").unwrap();
    write(&run(vec![]), &path, &JunitOptions::default()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(parse(&text).root_element().attribute("tests"), Some("0"));
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["junit.xml", "other"]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);

    // A directory where the file should be: a clear error, nothing left behind.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("x")).unwrap();
    let err = write(&sample(), &blocked, &JunitOptions::default()).unwrap_err();
    assert!(err
        .to_string()
        .starts_with(&format!("cannot write JUnit report {}", blocked.display())));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Validates against junit.xsd (Jenkins/GitLab shape). Without xmllint the
/// test fails with one line: it must never pass without checking.
#[test]
fn validates_against_the_junit_schema() {
    assert_valid(&sample());
}

/// Writes `results` as JUnit and checks it against junit.xsd.
pub(super) fn assert_valid(results: &RunResults) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junit.xml");
    write(results, &path, &JunitOptions::default()).unwrap();
    assert_valid_file(&path);
}

/// Fails unless xmllint says `path` follows junit.xsd.
pub(crate) fn assert_valid_file(path: &std::path::Path) {
    let version = std::process::Command::new("xmllint")
        .arg("--version")
        .output()
        .unwrap_or_else(|_| panic!("xmllint is missing: apt-get install libxml2-utils"));
    assert!(version.status.success());
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/src/report/junit/junit.xsd");
    let result = std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("validates"), "{stderr}");
}

/// Options that keep 100 bytes of each output: head, omission note, tail.
const SMALL_OUTPUT: JunitOptions = JunitOptions {
    output_limit: 100,
    failure_tail_lines: 5,
};

/// The text of the report's first `<system-out>`.
fn first_system_out(xml: &str) -> String {
    let doc = parse(xml);
    let out = doc
        .descendants()
        .find(|n| n.has_tag_name("system-out"))
        .expect("a system-out")
        .text()
        .unwrap_or_default()
        .to_string();
    out
}

/// Every `<property>` in `xml`, as (name, value).
fn properties(xml: &str) -> Vec<(String, String)> {
    let doc = parse(xml);
    let properties = doc
        .descendants()
        .filter(|n| n.has_tag_name("property"))
        .map(|n| {
            let attribute = |name| n.attribute(name).unwrap().to_string();
            (attribute("name"), attribute("value"))
        })
        .collect();
    properties
}

#[test]
fn what_a_jobs_vm_used_is_in_its_properties() {
    let build = crate::results::tests::metered("build", 1234, 300, 500);
    let xml = render(&run(vec![build]), &JunitOptions::default()).unwrap();
    let properties = properties(&xml);
    for expected in [
        ("cpu_seconds", "1.234"),
        ("memory_peak_bytes", "314572800"),
        ("memory_total_bytes", "524288000"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert!(properties.contains(&expected), "{properties:?}");
    }
}

#[test]
fn what_a_jobs_network_touched_is_in_its_properties() {
    let build = crate::results::tests::networked("build", true);
    let xml = render(&run(vec![build]), &JunitOptions::default()).unwrap();
    let properties = properties(&xml);
    for expected in [
        ("network_bytes_out", "1300"),
        ("network_bytes_in", "35000"),
        (
            "egress",
            "allowed  TCP  crates.io  151.101.0.1:443  out 1.3 KiB, in 34.2 KiB",
        ),
        ("egress", "denied   TCP  -  10.0.0.5:5432"),
        ("egress", "refused  DNS  evil.example (NXDOMAIN)"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert!(properties.contains(&expected), "{properties:?}");
    }
}
