//! Taking a snapshot of a running VM, on [`super::VmmHandle::snapshot`].
//!
//! Only a quiet machine is saved:
//! 1. every vCPU is paused, so no guest code runs from here on: no IPI
//!    between vCPUs, no queue notification;
//! 2. the devices catch up: a queue notification that KVM signalled before
//!    the pause, but that the event loop had not read yet, would otherwise
//!    be lost with the snapshot. The device's saved queue position would
//!    then stay behind the driver's, and with `VIRTIO_RING_F_EVENT_IDX` a
//!    driver that already notified for that position does not notify again:
//!    a restored clone's queue never moves (its vsock TX stuck: a dead
//!    snapshot). So every pending notification is drained and every queue
//!    processed;
//! 3. if that left a device busy (it answered with something for the
//!    guest), the vCPUs run on and the event loop tries again later;
//! 4. otherwise every vCPU, the VM and every device are saved together.

use std::sync::mpsc;
use std::time::Duration;

use super::{ExitReason, Vmm};
use crate::error::{Error, Result};
use crate::memory;
use crate::snapshot::vcpu_state::VcpuState;
use crate::snapshot::vm_state::VmState;
use crate::snapshot::{file, SnapshotState};
use crate::vcpu::{VcpuEvent, VcpuThread};

/// How long kicked vCPUs get to leave KVM_RUN, and paused ones to save
/// themselves. A kick always ends KVM_RUN; this only bounds a host that is
/// stuck.
const VCPU_ANSWER_TIME: Duration = Duration::from_secs(30);

/// What one attempt at a snapshot came to.
pub(super) enum Attempt {
    /// The VM ended: the snapshot was written or failed, or the guest
    /// ended the VM first.
    Ended(ExitReason),
    /// A device was still busy once the vCPUs had stopped; they run on.
    Busy(String),
}

impl Vmm {
    /// Pauses the vCPUs, lets the devices catch up, and saves everything if
    /// no device is busy then. With `last_chance` a busy device does not
    /// stop the attempt: saving fails with its reason instead.
    pub(super) fn try_snapshot(
        &self,
        rx: &mpsc::Receiver<(usize, VcpuEvent)>,
        threads: &[VcpuThread],
        last_chance: bool,
    ) -> Attempt {
        if let Err(ended) = pause_vcpus(rx, threads) {
            return Attempt::Ended(ended);
        }
        self.catch_up_devices();
        if let Some(busy) = self.snapshot_blocker() {
            if !last_chance {
                for t in threads {
                    t.control.request_resume();
                }
                return Attempt::Busy(busy);
            }
        }
        Attempt::Ended(self.save_paused(rx, threads))
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

    /// Step 2 of the module docs; the vCPUs are paused.
    fn catch_up_devices(&self) {
        for slot in &self.virtio {
            let mut transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            let positions = transport.queue_positions();
            for (queue, evt) in slot.queue_evts.iter().enumerate() {
                // Non-blocking: Ok only if KVM signalled since the last read.
                if evt.read().is_ok() {
                    let position = positions.get(queue).copied().flatten();
                    tracing::debug!(
                        device = transport.device_type(),
                        queue,
                        position = %position.map(|p| p.to_string()).unwrap_or_default(),
                        "snapshot: a queue had work the vCPUs left before they stopped \
                         (a notification not yet read); processed before saving"
                    );
                }
            }
            transport.catch_up();
        }
    }

    /// Saves every paused vCPU, then the VM, the devices and memory.
    fn save_paused(
        &self,
        rx: &mpsc::Receiver<(usize, VcpuEvent)>,
        threads: &[VcpuThread],
    ) -> ExitReason {
        for t in threads {
            t.control.request_save();
        }
        let mut saved: Vec<Option<VcpuState>> = threads.iter().map(|_| None).collect();
        while saved.iter().any(Option::is_none) {
            match rx.recv_timeout(VCPU_ANSWER_TIME) {
                Ok((index, VcpuEvent::Saved(state))) => saved[index] = Some(*state),
                Ok((index, other)) => return unexpected(index, other, "saving"),
                Err(_) => return not_answering("save themselves"),
            }
        }
        let vcpus = saved.into_iter().flatten().collect();
        match self.write_snapshot(vcpus) {
            Ok(()) => ExitReason::Snapshotted,
            Err(e) => ExitReason::SnapshotFailed(e.to_string()),
        }
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
        let encoded = state.encode().map_err(|e| Error::Snapshot(e.to_string()))?;
        let memory_len = u64::from(self.config.memory.size_mib) << 20;
        file::write(out, &target.identity, &encoded, memory_len, |file, at| {
            memory::save_guest_memory(&self.mem, file, at)
        })?;
        tracing::debug!(path = %target.path.display(), state_bytes = encoded.len(), "snapshot written");
        Ok(())
    }
}

/// Step 1 of the module docs: kicks every vCPU out of KVM_RUN and waits
/// until all have paused. Any other news from a vCPU ends the VM with it.
fn pause_vcpus(
    rx: &mpsc::Receiver<(usize, VcpuEvent)>,
    threads: &[VcpuThread],
) -> std::result::Result<(), ExitReason> {
    for t in threads {
        t.control.request_pause();
        t.kick();
    }
    let mut paused = vec![false; threads.len()];
    while paused.contains(&false) {
        match rx.recv_timeout(VCPU_ANSWER_TIME) {
            Ok((index, VcpuEvent::Paused)) => paused[index] = true,
            Ok((index, other)) => return Err(unexpected(index, other, "pausing")),
            Err(_) => return Err(not_answering("pause")),
        }
    }
    Ok(())
}

/// A vCPU that reported something else while it was to pause or save: the
/// guest ended (or a vCPU failed) at that moment, which is how the VM
/// ended, and there is no snapshot.
fn unexpected(index: usize, event: VcpuEvent, doing: &str) -> ExitReason {
    event.exit_reason(index).unwrap_or_else(|| {
        ExitReason::SnapshotFailed(format!(
            "vCPU {index} stopped while {doing} for the snapshot"
        ))
    })
}

fn not_answering(what: &str) -> ExitReason {
    ExitReason::SnapshotFailed(format!(
        "the vCPUs did not {what} within {}s",
        VCPU_ANSWER_TIME.as_secs()
    ))
}
