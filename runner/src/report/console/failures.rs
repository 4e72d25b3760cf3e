//! The console's end-of-run blocks for failing steps and services, for
//! artifacts, caches and services (a child of console.rs, which it
//! extends).

use super::{one_line, ConsoleReporter};
use crate::report::text::{clean_text, last_lines};
use crate::results::{CaseKind, JobResult, Output, StepStatus, DEFAULT_OUTPUT_LIMIT};

impl ConsoleReporter {
    /// The end-of-run block for one job: each failed service's log tail,
    /// each failing step's output tail, or the job-level problem.
    pub(super) fn failure_report(&self, job: &JobResult) -> Vec<String> {
        let mut lines = Vec::new();
        let allowed = if job.allow_failure {
            " (allowed to fail)"
        } else {
            ""
        };
        let n = self.options.failure_tail_lines;
        for service in &job.services {
            let Some(failure) = &service.failure else {
                continue;
            };
            lines.push(String::new());
            lines.push(self.paint(
                &format!(
                    "==== {} › service {}: {}{allowed} ====",
                    job.name,
                    service.name,
                    one_line(failure)
                ),
                "1;31",
            ));
            tail_block(&mut lines, "log", &service.log(DEFAULT_OUTPUT_LIMIT), n);
            lines.push(format!("full log: {}", service.log_path.display()));
        }
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
                        "--- {}, {} ---",
                        case.detail_title,
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
    pub(super) fn artifact_report(&self, job: &JobResult) -> Vec<String> {
        let n = job.artifact_notes.len();
        let problems = if n == 1 { "problem" } else { "problems" };
        self.notes_block(
            &format!("{}: {n} artifact {problems}", job.name),
            &job.artifact_notes,
        )
    }

    /// The end-of-run block for what became of a job's caches: restored
    /// from where, committed as which version, or why not.
    pub(super) fn cache_report(&self, job: &JobResult) -> Vec<String> {
        self.notes_block(&format!("{}: caches", job.name), &job.cache_notes)
    }

    /// The end-of-run block for a job's services: how each went, in a
    /// line. Nothing for a job without services.
    pub(super) fn service_report(&self, job: &JobResult) -> Vec<String> {
        let lines: Vec<String> = job
            .services
            .iter()
            .map(|service| format!("{}: {}", service.name, service.describe()))
            .collect();
        self.notes_block(&format!("{}: services", job.name), &lines)
    }

    /// The end-of-run block for a job that came close to a limit: one
    /// warning line each, naming the setting to raise.
    pub(super) fn metering_report(&self, job: &JobResult) -> Vec<String> {
        self.notes_block(
            &format!("{}: close to its limits", job.name),
            &job.metering.warnings(),
        )
    }

    /// The end-of-run block of what a job's network touched: every
    /// destination for an audit, else only what was refused (so a fetch
    /// that failed says it was blocked, not only that it timed out).
    pub(super) fn network_report(&self, job: &JobResult) -> Vec<String> {
        let Some(network) = &job.metering.network else {
            return Vec::new();
        };
        if network.audit {
            let title = format!("{}: network audit ({})", job.name, network.summary());
            let mut table = network.table();
            if table.is_empty() {
                table.push("it reached nothing".to_string());
            }
            return self.notes_block(&title, &table);
        }
        self.notes_block(
            &format!("{}: network refused", job.name),
            &network.refused(),
        )
    }

    fn notes_block(&self, title: &str, notes: &[String]) -> Vec<String> {
        if notes.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![
            String::new(),
            self.paint(&format!("==== {title} ===="), "33"),
        ];
        lines.extend(notes.iter().map(|note| one_line(note)));
        lines
    }
}

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
