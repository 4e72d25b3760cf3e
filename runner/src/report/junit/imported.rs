//! The guest's own testcases (from `reports:`) in the job's testsuite.
//!
//! Their classname gets the job's display name in front (`test (N=1).` +
//! the report's classname), so that the same test in two matrix jobs stays
//! two testcases. Texts are cut like the runner's own, with the note
//! pointing at the report file kept under `<out>/reports/`. The strict
//! JUnit schemas have no place for a testcase's `file` and `line`, so the
//! location opens the failure, error or skip text instead.

use std::collections::HashMap;
use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus};

use super::text::{limited, message, xml_attribute, xml_text, JunitOptions};
use crate::report::text::UniqueNames;
use crate::results::{ImportedCase, ImportedResult, JobResult};

/// Unique testcase names within each classname of a suite.
#[derive(Default)]
pub(super) struct CaseNames {
    by_class: HashMap<String, UniqueNames>,
}

impl CaseNames {
    pub fn unique(&mut self, classname: &str, name: &str) -> String {
        self.by_class
            .entry(classname.to_string())
            .or_default()
            .unique(name)
    }
}

/// The JUnit classname of an imported case.
pub(super) fn classname(job: &JobResult, case: &ImportedCase) -> String {
    match &case.classname {
        Some(inner) => format!("{}.{inner}", job.classname),
        None => job.classname.clone(),
    }
}

pub(super) fn testcase(
    job: &JobResult,
    case: &ImportedCase,
    names: &mut CaseNames,
    options: &JunitOptions,
) -> TestCase {
    let classname = classname(job, case);
    let name = names.unique(&classname, &case.name);
    let mut test = TestCase::new(xml_text(&name), status(job, case, options));
    test.set_classname(xml_text(&classname));
    test.set_time(case.time.unwrap_or(Duration::ZERO));
    if !case.system_out.is_empty() {
        test.set_system_out(xml_text(&limited(&case.system_out, options.output_limit)));
    }
    if !case.system_err.is_empty() {
        test.set_system_err(xml_text(&limited(&case.system_err, options.output_limit)));
    }
    test
}

fn status(job: &JobResult, case: &ImportedCase, options: &JunitOptions) -> TestCaseStatus {
    let location = case.location().map(|at| format!("at {at}\n"));
    let (kind, problem, default_type) = match &case.result {
        ImportedResult::Passed => return TestCaseStatus::success(),
        ImportedResult::Skipped { message } => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(xml_attribute(message));
            if let Some(location) = location {
                status.set_description(xml_text(&location));
            }
            return status;
        }
        ImportedResult::Failed(problem) => (NonSuccessKind::Failure, problem, "failure"),
        ImportedResult::Error(problem) => (NonSuccessKind::Error, problem, "error"),
    };
    let mut status = TestCaseStatus::non_success(kind);
    // Both strict schemas want a `type` on failures and errors.
    status.set_type(xml_attribute(match problem.kind.trim() {
        "" => default_type,
        kind => kind,
    }));
    status.set_message(xml_attribute(&message(job, &problem.message)));
    let mut body = location.unwrap_or_default();
    if !problem.body.is_empty() {
        body.push_str(&limited(&problem.body, options.output_limit));
    }
    if !body.is_empty() {
        status.set_description(xml_text(&body));
    }
    status
}
