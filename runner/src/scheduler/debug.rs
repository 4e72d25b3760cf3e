//! `runner test --debug-on-failure`: when a step fails, the job's VM is
//! kept and the user gets a shell in it, at the failing step's workdir and
//! with its environment, before the run goes on (artifacts are collected
//! and the VM destroyed as usual once the shell exits).
//!
//! A job with `retry` gets its shell on its last attempt only.
//!
//! There is one terminal, so there is one debug shell at a time. The
//! other jobs keep running meanwhile (their console lines wait until the
//! shell closes); a job that fails while another's shell is open waits
//! here, its VM kept, for its own turn.

use std::io::Write;
use std::sync::Mutex;

use agent_protocol::ShellRequest;

use super::context::RunContext;
use crate::plan::{PlannedJob, PlannedStep};
use crate::report::RunEvent;
use crate::results::{Attempt, JobLog, StepResult, StepStatus};
use crate::session::AgentSession;

/// Held while a debug shell has the terminal.
static TERMINAL: Mutex<()> = Mutex::new(());

/// Whether `status` is a failure worth a look from inside: the step ran
/// and the guest still answers.
fn worth_a_shell(status: &StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Failed { .. }
            | StepStatus::TimedOut {
                host_deadline: false,
                ..
            }
    )
}

/// Opens the debug shell for `failed` (the result of `step`) if the run
/// asked for it and the step failed on the job's last attempt (earlier
/// ones are retried in a fresh VM anyway); returns when the user leaves it.
pub(super) fn after_step(
    job: &PlannedJob,
    step: &PlannedStep,
    failed: &StepResult,
    job_attempt: Attempt,
    session: &mut AgentSession,
    log: &JobLog,
    ctx: &RunContext,
) {
    let last_attempt = job_attempt.number >= job_attempt.of;
    if !ctx.options.debug_on_failure || !last_attempt || !worth_a_shell(&failed.status) {
        return;
    }
    let _turn = TERMINAL.lock().unwrap_or_else(|p| p.into_inner());
    if runner_machine::interrupt::is_interrupted() {
        return;
    }
    ctx.reporter.report(&RunEvent::TerminalLent { lent: true });
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "\nrunner: job `{}`: step {} `{}` failed ({}).\n\
         runner: debug shell in its VM at {}, with the step's environment. \
         `exit` or Ctrl-D leaves it; then the job ends as failed and its VM is destroyed.",
        job.name,
        step.index + 1,
        step.name,
        failed.status.describe(),
        step.workdir
    );
    log.note(&format!("==> debug shell opened after `{}`", step.name));
    // A person decides how long this takes, not the job's time limit; the
    // artifacts get their own time afterwards.
    let deadline = session.deadline();
    session.set_deadline(None);
    let exec = step.exec_request(None);
    let request = ShellRequest {
        env: exec.env,
        cwd: exec.cwd,
        ..Default::default()
    };
    let outcome = match crate::terminal::run_shell(session, request) {
        Ok(status) => match status.error {
            Some(message) => format!("the debug shell could not start: {message}"),
            None => format!("left the debug shell ({})", status.describe()),
        },
        Err(e) => format!("the debug shell ended: {e}"),
    };
    session.set_deadline(deadline);
    log.note(&format!("==> {outcome}"));
    let _ = writeln!(
        err,
        "runner: job `{}`: {outcome}; the run goes on.",
        job.name
    );
    ctx.reporter.report(&RunEvent::TerminalLent { lent: false });
}
