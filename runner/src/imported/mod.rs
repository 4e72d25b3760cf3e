//! Imported tests: the guest's own test reports (a job's `reports:`)
//! turned into testcases. "Reports" elsewhere in the runner are the ones
//! it writes itself (`crate::report`); these are the guest's, read in: JUnit
//! XML as real tools write it ([`junit_xml`]) and the output of Rust test
//! binaries ([`libtest`]).
//!
//! Everything here comes from the guest and is hostile. A file is read
//! only up to [`MAX_FILE_BYTES`]; XML is parsed without DTDs (so without
//! entity expansion) and with a node and a depth cap; every text kept is
//! cut to the runner's output limit. A file that cannot be read or parsed
//! becomes one error testcase naming it and the reason: it never stops the
//! run.

mod file;
pub mod junit_xml;
pub mod libtest;
mod limits;

use std::io::Read;
use std::path::Path;

pub use file::Imported;
pub use limits::{TextLimit, MAX_CASES_PER_JOB, MAX_DEPTH, MAX_FILE_BYTES};

use crate::results::{ImportedCase, ImportedResult, Output, Problem};

/// The two formats `reports:` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Junit,
    Libtest,
}

impl Format {
    pub fn key(self) -> &'static str {
        match self {
            Format::Junit => "junit",
            Format::Libtest => "libtest",
        }
    }
}

/// Reads and parses one report file. `shown` names it in messages (the
/// guest path); `text_limit` caps each text kept (output, stack traces).
/// Never fails: a bad file is one error testcase.
pub fn import_file(format: Format, path: &Path, shown: &str, text_limit: usize) -> Imported {
    let text = match read_capped(path) {
        Ok(text) => text,
        Err(reason) => return unreadable(shown, &reason),
    };
    let texts = TextLimit {
        limit: text_limit,
        source: path,
    };
    match format {
        Format::Junit => match junit_xml::parse(&text, &texts) {
            Ok(cases) => Imported {
                cases,
                notes: Vec::new(),
            },
            Err(reason) => unreadable(shown, &reason),
        },
        Format::Libtest => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            libtest::parse(&text, &stem, &texts)
        }
    }
}

/// The file's text, if it is a regular file of at most [`MAX_FILE_BYTES`].
/// Invalid UTF-8 becomes U+FFFD (libtest output may hold any bytes).
fn read_capped(path: &Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {} MiB a report may have",
            meta.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "more than the {} MiB a report may have",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The error testcase for a report that cannot be used.
pub fn unreadable(shown: &str, reason: &str) -> Imported {
    Imported {
        cases: vec![report_error(
            shown,
            format!("cannot read test report {shown}: {reason}"),
        )],
        notes: Vec::new(),
    }
}

/// The error testcase for a `required` report that is not there.
pub fn missing(pattern: &str, reason: &str) -> ImportedCase {
    report_error(
        pattern,
        format!("required test report `{pattern}` not found: {reason}"),
    )
}

fn report_error(shown: &str, message: String) -> ImportedCase {
    let mut case = ImportedCase::new(format!("(report) {shown}"));
    case.result = ImportedResult::Error(Problem {
        message,
        kind: "report".to_string(),
        body: Output::default(),
    });
    case
}

#[cfg(test)]
mod tests;
