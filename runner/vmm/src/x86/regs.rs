//! Register state at the kernel's entry point, for both boot protocols:
//! the GDT, segment registers, control registers, identity page tables
//! and general purpose registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::loader::EntryPoint;
use crate::error::{Error, Result};
use crate::layout;
use crate::memory::GuestMemoryMmap;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page table entry bits: present, writable, and (in a PD) 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_2MIB_PAGE: u64 = 0x80;

/// GDT flags (access byte + granularity nibble) as one 16-bit value:
/// bits 0-7 access byte, bits 12-15 G/DB/L/AVL.
const CODE64: u16 = 0xa09b;
const CODE32: u16 = 0xc09b;
const DATA: u16 = 0xc093;
const TSS64: u16 = 0x808b;
const TSS32: u16 = 0x008b;

const SEL_CODE: u16 = 1 << 3;
const SEL_DATA: u16 = 2 << 3;
const SEL_TSS: u16 = 3 << 3;

/// Encodes one GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` KVM wants for GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let flag = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let g = flag(55, 1);
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = flag(47, 1);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: limit as u32,
        selector: index * 8,
        type_: flag(40, 0xf),
        present,
        dpl: flag(45, 0x3),
        db: flag(54, 1),
        s: flag(44, 1),
        l: flag(53, 1),
        g,
        avl: flag(52, 1),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

fn boot_gdt(entry: &EntryPoint) -> [u64; 4] {
    match entry {
        EntryPoint::Pvh(_) => [
            0,
            gdt_entry(CODE32, 0, 0xfffff),
            gdt_entry(DATA, 0, 0xfffff),
            gdt_entry(TSS32, 0, 0x67),
        ],
        EntryPoint::Linux64 { .. } => [
            0,
            gdt_entry(CODE64, 0, 0xfffff),
            gdt_entry(DATA, 0, 0xfffff),
            gdt_entry(TSS64, 0, 0xfffff),
        ],
    }
}

/// Identity maps the first 1 GiB with 2 MiB pages: enough for the kernel
/// to run until it installs its own page tables.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let err = |e: vm_memory::GuestMemoryError| Error::BootSetup(format!("page tables: {e}"));
    mem.write_obj(
        layout::PDPTE_START | PTE_PRESENT_RW,
        GuestAddress(layout::PML4_START),
    )
    .map_err(err)?;
    mem.write_obj(
        layout::PDE_START | PTE_PRESENT_RW,
        GuestAddress(layout::PDPTE_START),
    )
    .map_err(err)?;
    for i in 0..512u64 {
        let pde = (i << 21) | PDE_2MIB_PAGE | PTE_PRESENT_RW;
        mem.write_obj(pde, GuestAddress(layout::PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

/// Writes the GDT (and an empty IDT) and sets segment and control
/// registers in `sregs` for `entry`. For the 64-bit protocol it also
/// writes the identity page tables.
pub fn setup_sregs(mem: &GuestMemoryMmap, entry: &EntryPoint, sregs: &mut kvm_sregs) -> Result<()> {
    let gdt = boot_gdt(entry);
    let err = |e: vm_memory::GuestMemoryError| Error::BootSetup(format!("GDT: {e}"));
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(layout::BOOT_GDT_START + i as u64 * 8))
            .map_err(err)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(err)?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], SEL_CODE / 8);
    let data = segment_from_gdt(gdt[2], SEL_DATA / 8);
    let tss = segment_from_gdt(gdt[3], SEL_TSS / 8);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match entry {
        EntryPoint::Pvh(_) => {
            // PVH: protected mode, paging off (xen docs/misc/pvh.pandoc).
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64 { .. } => {
            write_identity_page_tables(mem)?;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// General purpose registers at entry.
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved-one; IF clear
        ..Default::default()
    };
    match entry {
        EntryPoint::Pvh(addr) => {
            regs.rip = addr.0;
            regs.rbx = layout::PVH_INFO_START;
        }
        EntryPoint::Linux64 { entry, .. } => {
            regs.rip = entry.0;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
    }
    regs
}

/// x87/SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn gdt_entries_encode_known_values() {
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(TSS32, 0, 0x67), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_decode_from_gdt() {
        let cs = segment_from_gdt(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.s),
            (8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!((cs.present, cs.unusable, cs.limit), (1, 0, 0xffff_ffff));
        let cs32 = segment_from_gdt(gdt_entry(CODE32, 0, 0xfffff), 1);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = segment_from_gdt(gdt_entry(TSS32, 0, 0x67), 3);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.limit, tss.g),
            (0x18, 0xb, 0, 0x67, 0)
        );
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let (mem, _f) = create_guest_memory(32).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(GuestAddress(layout::PDPTE_START)).unwrap();
        assert_eq!(pdpte, 0xb003);
        for i in [0u64, 1, 8, 511] {
            let pde: u64 = mem
                .read_obj(GuestAddress(layout::PDE_START + i * 8))
                .unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PDE {i}");
        }
    }

    #[test]
    fn long_mode_and_pvh_control_registers() {
        let (mem, _f) = create_guest_memory(32).unwrap();
        let mut sregs = kvm_sregs::default();
        let e64 = EntryPoint::Linux64 {
            entry: GuestAddress(0x100_0000),
            setup_header: None,
        };
        setup_sregs(&mem, &e64, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        let gdt1: u64 = mem
            .read_obj(GuestAddress(layout::BOOT_GDT_START + 8))
            .unwrap();
        assert_eq!(gdt1, gdt_entry(CODE64, 0, 0xfffff));
        let regs = boot_regs(&e64);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x100_0000, layout::ZERO_PAGE_START, 2)
        );

        let pvh = EntryPoint::Pvh(GuestAddress(0x100_0200));
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &pvh, &mut sregs).unwrap();
        assert_eq!((sregs.cr0, sregs.cr4, sregs.efer), (CR0_PE | CR0_ET, 0, 0));
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
        let regs = boot_regs(&pvh);
        assert_eq!((regs.rip, regs.rbx), (0x100_0200, layout::PVH_INFO_START));
    }
}
