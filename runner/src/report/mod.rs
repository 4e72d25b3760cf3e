//! Reporters: the JUnit file for CI systems, the console and a one-file
//! HTML report (html/) for people.
//!
//! Both read [`crate::results::RunResults`]; the console also listens to
//! live events through [`RunObserver`] while the run is going.

pub mod console;
pub mod events;
mod gitlab_sections;
pub mod html;
pub mod junit;
mod junit_imported;
mod junit_reruns;
mod live_lines;
pub mod merge;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use console::{ConsoleMode, ConsoleOptions, ConsoleReporter};
pub use junit::{JunitError, JunitOptions};

use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::results::{JobResult, RunResults, StepResult};

/// Which stream a chunk of step output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Live events of a run. The scheduler calls these from its worker
/// threads, in order per job, concurrently across jobs. Every method has
/// an empty default so an observer implements only what it needs.
pub trait RunObserver: Send + Sync {
    fn on_run_started(&self, _plan: &Plan) {}
    /// The job's VM is being started.
    fn on_job_started(&self, _job: &PlannedJob) {}
    /// A phase of the job outside any step: `booting`, `copying files`,
    /// `collecting artifacts`. Shown on the live line only.
    fn on_job_progress(&self, _job: &PlannedJob, _activity: &str) {}
    fn on_step_started(&self, _job: &PlannedJob, _step: &PlannedStep) {}
    fn on_step_output(
        &self,
        _job: &PlannedJob,
        _step: &PlannedStep,
        _stream: OutputStream,
        _chunk: &[u8],
    ) {
    }
    fn on_step_finished(&self, _job: &PlannedJob, _step: &PlannedStep, _result: &StepResult) {}
    fn on_job_finished(&self, _job: &PlannedJob, _result: &JobResult) {}
    /// A debug shell takes the terminal over (`lent`) or gives it back
    /// (`runner test --debug-on-failure`). A console stops drawing
    /// meanwhile; the other jobs run on.
    fn on_terminal_lent(&self, _lent: bool) {}
    /// The run is over; print or write the final report.
    fn finish(&self, _results: &RunResults) {}
}

/// Text from a guest, made fit for a log or an XML file: what a terminal
/// would show of `\r`-overwritten lines, no ANSI escape sequences, no
/// control characters but `\t` and `\n`, no U+FFFE/U+FFFF (not XML).
pub fn clean_text(text: &str) -> String {
    // Most text (test names, messages, traces) has nothing to clean; the
    // full pass below costs more than the rest of the JUnit writing.
    let needs_cleaning = |c: char| {
        matches!(c, '\r' | '\u{fffe}' | '\u{ffff}') || (c.is_control() && !matches!(c, '\t' | '\n'))
    };
    if !text.chars().any(needs_cleaning) {
        return text.to_string();
    }
    let shown: Vec<&str> = text
        .split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            // After a carriage return the terminal overwrote the line.
            line.rsplit('\r')
                .find(|part| !part.is_empty())
                .unwrap_or("")
        })
        .collect();
    let joined = shown.join("\n");
    // strip_ansi_escapes also drops tabs; keep them by stripping per piece.
    let stripped: Vec<String> = joined
        .split('\t')
        .map(strip_ansi_escapes::strip_str)
        .collect();
    stripped
        .join("\t")
        .chars()
        .filter(|c| {
            !matches!(c, '\u{fffe}' | '\u{ffff}') && (!c.is_control() || matches!(c, '\t' | '\n'))
        })
        .collect()
}

/// Writes `contents` to `path` atomically: a temporary file (named
/// `<prefix>….tmp`) in the same directory, synced, then renamed over
/// `path`. A crash leaves either the old file or the new one, never half
/// of one.
pub(crate) fn write_atomically(contents: &[u8], path: &Path, prefix: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    // Temporary files are private; a report is for everyone to read.
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))?;
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// `last line` or `last 12 lines`.
pub(crate) fn last_lines(n: usize) -> String {
    if n == 1 {
        "last line".to_string()
    } else {
        format!("last {n} lines")
    }
}

/// Gives repeated names a ` #2`, ` #3` suffix so that every name is unique.
#[derive(Default)]
pub(crate) struct UniqueNames {
    used: HashMap<String, usize>,
}

impl UniqueNames {
    pub fn unique(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut n = *self.used.get(name).unwrap_or(&0);
        while self.used.contains_key(&candidate) {
            n += 1;
            candidate = format!("{name} #{}", n + 1);
        }
        self.used.insert(name.to_string(), n);
        self.used.entry(candidate.clone()).or_insert(0);
        candidate
    }
}

#[cfg(test)]
mod artifact_notes_tests;
#[cfg(test)]
mod console_attempt_tests;
#[cfg(test)]
mod test_reports_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_strips_escapes_and_controls_but_keeps_tabs() {
        let raw = "\x1b[1;31mred\x1b[0m\tcol\x00\x07\x08\n\x1b]0;title\x07ok\u{ffff}\n";
        assert_eq!(clean_text(raw), "red\tcol\nok\n");
        assert_eq!(clean_text("10%\r20%\r30%\r\ndone\r\n"), "30%\ndone\n");
        assert_eq!(clean_text("é ü ✓"), "é ü ✓");
    }

    #[test]
    fn unique_names_get_suffixes() {
        let mut names = UniqueNames::default();
        assert_eq!(names.unique("make"), "make");
        assert_eq!(names.unique("make"), "make #2");
        assert_eq!(names.unique("make #3"), "make #3");
        assert_eq!(names.unique("make"), "make #4");
        assert_eq!(names.unique("test"), "test");
    }
}
