//! What a service runs in its VM, over the agent: `run` and `ready` as
//! requests in the service's environment, and `ready` tried until it
//! passes. Shared by a job's services and the snapshot VM that prepares
//! one (`super::prepare`).

use std::time::{Duration, Instant};

use agent_protocol::{Command, ExecRequest, AGENT_PORT};
use runner_machine::Vm;

use crate::plan::PlannedService;
use crate::results::JobLog;
use crate::session::AgentSession;

/// Pause between two tries of `ready`.
const READY_POLL: Duration = Duration::from_millis(500);

/// Tries `service`'s `ready` on `session` until it exits 0, within its
/// `ready_timeout`, its output going to `log`; without a `ready`, the
/// service is ready at once. `give_up` says why to stop trying, if it
/// should.
pub(super) fn poll_ready(
    session: &mut AgentSession,
    service: &PlannedService,
    log: &JobLog,
    give_up: impl Fn() -> Option<String>,
) -> Result<(), String> {
    let Some(ready) = &service.ready else {
        return Ok(());
    };
    let limit = service.ready_timeout;
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        if let Some(why) = give_up() {
            return Err(why);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "was not ready within {} (`ready` failed {tries} times: {ready})",
                humantime::format_duration(limit)
            ));
        }
        tries += 1;
        let began = Instant::now();
        let exit = session
            .exec(request(service, ready, Some(left)), None, &mut |_, b| {
                log.write(b)
            })
            .map_err(|e| format!("lost its agent while `ready` ran: {e}"))?;
        // How long a try took, and in the guest: a slow `ready` shows
        // whether the command itself or the way to it is slow.
        let took = format!(
            "{:.2} s, {} ms of it in the guest",
            began.elapsed().as_secs_f64(),
            exit.duration_ms
        );
        if exit.success() {
            log.note(&format!("==> `ready` passed on try {tries} ({took})"));
            return Ok(());
        }
        if tries == 1 {
            log.note(&format!(
                "==> `ready` failed on try 1 ({}, {took}); trying every {} ms",
                exit.describe(),
                READY_POLL.as_millis()
            ));
        }
        std::thread::sleep(READY_POLL.min(left));
    }
}

/// `script` as `service` runs it: in its environment, within `timeout`.
pub(super) fn request(
    service: &PlannedService,
    script: &str,
    timeout: Option<Duration>,
) -> ExecRequest {
    ExecRequest {
        command: Command::Script {
            script: script.to_string(),
            shell: String::new(),
        },
        env: service
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout_ms: timeout.map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
        ..Default::default()
    }
}

/// A new agent connection to `vm`, past its handshake.
pub(super) fn open_session(vm: &dyn Vm) -> Result<AgentSession, String> {
    let stream = vm.connect(AGENT_PORT).map_err(|e| e.to_string())?;
    AgentSession::handshake(stream).map_err(|e| e.to_string())
}
