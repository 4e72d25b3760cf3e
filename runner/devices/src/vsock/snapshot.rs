//! The vsock device's state for VM snapshots, and the transport reset a
//! restored device owes the guest.
//!
//! As in Firecracker, a snapshot holds no connection: a stream's other end is
//! a host socket of the process that took the snapshot, which a clone in a
//! fresh process cannot have. So saving is refused while any connection (or
//! anything else for the guest) exists, and the state is only the acked
//! features, the activation and the guest CID.
//! Buffers the driver queued on the tx queue that the device had not
//! processed yet are not device state: they are guest memory and queue
//! positions, which the transport restores, and the restored device
//! processes them like any others (a packet for a connection that no longer
//! exists gets an RST).
//!
//! A restored guest still believes in whatever its driver knew, so the
//! device first sends `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2
//! §5.10.6.5) on the event queue: the driver resets its connected sockets and
//! re-reads the guest CID. Packets for the guest wait until the driver has
//! handled the event, which it shows by posting a new event buffer (Linux's
//! `virtio_transport_event_work` handles each event, then refills and
//! kicks); otherwise a connection the host opens right after the restore
//! could reach the guest first and be reset by the event.
//!
//! Body format version 1, after the header of [`crate::snapshot`]
//! (little-endian):
//!
//! | bytes | field                                            |
//! |-------|--------------------------------------------------|
//! | 8     | features the driver acked                        |
//! | 1     | 1 if the driver had activated the device, else 0 |
//! | 8     | the guest CID (must equal the new device's)      |

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::device::{VsockDevice, EVENT_QUEUE, FEATURES};
use crate::snapshot::{SnapshotError, StateReader, StateWriter};
use crate::virtio::{pop_chain, DeviceContext, DeviceError};

/// Version of the body format above.
pub const STATE_VERSION: u8 = 1;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only event id in virtio 1.2.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size of `struct virtio_vsock_event`.
pub const EVENT_SIZE: usize = 4;

/// Where a device stands with the transport reset it owes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetEvent {
    /// Nothing owed.
    None,
    /// Restored: the event goes out at the first event buffer.
    Pending,
    /// Sent when the driver's event queue had avail index `avail_idx`;
    /// packets for the guest wait until it moves (the driver re-posted the
    /// buffer after handling the event).
    Sent { avail_idx: Wrapping<u16> },
}

/// A saved state, decoded and checked.
pub(crate) struct Decoded {
    pub acked_features: u64,
    pub activated: bool,
}

/// Decodes `state` for a device with guest CID `guest_cid`, changing nothing.
pub(crate) fn decode(state: &[u8], guest_cid: u64) -> Result<Decoded, SnapshotError> {
    let mut r = StateReader::open(state, VIRTIO_ID_VSOCK, STATE_VERSION)?;
    let acked_features = r.u64("the acked features")?;
    let activated = r.bool("the activated flag")?;
    let saved_cid = r.u64("the guest CID")?;
    if saved_cid != guest_cid {
        return Err(r.invalid(format!(
            "the saved device has guest CID {saved_cid}, this one {guest_cid}: the guest's \
             driver would keep addressing packets from the old one"
        )));
    }
    if acked_features & !FEATURES != 0 {
        return Err(r.invalid(format!(
            "the acked features {acked_features:#x} include some never offered ({FEATURES:#x})"
        )));
    }
    r.finish()?;
    Ok(Decoded {
        acked_features,
        activated,
    })
}

/// Writes the event into the device-writable part of `chain`; returns the
/// used length, or why the buffer cannot take it.
fn write_event<M, T>(mem: &M, chain: DescriptorChain<T>) -> Result<u32, &'static str>
where
    M: GuestMemory,
    T: Deref,
    T::Target: GuestMemory,
{
    // Where the 4 bytes go, checked before anything is written, so a
    // buffer too small is returned untouched.
    let mut parts = [(GuestAddress(0), 0usize); EVENT_SIZE];
    let (mut count, mut room) = (0, 0);
    for desc in chain.writable() {
        if room == EVENT_SIZE {
            break;
        }
        let n = (desc.len() as usize).min(EVENT_SIZE - room);
        if n > 0 {
            parts[count] = (desc.addr(), n);
            count += 1;
            room += n;
        }
    }
    if room < EVENT_SIZE {
        return Err("the event buffer is smaller than the 4-byte event");
    }
    let event = EVENT_TRANSPORT_RESET.to_le_bytes();
    let mut done = 0;
    for &(addr, n) in &parts[..count] {
        mem.write_slice(&event[done..done + n], addr)
            .map_err(|_| "the event buffer is outside guest memory")?;
        done += n;
    }
    Ok(EVENT_SIZE as u32)
}

