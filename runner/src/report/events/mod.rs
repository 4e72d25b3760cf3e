//! `runner test --message-format json`: one JSON object a line on stdout
//! for each event of the run, for other tools to build on. The format is
//! documented in `docs/events.md`; every object carries `"v"`
//! ([`EVENTS_VERSION`]), raised when a field changes meaning or goes
//! away (new fields and event types may appear without it).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::report::stream::{OutputStream, Reporter, RunEvent};
use crate::results::{
    Attempt, JobOutcome, JobResult, NetworkUse, RunResults, StepResult, StepStatus,
};

pub const EVENTS_VERSION: u32 = 1;

/// Writes events as JSON lines. Shared by the scheduler's threads; each
/// line is written whole under a lock, so lines never mix.
pub struct JsonEvents {
    out: Mutex<Box<dyn Write + Send>>,
    /// How often each job has started: attempts of a retried job.
    starts: Mutex<HashMap<String, u32>>,
}

impl JsonEvents {
    pub fn new(out: Box<dyn Write + Send>) -> JsonEvents {
        JsonEvents {
            out: Mutex::new(out),
            starts: Mutex::new(HashMap::new()),
        }
    }

    pub fn stdout() -> JsonEvents {
        JsonEvents::new(Box::new(std::io::stdout()))
    }

    fn emit(&self, kind: &str, fields: Value) {
        let mut event = json!({ "v": EVENTS_VERSION, "type": kind });
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A closed stdout must not take the run down.
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
    }
}

/// `runner test --list --message-format json`: one `planned-job` event
/// per job.
pub fn plan_events(plan: &Plan) -> Vec<String> {
    plan.jobs
        .iter()
        .map(|job| {
            let steps: Vec<Value> = job
                .steps
                .iter()
                .map(|step| json!({ "index": step.index, "name": step.name, "retry": step.retry }))
                .collect();
            json!({
                "v": EVENTS_VERSION,
                "type": "planned-job",
                "job": job.name,
                // Pairs, in axis order (a JSON object would lose it).
                "matrix": job.matrix,
                "allow_failure": job.allow_failure,
                "retry": job.retry,
                "steps": steps,
            })
            .to_string()
        })
        .collect()
}

fn attempt(attempt: Attempt) -> Value {
    json!({ "number": attempt.number, "of": attempt.of })
}

fn step_status(status: &StepStatus) -> &'static str {
    match status {
        StepStatus::Passed => "passed",
        StepStatus::Failed { .. } => "failed",
        StepStatus::TimedOut { .. } => "timed-out",
        StepStatus::Skipped { .. } => "skipped",
        StepStatus::Error { .. } => "error",
    }
}

fn job_outcome(result: &JobResult) -> (&'static str, Option<String>) {
    match &result.outcome {
        _ if !result.failed() => ("passed", None),
        JobOutcome::BootError { message, .. } => ("boot-error", Some(message.clone())),
        JobOutcome::Error { message } => ("error", Some(message.clone())),
        JobOutcome::Cancelled { reason } => ("cancelled", Some(reason.clone())),
        _ => ("failed", None),
    }
}

impl JsonEvents {
    fn run_started(&self, plan: &Plan) {
        let jobs: Vec<&str> = plan.jobs.iter().map(|job| job.name.as_str()).collect();
        self.emit(
            "run-started",
            json!({
                "pipeline": plan.pipeline_name,
                "path": plan.pipeline_path.display().to_string(),
                "jobs": jobs,
            }),
        );
    }

