//! Model-specific registers set before the first instruction: the list
//! Firecracker's boot path sets (syscall/sysenter state cleared, TSC at 0,
//! fast strings on, MTRRs enabled with write-back as the default type), and
//! the MSRs the guest may touch that no one backs (the PMU's).

use kvm_bindings::{
    kvm_enable_cap, kvm_msr_entry, Msrs, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{
    Cap, Kvm, MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags,
    ReadMsrExit, VcpuFd, VmFd, WriteMsrExit,
};

use crate::error::{Error, Result};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// The boot MSR values, as (index, value).
pub fn boot_msr_entries() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Sets the boot MSRs; KVM must accept every one of them.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<()> {
    let list = boot_msr_entries();
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::Config(format!("MSR list: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if written != entries.len() {
        let failed = entries[written].index;
        return Err(Error::Vcpu {
            index: 0,
            detail: format!("KVM rejected boot MSR {failed:#x}"),
        });
    }
    Ok(())
}

/// AMD's performance counters: PERF_CTL0-3/PERF_CTR0-3 (K7 legacy), and the
/// six interleaved PERF_CTL/PERF_CTR pairs of PerfCtrExtCore.
const AMD_PERF_LEGACY_BASE: u32 = 0xc001_0000;
const AMD_PERF_LEGACY_COUNT: u32 = 8;
const AMD_PERF_CORE_BASE: u32 = 0xc001_0200;
const AMD_PERF_CORE_COUNT: u32 = 12;

/// The guest has no PMU: CPUID hides it (leaf 0xa on Intel, the PerfCtr
/// extensions on AMD, see `cpuid`). Intel guests then leave the counters
/// alone, but Linux on AMD probes the K7 counters whatever CPUID says
/// (`check_hw_exists` writes 0xffff to PERF_CTR3 and reads it back). Where
/// KVM has no vPMU (no host PMU, or one disabled) that write is an
/// "Unhandled WRMSR" in the host's kernel log on every boot. So, as other
/// VMMs do where no PMU is emulated, these MSRs come to us instead: reads
/// give 0, writes are dropped, and the guest concludes that there is no PMU
/// ("PMU not available due to virtualization").
///
/// MSRs KVM does not know at all come to us too, so that a guest's probes
/// end in our log (at debug level) instead of the host's kernel log; they
/// get the #GP that real hardware gives.
///
/// Returns false where this KVM cannot forward MSR accesses (then the
/// guest gets KVM's own behaviour, which is correct but may log).
pub fn forward_unbacked_msrs(kvm: &Kvm, vm: &VmFd) -> Result<bool> {
    if !kvm.check_extension(Cap::X86UserSpaceMsr) || !kvm.check_extension(Cap::X86MsrFilter) {
        return Ok(false);
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN);
    vm.enable_cap(&cap)
        .map_err(Error::kvm("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    // A clear bit denies the access, which makes KVM exit to us.
    let deny = [0u8; 2];
    let range = |base, msr_count| MsrFilterRange {
        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        base,
        msr_count,
        bitmap: &deny,
    };
    vm.set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[
            range(AMD_PERF_LEGACY_BASE, AMD_PERF_LEGACY_COUNT),
            range(AMD_PERF_CORE_BASE, AMD_PERF_CORE_COUNT),
        ],
    )
    .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))?;
    Ok(true)
}

/// A guest RDMSR that KVM forwarded (see [`forward_unbacked_msrs`]).
pub fn handle_read(exit: ReadMsrExit) {
    if exit.reason.contains(MsrExitReason::Filter) {
        *exit.data = 0;
        *exit.error = 0;
    } else {
        tracing::debug!("guest read unknown MSR {:#x}: #GP", exit.index);
        *exit.error = 1;
    }
}

/// A guest WRMSR that KVM forwarded (see [`forward_unbacked_msrs`]).
pub fn handle_write(exit: WriteMsrExit) {
    if exit.reason.contains(MsrExitReason::Filter) {
        *exit.error = 0;
    } else {
        tracing::debug!(
            "guest wrote {:#x} to unknown MSR {:#x}: #GP",
            exit.data,
            exit.index
        );
        *exit.error = 1;
    }
}
