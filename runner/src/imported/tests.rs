//! The report readers against files as real tools write them (fixtures/),
//! and against hostile ones.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::results::{CaseKind, ImportedCase, ImportedResult};

const LIMIT: usize = 64 * 1024;

fn texts() -> TextLimit<'static> {
    TextLimit {
        limit: LIMIT,
        source: Path::new("out/reports/01-j/job/junit/report.xml"),
    }
}

fn junit(xml: &str) -> Vec<ImportedCase> {
    junit_xml::parse(xml, &texts()).unwrap_or_else(|e| panic!("{e}"))
}

fn summary(cases: &[ImportedCase]) -> Vec<(String, String, CaseKind)> {
    cases
        .iter()
        .map(|c| {
            let class = c.classname.clone().unwrap_or_default();
            (class, c.name.clone(), c.kind())
        })
        .collect()
}

fn problem(case: &ImportedCase) -> &crate::results::Problem {
    match &case.result {
        ImportedResult::Failed(p) | ImportedResult::Error(p) => p,
        other => panic!("not a failure: {other:?}"),
    }
}

fn skip_message(case: &ImportedCase) -> &str {
    match &case.result {
        ImportedResult::Skipped { message } => message,
        other => panic!("not skipped: {other:?}"),
    }
}

use CaseKind::{Error as E, Failed as F, Passed as P, Skipped as S};

fn s(class: &str, name: &str, kind: CaseKind) -> (String, String, CaseKind) {
    (class.to_string(), name.to_string(), kind)
}

#[test]
fn pytest() {
    let cases = junit(include_str!("fixtures/pytest.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("tests.test_math", "test_add", P),
            s("tests.test_math", "test_div", F),
            s("tests.test_math", "test_skip", S),
            s("tests.test_db", "test_conn", E),
            s("tests.test_math", "test_param[1-2]", P),
        ]
    );
    let div = &cases[1];
    assert_eq!(div.location().as_deref(), Some("tests/test_math.py:7"));
    assert_eq!(div.time, Some(Duration::from_millis(2)));
    assert_eq!(problem(div).message, "ZeroDivisionError: division by zero");
    assert!(problem(div).body.text().contains(">       assert 1 / 0\n"));
    assert_eq!(div.system_out.text(), "dividing\n");
    assert_eq!(skip_message(&cases[2]), "not on this platform");
    // A failure with a teardown error: the error wins, both stories kept.
    let conn = problem(&cases[3]);
    assert_eq!(
        conn.message,
        "failed on teardown with \"RuntimeError: closed\""
    );
    assert!(conn.body.text().contains("RuntimeError: closed"));
    assert!(conn.body.text().contains("assert False"));
}

#[test]
fn cargo_nextest() {
    let cases = junit(include_str!("fixtures/nextest.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("mycrate", "tests::adds", P),
            // Flaky: failed once, then passed. The rerun does not fail it.
            s("mycrate", "tests::flaky", P),
            s("mycrate", "tests::breaks", F),
        ]
    );
    let breaks = problem(&cases[2]);
    assert_eq!(breaks.kind, "test failure");
    // No `message`: the first line of the text stands in.
    assert_eq!(
        breaks.message,
        "thread 'tests::breaks' panicked at src/lib.rs:20:9:"
    );
    assert!(cases[2]
        .system_out
        .text()
        .contains("test tests::breaks ... FAILED"));
    assert!(cases[2].system_err.text().starts_with("thread"));
}

#[test]
fn go_junit_report() {
    let cases = junit(include_str!("fixtures/go-junit-report.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("example.com/calc", "TestAdd", P),
            s("example.com/calc", "TestSub", F),
            s("example.com/calc", "TestMul", S),
        ]
    );
    assert_eq!(problem(&cases[1]).message, "Failed");
    assert_eq!(problem(&cases[1]).kind, "");
    assert_eq!(skip_message(&cases[2]), "calc_test.go:20: later");
}

#[test]
fn maven_surefire_with_a_lone_testsuite_root() {
    let cases = junit(include_str!("fixtures/surefire.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("com.example.AppTest", "testOk", P),
            s("com.example.AppTest", "testFails", F),
            s("com.example.AppTest", "testErrs", E),
        ]
    );
    // Surefire writes thousands with a comma.
    assert_eq!(cases[1].time, Some(Duration::from_millis(1_200_500)));
    let fails = problem(&cases[1]);
    assert_eq!(fails.message, "expected: <1> but was: <2>");
    assert_eq!(fails.kind, "org.opentest4j.AssertionFailedError");
    assert!(fails
        .body
        .text()
        .contains("\tat com.example.AppTest.testFails"));
    assert_eq!(cases[1].system_out.text(), "hello from the test");
}

#[test]
fn jest_junit() {
    let cases = junit(include_str!("fixtures/jest-junit.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("math adds", "math adds", P),
            s("math divides", "math divides", F),
            s("math later", "math later", S),
        ]
    );
    assert_eq!(
        problem(&cases[1]).message,
        "Error: expect(received).toBe(expected) // Object.is equality"
    );
    assert_eq!(skip_message(&cases[2]), "");
}

