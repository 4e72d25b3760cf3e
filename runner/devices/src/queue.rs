//! Taking buffers off a virtqueue the way every device model does, with
//! the guest's notifications handled once, here:
//!
//! - [`drain_queue`] serves a queue the driver fills with requests (block
//!   requests, vsock and net TX): notifications off while it works, every
//!   available chain handled and returned, notifications back on, and a
//!   last look for chains added meanwhile, then one interrupt;
//! - [`pop_or_arm`] is the step a device uses when it fills the driver's
//!   buffers as its own data comes (vsock and net RX, vsock's event): the
//!   next buffer, or notifications armed for when one comes.
//!
//! Both pop with [`pop_chain`], so an avail ring no device can use is an
//! error (which the transport answers with a device reset), never a spin.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use crate::virtio::{DeviceContext, DeviceError};

/// The next chain the driver made available on `queue`, if any.
///
/// Devices pop with this, not `QueueT::pop_descriptor_chain`: that answers
/// `None` for an avail ring the device cannot use as well (the driver's
/// index more than the queue's size ahead, or the ring at address 0), while
/// `enable_notification` goes on reporting entries there, so the loop
/// "pop until `None`, re-enable notifications, go on if more came" would
/// spin for ever on such a queue. Here that ring is an error, and the
/// transport asks the driver for a reset.
pub fn pop_chain<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, DeviceError> {
    Ok(queue.iter(mem)?.next())
}

/// The next chain on `queue`; when there is none, notifications are turned
/// on, and the ring looked at once more: a chain the driver added before it
/// could see them on would otherwise wait for a kick that never comes.
/// `None` means the driver will kick when it adds one.
///
/// With `quiet`, notifications go back off when that second look finds a
/// chain (the caller is draining the queue with them off).
///
/// A ring whose index shows a chain that cannot be popped even then (its
/// entry unreadable) is [`DeviceError::UnreadableAvailRing`]: trying again
/// would find the same, for ever.
pub fn pop_or_arm<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
    quiet: bool,
) -> Result<Option<DescriptorChain<&'m M>>, DeviceError> {
    if let Some(chain) = pop_chain(queue, mem)? {
        return Ok(Some(chain));
    }
    if !queue.enable_notification(mem)? {
        return Ok(None);
    }
    if quiet {
        queue.disable_notification(mem)?;
    }
    match pop_chain(queue, mem)? {
        Some(chain) => Ok(Some(chain)),
        None => Err(DeviceError::UnreadableAvailRing),
    }
}

/// What a device did with one chain [`drain_queue`] gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Done, with this many bytes written into the chain (the used
    /// element's length); go on with the next one.
    Next(u32),
    /// Done likewise, but the device cannot take another chain now (its
    /// host side is full): the rest stay on the queue with notifications
    /// off, and the device drains again by itself once it can (a backend
    /// event), since no kick will come.
    Pause(u32),
}

/// Serves every chain the driver made available on queue `index` with
/// `serve`, in order, returns each to the driver with the length `serve`
/// reports, and interrupts the driver once at the end if any was returned
/// (unless it asked not to be). A queue the driver has not made usable is
/// left alone.
///
/// Notifications are off while it works (the driver need not kick for
/// chains that will be seen anyway) and back on when the queue is empty,
/// with a last look for chains added before they were ([`pop_or_arm`]).
pub fn drain_queue<M, F>(
    ctx: &mut DeviceContext<'_, M>,
    index: u16,
    mut serve: F,
) -> Result<(), DeviceError>
where
    M: GuestMemory,
    F: FnMut(&M, DescriptorChain<&M>) -> Served,
{
    let mem = ctx.mem;
    let Some(queue) = ctx.queues.queue_mut(index) else {
        return Ok(());
    };
    let mut used = false;
    queue.disable_notification(mem)?;
    while let Some(chain) = pop_or_arm(queue, mem, true)? {
        let head = chain.head_index();
        let served = serve(mem, chain);
        let (Served::Next(len) | Served::Pause(len)) = served;
        queue.add_used(mem, head, len)?;
        used = true;
        if matches!(served, Served::Pause(_)) {
            break;
        }
    }
    if used {
        ctx.notify_used(index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
