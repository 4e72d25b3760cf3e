//! The guest's test reports in the console: failing tests by name, the
//! warnings, and counts that agree with the JUnit file.

use super::console::tests::plain;
use super::stream::Feed;
use crate::results::tests::{job, run, step};
use crate::results::{ImportedCase, ImportedResult, JobOutcome, Problem, StepStatus};

fn failing(name: &str, message: &str) -> ImportedCase {
    let mut case = ImportedCase::new(name);
    case.classname = Some("tests.test_math".into());
    case.file = Some("tests/test_math.py".into());
    case.line = Some(7);
    case.result = ImportedResult::Failed(Problem {
        message: message.into(),
        ..Problem::default()
    });
    case
}

#[test]
fn failing_report_tests_and_warnings_are_listed_and_counted() {
    let mut unit = job(
        "unit",
        JobOutcome::Passed,
        vec![step("pytest", StepStatus::Passed)],
    );
    unit.imported.cases = vec![
        ImportedCase::new("test_add"),
        failing("test_div", "ZeroDivisionError:\ndivision by zero"),
        ImportedCase {
            result: ImportedResult::Skipped {
                message: "later".into(),
            },
            ..ImportedCase::new("test_skip")
        },
    ];
    unit.imported.notes = vec!["test report `out/*.xml` not found: matched nothing".into()];
    let results = run(vec![unit]);
    // The step passed, but a test in its report failed: the job failed.
    assert!(results.jobs[0].failed());
    assert_eq!(results.exit_code(), 1);

    let (console, buffer) = plain(false, false);
    console.finish(&results);
    let text = buffer.text();
    let expected = "\n==== unit: 1 failing tests in test reports ====\n\
        tests.test_math::test_div: ZeroDivisionError: division by zero (tests/test_math.py:7)\n\
        \n==== unit: 1 test report warning ====\n\
        test report `out/*.xml` not found: matched nothing\n\
        \n2 passed, 1 failed, 1 skipped in 34.5s\n";
    assert_eq!(text, expected);
}