#[test]
fn nested_suites_and_missing_classnames() {
    let cases = junit(include_str!("fixtures/nested.xml"));
    assert_eq!(
        summary(&cases),
        [
            s("outer", "top", P),
            s("inner", "deep", P),
            s("inner", "deep", P),
            s("outer", "after", P),
        ]
    );
    assert_eq!(cases[1].time, Some(Duration::from_millis(500)));
    assert_eq!(cases[2].time, None, "`abc` is no time");
    // No suite name either: no classname; the job's name will stand alone.
    let bare = junit("<testsuite><testcase name='x'/></testsuite>");
    assert_eq!(bare[0].classname, None);
}

fn error_of(xml: &str) -> String {
    junit_xml::parse(xml, &texts()).unwrap_err()
}

#[test]
fn entities_are_never_expanded() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<testsuites><testcase name="&lol2;"/></testsuites>"#;
    let err = error_of(laughs);
    assert!(err.contains("DTD"), "{err}");
    let external = r#"<?xml version="1.0"?>
<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><testsuites><testcase name="&x;"/></testsuites>"#;
    assert!(error_of(external).contains("DTD"));
    // Without a DTD an unknown entity is an error, not an empty string.
    assert!(error_of("<testsuites><testcase name='&x;'/></testsuites>").contains("x"));
}

#[test]
fn depth_and_shape_are_capped() {
    let deep = format!(
        "<testsuites>{}{}</testsuites>",
        "<testsuite>".repeat(100),
        "</testsuite>".repeat(100)
    );
    let err = error_of(&deep);
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
    // Very deep nesting does not take the parser's stack either.
    let abyss = format!("{}{}", "<a>".repeat(200_000), "</a>".repeat(200_000));
    assert!(junit_xml::parse(&abyss, &texts()).is_err());
    assert!(error_of("<html/>").contains("not <testsuites> or <testsuite>"));
    let unfinished = error_of("<testsuites><testcase");
    assert_eq!(unfinished, "the root node was opened but never closed");
    assert!(error_of("<testsuites>\n<testcase name='a' x/>").ends_with(" at 2:21"));
    assert!(error_of("").lines().count() == 1);
}

#[test]
fn long_texts_are_cut_with_a_pointer_to_the_report() {
    let long = "x".repeat(100_000);
    let xml = format!(
        "<testsuite name='s'><testcase name='{}'><failure message='{long}'>{long}</failure><system-out>{long}</system-out></testcase></testsuite>",
        "n".repeat(70_000)
    );
    let cases = junit(&xml);
    let failure = problem(&cases[0]);
    assert!(failure.message.len() <= LIMIT + 3);
    assert!(cases[0].name.len() <= LIMIT + 3);
    assert!(failure.body.truncated && failure.body.head.len() + failure.body.tail.len() == LIMIT);
    let out = cases[0].system_out.text();
    assert!(out.contains("bytes omitted; full output in out/reports/01-j/job/junit/report.xml"));
}

#[test]
fn absurd_times_are_dropped() {
    let cases = junit(
        "<testsuite><testcase name='a' time='1e300'/><testcase name='b' time='-1'/><testcase name='c' time='NaN'/></testsuite>",
    );
    assert!(cases.iter().all(|c| c.time.is_none()));
}

#[test]
fn files_that_cannot_be_used_are_one_error_case_each() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.xml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    let broken = dir.path().join("broken.xml");
    std::fs::write(&broken, "<testsuites><testcase name='a'>").unwrap();
    let link = dir.path().join("link.xml");
    std::os::unix::fs::symlink(&broken, &link).unwrap();
    for (path, expected) in [
        (&big, "more than the 16 MiB a report may have"),
        (&broken, "never closed"),
        (&link, "not a regular file"),
    ] {
        let shown = path.file_name().unwrap().to_string_lossy().into_owned();
        let imported = import_file(Format::Junit, path, &shown, LIMIT);
        assert_eq!(imported.cases.len(), 1);
        let case = &imported.cases[0];
        assert_eq!(case.name, format!("(report) {shown}"));
        let message = &problem(case).message;
        assert!(
            message.starts_with(&format!("cannot read test report {shown}: ")),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        assert_eq!(message.lines().count(), 1);
    }
}

fn libtest_file(text: &str) -> Imported {
    libtest::parse(text, "unit", &texts())
}

#[test]
fn libtest_human_output_of_cargo_test() {
    let imported = libtest_file(include_str!("fixtures/libtest-human.txt"));
    assert_eq!(
        summary(&imported.cases),
        [
            s("lt_demo", "tests::breaks", F),
            s("lt_demo", "tests::online", S),
            s("lt_demo", "tests::adds", P),
            s("lt_demo", "tests::slow", S),
            s("lt_demo", "tests::panics", P),
            s("api", "adds", P),
            s("api", "old_style", F),
            s("lt_demo (doc-tests)", "src/lib.rs - add (line 1)", P),
        ]
    );
    assert!(imported.notes.is_empty(), "{:?}", imported.notes);
    let breaks = &imported.cases[0];
    let failure = problem(breaks);
    assert_eq!(failure.message, "assertion `left == right` failed");
    assert_eq!(failure.kind, "panic");
    assert_eq!(breaks.location().as_deref(), Some("src/lib.rs:11"));
    assert!(failure.body.text().starts_with("about to fail\n"));
    assert!(failure.body.text().contains("  left: 4\n right: 5"));
    assert_eq!(skip_message(&imported.cases[1]), "needs a network");
    assert_eq!(skip_message(&imported.cases[3]), "ignored");
    assert_eq!(problem(&imported.cases[6]).message, "plain message");
    assert_eq!(
        imported.cases[6].location().as_deref(),
        Some("tests/api.rs:4")
    );
}

