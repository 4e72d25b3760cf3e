//! The report's data: what the page's script draws, built from the run's
//! results. Times are seconds (rounded to milliseconds) from the run's
//! start; statuses are the words the page's filters show.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::excerpt::{Budget, MAX_EACH, TOTAL_BUDGET};
use crate::report::text::clean_text;
use crate::results::{
    CaseKind, ImportedCase, ImportedResult, JobOutcome, JobResult, NetworkUse, PhaseKind,
    RunResults, ServiceResult, StepResult, StepStatus,
};

/// Failing testcases of one job's reports listed one by one; the rest are
/// counted (the JUnit file has them all).
const MAX_REPORT_FAILURES_PER_JOB: usize = 50;
/// Failures listed in all; past it the page says how many more there are.
const MAX_FAILURES: usize = 2000;

#[derive(Serialize)]
pub struct Report {
    pub pipeline: String,
    pub path: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub wall: f64,
    pub summary: String,
    pub jobs: Vec<Job>,
    pub failures: Vec<Failure>,
    /// Why some failures or outputs are missing, if any are.
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Job {
    pub name: String,
    /// `passed`, `flaky`, `failed`, `error`, `allowed failure`, `skipped`.
    pub status: &'static str,
    /// What happened, in a line: `exit code 2 in make test`.
    pub summary: String,
    pub duration: f64,
    /// One per VM (attempt), oldest first.
    pub vms: Vec<Vm>,
    pub steps: Vec<Step>,
    /// Testcases of the guest's reports: passed, failed (or errors), skipped.
    pub tests: [usize; 3],
    /// Artifact and report warnings, earlier attempts.
    pub notes: Vec<String>,
    pub log: Option<String>,
    /// What its (last) VM used, for the detail's bars.
    pub usage: Usage,
}

/// A job VM's use ([`crate::results::Metering`]), as the page draws it.
#[derive(Serialize)]
pub struct Usage {
    pub cpu: Option<f64>,
    pub memory_peak: Option<u64>,
    pub memory_total: Option<u64>,
    /// The root file system's use and size, and what the steps wrote.
    pub disk_used: Option<u64>,
    pub disk_total: Option<u64>,
    pub disk_written: Option<u64>,
    /// Lines for a job close to a limit.
    pub warnings: Vec<String>,
    /// What its NIC touched; `None` without a network.
    pub network: Option<NetworkTable>,
}

/// A job's network, as the detail's table draws it: every destination
/// (allowed or denied) and every refused name.
#[derive(Serialize)]
pub struct NetworkTable {
    /// `net 1.2 KiB out, 34.0 KiB in`.
    pub summary: String,
    pub audit: bool,
    pub rows: Vec<NetworkRow>,
    /// Destinations past the report's cap, counted only.
    pub more: u64,
    pub refused_names: Vec<String>,
}

#[derive(Serialize)]
pub struct NetworkRow {
    pub allowed: bool,
    pub protocol: String,
    pub name: String,
    pub address: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

#[derive(Serialize)]
pub struct Vm {
    /// `attempt 1/3`, or empty without retries.
    pub attempt: String,
    pub start: f64,
    pub duration: f64,
    /// This attempt's own status, as [`Job::status`].
    pub status: &'static str,
    pub phases: Vec<PhaseBar>,
    /// This attempt's services, each a lane under the VM's.
    pub services: Vec<ServiceLane>,
}

/// `[kind, label, start, duration, status]`, start from the run's start.
pub type PhaseBar = (&'static str, String, f64, f64, &'static str);

#[derive(Serialize)]
pub struct ServiceLane {
    pub name: String,
    /// `passed`, `error`, `skipped`.
    pub status: &'static str,
    /// `ready after 3.2s`, `failed: …`.
    pub detail: String,
    /// Its VM's boot, then its wait for `ready`.
    pub phases: Vec<PhaseBar>,
}

#[derive(Serialize)]
pub struct Step {
    pub name: String,
    /// `passed`, `failed`, `timed out`, `skipped`, `error`.
    pub status: &'static str,
    pub detail: String,
    pub duration: f64,
    /// Attempts it took, when more than one.
    pub attempts: u32,
}

#[derive(Serialize)]
pub struct Failure {
    /// Index into [`Report::jobs`].
    pub job: usize,
    /// `build › make test`, `build › (boot)`, `build › tests::it_works`.
    pub title: String,
    /// `attempt 1/2` for an earlier attempt, else empty.
    pub attempt: String,
    pub message: String,
    /// `[label, text]`: stdout, stderr, the serial console, a trace.
    pub outputs: Vec<(String, String)>,
}

/// Seconds, rounded to milliseconds (shorter JSON).
fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn since(start: SystemTime, run_start: SystemTime) -> Duration {
    start.duration_since(run_start).unwrap_or_default()
}

pub fn build(results: &RunResults) -> Report {
    let mut budget = Budget::new(TOTAL_BUDGET, count_texts(results));
    let mut failures = Vec::new();
    let mut left_out = 0;
    let mut jobs = Vec::with_capacity(results.jobs.len());
    for (index, result) in results.jobs.iter().enumerate() {
        let attempts = all_attempts(result);
        for attempt in &attempts {
            let label = match attempt.attempt.of {
                1 => String::new(),
                _ => attempt.attempt.to_string(),
            };
            for failure in attempt_failures(index, attempt, &label, &mut budget) {
                if failures.len() < MAX_FAILURES {
                    failures.push(failure);
                } else {
                    left_out += 1;
                }
            }
        }
        jobs.push(job(result, &attempts, results.started));
    }
    let mut notes = Vec::new();
    if left_out > 0 {
        notes.push(format!(
            "{left_out} more failures are not listed here (the report lists at most \
             {MAX_FAILURES}); the JUnit file and the job logs have them all"
        ));
    }
    if budget.left_out > 0 {
        notes.push(format!(
            "{} outputs of failures are not shown: the report keeps at most {} MiB of \
             output; the job logs have all of it",
            budget.left_out,
            TOTAL_BUDGET >> 20
        ));
    }
    let started: chrono::DateTime<chrono::Utc> = results.started.into();
    Report {
        pipeline: clean_text(&results.pipeline_name),
        path: clean_text(&results.pipeline_path.display().to_string()),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        wall: secs(results.wall),
        summary: results.summary_line(),
        jobs,
        failures,
        notes,
    }
}

/// Earlier attempts, then the final one.
fn all_attempts(job: &JobResult) -> Vec<&JobResult> {
    job.earlier_attempts.iter().chain([job]).collect()
}

/// How many texts the budget is shared among: each failing step's two
/// streams, failed services' logs, job cases, failing testcases.
fn count_texts(results: &RunResults) -> usize {
    let per_attempt = |job: &JobResult| {
        let services = job.services.iter().filter(|s| is_bad(s.kind())).count();
        let steps: usize = job
            .steps
            .iter()
            .flat_map(|s| s.earlier_attempts.iter().chain([s]))
            .filter(|s| is_bad(s.status.kind()))
            .count();
        let cases = job
            .imported
            .cases
            .iter()
            .filter(|c| is_bad(c.kind()))
            .count()
            .min(MAX_REPORT_FAILURES_PER_JOB);
        2 * steps + services + 3 * cases + usize::from(job.job_case().is_some())
    };
    results
        .jobs
        .iter()
        .flat_map(all_attempts)
        .map(per_attempt)
        .sum()
}

fn is_bad(kind: CaseKind) -> bool {
    matches!(kind, CaseKind::Failed | CaseKind::Error)
}

/// The filter word for a job (or one attempt of it).
pub fn job_status(job: &JobResult) -> &'static str {
    if matches!(job.outcome, JobOutcome::Cancelled { .. }) && job.steps.is_empty() {
        return "skipped";
    }
    if !job.failed() {
        let retried_step = job
            .steps
            .iter()
            .any(|s| s.earlier_attempts.iter().any(|a| is_bad(a.status.kind())));
        return match !job.earlier_attempts.is_empty() || retried_step {
            true => "flaky",
            false
                if job
                    .steps
                    .iter()
                    .all(|s| s.status.kind() == CaseKind::Skipped) =>
            {
                "skipped"
            }
            false => "passed",
        };
    }
    if job.allow_failure {
        return "allowed failure";
    }
    match job.outcome {
        JobOutcome::BootError { .. } | JobOutcome::Error { .. } => "error",
        _ => "failed",
    }
}

fn step_status(step: &StepResult) -> &'static str {
    match step.status {
        StepStatus::Passed => "passed",
        StepStatus::Failed { .. } => "failed",
        StepStatus::TimedOut { .. } => "timed out",
        StepStatus::Skipped { .. } => "skipped",
        StepStatus::Error { .. } => "error",
    }
}

