//! What a run produced: the scheduler fills these in, the reporters read them.
//!
//! The unit of counting is the *case*, as in JUnit: each step is a case,
//! so is each of the job's services (see [`ServiceResult::kind`]), plus
//! one synthetic case per job for a problem that belongs to no step or
//! service (the VM did not boot, the agent was lost, the job was cancelled
//! before any step). [`JobResult::cases`] lists them; the console summary
//! and the JUnit file both count from it, so they always agree.

mod capture;
mod egress;
mod imported;
mod metering;
mod timeline;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use agent_protocol::ExitStatus;
pub use capture::{omission_note, JobLog, Output, OutputCapture, DEFAULT_OUTPUT_LIMIT};
pub use egress::NetworkUse;
pub use imported::{ImportedCase, ImportedResult, ImportedTests, Problem};
pub use metering::{DiskUse, MemoryUse, Metering, WARN_AT_PERCENT};
pub use timeline::{Phase, PhaseKind};

use crate::pipeline::format_duration;
use crate::plan::PlannedJob;

/// Everything one `runner test` produced.
#[derive(Clone, Debug)]
pub struct RunResults {
    pub pipeline_name: String,
    pub pipeline_path: PathBuf,
    pub started: SystemTime,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
    /// In plan order.
    pub jobs: Vec<JobResult>,
}

#[derive(Clone, Debug)]
pub struct JobResult {
    /// Display name, with matrix values.
    pub name: String,
    /// JUnit classname: the display name as well.
    pub classname: String,
    pub allow_failure: bool,
    pub started: SystemTime,
    /// From VM start to VM teardown.
    pub duration: Duration,
    /// Time until the agent answered, when the VM booted.
    pub boot: Option<Duration>,
    pub outcome: JobOutcome,
    /// One per planned step, in order, including skipped ones.
    pub steps: Vec<StepResult>,
    /// The job's full log (all steps' stdout and stderr, interleaved).
    pub log_path: Option<PathBuf>,
    /// Host paths of the artifacts copied out.
    pub artifacts: Vec<PathBuf>,
    /// Artifacts that are missing or were refused, one line each
    /// (`artifact refused: out/x: device nodes are not copied out`).
    pub artifact_notes: Vec<String>,
    /// What became of each `cache:` volume (restored, committed, or why
    /// not); informational unless a line starts with `warning:`.
    pub cache_notes: Vec<String>,
    /// Testcases from the guest's test reports, and warnings about them.
    pub imported: ImportedTests,
    /// Which attempt this is (`retry:` on the job; each in a fresh VM).
    pub attempt: Attempt,
    /// Earlier attempts that failed, oldest first; empty without retries.
    pub earlier_attempts: Vec<JobResult>,
    /// Where the VM's time went, in order; empty when no VM was started.
    pub timeline: Vec<Phase>,
    /// The job's services (`services:`), in file order; empty without.
    pub services: Vec<ServiceResult>,
    /// What its VM used.
    pub metering: Metering,
}

/// What became of one of a job's services.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceResult {
    pub name: String,
    /// When its `ready` first passed, on the job's clock; `None` if it
    /// never did.
    pub ready_at: Option<Duration>,
    /// Why it failed its job, on one line; `None` if it did not.
    pub failure: Option<String>,
    /// Its log: `run`'s and `ready`'s output, with the runner's notes.
    pub log_path: PathBuf,
    /// Its VM's boot, then its wait for `ready`, on the job's clock.
    pub timeline: Vec<Phase>,
}

/// Attempt `number` of at most `of` (1 + `retry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub of: u32,
}

impl Attempt {
    /// The first of `1 + retry` attempts.
    pub fn first(retry: u32) -> Attempt {
        Attempt {
            number: 1,
            of: retry.saturating_add(1),
        }
    }

    pub fn next(self) -> Attempt {
        Attempt {
            number: self.number + 1,
            of: self.of,
        }
    }

