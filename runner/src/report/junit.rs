//! JUnit XML for GitLab, Jenkins and friends: one `<testsuite>` per job,
//! one `<testcase>` per step, and the testcases of the guest's own test
//! reports after the step they came from (junit_imported.rs). The root
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

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, Utc};
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::junit_imported::{self, CaseNames};
use super::{clean_text, junit_reruns, last_lines};
use crate::results::{
    omission_note, CaseKind, JobCase, JobResult, Output, RunResults, StepResult, StepStatus,
};

/// Stands in for `\t` while text passes through quick-junit, which would
/// drop it. Plane-15 private use: no tool prints it, and [`xml_text`]
/// removes it from the input first.
pub(crate) const TAB_PLACEHOLDER: char = '\u{F0009}';

#[derive(Clone, Debug)]
pub struct JunitOptions {
    /// Most bytes of each `<system-out>` / `<system-err>`; beyond that the
    /// middle is cut and a note points at the full log.
    pub output_limit: usize,
    /// Lines of output quoted in a `<failure>` / `<error>` body.
    pub failure_tail_lines: usize,
}

impl Default for JunitOptions {
    fn default() -> Self {
        JunitOptions {
            output_limit: 64 * 1024,
            failure_tail_lines: 50,
        }
    }
}

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
    super::write_atomically(xml.as_bytes(), path, ".junit-").map_err(|cause| JunitError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

fn suite(job: &JobResult, options: &JunitOptions) -> TestSuite {
    let mut suite = TestSuite::new(xml_text(&job.name));
    suite.set_timestamp(timestamp(job.started));
    suite.set_time(job.duration);
    if job.allow_failure {
        suite.add_property(Property::new("allow_failure", "true"));
    }
    if let Some(boot) = job.boot {
        suite.add_property(Property::new(
            "boot_seconds",
            format!("{:.3}", boot.as_secs_f64()),
        ));
    }
    if let Some(log) = &job.log_path {
        suite.add_property(Property::new("log", xml_text(&log.display().to_string())));
    }
    if job.attempt.of > 1 {
        suite.add_property(Property::new("attempt", job.attempt.to_string()));
    }
    let mut names = CaseNames::default();
    let imported = &job.test_reports.cases;
    for (index, step) in job.steps.iter().enumerate() {
        let mut status = step_status(job, step, options);
        junit_reruns::attach(&mut status, junit_reruns::step_reruns(job, index, options));
        let mut case = TestCase::new(xml_text(&names.unique(&job.classname, &step.name)), status);
        case.set_classname(xml_text(&job.classname));
        case.set_time(step.duration);
        if !step.stdout.is_empty() {
            case.set_system_out(xml_text(&limited(&step.stdout, options.output_limit)));
        }
        if !step.stderr.is_empty() {
            case.set_system_err(xml_text(&limited(&step.stderr, options.output_limit)));
        }
        suite.add_test_case(case);
        // The step's own reports right after it: the step stays visible
        // (a crash before the report was written shows there).
        for case in imported.iter().filter(|case| case.step == Some(index)) {
            suite.add_test_case(junit_imported::testcase(job, case, &mut names, options));
        }
    }
    let steps = job.steps.len();
    for case in imported
        .iter()
        .filter(|c| c.step.is_none_or(|i| i >= steps))
    {
        suite.add_test_case(junit_imported::testcase(job, case, &mut names, options));
    }
    if let Some(job_case) = job.job_case() {
        let name = names.unique(&job.classname, job_case.name);
        let mut case = TestCase::new(xml_text(&name), job_case_status(job, &job_case));
        case.set_classname(xml_text(&job.classname));
        case.set_time(if job.steps.is_empty() {
            job.duration
        } else {
            Duration::ZERO
        });
        suite.add_test_case(case);
    }
    let mut notes = junit_reruns::job_attempt_notes(job);
    notes.extend(job.artifact_notes.iter().cloned());
    notes.extend(job.test_reports.notes.iter().cloned());
    if !notes.is_empty() {
        // Suite level: these belong to the job, not to any one step.
        suite.set_system_err(xml_text(&notes.join("\n")));
    }
    suite
}

pub(super) fn step_status(
    job: &JobResult,
    step: &StepResult,
    options: &JunitOptions,
) -> TestCaseStatus {
    let (kind, ty) = match &step.status {
        StepStatus::Passed => return TestCaseStatus::success(),
        StepStatus::Skipped { reason } => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(xml_attribute(reason));
            return status;
        }
        StepStatus::Failed { exit } if exit.signal.is_some() => (NonSuccessKind::Failure, "signal"),
        StepStatus::Failed { .. } => (NonSuccessKind::Failure, "exit"),
        StepStatus::TimedOut { .. } => (NonSuccessKind::Failure, "timeout"),
        StepStatus::Error { .. } => (NonSuccessKind::Error, "error"),
    };
    let describe = step.status.describe();
    let mut body = format!("step `{}` of job `{}`: {describe}\n", step.name, job.name);
    for (label, output) in [("stdout", &step.stdout), ("stderr", &step.stderr)] {
        let lines = output.last_lines(options.failure_tail_lines);
        if !lines.is_empty() {
            body.push_str(&format!("\n--- {label}, {} ---\n", last_lines(lines.len())));
            for line in lines {
                body.push_str(&line);
                body.push('\n');
            }
        }
    }
    if let Some(log) = &job.log_path {
        body.push_str(&format!("\nfull log: {}\n", log.display()));
    }
    let mut status = TestCaseStatus::non_success(kind);
    status.set_type(ty);
    status.set_message(xml_attribute(&message(job, &describe)));
    status.set_description(xml_text(&body));
    status
}

