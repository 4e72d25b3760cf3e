//! `runner cache list`, `prune`, `clear`, and the operator's size cap.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use super::empty;
use super::error::CacheError;
use super::layout::{self, KeyDir, Scope, EMPTY_LOCK};
use super::meta;
use super::store::{remove_version, CacheStore};
use crate::file_lock::{FileLock, LockMode};
use crate::lru::{self, Candidate, Limits};

/// One key in one scope, as `runner cache list` shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub scope: Scope,
    pub key: String,
    /// The newest version's size (what the guest sees).
    pub size: u64,
    /// Blocks allocated by all its versions (reflinked blocks shared
    /// between versions count once per version).
    pub disk_bytes: u64,
    pub versions: Vec<u64>,
    pub last_used: Option<SystemTime>,
    /// Whether a job holds one of its versions right now.
    pub in_use: bool,
}

/// Something a prune may remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evictable {
    Version {
        scope: Scope,
        key: String,
        version: u64,
    },
    /// The empty image of a size.
    Empty { size: u64 },
}

impl std::fmt::Display for Evictable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Evictable::Version {
                scope,
                key,
                version,
            } => write!(f, "{key} version {version} (scope {scope})"),
            Evictable::Empty { size } => write!(f, "the empty image of {size} bytes"),
        }
    }
}

/// What a prune did.
#[derive(Debug)]
pub struct Pruned {
    pub removed: Vec<Evictable>,
    /// Selected but held by a running job: kept.
    pub in_use: Vec<Evictable>,
    pub freed_bytes: u64,
    pub remaining_bytes: u64,
}

/// What `clear` did to one key.
#[derive(Debug, Default)]
pub struct Cleared {
    pub removed: Vec<Evictable>,
    pub in_use: Vec<Evictable>,
}

impl CacheStore {
    /// Every key with at least one version, by scope and key.
    pub fn list(&self) -> Result<Vec<Listed>, CacheError> {
        let mut listed = Vec::new();
        for scope in layout::scopes(&self.root)? {
            for key in layout::keys(&self.root, &scope)? {
                let dir = KeyDir::new(&self.root, &scope, &key);
                let versions = dir.versions()?;
                let Some(&newest) = versions.last() else {
                    continue;
                };
                let mut entry = Listed {
                    scope: scope.clone(),
                    key,
                    size: 0,
                    disk_bytes: 0,
                    versions: versions.clone(),
                    last_used: None,
                    in_use: false,
                };
                for &version in &versions {
                    let image = dir.image(version);
                    let Ok(file) = std::fs::File::open(&image) else {
                        continue;
                    };
                    if let Ok(m) = file.metadata() {
                        entry.disk_bytes += m.blocks() * 512;
                        if version == newest {
                            entry.size = m.len();
                        }
                    }
                    // Probed, not kept: a shared holder makes it fail.
                    entry.in_use |=
                        matches!(FileLock::on(file, LockMode::Exclusive, false), Ok(None));
                    entry.last_used = entry.last_used.max(meta::last_used(&dir.meta(version)));
                }
                listed.push(entry);
            }
        }
        Ok(listed)
    }

    /// Removes versions (and empty images) least recently used first: all
    /// unused for `limits.older_than`, then more while they take more than
    /// `limits.max_bytes`. Never one a job holds.
    pub fn prune(&self, limits: Limits, now: SystemTime) -> Result<Pruned, CacheError> {
        let mut candidates = Vec::new();
        for scope in layout::scopes(&self.root)? {
            for key in layout::keys(&self.root, &scope)? {
                let dir = KeyDir::new(&self.root, &scope, &key);
                for version in dir.versions()? {
                    let Ok(m) = std::fs::metadata(dir.image(version)) else {
                        continue;
                    };
                    candidates.push(Candidate {
                        item: Evictable::Version {
                            scope: scope.clone(),
                            key: key.clone(),
                            version,
                        },
                        disk_bytes: m.blocks() * 512,
                        last_used: meta::last_used(&dir.meta(version))
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        let empty_dir = self.empty_dir();
        for name in layout::list_names(&empty_dir)? {
            let Some(size) = name.strip_suffix(".img").and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(m) = std::fs::metadata(empty_dir.join(&name)) else {
                continue;
            };
            candidates.push(Candidate {
                item: Evictable::Empty { size },
                disk_bytes: m.blocks() * 512,
                last_used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        let evicted = lru::evict(candidates, limits, now, |item| self.remove(item));
        Ok(Pruned {
            removed: evicted.removed,
            in_use: evicted.in_use,
            freed_bytes: evicted.freed_bytes,
            remaining_bytes: evicted.remaining_bytes,
        })
    }

    /// The operator's cap: least recently used first until the store takes
    /// at most `max_bytes` (what a job holds stays).
    pub fn enforce_cap(&self, max_bytes: u64) -> Result<Pruned, CacheError> {
        let limits = Limits {
            older_than: None,
            max_bytes: Some(max_bytes),
        };
        self.prune(limits, SystemTime::now())
    }

    /// Removes every version of `key` in every scope, or in the scopes
    /// named `scope`; versions a job holds stay (and are listed).
    pub fn clear(&self, key: &str, scope: Option<&str>) -> Result<Cleared, CacheError> {
        layout::check_name("key", key)?;
        let mut cleared = Cleared::default();
        let mut seen = false;
        for candidate in layout::scopes(&self.root)? {
            if scope.is_some_and(|name| name != candidate.name) {
                continue;
            }
            let dir = KeyDir::new(&self.root, &candidate, key);
            let versions = dir.versions()?;
            seen |= !versions.is_empty();
            for version in versions {
                let item = Evictable::Version {
                    scope: candidate.clone(),
                    key: key.to_string(),
                    version,
                };
                if self.remove(&item) {
                    cleared.removed.push(item);
                } else {
                    cleared.in_use.push(item);
                }
            }
        }
        if !seen {
            return Err(CacheError::NotFound {
                key: key.to_string(),
                scope: scope.map(str::to_string),
            });
        }
        Ok(cleared)
    }

    /// Removes one entry unless a job holds it; true if it is gone.
    fn remove(&self, item: &Evictable) -> bool {
        match item {
            Evictable::Version {
                scope,
                key,
                version,
            } => {
                let dir = KeyDir::new(&self.root, scope, key);
                let Ok(_lock) = dir.lock(LockMode::Exclusive) else {
                    return false;
                };
                remove_version(&dir, *version)
            }
            Evictable::Empty { size } => {
                let dir = self.empty_dir();
                let Ok(Some(_lock)) =
                    FileLock::acquire(&dir.join(EMPTY_LOCK), LockMode::Exclusive, true)
                else {
                    return false;
                };
                let path: PathBuf = empty::path(&dir, *size);
                match std::fs::File::open(&path) {
                    Ok(file) => match FileLock::on(file, LockMode::Exclusive, false) {
                        Ok(Some(_unused)) => std::fs::remove_file(&path).is_ok(),
                        _ => false,
                    },
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            }
        }
    }
}
