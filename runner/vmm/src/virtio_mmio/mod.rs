//! Virtio-mmio (version 2) transport: the register state machine of the
//! virtio 1.x spec, section 4.2.2, driving any `runner_devices` model.
//!
//! The vCPU threads reach [`MmioTransport::read`]/[`MmioTransport::write`]
//! through MMIO exits. Queue notifications normally bypass them: KVM turns
//! each queue's `QueueNotify` write into an ioeventfd the VMM's event loop
//! waits on, which then calls [`MmioTransport::process_queue`]. Interrupts
//! go out through an irqfd, with the reason latched in `InterruptStatus`.

#[cfg(test)]
mod slot_tests;
#[cfg(test)]
mod snapshot_tests;
pub mod state;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use runner_devices::virtio::{DeviceContext, Interrupt, QueueSet, VirtioDevice};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::memory::GuestMemoryMmap;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver ("RUNR").
pub const VENDOR_ID: u32 = 0x524e_5552;
/// `InterruptStatus` bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// Interrupt sink of one transport: latch the reason, kick the irqfd.
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irqfd: EventFd,
}

impl MmioInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG_CHANGE)
    }
}

/// Lends the transport's queues to a device call.
struct LentQueues<'a>(&'a mut [Queue]);

impl QueueSet for LentQueues<'_> {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        self.0.get_mut(usize::from(index)).filter(|q| q.ready())
    }
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice<GuestMemoryMmap>>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<MmioInterrupt>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; interrupts are signalled on `irqfd`.
    pub fn new(
        device: Box<dyn VirtioDevice<GuestMemoryMmap>>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<Self, virtio_queue::Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|size| Queue::new(*size))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            interrupt: Arc::new(MmioInterrupt::new(irqfd)),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
        })
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device's host-side event fd, for the VMM's event loop.
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.device.backend_fd()
    }

    /// The device status register as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Offered features, with the transport's own VERSION_1 always set
    /// (a v2 transport only speaks to modern drivers).
    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue set-up registers are writable only between FEATURES_OK and
    /// DRIVER_OK (virtio 1.2, 3.1.1 steps 7-8).
    fn queue_config_allowed(&self) -> bool {
        self.has(FEATURES_OK) && self.status & (DRIVER_OK | FAILED) == 0
    }

    /// What the register machine guarantees whatever a driver writes (see
    /// [`Self::check_registers`]), checked on the transport as it is.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_registers(
            self.status,
            self.activated,
            self.driver_features,
            &self.queues,
        )
    }

    /// Whether these registers and queues, with the device as it is now,
    /// are a state the register machine can reach: the status bits set in
    /// the order of virtio 1.2, 3.1.1 (no DRIVER_OK without FEATURES_OK,
    /// ...) and none other; FEATURES_OK only for offered features including
    /// VERSION_1, which the device holds as acked (and nothing before);
    /// activated only under DRIVER_OK, with every ready queue inside guest
    /// memory and EVENT_IDX on every queue as acked. The error says which
    /// one is broken. A restore refuses a state that breaks them.
    fn check_registers(
        &self,
        status: u32,
        activated: bool,
        driver_features: u64,
        queues: &[Queue],
    ) -> Result<(), String> {
        const STEPS: [u32; 5] = [
            0,
            ACK,
            ACK | DRIVER,
            ACK | DRIVER | FEATURES_OK,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK,
        ];
        if status & !(STEPS[4] | FAILED | NEEDS_RESET) != 0 {
            return Err(format!(
                "status {status:#x} has bits the spec does not define"
            ));
        }
        if !STEPS.contains(&(status & STEPS[4])) {
            return Err(format!("status {status:#x} skipped a step"));
        }
        let offered = self.offered_features();
        let acked = self.device.acked_features();
        if status & FEATURES_OK != 0 {
            if driver_features & !offered != 0 || driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                return Err(format!(
                    "FEATURES_OK for driver features {driver_features:#x}, {offered:#x} offered"
                ));
            }
            if acked != driver_features & self.device.features() {
                return Err(format!(
                    "the device acked {acked:#x}, the driver took {driver_features:#x}"
                ));
            }
        } else if acked != 0 {
            return Err(format!("the device acked {acked:#x} before FEATURES_OK"));
        }
        if activated {
            if status & DRIVER_OK == 0 {
                return Err(format!("activated with status {status:#x}"));
            }
            let event_idx = acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            for (i, q) in queues.iter().enumerate() {
                if q.ready() && !q.is_valid(&self.mem) {
                    return Err(format!("activated with queue {i} ready outside memory"));
                }
                if q.event_idx_enabled() != event_idx {
                    return Err(format!("queue {i} disagrees with the acked EVENT_IDX"));
                }
            }
        }
        Ok(())
    }

    /// Handles the driver's notification of queue `index`.
    pub fn process_queue(&mut self, index: u16) {
        if !self.activated {
            tracing::debug!(index, "queue notify before DRIVER_OK ignored");
            return;
        }
        let mut queues = LentQueues(&mut self.queues);
        let mut ctx = DeviceContext::new(&self.mem, &mut queues, self.interrupt.as_ref());
        if let Err(e) = self.device.process_queue(index, &mut ctx) {
            tracing::error!(index, "virtio device failed processing a queue: {e}");
            self.needs_reset();
        }
    }

    /// Handles the device's backend fd becoming readable. Before DRIVER_OK
    /// the device is called with no usable queues, so it can drain what it
    /// cannot deliver yet instead of leaving the (level-triggered) fd hot.
    pub fn process_backend(&mut self) {
        let lent: &mut [Queue] = if self.activated {
            &mut self.queues
        } else {
            &mut []
        };
        let mut queues = LentQueues(lent);
        let mut ctx = DeviceContext::new(&self.mem, &mut queues, self.interrupt.as_ref());
        if let Err(e) = self.device.process_backend(&mut ctx) {
            tracing::error!("virtio device backend failed: {e}");
            self.needs_reset();
        }
    }

    /// Processes the backend and every queue once, whether or not anything
    /// was signalled: for moments when a notification may have been lost
    /// or was never to come. Before a snapshot is saved (the vCPUs stopped
    /// while the driver was notifying), and after a restore (the saved
    /// queue may hold buffers the driver will not notify about again).
    /// Processing a queue also re-arms its notifications (`avail_event`).
    pub fn catch_up(&mut self) {
        if !self.activated {
            return;
        }
        if self.device.backend_fd().is_some() {
            self.process_backend();
        }
        for index in 0..self.queues.len() {
            self.process_queue(index as u16);
        }
    }

    /// The end of [`Self::restore_state`]: catches up (see
    /// [`Self::catch_up`]) and raises the interrupt again if the driver had
    /// not acknowledged it. An interrupt raised just before the snapshot
    /// may still have been on its way into the interrupt controller when
    /// that was saved; the status register remembers it, the clone's
    /// interrupt controller may not. A repeat is harmless: the driver reads
    /// the status and finds the used rings as they are.
    fn resume_after_restore(&mut self) {
        tracing::trace!(
            device = self.device.device_type(),
            queues = ?self.queue_positions(),
            "restored transport catching up"
        );
        self.catch_up();
        if self.interrupt.status.load(Ordering::SeqCst) != 0 {
            if let Err(e) = self.interrupt.irqfd.write(1) {
                tracing::warn!("cannot raise a restored device's pending interrupt: {e}");
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::warn!("cannot signal DEVICE_NEEDS_RESET: {e}");
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn write_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        if new & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let old = self.status & !NEEDS_RESET;
        let step = |from: u32, to: u32| old == from && new == to;
        if step(0, ACK) || step(ACK, ACK | DRIVER) {
            self.status = new;
        } else if step(ACK | DRIVER, ACK | DRIVER | FEATURES_OK) {
            let offered = self.offered_features();
            let unoffered = self.driver_features & !offered;
            if unoffered != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                // Leaving FEATURES_OK clear tells the driver the subset is
                // unacceptable (virtio 1.2, 3.1.1 step 6).
                tracing::warn!(
                    driver = self.driver_features,
                    offered,
                    "driver features refused (unoffered bits or no VERSION_1)"
                );
                return;
            }
            self.device.ack_features(self.driver_features);
            self.status = new;
        } else if step(
            ACK | DRIVER | FEATURES_OK,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK,
        ) {
            self.status = new;
            self.activate();
        } else if new == self.status {
            // Rewriting the same value is harmless.
        } else {
            tracing::warn!(
                old = self.status,
                new,
                "invalid virtio status transition ignored"
            );
        }
    }

    fn activate(&mut self) {
        let event_idx = self.device.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.mem) {
                tracing::error!(queue = i, "driver made an invalid queue ready");
                self.needs_reset();
                return;
            }
        }
        match self.device.activate() {
            Ok(()) => {
                tracing::debug!(
                    device = self.device.device_type(),
                    features = self.device.acked_features(),
                    "virtio device activated"
                );
                self.activated = true;
            }
            Err(e) => {
                tracing::error!("virtio device activation failed: {e}");
                self.needs_reset();
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                tracing::debug!(offset, "read of unknown/write-only virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let queue_reg = matches!(
            offset,
            reg::QUEUE_NUM
                | reg::QUEUE_READY
                | reg::QUEUE_DESC_LOW
                | reg::QUEUE_DESC_HIGH
                | reg::QUEUE_DRIVER_LOW
                | reg::QUEUE_DRIVER_HIGH
                | reg::QUEUE_DEVICE_LOW
                | reg::QUEUE_DEVICE_HIGH
        );
        if queue_reg && !self.queue_config_allowed() {
            tracing::warn!(
                offset,
                status = self.status,
                "queue register write outside set-up ignored"
            );
            return;
        }
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if !self.has(ACK | DRIVER) || self.has(FEATURES_OK) {
                    tracing::warn!("driver features written outside negotiation ignored");
                    return;
                }
                let v = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => {
                // Only reached when no ioeventfd is registered.
                if let Ok(index) = u16::try_from(value) {
                    self.process_queue(index);
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(value),
            _ if queue_reg => {
                let Some(q) = self.selected_queue() else {
                    tracing::warn!("write to a queue register of a missing queue");
                    return;
                };
                match offset {
                    reg::QUEUE_NUM => q.set_size(value as u16),
                    reg::QUEUE_READY => q.set_ready(value == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
                    reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
                    reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
                    reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
                    reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
                    _ => {}
                }
            }
            _ => tracing::debug!(
                offset,
                value,
                "write to unknown/read-only virtio-mmio register"
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                offset,
                len = data.len(),
                "non 32-bit virtio-mmio register read"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & FAILED == 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "non 32-bit virtio-mmio register write"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}
