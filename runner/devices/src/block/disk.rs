//! The storage behind a block device: a base image that is only ever read,
//! plus (in overlay mode) a private copy-on-write layer for guest writes.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::overlay::Overlay;
use super::{DiskMode, OVERLAY_CHUNK_SIZE, SECTOR_SIZE};

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {0} is not a regular file or a block device")]
    NotAnImage(PathBuf),
    #[error("disk image {0} is empty")]
    Empty(PathBuf),
    #[error("cannot create the copy-on-write overlay for {image} in {dir}: {source}")]
    Overlay {
        image: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The error for an access outside `0..size`.
pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    let in_range = u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|end| end <= size);
    if in_range {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "access of {len} bytes at {offset} is beyond the end of the disk ({size} bytes)"
            ),
        ))
    }
}

/// A disk image opened read-only. Nothing in this crate can write it: the
/// file descriptor itself is `O_RDONLY`.
#[derive(Debug)]
pub struct BaseImage {
    file: File,
    len: u64,
    path: PathBuf,
}

impl BaseImage {
    /// Opens `path` read-only and measures it.
    pub fn open(path: &Path) -> Result<BaseImage, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotAnImage(path.to_path_buf()));
        }
        // Seeking to the end measures block devices too (their st_size is 0).
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if len == 0 {
            return Err(DiskError::Empty(path.to_path_buf()));
        }
        Ok(BaseImage {
            file,
            len,
            path: path.to_path_buf(),
        })
    }

    /// Size of the image file in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an empty image is refused by [`BaseImage::open`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` from `offset`; bytes past the end of the file read as zero
    /// (the disk is rounded up to whole sectors).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

enum Backing {
    ReadOnly(BaseImage),
    Overlay(Overlay),
}

/// What a block device reads and writes: a whole number of sectors.
pub struct Disk {
    backing: Backing,
    size: u64,
}

impl Disk {
    /// Opens `image` read-only and, in overlay mode, creates the overlay.
    pub fn open(image: &Path, mode: &DiskMode) -> Result<Disk, DiskError> {
        let base = BaseImage::open(image)?;
        // A trailing partial sector is still addressable; its missing bytes
        // read as zero.
        let size = base.len().div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        let backing = match mode {
            DiskMode::ReadOnly => Backing::ReadOnly(base),
            DiskMode::Overlay { dir } => {
                let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
                let overlay =
                    Overlay::new(base, size, &dir, OVERLAY_CHUNK_SIZE).map_err(|source| {
                        DiskError::Overlay {
                            image: image.to_path_buf(),
                            dir,
                            source,
                        }
                    })?;
                Backing::Overlay(overlay)
            }
        };
        Ok(Disk { backing, size })
    }

    /// Size of the disk in bytes, a multiple of [`SECTOR_SIZE`].
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self.backing, Backing::ReadOnly(_))
    }

    /// The overlay, in overlay mode.
    pub fn overlay(&self) -> Option<&Overlay> {
        match &self.backing {
            Backing::Overlay(o) => Some(o),
            Backing::ReadOnly(_) => None,
        }
    }

    /// The overlay, in overlay mode, for restoring a snapshot into it.
    pub fn overlay_mut(&mut self) -> Option<&mut Overlay> {
        match &mut self.backing {
            Backing::Overlay(o) => Some(o),
            Backing::ReadOnly(_) => None,
        }
    }

    /// Fills `buf` from the disk at `offset`; fails if the range leaves the disk.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        match &self.backing {
            Backing::ReadOnly(base) => base.read_at(buf, offset),
            Backing::Overlay(overlay) => overlay.read_at(buf, offset),
        }
    }

    /// Writes `buf` at `offset`; fails on a read-only disk or if the range
    /// leaves the disk.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        match &mut self.backing {
            Backing::ReadOnly(_) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            )),
            Backing::Overlay(overlay) => overlay.write_at(buf, offset),
        }
    }

    /// Makes completed writes durable. Nothing to do in either mode: the base
    /// is never written, and the overlay is an unlinked file that no crash
    /// can bring back, so syncing it would only cost time.
    pub fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp image");
        f.write_all(bytes).expect("write image");
        f
    }

    #[test]
    fn read_only_disk_refuses_writes_and_reads_through() {
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
        let img = image(&data);
        let mut disk = Disk::open(img.path(), &DiskMode::ReadOnly).expect("open");
        assert!(disk.is_read_only());
        assert!(disk.overlay().is_none());
        assert_eq!(disk.size(), 2048);
        let err = disk.write_at(&[1; 512], 0).expect_err("write must fail");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let mut buf = vec![0; 1024];
        disk.read_at(&mut buf, 512).expect("read");
        assert_eq!(buf, data[512..1536]);
        assert_eq!(std::fs::read(img.path()).expect("reread"), data);
    }

    #[test]
    fn size_rounds_up_to_whole_sectors_and_reads_past_eof_are_zero() {
        let data = vec![0xAB; 1000];
        let img = image(&data);
        let disk = Disk::open(img.path(), &DiskMode::ReadOnly).expect("open");
        assert_eq!(disk.size(), 1024);
        let mut buf = vec![0xFF; 512];
        disk.read_at(&mut buf, 512).expect("read last sector");
        assert!(buf[..488].iter().all(|&b| b == 0xAB));
        assert!(buf[488..].iter().all(|&b| b == 0));
        let err = disk.read_at(&mut buf, 1024).expect_err("beyond the disk");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = disk
            .read_at(&mut buf, u64::MAX - 10)
            .expect_err("overflowing offset");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn open_errors_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.ext4");
        let err = Disk::open(&missing, &DiskMode::ReadOnly)
            .err()
            .expect("missing");
        assert!(matches!(err, DiskError::Open { .. }), "{err}");
        assert!(err.to_string().contains("missing.ext4"), "{err}");

        let err = Disk::open(dir.path(), &DiskMode::ReadOnly)
            .err()
            .expect("directory");
        assert!(matches!(err, DiskError::NotAnImage(_)), "{err}");

        let empty = image(&[]);
        let err = Disk::open(empty.path(), &DiskMode::ReadOnly)
            .err()
            .expect("empty");
        assert!(matches!(err, DiskError::Empty(_)), "{err}");

        let img = image(&[1; 512]);
        let mode = DiskMode::Overlay {
            dir: Some(dir.path().join("no-such-dir")),
        };
        let err = Disk::open(img.path(), &mode)
            .err()
            .expect("bad overlay dir");
        assert!(matches!(err, DiskError::Overlay { .. }), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
