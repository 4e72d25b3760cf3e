//! The console: what a person watching the run sees.
//!
//! * **Live** (a terminal, not CI): one spinner line per running job with
//!   its current step and last output line; finished steps scroll above.
//! * **Plain** (a pipe, a file, `CI=true`): one line per event,
//!   `[job] step ... ok (1.2s)`, and every line of step output as it
//!   arrives, `[job] text` (see `live_lines`); each line names its job, so
//!   parallel jobs interleave readably.
//! * **GitLab** (`GITLAB_CI` set, plain): the same lines inside one
//!   collapsible section per job; one job's section is live at a time, the
//!   others' lines follow when their turn comes (see `gitlab_sections`).
//!
//! At the end: every failing step's output tail (and failed service's log
//! tail) under a header, a line per service of a job that has any, then
//! the summary line `N passed, N failed …` that CI log parsers look for.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::{format_duration, ImageRef};
use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::report::stream::{OutputStream, Reporter, RunEvent};
use crate::report::text::clean_text;
use crate::results::{CaseKind, JobOutcome, JobResult, RunResults, StepResult, StepStatus};
use gitlab_sections::{Opening, Sections};
use live_lines::{LineSplitter, LiveBudget};

// The end-of-run blocks (failing steps and services, artifacts, caches,
// services, the guest's own test reports) and lending the terminal to a
// debug shell.
mod failures;
mod gitlab_sections;
mod imported;
mod lending;
mod live_lines;

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
    /// End with each networked job's `allow` list that would have sufficed
    /// (`--suggest-allow`).
    pub suggest_allow: bool,
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
            suggest_allow: false,
        }
    }
}

/// Per-job state while the job runs.
struct JobState {
    bar: Option<ProgressBar>,
    steps: usize,
    /// Live mode: what the spinner says besides the last output line.
    activity: String,
    /// Plain mode: step output not yet ended by a newline.
    stdout: LineSplitter,
    stderr: LineSplitter,
    live_budget: LiveBudget,
}

/// Running jobs, and (GitLab) whose section is open.
#[derive(Default)]
struct Jobs {
    states: HashMap<String, JobState>,
    sections: Sections,
    /// How often each job has started: attempts of a retried job.
    starts: HashMap<String, u32>,
}

/// Prints progress and the final report. Shared by the scheduler's
/// threads (`Send + Sync`); every method takes `&self`.
pub struct ConsoleReporter {
    options: ConsoleOptions,
    out: Mutex<Box<dyn Write + Send>>,
    multi: Option<MultiProgress>,
    jobs: Mutex<Jobs>,
    lending: lending::Lending,
}

impl ConsoleReporter {
    /// Writes lines to `out`. In live mode the spinners draw on stdout.
    pub fn new(options: ConsoleOptions, out: Box<dyn Write + Send>) -> ConsoleReporter {
        let target = ProgressDrawTarget::stdout();
        ConsoleReporter::with_draw_target(options, out, target)
    }

