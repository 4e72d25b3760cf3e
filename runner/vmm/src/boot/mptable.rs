//! Intel MultiProcessor Specification 1.4 tables. Without ACPI, this is how
//! Linux learns how many CPUs there are, where the IOAPIC is and how ISA
//! IRQs are wired to it.

use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::layout;
use crate::memory::GuestMemoryMmap;

const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const SPEC_REV: u8 = 4; // MP spec 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// ISA IRQs 0-15 plus the PCI-style pins up to 23 that virtio-mmio uses.
const NUM_IOAPIC_PINS: u8 = (layout::IRQ_MAX + 1) as u8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 signature and the FPU+APIC feature flags, as firmware reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Largest vCPU count the tables can describe: xAPIC ids are 8 bits, 0xff
/// is broadcast, and the IOAPIC takes the id after the last CPU.
pub const MAX_VCPUS: usize = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer followed by the configuration table, as
/// they will sit at `base`.
pub fn build(num_cpus: usize, base: u64) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::Config(format!(
            "{num_cpus} vCPUs cannot be described in an MP table (1..={MAX_VCPUS})"
        )));
    }
    let ioapic_id = num_cpus as u8;
    let mut entries = Vec::with_capacity(
        num_cpus * PROCESSOR_ENTRY_LEN + (usize::from(NUM_IOAPIC_PINS) + 4) * SMALL_ENTRY_LEN,
    );
    let mut count = 0u16;
    for cpu in 0..num_cpus {
        let mut e = vec![ENTRY_PROCESSOR, cpu as u8, APIC_VERSION];
        e.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 });
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0u8; 8]);
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..NUM_IOAPIC_PINS {
        // Flags 0: conforming polarity and trigger mode of the bus (ISA:
        // active high, edge), which is what KVM's IOAPIC expects for these.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin]);
        entries.extend_from_slice(&[ioapic_id, pin]);
        count += 1;
    }
    // LINT0 is the 8259 (ExtINT) on the BSP; LINT1 is NMI on every CPU.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = CONFIG_HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(CONFIG_HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"RUNNER  "); // OEM id, 8 bytes
    header.extend_from_slice(b"MICROVM     "); // product id, 12 bytes
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: table present, no default config
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP tables for `num_cpus` at [`layout::MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, num_cpus: usize) -> Result<()> {
    let bytes = build(num_cpus, layout::MPTABLE_START)?;
    if bytes.len() as u64 > layout::MPTABLE_MAX_SIZE {
        return Err(Error::BootSetup("MP table too large".into()));
    }
    mem.write_slice(&bytes, GuestAddress(layout::MPTABLE_START))
        .map_err(|e| Error::BootSetup(format!("MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for cpus in [1, 2, 8, MAX_VCPUS] {
            let t = build(cpus, 0xf0000).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum, {cpus} cpus");
            let physptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(physptr, 0xf0010);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table checksum, {cpus} cpus");
        }
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_irqs() {
        let t = build(2, 0xf0000).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        // 2 CPUs + bus + IOAPIC + 24 IO interrupts + 2 local interrupts.
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let mut at = 44;
        let (mut cpus, mut bsp, mut ioapics, mut irqs) = (vec![], 0, 0, vec![]);
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[at + 1]);
                    if table[at + 3] & CPU_BOOTSTRAP != 0 {
                        bsp += 1;
                    }
                    at += PROCESSOR_ENTRY_LEN;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(table[at + 1], 2, "IOAPIC id follows the CPUs");
                    let addr = u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap());
                    assert_eq!(addr, 0xfec0_0000);
                    ioapics += 1;
                    at += SMALL_ENTRY_LEN;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(table[at + 5], table[at + 7], "ISA IRQ n -> pin n");
                    irqs.push(table[at + 5]);
                    at += SMALL_ENTRY_LEN;
                }
                ENTRY_BUS | ENTRY_LOCAL_INTERRUPT => at += SMALL_ENTRY_LEN,
                other => panic!("unexpected entry type {other}"),
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(cpus, vec![0, 1]);
        assert_eq!(bsp, 1);
        assert_eq!(ioapics, 1);
        assert_eq!(irqs, (0..24).collect::<Vec<u8>>());
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(build(MAX_VCPUS + 1, 0xf0000).is_err());
        assert!(build(0, 0xf0000).is_err());
    }
}
