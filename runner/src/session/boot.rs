//! Reaching the agent of a VM the machine just started: the handshake, a
//! restored clone's announcement, and the [`AgentProbe`] through which warm
//! start checks clones (the machine does not speak the agent's protocol).

use std::time::{Duration, Instant};

use agent_protocol::{Command, ExecRequest};
use runner_machine::{AgentProbe, AnsweredAgent, BootError, Vm, SERIAL_TAIL_LINES};

use super::{new_clone_id, AgentSession, SessionError};

/// Polls the guest until the agent completes the handshake, the VM dies, or
/// `timeout` passes. Polling is cheap here: a refused connection is one RST
/// from the guest.
pub fn wait_for_agent(vm: &mut dyn Vm, timeout: Duration) -> Result<AgentSession, BootError> {
    if let Some(agent) = vm.take_answered_agent() {
        if let Ok(session) = agent.downcast::<AgentSession>() {
            return Ok(*session);
        }
    }
    let start = Instant::now();
    let mut last_error;
    let mut pause = Duration::from_millis(5);
    loop {
        if runner_machine::interrupt::is_interrupted() {
            return Err(BootError::Interrupted);
        }
        if let Some(status) = vm.exited() {
            return Err(BootError::Exited {
                status,
                serial_tail: vm.serial_tail(SERIAL_TAIL_LINES),
            });
        }
        match vm.connect(agent_protocol::AGENT_PORT) {
            Ok(stream) => match AgentSession::handshake(stream) {
                Ok(session) => return announce_clone(vm, session),
                // A protocol mismatch will not get better by retrying.
                Err(e @ SessionError::Incompatible(_)) => {
                    return Err(BootError::Setup(e.to_string()))
                }
                Err(e) => last_error = Some(e.to_string()),
            },
            Err(e) => last_error = Some(e.to_string()),
        }
        if start.elapsed() >= timeout {
            return Err(BootError::Timeout {
                timeout,
                last_error,
                serial_tail: vm.serial_tail(SERIAL_TAIL_LINES),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Tells a restored clone's agent that it is one, with an identity of its
/// own, before any command can see the snapshot's random state, clock or
/// identity.
fn announce_clone(vm: &mut dyn Vm, mut session: AgentSession) -> Result<AgentSession, BootError> {
    if let Some(generation) = vm.restore_generation() {
        let id = new_clone_id().map_err(|e| BootError::Setup(format!("a clone identity: {e}")))?;
        session.announce_restore(generation, &id).map_err(|e| {
            BootError::Setup(format!(
                "the restored guest's agent refused its new identity: {e}"
            ))
        })?;
    }
    Ok(session)
}

/// Answers the machine's questions about a guest with an [`AgentSession`].
#[derive(Debug, Default)]
pub struct SessionProbe;

impl AgentProbe for SessionProbe {
    fn answer(&self, vm: &mut dyn Vm, limit: Duration) -> Result<AnsweredAgent, BootError> {
        Ok(Box::new(wait_for_agent(vm, limit)?))
    }

    fn run(&self, agent: &mut AnsweredAgent, argv: &[&str], limit: Duration) -> Result<(), String> {
        let session = agent
            .downcast_mut::<AgentSession>()
            .ok_or("the connection is not an agent session")?;
        session.set_deadline(Instant::now().checked_add(limit));
        let request = ExecRequest {
            command: Command::Argv(argv.iter().map(|s| s.to_string()).collect()),
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(limit.as_millis() as u64),
            stdin: false,
        };
        let status = session
            .exec(request, None, &mut |_, _| {})
            .map_err(|e| format!("it did not run: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(status.error.clone().unwrap_or_else(|| status.describe()))
        }
    }
}