    /// Whether another attempt may follow this one.
    pub fn can_retry(self) -> bool {
        self.number < self.of
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {}/{}", self.number, self.of)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    Passed,
    /// A step failed, timed out or could not run.
    Failed,
    /// The VM did not come up; `serial_tail` holds its last console lines.
    BootError {
        message: String,
        serial_tail: Vec<String>,
    },
    /// The runner itself failed after boot (agent lost, file copy failed).
    Error {
        message: String,
    },
    /// Interrupted (Ctrl-C) or never started.
    Cancelled {
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct StepResult {
    pub name: String,
    pub status: StepStatus,
    pub duration: Duration,
    pub stdout: Output,
    pub stderr: Output,
    /// Which attempt this is (`retry:` on the step; all in the same VM).
    pub attempt: Attempt,
    /// Earlier attempts that failed, oldest first; empty without retries.
    pub earlier_attempts: Vec<StepResult>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepStatus {
    Passed,
    /// Ran and ended unsuccessfully (non-zero exit, signal, not found).
    Failed {
        exit: ExitStatus,
    },
    /// Killed at its time limit (the step's own, or the job's remaining budget).
    TimedOut {
        /// How long the step was allowed.
        limit: Duration,
        /// Which configured limit that came from.
        by: TimeLimit,
        /// What the agent reported; `None` when the host had to step in.
        exit: Option<ExitStatus>,
        /// The agent did not report the timeout in time, so the host
        /// killed the VM at its own deadline.
        host_deadline: bool,
    },
    /// Not run, e.g. because an earlier step failed.
    Skipped {
        reason: String,
    },
    /// Could not be run or observed (agent lost mid-step).
    Error {
        message: String,
    },
}

/// The configured limit a step ran into; each holds the limit as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeLimit {
    /// The step's own `timeout` (or the job's `step_timeout`).
    Step(Duration),
    /// The job's `timeout`, which covers boot, copies and all steps.
    Job(Duration),
}

impl std::fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeLimit::Step(t) => write!(f, "step timeout {}", format_limit(*t)),
            TimeLimit::Job(t) => write!(f, "job timeout {}", format_limit(*t)),
        }
    }
}

/// A limit as people write it in a pipeline: `10m` rather than `10m00s`.
fn format_limit(limit: Duration) -> String {
    let secs = limit.as_secs();
    match (limit.subsec_millis(), secs) {
        (0, s) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format_duration(limit),
    }
}

/// What the report says when the host, not the agent, ended a step.
pub const HOST_DEADLINE_NOTE: &str = "host deadline: guest did not stop the step, VM killed";

/// How a case counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseKind {
    Passed,
    Failed,
    Error,
    Skipped,
}

/// A case that stands for the job as a whole (see the module comment).
#[derive(Clone, Debug, PartialEq)]
pub struct JobCase {
    /// `(boot)`, `(job)`.
    pub name: &'static str,
    pub kind: CaseKind,
    pub message: String,
    /// Extra lines: the serial console tail for a boot error, the end of
    /// a service's log for a job that failed because of it.
    pub detail: Vec<String>,
    /// What `detail` is, as reports title it: `serial console`, `log`.
    pub detail_title: &'static str,
}

/// Case counts of a run. Failures and errors of `allow_failure` jobs are
/// counted as `allowed_failures` only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub allowed_failures: usize,
}

impl StepStatus {
    pub fn kind(&self) -> CaseKind {
        match self {
            StepStatus::Passed => CaseKind::Passed,
            StepStatus::Failed { .. } | StepStatus::TimedOut { .. } => CaseKind::Failed,
            StepStatus::Skipped { .. } => CaseKind::Skipped,
            StepStatus::Error { .. } => CaseKind::Error,
        }
    }

    /// `ok`, `exit code 1`, `timed out after 30s (step timeout 30s)`,
    /// `skipped: …`.
    pub fn describe(&self) -> String {
        match self {
            StepStatus::Passed => "ok".to_string(),
            StepStatus::Failed { exit } => match &exit.error {
                Some(error) => format!("{} ({error})", exit.describe()),
                None => exit.describe(),
            },
            StepStatus::TimedOut { limit, .. } => {
                format!(
                    "timed out after {} ({})",
                    format_duration(*limit),
                    self.timeout_cause().unwrap_or_default()
                )
            }
            StepStatus::Skipped { reason } => format!("skipped: {reason}"),
            StepStatus::Error { message } => format!("error: {message}"),
        }
    }
}