fn job(result: &JobResult, attempts: &[&JobResult], run_start: SystemTime) -> Job {
    let steps = result
        .steps
        .iter()
        .map(|step| Step {
            name: clean_text(&step.name),
            status: step_status(step),
            detail: clean_text(&step.status.describe()),
            duration: secs(step.duration),
            attempts: step.attempt.number,
        })
        .collect();
    let mut tests = [0; 3];
    for case in &result.imported.cases {
        match case.kind() {
            CaseKind::Passed => tests[0] += 1,
            CaseKind::Failed | CaseKind::Error => tests[1] += 1,
            CaseKind::Skipped => tests[2] += 1,
        }
    }
    let mut notes: Vec<String> = result
        .artifact_notes
        .iter()
        .chain(&result.cache_notes)
        .chain(&result.imported.notes)
        .map(|note| clean_text(note))
        .collect();
    if let Some(dir) = result.artifacts.first() {
        notes.push(format!("artifacts in {}", dir.display()));
    }
    Job {
        name: clean_text(&result.name),
        status: job_status(result),
        summary: job_summary(result),
        duration: secs(attempts.iter().map(|a| a.duration).sum()),
        vms: attempts.iter().map(|a| vm(a, run_start)).collect(),
        steps,
        tests,
        notes,
        log: result
            .log_path
            .as_ref()
            .map(|p| clean_text(&p.display().to_string())),
        usage: Usage {
            cpu: result.metering.cpu.map(secs),
            memory_peak: result.metering.memory.map(|m| m.peak_bytes),
            memory_total: result.metering.memory.map(|m| m.total_bytes),
            disk_used: result.metering.disk.map(|d| d.used_bytes),
            disk_total: result.metering.disk.map(|d| d.total_bytes),
            disk_written: result.metering.disk.and_then(|d| d.written_bytes),
            warnings: result.metering.warnings(),
            network: result.metering.network.as_ref().map(network_table),
        },
    }
}

