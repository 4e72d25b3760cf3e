//! Local APIC setup: LINT0 receives the 8259 PIC as ExtINT and LINT1 is
//! NMI, the wiring firmware sets up and the MP table describes.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// Replaces the delivery mode (bits 8-10) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in `lapic`.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lint0 = get_reg(lapic, APIC_LVT_LINT0);
    set_reg(
        lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = get_reg(lapic, APIC_LVT_LINT1);
    set_reg(
        lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
}

/// Applies [`set_lint`] to a vCPU's in-kernel LAPIC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        // Masked, with a stale fixed-mode vector, as after reset.
        set_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0000);
        set_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0000 | 0x30);
        set_lint(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT_LINT1), 0x1_0430);
    }
}