    fn job_started(&self, job: &PlannedJob) {
        let number = {
            let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
            let n = starts.entry(job.name.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let attempt = json!({ "number": number, "of": job.retry.saturating_add(1) });
        self.emit(
            "job-started",
            json!({ "job": job.name, "attempt": attempt }),
        );
    }

    fn step_started(&self, job: &PlannedJob, step: &PlannedStep) {
        self.emit(
            "step-started",
            json!({ "job": job.name, "step": step.name, "index": step.index }),
        );
    }

    fn step_output(
        &self,
        job: &PlannedJob,
        step: &PlannedStep,
        stream: OutputStream,
        chunk: &[u8],
    ) {
        let stream = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        self.emit(
            "step-output",
            json!({
                "job": job.name,
                "step": step.name,
                "index": step.index,
                "stream": stream,
                "data": String::from_utf8_lossy(chunk),
            }),
        );
    }

    fn step_finished(&self, job: &PlannedJob, step: &PlannedStep, result: &StepResult) {
        let exit = match &result.status {
            StepStatus::Failed { exit } => Some(exit),
            StepStatus::TimedOut { exit, .. } => exit.as_ref(),
            _ => None,
        };
        self.emit(
            "step-finished",
            json!({
                "job": job.name,
                "step": step.name,
                "index": step.index,
                "status": step_status(&result.status),
                "message": result.status.describe(),
                "exit_code": exit.and_then(|e| e.code),
                "signal": exit.and_then(|e| e.signal),
                "duration_s": result.duration.as_secs_f64(),
                "attempt": attempt(result.attempt),
                "will_retry": result.may_retry() && result.attempt.can_retry(),
            }),
        );
    }

    fn job_finished(&self, job: &PlannedJob, result: &JobResult) {
        let (outcome, message) = job_outcome(result);
        let services: Vec<Value> = result
            .services
            .iter()
            .map(|service| {
                json!({
                    "name": service.name,
                    "ready_s": service.ready_at.map(|t| t.as_secs_f64()),
                    "failure": service.failure,
                    "log": service.log_path.display().to_string(),
                })
            })
            .collect();
        self.emit(
            "job-finished",
            json!({
                "job": job.name,
                "outcome": outcome,
                "message": message,
                "allow_failure": result.allow_failure,
                "duration_s": result.duration.as_secs_f64(),
                "boot_s": result.boot.map(|b| b.as_secs_f64()),
                "attempt": attempt(result.attempt),
                "log": result.log_path.as_ref().map(|p| p.display().to_string()),
                "services": services,
                "metering": {
                    "cpu_s": result.metering.cpu.map(|c| c.as_secs_f64()),
                    "memory_peak_bytes": result.metering.memory.map(|m| m.peak_bytes),
                    "memory_total_bytes": result.metering.memory.map(|m| m.total_bytes),
                    "disk_written_bytes": result.metering.disk.and_then(|d| d.written_bytes),
                    "disk_used_bytes": result.metering.disk.map(|d| d.used_bytes),
                    "disk_total_bytes": result.metering.disk.map(|d| d.total_bytes),
                    "warnings": result.metering.warnings(),
                    "network": result.metering.network.as_ref().map(network),
                },
            }),
        );
    }

    fn run_finished(&self, results: &RunResults) {
        let counts = results.counts();
        self.emit(
            "summary",
            json!({
                "passed": counts.passed,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "allowed_failures": counts.allowed_failures,
                "duration_s": results.wall.as_secs_f64(),
                "exit_code": results.exit_code(),
                "line": results.summary_line(),
            }),
        );
    }
}

impl Reporter for JsonEvents {
    fn report(&self, event: &RunEvent<'_>) {
        match event {
            RunEvent::RunStarted { plan } => self.run_started(plan),
            RunEvent::JobStarted { job } => self.job_started(job),
            RunEvent::StepStarted { job, step } => self.step_started(job, step),
            RunEvent::StepOutput {
                job,
                step,
                stream,
                chunk,
            } => self.step_output(job, step, *stream, chunk),
            RunEvent::StepFinished { job, step, result } => self.step_finished(job, step, result),
            RunEvent::JobFinished { job, result } => self.job_finished(job, result),
            RunEvent::RunFinished { results } => self.run_finished(results),
            // Where the job is and who has the terminal are for people.
            RunEvent::JobProgress { .. } | RunEvent::TerminalLent { .. } => {}
        }
    }
}

/// A job's network, as `job-finished` carries it: what the egress process
/// recorded, and the `allow` list that would have sufficed.
fn network(network: &NetworkUse) -> serde_json::Value {
    let report = &network.report;
    json!({
        "audit": network.audit,
        "bytes_out": report.bytes_out,
        "bytes_in": report.bytes_in,
        "destinations": report.destinations,
        "more_destinations": report.more_destinations,
        "refused_names": report.refused_names,
        "more_refused_names": report.more_refused_names,
        "suggested_allow": network.suggested_allow(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::console::tests::{plan, Buffer};
    use super::*;
    use crate::report::stream::Feed;
    use crate::results::tests::{failed, job, job_with_services, run, step};

    #[test]
    fn each_event_is_one_versioned_json_line() {
        let buffer = Buffer::default();
        let events = JsonEvents::new(Box::new(buffer.clone()));
        let plan = plan();
        let build = &plan.jobs[0];
        events.on_run_started(&plan);
        events.on_job_started(build);
        events.on_step_started(build, &build.steps[0]);
        events.on_step_output(
            build,
            &build.steps[0],
            OutputStream::Stderr,
            b"a\n\"b\"\x1b\n",
        );
        let mut make = step("make", failed(2));
        make.attempt = Attempt::first(1);
        events.on_step_finished(build, &build.steps[0], &make);
        let result = job("build", JobOutcome::Failed, vec![make]);
        events.on_job_finished(build, &result);
        events.finish(&run(vec![result]));
        let text = buffer.text();
        let parsed: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let kinds: Vec<&str> = parsed.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "run-started",
                "job-started",
                "step-started",
                "step-output",
                "step-finished",
                "job-finished",
                "summary"
            ]
        );
        assert!(parsed.iter().all(|e| e["v"] == 1));
        assert_eq!(parsed[3]["data"], "a\n\"b\"\u{1b}\n");
        assert_eq!(parsed[3]["stream"], "stderr");
        assert_eq!(parsed[4]["status"], "failed");
        assert_eq!(parsed[4]["exit_code"], 2);
        assert_eq!(parsed[4]["will_retry"], true);
        assert_eq!(parsed[4]["attempt"], json!({"number": 1, "of": 2}));
        assert_eq!(parsed[5]["outcome"], "failed");
        assert_eq!(parsed[6]["failed"], 1);
        assert_eq!(parsed[6]["exit_code"], 1);
    }

    #[test]
    fn a_finished_job_lists_its_services() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::default();
        let events = JsonEvents::new(Box::new(buffer.clone()));
        let result = job_with_services(dir.path());
        events.on_job_finished(&plan().jobs[0], &result);
        events.on_job_finished(
            &plan().jobs[1],
            &job("lint", JobOutcome::Passed, Vec::new()),
        );
        let text = buffer.text();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0]["outcome"], "error");
        let log = |i: usize| result.services[i].log_path.display().to_string();
        assert_eq!(
            lines[0]["services"],
            json!([
                {"name": "db", "ready_s": 3.2, "failure": null, "log": log(0)},
                {
                    "name": "cache",
                    "ready_s": null,
                    "failure": "was not ready within 2s (`ready` failed 3 times: redis-cli ping)",
                    "log": log(1)
                }
            ])
        );
        // A job without services says so with an empty list.
        assert_eq!(lines[1]["services"], json!([]));
    }

    #[test]
    fn a_finished_job_carries_what_its_network_touched() {
        let buffer = Buffer::default();
        let events = JsonEvents::new(Box::new(buffer.clone()));
        let result = crate::results::tests::networked("build", false);
        events.on_job_finished(&plan().jobs[0], &result);
        let line: Value = serde_json::from_str(buffer.text().trim()).unwrap();
        let network = &line["metering"]["network"];
        assert_eq!(network["audit"], false);
        assert_eq!(network["bytes_in"], 35_000);
        assert_eq!(network["destinations"][0]["names"], json!(["crates.io"]));
        assert_eq!(network["destinations"][0]["address"], "151.101.0.1");
        assert_eq!(network["destinations"][1]["allowed"], false);
        assert_eq!(network["refused_names"], json!(["evil.example"]));
        assert_eq!(
            network["suggested_allow"],
            json!(["crates.io:443", "10.0.0.5:5432"])
        );
    }

    #[test]
    fn the_plan_lists_jobs_and_steps() {
        let lines = plan_events(&plan());
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["type"], "planned-job");
        assert_eq!(first["job"], "build");
        assert_eq!(first["steps"][1]["name"], "make test");
    }
}
