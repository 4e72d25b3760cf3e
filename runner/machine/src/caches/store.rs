//! The store: checkout, commit, discard (`docs/caches.md` has the rules).

use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::blocks;
use super::empty::{self, check_size};
use super::error::CacheError;
use super::layout::{self, check_name, KeyDir, Scope, EMPTY, EMPTY_LOCK, PROTECTED, UNPROTECTED};
use super::meta::{self, VersionMeta};
use crate::file_lock::{FileLock, LockMode};
use crate::trusted_cache::{make_private_dir, TrustedCache};

/// The environment variable that moves the store.
pub const DIR_ENV: &str = "RUNNER_CACHE_DIR";

/// The cache volumes of one directory (see the module docs).
#[derive(Clone, Debug)]
pub struct CacheStore {
    pub(super) root: PathBuf,
}

/// What a job asks for: its cache `key` in its operator-given `scope`, of
/// `size` bytes, else one of `fallback_keys` to start from.
#[derive(Clone, Debug)]
pub struct CacheRequest {
    pub scope: Scope,
    pub key: String,
    pub fallback_keys: Vec<String>,
    pub size: u64,
    /// False: start from an empty file system whatever the key holds
    /// (GitLab's `policy: push`, which rebuilds a cache from scratch).
    pub pull: bool,
}

/// Where a checkout's base came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The job's own key, in its own scope.
    Key { version: u64 },
    /// A fallback key, in the job's own scope or a protected one.
    Fallback {
        key: String,
        scope: Scope,
        version: u64,
    },
    /// Nothing to start from: an empty file system.
    Empty,
}

/// A job's cache: the base it reads (locked shared, so no prune removes it
/// mid-job) and the layer its writes go to. Dropping it discards the layer.
#[derive(Debug)]
pub struct Checkout {
    /// The read-only image; never written.
    pub base: PathBuf,
    /// An empty file in the key's directory, for the job's writes.
    pub layer: PathBuf,
    pub size: u64,
    pub found: Found,
    /// Always the request's own scope: the only one a commit writes to.
    scope: Scope,
    key: String,
    /// The key's highest version number when this checkout was made: a
    /// higher one at commit means another job committed meanwhile.
    seen_highest: u64,
    base_lock: FileLock,
    layer_lock: FileLock,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // The lock goes after (fields drop after this): a sweep never
        // takes a layer whose owner is still removing it.
        let _ = std::fs::remove_file(&self.layer);
    }
}

/// What a commit made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub version: u64,
    /// The bytes copied from the layer.
    pub bytes_written: u64,
    /// Another job committed this key after this one checked out: the last
    /// complete commit wins, and this one was it.
    pub replaced_concurrent: bool,
}

