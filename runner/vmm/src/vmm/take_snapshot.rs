//! Taking a snapshot of a running VM, on [`super::VmmHandle::snapshot`].

use std::sync::mpsc;
use std::time::Duration;

use super::{ExitReason, Vmm};
use crate::error::{Error, Result};
use crate::memory;
use crate::snapshot::vcpu_state::VcpuState;
use crate::snapshot::vm_state::VmState;
use crate::snapshot::{file, SnapshotState};
use crate::vcpu::{VcpuEvent, VcpuThread};

/// How long kicked vCPUs get to leave KVM_RUN and save themselves. A kick
/// always ends KVM_RUN; this only bounds a host that is stuck.
const SAVE_TIME: Duration = Duration::from_secs(30);

impl Vmm {
    /// Stops every vCPU for good, saves the whole VM to the configured
    /// file, and says how that went. The VM cannot run on afterwards.
    pub(super) fn take_snapshot(
        &self,
        rx: &mpsc::Receiver<(usize, VcpuEvent)>,
        threads: &[VcpuThread],
    ) -> ExitReason {
        for t in threads {
            t.control.request_save();
            t.kick();
        }
        let mut saved: Vec<Option<VcpuState>> = threads.iter().map(|_| None).collect();
        while saved.iter().any(Option::is_none) {
            match rx.recv_timeout(SAVE_TIME) {
                Ok((index, VcpuEvent::Saved(state))) => saved[index] = Some(*state),
                Ok((index, other)) => {
                    // The guest ended (or a vCPU failed) as we asked: that
                    // is how the VM ended, and there is no snapshot.
                    return super::run::vcpu_exit_reason(index, other).unwrap_or_else(|| {
                        ExitReason::SnapshotFailed(format!("vCPU {index} stopped before saving"))
                    });
                }
                Err(_) => {
                    return ExitReason::SnapshotFailed(format!(
                        "the vCPUs did not stop within {}s",
                        SAVE_TIME.as_secs()
                    ))
                }
            }
        }
        let vcpus = saved.into_iter().flatten().collect();
        match self.write_snapshot(vcpus) {
            Ok(()) => ExitReason::Snapshotted,
            Err(e) => ExitReason::SnapshotFailed(e.to_string()),
        }
    }

    /// Why a device cannot be saved at this moment (a vsock connection
    /// that is still closing, say); `None` when all can. Runs between
    /// events, so no device is processing a queue.
    pub(super) fn snapshot_blocker(&self) -> Option<String> {
        self.virtio.iter().find_map(|slot| {
            let transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            transport.busy_for_snapshot()
        })
    }

    fn write_snapshot(&self, vcpus: Vec<VcpuState>) -> Result<()> {
        let (Some(target), Some(out)) = (&self.config.snapshot, &self.snapshot_file) else {
            return Err(Error::Snapshot(
                "this VM was built without a snapshot path".into(),
            ));
        };
        let mut devices = Vec::with_capacity(self.virtio.len());
        for slot in &self.virtio {
            let transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            devices.push(transport.save_state()?);
        }
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .state();
        let state = SnapshotState {
            memory_mib: self.config.memory.size_mib,
            vm: VmState::save(&self.vm)?,
            vcpus,
            serial: serial.into(),
            devices,
        };
        let json = serde_json::to_vec(&state)
            .map_err(|e| Error::Snapshot(format!("encoding the state: {e}")))?;
        let memory_len = u64::from(self.config.memory.size_mib) << 20;
        file::write(out, &target.identity, &json, memory_len, |file, at| {
            memory::save_guest_memory(&self.mem, file, at)
        })?;
        tracing::debug!(path = %target.path.display(), state_bytes = json.len(), "snapshot written");
        Ok(())
    }
}
