//! One job as one `<testsuite>`: a case per service, a case per step with
//! the guest's own testcases after the step they came from, the job's own
//! case, earlier attempts and the notes that belong to the whole job.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, Utc};
use quick_junit::{Property, TestCase, TestSuite};

use super::imported::{self, CaseNames};
use super::reruns;
use super::service;
use super::status::{job_case_status, step_status};
use super::text::{limited, xml_text, JunitOptions};
use crate::results::JobResult;

pub fn suite(job: &JobResult, options: &JunitOptions) -> TestSuite {
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
    if let Some(cpu) = job.metering.cpu {
        suite.add_property(Property::new(
            "cpu_seconds",
            format!("{:.3}", cpu.as_secs_f64()),
        ));
    }
    if let Some(memory) = job.metering.memory {
        suite.add_property(Property::new(
            "memory_peak_bytes",
            memory.peak_bytes.to_string(),
        ));
        suite.add_property(Property::new(
            "memory_total_bytes",
            memory.total_bytes.to_string(),
        ));
    }
    if let Some(disk) = job.metering.disk {
        for (name, value) in [
            ("disk_written_bytes", disk.written_bytes),
            ("disk_used_bytes", Some(disk.used_bytes)),
            ("disk_total_bytes", Some(disk.total_bytes)),
        ] {
            if let Some(value) = value {
                suite.add_property(Property::new(name, value.to_string()));
            }
        }
    }
    if let Some(network) = &job.metering.network {
        let report = &network.report;
        suite.add_property(Property::new(
            "network_bytes_out",
            report.bytes_out.to_string(),
        ));
        suite.add_property(Property::new(
            "network_bytes_in",
            report.bytes_in.to_string(),
        ));
        // One property per destination and refused name: the audit table,
        // as a CI server lists a suite's properties.
        for row in network.table() {
            suite.add_property(Property::new("egress", xml_text(&row)));
        }
    }
    if let Some(log) = &job.log_path {
        suite.add_property(Property::new("log", xml_text(&log.display().to_string())));
    }
    if job.attempt.of > 1 {
        suite.add_property(Property::new("attempt", job.attempt.to_string()));
    }
    let mut names = CaseNames::default();
    // First, as they were: the steps ran once every service was ready.
    for service in &job.services {
        suite.add_test_case(service::testcase(job, service, &mut names, options));
    }
    let imported = &job.imported.cases;
    for (index, step) in job.steps.iter().enumerate() {
        let mut status = step_status(job, step, options);
        reruns::attach(&mut status, reruns::step_reruns(job, index, options));
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
            suite.add_test_case(imported::testcase(job, case, &mut names, options));
        }
    }
    let steps = job.steps.len();
    for case in imported
        .iter()
        .filter(|c| c.step.is_none_or(|i| i >= steps))
    {
        suite.add_test_case(imported::testcase(job, case, &mut names, options));
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
    let mut notes = reruns::job_attempt_notes(job);
    notes.extend(job.artifact_notes.iter().cloned());
    notes.extend(job.cache_notes.iter().cloned());
    notes.extend(job.imported.notes.iter().cloned());
    if !notes.is_empty() {
        // Suite level: these belong to the job, not to any one step.
        suite.set_system_err(xml_text(&notes.join("\n")));
    }
    suite
}

fn timestamp(time: SystemTime) -> DateTime<FixedOffset> {
    DateTime::<Utc>::from(time).fixed_offset()
}
