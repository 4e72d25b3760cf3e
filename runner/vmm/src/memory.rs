//! Guest RAM: one memfd, mapped shared, split into regions around the
//! 32-bit device gap. A file (rather than anonymous memory) backs it so a
//! later snapshot can save/restore or share it without copying through the
//! VMM, and vhost-user style back-ends could map the same pages.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use crate::error::{Error, Result};
use crate::layout;

/// The guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Smallest guest we agree to build: the boot structures below 1 MiB plus
/// a kernel need more than this anyway.
pub const MIN_MEM_MIB: u32 = 16;

/// Creates `size_mib` MiB of memfd-backed guest RAM laid out per
/// [`layout::ram_ranges`]. Returns the memory and the memfd.
pub fn create_guest_memory(size_mib: u32) -> Result<(GuestMemoryMmap, File)> {
    if size_mib < MIN_MEM_MIB {
        return Err(Error::Config(format!(
            "memory size {size_mib} MiB is below the minimum of {MIN_MEM_MIB} MiB"
        )));
    }
    let size = u64::from(size_mib) << 20;
    let file = memfd("runner-guest-ram")?;
    file.set_len(size)
        .map_err(Error::io("sizing guest memfd"))?;
    let mem = map_regions(&file, 0, size, libc::MAP_SHARED)?;
    Ok((mem, file))
}

/// Guest RAM mapped privately (copy-on-write) from a snapshot file whose
/// memory section starts at `offset`: clones of one snapshot share its
/// pages until they write them, and a page is only read when the guest
/// first touches it.
pub fn map_snapshot_memory(file: &File, offset: u64, size_mib: u32) -> Result<GuestMemoryMmap> {
    map_regions(file, offset, u64::from(size_mib) << 20, libc::MAP_PRIVATE)
}

/// Maps `size` bytes of `file` from `offset` as the guest's RAM regions,
/// back to back in the file.
fn map_regions(file: &File, offset: u64, size: u64, sharing: i32) -> Result<GuestMemoryMmap> {
    let mut regions = Vec::new();
    let mut file_offset = offset;
    for (start, len) in layout::ram_ranges(size) {
        let len_usize = usize::try_from(len)
            .map_err(|_| Error::Memory(format!("region of {len:#x} bytes too large")))?;
        let fd = file
            .try_clone()
            .map_err(Error::io("duplicating guest memory fd"))?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(fd, file_offset)),
            len_usize,
            libc::PROT_READ | libc::PROT_WRITE,
            sharing | libc::MAP_NORESERVE,
        )
        .map_err(|e| Error::Memory(format!("mmap of {len:#x} bytes: {e}")))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| Error::Memory(format!("region at {start:#x} overflows")))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| Error::Memory(format!("assembling regions: {e}")))
}

/// Writes guest RAM into `file` from `offset`, in the order
/// [`map_snapshot_memory`] maps it back, leaving zero pages as holes. The
/// guest must not run meanwhile.
pub fn save_guest_memory(mem: &GuestMemoryMmap, file: &File, offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region's mapping is `len` bytes and lives as long as
        // `mem`; the vCPUs are stopped, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
        crate::snapshot::file::write_sparse(file, bytes, at)?;
        at += region.len();
    }
    Ok(())
}

/// Tells KVM about every region of `mem`, one memory slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(format!("host address of region: {e}")))?;
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the mapping is owned by `mem`, which the VMM keeps alive
        // (and unchanged) until after the VM fd is closed.
        unsafe { vm.set_user_memory_region(mem_region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Last guest address of RAM below the device gap, plus one.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= layout::MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

fn memfd(name: &str) -> Result<File> {
    let cname = CString::new(name).map_err(|_| Error::Memory("memfd name".into()))?;
    // SAFETY: a valid NUL-terminated name; the result is checked below.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_memfd_backed_and_shared() {
        let (mem, file) = create_guest_memory(32).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 32 << 20);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        // The same bytes are visible through the memfd: it is MAP_SHARED.
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(low_ram_end(&mem), 32 << 20);
    }

    #[test]
    fn too_small_memory_is_rejected() {
        let err = create_guest_memory(4).unwrap_err().to_string();
        assert!(err.contains("below the minimum"), "{err}");
    }
}
