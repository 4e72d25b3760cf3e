//! Loads the guest kernel with linux-loader and decides how to enter it.
//!
//! Before linux-loader touches guest memory we check the image ourselves:
//! that it is an x86_64 ELF or a 64-bit-capable bzImage, that the file is
//! not truncated, and that it fits the guest's RAM. Each failure becomes one
//! error that names the file and the problem.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::GuestAddress;

use crate::error::{Error, Result};
use crate::layout;
use crate::memory::{low_ram_end, GuestMemoryMmap};

/// How the vCPU enters the loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start info.
    Pvh(GuestAddress),
    /// 64-bit Linux boot protocol: long mode on identity page tables,
    /// `%rsi` = zero page. `setup_header` is present for a bzImage.
    Linux64 {
        entry: GuestAddress,
        setup_header: Option<setup_header>,
    },
}

/// The result of loading a kernel image.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First guest address past everything the kernel occupies at entry.
    pub end: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const BZIMAGE_HDR_OFFSET: u64 = 0x1f1;
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry of a bzImage is 0x200 past its protected-mode start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads `path` into `mem` and returns where and how to enter it.
pub fn load_kernel(mem: &GuestMemoryMmap, mem_mib: u32, path: &Path) -> Result<LoadedKernel> {
    let open_err = |source| Error::KernelOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let file_len = file.metadata().map_err(open_err)?.len();
    let mut head = vec![0u8; 0x1000.min(file_len as usize)];
    file.read_exact(&mut head).map_err(open_err)?;
    let format_err = |detail: String| Error::KernelFormat {
        path: path.to_path_buf(),
        detail,
    };
    let ram_end = low_ram_end(mem);
    let too_big = |needed: u64| Error::KernelTooBig {
        path: path.to_path_buf(),
        mem_mib,
        needed,
    };

    if head.starts_with(ELF_MAGIC) {
        let needed = check_elf(&mut file, &head, file_len).map_err(format_err)?;
        if needed > ram_end {
            return Err(too_big(needed));
        }
        let result = Elf::load(
            mem,
            None,
            &mut file,
            Some(GuestAddress(layout::HIGH_MEMORY_START)),
        )
        .map_err(|e| format_err(e.to_string()))?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr),
            _ => EntryPoint::Linux64 {
                entry: result.kernel_load,
                setup_header: None,
            },
        };
        return Ok(LoadedKernel {
            entry,
            end: result.kernel_end,
        });
    }

    if head.len() >= BZIMAGE_MAGIC_OFFSET + 4
        && &head[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4] == b"HdrS"
    {
        let needed = check_bzimage(&head, file_len).map_err(format_err)?;
        if needed > ram_end {
            return Err(too_big(needed));
        }
        let result = BzImage::load(
            mem,
            None,
            &mut file,
            Some(GuestAddress(layout::HIGH_MEMORY_START)),
        )
        .map_err(|e| format_err(e.to_string()))?;
        let entry = GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET);
        return Ok(LoadedKernel {
            entry: EntryPoint::Linux64 {
                entry,
                setup_header: result.setup_header,
            },
            end: needed,
        });
    }

    Err(format_err(format!(
        "{file_len} bytes, neither ELF magic nor the bzImage \"HdrS\" signature at 0x202"
    )))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Validates an ELF image; returns the highest guest address it loads to.
fn check_elf(file: &mut File, head: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    if head.len() < 64 {
        return Err(format!("truncated ELF header ({file_len} bytes)"));
    }
    if head[4] != ELFCLASS64 {
        return Err("32-bit ELF; an x86_64 vmlinux is needed".into());
    }
    let machine = u16_at(head, 18).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(format!("ELF machine {machine}, not x86_64 ({EM_X86_64})"));
    }
    let phoff = u64_at(head, 32).unwrap_or(0);
    let phentsize = u64::from(u16_at(head, 54).unwrap_or(0));
    let phnum = u64::from(u16_at(head, 56).unwrap_or(0));
    if phnum == 0 || phentsize < 56 {
        return Err("ELF has no program headers".into());
    }
    let table_len = phentsize * phnum;
    if phoff.saturating_add(table_len) > file_len {
        return Err(format!(
            "truncated: program headers end at {:#x} but the file has {file_len:#x} bytes",
            phoff.saturating_add(table_len)
        ));
    }
    let mut table = vec![0u8; table_len as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| format!("reading program headers: {e}"))?;
    let mut end = 0u64;
    for (i, ph) in table.chunks(phentsize as usize).enumerate() {
        if u32_at(ph, 0) != Some(PT_LOAD) {
            continue;
        }
        let (offset, paddr) = (u64_at(ph, 8).unwrap_or(0), u64_at(ph, 24).unwrap_or(0));
        let (filesz, memsz) = (u64_at(ph, 32).unwrap_or(0), u64_at(ph, 40).unwrap_or(0));
        if offset.saturating_add(filesz) > file_len {
            return Err(format!(
                "truncated: segment {i} ends at {:#x} but the file has {file_len:#x} bytes",
                offset.saturating_add(filesz)
            ));
        }
        if paddr < layout::HIGH_MEMORY_START {
            return Err(format!("segment {i} loads at {paddr:#x}, below 1 MiB"));
        }
        end = end.max(paddr.saturating_add(memsz.max(filesz)));
    }
    if end == 0 {
        return Err("ELF has no loadable segments".into());
    }
    Ok(end)
}

