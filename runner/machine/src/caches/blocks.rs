//! Block-level work on images: the host moves a guest's bytes around
//! without ever looking at what they mean.
//!
//! - [`clone_or_copy`]: a new version starts as its base, shared with it
//!   (`FICLONE`, a reflink) where the file system can, else as a sparse
//!   copy of the base's data extents (`SEEK_DATA`/`SEEK_HOLE`).
//! - [`apply_ranges`]: then each range the job wrote is copied over it
//!   from the layer, at the same offset; an all-zero block becomes a hole.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// How much is read and written at once.
const BUFFER: usize = 1 << 20;
/// The granularity at which zeros become holes: the file system's block.
const BLOCK: usize = 4096;

#[cfg(test)]
thread_local! {
    /// Tests make the next writes of this thread fail with this errno (a
    /// full disk cannot be had without privileges).
    pub static FAIL_WRITES_WITH: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

fn injected_failure() -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(errno) = FAIL_WRITES_WITH.with(|f| f.get()) {
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    Ok(())
}

/// Whether `dst` (`len` bytes long afterwards) shares its blocks with `src`
/// or holds a copy of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    Reflinked,
    Copied,
}

/// Makes `dst` (empty) a copy of the `len`-byte `src`, sparse.
pub fn clone_or_copy(src: &File, dst: &File, len: u64) -> std::io::Result<Copied> {
    injected_failure()?;
    // SAFETY: FICLONE takes the source's file descriptor as its argument
    // and reads no memory of ours.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if cloned == 0 {
        dst.set_len(len)?;
        return Ok(Copied::Reflinked);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // No reflinks here (ext4, tmpfs), or not between these two files.
        Some(
            libc::EOPNOTSUPP
            | libc::ENOTTY
            | libc::EXDEV
            | libc::EINVAL
            | libc::ENOSYS
            | libc::EPERM,
        ) => {}
        _ => return Err(err),
    }
    dst.set_len(len)?;
    for extent in data_extents(src, len) {
        copy_range(src, dst, extent?)?;
    }
    Ok(Copied::Copied)
}

/// The data extents of the first `len` bytes of `file`: everything but
/// its holes (all of it where the file system cannot tell).
pub fn data_extents(
    file: &File,
    len: u64,
) -> impl Iterator<Item = std::io::Result<Range<u64>>> + '_ {
    let mut at = 0u64;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let start = match seek(file, at, libc::SEEK_DATA) {
            Ok(Some(start)) if start < len => start,
            Ok(_) => {
                at = len;
                return None;
            }
            Err(e) => {
                at = len;
                return Some(Err(e));
            }
        };
        let end = match seek(file, start, libc::SEEK_HOLE) {
            Ok(Some(end)) => end.min(len),
            Ok(None) => len,
            Err(e) => {
                at = len;
                return Some(Err(e));
            }
        };
        // A file system that reports no progress would loop forever.
        if end <= start {
            at = len;
            return Some(Ok(start..len));
        }
        at = end;
        Some(Ok(start..end))
    })
}

/// `lseek(fd, at, whence)`; `None` past the last data (ENXIO).
fn seek(file: &File, at: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a file descriptor we own; no memory involved.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        return Ok(None);
    }
    Err(err)
}

/// Copies `range` of `src` to the same offsets in `dst`, in the kernel
/// where it can (`copy_file_range`), through a buffer otherwise.
fn copy_range(src: &File, dst: &File, range: Range<u64>) -> std::io::Result<()> {
    let mut at = range.start;
    while at < range.end {
        let mut src_off = libc::loff_t::try_from(at).map_err(std::io::Error::other)?;
        let mut dst_off = src_off;
        let want = usize::try_from(range.end - at)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both offsets are ours to update; the descriptors are open.
        let copied = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut src_off,
                dst.as_raw_fd(),
                &mut dst_off,
                want,
                0,
            )
        };
        if copied > 0 {
            at += copied as u64;
            continue;
        }
        if copied == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the base image ended early",
            ));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
                return copy_buffered(src, dst, at..range.end)
            }
            _ => return Err(err),
        }
    }
    Ok(())
}

