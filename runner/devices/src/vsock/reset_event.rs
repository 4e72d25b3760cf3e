//! The transport reset a restored vsock device owes the guest.
//!
//! A restored guest still believes in whatever its driver knew, so the
//! device first sends `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2
//! §5.10.6.5) on the event queue: the driver resets its connected sockets and
//! re-reads the guest CID. Packets for the guest wait until the driver has
//! handled the event, which it shows by posting a new event buffer (Linux's
//! `virtio_transport_event_work` handles each event, then refills and
//! kicks); otherwise a connection the host opens right after the restore
//! could reach the guest first and be reset by the event.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::bounded::RateLimiter;
use crate::queue::pop_or_arm;
use crate::virtio::{DeviceContext, DeviceError};

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

impl ResetEvent {
    /// Moves the owed transport reset along on event queue `queue`: sends
    /// it if an event buffer is there, or notices that the driver handled
    /// it. Returns whether packets may go to the guest.
    pub(super) fn advance<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
        queue: u16,
        warnings: &RateLimiter,
    ) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        match *self {
            ResetEvent::None => Ok(true),
            ResetEvent::Sent { avail_idx } => {
                let Some(q) = ctx.queues.queue_mut(queue) else {
                    return Ok(false);
                };
                if q.avail_idx(mem, Ordering::Acquire)? == avail_idx {
                    return Ok(false);
                }
                tracing::debug!("vsock: the driver handled the transport reset");
                *self = ResetEvent::None;
                Ok(true)
            }
            ResetEvent::Pending => {
                if self.send(ctx, queue, warnings)? {
                    ctx.notify_used(queue)?;
                }
                Ok(false)
            }
        }
    }

    /// Puts the event into the first usable event buffer, if any; returns
    /// whether the used ring changed.
    fn send<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
        queue: u16,
        warnings: &RateLimiter,
    ) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        let Some(q) = ctx.queues.queue_mut(queue) else {
            return Ok(false);
        };
        let mut used = false;
        // None: the driver's next event buffer brings a kick.
        while let Some(chain) = pop_or_arm(q, mem, false)? {
            let head = chain.head_index();
            match write_event(mem, chain) {
                Ok(len) => {
                    q.add_used(mem, head, len)?;
                    let avail_idx = q.avail_idx(mem, Ordering::Acquire)?;
                    kick_when_refilled(q, mem, avail_idx)?;
                    *self = ResetEvent::Sent { avail_idx };
                    tracing::debug!("vsock: transport reset sent to the restored guest");
                    return Ok(true);
                }
                Err(why) => {
                    crate::warn_limited!(warnings, "vsock: returning unusable event buffer: {why}");
                    q.add_used(mem, head, 0)?;
                    used = true;
                }
            }
        }
        Ok(used)
    }
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
