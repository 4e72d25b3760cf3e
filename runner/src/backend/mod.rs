//! Backends boot a VM from a [`VmSpec`] and hand back a [`Vm`] whose agent can
//! be reached over vsock. Everything above this module (sessions, the
//! scheduler) is the same whichever backend runs the guest.

pub mod hybrid_vsock;
pub mod kvm;
pub mod network;
pub mod qemu;
pub mod select;
pub mod serial_pump;
pub mod snapshots;
pub mod vm_dir;
pub mod vm_process;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::session::{AgentSession, SessionError};

/// Where the guest images live and how big the VM is.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Shown in logs and errors.
    pub name: String,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long the guest may take to answer the agent handshake.
    pub boot_timeout: Duration,
    /// Most bytes the serial console log may take on disk: the guest
    /// decides how much it prints. Past it the head and a rolling tail are
    /// kept. `None` for no limit.
    pub serial_log_limit: Option<u64>,
    /// The VM's NIC, if any ([`network::Nic`]).
    pub network: network::Nic,
}

/// The serial log cap used unless configured otherwise.
pub const DEFAULT_SERIAL_LOG_LIMIT: u64 = runner_devices::bounded::DEFAULT_LOG_LIMIT;

/// The kernel command line every backend passes; it is the boot contract with
/// `rootfs/` (read-only root on the first virtio-blk disk, our init builds the
/// overlay and starts the agent).
///
/// `no_timer_check`: at boot the kernel checks that the timer interrupt
/// fires within a few busy-waited ticks, and panics ("IO-APIC + timer
/// doesn't work!") when it does not. A vCPU that its host descheduled for
/// those moments fails that check although its timer is fine: seen under
/// TCG on a loaded 2-core machine. VMs skip it, as cloud images do.
pub const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 no_timer_check root=/dev/vda ro \
rootfstype=ext4 init=/sbin/runner-init";

/// The CID the guest sees, whichever backend runs it: every VM has its own
/// vsock device, so all can use the same one.
pub const GUEST_CID: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Setup(String),
    #[error("the VM exited during boot ({status})")]
    Exited {
        status: String,
        serial_tail: Vec<String>,
    },
    #[error("the guest agent did not answer within {timeout:?}{}",
        .last_error.as_ref().map(|e| format!(" (last attempt: {e})")).unwrap_or_default())]
    Timeout {
        timeout: Duration,
        last_error: Option<String>,
        serial_tail: Vec<String>,
    },
    #[error("interrupted")]
    Interrupted,
}

impl BootError {
    /// The last console lines, for reports.
    pub fn serial_tail(&self) -> &[String] {
        match self {
            BootError::Exited { serial_tail, .. } | BootError::Timeout { serial_tail, .. } => {
                serial_tail
            }
            _ => &[],
        }
    }
}

/// A backend knows how to start VMs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts the VM. It returns as soon as the VM runs; use
    /// [`wait_for_agent`] to wait for the guest.
    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, BootError>;
}

/// A running VM. Dropping it destroys the VM and everything it created.
pub trait Vm: Send {
    /// Opens a stream to a guest vsock port (the agent's, usually).
    fn connect(&self, port: u32) -> std::io::Result<UnixStream>;
    /// `Some(description)` once the VM has stopped.
    fn exited(&mut self) -> Option<String>;
    /// The last `n` lines of the serial console.
    fn serial_tail(&self, n: usize) -> Vec<String>;
    /// Waits up to `limit` for the VM to stop by itself (after the agent was
    /// asked to shut down). Returns false if it had to be killed.
    fn wait_exit(&mut self, limit: Duration) -> bool;
    /// For a clone restored from a snapshot: its generation and identity,
    /// which [`wait_for_agent`] announces to the agent before anything else
    /// (so it reseeds its RNG, sets its clock, takes the identity).
    fn clone_identity(&self) -> Option<(u64, String)> {
        None
    }
    /// A session with the agent that the backend already opened (and, for
    /// a clone, announced the restore on) while it checked the VM; taken
    /// by [`wait_for_agent`] instead of connecting again.
    fn take_ready_session(&mut self) -> Option<AgentSession> {
        None
    }
}

/// The backend `auto` picks on this host (see [`select`]).
pub fn default_backend() -> Result<Box<dyn Backend>, BootError> {
    match select::auto_selection().pick {
        select::AutoPick::Kvm => Ok(Box::new(kvm::KvmBackend::new())),
        select::AutoPick::QemuTcg => qemu_tcg_backend(),
    }
}

