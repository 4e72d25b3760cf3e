//! The transport-neutral interface between a virtio device model and whatever
//! carries it to the guest.
//!
//! Two transports drive the same models:
//! - the virtio-mmio transport of the built-in VMM (`runner-vmm`), which owns the
//!   [`Queue`]s it configured from MMIO register writes and raises interrupts
//!   through an irqfd;
//! - the vhost-user adapter (`runner-vhost`), where `vhost-user-backend` owns the
//!   queues inside its vrings and interrupts are writes to each vring's call eventfd.
//!
//! Because the queues live in different places in each transport, a device never
//! keeps them: the transport *lends* them for the length of one call through a
//! [`DeviceContext`], together with the guest memory and an [`Interrupt`] sink.
//! This also means a memory-table update (vhost-user `SET_MEM_TABLE`) needs no
//! device cooperation: the next call simply carries the new memory.
//!
//! The life of a device, as seen by a transport:
//! 1. read [`VirtioDevice::device_type`], [`VirtioDevice::queue_max_sizes`],
//!    [`VirtioDevice::features`] and the config space to present the device;
//! 2. pass the features the driver accepted to [`VirtioDevice::ack_features`];
//! 3. once the driver is ready (mmio `DRIVER_OK`, vhost-user rings started) call
//!    [`VirtioDevice::activate`];
//! 4. on every queue notification call [`VirtioDevice::process_queue`]; whenever
//!    [`VirtioDevice::backend_fd`] (if any) is readable call
//!    [`VirtioDevice::process_backend`];
//! 5. on a driver reset call [`VirtioDevice::reset`], after which the device is
//!    back at step 2.
//!
//! Snapshots: with the VM paused, [`VirtioDevice::save_state`] returns the
//! device's own state; a fresh device created from the same configuration in
//! another process takes it through [`VirtioDevice::restore_state`] in place of
//! steps 2 and 3, and continues at step 4 once the transport restored its
//! queues.

use std::io;
use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueT};

use crate::common::VirtioCommon;
use vm_memory::GuestMemory;

use crate::snapshot::error::{device_name, SnapshotError};
use crate::snapshot::state::DeviceState;

/// How a device tells the driver that something happened.
///
/// Implemented by the transport: irqfd plus interrupt-status register for
/// virtio-mmio, the vring call eventfd for vhost-user.
pub trait Interrupt {
    /// The device put buffers in the used ring of queue `queue_index`.
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()>;

    /// The device configuration space changed.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// The virtqueues a transport lends a device for one call.
///
/// `None` means the queue does not exist or the driver has not made it usable
/// (not ready, or a disabled vhost-user ring); the device must then leave it alone.
pub trait QueueSet {
    /// The queue at `index`, if it is usable right now.
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue>;
}

fn usable(queue: Option<&mut Queue>) -> Option<&mut Queue> {
    queue.filter(|q| q.ready())
}

/// For transports that own their queues (virtio-mmio).
impl QueueSet for Vec<Queue> {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        usable(self.get_mut(usize::from(index)))
    }
}

impl<const N: usize> QueueSet for [Queue; N] {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        usable(self.get_mut(usize::from(index)))
    }
}

/// For transports that lend queues held elsewhere (vhost-user vrings), with
/// `None` for the ones the driver has not enabled.
impl QueueSet for Vec<Option<&mut Queue>> {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        usable(
            self.get_mut(usize::from(index))
                .and_then(|q| q.as_deref_mut()),
        )
    }
}

/// Everything a device may touch while it handles one event.
pub struct DeviceContext<'a, M: GuestMemory> {
    /// Guest memory as of this call.
    pub mem: &'a M,
    /// The device's queues, indexed like [`VirtioDevice::queue_max_sizes`].
    pub queues: &'a mut dyn QueueSet,
    /// Where used-buffer notifications go.
    pub interrupt: &'a dyn Interrupt,
}

impl<'a, M: GuestMemory> DeviceContext<'a, M> {
    /// Bundles the parts of a call context.
    pub fn new(mem: &'a M, queues: &'a mut dyn QueueSet, interrupt: &'a dyn Interrupt) -> Self {
        DeviceContext {
            mem,
            queues,
            interrupt,
        }
    }

    /// Interrupts the driver for queue `index` unless it asked not to be
    /// (`VIRTQ_AVAIL_F_NO_INTERRUPT` or the `used_event` of EVENT_IDX).
    pub fn notify_used(&mut self, index: u16) -> Result<(), DeviceError> {
        let Some(queue) = self.queues.queue_mut(index) else {
            return Ok(());
        };
        if queue.needs_notification(self.mem)? {
            self.interrupt
                .signal_used_queue(index)
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }
}

/// Copies `data.len()` bytes of a device's configuration space, starting at
/// `offset`, into `data`; bytes beyond its end read as zero, as the virtio
/// spec asks of [`VirtioDevice::read_config`].
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        let at = offset.saturating_add(i as u64);
        *byte = usize::try_from(at)
            .ok()
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// Failures a device reports to its transport. None of them is caused by a
/// single bad packet (those are dropped and logged); they mean the queue or the
/// host side is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The queue's rings could not be accessed in guest memory.
    #[error("virtqueue access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Raising the interrupt failed.
    #[error("cannot signal the driver: {0}")]
    Interrupt(#[source] io::Error),
    /// The host side of the device (sockets, epoll, files) failed.
    #[error("device backend failed: {0}")]
    Backend(#[source] io::Error),
    /// The transport asked for a queue the device does not have.
    #[error("device has no queue {0}")]
    NoSuchQueue(u16),
    /// The driver's avail index shows buffers whose ring entries cannot be
    /// read: the queue can never be served.
    #[error("the avail ring shows buffers whose entries cannot be read")]
    UnreadableAvailRing,
}

/// A virtio device model, independent of its transport.
///
/// `M` is the guest memory type of the transport, for example `GuestMemoryMmap`
/// for the VMM or `GuestMemoryMmap<B>` behind vhost-user-backend's
/// `GuestMemoryAtomic`; device models implement this for every `M: GuestMemory`.
pub trait VirtioDevice<M: GuestMemory>: Send {
    /// The device's id, queue sizes, offered and acked features and
    /// activation, which the feature and queue methods below read and
    /// change; a device keeps one and lends it here.
    fn virtio(&self) -> &VirtioCommon;

    /// The same, to change.
    fn virtio_mut(&mut self) -> &mut VirtioCommon;

    /// Virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32 {
        self.virtio().device_type()
    }

    /// Maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.virtio().queue_max_sizes()
    }

