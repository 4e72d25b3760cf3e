//! One vCPU's architectural state, read from and written back into KVM.
//!
//! Saved by the vCPU's own thread once it is out of KVM_RUN for good: the
//! kick that stops it re-enters KVM with `immediate_exit` set, which first
//! completes any port or MMIO access the guest was in the middle of, so the
//! state is that of an instruction boundary. Restored in the order KVM
//! needs (Firecracker's order): CPUID first (it decides which MSRs and
//! XSAVE features exist), the LAPIC before the MSRs (the TSC deadline MSR
//! needs the LAPIC's mode), the events last.

use kvm_bindings::KVM_MAX_MSR_ENTRIES;
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use runner_devices::snapshot::codec::at_most;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most MSRs read per KVM_GET_MSRS call (KVM's own array limit).
const MSR_BATCH: usize = 255;

/// Everything KVM keeps about one vCPU that a guest can observe. The
/// lists are bounded when decoding by what KVM itself hands out (its CPUID
/// and MSR list limits).
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    #[serde(deserialize_with = "at_most::<KVM_MAX_CPUID_ENTRIES, _, _>")]
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lets us read.
    #[serde(deserialize_with = "at_most::<KVM_MAX_MSR_ENTRIES, _, _>")]
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, so a host with another one can refuse.
    pub tsc_khz: Option<u32>,
}

/// The MSRs to save: all that KVM lists as saveable.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<_> = batch
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| Error::Snapshot(format!("MSR list: {e:?}")))?;
        let read = fd.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running.
    pub fn save(fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState> {
        Ok(VcpuState {
            cpuid: fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(Error::kvm("KVM_GET_CPUID2"))?
                .as_slice()
                .to_vec(),
            mp_state: fd.get_mp_state().map_err(Error::kvm("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(Error::kvm("KVM_GET_XCRS"))?,
            debugregs: fd
                .get_debug_regs()
                .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, msr_list)?,
            events: fd
                .get_vcpu_events()
                .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Writes the state into a freshly created vCPU.
    pub fn restore(&self, fd: &VcpuFd) -> Result<()> {
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|e| Error::Snapshot(format!("CPUID of the snapshot: {e:?}")))?;
        fd.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            // Older KVMs cannot scale the TSC; same-host restores need not.
            if let Err(e) = fd.set_tsc_khz(khz) {
                tracing::debug!("KVM_SET_TSC_KHZ({khz}): {e}");
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a kvm_xsave read by KVM_GET_XSAVE on a vCPU
        // with the same CPUID, so its size matches what KVM expects.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs)
            .map_err(Error::kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        for batch in self.msrs.chunks(MSR_BATCH) {
            let entries: Vec<_> = batch
                .iter()
                .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries)
                .map_err(|e| Error::Snapshot(format!("MSRs of the snapshot: {e:?}")))?;
            let written = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
            if written != entries.len() {
                return Err(Error::Snapshot(format!(
                    "KVM refused MSR {:#x} of the snapshot",
                    entries[written].index
                )));
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
