//! The data the kernel reads at entry: the e820 memory map, the Linux zero
//! page (`boot_params`) and the PVH `hvm_start_info` + memory map. Both boot
//! protocols describe the same e820 table, built once here.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};
use crate::layout;
use crate::memory::GuestMemoryMmap;

/// e820 "usable RAM".
pub const E820_RAM: u32 = 1;
/// e820 "reserved".
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// One e820 entry, the way both protocols describe memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map we give the guest: conventional memory up to the EBDA
/// (which holds the MP table), then RAM from 1 MiB to the end of each region.
pub fn e820_table(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut table = vec![E820Entry {
        addr: 0,
        size: layout::EBDA_START,
        kind: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region
            .start_addr()
            .raw_value()
            .max(layout::HIGH_MEMORY_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            table.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    table
}

/// Builds the zero page for the 64-bit Linux boot protocol. `setup_header`
/// comes from a bzImage; a vmlinux has none and gets a minimal one.
pub fn build_boot_params(
    setup_header: Option<setup_header>,
    cmdline_len: usize,
    e820: &[E820Entry],
) -> Result<boot_params> {
    let mut params = boot_params {
        hdr: setup_header.unwrap_or_default(),
        ..Default::default()
    };
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if e820.len() > params.e820_table.len() {
        return Err(Error::BootSetup(format!(
            "{} e820 entries do not fit the zero page",
            e820.len()
        )));
    }
    let mut table = params.e820_table;
    for (slot, entry) in table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_table = table;
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`layout::ZERO_PAGE_START`].
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<()> {
    let bp = BootParams::new(params, GuestAddress(layout::ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem)
        .map_err(|e| Error::BootSetup(format!("zero page: {e}")))
}

/// Builds the PVH start info and its memory map (same e820 table).
pub fn build_pvh_info(e820: &[E820Entry]) -> (hvm_start_info, Vec<hvm_memmap_table_entry>) {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, memmap)
}

/// Writes the start info at [`layout::PVH_INFO_START`] and the memory map
/// at [`layout::PVH_MEMMAP_START`].
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    info: &hvm_start_info,
    memmap: &[hvm_memmap_table_entry],
) -> Result<()> {
    let mut bp = BootParams::new(info, GuestAddress(layout::PVH_INFO_START));
    bp.set_sections(memmap, GuestAddress(layout::PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&bp, mem)
        .map_err(|e| Error::BootSetup(format!("PVH start info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn e820_describes_low_and_high_ram() {
        let (mem, _f) = create_guest_memory(128).unwrap();
        let table = e820_table(&mem);
        assert_eq!(
            table,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
        assert_eq!(
            crate::testing::e820_log_line(&table[1]),
            "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable"
        );
    }

    #[test]
    fn e820_skips_the_mmio_gap_for_large_memory() {
        let (mem, _f) = create_guest_memory(4096).unwrap();
        let table = e820_table(&mem);
        assert_eq!(table.len(), 3);
        assert_eq!(table[1].addr + table[1].size, layout::MMIO_GAP_START);
        assert_eq!(table[2].addr, 1 << 32);
        assert_eq!(table[2].size, (4096u64 << 20) - layout::MMIO_GAP_START);
    }

    #[test]
    fn zero_page_layout_matches_the_boot_protocol() {
        let (mem, _f) = create_guest_memory(64).unwrap();
        let e820 = e820_table(&mem);
        let params = build_boot_params(None, 42, &e820).unwrap();
        write_boot_params(&mem, &params).unwrap();
        let zp = layout::ZERO_PAGE_START;
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        let at = |off: u64| GuestAddress(zp + off);
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap(), 2, "e820_entries");
        assert_eq!(mem.read_obj::<u16>(at(0x1fe)).unwrap(), 0xaa55, "boot_flag");
        assert_eq!(
            mem.read_obj::<u32>(at(0x202)).unwrap(),
            0x5372_6448,
            "header"
        );
        assert_eq!(
            mem.read_obj::<u8>(at(0x210)).unwrap(),
            0xff,
            "type_of_loader"
        );
        assert_eq!(
            mem.read_obj::<u32>(at(0x228)).unwrap(),
            0x20000,
            "cmd_line_ptr"
        );
        assert_eq!(mem.read_obj::<u32>(at(0x238)).unwrap(), 42, "cmdline_size");
        // e820_table at 0x2d0, 20-byte packed entries.
        assert_eq!(mem.read_obj::<u64>(at(0x2d0)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u64>(at(0x2d8)).unwrap(), 0x9fc00);
        assert_eq!(mem.read_obj::<u32>(at(0x2e0)).unwrap(), E820_RAM);
        assert_eq!(mem.read_obj::<u64>(at(0x2e4)).unwrap(), 0x10_0000);
        assert_eq!(
            mem.read_obj::<u64>(at(0x2ec)).unwrap(),
            (64 << 20) - 0x10_0000
        );
        assert_eq!(mem.read_obj::<u32>(at(0x2f4)).unwrap(), E820_RAM);
    }

    #[test]
    fn bzimage_header_is_kept_and_loader_fields_overridden() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            code32_start: 0x10_0000,
            xloadflags: 1,
            cmd_line_ptr: 0x1234,
            ..Default::default()
        };
        let params = build_boot_params(Some(hdr), 7, &[]).unwrap();
        assert_eq!({ params.hdr.setup_sects }, 27);
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.xloadflags }, 1);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.cmdline_size }, 7);
        assert_eq!({ params.e820_entries }, 0);
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_and_memmap() {
        let (mem, _f) = create_guest_memory(64).unwrap();
        let e820 = e820_table(&mem);
        let (info, memmap) = build_pvh_info(&e820);
        write_pvh_info(&mem, &info, &memmap).unwrap();
        let base = layout::PVH_INFO_START;
        let at = |off: u64| GuestAddress(base + off);
        // struct hvm_start_info, xen/include/public/arch-x86/hvm/start_info.h
        assert_eq!(mem.read_obj::<u32>(at(0)).unwrap(), 0x336e_c578, "magic");
        assert_eq!(mem.read_obj::<u32>(at(4)).unwrap(), 1, "version");
        assert_eq!(
            mem.read_obj::<u64>(at(24)).unwrap(),
            0x20000,
            "cmdline_paddr"
        );
        assert_eq!(mem.read_obj::<u64>(at(40)).unwrap(), 0x7000, "memmap_paddr");
        assert_eq!(mem.read_obj::<u32>(at(48)).unwrap(), 2, "memmap_entries");
        // 24-byte memmap entries: addr, size, type, reserved.
        let m = layout::PVH_MEMMAP_START;
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(m + 24)).unwrap(),
            0x10_0000
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(m + 32)).unwrap(),
            (64 << 20) - 0x10_0000
        );
        assert_eq!(mem.read_obj::<u32>(GuestAddress(m + 40)).unwrap(), E820_RAM);
        // The memory map must not overlap the start info.
        assert!(base + 56 <= m);
    }
}