/// QEMU with software emulation (TCG) and our own vsock and disk devices.
pub fn qemu_tcg_backend() -> Result<Box<dyn Backend>, BootError> {
    qemu_with(qemu::Accel::Tcg)
}

/// `--backend qemu`: QEMU with KVM acceleration where KVM runs guest ring 0
/// natively (VT-x/AMD-V), with TCG elsewhere (no KVM, or PVM, which would
/// emulate the guest kernel far slower than TCG translates it).
pub fn qemu_backend() -> Result<Box<dyn Backend>, BootError> {
    qemu_with(qemu_accel())
}

/// The accelerator `--backend qemu` uses on this host.
pub fn qemu_accel() -> qemu::Accel {
    match select::auto_selection().pick {
        select::AutoPick::Kvm => qemu::Accel::Kvm,
        select::AutoPick::QemuTcg => qemu::Accel::Tcg,
    }
}

fn qemu_with(accel: qemu::Accel) -> Result<Box<dyn Backend>, BootError> {
    let qemu = qemu::QemuBackend::locate(
        accel,
        qemu::VsockProvider::Builtin,
        qemu::DiskProvider::Builtin,
    )?;
    Ok(Box::new(qemu))
}

/// The backend named by `RUNNER_BACKEND` (`auto`, `qemu` or `kvm`, as
/// `--backend` takes them; unset means `auto`). Tests boot through this, so
/// one suite runs against either backend.
pub fn from_env() -> Result<Box<dyn Backend>, BootError> {
    match std::env::var("RUNNER_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("auto") => default_backend(),
        Ok("qemu") => qemu_backend(),
        Ok("kvm") => Ok(Box::new(kvm::KvmBackend::new())),
        Ok(other) => Err(BootError::Setup(format!(
            "RUNNER_BACKEND={other} is not a backend (expected auto, qemu or kvm)"
        ))),
    }
}

/// How many console lines a boot error carries.
pub const SERIAL_TAIL_LINES: usize = 30;

/// Polls the guest until the agent completes the handshake, the VM dies, or
/// the boot timeout passes. Polling is cheap here: a refused connection is
/// one RST from the guest.
pub fn wait_for_agent(vm: &mut dyn Vm, timeout: Duration) -> Result<AgentSession, BootError> {
    if let Some(session) = vm.take_ready_session() {
        return Ok(session);
    }
    let start = Instant::now();
    let mut last_error;
    let mut pause = Duration::from_millis(5);
    loop {
        if crate::interrupt::is_interrupted() {
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

/// Tells a restored clone's agent that it is one, before any command can
/// see the snapshot's random state, clock or identity.
fn announce_clone(vm: &mut dyn Vm, mut session: AgentSession) -> Result<AgentSession, BootError> {
    if let Some((generation, id)) = vm.clone_identity() {
        session.announce_restore(generation, &id).map_err(|e| {
            BootError::Setup(format!(
                "the restored guest's agent refused its new identity: {e}"
            ))
        })?;
    }
    Ok(session)
}

/// How long to wait, after the agent's connection broke, for the VM to be
/// seen stopping, so that the report can say it did.
const EXIT_NOTICE: Duration = Duration::from_secs(3);

/// For a report after the agent went away: whether the VM stopped (power
/// off, panic) and its last console lines, which usually show why.
pub fn vm_state_report(vm: &mut dyn Vm) -> String {
    // The connection breaks a moment before the VM is seen to end; a short
    // wait lets the report name the cause rather than guess.
    let until = Instant::now() + EXIT_NOTICE;
    let mut exited = vm.exited();
    while exited.is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        exited = vm.exited();
    }
    let state = match exited {
        Some(how) => format!("the VM stopped ({how})"),
        None => "the VM is still running".to_string(),
    };
    format!(
        "{state}; last console lines:\n{}",
        vm.serial_tail(SERIAL_TAIL_LINES).join("\n")
    )
}

/// Reads the last `n` lines of a log file, lossily decoded, without loading
/// more than the end of it.
pub fn tail_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let window = 64 * 1024;
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(window)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_returns_the_last_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let text: String = (0..100).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_lines(&path, 2), vec!["line 98", "line 99"]);
        assert!(tail_lines(&dir.path().join("missing"), 5).is_empty());
    }
}
