//! Filters KVM_GET_SUPPORTED_CPUID into what each vCPU sees, in the spirit
//! of Firecracker's CPUID normalization: per-vCPU APIC ids, a simple
//! "n cores, one thread each, one socket" topology in leaves 0x1, 0x4, 0xb
//! and 0x1f, the hypervisor bit, the KVM signature leaves, and no leaves we
//! cannot back (the PMU, Intel's and AMD's, and power management).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::error::{Error, Result};

/// What the guest should see, besides what the host supports.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    pub vcpu_id: u8,
    pub num_vcpus: u8,
    pub host: HostQuirks,
}

/// Facts about this host's KVM that KVM_GET_SUPPORTED_CPUID does not carry.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostQuirks {
    /// Hide CMPXCHG16B and XSAVE (and what depends on XSAVE). Only set on a
    /// PVM host, whose instruction emulator fails on `lock cmpxchg16b` and
    /// `xrstor` while ring 0 is emulated.
    pub hide_cx16_and_xsave: bool,
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC has the TSC-deadline
    /// timer mode, which KVM never lists among the supported CPUID bits
    /// (it belongs to the irqchip, not the CPU). Without the bit the guest
    /// calibrates the APIC timer against other clocks at boot; under nested
    /// KVM that calibration failed ("APIC timer disabled due to verification
    /// failure") and the boot ran on the PIT, twice as slow as QEMU's.
    pub tsc_deadline_timer: bool,
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

// Leaf 0x1 bits.
const ECX_CX16: u32 = 1 << 13;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_FMA: u32 = 1 << 12;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
// Leaf 0x8000_0001 ECX: AMD's performance counter extensions (core,
// northbridge, last-level cache). Hidden with the rest of the PMU.
const ECX_PERFCTR_CORE: u32 = 1 << 23;
const ECX_PERFCTR_NB: u32 = 1 << 24;
const ECX_PERFCTR_LLC: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_SIZE: u32 = 8;
/// Leaf 0x6 EAX: the always-running APIC timer is the only power feature
/// that is true of a vCPU.
const POWER_EAX_ARAT: u32 = 1 << 2;
/// Topology level types for leaves 0xb/0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Bits needed to number `n` cores (ceil(log2(n))).
fn core_id_bits(n: u8) -> u32 {
    let n = u32::from(n.max(1));
    32 - (n - 1).leading_zeros()
}

