//! `reports:`: test report files a job or step leaves in the guest, whose
//! testcases become testcases of the job's JUnit testsuite (see
//! `crate::test_reports`).

/// Guest paths or globs of test reports, by format. Relative paths are
/// taken from the job's `workdir`, as for `artifacts`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportFiles {
    /// JUnit XML files (pytest, cargo-nextest, go-junit-report, Maven
    /// Surefire, jest-junit and the like).
    pub junit: Vec<String>,
    /// Output of a Rust test binary (`cargo test`, or the binary itself),
    /// human or `--format json`.
    pub libtest: Vec<String>,
    /// A pattern that matches nothing is an error testcase, not a warning.
    pub required: bool,
}

impl ReportFiles {
    pub fn is_empty(&self) -> bool {
        self.junit.is_empty() && self.libtest.is_empty()
    }
}

#[cfg(test)]
#[path = "reports_tests.rs"]
mod tests;
