//! A step's or a job's own case as a JUnit status: the failure or error
//! with its type, message and the output's last lines.

use quick_junit::{NonSuccessKind, TestCaseStatus};

use super::text::{message, xml_attribute, xml_text, JunitOptions};
use crate::report::text::last_lines;
use crate::results::{CaseKind, JobCase, JobResult, StepResult, StepStatus};

pub fn step_status(job: &JobResult, step: &StepResult, options: &JunitOptions) -> TestCaseStatus {
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

pub fn job_case_status(job: &JobResult, case: &JobCase) -> TestCaseStatus {
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
            "{}\n\n--- {}, {} ---\n",
            case.message,
            case.detail_title,
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
