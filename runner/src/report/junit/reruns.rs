//! Earlier attempts of retried steps and jobs in the JUnit file, the way
//! Maven Surefire writes them (and Jenkins and GitLab read them): the test
//! case holds the final result, and each earlier failed attempt becomes a
//! child of it:
//! * `<flakyFailure>` / `<flakyError>` when the final attempt passed;
//! * `<rerunFailure>` / `<rerunError>` when it failed too.
//!
//! A step's earlier attempts come from its own `retry` (same VM) and from
//! the job's earlier attempts (fresh VMs): the same step, by position.
//! A service's earlier attempts come from the job's earlier attempts: the
//! same service, by name. A job-level problem of an earlier attempt (its
//! VM did not boot, its agent was lost) belongs to no step or service; it
//! is listed in the suite's `<system-err>` as
//! `attempt 1/3: VM failed to boot: ...`.

use std::time::Duration;

use quick_junit::{TestCaseStatus, TestRerun};

use super::status::step_status;
use super::text::JunitOptions;
use crate::results::{CaseKind, JobResult, StepResult};

/// Every earlier failed attempt of step `index` of `job`, oldest first.
pub(super) fn step_reruns(job: &JobResult, index: usize, options: &JunitOptions) -> Vec<TestRerun> {
    let mut attempts: Vec<(&JobResult, &StepResult)> = Vec::new();
    for earlier_job in &job.earlier_attempts {
        if let Some(step) = earlier_job.steps.get(index) {
            attempts.extend(step.earlier_attempts.iter().map(|s| (earlier_job, s)));
            attempts.push((earlier_job, step));
        }
    }
    if let Some(step) = job.steps.get(index) {
        attempts.extend(step.earlier_attempts.iter().map(|s| (job, s)));
    }
    attempts
        .into_iter()
        .filter(|(_, step)| matches!(step.status.kind(), CaseKind::Failed | CaseKind::Error))
        .map(|(job, step)| rerun(job, step, options))
        .collect()
}

/// One earlier attempt of a step as a rerun element.
fn rerun(job: &JobResult, step: &StepResult, options: &JunitOptions) -> TestRerun {
    let status = step_status(job, step, options);
    rerun_of(status, &attempts_label(job, step), step.duration)
}

/// A failed attempt's status as a rerun element: the same message, type
/// and body its own `<failure>` or `<error>` would have had, prefixed with
/// the attempt (`label`).
pub(super) fn rerun_of(status: TestCaseStatus, label: &str, time: Duration) -> TestRerun {
    let TestCaseStatus::NonSuccess {
        kind,
        message,
        ty,
        description,
        ..
    } = status
    else {
        unreachable!("only failed attempts are turned into reruns")
    };
    let mut rerun = TestRerun::new(kind);
    rerun.set_time(time);
    rerun.set_message(format!(
        "{label}: {}",
        message.as_deref().unwrap_or_default()
    ));
    if let Some(ty) = ty {
        rerun.set_type(ty);
    }
    if let Some(description) = description {
        rerun.set_description(description);
    }
    rerun
}

/// `attempt 1/3`, or `job attempt 1/2, step attempt 2/3` when both retried.
fn attempts_label(job: &JobResult, step: &StepResult) -> String {
    match (job.attempt.of, step.attempt.of) {
        (1, _) => step.attempt.to_string(),
        (_, 1) => job.attempt.to_string(),
        _ => format!("job {}, step {}", job.attempt, step.attempt),
    }
}

/// Adds reruns to a case's status: as flaky runs if it passed, as reruns
/// if it failed. A skipped case takes none (quick-junit ignores them).
pub(super) fn attach(status: &mut TestCaseStatus, reruns: Vec<TestRerun>) {
    if reruns.is_empty() {
        return;
    }
    if let TestCaseStatus::NonSuccess { .. } = status {
        status.set_rerun_kind(quick_junit::FlakyOrRerun::Rerun);
    }
    status.add_reruns(reruns);
}

