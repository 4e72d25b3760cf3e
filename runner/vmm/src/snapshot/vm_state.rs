//! The VM-wide state KVM emulates in the kernel: the two 8259 PICs, the
//! IOAPIC, the PIT, and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

impl VmState {
    /// Reads the state of a VM whose vCPUs are all stopped.
    pub fn save(vm: &VmFd) -> Result<VmState> {
        let mut clock = vm.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?;
        // Only the time goes back in: KVM_SET_CLOCK refuses other flags.
        clock.flags &= !KVM_CLOCK_TSC_STABLE;
        Ok(VmState {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(Error::kvm("KVM_GET_PIT2"))?,
            clock,
        })
    }

    /// Writes the state into a VM with a fresh irqchip and PIT, before its
    /// vCPUs run.
    pub fn restore(&self, vm: &VmFd) -> Result<()> {
        vm.set_pit2(&self.pit).map_err(Error::kvm("KVM_SET_PIT2"))?;
        let mut clock = self.clock;
        clock.flags = 0;
        vm.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip)
                .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