fn copy_buffered(src: &File, dst: &File, range: Range<u64>) -> std::io::Result<()> {
    let mut buffer = vec![0u8; BUFFER];
    let mut at = range.start;
    while at < range.end {
        let n = usize::try_from(range.end - at)
            .unwrap_or(BUFFER)
            .min(BUFFER);
        src.read_exact_at(&mut buffer[..n], at)?;
        dst.write_all_at(&buffer[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies each of `ranges` from `layer` to the same offsets of `dst`; an
/// all-zero block is punched out of `dst` instead of written, so a job that
/// deletes files does not grow the cache. Returns the bytes copied. The
/// ranges must lie within both files (the caller checked them against the
/// disk's size); a layer shorter than them is an error, never zeros.
pub fn apply_ranges(layer: &File, dst: &File, ranges: &[Range<u64>]) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; BUFFER];
    let mut copied = 0;
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let n = usize::try_from(range.end - at)
                .unwrap_or(BUFFER)
                .min(BUFFER);
            layer.read_exact_at(&mut buffer[..n], at).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(e.kind(), "the layer is shorter than what it says it holds")
                } else {
                    e
                }
            })?;
            write_sparse(dst, &buffer[..n], at)?;
            at += n as u64;
            copied += n as u64;
        }
    }
    Ok(copied)
}

/// Writes `data` at `at`, punching a hole where a whole run of blocks is zero.
pub(super) fn write_sparse(dst: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let mut start = 0;
    while start < data.len() {
        let zero = is_zero(&data[start..(start + BLOCK).min(data.len())]);
        let mut end = start;
        while end < data.len() && is_zero(&data[end..(end + BLOCK).min(data.len())]) == zero {
            end = (end + BLOCK).min(data.len());
        }
        let offset = at + start as u64;
        if zero {
            punch_hole(dst, offset, (end - start) as u64, &data[start..end])?;
        } else {
            injected_failure()?;
            dst.write_all_at(&data[start..end], offset)?;
        }
        start = end;
    }
    Ok(())
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Makes `len` bytes at `offset` read as zero without holding blocks;
/// writes the zeros where the file system cannot punch.
fn punch_hole(dst: &File, offset: u64, len: u64, zeros: &[u8]) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (Ok(off), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::other("offset out of range"));
    };
    // SAFETY: fallocate on a file descriptor we own; no memory involved.
    if unsafe { libc::fallocate(dst.as_raw_fd(), mode, off, length) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
            injected_failure()?;
            dst.write_all_at(zeros, offset)
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file_with(dir: &std::path::Path, name: &str, len: u64, writes: &[(u64, &[u8])]) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
            .unwrap();
        file.set_len(len).unwrap();
        for (at, bytes) in writes {
            file.write_all_at(bytes, *at).unwrap();
        }
        file
    }

    #[test]
    fn a_sparse_copy_keeps_the_bytes_and_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let len = 8 << 20;
        let src = file_with(
            dir.path(),
            "src",
            len,
            &[(0, b"head"), (5 << 20, &[7u8; 10000])],
        );
        let dst = file_with(dir.path(), "dst", 0, &[]);
        clone_or_copy(&src, &dst, len).unwrap();
        let (a, b) = (
            std::fs::read(dir.path().join("src")).unwrap(),
            std::fs::read(dir.path().join("dst")).unwrap(),
        );
        assert!(a == b);
        // Far less than the apparent 8 MiB is allocated (two small extents).
        assert!(dst.metadata().unwrap().blocks() * 512 < 1 << 20);
    }

    #[test]
    fn zeros_over_data_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let dst = file_with(dir.path(), "dst", len, &[(0, &[1u8; 1 << 20])]);
        let before = dst.metadata().unwrap().blocks();
        let layer = file_with(dir.path(), "layer", len, &[(0, &[2u8; 4096])]);
        // The layer holds 4 KiB of twos, then zeros up to 512 KiB.
        let copied = apply_ranges(&layer, &dst, std::slice::from_ref(&(0..(512 << 10)))).unwrap();
        assert_eq!(copied, 512 << 10);
        let after = std::fs::read(dir.path().join("dst")).unwrap();
        assert!(after[..4096].iter().all(|&b| b == 2));
        assert!(after[4096..512 << 10].iter().all(|&b| b == 0));
        assert!(after[512 << 10..].iter().all(|&b| b == 1));
        assert!(dst.metadata().unwrap().blocks() < before);
    }

    #[test]
    fn a_layer_shorter_than_its_ranges_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dst = file_with(dir.path(), "dst", 8192, &[]);
        let layer = file_with(dir.path(), "layer", 4096, &[]);
        let err = apply_ranges(&layer, &dst, std::slice::from_ref(&(0..8192))).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
    }
}
