//! Where the store keeps what (see `docs/caches.md`):
//!
//! ```text
//! <dir>/protected/<scope>/<key>/     a protected scope's keys
//! <dir>/unprotected/<scope>/<key>/   everyone else's
//!     key.lock                shared: choosing and locking a version; exclusive: publishing, removing
//!     v<N>.img, v<N>.json     version N and its metadata (N only grows)
//!     layer-<random>.tmp      a running job's writes, flocked by the job
//!     .v<N>.tmp-<random>      a commit being written, flocked by its writer
//! <dir>/empty/<size>.img      the empty ext4 of each size (empty.lock as key.lock)
//! ```

use std::path::{Path, PathBuf};

use super::error::CacheError;
use crate::file_lock::{FileLock, LockMode};
use crate::trusted_cache::make_private_dir;

pub(super) const PROTECTED: &str = "protected";
pub(super) const UNPROTECTED: &str = "unprotected";
pub(super) const EMPTY: &str = "empty";
const KEY_LOCK: &str = "key.lock";
pub(super) const EMPTY_LOCK: &str = "empty.lock";
/// Longest scope or key name: a path component with room to spare.
const MAX_NAME: usize = 128;

/// Whose caches: set by the operator (a flag or policy), never by the
/// pipeline. A protected scope (a protected branch's) is read by others
/// only through their fallback keys, and written only by itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub name: String,
    pub protected: bool,
}

impl Scope {
    pub fn new(name: impl Into<String>, protected: bool) -> Scope {
        Scope {
            name: name.into(),
            protected,
        }
    }

    pub(super) fn class(&self) -> &'static str {
        if self.protected {
            PROTECTED
        } else {
            UNPROTECTED
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if self.protected {
            write!(f, " (protected)")?;
        }
        Ok(())
    }
}

/// A scope or key name becomes a directory name: letters, digits, `.`,
/// `_`, `-`, not starting with `.`, at most 128 bytes.
pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), CacheError> {
    let invalid = |why| {
        Err(CacheError::InvalidName {
            what,
            name: name.chars().take(MAX_NAME + 8).collect(),
            why,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME {
        return invalid("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return invalid("it starts with `.`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// One key's directory in one scope.
#[derive(Clone, Debug)]
pub(super) struct KeyDir {
    pub path: PathBuf,
}

impl KeyDir {
    /// The directory of `key` in `scope` under `root` (not created).
    pub fn new(root: &Path, scope: &Scope, key: &str) -> KeyDir {
        KeyDir {
            path: root.join(scope.class()).join(&scope.name).join(key),
        }
    }

    /// Creates the directory (and its scope's), private like the root.
    pub fn create(&self) -> Result<(), CacheError> {
        let scope_dir = self.path.parent().unwrap_or(&self.path);
        make_private_dir(scope_dir, false).map_err(CacheError::Directory)?;
        make_private_dir(&self.path, false).map_err(CacheError::Directory)
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Waits for the key's lock.
    pub fn lock(&self, mode: LockMode) -> Result<FileLock, CacheError> {
        let path = self.path.join(KEY_LOCK);
        FileLock::acquire(&path, mode, true)
            .map_err(CacheError::io("locking", &path))
            .map(|lock| lock.expect("a blocking flock returns a lock"))
    }

    /// A new version being written (`.v<N>.tmp-*`, `next` naming the
    /// version it is meant to become), locked exclusive. Created and
    /// locked under the key's lock, so no sweep takes it between the two.
    pub fn temp_version(
        &self,
        next: u64,
    ) -> Result<(tempfile::NamedTempFile, FileLock), CacheError> {
        let _lock = self.lock(LockMode::Shared)?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".v{next}.tmp-"))
            .tempfile_in(&self.path)
            .map_err(CacheError::io("creating a new version in", &self.path))?;
        let reopened = temp
            .reopen()
            .map_err(CacheError::io("opening", temp.path()))?;
        let lock = FileLock::on(reopened, LockMode::Exclusive, false)
            .map_err(CacheError::io("locking", temp.path()))?
            .expect("nobody else has a file that was just created");
        Ok((temp, lock))
    }

    pub fn image(&self, version: u64) -> PathBuf {
        self.path.join(format!("v{version}.img"))
    }

    pub fn meta(&self, version: u64) -> PathBuf {
        self.path.join(format!("v{version}.json"))
    }

    /// The versions that have an image, oldest first.
    pub fn versions(&self) -> Result<Vec<u64>, CacheError> {
        let mut versions: Vec<u64> = self
            .names()?
            .iter()
            .filter_map(|name| version_of(name, ".img"))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The highest version number in use, image or metadata (0 if none):
    /// the next version is one more, so a number is never reused.
    pub fn highest_number(&self) -> Result<u64, CacheError> {
        Ok(self
            .names()?
            .iter()
            .filter_map(|name| version_of(name, ".img").or_else(|| version_of(name, ".json")))
            .max()
            .unwrap_or(0))
    }

    /// The names of the files in the directory (none if it is missing).
    pub fn names(&self) -> Result<Vec<String>, CacheError> {
        list_names(&self.path)
    }
}

/// `N` of `v<N><suffix>`.
pub(super) fn version_of(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The UTF-8 names in `dir`; none if it does not exist.
pub(super) fn list_names(dir: &Path) -> Result<Vec<String>, CacheError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("reading", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(CacheError::io("reading", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every scope with a directory under `root`, protected ones first.
pub(super) fn scopes(root: &Path) -> Result<Vec<Scope>, CacheError> {
    let mut scopes = Vec::new();
    for (class, protected) in [(PROTECTED, true), (UNPROTECTED, false)] {
        for name in list_names(&root.join(class))? {
            if check_name("scope", &name).is_ok() {
                scopes.push(Scope::new(name, protected));
            }
        }
    }
    Ok(scopes)
}

/// Every key with a directory in `scope`.
pub(super) fn keys(root: &Path, scope: &Scope) -> Result<Vec<String>, CacheError> {
    let dir = root.join(scope.class()).join(&scope.name);
    Ok(list_names(&dir)?
        .into_iter()
        .filter(|name| check_name("key", name).is_ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_path_components() {
        for good in ["cargo", "cargo-main", "pip_3.12", "a".repeat(128).as_str()] {
            check_name("key", good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"a".repeat(129),
        ] {
            let err = check_name("key", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid cache key"), "{err}");
            assert_eq!(err.lines().count(), 1);
        }
    }

    #[test]
    fn version_numbers_come_from_exact_names() {
        assert_eq!(version_of("v12.img", ".img"), Some(12));
        assert_eq!(version_of("v12.json", ".img"), None);
        for bad in [
            "v.img",
            "vx.img",
            ".v1.img",
            "v1.img.tmp",
            "v+1.img",
            "v99999999999999999999.img",
        ] {
            assert_eq!(version_of(bad, ".img"), None, "{bad}");
        }
    }
}