fn network_table(network: &NetworkUse) -> NetworkTable {
    let report = &network.report;
    NetworkTable {
        summary: network.summary(),
        audit: network.audit,
        rows: (report.destinations.iter())
            .map(|d| NetworkRow {
                allowed: d.allowed,
                protocol: clean_text(&d.protocol),
                name: clean_text(&d.names.join(", ")),
                address: format!("{}:{}", d.address, d.port),
                bytes_out: d.bytes_out,
                bytes_in: d.bytes_in,
            })
            .collect(),
        more: report.more_destinations,
        refused_names: report.refused_names.iter().map(|n| clean_text(n)).collect(),
    }
}

/// What the job's row says after its name.
fn job_summary(job: &JobResult) -> String {
    if let Some(case) = job.job_case() {
        return clean_text(&case.message);
    }
    if let Some(service) = job.services.iter().find(|s| is_bad(s.kind())) {
        return clean_text(&format!(
            "service `{}` {}",
            service.name,
            service.describe()
        ));
    }
    if let Some(step) = job.steps.iter().find(|s| is_bad(s.status.kind())) {
        return clean_text(&format!("`{}`: {}", step.name, step.status.describe()));
    }
    let failing = job
        .imported
        .cases
        .iter()
        .filter(|c| is_bad(c.kind()))
        .count();
    match failing {
        0 => format!("{} steps", job.steps.len()),
        n => format!("{n} failing tests in test reports"),
    }
}

fn vm(job: &JobResult, run_start: SystemTime) -> Vm {
    let offset = since(job.started, run_start);
    let phases = job
        .timeline
        .iter()
        .map(|phase| {
            let (label, status) = match phase.kind {
                PhaseKind::Step { index, attempt } => match job.steps.get(index) {
                    Some(step) => {
                        let this = step
                            .earlier_attempts
                            .get(attempt.saturating_sub(1) as usize)
                            .unwrap_or(step);
                        let name = match step.attempt.of {
                            1 => clean_text(&step.name),
                            of => clean_text(&format!("{} (attempt {attempt}/{of})", step.name)),
                        };
                        (name, step_status(this))
                    }
                    None => (format!("step {}", index + 1), "error"),
                },
                PhaseKind::Boot if matches!(job.outcome, JobOutcome::BootError { .. }) => {
                    ("boot".to_string(), "error")
                }
                PhaseKind::Services => {
                    let waited_in_vain = job.services.iter().any(never_ready);
                    let status = if waited_in_vain { "error" } else { "passed" };
                    ("waiting for services".to_string(), status)
                }
                kind => (kind.label().to_string(), "passed"),
            };
            let start = secs(offset + phase.start);
            (
                phase.kind.label(),
                label,
                start,
                secs(phase.duration),
                status,
            )
        })
        .collect();
    Vm {
        attempt: match job.attempt.of {
            1 => String::new(),
            _ => job.attempt.to_string(),
        },
        start: secs(offset),
        duration: secs(job.duration),
        status: job_status(job),
        phases,
        services: job
            .services
            .iter()
            .map(|service| service_lane(service, offset))
            .collect(),
    }
}

/// Whether a service failed before its `ready` passed.
fn never_ready(service: &ServiceResult) -> bool {
    service.failure.is_some() && service.ready_at.is_none()
}

