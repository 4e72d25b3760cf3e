//! `report.html`: one self-contained page for people. A timeline of every
//! job's VM on one time axis (boot, file copies, each step attempt, test
//! reports, artifacts), every failure with its output, and filters by
//! status.
//!
//! The page is a fixed template (template.html: inline CSS and script,
//! nothing fetched) and the run's data as JSON in a
//! `<script type="application/json">` element, which the script reads and
//! draws. Nothing from the run is ever written as HTML: the script puts
//! it in the page as text only.
//!
//! Guest output is hostile. It reaches the JSON cleaned (no ANSI sequences
//! or control characters, invalid UTF-8 replaced) and cut to a share of one
//! budget for the whole report (excerpt.rs). In the JSON every `<` is
//! written `\u003c`, so no `</script>` or `<!--` in the data can end or
//! change the script element it sits in.

mod excerpt;
mod model;

use std::path::{Path, PathBuf};

use crate::report::stream::{ReportError, ReportFile, Reporter, RunEvent, Written};
use crate::results::RunResults;

pub use excerpt::TOTAL_BUDGET;
pub use model::job_status;

/// The page around the data.
const TEMPLATE: &str = include_str!("template.html");
/// Where the data goes in [`TEMPLATE`].
const DATA_SLOT: &str = "/*RUNNER_DATA*/";
/// The name of the default report in the out directory.
pub const FILE_NAME: &str = "report.html";

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("cannot write HTML report {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise the HTML report's data: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The whole page.
pub fn render(results: &RunResults) -> Result<String, HtmlError> {
    let report = model::build(results);
    let json = embeddable_json(&serde_json::to_string(&report)?);
    let (before, after) = TEMPLATE
        .split_once(DATA_SLOT)
        .expect("template.html has a data slot");
    let mut page = String::with_capacity(TEMPLATE.len() + json.len());
    page.push_str(before);
    page.push_str(&json);
    page.push_str(after);
    Ok(page)
}

/// Writes the page to `path` atomically (temporary file, then rename).
pub fn write(results: &RunResults, path: &Path) -> Result<(), HtmlError> {
    let page = render(results)?;
    crate::report::atomic_file::write_atomically(page.as_bytes(), path, ".report-").map_err(
        |source| HtmlError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// Writes the page when the run finishes.
pub struct HtmlReporter {
    file: ReportFile,
}

impl HtmlReporter {
    pub fn new(path: PathBuf) -> HtmlReporter {
        HtmlReporter {
            file: ReportFile::new("HTML report", path),
        }
    }
}

impl Reporter for HtmlReporter {
    fn report(&self, event: &RunEvent<'_>) {
        if let RunEvent::RunFinished { results } = event {
            self.file.record(write(results, self.file.path()));
        }
    }

    fn written(&self) -> Result<Option<Written>, ReportError> {
        self.file.written()
    }
}

/// JSON text that is safe inside a `<script>` element: `<` appears only
/// inside strings in JSON, where `\u003c` means the same character, so
/// the text has no `<` at all and cannot close the element, open a
/// comment, or start any tag.
fn embeddable_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

#[cfg(test)]
mod tests;
