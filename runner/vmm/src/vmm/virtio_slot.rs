//! Where an attached virtio device sits, and what the event loop keeps of
//! it (kept apart from `virtio`, which attaches devices to a `Vmm`).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::virtio_mmio::MmioTransport;

/// Where a virtio device was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Guest physical base of its register window.
    pub base: u64,
    pub size: u64,
    /// IOAPIC pin (GSI) of its interrupt.
    pub irq: u32,
}

/// A device's transport and the fds the event loop waits on.
pub(crate) struct VirtioSlotState {
    pub transport: Arc<Mutex<MmioTransport>>,
    /// One per queue, signalled by KVM on a `QueueNotify` write.
    pub queue_evts: Vec<EventFd>,
    /// Kept open for as long as the irqfd registration.
    pub _irqfd: EventFd,
}
