//! A guest running under the built-in VMM, and how its process starts it.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::interrupt::HookGuard;
use crate::network::user_nic::UserNic;
use crate::vm_process::confinement::VmIds;
use crate::vm_process::{SnapshotRole, VmProcess};
use crate::write_counter::WriteCounter;
use crate::{tail_lines, AnsweredAgent, Vm};

/// How a VM process starts its guest.
pub(super) enum Start {
    /// Boot the kernel.
    Cold,
    /// Boot the kernel, and snapshot on [`VmProcess::request_snapshot`].
    ForSnapshot(SnapshotRole),
    /// Restore a snapshot.
    Restore(SnapshotRole),
}

pub(super) struct VmPaths {
    pub(super) vsock_uds: PathBuf,
    pub(super) serial: PathBuf,
}

impl VmPaths {
    pub(super) fn new(dir: &Path) -> VmPaths {
        VmPaths {
            vsock_uds: dir.join("vsock.sock"),
            serial: dir.join("serial.log"),
        }
    }
}

/// A guest running under the built-in VMM, in its own process. Dropping it
/// kills and reaps the process, then removes the directory.
pub struct KvmVm {
    pub(super) _hook: HookGuard,
    pub(super) process: VmProcess,
    /// The NIC's egress process and passt; killed after the VM process.
    pub(super) nic: Option<UserNic>,
    /// The bytes the guest wrote to its root disk, as our device counts.
    pub(super) written: WriteCounter,
    pub(super) paths: VmPaths,
    pub(super) dir: Option<tempfile::TempDir>,
    /// A restored clone's generation, which the agent is told (with a new
    /// identity) before anything else.
    pub(super) restore_generation: Option<u64>,
    /// The agent connection warm start opened to check a clone.
    pub(super) answered_agent: Option<AnsweredAgent>,
    /// The ids its processes run as; free again once they are gone.
    pub(super) _ids: Option<VmIds>,
}

impl KvmVm {
    /// The VM's own directory (sockets, serial log); gone after drop.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    /// The serial console log.
    pub fn serial_log(&self) -> &Path {
        &self.paths.serial
    }

    /// The VM process's pid (its jail's supervisor, when it is jailed).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The pid of the process that runs the VMM: the jailed one, or the
    /// VM process itself when it is not jailed.
    pub fn vmm_pid(&self) -> u32 {
        self.process
            .jailed_pid()
            .unwrap_or_else(|| self.process.pid())
    }
}

impl Vm for KvmVm {
    fn cpu_time(&self) -> Option<Duration> {
        // runner-vmm names its vCPU threads `vcpu0`, `vcpu1`...
        crate::cpu_time::of_threads(self.vmm_pid(), "vcpu")
    }

    fn network_use(&mut self) -> Option<crate::network::EgressReport> {
        self.nic.as_mut()?.report()
    }

    fn disk_written(&self) -> Option<u64> {
        Some(self.written.bytes())
    }

    fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        // No need to track the streams for Ctrl-C: killing the VM process
        // closes its end of every connection.
        crate::hybrid_vsock::connect(&self.paths.vsock_uds, port)
    }

    fn exited(&mut self) -> Option<String> {
        self.process.exited()
    }

    fn serial_tail(&self, n: usize) -> Vec<String> {
        tail_lines(&self.paths.serial, n)
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        self.process.wait_exit(limit)
    }

    fn restore_generation(&self) -> Option<u64> {
        self.restore_generation
    }

    fn take_answered_agent(&mut self) -> Option<AnsweredAgent> {
        self.answered_agent.take()
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.process.kill();
        drop(self.nic.take());
        // Only now that nothing writes into it any more.
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                tracing::warn!("removing the VM directory: {e}");
            }
        }
    }
}
