//! The machine's face: a [`Backend`] boots a VM from a [`VmSpec`] and hands
//! back a [`Vm`] whose agent can be reached over vsock. Everything above
//! (sessions, the scheduler) is the same whichever backend runs the guest.

use std::any::Any;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::BootError;

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
    /// The VM's NIC, if any ([`crate::network::Nic`]).
    pub network: crate::network::Nic,
    /// A second NIC on the private segment of a job and its services
    /// ([`crate::network::segment`]).
    pub segment: Option<std::sync::Arc<crate::network::segment::SegmentNic>>,
    /// What a snapshot of this VM is taken after, beyond its agent's first
    /// answer; its clones start from there (`None`: a freshly booted
    /// guest). Backends without snapshots ignore it: the VM boots, and the
    /// layer above sees no restore (`Vm::restore_generation`).
    pub prepare: Option<std::sync::Arc<dyn Preparation>>,
    /// Cache volumes, as extra virtio-blk disks after the root disk (which
    /// stays the guest's `/dev/vda`), in this order.
    pub caches: Vec<CacheDisk>,
}

/// A cache volume: `base` read-only, the guest's writes kept in `layer`.
#[derive(Clone, Debug)]
pub struct CacheDisk {
    /// The virtio-blk serial the agent finds the disk by: `cache0`, `cache1`, ...
    pub serial: String,
    /// The image the disk reads where the guest has not written (never written to).
    pub base: PathBuf,
    /// An existing, empty file (created by the store) that becomes the layer.
    pub layer: PathBuf,
}

/// The serial log cap used unless configured otherwise.
pub const DEFAULT_SERIAL_LOG_LIMIT: u64 = capped_log::DEFAULT_LOG_LIMIT;

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

/// A backend knows how to start VMs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts the VM. It returns as soon as the VM runs; the layer that
    /// speaks the agent's protocol waits for the guest.
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
    /// For a clone restored from a snapshot: its restore generation, which
    /// must be announced to the agent, with a new identity, before anything
    /// else (so it reseeds its RNG, sets its clock, takes the identity).
    fn restore_generation(&self) -> Option<u64> {
        None
    }
    /// The CPU time its vCPUs have used so far, from the host; `None` if
    /// the backend cannot tell. Read before the VM is dropped.
    fn cpu_time(&self) -> Option<Duration> {
        None
    }
    /// What its NIC's guest touched so far (every destination, allowed or
    /// not, with names and bytes), from the host; `None` without a NIC.
    fn network_use(&mut self) -> Option<crate::network::EgressReport> {
        None
    }
    /// The bytes the guest has written to its root disk so far, as our
    /// block device counts them; `None` if the backend's disk is not ours.
    fn disk_written(&self) -> Option<u64> {
        None
    }
    /// The agent connection an [`AgentProbe`] opened (and, for a clone,
    /// announced the restore on) while the backend checked the VM; to be
    /// used instead of connecting again.
    fn take_answered_agent(&mut self) -> Option<AnsweredAgent> {
        None
    }
}

/// An agent connection opened by an [`AgentProbe`]: the machine keeps it
/// for the job without reading it.
pub type AnsweredAgent = Box<dyn Any + Send>;

/// What the machine asks of the layer that speaks the guest agent's
/// protocol, which it does not: warm start must tell a live clone from a
/// dead one before it trusts a snapshot.
pub trait AgentProbe: Send + Sync + std::fmt::Debug {
    /// Waits up to `limit` for `vm`'s agent to answer (a clone's after it
    /// took the restore announcement).
    fn answer(&self, vm: &mut dyn Vm, limit: Duration) -> Result<AnsweredAgent, BootError>;
    /// Runs `argv` in the guest through `agent`, within `limit`; `Err`
    /// says why it did not succeed.
    fn run(&self, agent: &mut AnsweredAgent, argv: &[&str], limit: Duration) -> Result<(), String>;
}

/// What a VM does, once its agent answered, before a snapshot of it is
/// taken, so that its clones start from there: a service's `run` until
/// its `ready` passed. The layer above speaks the agent's protocol, as for
/// [`AgentProbe`].
pub trait Preparation: Send + Sync + std::fmt::Debug {
    /// What the prepared guest depends on besides its images and size:
    /// part of the snapshot's identity.
    fn identity(&self) -> String;
    /// Prepares `vm`, whose agent answered; returns with every agent
    /// connection it opened closed (a snapshot holds none).
    fn prepare(&self, vm: &mut dyn Vm) -> Result<(), Unprepared>;
}

/// Why a VM was not prepared for its snapshot.
#[derive(Debug)]
pub enum Unprepared {
    /// Not this time: its job boots cold, a later one tries again.
    Failed(String),
    /// Never, as it is: until its identity changes, its jobs boot cold
    /// without trying.
    Never(String),
}

/// How many console lines a boot error carries.
pub const SERIAL_TAIL_LINES: usize = 30;

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