impl CacheStore {
    /// `RUNNER_CACHE_DIR`, else `caches/` in the runner's cache
    /// (`~/.cache/runner/caches`; see `crate::trusted_cache`), never a
    /// shared place like /tmp.
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
            return std::path::absolute(&dir).map_err(|e| {
                CacheError::Directory(format!("{DIR_ENV}={}: {e}", Path::new(&dir).display()))
            });
        }
        let cache = TrustedCache::open().map_err(CacheError::Directory)?;
        Ok(cache.root().join("caches"))
    }

    /// The store in `dir`: created (0700) if missing, refused if another
    /// user owns or may write it (as the runner's own cache is), and swept
    /// of what killed runs left (half-written versions, layers of jobs
    /// that are gone).
    pub fn open(dir: &Path) -> Result<CacheStore, CacheError> {
        let root = std::path::absolute(dir)
            .map_err(|e| CacheError::Directory(format!("{}: {e}", dir.display())))?;
        make_private_dir(&root, true).map_err(CacheError::Directory)?;
        for sub in [PROTECTED, UNPROTECTED, EMPTY] {
            make_private_dir(&root.join(sub), false).map_err(CacheError::Directory)?;
        }
        let store = CacheStore { root };
        store.sweep()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub(super) fn empty_dir(&self) -> PathBuf {
        self.root.join(EMPTY)
    }

    /// Removes, in every key, temporary versions and layers whose writer's
    /// lock is gone (a killed runner's), metadata without an image (a
    /// commit killed between its two renames) and versions older than the
    /// newest that no job holds any more (a commit keeps those a job still
    /// reads); and unfinished empty images.
    fn sweep(&self) -> Result<(), CacheError> {
        for scope in layout::scopes(&self.root)? {
            for key in layout::keys(&self.root, &scope)? {
                let dir = KeyDir::new(&self.root, &scope, &key);
                // Exclusive: no commit is between its two renames, and no
                // checkout is between creating its layer and locking it.
                let _lock = dir.lock(LockMode::Exclusive)?;
                let names = dir.names()?;
                for name in &names {
                    let temp = name.starts_with(".v") && name.contains(".tmp");
                    let layer = name.starts_with("layer-") && name.ends_with(".tmp");
                    if temp || layer {
                        remove_unlocked(&dir.path.join(name));
                    }
                    if let Some(version) = layout::version_of(name, ".json") {
                        if !names.contains(&format!("v{version}.img")) {
                            let _ = std::fs::remove_file(dir.meta(version));
                        }
                    }
                }
                let versions = dir.versions()?;
                if let Some((_newest, older)) = versions.split_last() {
                    for &version in older {
                        remove_version(&dir, version);
                    }
                }
            }
        }
        let empty = self.empty_dir();
        let _lock = FileLock::acquire(&empty.join(EMPTY_LOCK), LockMode::Exclusive, true)
            .map_err(CacheError::io("locking", &empty))?;
        for name in layout::list_names(&empty)? {
            if name.starts_with('.') && name.contains(".tmp") {
                let _ = std::fs::remove_file(empty.join(name));
            }
        }
        Ok(())
    }

    /// The image the job's cache starts from, locked until the checkout is
    /// committed or dropped, and a fresh layer for its writes: the key's
    /// newest usable version in the job's own scope; else each fallback key,
    /// in the own scope and then in every protected scope (the newest
    /// commit among them wins); else an empty file system of `size`.
    /// A version of another size, or damaged (truncated, metadata missing
    /// or garbled), is skipped with one warning, and removed from the own
    /// scope if nobody holds it.
    pub fn checkout(&self, request: &CacheRequest) -> Result<Checkout, CacheError> {
        check_name("scope", &request.scope.name)?;
        check_name("key", &request.key)?;
        for key in &request.fallback_keys {
            check_name("fallback key", key)?;
        }
        check_size(request.size)?;
        let scope = &request.scope;
        let own = KeyDir::new(&self.root, scope, &request.key);
        own.create()?;
        // Shared: no version is removed, and no sweep runs, until the base
        // and the layer are locked.
        let own_lock = own.lock(LockMode::Shared)?;
        let seen_highest = own.highest_number()?;
        let mut chosen = match request.pull {
            true => self
                .newest_usable(&own, request.size, true)?
                .map(|(version, base, lock)| (Found::Key { version }, base, lock)),
            false => None,
        };
        let fallback_keys = if request.pull {
            &request.fallback_keys[..]
        } else {
            &[]
        };
        for key in fallback_keys {
            if chosen.is_some() {
                break;
            }
            chosen = self.fallback(scope, key, request.size)?;
        }
        let (found, base, base_lock) = match chosen {
            Some(chosen) => chosen,
            None => {
                let (base, lock) = empty::empty_image(&self.empty_dir(), request.size)?;
                (Found::Empty, base, lock)
            }
        };
        let (layer_file, layer) = tempfile::Builder::new()
            .prefix("layer-")
            .suffix(".tmp")
            .tempfile_in(&own.path)
            .and_then(|temp| temp.keep().map_err(|e| e.error))
            .map_err(CacheError::io("creating a layer in", &own.path))?;
        let layer_lock = FileLock::on(layer_file, LockMode::Exclusive, false)
            .map_err(CacheError::io("locking", &layer))?
            .expect("nobody else has a file that was just created");
        drop(own_lock);
        Ok(Checkout {
            base,
            layer,
            size: request.size,
            found,
            scope: scope.clone(),
            key: request.key.clone(),
            seen_highest,
            base_lock,
            layer_lock,
        })
    }

    /// Fallback `key`: in `own` scope, else the newest commit of it among
    /// the protected scopes.
    fn fallback(
        &self,
        own: &Scope,
        key: &str,
        size: u64,
    ) -> Result<Option<(Found, PathBuf, FileLock)>, CacheError> {
        let found = |scope: &Scope, version| Found::Fallback {
            key: key.to_string(),
            scope: scope.clone(),
            version,
        };
        let dir = KeyDir::new(&self.root, own, key);
        if dir.exists() {
            let _lock = dir.lock(LockMode::Shared)?;
            if let Some((version, base, lock)) = self.newest_usable(&dir, size, true)? {
                return Ok(Some((found(own, version), base, lock)));
            }
        }
        let mut newest: Option<(u64, Found, PathBuf, FileLock)> = None;
        for scope in layout::scopes(&self.root)? {
            if !scope.protected || scope == *own {
                continue;
            }
            let dir = KeyDir::new(&self.root, &scope, key);
            if !dir.exists() {
                continue;
            }
            let _lock = dir.lock(LockMode::Shared)?;
            // Never removes anything in another scope.
            let Some((version, base, lock)) = self.newest_usable(&dir, size, false)? else {
                continue;
            };
            let created = meta::read(&dir.meta(version)).map_or(0, |m| m.created_ms);
            if newest.as_ref().is_none_or(|(best, ..)| created > *best) {
                newest = Some((created, found(&scope, version), base, lock));
            }
        }
        Ok(newest.map(|(_, found, base, lock)| (found, base, lock)))
    }

    /// The newest usable version in `dir` (whose lock the caller holds),
    /// opened and locked shared, its use recorded. Unusable ones are
    /// skipped with a warning and, if `remove_bad` and nobody holds them,
    /// removed.
    pub(super) fn newest_usable(
        &self,
        dir: &KeyDir,
        size: u64,
        remove_bad: bool,
    ) -> Result<Option<(u64, PathBuf, FileLock)>, CacheError> {
        for version in dir.versions()?.into_iter().rev() {
            let image = dir.image(version);
            match usable(dir, version, size) {
                Ok(file) => {
                    let lock = FileLock::on(file, LockMode::Shared, true)
                        .map_err(CacheError::io("locking", &image))?
                        .expect("a blocking flock returns a lock");
                    meta::touch(&dir.meta(version));
                    return Ok(Some((version, image, lock)));
                }
                Err(why) => {
                    let removed = remove_bad && remove_version(dir, version);
                    tracing::warn!(
                        "cache {} is unusable ({why}); {}",
                        image.display(),
                        if removed { "removed it" } else { "skipping it" }
                    );
                }
            }
        }
        Ok(None)
    }

    /// Merges what the job wrote into a new version of its key, in its own
    /// scope: the base (reflinked where the file system can, else a sparse
    /// copy), each of `written` copied over it from the layer, flushed and
    /// renamed into place whole as the key's newest version; older
    /// versions nobody holds are removed. The checkout is consumed either
    /// way (its layer removed). A full disk is [`CacheError::DiskFull`]:
    /// nothing was committed, and the job's result should not change.
    pub fn commit(
        &self,
        checkout: Checkout,
        written: &[Range<u64>],
    ) -> Result<Committed, CacheError> {
        for range in written {
            if range.start > range.end || range.end > checkout.size {
                return Err(CacheError::RangeOutOfBounds {
                    start: range.start,
                    end: range.end,
                    size: checkout.size,
                });
            }
        }
        // By construction a checkout writes only to the scope it was made
        // for, and reads other scopes only as a base.
        let dir = KeyDir::new(&self.root, &checkout.scope, &checkout.key);
        let (temp, _temp_lock) = dir.temp_version(checkout.seen_highest + 1)?;
        let file = temp.as_file();
        blocks::clone_or_copy(checkout.base_lock.file(), file, checkout.size)
            .map_err(CacheError::io("writing", temp.path()))?;
        let bytes_written = blocks::apply_ranges(checkout.layer_lock.file(), file, written)
            .map_err(CacheError::io("writing", temp.path()))?;
        file.sync_all()
            .map_err(CacheError::io("writing", temp.path()))?;
        let (size, seen_highest) = (checkout.size, checkout.seen_highest);
        // Done with the base and the layer: the base may go with the
        // other old versions below.
        drop(checkout);
        let version = self.publish(&dir, temp, size)?;
        Ok(Committed {
            version,
            bytes_written,
            replaced_concurrent: version > seen_highest + 1,
        })
    }

    /// [`CacheStore::commit`] of what the job's disk device wrote to the
    /// checkout's layer: its written chunks, as the device's bitmap says.
    /// Call only once the VM process is gone, so that every write is in.
    pub fn commit_layer(&self, checkout: Checkout) -> Result<Committed, CacheError> {
        let written =
            runner_devices::block::layer::written_ranges(checkout.layer_lock.file(), checkout.size)
                .map_err(CacheError::io("reading the layer", &checkout.layer))?;
        self.commit(checkout, &written)
    }

    /// Drops the job's writes and releases the version it read.
    pub fn discard(&self, checkout: Checkout) {
        drop(checkout);
    }

    /// Drops a checkout whose base the guest could not use (its file
    /// system would not mount), and removes that version from the job's
    /// own scope unless another job holds it, so that the next job starts
    /// from a fallback or empty. Another scope's version is never touched.
    /// Returns whether the version was removed.
    pub fn forget(&self, checkout: Checkout) -> bool {
        let own = |key: &str| (checkout.scope.clone(), key.to_string());
        let (scope, key, version) = match &checkout.found {
            Found::Key { version } => {
                let (scope, key) = own(&checkout.key);
                (scope, key, *version)
            }
            Found::Fallback {
                key,
                scope,
                version,
            } if *scope == checkout.scope => {
                let (scope, key) = own(key);
                (scope, key, *version)
            }
            Found::Fallback { .. } | Found::Empty => return false,
        };
        // Our own shared lock on the base would keep it.
        drop(checkout);
        let dir = KeyDir::new(&self.root, &scope, &key);
        match dir.lock(LockMode::Exclusive) {
            Ok(_lock) => remove_version(&dir, version),
            Err(_) => false,
        }
    }

    /// Renames the finished image `temp` (flushed) into place as the
    /// newest version of `dir`'s key, its metadata first, and removes the
    /// older versions nobody holds. Returns the new version's number.
    pub(super) fn publish(
        &self,
        dir: &KeyDir,
        temp: tempfile::NamedTempFile,
        size: u64,
    ) -> Result<u64, CacheError> {
        let _lock = dir.lock(LockMode::Exclusive)?;
        let version = dir.highest_number()? + 1;
        let (image, meta_path) = (dir.image(version), dir.meta(version));
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(CacheError::io("writing", temp.path()))?;
        // Metadata first: an image is never without it (an orphan
        // metadata file is swept).
        meta::write(&meta_path, &VersionMeta::new(size))
            .map_err(CacheError::io("writing", &meta_path))?;
        if let Err(e) = temp.persist(&image) {
            let _ = std::fs::remove_file(&meta_path);
            return Err(CacheError::io("writing", &image)(e.error));
        }
        std::fs::File::open(&dir.path)
            .and_then(|d| d.sync_all())
            .map_err(CacheError::io("writing", &dir.path))?;
        for old in dir.versions()? {
            if old < version {
                remove_version(dir, old);
            }
        }
        Ok(version)
    }
}

