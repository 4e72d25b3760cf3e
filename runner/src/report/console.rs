//! The console: what a person watching the run sees.
//!
//! * **Live** (a terminal, not CI): one spinner line per running job with
//!   its current step and last output line; finished steps scroll above.
//! * **Plain** (a pipe, a file, `CI=true`): one line per event,
//!   `[job] step ... ok (1.2s)`, safe to interleave across parallel jobs.
//! * **GitLab** (`GITLAB_CI` set, plain): each job's step lines are held
//!   back and printed when the job ends, inside a collapsible section
//!   (collapsed when the job passed).
//!
//! At the end: every failing step's output tail under a header, then the
//! summary line `N passed, N failed …` that CI log parsers look for.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{clean_text, last_lines, OutputStream, RunObserver};
use crate::pipeline::{format_duration, ImageRef};
use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::results::{
    CaseKind, ImportedResult, JobOutcome, JobResult, Output, RunResults, StepResult, StepStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleMode {
    Live,
    Plain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleOptions {
    pub mode: ConsoleMode,
    /// Wrap each job's lines in a GitLab collapsible section.
    pub gitlab_sections: bool,
    /// ANSI colours for ok / FAILED (never on the summary line).
    pub color: bool,
    /// Lines of each failing step's stdout and stderr shown at the end.
    pub failure_tail_lines: usize,
}

impl ConsoleOptions {
    /// Options for this process: live on a terminal unless `CI` is set or
    /// `TERM=dumb`; GitLab sections when `GITLAB_CI` is set; colour on a
    /// terminal or in GitLab, unless `NO_COLOR` is set.
    pub fn detect() -> ConsoleOptions {
        ConsoleOptions::from_env(std::io::stdout().is_terminal(), |name| {
            std::env::var(name).ok()
        })
    }

    /// [`ConsoleOptions::detect`] with the terminal test and the
    /// environment passed in.
    pub fn from_env(stdout_is_tty: bool, env: impl Fn(&str) -> Option<String>) -> ConsoleOptions {
        let set = |name: &str| {
            env(name).is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        };
        let gitlab = set("GITLAB_CI");
        let live = stdout_is_tty && !set("CI") && !gitlab && env("TERM").as_deref() != Some("dumb");
        ConsoleOptions {
            mode: if live {
                ConsoleMode::Live
            } else {
                ConsoleMode::Plain
            },
            gitlab_sections: gitlab,
            color: (stdout_is_tty || gitlab) && env("NO_COLOR").is_none(),
            failure_tail_lines: 20,
        }
    }
}

/// Per-job state while the job runs.
struct JobState {
    started: SystemTime,
    bar: Option<ProgressBar>,
    steps: usize,
    /// GitLab mode: lines held back until the job's section is printed.
    held: Vec<String>,
    /// Live mode: what the spinner says besides the last output line.
    activity: String,
}

/// Prints progress and the final report. Shared by the scheduler's
/// threads (`Send + Sync`); every method takes `&self`.
pub struct ConsoleReporter {
    options: ConsoleOptions,
    out: Mutex<Box<dyn Write + Send>>,
    multi: Option<MultiProgress>,
    jobs: Mutex<HashMap<String, JobState>>,
}

impl ConsoleReporter {
    /// Writes lines to `out`. In live mode the spinners draw on stdout.
    pub fn new(options: ConsoleOptions, out: Box<dyn Write + Send>) -> ConsoleReporter {
        let target = ProgressDrawTarget::stdout();
        ConsoleReporter::with_draw_target(options, out, target)
    }

    /// To stdout, with [`ConsoleOptions::detect`]ed options.
    pub fn stdout() -> ConsoleReporter {
        ConsoleReporter::new(ConsoleOptions::detect(), Box::new(std::io::stdout()))
    }

    /// Like [`ConsoleReporter::new`], with the spinners drawn on `target`.
    pub fn with_draw_target(
        options: ConsoleOptions,
        out: Box<dyn Write + Send>,
        target: ProgressDrawTarget,
    ) -> ConsoleReporter {
        let multi =
            (options.mode == ConsoleMode::Live).then(|| MultiProgress::with_draw_target(target));
        ConsoleReporter {
            options,
            out: Mutex::new(out),
            multi,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Writes lines above the spinners (hiding them meanwhile).
    fn emit(&self, lines: &[String]) {
        let write = || {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            for line in lines {
                // A closed stdout must not take the run down.
                let _ = writeln!(out, "{line}");
            }
            let _ = out.flush();
        };
        match &self.multi {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }

    /// Emits a job's line now, or holds it for the job's GitLab section.
    fn job_line(&self, job: &str, line: String) {
        if self.options.gitlab_sections {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = jobs.get_mut(job) {
                state.held.push(line);
                return;
            }
        }
        self.emit(&[line]);
    }

    fn paint(&self, text: &str, ansi: &str) -> String {
        if self.options.color {
            format!("\x1b[{ansi}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn update_bar(&self, job: &str, detail: Option<&str>) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(JobState {
            bar: Some(bar),
            activity,
            ..
        }) = jobs.get(job)
        {
            match detail {
                Some(detail) => bar.set_message(format!("{activity}  {}", self.paint(detail, "2"))),
                None => bar.set_message(activity.clone()),
            }
        }
    }

    fn set_activity(&self, job: &str, activity: String) {
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = jobs.get_mut(job) {
                state.activity = activity;
            }
        }
        self.update_bar(job, None);
    }

    fn step_line(&self, job: &str, result: &StepResult) -> String {
        let took = format_duration(result.duration);
        let verdict = match &result.status {
            StepStatus::Passed => format!("{} ({took})", self.paint("ok", "32")),
            StepStatus::Failed { .. } => format!(
                "{} ({}, {took})",
                self.paint("FAILED", "1;31"),
                result.status.describe()
            ),
            StepStatus::TimedOut { limit, .. } => format!(
                "{} (after {}, {})",
                self.paint("TIMED OUT", "1;31"),
                format_duration(*limit),
                result.status.timeout_cause().unwrap_or_default()
            ),
            StepStatus::Skipped { reason } => format!("{} ({reason})", self.paint("skipped", "33")),
            StepStatus::Error { message } => format!("{} ({message})", self.paint("ERROR", "1;31")),
        };
        format!("[{job}] {} ... {verdict}", one_line(&result.name))
    }

    fn job_line_for(&self, result: &JobResult) -> String {
        let took = format_duration(result.duration);
        let name = &result.name;
        let allowed = if result.allow_failure {
            " (allowed to fail)"
        } else {
            ""
        };
        match &result.outcome {
            _ if !result.failed() => {
                let boot = result
                    .boot
                    .map(|b| format!(", boot {}", format_duration(b)))
                    .unwrap_or_default();
                format!("[{name}] {} in {took}{boot}", self.paint("passed", "32"))
            }
            JobOutcome::BootError { message, .. } => format!(
                "[{name}] {}{allowed}: {}",
                self.paint("VM FAILED TO BOOT", "1;31"),
                one_line(message)
            ),
            JobOutcome::Error { message } => format!(
                "[{name}] {}{allowed}: {}",
                self.paint("ERROR", "1;31"),
                one_line(message)
            ),
            JobOutcome::Cancelled { reason } => {
                format!(
                    "[{name}] {}: {}",
                    self.paint("cancelled", "33"),
                    one_line(reason)
                )
            }
            _ => format!(
                "[{name}] {}{allowed} in {took}",
                self.paint("FAILED", "1;31")
            ),
        }
    }

    /// The end-of-run block for one job: each failing step's output tail,
    /// or the job-level problem.
    fn failure_report(&self, job: &JobResult) -> Vec<String> {
        let mut lines = Vec::new();
        let allowed = if job.allow_failure {
            " (allowed to fail)"
        } else {
            ""
        };
        let n = self.options.failure_tail_lines;
        for step in &job.steps {
            if !matches!(
                step.status,
                StepStatus::Failed { .. } | StepStatus::TimedOut { .. } | StepStatus::Error { .. }
            ) {
                continue;
            }
            lines.push(String::new());
            lines.push(self.paint(
                &format!(
                    "==== {} › {}: {}{allowed} ====",
                    job.name,
                    one_line(&step.name),
                    step.status.describe()
                ),
                "1;31",
            ));
            tail_block(&mut lines, "stdout", &step.stdout, n);
            tail_block(&mut lines, "stderr", &step.stderr, n);
            if step.stdout.is_empty() && step.stderr.is_empty() {
                lines.push("(no output)".to_string());
            }
            if let Some(log) = &job.log_path {
                lines.push(format!("full log: {}", log.display()));
            }
        }
        if let Some(case) = job.job_case() {
            if case.kind != CaseKind::Skipped {
                lines.push(String::new());
                lines.push(self.paint(
                    &format!(
                        "==== {}: {}{allowed} ====",
                        job.name,
                        one_line(&case.message)
                    ),
                    "1;31",
                ));
                if !case.detail.is_empty() {
                    lines.push(format!(
                        "--- serial console, {} ---",
                        last_lines(case.detail.len())
                    ));
                    lines.extend(case.detail.iter().map(|l| clean_text(l)));
                }
            }
        }
        lines
    }

    /// The end-of-run block for a job's missing or refused artifacts, shown
    /// whether or not the job passed.
    fn artifact_report(&self, job: &JobResult) -> Vec<String> {
        if job.artifact_notes.is_empty() {
            return Vec::new();
        }
        let n = job.artifact_notes.len();
        let problems = if n == 1 { "problem" } else { "problems" };
        let mut lines = vec![
            String::new(),
            self.paint(
                &format!("==== {}: {n} artifact {problems} ====", job.name),
                "33",
            ),
        ];
        lines.extend(job.artifact_notes.iter().map(|note| one_line(note)));
        lines
    }
}

impl ConsoleReporter {
    /// The end-of-run block for the guest's test reports: each failing
    /// testcase on one line (the JUnit file has the whole story), then the
    /// warnings about reports that were missing or cut.
    fn test_report_block(&self, job: &JobResult) -> Vec<String> {
        let reports = &job.test_reports;
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

fn tail_block(lines: &mut Vec<String>, label: &str, output: &Output, n: usize) {
    let tail = output.last_lines(n);
    if tail.is_empty() {
        return;
    }
    let more = if output.truncated || output.text().lines().count() > tail.len() {
        last_lines(tail.len())
    } else {
        "all".to_string()
    };
    lines.push(format!("--- {label} ({more}) ---"));
    lines.extend(tail.iter().map(|l| clean_text(l)));
}

fn one_line(text: &str) -> String {
    clean_text(text).lines().collect::<Vec<_>>().join(" ")
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn describe_machine(job: &PlannedJob) -> String {
    let rootfs = match &job.image.rootfs {
        ImageRef::Named(name) => name.clone(),
        ImageRef::Path(path) => path.display().to_string(),
    };
    format!("{rootfs}, {} vCPU, {}M", job.vcpus, job.memory_mib)
}

impl RunObserver for ConsoleReporter {
    fn on_run_started(&self, plan: &Plan) {
        let n = plan.jobs.len();
        let jobs = if n == 1 { "job" } else { "jobs" };
        self.emit(&[format!(
            "runner: {} ({}): {n} {jobs}",
            plan.pipeline_name,
            plan.pipeline_path.display()
        )]);
    }

    fn on_job_started(&self, job: &PlannedJob) {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            let style =
                ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(job.name.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let state = JobState {
            started: SystemTime::now(),
            bar,
            steps: job.steps.len(),
            held: Vec::new(),
            activity: "starting VM".to_string(),
        };
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.name.clone(), state);
        self.update_bar(&job.name, None);
        if self.multi.is_none() {
            // Printed at once even in GitLab mode: it shows the run is alive.
            self.emit(&[format!(
                "[{}] started ({})",
                job.name,
                describe_machine(job)
            )]);
        }
    }

    fn on_job_progress(&self, job: &PlannedJob, activity: &str) {
        self.set_activity(&job.name, activity.to_string());
    }

    fn on_step_started(&self, job: &PlannedJob, step: &PlannedStep) {
        let total = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.name)
            .map_or(job.steps.len(), |s| s.steps);
        let activity = format!("step {}/{total}: {}", step.index + 1, one_line(&step.name));
        self.set_activity(&job.name, activity);
    }

    fn on_step_output(
        &self,
        job: &PlannedJob,
        _step: &PlannedStep,
        _s: OutputStream,
        chunk: &[u8],
    ) {
        if self.multi.is_none() {
            return;
        }
        let text = String::from_utf8_lossy(chunk);
        if let Some(last) = text
            .lines()
            .rev()
            .map(clean_text)
            .find(|l| !l.trim().is_empty())
        {
            let last: String = last.trim().chars().take(120).collect();
            self.update_bar(&job.name, Some(&last));
        }
    }

    fn on_step_finished(&self, job: &PlannedJob, _step: &PlannedStep, result: &StepResult) {
        let line = self.step_line(&job.name, result);
        self.job_line(&job.name, line);
    }

    fn on_job_finished(&self, job: &PlannedJob, result: &JobResult) {
        let state = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.name);
        let header = self.job_line_for(result);
        let Some(state) = state else {
            self.emit(&[header]);
            return;
        };
        if let Some(bar) = &state.bar {
            bar.finish_and_clear();
            if let Some(multi) = &self.multi {
                multi.remove(bar);
            }
        }
        if !self.options.gitlab_sections {
            self.emit(&[header]);
            return;
        }
        // Section names allow letters, digits, `_`, `.` and `-`.
        let id = format!("runner_job_{}", job.slug);
        let collapsed = if result.failed() {
            ""
        } else {
            "[collapsed=true]"
        };
        let mut lines = vec![format!(
            "\x1b[0Ksection_start:{}:{id}{collapsed}\r\x1b[0K{header}",
            unix_seconds(state.started)
        )];
        lines.extend(state.held.into_iter().map(|l| format!("  {l}")));
        lines.push(format!(
            "\x1b[0Ksection_end:{}:{id}\r\x1b[0K",
            unix_seconds(SystemTime::now())
        ));
        self.emit(&lines);
    }

    fn finish(&self, results: &RunResults) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
        let mut lines = Vec::new();
        for job in &results.jobs {
            lines.extend(self.failure_report(job));
            lines.extend(self.artifact_report(job));
            lines.extend(self.test_report_block(job));
        }
        lines.push(String::new());
        // No colour: CI parsers match this line as plain text.
        lines.push(results.summary_line());
        self.emit(&lines);
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
pub(super) mod tests;
