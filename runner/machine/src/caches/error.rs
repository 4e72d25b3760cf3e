//! What can go wrong with the cache store, each as one line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory is missing, not ours, or others may write it.
    #[error("{0}")]
    Directory(String),
    #[error("invalid cache {what} `{name}`: {why}")]
    InvalidName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("invalid cache size {size}: {why}")]
    InvalidSize { size: u64, why: String },
    /// (`error` is not a `source`: the message already says it.)
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// ENOSPC or EDQUOT: nothing was written, the caller goes on.
    #[error("the host disk is full ({what} {}): nothing was committed", path.display())]
    DiskFull { what: &'static str, path: PathBuf },
    #[error("making an empty cache image: {0}")]
    Mkfs(String),
    #[error("no cache `{key}`{}", scope.as_ref().map(|s| format!(" in scope `{s}`")).unwrap_or_default())]
    NotFound { key: String, scope: Option<String> },
    #[error("cache `{key}` is in several scopes ({scopes}); name one with --scope")]
    Ambiguous { key: String, scopes: String },
    #[error("the written range {start}..{end} is outside the {size}-byte cache")]
    RangeOutOfBounds { start: u64, end: u64, size: u64 },
    #[error("{} is not a cache export: {why}", path.display())]
    BadExport { path: PathBuf, why: String },
    #[error("{} exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
}

impl CacheError {
    /// Maps an I/O error on `path`: a full disk or quota is its own error,
    /// which callers turn into a warning and no commit.
    pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
        let path = path.to_path_buf();
        move |error| match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => CacheError::DiskFull { what, path },
            _ => CacheError::Io { what, path, error },
        }
    }

    /// Whether the host's disk (or quota) was full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CacheError::DiskFull { .. })
    }
}