/// Asks for a kick once the driver makes a buffer available past
/// `avail_idx`. With EVENT_IDX the driver kicks only when its avail index
/// crosses `avail_event`, and `enable_notification` puts that where the
/// device stopped popping, which a driver that keeps several event buffers
/// posted is long past; so it is set from `avail_idx` instead, for this call.
fn kick_when_refilled<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    avail_idx: Wrapping<u16>,
) -> Result<(), virtio_queue::Error> {
    let next = queue.next_avail();
    queue.set_next_avail(avail_idx.0);
    let armed = queue.enable_notification(mem);
    queue.set_next_avail(next);
    armed.map(|_| ())
}

impl VsockDevice {
    /// What keeps the device from being saved now (see the muxer's).
    pub(super) fn blocker(&self) -> Option<SnapshotError> {
        self.muxer
            .snapshot_blocker()
            .map(|why| SnapshotError::Busy {
                device: "vsock",
                reason: format!("{why}; a snapshot needs none"),
            })
    }

    pub(super) fn save(&self) -> Result<Vec<u8>, SnapshotError> {
        if let Some(busy) = self.blocker() {
            return Err(busy);
        }
        let mut w = StateWriter::new(VIRTIO_ID_VSOCK, STATE_VERSION);
        w.put_u64(self.acked_features);
        w.put_bool(self.activated);
        w.put_u64(self.config.guest_cid);
        Ok(w.finish())
    }

    pub(super) fn restore(&mut self, state: &[u8]) -> Result<(), SnapshotError> {
        if self.activated || self.acked_features != 0 || self.muxer.snapshot_blocker().is_some() {
            return Err(SnapshotError::Invalid {
                device: "vsock",
                reason: "a restore needs a freshly created device, and this one was already \
                         set up or used"
                    .into(),
            });
        }
        let decoded = decode(state, self.config.guest_cid)?;
        self.acked_features = decoded.acked_features;
        self.activated = decoded.activated;
        if self.activated {
            self.reset_event = ResetEvent::Pending;
            // The transport may have nothing else to call us for soon.
            self.muxer.wake().map_err(|source| SnapshotError::Io {
                device: "vsock",
                what: "cannot wake the device to send the transport reset".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the transport reset is still owed or not yet handled by the
    /// driver (packets for the guest wait meanwhile).
    pub fn transport_reset_outstanding(&self) -> bool {
        self.reset_event != ResetEvent::None
    }

    /// Moves the owed transport reset along: sends it if an event buffer is
    /// there, or notices that the driver handled it. Returns whether packets
    /// may go to the guest.
    pub(super) fn advance_reset_event<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        match self.reset_event {
            ResetEvent::None => Ok(true),
            ResetEvent::Sent { avail_idx } => {
                let Some(queue) = ctx.queues.queue_mut(EVENT_QUEUE) else {
                    return Ok(false);
                };
                if queue.avail_idx(mem, Ordering::Acquire)? == avail_idx {
                    return Ok(false);
                }
                tracing::debug!("vsock: the driver handled the transport reset");
                self.reset_event = ResetEvent::None;
                Ok(true)
            }
            ResetEvent::Pending => {
                if self.send_reset_event(ctx)? {
                    ctx.notify_used(EVENT_QUEUE)?;
                }
                Ok(false)
            }
        }
    }

    /// Puts the event into the first usable event buffer, if any; returns
    /// whether the used ring changed.
    fn send_reset_event<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.queue_mut(EVENT_QUEUE) else {
            return Ok(false);
        };
        let mut used = false;
        loop {
            let Some(chain) = pop_chain(queue, mem)? else {
                // None yet: the driver's next event buffer brings a kick.
                if queue.enable_notification(mem)? {
                    continue;
                }
                return Ok(used);
            };
            let head = chain.head_index();
            match write_event(mem, chain) {
                Ok(len) => {
                    queue.add_used(mem, head, len)?;
                    let avail_idx = queue.avail_idx(mem, Ordering::Acquire)?;
                    kick_when_refilled(queue, mem, avail_idx)?;
                    self.reset_event = ResetEvent::Sent { avail_idx };
                    tracing::debug!("vsock: transport reset sent to the restored guest");
                    return Ok(true);
                }
                Err(why) => {
                    crate::warn_limited!(
                        self.muxer.warnings(),
                        "vsock: returning unusable event buffer: {why}"
                    );
                    queue.add_used(mem, head, 0)?;
                    used = true;
                }
            }
        }
    }
}
