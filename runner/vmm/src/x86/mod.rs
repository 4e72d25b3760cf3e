//! x86_64 vCPU state at reset: CPUID, registers, page tables, MSRs, LAPIC.

pub mod cpuid;
pub mod interrupts;
pub mod msrs;
pub mod regs;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

use crate::boot::loader::EntryPoint;
use crate::error::{Error, Result};
use crate::memory::GuestMemoryMmap;

/// Puts vCPU `index` of `num_vcpus` into its reset state. Only the boot
/// vCPU (index 0) gets entry registers: the others wait in KVM for the
/// INIT/SIPI sequence the guest sends them.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    index: u8,
    num_vcpus: u8,
    supported_cpuid: &CpuId,
    hide_cx16_and_xsave: bool,
    mem: &GuestMemoryMmap,
    entry: &EntryPoint,
) -> Result<()> {
    let mut cpuid = supported_cpuid.clone();
    cpuid::filter(
        &mut cpuid,
        &cpuid::CpuidParams {
            vcpu_id: index,
            num_vcpus,
            hide_cx16_and_xsave,
        },
    )?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    msrs::set_boot_msrs(vcpu)?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(Error::kvm("KVM_SET_FPU"))?;
    interrupts::setup_lint(vcpu)?;
    if index == 0 {
        let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        regs::setup_sregs(mem, entry, &mut sregs)?;
        vcpu.set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::boot_regs(entry))
            .map_err(Error::kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}
