//! A job's services in its testsuite: a testcase each, `service <name>`,
//! with the service's log as its output, cut like a step's, and an
//! `<error>` when it failed its job. Its failures in earlier attempts of
//! the job are its reruns, as a step's are.

use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestRerun};

use super::imported::CaseNames;
use super::reruns;
use super::text::{message, xml_attribute, xml_text, JunitOptions};
use crate::report::text::last_lines;
use crate::results::{CaseKind, JobResult, Output, ServiceResult};

pub(super) fn testcase(
    job: &JobResult,
    service: &ServiceResult,
    names: &mut CaseNames,
    options: &JunitOptions,
) -> TestCase {
    // Read once, for the error's last lines and the output: head and tail
    // within the output limit, as a step's output is cut.
    let log = service.log(options.output_limit);
    let mut status = status(job, service, &log, options);
    reruns::attach(&mut status, service_reruns(job, &service.name, options));
    let name = names.unique(&job.classname, &format!("service {}", service.name));
    let mut case = TestCase::new(xml_text(&name), status);
    case.set_classname(xml_text(&job.classname));
    case.set_time(time(service));
    if !log.is_empty() {
        case.set_system_out(xml_text(&log.text()));
    }
    case
}

/// Every earlier attempt of the job in which its service `name` failed,
/// oldest first.
fn service_reruns(job: &JobResult, name: &str, options: &JunitOptions) -> Vec<TestRerun> {
    job.earlier_attempts
        .iter()
        .filter_map(|earlier| {
            let service = earlier.services.iter().find(|s| s.name == name)?;
            (service.kind() == CaseKind::Error).then(|| {
                let log = service.log(options.output_limit);
                let status = status(earlier, service, &log, options);
                let label = earlier.attempt.to_string();
                reruns::rerun_of(status, &label, time(service))
            })
        })
        .collect()
}

/// When it was ready, on the job's clock: what the job waited for.
pub(super) fn time(service: &ServiceResult) -> Duration {
    service.ready_at.unwrap_or(Duration::ZERO)
}

/// Passed, skipped (the job ended first) or an error with the end of its
/// `log`, as a failed step's status has the end of its output.
pub(super) fn status(
    job: &JobResult,
    service: &ServiceResult,
    log: &Output,
    options: &JunitOptions,
) -> TestCaseStatus {
    match service.kind() {
        CaseKind::Passed => return TestCaseStatus::success(),
        CaseKind::Skipped => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(xml_attribute(&service.describe()));
            return status;
        }
        CaseKind::Failed | CaseKind::Error => {}
    }
    let failure = service.failure.as_deref().unwrap_or_default();
    let mut body = format!(
        "service `{}` of job `{}`: {failure}\n",
        service.name, job.name
    );
    let lines = log.last_lines(options.failure_tail_lines);
    if !lines.is_empty() {
        body.push_str(&format!("\n--- log, {} ---\n", last_lines(lines.len())));
        for line in lines {
            body.push_str(&line);
            body.push('\n');
        }
    }
    body.push_str(&format!("\nfull log: {}\n", service.log_path.display()));
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
    status.set_type("service");
    status.set_message(xml_attribute(&message(job, failure)));
    status.set_description(xml_text(&body));
    status
}