/// `attempt 1/3: VM failed to boot: ...` for each earlier attempt whose
/// problem was the job's, not a step's.
pub(super) fn job_attempt_notes(job: &JobResult) -> Vec<String> {
    job.earlier_attempts
        .iter()
        .filter_map(|earlier| {
            let case = earlier.job_case()?;
            (case.kind != CaseKind::Skipped)
                .then(|| format!("{}: {}", earlier.attempt, case.message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use roxmltree::Document;

    use super::super::{render, tests::assert_valid_file, write};
    use super::*;
    use crate::results::tests::{failed, job, job_with_services, run, step};
    use crate::results::{Attempt, JobOutcome, StepStatus};

    /// Step `check` failed once and passed on attempt 2/3; step `lint`
    /// failed all 2 attempts; the job's first attempt did not boot.
    fn retried() -> crate::results::RunResults {
        let mut check_failed = step("check", failed(1));
        check_failed.attempt = Attempt::first(2);
        let mut check = step("check", StepStatus::Passed);
        check.attempt = Attempt::first(2).next();
        check.earlier_attempts = vec![check_failed];
        let mut lint_failed = step("lint", failed(3));
        lint_failed.attempt = Attempt::first(1);
        let mut lint = step("lint", failed(3));
        lint.attempt = Attempt::first(1).next();
        lint.earlier_attempts = vec![lint_failed];
        let mut final_attempt = job("j", JobOutcome::Failed, vec![check, lint]);
        final_attempt.attempt = Attempt::first(1).next();
        let mut first_attempt = job(
            "j",
            JobOutcome::BootError {
                message: "no agent".into(),
                serial_tail: Vec::new(),
            },
            Vec::new(),
        );
        first_attempt.attempt = Attempt::first(1);
        final_attempt.earlier_attempts = vec![first_attempt];
        run(vec![final_attempt])
    }

    #[test]
    fn earlier_attempts_become_flaky_and_rerun_elements() {
        let xml = render(&retried(), &JunitOptions::default()).unwrap();
        let doc = Document::parse(&xml).unwrap();
        let case = |name: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(name))
                .unwrap()
        };
        let tags = |name: &str| -> Vec<String> {
            case(name)
                .children()
                .filter(|n| n.is_element())
                .map(|n| n.tag_name().name().to_string())
                .collect()
        };
        assert_eq!(tags("check"), ["flakyFailure", "system-out"]);
        assert_eq!(
            tags("lint"),
            ["failure", "rerunFailure", "system-out"],
            "{xml}"
        );
        let flaky = case("check")
            .children()
            .find(|n| n.has_tag_name("flakyFailure"))
            .unwrap();
        // Both the job and the step were retried: both attempts are named.
        assert_eq!(
            flaky.attribute("message"),
            Some("job attempt 2/2, step attempt 1/3: exit code 1")
        );
        // The final result counts; earlier attempts do not.
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("tests"), Some("2"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert!(
            xml.contains("attempt 1/2: VM failed to boot: no agent"),
            "{xml}"
        );
        assert!(xml.contains("<property name=\"attempt\" value=\"attempt 2/2\"/>"));
    }

    #[test]
    fn a_service_that_failed_an_earlier_attempt_is_flaky() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = job_with_services(dir.path());
        first.attempt = Attempt::first(1);
        let mut last = job_with_services(dir.path());
        last.outcome = JobOutcome::Passed;
        last.services[1].failure = None;
        last.services[1].ready_at = Some(Duration::from_secs(5));
        last.attempt = Attempt::first(1).next();
        last.earlier_attempts = vec![first];
        let results = run(vec![last]);
        let xml = render(&results, &JunitOptions::default()).unwrap();
        let doc = Document::parse(&xml).unwrap();
        let cache = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("service cache"))
            .unwrap();
        let flaky = cache
            .children()
            .find(|n| n.has_tag_name("flakyError"))
            .unwrap();
        assert_eq!(
            flaky.attribute("message"),
            Some("attempt 1/2: was not ready within 2s (`ready` failed 3 times: redis-cli ping)")
        );
        assert_eq!(flaky.attribute("type"), Some("service"));
        // Not also a note of the suite: the rerun has it.
        assert!(!xml.contains("<system-err>"), "{xml}");
        let path = dir.path().join("junit.xml");
        write(&results, &path, &JunitOptions::default()).unwrap();
        assert_valid_file(&path);
    }

    #[test]
    fn reruns_follow_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        write(&retried(), &path, &JunitOptions::default()).unwrap();
        assert_valid_file(&path);
    }
}