    /// To stdout, with [`ConsoleOptions::detect`]ed options, and
    /// `suggest_allow` as asked.
    pub fn stdout(suggest_allow: bool) -> ConsoleReporter {
        let options = ConsoleOptions {
            suggest_allow,
            ..ConsoleOptions::detect()
        };
        ConsoleReporter::new(options, Box::new(std::io::stdout()))
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
            jobs: Mutex::new(Jobs::default()),
            lending: lending::Lending::default(),
        }
    }

    /// Writes lines above the spinners (hiding them meanwhile).
    /// Hides the spinners and holds lines while a debug shell has the
    /// terminal; draws and prints them again when it is back.
    fn lend_terminal(&self, lent: bool) {
        if lent {
            let was_drawing = self.multi.as_ref().is_some_and(|m| !m.is_hidden());
            if let Some(multi) = &self.multi {
                let _ = multi.clear();
                multi.set_draw_target(ProgressDrawTarget::hidden());
            }
            self.lending.begin(was_drawing);
            return;
        }
        let Some((lines, was_drawing)) = self.lending.end() else {
            return;
        };
        if let (Some(multi), true) = (&self.multi, was_drawing) {
            multi.set_draw_target(ProgressDrawTarget::stdout());
        }
        self.emit(&lines);
    }

    fn emit(&self, lines: &[String]) {
        if self.lending.hold(lines) {
            return;
        }
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

    /// Emits a job's lines now, or holds them for the job's GitLab
    /// section. `verdict` lines (step results) are never dropped; output
    /// lines may be, past the held limit.
    fn job_lines(&self, job: &str, lines: Vec<String>, verdict: bool) {
        if !self.options.gitlab_sections {
            return self.emit(&lines);
        }
        // The lock is held while printing so that sections stay whole.
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = Vec::new();
        for line in lines {
            now.extend(jobs.sections.line(job, line, verdict));
        }
        self.emit(&now);
    }

    /// Plain mode: `[job] line` for each line the chunk completes.
    fn output_lines(&self, job: &str, stream: OutputStream, chunk: Option<&[u8]>) {
        let lines = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let Some(state) = jobs.states.get_mut(job) else {
                return;
            };
            if state.live_budget.exhausted() {
                return;
            }
            let splitter = match stream {
                OutputStream::Stdout => &mut state.stdout,
                OutputStream::Stderr => &mut state.stderr,
            };
            let lines = match chunk {
                Some(chunk) => splitter.push(chunk),
                None => splitter.finish().into_iter().collect(),
            };
            state.live_budget.admit(lines)
        };
        let prefixed = lines.into_iter().map(|l| format!("[{job}] {l}")).collect();
        self.job_lines(job, prefixed, false);
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
        }) = jobs.states.get(job)
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
            if let Some(state) = jobs.states.get_mut(job) {
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
        format!(
            "[{job}] {} ... {verdict}{}",
            one_line(&result.name),
            attempt_note(result.attempt, result.status == StepStatus::Passed, "")
        )
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
                let passed = match result.attempt.number {
                    1 => self.paint("passed", "32"),
                    _ => self.paint(&format!("passed on {}", result.attempt), "32"),
                };
                format!("[{name}] {passed} in {took}{boot}{}", metering(result))
            }
            JobOutcome::Failed | JobOutcome::BootError { .. } | JobOutcome::Error { .. }
                if result.attempt.can_retry() =>
            {
                format!(
                    "[{name}] {}: {}{}",
                    self.paint("FAILED", "1;31"),
                    one_line(&job_problem(result)),
                    attempt_note(result.attempt, false, " in a fresh VM")
                )
            }
            JobOutcome::BootError { message, .. } => format!(
                "[{name}] {}{allowed}: {}",
                self.paint("VM FAILED TO BOOT", "1;31"),
                one_line(message)
            ),
            JobOutcome::Error { message } => format!(
                "[{name}] {}{allowed}: {}",
                self.paint("ERROR", "1;31"),
                first_line(message)
            ),
            JobOutcome::Cancelled { reason } => {
                format!(
                    "[{name}] {}: {}",
                    self.paint("cancelled", "33"),
                    one_line(reason)
                )
            }
            _ => format!(
                "[{name}] {}{allowed} in {took}{}",
                self.paint("FAILED", "1;31"),
                metering(result)
            ),
        }
    }
}

/// `, cpu 3.1s, memory 310/497 MiB`: what the job's VM used, if measured.
fn metering(result: &JobResult) -> String {
    let summary = result.metering.summary();
    match summary.is_empty() {
        true => summary,
        false => format!(", {summary}"),
    }
}

/// `, passed on attempt 2/3` / `, will retry (attempt 1/3)`; nothing
/// without retries or for a first-time pass.
fn attempt_note(attempt: crate::results::Attempt, passed: bool, how: &str) -> String {
    match (passed, attempt.can_retry()) {
        _ if attempt.of == 1 => String::new(),
        (true, _) if attempt.number == 1 => String::new(),
        (true, _) => format!(", passed on {attempt}"),
        (false, true) => format!(", will retry{how} ({attempt})"),
        (false, false) => format!(", {attempt}"),
    }
}

/// What went wrong with a job, in a few words.
fn job_problem(result: &JobResult) -> String {
    match &result.outcome {
        JobOutcome::BootError { message, .. } => format!("VM failed to boot: {message}"),
        JobOutcome::Error { message } => first_line(message),
        _ => result
            .steps
            .iter()
            .find(|s| matches!(s.status.kind(), CaseKind::Failed | CaseKind::Error))
            .map(|s| format!("`{}` {}", s.name, s.status.describe()))
            .unwrap_or_else(|| "failed".to_string()),
    }
}

