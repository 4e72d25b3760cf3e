//! The empty ext4 image a job with no cache to restore starts from: made
//! once per size, on the host, by e2fsprogs' `mke2fs` on a sparse file, and
//! kept in `<dir>/empty/<size>.img` for every later cold start.
//!
//! The flags, and why:
//! - `MKE2FS_CONFIG=/dev/null` and every feature named on the command line:
//!   the host's `/etc/mke2fs.conf` (a newer e2fsprogs adds features) cannot
//!   give the guest's kernel a file system it does not know. The features
//!   are those of our rootfs images (rootfs/mke2fs.conf), 4 KiB blocks at
//!   every size.
//! - No journal (`^has_journal`): a commit only ever follows a clean
//!   unmount in the guest, and a job that ends any other way has its writes
//!   thrown away, so there is nothing a journal would recover; without one,
//!   each metadata write lands in the job's layer once, not twice.
//! - `lazy_itable_init=0` with discard left on: on a regular file, mke2fs
//!   "discards" by punching holes, so it knows the inode tables read as
//!   zeros and marks them initialised without writing them. The file stays
//!   sparse (about 4 MiB allocated for 8 GiB, in milliseconds), and the
//!   guest kernel starts no background zeroing that would fill the layer.
//! - `-m 0`: no blocks reserved for root; the guest's jobs run as root anyway.
//! - `root_owner=0:0`: the same root directory whoever runs the runner.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::CacheError;
use super::layout::EMPTY_LOCK;
use crate::file_lock::{FileLock, LockMode};

const FEATURES: &str = "^has_journal,sparse_super,large_file,filetype,resize_inode,dir_index,\
ext_attr,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize";
/// Where ext4's superblock magic (0xEF53, little-endian) lives in an image.
pub(super) const EXT4_MAGIC_OFFSET: u64 = 1080;
pub(super) const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];
/// Smallest and largest cache: mke2fs needs room for its groups; 16 TiB
/// is far beyond a CI cache and within what the guest's ext4 takes.
pub(super) const MIN_SIZE: u64 = 1 << 20;
pub(super) const MAX_SIZE: u64 = 16 << 40;

/// Whether `size` can be a cache: a whole number of 4 KiB blocks, within
/// the bounds above.
pub(super) fn check_size(size: u64) -> Result<(), CacheError> {
    let why = if !size.is_multiple_of(4096) {
        "it must be a multiple of 4 KiB"
    } else if size < MIN_SIZE {
        "it must be at least 1 MiB"
    } else if size > MAX_SIZE {
        "it must be at most 16 TiB"
    } else {
        return Ok(());
    };
    Err(CacheError::InvalidSize {
        size,
        why: why.into(),
    })
}

/// The path of the empty image of `size` in `dir`.
pub(super) fn path(dir: &Path, size: u64) -> PathBuf {
    dir.join(format!("{size}.img"))
}

/// The empty image of `size` in `dir` (made if it is missing or damaged),
/// locked shared: it is not removed while the returned lock is held.
pub(super) fn empty_image(dir: &Path, size: u64) -> Result<(PathBuf, FileLock), CacheError> {
    let lock_path = dir.join(EMPTY_LOCK);
    // Exclusive: two jobs that both need a new size make it once.
    let _dir_lock = FileLock::acquire(&lock_path, LockMode::Exclusive, true)
        .map_err(CacheError::io("locking", &lock_path))?
        .expect("a blocking flock returns a lock");
    let image = path(dir, size);
    if let Ok(file) = std::fs::File::open(&image) {
        if is_empty_image(&file, size) {
            let _ = file.set_modified(std::time::SystemTime::now());
            let lock = FileLock::on(file, LockMode::Shared, true)
                .map_err(CacheError::io("locking", &image))?
                .expect("a blocking flock returns a lock");
            return Ok((image, lock));
        }
        tracing::warn!(
            "the empty cache image {} is damaged; making it again",
            image.display()
        );
    }
    make(dir, &image, size)?;
    let file = std::fs::File::open(&image).map_err(CacheError::io("opening", &image))?;
    let lock = FileLock::on(file, LockMode::Shared, true)
        .map_err(CacheError::io("locking", &image))?
        .expect("a blocking flock returns a lock");
    Ok((image, lock))
}

/// Whether `file` is `size` bytes long and starts like ext4 (the magic,
/// nothing more: the host never parses an image).
pub(super) fn is_empty_image(file: &std::fs::File, size: u64) -> bool {
    let mut magic = [0u8; 2];
    file.metadata().is_ok_and(|m| m.len() == size)
        && file.read_exact_at(&mut magic, EXT4_MAGIC_OFFSET).is_ok()
        && magic == EXT4_MAGIC
}

fn make(dir: &Path, image: &Path, size: u64) -> Result<(), CacheError> {
    let mke2fs = crate::programs::host_program("mke2fs").ok_or_else(|| {
        CacheError::Mkfs(
            "mke2fs not found; install e2fsprogs (`apt-get install e2fsprogs`, as scripts/setup-host does)"
                .into(),
        )
    })?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{size}.tmp-"))
        .tempfile_in(dir)
        .map_err(CacheError::io("creating an image in", dir))?;
    temp.as_file()
        .set_len(size)
        .map_err(CacheError::io("sizing", temp.path()))?;
    let out = Command::new(&mke2fs)
        .env("MKE2FS_CONFIG", "/dev/null")
        .args([
            "-q", "-T", "default", "-b", "4096", "-I", "256", "-i", "16384", "-m", "0",
        ])
        .args(["-O", FEATURES])
        .args(["-E", "root_owner=0:0,lazy_itable_init=0"])
        .arg(temp.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CacheError::Mkfs(format!("running {}: {e}", mke2fs.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(CacheError::Mkfs(format!(
            "{} {}: {}",
            mke2fs.display(),
            out.status,
            last.unwrap_or("no message").trim()
        )));
    }
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o444))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(CacheError::io("writing", temp.path()))?;
    temp.persist(image)
        .map_err(|e| CacheError::io("writing", image)(e.error))?;
    Ok(())
}