impl StepStatus {
    /// For a timeout, which limit hit: `step timeout 2s`, `job timeout 10m`,
    /// with the host's note when the guest did not stop the step itself.
    pub fn timeout_cause(&self) -> Option<String> {
        let StepStatus::TimedOut {
            by, host_deadline, ..
        } = self
        else {
            return None;
        };
        Some(match host_deadline {
            false => by.to_string(),
            true => format!("{by}; {HOST_DEADLINE_NOTE}"),
        })
    }
}

impl StepResult {
    /// A step that was not run.
    pub fn skipped(name: impl Into<String>, reason: impl Into<String>) -> StepResult {
        StepResult {
            name: name.into(),
            status: StepStatus::Skipped {
                reason: reason.into(),
            },
            duration: Duration::ZERO,
            stdout: Output::default(),
            stderr: Output::default(),
            attempt: Attempt::first(0),
            earlier_attempts: Vec::new(),
        }
    }

    /// Whether another attempt may help: the step ran and failed or hit
    /// its own limit. Not when the agent was lost or the host killed the
    /// VM: nothing can run in it any more.
    pub fn may_retry(&self) -> bool {
        match self.status {
            StepStatus::Failed { .. } => true,
            StepStatus::TimedOut { host_deadline, .. } => !host_deadline,
            _ => false,
        }
    }
}

/// The first line of the job's error when service `name` failed it: the
/// scheduler writes it, the reports recognise it (the service's own case
/// then carries the error).
pub fn service_error(name: &str, why: &str) -> String {
    format!("service `{name}` {why}")
}

impl ServiceResult {
    /// A service is a case of its job: passed once its `ready` passed, an
    /// error if it failed the job (whenever that was), skipped if the job
    /// ended before it was ready.
    pub fn kind(&self) -> CaseKind {
        match (&self.failure, self.ready_at) {
            (Some(_), _) => CaseKind::Error,
            (None, Some(_)) => CaseKind::Passed,
            (None, None) => CaseKind::Skipped,
        }
    }

    /// `ready after 3.2s`, `failed: …`, `not ready before the job ended`.
    pub fn describe(&self) -> String {
        match (&self.failure, self.ready_at) {
            (Some(failure), _) => format!("failed: {failure}"),
            (None, Some(ready)) => format!("ready after {}", format_duration(ready)),
            (None, None) => "not ready before the job ended".to_string(),
        }
    }

    /// Its log as reports quote it: head and tail, at most `limit` bytes;
    /// a line saying why when it cannot be read.
    pub fn log(&self, limit: usize) -> Output {
        Output::read_file(&self.log_path, limit).unwrap_or_else(|err| {
            let note = format!("[cannot read {}: {err}]\n", self.log_path.display());
            Output::from_bytes(note.as_bytes())
        })
    }
}

impl JobResult {
    /// A result for `job` with its name, classname and `allow_failure`
    /// filled in, no steps yet, and outcome [`JobOutcome::Passed`].
    pub fn for_job(job: &PlannedJob, started: SystemTime) -> JobResult {
        JobResult {
            name: job.name.clone(),
            classname: job.name.clone(),
            allow_failure: job.allow_failure,
            started,
            duration: Duration::ZERO,
            boot: None,
            outcome: JobOutcome::Passed,
            steps: Vec::new(),
            log_path: None,
            artifacts: Vec::new(),
            artifact_notes: Vec::new(),
            cache_notes: Vec::new(),
            imported: ImportedTests::default(),
            attempt: Attempt::first(job.retry),
            earlier_attempts: Vec::new(),
            timeline: Vec::new(),
            services: Vec::new(),
            metering: Metering::default(),
        }
    }

    /// The outcome the steps imply: `Failed` if any failed, timed out or
    /// errored, else `Passed`.
    pub fn outcome_from_steps(steps: &[StepResult]) -> JobOutcome {
        let bad = steps
            .iter()
            .any(|s| matches!(s.status.kind(), CaseKind::Failed | CaseKind::Error));
        if bad {
            JobOutcome::Failed
        } else {
            JobOutcome::Passed
        }
    }