/// `offset`: its job's start from the run's.
fn service_lane(service: &ServiceResult, offset: Duration) -> ServiceLane {
    // Never ready: it failed in its last phase (boot, or the wait).
    let failed_at = never_ready(service).then(|| service.timeline.len().saturating_sub(1));
    let phases = service
        .timeline
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            let label = match phase.kind {
                PhaseKind::Services => "waiting for ready",
                kind => kind.label(),
            };
            let status = if failed_at == Some(index) {
                "error"
            } else {
                "passed"
            };
            (
                phase.kind.label(),
                label.to_string(),
                secs(offset + phase.start),
                secs(phase.duration),
                status,
            )
        })
        .collect();
    ServiceLane {
        name: clean_text(&service.name),
        status: match service.kind() {
            CaseKind::Passed => "passed",
            CaseKind::Failed => "failed",
            CaseKind::Error => "error",
            CaseKind::Skipped => "skipped",
        },
        detail: clean_text(&service.describe()),
        phases,
    }
}

fn attempt_failures(
    index: usize,
    job: &JobResult,
    attempt: &str,
    budget: &mut Budget,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    let name = clean_text(&job.name);
    for service in job.services.iter().filter(|s| is_bad(s.kind())) {
        let log = service.log(MAX_EACH);
        failures.push(Failure {
            job: index,
            title: format!("{name} › service {}", clean_text(&service.name)),
            attempt: attempt.to_string(),
            message: clean_text(service.failure.as_deref().unwrap_or_default()),
            outputs: vec![("log".to_string(), budget.output(&log))],
        });
    }
    for step in &job.steps {
        for this in step.earlier_attempts.iter().chain([step]) {
            if !is_bad(this.status.kind()) {
                continue;
            }
            let label = match (attempt, this.attempt.of) {
                (_, 1) => attempt.to_string(),
                ("", _) => this.attempt.to_string(),
                (job_attempt, _) => format!("job {job_attempt}, step {}", this.attempt),
            };
            let mut outputs = Vec::new();
            for (stream, output) in [("stdout", &this.stdout), ("stderr", &this.stderr)] {
                if !output.is_empty() {
                    outputs.push((stream.to_string(), budget.output(output)));
                }
            }
            failures.push(Failure {
                job: index,
                title: format!("{name} › {}", clean_text(&this.name)),
                attempt: label,
                message: clean_text(&this.status.describe()),
                outputs,
            });
        }
    }
    if let Some(case) = job.job_case().filter(|c| is_bad(c.kind)) {
        let mut outputs = Vec::new();
        if !case.detail.is_empty() {
            let detail = budget.text(&case.detail.join("\n"));
            outputs.push((case.detail_title.to_string(), detail));
        }
        failures.push(Failure {
            job: index,
            title: format!("{name} › {}", case.name),
            attempt: attempt.to_string(),
            message: budget.text(&case.message),
            outputs,
        });
    }
    let failing: Vec<&ImportedCase> = job
        .imported
        .cases
        .iter()
        .filter(|c| is_bad(c.kind()))
        .collect();
    for case in failing.iter().take(MAX_REPORT_FAILURES_PER_JOB) {
        failures.push(imported_failure(index, &name, case, attempt, budget));
    }
    if failing.len() > MAX_REPORT_FAILURES_PER_JOB {
        failures.push(Failure {
            job: index,
            title: format!("{name} › test reports"),
            attempt: attempt.to_string(),
            message: format!(
                "{} more failing tests; the JUnit file lists them all",
                failing.len() - MAX_REPORT_FAILURES_PER_JOB
            ),
            outputs: Vec::new(),
        });
    }
    failures
}

fn imported_failure(
    index: usize,
    job_name: &str,
    case: &ImportedCase,
    attempt: &str,
    budget: &mut Budget,
) -> Failure {
    let (problem, what) = match &case.result {
        ImportedResult::Failed(problem) => (Some(problem), "failed"),
        ImportedResult::Error(problem) => (Some(problem), "error"),
        _ => (None, ""),
    };
    let mut message = what.to_string();
    if let Some(problem) = problem.filter(|p| !p.message.is_empty()) {
        message = format!("{what}: {}", budget.text(&problem.message));
    }
    if let Some(location) = case.location() {
        message.push_str(&format!(" ({})", clean_text(&location)));
    }
    let mut outputs = Vec::new();
    if let Some(problem) = problem.filter(|p| !p.body.is_empty()) {
        outputs.push(("trace".to_string(), budget.output(&problem.body)));
    }
    let streams = [("stdout", &case.system_out), ("stderr", &case.system_err)];
    for (stream, output) in streams {
        if !output.is_empty() {
            outputs.push((stream.to_string(), budget.output(output)));
        }
    }
    let test = match &case.classname {
        Some(class) => format!("{class}::{}", case.name),
        None => case.name.clone(),
    };
    Failure {
        job: index,
        title: format!("{job_name} › {}", clean_text(&test)),
        attempt: attempt.to_string(),
        message,
        outputs,
    }
}
