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
    host: cpuid::HostQuirks,
    mem: &GuestMemoryMmap,
    entry: &EntryPoint,
) -> Result<()> {
    let mut cpuid = supported_cpuid.clone();
    cpuid::filter(
        &mut cpuid,
        &cpuid::CpuidParams {
            vcpu_id: index,
            num_vcpus,
            host,
        },
    )?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    if host.hide_cx16_and_xsave && index == 0 && xsave_still_visible(vcpu) {
        // Observed on kvm_pvm: KVM_SET_CPUID2 succeeds but the vCPU keeps
        // XSAVE (and AVX...) in leaf 1, so the guest kernel will execute
        // `xrstor`, which PVM's ring-0 emulator cannot do.
        tracing::warn!(
            "this PVM host forces XSAVE into the guest's CPUID; a Linux guest needs \
             `noxsave` on its command line to get past FPU init"
        );
    }
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

/// Whether the vCPU still reports XSAVE after we asked KVM to hide it.
fn xsave_still_visible(vcpu: &VcpuFd) -> bool {
    const ECX_XSAVE: u32 = 1 << 26;
    vcpu.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map(|c| {
            c.as_slice()
                .iter()
                .any(|e| e.function == 1 && e.ecx & ECX_XSAVE != 0)
        })
        .unwrap_or(false)
}
