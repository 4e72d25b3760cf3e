//! The console with retries and with live output in CI (plain) mode.

use super::tests::{plain, plan};
use crate::report::stream::{Feed, OutputStream};
use crate::results::tests::{failed, job, step};
use crate::results::{Attempt, JobOutcome, StepStatus};

#[test]
fn retried_steps_and_jobs_say_which_attempt() {
    let (reporter, buffer) = plain(false, false);
    let plan = plan();
    let build = &plan.jobs[0];
    reporter.on_job_started(build);
    let mut first = step("make", failed(1));
    first.attempt = Attempt::first(2);
    reporter.on_step_finished(build, &build.steps[0], &first);
    let mut second = step("make", StepStatus::Passed);
    second.attempt = Attempt::first(2).next();
    reporter.on_step_finished(build, &build.steps[0], &second);
    let mut attempt1 = job(
        "build",
        JobOutcome::Failed,
        vec![step("make test", failed(2))],
    );
    attempt1.attempt = Attempt::first(2);
    reporter.on_job_finished(build, &attempt1);
    reporter.on_job_started(build);
    let mut attempt2 = job("build", JobOutcome::Passed, vec![]);
    attempt2.attempt = Attempt::first(2).next();
    reporter.on_job_finished(build, &attempt2);
    let text = buffer.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "[build] started (minimal, 1 vCPU, 512M)",
            "[build] make ... FAILED (exit code 1, 1.2s), will retry (attempt 1/3)",
            "[build] make ... ok (1.2s), passed on attempt 2/3",
            "[build] FAILED: `make test` exit code 2, will retry in a fresh VM (attempt 1/3)",
            "[build] started (minimal, 1 vCPU, 512M)",
            "[build] passed on attempt 2/3 in 3s, boot 1.4s",
        ]
    );
}

#[test]
fn output_lines_are_prefixed_as_they_arrive_and_the_rest_at_step_end() {
    let (reporter, buffer) = plain(false, false);
    let plan = plan();
    let (build, lint) = (&plan.jobs[0], &plan.jobs[1]);
    reporter.on_job_started(build);
    reporter.on_job_started(lint);
    reporter.on_step_output(build, &build.steps[0], OutputStream::Stdout, b"compil");
    reporter.on_step_output(
        lint,
        &lint.steps[0],
        OutputStream::Stderr,
        b"warn\x1b[31ming\n",
    );
    reporter.on_step_output(
        build,
        &build.steps[0],
        OutputStream::Stdout,
        b"ing\nlinking",
    );
    reporter.on_step_finished(build, &build.steps[0], &step("make", StepStatus::Passed));
    let text = buffer.text();
    let lines: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            "[lint] warning",
            "[build] compiling",
            "[build] linking",
            "[build] make ... ok (1.2s)",
        ]
    );
}