/// Validates a bzImage; returns the highest address it needs at runtime
/// (its load address plus `init_size`, the room it decompresses into).
fn check_bzimage(head: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    let hdr = |off: u64| (BZIMAGE_HDR_OFFSET + off) as usize;
    let setup_sects = u64::from(head[hdr(0)]);
    let setup_sects = if setup_sects == 0 { 4 } else { setup_sects };
    let version = u16_at(head, hdr(0x15)).unwrap_or(0);
    if version < 0x0206 {
        return Err(format!(
            "boot protocol {version:#x} is too old (need 2.06+)"
        ));
    }
    let syssize = u64::from(u32_at(head, hdr(0x3)).unwrap_or(0)) * 16;
    let setup_len = (setup_sects + 1) * 512;
    if setup_len + syssize > file_len {
        return Err(format!(
            "truncated: header says {:#x} bytes but the file has {file_len:#x}",
            setup_len + syssize
        ));
    }
    let xloadflags = u16_at(head, hdr(0x45)).unwrap_or(0);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err("bzImage has no 64-bit entry point (XLF_KERNEL_64 unset)".into());
    }
    let code32_start = u64::from(u32_at(head, hdr(0x23)).unwrap_or(0));
    let init_size = u64::from(u32_at(head, hdr(0x6f)).unwrap_or(0));
    Ok(code32_start + init_size.max(syssize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A minimal x86_64 ELF with one PT_LOAD segment of `code` at `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = ELFCLASS64;
        b[5] = 1; // little endian
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        b[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b.extend_from_slice(code);
        b
    }

    #[test]
    fn elf_without_pvh_note_uses_64bit_entry() {
        let (mem, _f) = create_guest_memory(32).unwrap();
        let img = write_tmp(&tiny_elf(0x20_0000, &[0xf4; 16], 0x1000));
        let k = load_kernel(&mem, 32, img.path()).unwrap();
        assert_eq!(
            k.entry,
            EntryPoint::Linux64 {
                entry: GuestAddress(0x20_0000),
                setup_header: None
            }
        );
        assert_eq!(k.end, 0x20_1000);
        use vm_memory::Bytes;
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0xf4);
    }

    #[test]
    fn garbage_is_one_clear_error() {
        let (mem, _f) = create_guest_memory(32).unwrap();
        let img = write_tmp(b"#!/bin/sh\necho not a kernel\n");
        let err = load_kernel(&mem, 32, img.path()).unwrap_err().to_string();
        assert!(
            err.contains("not a usable x86_64 ELF vmlinux or bzImage"),
            "{err}"
        );
        assert!(err.contains("neither ELF magic"), "{err}");
    }

    #[test]
    fn truncated_elf_is_reported() {
        let (mem, _f) = create_guest_memory(32).unwrap();
        let full = tiny_elf(0x20_0000, &[0x90; 256], 0x1000);
        let img = write_tmp(&full[..full.len() - 100]);
        let err = load_kernel(&mem, 32, img.path()).unwrap_err().to_string();
        assert!(err.contains("truncated: segment 0"), "{err}");
        let img = write_tmp(&full[..40]);
        let err = load_kernel(&mem, 32, img.path()).unwrap_err().to_string();
        assert!(err.contains("truncated ELF header"), "{err}");
    }

    #[test]
    fn kernel_larger_than_memory_is_reported() {
        let (mem, _f) = create_guest_memory(16).unwrap();
        let img = write_tmp(&tiny_elf(0x100_0000, &[0x90; 16], 0x80_0000));
        let err = load_kernel(&mem, 16, img.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KernelTooBig {
                    needed: 0x180_0000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("too small"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let (mem, _f) = create_guest_memory(16).unwrap();
        let err = load_kernel(&mem, 16, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn bzimage_header_checks() {
        let mut head = vec![0u8; 0x1000];
        head[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        head[0x1f1] = 1; // setup_sects
        head[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        head[0x1f4..0x1f8].copy_from_slice(&0x10u32.to_le_bytes()); // syssize 256 B
        head[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        head[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
                                                                         // No XLF_KERNEL_64.
        assert!(check_bzimage(&head, 0x1000)
            .unwrap_err()
            .contains("XLF_KERNEL_64"));
        head[0x236] = 1;
        assert_eq!(check_bzimage(&head, 0x1000).unwrap(), 0x50_0000);
        assert!(check_bzimage(&head, 0x300)
            .unwrap_err()
            .contains("truncated"));
    }
}
