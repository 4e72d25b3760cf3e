//! JUnit XML for GitLab, Jenkins and friends: one `<testsuite>` per job,
//! one `<testcase>` per service (`service <name>`, its log as output) and
//! per step, and the testcases of the guest's own test reports after the
//! step they came from (`imported`). The root
//! keeps to the attributes the strict schemas share ([`ROOT_ATTRIBUTES`]).
//!
//! Written with `quick-junit`, not `junit-report` (the workspace's first
//! choice), because junit-report 0.9 cannot meet two requirements:
//! * it always writes a `package` attribute (and `id`, `hostname`) on
//!   `<testsuite>`; we must not;
//! * it writes output as CDATA without splitting `]]>`, so a test that
//!   prints `]]>` produces a malformed file.
//!
//! quick-junit writes escaped text, the schema's element order and no
//! `package`. It does strip tabs along with other control characters, so
//! tabs travel through it as a private-use placeholder that is turned back
//! into `\t` after serialising (see [`TAB_PLACEHOLDER`]).

mod imported;
pub mod merge;
mod reruns;
mod service;
mod status;
mod suite;
mod text;

use std::path::{Path, PathBuf};

use quick_junit::Report;

pub use text::{JunitOptions, TAB_PLACEHOLDER};

use crate::report::atomic_file::write_atomically;
use crate::report::stream::{ReportError, ReportFile, Reporter, RunEvent, Written};
use crate::results::RunResults;
use suite::suite;
use text::xml_text;

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("cannot write JUnit report {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        // Not `source`: the message says it (anyhow would print it twice).
        cause: std::io::Error,
    },
    #[error("cannot serialise JUnit report: {0}")]
    Serialize(#[from] quick_junit::SerializeError),
}

/// Attributes the root `<testsuites>` may carry: those that both the
/// Jenkins xUnit plugin's JUnit schema and the Ant JUnit schema accept.
/// quick-junit also writes `skipped` there, which is taken out again.
pub const ROOT_ATTRIBUTES: [&str; 5] = ["name", "time", "tests", "failures", "errors"];

/// The report as XML text.
pub fn render(results: &RunResults, options: &JunitOptions) -> Result<String, JunitError> {
    let mut report = Report::new(xml_text(&results.pipeline_name));
    report.set_time(results.wall);
    for job in &results.jobs {
        report.add_test_suite(suite(job, options));
    }
    let xml = strict_root(&report.to_string()?);
    Ok(xml.replace(TAB_PLACEHOLDER, "\t"))
}

/// Drops every attribute of the root element that is not in
/// [`ROOT_ATTRIBUTES`]. quick-junit escapes `<`, `>` and quotes in
/// attribute values, so the first `>` after `<testsuites` ends the tag and
/// every `"` inside it delimits a value.
fn strict_root(xml: &str) -> String {
    let Some(start) = xml.find("<testsuites") else {
        return xml.to_string();
    };
    let Some(len) = xml[start..].find('>') else {
        return xml.to_string();
    };
    let tag = &xml[start + "<testsuites".len()..start + len];
    let closing = if tag.ends_with('/') { "/>" } else { ">" };
    let mut kept = String::from("<testsuites");
    // ` name="v"` pieces: split on quotes, pairing names with values.
    let pieces: Vec<&str> = tag.trim_end_matches('/').split('"').collect();
    for pair in pieces.chunks(2) {
        if let [name, value] = pair {
            let name = name.trim().trim_end_matches('=');
            if ROOT_ATTRIBUTES.contains(&name) {
                kept.push_str(&format!(" {name}=\"{value}\""));
            }
        }
    }
    kept.push_str(closing);
    format!("{}{kept}{}", &xml[..start], &xml[start + len + 1..])
}

/// Writes the report to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over `path`. A crash leaves either the
/// old file or the new one, never half of one.
pub fn write(results: &RunResults, path: &Path, options: &JunitOptions) -> Result<(), JunitError> {
    write_xml(&render(results, options)?, path)
}

/// Writes `xml` to `path` atomically, as [`write`] does.
pub fn write_xml(xml: &str, path: &Path) -> Result<(), JunitError> {
    write_atomically(xml.as_bytes(), path, ".junit-").map_err(|cause| JunitError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Writes the JUnit file when the run finishes.
pub struct JunitReporter {
    file: ReportFile,
    options: JunitOptions,
}

impl JunitReporter {
    pub fn new(path: PathBuf, options: JunitOptions) -> JunitReporter {
        JunitReporter {
            file: ReportFile::new("JUnit report", path),
            options,
        }
    }
}

impl Reporter for JunitReporter {
    fn report(&self, event: &RunEvent<'_>) {
        if let RunEvent::RunFinished { results } = event {
            self.file
                .record(write(results, self.file.path(), &self.options));
        }
    }

    fn written(&self) -> Result<Option<Written>, ReportError> {
        self.file.written()
    }
}

#[cfg(test)]
mod strict_tests;
#[cfg(test)]
pub(crate) mod tests;
