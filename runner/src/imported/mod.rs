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

pub mod junit_xml;
pub mod libtest;

use std::io::Read;
use std::path::Path;

use crate::results::{ImportedCase, ImportedResult, Output, Problem};

/// Largest report file parsed (16 MiB); a bigger one is an error testcase.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Deepest element nesting accepted in a JUnit file. Real reports nest
/// three or four levels (testsuites, testsuite, testcase, failure).
pub const MAX_DEPTH: usize = 64;
/// Most testcases imported for one job; the rest are left out with a note.
pub const MAX_CASES_PER_JOB: usize = 100_000;

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

/// What one report file gave.
#[derive(Debug, Default)]
pub struct Imported {
    pub cases: Vec<ImportedCase>,
    /// Warnings about the file that are not worth a testcase.
    pub notes: Vec<String>,
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

/// A test's time from a report. Negative, infinite and absurd values (more
/// than a year) are dropped: a guest's `1e300` must not become a panic.
fn seconds(seconds: f64) -> Option<std::time::Duration> {
    (seconds.is_finite() && (0.0..=31_536_000.0).contains(&seconds))
        .then(|| std::time::Duration::from_secs_f64(seconds))
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

/// Cuts texts from a report like the runner cuts step output: head and
/// tail of `limit / 2` bytes each, the omission note pointing at the
/// report file on the host.
pub struct TextLimit<'a> {
    pub limit: usize,
    pub source: &'a Path,
}

impl TextLimit<'_> {
    pub fn output(&self, text: &str) -> Output {
        let bytes = text.as_bytes();
        if bytes.len() <= self.limit {
            return Output::from_bytes(bytes);
        }
        let half = self.limit / 2;
        Output {
            head: bytes[..half].to_vec(),
            tail: bytes[bytes.len() - (self.limit - half)..].to_vec(),
            total_bytes: bytes.len() as u64,
            truncated: true,
            log_path: Some(self.source.to_path_buf()),
        }
    }

    /// A one-line message, at most `limit` bytes (cut on a char boundary).
    pub fn message(&self, text: &str) -> String {
        let line = text.trim();
        if line.len() <= self.limit {
            return line.to_string();
        }
        let mut end = self.limit;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    }
}

#[cfg(test)]
mod tests;
