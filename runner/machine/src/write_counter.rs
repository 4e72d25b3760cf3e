//! The bytes a guest wrote to its root disk, counted by our block device
//! and read by the runner without asking: one word of a memory file the
//! runner makes and the VM (or device) process maps too. The device adds
//! to it; the runner only reads it. A process the guest took over could
//! write anything there, which misstates only its own job's figure.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// One page: the smallest mapping, of which the counter is the first word.
const PAGE: usize = 4096;

/// The runner's side: the memory file and its read-only mapping.
pub struct WriteCounter {
    file: OwnedFd,
    word: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only read, through an atomic, from any thread.
unsafe impl Send for WriteCounter {}
// SAFETY: as for Send: shared reads of an atomic word.
unsafe impl Sync for WriteCounter {}

impl WriteCounter {
    pub fn new() -> std::io::Result<WriteCounter> {
        // SAFETY: a new memory file; its descriptor is owned below.
        let raw = unsafe { libc::memfd_create(c"runner-disk-written".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor nothing else owns.
        let file = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing the file just made.
        if unsafe { libc::ftruncate(file.as_raw_fd(), PAGE as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let word = map(file.as_raw_fd(), libc::PROT_READ)?;
        Ok(WriteCounter { file, word })
    }

    /// The descriptor for the process whose device counts.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn bytes(&self) -> u64 {
        // SAFETY: a mapped, aligned word, alive as long as `self`.
        unsafe { self.word.as_ref() }.load(Ordering::Relaxed)
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        // SAFETY: the page mapped in `new`, unmapped once.
        unsafe { libc::munmap(self.word.as_ptr().cast(), PAGE) };
    }
}

/// The counting process's side: maps the counter the runner passed as `fd`
/// for as long as the process lives.
pub fn map_for_device(fd: RawFd) -> Result<&'static AtomicU64, String> {
    let word = map(fd, libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|e| format!("mapping the disk write counter: {e}"))?;
    // SAFETY: the mapping is never unmapped: it lives as long as the process.
    Ok(unsafe { word.as_ref() })
}

fn map(fd: RawFd, protection: libc::c_int) -> std::io::Result<NonNull<AtomicU64>> {
    // SAFETY: a new shared mapping of one page of `fd`; checked below.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            protection,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // Page-aligned, so aligned for an AtomicU64.
    NonNull::new(at.cast()).ok_or_else(|| std::io::Error::other("mmap gave a null page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_device_side_adds_the_runner_reads() {
        let counter = WriteCounter::new().unwrap();
        assert_eq!(counter.bytes(), 0);
        let device = map_for_device(counter.fd()).unwrap();
        device.fetch_add(4096, Ordering::Relaxed);
        device.fetch_add(512, Ordering::Relaxed);
        assert_eq!(counter.bytes(), 4608);
    }
}
