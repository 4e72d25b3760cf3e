//! Missing and refused artifacts reach both reports, not just the log.

use super::console::tests::Buffer;
use super::console::{ConsoleMode, ConsoleOptions, ConsoleReporter};
use super::junit::{render, JunitOptions};
use super::stream::Feed;
use crate::results::tests::{job, run, step};
use crate::results::{JobOutcome, StepStatus};

fn results() -> crate::results::RunResults {
    let mut passed = job(
        "unit",
        JobOutcome::Passed,
        vec![step("pytest", StepStatus::Passed)],
    );
    passed.artifact_notes = vec![
        "artifact `/tmp/junit.xml` not collected: pattern \"tmp/junit.xml\" matched nothing under \"/\"".into(),
        "artifact refused: dev/null: device nodes are not copied out".into(),
    ];
    let quiet = job(
        "lint",
        JobOutcome::Passed,
        vec![step("clippy", StepStatus::Passed)],
    );
    run(vec![passed, quiet])
}

#[test]
fn the_console_summary_lists_artifact_problems_of_passing_jobs() {
    let buffer = Buffer::default();
    let options = ConsoleOptions {
        mode: ConsoleMode::Plain,
        gitlab_sections: false,
        color: false,
        failure_tail_lines: 2,
        suggest_allow: false,
    };
    let console = ConsoleReporter::new(options, Box::new(buffer.clone()));
    console.finish(&results());
    let text = buffer.text();
    let expected = "\n==== unit: 2 artifact problems ====\n\
        artifact `/tmp/junit.xml` not collected: pattern \"tmp/junit.xml\" matched nothing under \"/\"\n\
        artifact refused: dev/null: device nodes are not copied out\n";
    assert!(text.starts_with(expected), "{text}");
    assert!(!text.contains("lint:"), "{text}");
}

#[test]
fn junit_has_the_notes_in_the_suite_system_err() {
    let xml = render(&results(), &JunitOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let suites: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    let err = |suite: &roxmltree::Node| {
        suite
            .children()
            .find(|n| n.has_tag_name("system-err"))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    let unit = err(&suites[0]).expect("system-err on the unit suite");
    assert!(unit.contains("artifact refused: dev/null: device nodes are not copied out"));
    assert!(unit.contains("/tmp/junit.xml"));
    assert_eq!(err(&suites[1]), None);
}

/// Suite-level system-err comes after the test cases, where junit.xsd
/// wants it. Fails (one line) rather than passing when xmllint is missing.
#[test]
fn junit_with_notes_validates_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junit.xml");
    std::fs::write(&path, render(&results(), &JunitOptions::default()).unwrap()).unwrap();
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/src/report/junit/junit.xsd");
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema])
        .arg(&path)
        .output()
        .expect("xmllint is needed for this test (apt-get install libxml2-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
