//! Guest physical address map of a runner microVM (x86_64).
//!
//! Everything the VMM writes before the first instruction lives below 1 MiB,
//! in pages Linux treats as firmware-owned until it has parsed them. The
//! kernel itself is loaded at 1 MiB (bzImage) or at its ELF physical address
//! (vmlinux, normally 16 MiB). Device windows live in a 32-bit gap below
//! 4 GiB; RAM that would overlap the gap continues above 4 GiB.

/// GDT used for both boot protocols: null, code, data, TSS.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` (56 bytes).
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page (`boot_params`, 4 KiB).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH memory map table. It shares the page after the start info, since a
/// PVH boot has no zero page at 0x7000.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, PD (2 MiB pages, first 1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line. Linux copies it early; 64 KiB is ample.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (Linux x86 COMMAND_LINE_SIZE is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: end of usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer + configuration table, in the BIOS area
/// 0xF0000-0xFFFFF that Linux scans for it. 64 KiB leaves room for every
/// vCPU an xAPIC can address.
pub const MPTABLE_START: u64 = 0xf_0000;
pub const MPTABLE_MAX_SIZE: u64 = 0x1_0000;
/// First byte of "high" memory: the kernel may not be loaded below this.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// 4 GiB, the first address past the 32-bit space.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Size of the 32-bit device gap below 4 GiB (768 MiB, as common microVMs do).
pub const MMIO_GAP_SIZE: u64 = 768 << 20;
/// Start of the 32-bit device gap. RAM never overlaps [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_SIZE;

/// Virtio-mmio device windows: one 4 KiB page each from the gap's start.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ handed to virtio-mmio devices (0-4 are taken by the
/// PIT, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC pin we hand out.
pub const IRQ_MAX: u32 = 23;

/// IOAPIC and LAPIC MMIO, handled by KVM's in-kernel irqchip.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS on Intel (VT-x), and one for
/// the EPT identity map. Both inside the gap, so never RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
pub const SERIAL_COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;

/// Guest RAM ranges for `mem_size` bytes: low RAM up to the gap, the rest
/// above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_skips_the_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(
            ranges,
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
        // Nothing the VMM places in the gap can collide with RAM.
        for addr in [KVM_TSS_ADDRESS, IOAPIC_START, APIC_START, VIRTIO_MMIO_START] {
            assert!(ranges.iter().all(|(s, l)| addr < *s || addr >= s + l));
        }
    }
}
