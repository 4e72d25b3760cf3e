//! Saving and restoring a transport for snapshots: its registers, its
//! queues' positions, and (through the device model's own
//! `save_state`/`restore_state`) the device behind it.

use std::sync::atomic::Ordering;

use runner_devices::snapshot::codec::at_most;
use runner_devices::DeviceState;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::Bytes;

use super::MmioTransport;
use crate::error::{Error, Result};

/// One queue, as `virtio_queue::QueueState` (which has no serde).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// Most queues a saved transport may hold: more than any device model has
/// (vsock's 3). Bounds what a hostile snapshot can make a restore decode.
pub const MAX_SAVED_QUEUES: usize = 16;

/// A transport's registers and queues plus its device's own state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub status: u32,
    pub activated: bool,
    pub interrupt_status: u32,
    pub config_generation: u32,
    #[serde(deserialize_with = "at_most::<MAX_SAVED_QUEUES, _, _>")]
    pub queues: Vec<SavedQueue>,
    /// `VirtioDevice::save_state`.
    pub device: DeviceState,
}

/// Where the device and the driver stand on one queue, read from the
/// transport and from the rings in guest memory: what a snapshot's
/// diagnostics print, and what proves a queue was left with work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePosition {
    /// The next avail entry the device will pop.
    pub next_avail: u16,
    /// The driver's avail index: entries before it are available.
    pub avail_idx: u16,
    /// The device's used index.
    pub next_used: u16,
    /// With EVENT_IDX: the avail index past which the driver must kick
    /// again (written by the device).
    pub avail_event: Option<u16>,
}

impl QueuePosition {
    /// Buffers the driver made available that the device has not taken.
    #[cfg(test)]
    pub(crate) fn unprocessed(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.next_avail)
    }
}

impl std::fmt::Display for QueuePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "next_avail {} avail_idx {} next_used {}",
            self.next_avail, self.avail_idx, self.next_used
        )?;
        if let Some(e) = self.avail_event {
            write!(f, " avail_event {e}")?;
        }
        Ok(())
    }
}

impl MmioTransport {
    /// Why the device cannot be saved *now*, if it is busy (it can later).
    pub fn busy_for_snapshot(&self) -> Option<String> {
        self.device.snapshot_blocker().map(|e| e.to_string())
    }

    /// Each ready queue's position (`None` for a queue not in use, or whose
    /// rings cannot be read).
    pub fn queue_positions(&self) -> Vec<Option<QueuePosition>> {
        self.queues
            .iter()
            .map(|q| {
                if !q.ready() {
                    return None;
                }
                let avail_idx = q.avail_idx(&self.mem, Ordering::Acquire).ok()?.0;
                // The avail_event field follows the used ring's entries.
                let avail_event = q.event_idx_enabled().then(|| {
                    let at = q.used_ring() + 4 + 8 * u64::from(q.size());
                    self.mem
                        .read_obj::<u16>(vm_memory::GuestAddress(at))
                        .ok()
                        .map(u16::from_le)
                });
                Some(QueuePosition {
                    next_avail: q.next_avail(),
                    avail_idx,
                    next_used: q.next_used(),
                    avail_event: avail_event.flatten(),
                })
            })
            .collect()
    }

    /// The transport's state; the VM must be paused.
    pub fn save_state(&self) -> Result<TransportState> {
        let device = self
            .device
            .save_state()
            .map_err(|e| Error::Snapshot(format!("device {}: {e}", self.device.device_type())))?;
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                SavedQueue {
                    max_size: s.max_size,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx_enabled: s.event_idx_enabled,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            activated: self.activated,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            config_generation: self.interrupt.config_generation.load(Ordering::SeqCst),
            queues,
            device,
        })
    }

    /// Puts a freshly created transport (same device, same configuration)
    /// into `state`, instead of the driver's set-up. The queues are checked
    /// against guest memory, which must already hold the restored RAM; then
    /// the device catches up with them (buffers the driver made available
    /// without a notification the device will ever see, an interrupt the
    /// driver did not acknowledge), so call this before the vCPUs run.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<()> {
        let refuse =
            |detail: String| Error::Snapshot(format!("restoring a virtio device: {detail}"));
        if state.device_type != self.device.device_type() {
            return Err(refuse(format!(
                "the snapshot has device type {} where this VM has {}",
                state.device_type,
                self.device.device_type()
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(refuse(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, fresh)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != fresh.max_size() {
                return Err(refuse(format!("queue {index} has another maximum size")));
            }
            let queue = Queue::try_from(QueueState {
                max_size: saved.max_size,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: saved.event_idx_enabled,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            })
            .map_err(|e| refuse(format!("queue {index}: {e}")))?;
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(refuse(format!(
                    "queue {index} is not valid in guest memory"
                )));
            }
            queues.push(queue);
        }
        self.device
            .restore_state(&state.device)
            .map_err(|e| refuse(e.to_string()))?;
        // A state no driver could have brought the transport into (a
        // damaged or forged file) would leave it where its own checks
        // never let a driver go.
        self.check_registers(
            state.status,
            state.activated,
            state.driver_features,
            &queues,
        )
        .map_err(refuse)?;
        self.queues = queues;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.activated = state.activated;
        self.interrupt
            .status
            .store(state.interrupt_status, Ordering::SeqCst);
        self.interrupt
            .config_generation
            .store(state.config_generation, Ordering::SeqCst);
        self.resume_after_restore();
        Ok(())
    }
}
