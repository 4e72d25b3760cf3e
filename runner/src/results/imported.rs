//! Testcases read from the guest's own test reports (JUnit XML, libtest
//! output), see `crate::imported`. They sit in the job's testsuite
//! beside the step that wrote them and count like any other case.

use std::time::Duration;

use super::{CaseKind, Output};

/// What a job's `reports` produced.
#[derive(Clone, Debug, Default)]
pub struct ImportedTests {
    /// In the order they were read.
    pub cases: Vec<ImportedCase>,
    /// Warnings (a pattern that matched nothing, cases left out at a
    /// limit), one line each, for the console and the JUnit file. They do
    /// not fail the job.
    pub notes: Vec<String>,
}

/// One testcase from a guest report. Its text was cut to the runner's
/// output limit on import (a cut text points at the report file).
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedCase {
    /// The step whose `reports` listed the file; `None` for the job's own.
    pub step: Option<usize>,
    /// The report's classname, or the enclosing testsuite's name. The JUnit
    /// writer puts the job's display name in front.
    pub classname: Option<String>,
    pub name: String,
    pub time: Option<Duration>,
    pub result: ImportedResult,
    /// Where the test is, when the report says.
    pub file: Option<String>,
    pub line: Option<u64>,
    pub system_out: Output,
    pub system_err: Output,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ImportedResult {
    Passed,
    Failed(Problem),
    /// The test could not run properly; also a report that cannot be read.
    Error(Problem),
    Skipped {
        message: String,
    },
}

/// A failure or error as the report tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problem {
    pub message: String,
    /// The report's `type` (an exception class, `test failure`).
    pub kind: String,
    /// Stack trace, panic output.
    pub body: Output,
}

impl ImportedCase {
    /// A passing case named `name`, to be filled in.
    pub fn new(name: impl Into<String>) -> ImportedCase {
        ImportedCase {
            step: None,
            classname: None,
            name: name.into(),
            time: None,
            result: ImportedResult::Passed,
            file: None,
            line: None,
            system_out: Output::default(),
            system_err: Output::default(),
        }
    }

    pub fn kind(&self) -> CaseKind {
        match self.result {
            ImportedResult::Passed => CaseKind::Passed,
            ImportedResult::Failed(_) => CaseKind::Failed,
            ImportedResult::Error(_) => CaseKind::Error,
            ImportedResult::Skipped { .. } => CaseKind::Skipped,
        }
    }

    /// `src/lib.rs:12`, `tests/test_x.py`, or nothing.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        Some(match self.line {
            Some(line) => format!("{file}:{line}"),
            None => file.to_string(),
        })
    }
}
