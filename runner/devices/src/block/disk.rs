//! The storage behind a block device: a base image that is only ever read,
//! plus (in overlay and layer modes) a copy-on-write layer for guest
//! writes; or nothing yet, for an empty slot a disk is attached to later.

use std::io;
use std::path::Path;

use super::base::{check_range, BaseImage, DiskError};
use super::config::{DiskMode, OVERLAY_CHUNK_SIZE, SECTOR_SIZE};
use super::overlay::Overlay;

enum Backing {
    ReadOnly(BaseImage),
    Overlay(Overlay),
    /// No disk (yet): an empty slot of capacity 0.
    Vacant,
}

/// What a block device reads and writes: a whole number of sectors.
pub struct Disk {
    backing: Backing,
    size: u64,
}

impl Disk {
    /// Opens `image` read-only and, in overlay mode, creates the overlay
    /// (in layer mode, both are given open and `image` only names them).
    pub fn open(image: &Path, mode: &DiskMode) -> Result<Disk, DiskError> {
        let base = match mode {
            DiskMode::Layer { base, .. } => {
                let file = base.try_clone().map_err(|source| DiskError::Open {
                    path: image.to_path_buf(),
                    source,
                })?;
                BaseImage::from_file(file, image)?
            }
            DiskMode::ReadOnly | DiskMode::Overlay { .. } => BaseImage::open(image)?,
        };
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
            DiskMode::Layer { layer, .. } => {
                let layer_err = |source| DiskError::Layer {
                    image: image.to_path_buf(),
                    source,
                };
                let file = layer.try_clone().map_err(layer_err)?;
                let overlay =
                    Overlay::persistent(base, size, file, OVERLAY_CHUNK_SIZE).map_err(layer_err)?;
                Backing::Overlay(overlay)
            }
        };
        Ok(Disk { backing, size })
    }

    /// No disk: capacity 0, every access out of range. A slot that a
    /// snapshot carries empty, for a disk attached after the restore.
    pub fn vacant() -> Disk {
        Disk {
            backing: Backing::Vacant,
            size: 0,
        }
    }

    /// Whether this is an empty slot ([`Disk::vacant`]).
    pub fn is_vacant(&self) -> bool {
        matches!(self.backing, Backing::Vacant)
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
            Backing::ReadOnly(_) | Backing::Vacant => None,
        }
    }

    /// The overlay, in overlay mode, for restoring a snapshot into it.
    pub fn overlay_mut(&mut self) -> Option<&mut Overlay> {
        match &mut self.backing {
            Backing::Overlay(o) => Some(o),
            Backing::ReadOnly(_) | Backing::Vacant => None,
        }
    }

    /// Fills `buf` from the disk at `offset`; fails if the range leaves the disk.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        match &self.backing {
            Backing::ReadOnly(base) => base.read_at(buf, offset),
            Backing::Overlay(overlay) => overlay.read_at(buf, offset),
            // Only an empty access passes the range check of an empty disk.
            Backing::Vacant => Ok(()),
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
            Backing::Vacant => Ok(()),
        }
    }

    /// Makes completed writes durable. The base is never written; a
    /// throwaway overlay is an unlinked file that no crash can bring back,
    /// so syncing it would only cost time; a cache's layer is synced, so
    /// that a guest's `sync` means its data is in the file.
    pub fn flush(&self) -> io::Result<()> {
        match &self.backing {
            Backing::Overlay(overlay) => overlay.sync(),
            Backing::ReadOnly(_) | Backing::Vacant => Ok(()),
        }
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