/// What a multi-line message says first (its detail is shown below it).
fn first_line(text: &str) -> String {
    clean_text(text)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn one_line(text: &str) -> String {
    clean_text(text).lines().collect::<Vec<_>>().join(" ")
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A GitLab section id (letters, digits, `_`, `.`, `-`), one per attempt.
fn section_id(job: &PlannedJob, attempt: u32) -> String {
    match attempt {
        1 => format!("runner_job_{}", job.slug),
        n => format!("runner_job_{}_attempt_{n}", job.slug),
    }
}

fn describe_machine(job: &PlannedJob) -> String {
    let rootfs = match &job.image.rootfs {
        ImageRef::Named(name) => name.clone(),
        ImageRef::Path(path) => path.display().to_string(),
        ImageRef::Spec(spec) => spec.summary(),
    };
    format!("{rootfs}, {} vCPU, {}M", job.vcpus, job.memory_mib)
}

impl ConsoleReporter {
    fn run_started(&self, plan: &Plan) {
        let n = plan.jobs.len();
        let jobs = if n == 1 { "job" } else { "jobs" };
        self.emit(&[format!(
            "runner: {} ({}): {n} {jobs}",
            plan.pipeline_name,
            plan.pipeline_path.display()
        )]);
    }

    fn job_started(&self, job: &PlannedJob) {
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
            bar,
            steps: job.steps.len(),
            activity: "starting VM".to_string(),
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            live_budget: LiveBudget::default(),
        };
        let started = format!("[{}] started ({})", job.name, describe_machine(job));
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.states.insert(job.name.clone(), state);
        let starts = jobs.starts.entry(job.name.clone()).or_insert(0);
        *starts += 1;
        let attempt = *starts;
        if self.options.gitlab_sections {
            let opening = Opening {
                id: section_id(job, attempt),
                unix_time: unix_seconds(SystemTime::now()),
                header: started,
            };
            let now = jobs.sections.start(&job.name, opening);
            self.emit(&now);
        } else if self.multi.is_none() {
            self.emit(&[started]);
        }
        drop(jobs);
        self.update_bar(&job.name, None);
    }

    fn job_progress(&self, job: &PlannedJob, activity: &str) {
        self.set_activity(&job.name, activity.to_string());
    }

    fn step_started(&self, job: &PlannedJob, step: &PlannedStep) {
        let total = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .states
            .get(&job.name)
            .map_or(job.steps.len(), |s| s.steps);
        let activity = format!("step {}/{total}: {}", step.index + 1, one_line(&step.name));
        self.set_activity(&job.name, activity);
    }

    fn step_output(
        &self,
        job: &PlannedJob,
        _step: &PlannedStep,
        stream: OutputStream,
        chunk: &[u8],
    ) {
        if self.multi.is_none() {
            return self.output_lines(&job.name, stream, Some(chunk));
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

    fn step_finished(&self, job: &PlannedJob, _step: &PlannedStep, result: &StepResult) {
        if self.multi.is_none() {
            // Output that did not end with a newline.
            self.output_lines(&job.name, OutputStream::Stdout, None);
            self.output_lines(&job.name, OutputStream::Stderr, None);
        }
        let line = self.step_line(&job.name, result);
        self.job_lines(&job.name, vec![line], true);
    }

    fn job_finished(&self, job: &PlannedJob, result: &JobResult) {
        let header = self.job_line_for(result);
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(JobState { bar: Some(bar), .. }) = jobs.states.remove(&job.name) {
            bar.finish_and_clear();
            if let Some(multi) = &self.multi {
                multi.remove(&bar);
            }
        }
        if !self.options.gitlab_sections {
            drop(jobs);
            return self.emit(&[header]);
        }
        let now = unix_seconds(SystemTime::now());
        let lines = jobs
            .sections
            .finish(&job.name, result.failed(), now, header);
        self.emit(&lines);
    }

    fn terminal_lent(&self, lent: bool) {
        self.lend_terminal(lent);
    }

    fn run_finished(&self, results: &RunResults) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
        let mut lines = Vec::new();
        for job in &results.jobs {
            lines.extend(self.failure_report(job));
            lines.extend(self.artifact_report(job));
            lines.extend(self.cache_report(job));
            lines.extend(self.service_report(job));
            lines.extend(self.metering_report(job));
            lines.extend(self.network_report(job));
            lines.extend(self.test_report_block(job));
        }
        if self.options.suggest_allow {
            lines.extend(suggested_allow(results));
        }
        lines.push(String::new());
        // No colour: CI parsers match this line as plain text.
        lines.push(results.summary_line());
        self.emit(&lines);
    }
}

/// `--suggest-allow`: for each job with a network, the `allow` list that
/// would have let everything it touched through, ready to paste.
fn suggested_allow(results: &RunResults) -> Vec<String> {
    let mut lines = vec![
        String::new(),
        "==== allow lists that would have sufficed (--suggest-allow) ====".to_string(),
    ];
    let mut any = false;
    for job in &results.jobs {
        let Some(network) = &job.metering.network else {
            continue;
        };
        any = true;
        let entries: Vec<String> = (network.suggested_allow().iter())
            .map(|e| format!("{e:?}"))
            .collect();
        lines.push(format!("{}:", job.name));
        lines.push("  network:".to_string());
        if entries.is_empty() {
            lines.push("    # it reached nothing: `network: false` would do".to_string());
        } else {
            lines.push(format!("    allow: [{}]", entries.join(", ")));
        }
    }
    if !any {
        lines.push("no job had a network".to_string());
    }
    lines
}

impl Reporter for ConsoleReporter {
    fn report(&self, event: &RunEvent<'_>) {
        match event {
            RunEvent::RunStarted { plan } => self.run_started(plan),
            RunEvent::JobStarted { job } => self.job_started(job),
            RunEvent::JobProgress { job, activity } => self.job_progress(job, activity),
            RunEvent::StepStarted { job, step } => self.step_started(job, step),
            RunEvent::StepOutput {
                job,
                step,
                stream,
                chunk,
            } => self.step_output(job, step, *stream, chunk),
            RunEvent::StepFinished { job, step, result } => self.step_finished(job, step, result),
            RunEvent::JobFinished { job, result } => self.job_finished(job, result),
            RunEvent::TerminalLent { lent } => self.terminal_lent(*lent),
            RunEvent::RunFinished { results } => self.run_finished(results),
        }
    }
}

#[cfg(test)]
mod attempt_tests;
#[cfg(test)]
pub(super) mod tests;