/// Version `version` of `dir`, open, if it is what a job of `size` may
/// start from; else why not.
fn usable(dir: &KeyDir, version: u64, size: u64) -> Result<std::fs::File, String> {
    let meta = meta::read(&dir.meta(version))?;
    if meta.size != size {
        return Err(format!(
            "it holds {} bytes and the job asks for {size}",
            meta.size
        ));
    }
    let file = std::fs::File::open(dir.image(version)).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != meta.size {
        return Err(format!(
            "it is truncated: {len} bytes, its metadata says {}",
            meta.size
        ));
    }
    Ok(file)
}

/// Removes version `version` of `dir` (whose lock the caller holds) unless
/// a checkout holds it; true if it is gone.
pub(super) fn remove_version(dir: &KeyDir, version: u64) -> bool {
    let image = dir.image(version);
    let unused = match std::fs::File::open(&image) {
        Ok(file) => FileLock::on(file, LockMode::Exclusive, false)
            .ok()
            .flatten(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(dir.meta(version));
            return true;
        }
        Err(_) => return false,
    };
    let Some(_unused) = unused else {
        return false;
    };
    // The image first: a version is never without its metadata.
    let gone = std::fs::remove_file(&image).is_ok();
    let _ = std::fs::remove_file(dir.meta(version));
    gone
}

/// Removes `path` unless someone holds its lock (a live writer).
fn remove_unlocked(path: &Path) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    if let Ok(Some(_dead)) = FileLock::on(file, LockMode::Exclusive, false) {
        tracing::debug!("removing {}, left by a run that is gone", path.display());
        let _ = std::fs::remove_file(path);
    }
}
