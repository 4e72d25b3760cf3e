//! Attaching virtio devices to a built VM: a virtio-mmio window on the MMIO
//! bus, an irqfd for its interrupt, an ioeventfd per queue, and a
//! `virtio_mmio.device=` entry on the kernel command line.

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use runner_devices::virtio::VirtioDevice;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::virtio_slot::{VirtioSlot, VirtioSlotState};
use super::{write_boot_data, Vmm};
use crate::error::{Error, Result};
use crate::layout;
use crate::memory::GuestMemoryMmap;
use crate::virtio_mmio::{reg, MmioTransport};

impl Vmm {
    /// Attaches `device` behind the next free virtio-mmio window and
    /// announces it on the kernel command line. Call before [`Vmm::run`].
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice<GuestMemoryMmap>>,
    ) -> Result<VirtioSlot> {
        let index = self.virtio.len() as u64;
        let slot = VirtioSlot {
            base: layout::VIRTIO_MMIO_START + index * layout::VIRTIO_MMIO_SIZE,
            size: layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + index as u32,
        };
        if slot.irq > layout::IRQ_MAX {
            return Err(Error::Config(format!(
                "at most {} virtio devices fit the IOAPIC",
                layout::IRQ_MAX + 1 - layout::VIRTIO_IRQ_BASE
            )));
        }
        // The command line first: if it overflows, nothing is registered.
        let mut cmdline = self.cmdline.clone();
        cmdline
            .add_virtio_mmio_device(slot.size, GuestAddress(slot.base), slot.irq, None)
            .map_err(|e| Error::Cmdline(format!("adding virtio device: {e}")))?;

        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        self.vm
            .register_irqfd(&irqfd, slot.irq)
            .map_err(Error::kvm("KVM_IRQFD (virtio)"))?;
        let transport = MmioTransport::new(
            device,
            self.mem.clone(),
            irqfd.try_clone().map_err(Error::io("eventfd clone"))?,
        )
        .map_err(|e| Error::Config(format!("virtio queues: {e}")))?;
        let mut queue_evts = Vec::with_capacity(transport.num_queues());
        for queue in 0..transport.num_queues() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
            let addr = IoEventAddress::Mmio(slot.base + reg::QUEUE_NOTIFY);
            self.vm
                .register_ioevent(&evt, &addr, queue as u32)
                .map_err(Error::kvm("KVM_IOEVENTFD (virtio queue notify)"))?;
            queue_evts.push(evt);
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), slot.base, slot.size)
            .map_err(|e| Error::Config(e.to_string()))?;
        // A restored guest found its devices at boot; its memory must not
        // be touched.
        if let Some(entry) = &self.entry {
            write_boot_data(&self.mem, entry, &cmdline, &self.e820)?;
        }
        self.cmdline = cmdline;
        self.virtio.push(VirtioSlotState {
            transport,
            queue_evts,
            _irqfd: irqfd,
        });
        tracing::debug!(?slot, "virtio-mmio device attached");
        Ok(slot)
    }
}
