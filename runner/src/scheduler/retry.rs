//! `retry:` on jobs and steps.
//!
//! * A **job** retry boots a fresh VM for each attempt: nothing of the failed
//!   attempt survives, as if the job were run again by hand. The attempt's
//!   artifacts are thrown away first, so the directory holds only the last
//!   attempt's; each attempt writes its own log (`<job>.log`,
//!   `<job>.attempt-2.log`, ...).
//! * A **step** retry runs the step again in the same VM, right away: what
//!   the failed attempt left in the guest (files, processes in the
//!   background) is still there. It is for a flaky command, not a broken VM.
//!
//! Only failures are retried: a step that exited non-zero or hit its own
//! time limit, a job that failed or whose VM did not boot. A run that was
//! interrupted, or a step whose VM was killed or whose agent was lost, is
//! not. The final attempt is the result; the earlier ones are kept in it
//! (`earlier_attempts`) for the reports.

use super::context::RunContext;
use crate::plan::PlannedJob;
use crate::results::{Attempt, JobOutcome, JobResult, StepResult};

/// Runs `job` until it passes or its attempts are used up; `run_once`
/// runs one attempt.
pub(super) fn run_job(
    planned: &PlannedJob,
    ctx: &RunContext,
    mut run_once: impl FnMut(Attempt) -> JobResult,
) -> JobResult {
    let mut attempt = Attempt::first(planned.retry);
    let mut earlier = Vec::new();
    loop {
        let mut result = run_once(attempt);
        let retry = result.failed()
            && attempt.can_retry()
            && !matches!(result.outcome, JobOutcome::Cancelled { .. })
            && !runner_machine::interrupt::is_interrupted();
        if !retry {
            result.earlier_attempts = earlier;
            return result;
        }
        // Only the last attempt's artifacts are kept.
        let artifacts = ctx.options.out_dir.join("artifacts").join(&planned.slug);
        if let Err(e) = std::fs::remove_dir_all(&artifacts) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", artifacts.display());
            }
        }
        earlier.push(result);
        attempt = attempt.next();
    }
}

/// Runs a step until it passes, its attempts are used up or `time_left`
/// says the job's budget is; `run_once` runs one attempt.
pub(super) fn run_step(
    retry: u32,
    time_left: impl Fn() -> bool,
    mut run_once: impl FnMut(Attempt) -> StepResult,
) -> StepResult {
    let mut attempt = Attempt::first(retry);
    let mut earlier = Vec::new();
    loop {
        let mut result = run_once(attempt);
        let retry = result.may_retry() && attempt.can_retry() && time_left();
        if !retry || runner_machine::interrupt::is_interrupted() {
            result.earlier_attempts = earlier;
            return result;
        }
        earlier.push(result);
        attempt = attempt.next();
    }
}

/// The job log of an attempt: the first keeps the plain name.
pub(super) fn log_name(slug: &str, attempt: Attempt) -> String {
    match attempt.number {
        1 => format!("{slug}.log"),
        n => format!("{slug}.attempt-{n}.log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{failed, step};
    use crate::results::StepStatus;

    #[test]
    fn a_step_is_retried_until_it_passes() {
        let mut calls = 0;
        let result = run_step(
            3,
            || true,
            |attempt| {
                calls += 1;
                let mut r = match attempt.number {
                    1 | 2 => step("s", failed(1)),
                    _ => step("s", StepStatus::Passed),
                };
                r.attempt = attempt;
                r
            },
        );
        assert_eq!(calls, 3);
        assert_eq!(result.status, StepStatus::Passed);
        assert_eq!(result.attempt, Attempt { number: 3, of: 4 });
        assert_eq!(result.earlier_attempts.len(), 2);
    }

    #[test]
    fn a_step_that_always_fails_uses_every_attempt_and_no_more() {
        let mut calls = 0;
        let result = run_step(
            2,
            || true,
            |attempt| {
                calls += 1;
                let mut r = step("s", failed(1));
                r.attempt = attempt;
                r
            },
        );
        assert_eq!(calls, 3);
        assert_eq!(result.attempt.to_string(), "attempt 3/3");
        assert_eq!(result.earlier_attempts.len(), 2);
    }

    #[test]
    fn no_retry_once_the_job_has_no_time_left() {
        let mut calls = 0;
        let result = run_step(
            3,
            || false,
            |_| {
                calls += 1;
                step("s", failed(1))
            },
        );
        assert_eq!(calls, 1);
        assert!(result.earlier_attempts.is_empty());
    }

    #[test]
    fn errors_are_not_retried() {
        let mut calls = 0;
        let result = run_step(
            5,
            || true,
            |_| {
                calls += 1;
                step(
                    "s",
                    StepStatus::Error {
                        message: "agent lost".into(),
                    },
                )
            },
        );
        assert_eq!(calls, 1);
        assert!(result.earlier_attempts.is_empty());
    }

    #[test]
    fn retry_is_read_on_jobs_and_steps_and_bounded() {
        use crate::pipeline::Pipeline;
        use crate::plan::Plan;
        use std::path::Path;
        let parse = |yaml: &str| Pipeline::parse(yaml, Path::new("p.yml"), Path::new("/ws"));
        let yaml =
            "jobs:\n  a:\n    retry: 2\n    steps:\n      - make\n      - {run: flaky, retry: 3}\n";
        let plan = Plan::new(&parse(yaml).unwrap());
        assert_eq!(plan.jobs[0].retry, 2);
        assert_eq!(
            plan.jobs[0]
                .steps
                .iter()
                .map(|s| s.retry)
                .collect::<Vec<_>>(),
            [0, 3]
        );
        let err = parse("jobs:\n  a:\n    retry: 11\n    steps: [make]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "p.yml:3:12: invalid retry `11`: expected a number of retries from 0 to 10"
        );
        let err = parse("jobs:\n  a:\n    retyr: 1\n    steps: [make]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `retry`"), "{err}");
    }

    #[test]
    fn attempt_logs_have_their_own_names() {
        assert_eq!(log_name("01-a", Attempt::first(2)), "01-a.log");
        assert_eq!(
            log_name("01-a", Attempt::first(2).next()),
            "01-a.attempt-2.log"
        );
    }
}