    /// Feature bits the device offers.
    fn features(&self) -> u64 {
        self.virtio().features()
    }

    /// Records the features the driver accepted. Bits that were not offered are
    /// ignored.
    fn ack_features(&mut self, features: u64) {
        self.virtio_mut().ack_features(features);
    }

    /// Features currently accepted by the driver.
    fn acked_features(&self) -> u64 {
        self.virtio().acked_features()
    }

    /// Reads `data.len()` bytes of the configuration space at `offset`. Bytes
    /// beyond the end of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the configuration space. By default it is read-only: the write
    /// is logged and ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::warn_limited!(
            self.warnings(),
            device_type = self.device_type(),
            offset,
            len = data.len(),
            "virtio: ignoring write to read-only config space"
        );
    }

    /// Where this device's guest-triggered warnings are rate-limited; each
    /// device should have its own, so one VM cannot silence another. The
    /// default is one shared by all devices that keep none.
    fn warnings(&self) -> &crate::bounded::RateLimiter {
        static SHARED: std::sync::OnceLock<crate::bounded::RateLimiter> =
            std::sync::OnceLock::new();
        SHARED.get_or_init(Default::default)
    }

    /// The driver finished setting the device up; queues may now be used.
    /// A device with more to do than noting it overrides this and calls
    /// [`VirtioCommon::activate`] itself.
    fn activate(&mut self) -> Result<(), DeviceError> {
        self.virtio_mut().activate();
        Ok(())
    }

    /// The driver notified queue `queue_index`.
    fn process_queue(
        &mut self,
        queue_index: u16,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError>;

    /// A file descriptor that becomes readable when the device has host-side
    /// work ([`VirtioDevice::process_backend`]); typically an epoll fd. It is
    /// level-triggered: it stays readable until the work is picked up, and a
    /// device must not leave it readable when it cannot make progress.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }

    /// Handles whatever made [`VirtioDevice::backend_fd`] readable.
    fn process_backend(&mut self, _ctx: &mut DeviceContext<'_, M>) -> Result<(), DeviceError> {
        Ok(())
    }

    /// The driver reset the device: drop all in-flight state, forget acked
    /// features. The device can be set up and activated again afterwards.
    /// A device with in-flight state overrides this and calls
    /// [`VirtioCommon::reset`] itself.
    fn reset(&mut self) {
        self.virtio_mut().reset();
    }

    /// The device's own state for a snapshot (the transport saves it with
    /// its own, in the encoding of [`crate::snapshot::codec`]). Called while
    /// the VM is paused, so no queue is processed meanwhile; the transport
    /// saves the queues themselves.
    ///
    /// Fails with [`SnapshotError::Busy`] when the device holds something a
    /// snapshot cannot carry right now (an open connection), saying what, and
    /// with [`SnapshotError::Unsupported`] (the default) when it never can.
    fn save_state(&self) -> Result<DeviceState, SnapshotError> {
        Err(SnapshotError::Unsupported {
            device: device_name(self.device_type()),
            reason: "this device model cannot save its state",
        })
    }

    /// Why [`VirtioDevice::save_state`] would fail with
    /// [`SnapshotError::Busy`] right now, if it would; cheap, so a VMM can
    /// ask it repeatedly while it waits for the device to settle.
    fn snapshot_blocker(&self) -> Option<SnapshotError> {
        None
    }

    /// Loads a state from [`VirtioDevice::save_state`] into this device,
    /// which must be freshly created with the same configuration, *instead
    /// of* feature negotiation and [`VirtioDevice::activate`]: afterwards it
    /// behaves as the saved device did (same acked features, activated if it
    /// was), ready for the queues the transport restores.
    ///
    /// `state` is untrusted (decoded from a file, within the codec's
    /// bounds): a state of another device type, or one that does not match
    /// this device's configuration, is refused with
    /// [`SnapshotError::Invalid`]. After an error the device may be partly
    /// restored and must be discarded.
    ///
    /// A device that owes the guest something after a restore (vsock's
    /// transport reset) makes its [`VirtioDevice::backend_fd`] readable, so
    /// the transport's first [`VirtioDevice::process_backend`] call sends it;
    /// that call should come once the transport has restored the queues
    /// (until then the device waits for the next call or kick).
    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), SnapshotError> {
        Err(SnapshotError::Unsupported {
            device: device_name(self.device_type()),
            reason: "this device model cannot restore a saved state",
        })
    }
}