    /// The synthetic case for a job-level problem, if there is one.
    pub fn job_case(&self) -> Option<JobCase> {
        match &self.outcome {
            JobOutcome::Passed | JobOutcome::Failed => None,
            JobOutcome::BootError {
                message,
                serial_tail,
            } => Some(JobCase {
                name: "(boot)",
                kind: CaseKind::Error,
                message: format!("VM failed to boot: {message}"),
                detail: serial_tail.clone(),
                detail_title: "serial console",
            }),
            JobOutcome::Error { message } => {
                // Already reported on the step it happened in, or on the
                // service that failed (its case is an error).
                let on_a_step = self.steps.iter().any(|s| match &s.status {
                    StepStatus::Error { message: m } => m == message,
                    _ => false,
                });
                let on_a_service = self.names_a_failed_service(message);
                // A message's first line says what happened; the lines
                // after it (a failed service's log) are its detail.
                let mut lines = message.lines();
                let first = lines.next().unwrap_or_default().to_string();
                (!on_a_step && !on_a_service).then(|| JobCase {
                    name: "(job)",
                    kind: CaseKind::Error,
                    message: first,
                    detail: lines.map(|l| l.trim_start().to_string()).collect(),
                    detail_title: "log",
                })
            }
            JobOutcome::Cancelled { reason } => self.steps.is_empty().then(|| JobCase {
                name: "(job)",
                kind: CaseKind::Skipped,
                message: format!("cancelled: {reason}"),
                detail: Vec::new(),
                detail_title: "",
            }),
        }
    }

    /// Whether a job error is a failed service's ([`service_error`]).
    fn names_a_failed_service(&self, message: &str) -> bool {
        self.services.iter().any(|service| {
            service
                .failure
                .as_ref()
                .is_some_and(|why| message.starts_with(&service_error(&service.name, why)))
        })
    }

    /// Kinds of all cases of this job: services, steps, the testcases of
    /// the guest's reports, then the job case.
    pub fn cases(&self) -> Vec<CaseKind> {
        let mut kinds: Vec<CaseKind> = self.services.iter().map(ServiceResult::kind).collect();
        kinds.extend(self.steps.iter().map(|s| s.status.kind()));
        kinds.extend(self.imported.cases.iter().map(ImportedCase::kind));
        kinds.extend(self.job_case().map(|case| case.kind));
        kinds
    }

    /// Whether this job failed, ignoring `allow_failure`.
    pub fn failed(&self) -> bool {
        self.outcome != JobOutcome::Passed
            || self
                .cases()
                .iter()
                .any(|k| matches!(k, CaseKind::Failed | CaseKind::Error))
    }

    /// Whether this job makes the run fail.
    pub fn fails_run(&self) -> bool {
        self.failed() && !self.allow_failure
    }
}

impl RunResults {
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for job in &self.jobs {
            for kind in job.cases() {
                match kind {
                    CaseKind::Passed => counts.passed += 1,
                    CaseKind::Skipped => counts.skipped += 1,
                    CaseKind::Failed | CaseKind::Error if job.allow_failure => {
                        counts.allowed_failures += 1
                    }
                    CaseKind::Failed | CaseKind::Error => counts.failed += 1,
                }
            }
        }
        counts
    }

    /// 0 when every job passed (`allow_failure` jobs excepted), else 1.
    /// (2, for an invalid pipeline, is the CLI's business.)
    pub fn exit_code(&self) -> i32 {
        if self.jobs.iter().any(JobResult::fails_run) {
            1
        } else {
            0
        }
    }

    /// `12 passed, 2 failed, 1 skipped, 1 allowed failure in 34.5s`. The
    /// `N passed, N failed` head is what CI log parsers look for; skipped
    /// and allowed failures appear only when there are some.
    pub fn summary_line(&self) -> String {
        let counts = self.counts();
        let mut line = format!("{} passed, {} failed", counts.passed, counts.failed);
        if counts.skipped > 0 {
            line.push_str(&format!(", {} skipped", counts.skipped));
        }
        match counts.allowed_failures {
            0 => {}
            1 => line.push_str(", 1 allowed failure"),
            n => line.push_str(&format!(", {n} allowed failures")),
        }
        line.push_str(&format!(" in {:.1}s", self.wall.as_secs_f64()));
        line
    }
}

#[cfg(test)]
pub(crate) mod tests;