fn job_case_status(job: &JobResult, case: &JobCase) -> TestCaseStatus {
    let mut status = match case.kind {
        CaseKind::Skipped => TestCaseStatus::skipped(),
        CaseKind::Failed => TestCaseStatus::non_success(NonSuccessKind::Failure),
        CaseKind::Error | CaseKind::Passed => TestCaseStatus::non_success(NonSuccessKind::Error),
    };
    if case.kind != CaseKind::Skipped {
        status.set_type(if case.name == "(boot)" {
            "boot"
        } else {
            "runner"
        });
    }
    status.set_message(xml_attribute(&message(job, &case.message)));
    if !case.detail.is_empty() {
        let mut body = format!(
            "{}\n\n--- serial console, {} ---\n",
            case.message,
            last_lines(case.detail.len())
        );
        for line in &case.detail {
            body.push_str(line);
            body.push('\n');
        }
        status.set_description(xml_text(&body));
    }
    status
}

/// Failures of `allow_failure` jobs stay failures, marked as allowed.
pub(super) fn message(job: &JobResult, text: &str) -> String {
    if job.allow_failure {
        format!("allowed failure: {text}")
    } else {
        text.to_string()
    }
}

/// Output text cut to about `limit` bytes: head, a note saying how much was
/// left out and where the full log is, tail.
pub(super) fn limited(output: &Output, limit: usize) -> String {
    let kept = output.head.len() + output.tail.len();
    if kept <= limit {
        return output.text();
    }
    let half = limit / 2;
    let head = &output.head[..half.min(output.head.len())];
    let source_tail: &[u8] = if output.truncated {
        &output.tail
    } else {
        &output.head
    };
    let tail = &source_tail[source_tail.len().saturating_sub(limit - half)..];
    let omitted = output.total_bytes - (head.len() + tail.len()) as u64;
    let mut text = String::from_utf8_lossy(head).into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&omission_note(omitted, output.log_path.as_deref()));
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(tail));
    text
}

/// Text content: cleaned, tabs protected from quick-junit.
pub(super) fn xml_text(text: &str) -> String {
    clean_text(&text.replace(TAB_PLACEHOLDER, "")).replace('\t', &TAB_PLACEHOLDER.to_string())
}

/// Attribute values: cleaned and on one line (XML parsers turn newlines in
/// attributes into spaces anyway).
pub(super) fn xml_attribute(text: &str) -> String {
    clean_text(text)
        .split(['\n', '\t'])
        .filter(|part| !part.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn timestamp(time: SystemTime) -> DateTime<FixedOffset> {
    DateTime::<Utc>::from(time).fixed_offset()
}

#[cfg(test)]
#[path = "junit_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "junit_strict_tests.rs"]
mod strict_tests;
