//! The console's end-of-run block for the guest's own test reports (a
//! child of console.rs, which it extends).

use super::{one_line, ConsoleReporter};
use crate::results::{CaseKind, ImportedResult, JobResult};

impl ConsoleReporter {
    /// The end-of-run block for the guest's test reports: each failing
    /// testcase on one line (the JUnit file has the whole story), then the
    /// warnings about reports that were missing or cut.
    pub(super) fn test_report_block(&self, job: &JobResult) -> Vec<String> {
        let reports = &job.imported;
        let failing: Vec<_> = reports
            .cases
            .iter()
            .filter(|case| matches!(case.kind(), CaseKind::Failed | CaseKind::Error))
            .collect();
        let mut lines = Vec::new();
        if !failing.is_empty() {
            let allowed = if job.allow_failure {
                " (allowed to fail)"
            } else {
                ""
            };
            let header = format!(
                "==== {}: {} failing tests in test reports{allowed} ====",
                job.name,
                failing.len()
            );
            lines.extend([String::new(), self.paint(&header, "1;31")]);
            for case in failing.iter().take(MAX_FAILING_TESTS_SHOWN) {
                let name = match &case.classname {
                    Some(class) => format!("{class}::{}", case.name),
                    None => case.name.clone(),
                };
                let message = match &case.result {
                    ImportedResult::Failed(p) | ImportedResult::Error(p) => one_line(&p.message),
                    _ => String::new(),
                };
                let at = case
                    .location()
                    .map(|at| format!(" ({at})"))
                    .unwrap_or_default();
                lines.push(format!("{}: {message}{at}", one_line(&name)));
            }
            if failing.len() > MAX_FAILING_TESTS_SHOWN {
                let more = failing.len() - MAX_FAILING_TESTS_SHOWN;
                lines.push(format!("… and {more} more in the JUnit file"));
            }
        }
        if !reports.notes.is_empty() {
            let n = reports.notes.len();
            let header = format!(
                "==== {}: {n} test report warning{} ====",
                job.name,
                if n == 1 { "" } else { "s" }
            );
            lines.extend([String::new(), self.paint(&header, "33")]);
            lines.extend(reports.notes.iter().map(|note| one_line(note)));
        }
        lines
    }
}

/// Failing report testcases listed by name at the end of a run.
const MAX_FAILING_TESTS_SHOWN: usize = 50;
