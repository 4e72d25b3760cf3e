//! The disk image a block device is made from, opened read-only: the
//! bottom layer of every disk, which nothing in this crate can write.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

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
        let file = File::open(path).map_err(open_err)?;
        BaseImage::from_file(file, path)
    }

    /// An image someone else opened (read-only: nothing here writes it);
    /// `path` names it in messages.
    pub fn from_file(mut file: File, path: &Path) -> Result<BaseImage, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
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

/// Why a disk could not be opened: its image (here), or the overlay
/// [`super::disk::Disk::open`] puts over it.
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
    #[error("cannot use the layer file of {image}: {source}")]
    Layer {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the copy-on-write overlay for {image} in {dir}: {source}")]
    Overlay {
        image: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}