#[test]
fn libtest_json_output() {
    let imported = libtest_file(include_str!("fixtures/libtest-json.txt"));
    let names: Vec<_> = summary(&imported.cases);
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&s("lt_demo", "tests::breaks", F)));
    assert!(names.contains(&s("lt_demo", "tests::online", S)));
    assert!(names.contains(&s("api", "old_style", F)));
    assert!(names.contains(&s("lt_demo (doc-tests)", "src/lib.rs - add (line 1)", P)));
    let breaks = imported
        .cases
        .iter()
        .find(|c| c.name == "tests::breaks")
        .unwrap();
    assert_eq!(problem(breaks).message, "assertion `left == right` failed");
    assert_eq!(breaks.location().as_deref(), Some("src/lib.rs:11"));
    assert!(breaks.time.is_some());
    assert!(imported.notes.is_empty(), "{:?}", imported.notes);
}

#[test]
fn libtest_from_a_bare_binary_with_report_time_and_a_crash() {
    let output = "\nrunning 3 tests\ntest a ... ok <0.250s>\ntest b ... FAILED <0.001s>\n";
    let imported = libtest_file(output);
    // No `Running` line: the file's name is the classname.
    assert_eq!(
        summary(&imported.cases),
        [s("unit", "a", P), s("unit", "b", F)]
    );
    assert_eq!(imported.cases[0].time, Some(Duration::from_millis(250)));
    assert_eq!(problem(&imported.cases[1]).message, "test failed");
    assert_eq!(
        imported.notes,
        ["libtest output of `unit`: 1 of 3 tests reported no result (did the test binary crash?)"]
    );
    // A report named after the binary, as cargo names it: the hash goes.
    let named = libtest::parse("test a ... ok\n", "mycrate-0123456789abcdef", &texts());
    assert_eq!(named.cases[0].classname.as_deref(), Some("mycrate"));
    // Not libtest at all: nothing, and no panic.
    let nothing = libtest_file("test this ... maybe\n{\"type\":\n---- x stdout ----\n");
    assert!(nothing.cases.is_empty());
}

/// Found by the `libtest` fuzz target: the binary named by a `Running`
/// or `Doc-tests` line became every following test's classname (and went
/// into the notes) uncut.
#[test]
fn a_long_binary_name_is_cut_like_any_text() {
    let texts = TextLimit {
        limit: 7,
        source: Path::new("report.txt"),
    };
    let long = "b".repeat(1000);
    for line in [
        format!("Running unittests src/lib.rs (target/debug/deps/{long}-0123456789abcdef)"),
        format!("Doc-tests {long}"),
    ] {
        let output = format!("{line}\nrunning 2 tests\ntest a ... ok\n");
        let imported = libtest::parse(&output, &long, &texts);
        let classname = imported.cases[0].classname.as_deref().unwrap_or_default();
        assert_eq!(classname, "bbbbbbb…");
        assert_eq!(imported.notes.len(), 1);
        assert!(imported.notes[0].len() < 100, "{}", imported.notes[0]);
    }
    // Without such a line, the report's own file name is cut too.
    let imported = libtest::parse("test a ... ok\n", &long, &texts);
    assert_eq!(imported.cases[0].classname.as_deref(), Some("bbbbbbb…"));
}

/// Every prefix and a byte-flipped copy of every fixture: whatever a guest
/// cut short or garbled, the readers answer (cases or one error line) and
/// never panic.
#[test]
fn cut_and_garbled_reports_never_panic() {
    let fixtures = [
        include_str!("fixtures/pytest.xml"),
        include_str!("fixtures/nextest.xml"),
        include_str!("fixtures/go-junit-report.xml"),
        include_str!("fixtures/surefire.xml"),
        include_str!("fixtures/jest-junit.xml"),
        include_str!("fixtures/nested.xml"),
        include_str!("fixtures/libtest-human.txt"),
        include_str!("fixtures/libtest-json.txt"),
    ];
    for text in fixtures {
        let cuts = (0..text.len())
            .step_by(3)
            .filter(|&i| text.is_char_boundary(i));
        for cut in cuts {
            let part = &text[..cut];
            if let Err(e) = junit_xml::parse(part, &texts()) {
                assert_eq!(e.lines().count(), 1, "{e}");
            }
            libtest_file(part);
        }
        let garbled: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| match i % 11 {
                0 => '<',
                5 => '"',
                _ => c,
            })
            .collect();
        let _ = junit_xml::parse(&garbled, &texts());
        libtest_file(&garbled);
    }
}
