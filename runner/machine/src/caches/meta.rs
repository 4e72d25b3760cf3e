//! A version's metadata, `v<N>.json`: its size, when and by whom it was
//! committed. Its modification time is the version's last use: a checkout
//! touches it rather than rewriting it, so concurrent checkouts never race
//! on its content.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A different format is unusable (the version is discarded).
const FORMAT: u32 = 1;
/// A metadata file is a few hundred bytes; anything longer is garbled.
const MAX_BYTES: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionMeta {
    pub format: u32,
    /// The image's length in bytes: a file of another length is truncated.
    pub size: u64,
    /// Milliseconds since the epoch; the newest commit wins among scopes.
    pub created_ms: u64,
    pub committed_by_pid: u32,
    pub committed_by_host: String,
}

impl VersionMeta {
    /// The metadata of a version this process commits now.
    pub fn new(size: u64) -> VersionMeta {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        VersionMeta {
            format: FORMAT,
            size,
            created_ms: millis(SystemTime::now()),
            committed_by_pid: std::process::id(),
            committed_by_host: host,
        }
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metadata at `path`, or why it is unusable.
pub fn read(path: &Path) -> Result<VersionMeta, String> {
    let mut text = String::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("its metadata is unreadable ({e})"))?;
    if text.len() as u64 > MAX_BYTES {
        return Err("its metadata is garbled (too long)".into());
    }
    let meta: VersionMeta =
        serde_json::from_str(&text).map_err(|e| format!("its metadata is garbled ({e})"))?;
    if meta.format != FORMAT {
        return Err(format!("its metadata has format {}", meta.format));
    }
    Ok(meta)
}

/// Writes `meta` to `path` whole (temporary name, fsync, rename).
pub fn write(path: &Path, meta: &VersionMeta) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    crate::trusted_cache::write_atomically(path, &text)
}

/// The version's last use (its metadata's modification time).
pub fn last_used(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
}

/// Records a use of the version now.
pub fn touch(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    if let Ok(file) = file {
        let _ = file.set_modified(SystemTime::now());
    }
}