/// Rewrites `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for one vCPU.
pub fn filter(cpuid: &mut CpuId, p: &CpuidParams) -> Result<()> {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    let apic_id = u32::from(p.vcpu_id);
    let n = u32::from(p.num_vcpus.max(1));

    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: initial APIC id [31:24], logical count [23:16],
                // CLFLUSH size [15:8].
                e.ebx = (apic_id << 24) | (n << 16) | (CLFLUSH_SIZE << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                if p.host.tsc_deadline_timer {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if p.host.hide_cx16_and_xsave {
                    e.ecx &= !(ECX_CX16 | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_FMA | ECX_F16C);
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical
                // CPUs sharing this cache - 1. L1/L2 are per core, the last
                // level is shared by the whole (single) package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            LEAF_POWER => {
                e.eax &= POWER_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_FEATURES => {
                e.ecx &= !(ECX_PERFCTR_CORE | ECX_PERFCTR_NB | ECX_PERFCTR_LLC);
            }
            LEAF_PMU | LEAF_AMD_PERFMON_V2 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_XSAVE if p.host.hide_cx16_and_xsave => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_KVM_SIGNATURE => {
                e.eax = e.eax.max(LEAF_KVM_FEATURES);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }

    // Replace the topology leaves with ours; KVM passes the host's through.
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();
    let mut leaves = vec![];
    if max_basic >= LEAF_TOPOLOGY {
        leaves.push(LEAF_TOPOLOGY);
    }
    if max_basic >= LEAF_TOPOLOGY_V2 {
        leaves.push(LEAF_TOPOLOGY_V2);
    }
    for function in leaves {
        entries.extend(topology_subleaves(function, apic_id, p.num_vcpus));
    }
    if !entries.iter().any(|e| e.function == LEAF_KVM_SIGNATURE) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_KVM_SIGNATURE,
            eax: LEAF_KVM_FEATURES,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    *cpuid = CpuId::from_entries(&entries)
        .map_err(|e| Error::Config(format!("CPUID table too large: {e:?}")))?;
    Ok(())
}

/// Subleaves of 0xb / 0x1f: SMT level (1 thread per core), core level
/// (`num_vcpus` cores), then the terminating invalid level.
fn topology_subleaves(function: u32, apic_id: u32, num_vcpus: u8) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: index | (level_type << 8),
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_SMT),
        entry(
            1,
            core_id_bits(num_vcpus),
            u32::from(num_vcpus.max(1)),
            LEVEL_CORE,
        ),
        entry(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A host-like table: Intel, max basic leaf 0x20, cache + topology.
    fn synthetic() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(
                1,
                0,
                [
                    0xa0678,
                    0x0320_0800,
                    ECX_CX16 | ECX_XSAVE | ECX_AVX,
                    0x0f8b_fbff,
                ],
            ),
            leaf(4, 0, [0xfc00_4121, 0x02c0_003f, 0x3f, 0]),
            leaf(4, 3, [0xfc0f_c163, 0x0380_003f, 0x1bfff, 4]),
            leaf(6, 0, [0x77, 0x2, 0x9, 0]),
            leaf(0xa, 0, [0x0830_0805, 0, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xd, 0, [0x2e7, 0xa88, 0xa88, 0]),
            leaf(0x1f, 0, [1, 2, 0x100, 7]),
            leaf(0x4000_0000, 0, [0x4000_0001, 0, 0, 0]),
            leaf(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn apic_id_and_topology_per_vcpu() {
        let mut c = synthetic();
        let p = CpuidParams {
            vcpu_id: 2,
            num_vcpus: 4,
            host: HostQuirks {
                tsc_deadline_timer: true,
                ..Default::default()
            },
        };
        filter(&mut c, &p).unwrap();
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "initial APIC id");
        assert_ne!(
            l1.ecx & ECX_TSC_DEADLINE,
            0,
            "the LAPIC's TSC-deadline mode shown"
        );
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH size");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_CX16, 0, "CX16 kept on a normal host");
        for function in [0xb, 0x1f] {
            let smt = get(&c, function, 0);
            let core = get(&c, function, 1);
            let end = get(&c, function, 2);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
            assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));
            assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
        let l1d = get(&c, 4, 0);
        assert_eq!(l1d.eax >> 26, 3, "4 cores per package");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!(l1d.eax & 0x3fff, 0x0121, "cache type/level kept");
        let l3 = get(&c, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all 4");
    }

    #[test]
    fn single_vcpu_has_no_htt_and_one_core() {
        let mut c = synthetic();
        filter(
            &mut c,
            &CpuidParams {
                vcpu_id: 0,
                num_vcpus: 1,
                host: HostQuirks::default(),
            },
        )
        .unwrap();
        assert_eq!(get(&c, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(
            get(&c, 1, 0).ecx & ECX_TSC_DEADLINE,
            0,
            "no TSC-deadline bit unless KVM has the capability"
        );
        assert_eq!(get(&c, 0xb, 1).eax, 0);
        assert_eq!(get(&c, 0xb, 1).ebx, 1);
    }

    #[test]
    fn unsupported_leaves_are_disabled_and_kvm_signature_set() {
        let mut c = synthetic();
        filter(
            &mut c,
            &CpuidParams {
                vcpu_id: 0,
                num_vcpus: 2,
                host: HostQuirks::default(),
            },
        )
        .unwrap();
        let pmu = get(&c, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        assert_eq!(get(&c, 6, 0).eax, POWER_EAX_ARAT);
        let sig = get(&c, 0x4000_0000, 0);
        let mut bytes = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
        assert_eq!(
            get(&c, 0x4000_0001, 0).eax,
            0x0100_7efb,
            "KVM features kept"
        );
        assert_eq!(
            get(&c, 0xd, 0).eax,
            0x2e7,
            "XSAVE leaf kept on a normal host"
        );
    }

    #[test]
    fn pvm_workaround_hides_cx16_and_xsave() {
        let mut c = synthetic();
        filter(
            &mut c,
            &CpuidParams {
                vcpu_id: 0,
                num_vcpus: 1,
                host: HostQuirks {
                    hide_cx16_and_xsave: true,
                    ..Default::default()
                },
            },
        )
        .unwrap();
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ecx & (ECX_CX16 | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX), 0);
        assert_eq!(get(&c, 0xd, 0).eax, 0);
    }

    #[test]
    fn signature_leaf_added_when_missing() {
        let mut c = CpuId::from_entries(&[leaf(0, 0, [1, 0, 0, 0])]).unwrap();
        filter(
            &mut c,
            &CpuidParams {
                vcpu_id: 0,
                num_vcpus: 1,
                host: HostQuirks::default(),
            },
        )
        .unwrap();
        assert_eq!(get(&c, 0x4000_0000, 0).ebx, KVM_SIGNATURE[0]);
        assert!(
            c.as_slice().iter().all(|e| e.function != 0xb),
            "no 0xb above max leaf"
        );
    }

    /// An AMD-style table, as KVM reports it on EPYC or under QEMU's
    /// `-cpu max` with SVM: max basic leaf 0xd, no topology leaf of its own,
    /// the PMU announced in the extended leaves instead of leaf 0xa.
    fn amd_like() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            leaf(
                1,
                0,
                [0x00a0_0f11, 0x0002_0800, ECX_CX16 | ECX_XSAVE, 0x178b_fbff],
            ),
            leaf(0xd, 0, [0x7, 0x340, 0x340, 0]),
            leaf(0x8000_0000, 0, [0x8000_0022, 0, 0, 0]),
            leaf(
                0x8000_0001,
                0,
                [
                    0x00a0_0f11,
                    0,
                    ECX_PERFCTR_CORE | ECX_PERFCTR_NB | ECX_PERFCTR_LLC | 0x0000_0004,
                    0x2fd3_fbff,
                ],
            ),
            leaf(0x8000_0022, 0, [0x1, 0x6, 0, 0]),
        ])
        .unwrap()
    }

    #[test]
    fn amd_pmu_is_hidden_and_the_rest_kept() {
        let mut c = amd_like();
        filter(
            &mut c,
            &CpuidParams {
                vcpu_id: 1,
                num_vcpus: 2,
                host: HostQuirks::default(),
            },
        )
        .unwrap();
        let ext = get(&c, 0x8000_0001, 0);
        assert_eq!(
            ext.ecx, 0x0000_0004,
            "PerfCtr extensions gone, SVM (bit 2) kept"
        );
        assert_eq!(ext.edx, 0x2fd3_fbff, "EDX untouched");
        let v2 = get(&c, 0x8000_0022, 0);
        assert_eq!((v2.eax, v2.ebx, v2.ecx, v2.edx), (0, 0, 0, 0));
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 1, "initial APIC id");
        assert_ne!(l1.ecx & ECX_XSAVE, 0, "XSAVE kept off PVM");
        // Our topology in 0xb (within the max basic leaf), none in 0x1f.
        assert_eq!(get(&c, 0xb, 1).ebx, 2, "2 cores");
        assert_eq!(get(&c, 0xb, 0).edx, 1, "x2APIC id");
        assert!(c.as_slice().iter().all(|e| e.function != 0x1f));
        assert_eq!(get(&c, 0x4000_0000, 0).ebx, KVM_SIGNATURE[0]);
    }
}
