//! Warm start for the kvm backend: one snapshot per kernel, rootfs, VM
//! size and host, taken of an agent-ready guest, cached on disk; every job
//! then restores a copy-on-write clone of it instead of booting.
//!
//! - The cache is `~/.cache/runner/snapshots/` (`RUNNER_CACHE` moves it;
//!   see `crate::trusted_cache` for why it must be this user's alone), one
//!   `<key>.snap` per identity (see [`identity`]), sealed when it was built
//!   (`<key>.seal`): a file that does not match its seal is not restored.
//! - A file that does not load (corrupt, truncated, another format or
//!   identity) is rebuilt after one warning line, never used.
//! - A cache directory that is not writable means cold boots, after one
//!   warning line.
//! - Concurrent runners (and jobs) take a lock per key: one builds, the
//!   others wait and then restore its result. A snapshot is written under a
//!   temporary name, checked by restoring a clone of it (see
//!   `kvm/warm_start.rs`), and only then renamed into place whole.
//! - A published snapshot whose clone does not answer is moved to
//!   `quarantine/` (one file per key, the latest), so it fails no job after
//!   the one that found it; the next job builds a new one.
//! - A VM that cannot be prepared for a snapshot as it is (a service whose
//!   `run` stays in the foreground, `crate::Preparation`) gets
//!   `<key>.never`, saying why: its jobs boot cold without trying again.

use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use super::VmSpec;
use crate::file_lock::{FileLock, LockMode};
use crate::lru::{self, Candidate, Evicted, Limits};
use crate::trusted_cache::{open_no_follow, TrustedCache};

/// The warm-start snapshots in one directory.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    cache: TrustedCache,
    dir: PathBuf,
}

/// Says `message` once per process: a run of 100 jobs gets one line.
pub fn warn_once(message: &str) {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| eprintln!("runner: warning: {message}"));
}

impl SnapshotStore {
    /// The store in the runner's cache, if it can be trusted and written;
    /// `None` (and one warning line) if not: jobs then boot cold.
    pub fn open() -> Option<SnapshotStore> {
        SnapshotStore::open_in(TrustedCache::open())
    }

    /// The store in `cache` (see [`SnapshotStore::open`]).
    pub fn open_in(cache: Result<TrustedCache, String>) -> Option<SnapshotStore> {
        let usable = cache.and_then(|cache| {
            let dir = cache.subdir("snapshots")?;
            tempfile::tempfile_in(&dir)
                .map_err(|e| format!("{} is not writable ({e})", dir.display()))?;
            Ok(SnapshotStore { cache, dir })
        });
        match usable {
            Ok(store) => Some(store),
            Err(why) => {
                warn_once(&format!("no snapshots: {why}; booting every VM cold"));
                None
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the snapshot of `key` lives.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.snap"))
    }

    fn seal_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.seal"))
    }

    /// Seals the snapshot of `key` that was just built (see the module
    /// docs); `identity` is what it was made for. Its content is not
    /// hashed: the seal holds only while the file is unchanged (its change
    /// time says so), and hashing guest memory would cost a build seconds.
    pub fn seal(&self, key: &str, identity: &str) -> Result<(), String> {
        let path = self.path(key);
        self.cache.seal(
            &path,
            &self.seal_path(key),
            &seal_purpose(identity),
            UNHASHED,
        )
    }

    /// Whether the snapshot of `key` is the file that was built and sealed
    /// for `identity`; if not, why.
    pub fn check_seal(&self, key: &str, identity: &str) -> Result<(), String> {
        self.cache
            .check_seal(
                &self.path(key),
                &self.seal_path(key),
                &seal_purpose(identity),
            )
            .map(drop)
    }

    /// The identity a snapshot of `spec`'s VM is made for, and its key
    /// (see [`identity`]).
    pub fn identity(&self, spec: &VmSpec) -> Result<(String, String), String> {
        identity(&self.cache, spec)
    }

    /// Seals the snapshot of `key` again after a deliberate change (see
    /// `TrustedCache::reseal`).
    pub fn reseal(&self, key: &str) -> Result<(), String> {
        self.cache.reseal(&self.path(key), &self.seal_path(key))
    }

    /// Takes a snapshot file its VM wrote (as that VM's own ids) back from
    /// it: ours, and readable by the VMs that restore it (each as ids of
    /// its own; the directory keeps everybody else out), written by nobody.
    pub fn claim(&self, file: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        std::os::unix::fs::lchown(file, Some(uid.as_raw()), Some(gid.as_raw()))
            .and_then(|()| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)))
            .map_err(|e| format!("taking {} back from its VM: {e}", file.display()))
    }

    fn never_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.never"))
    }

    /// Records that `key`'s VM can never be snapshotted, and why.
    pub fn mark_never(&self, key: &str, why: &str) {
        let _ = std::fs::write(self.never_path(key), why);
    }

    /// Why `key`'s VM can never be snapshotted, if it was found so.
    pub fn never(&self, key: &str) -> Option<String> {
        let why = std::fs::read(self.never_path(key)).ok()?;
        Some(String::from_utf8_lossy(&why).trim().to_string())
    }

    /// Removes the snapshot of `key` and its seal.
    pub fn remove(&self, key: &str) {
        let _ = std::fs::remove_file(self.path(key));
        let _ = std::fs::remove_file(self.seal_path(key));
        let _ = std::fs::remove_file(self.used_path(key));
    }

    /// Its modification time is the last restore of `key`'s snapshot (the
    /// snapshot's own times are part of its seal).
    fn used_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.used"))
    }

    /// Records a use of `key`'s snapshot now, for [`SnapshotStore::prune`].
    pub fn touch_used(&self, key: &str) {
        if let Ok(stamp) = open_no_follow(&self.used_path(key)) {
            let _ = stamp.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes snapshots (and quarantined ones) least recently used first,
    /// as `limits` say (`crate::lru`); never one being built (its key's
    /// lock is held). A clone restoring one keeps the file it opened.
    /// Returns the file names removed, and the bytes freed and left.
    pub fn prune(
        &self,
        limits: Limits,
        now: std::time::SystemTime,
    ) -> std::io::Result<Evicted<PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        let mut candidates = Vec::new();
        let quarantine = self.dir.join("quarantine");
        for dir in [&self.dir, &quarantine] {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let path = entry?.path();
                let Some(key) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".snap"))
                    .filter(|k| !k.starts_with('.'))
                else {
                    continue;
                };
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let used = std::fs::metadata(self.used_path(key)).and_then(|m| m.modified());
                let last_used = match (dir == &self.dir, used) {
                    (true, Ok(used)) => used,
                    _ => meta.modified()?,
                };
                candidates.push(Candidate {
                    item: path,
                    disk_bytes: meta.blocks() * 512,
                    last_used,
                });
            }
        }
        Ok(lru::evict(candidates, limits, now, |path| {
            let key = path.file_stem().and_then(|k| k.to_str()).unwrap_or("");
            if path.parent() != Some(self.dir.as_path()) {
                return std::fs::remove_file(path).is_ok();
            }
            match FileLock::acquire(&self.lock_path(key), LockMode::Exclusive, false) {
                Ok(Some(_building_nothing)) => {
                    self.remove(key);
                    true
                }
                _ => false,
            }
        }))
    }

    /// A fresh name for building the snapshot of `key` (the VMM creates it).
    pub fn building_path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!(".{key}.{}.building", std::process::id()))
    }

    /// Removes what builds of `key` left behind when their runner was
    /// killed. Call with the lock of `key` held: then no build is running.
    pub fn remove_unfinished_builds(&self, key: &str) {
        let prefix = format!(".{key}.");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".building") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Moves the snapshot of `key` to `quarantine/` if it is still the
    /// file `restored` identifies (a fresh rebuild in its place is kept).
    /// Returns where it went, or `None` when it was no longer there.
    pub fn quarantine(&self, key: &str, restored: &FileId) -> std::io::Result<Option<PathBuf>> {
        let _lock = self.lock(key)?;
        let path = self.path(key);
        match FileId::of(&path) {
            Ok(Some(now)) if now == *restored => {}
            Ok(_) => return Ok(None),
            Err(e) => return Err(e),
        }
        let dir = self.dir.join("quarantine");
        std::fs::create_dir_all(&dir)?;
        let to = dir.join(format!("{key}.snap"));
        std::fs::rename(&path, &to)?;
        let _ = std::fs::remove_file(self.seal_path(key));
        Ok(Some(to))
    }

    /// Holds the build lock of `key` until dropped (waits for it).
    pub fn lock(&self, key: &str) -> std::io::Result<FileLock> {
        FileLock::acquire(&self.lock_path(key), LockMode::Exclusive, true)
            .map(|lock| lock.expect("a blocking flock returns a lock"))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lock"))
    }
}

/// Which file a path named at one moment: a snapshot judged dead is
/// removed only if it is still that file, never a rebuild that replaced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
}

impl FileId {
    /// `None` if there is no file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Option<FileId>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The digest a snapshot's seal records (see [`SnapshotStore::seal`]).
const UNHASHED: &str = "not hashed";

/// What a seal of a snapshot made for `identity` says it is for.
fn seal_purpose(identity: &str) -> String {
    format!(
        "snapshot {}",
        crate::digest::sha256_bytes(identity.as_bytes())
    )
}

/// The identity a snapshot of `spec`'s VM is made for, and its short key.
/// It covers everything a restored guest depends on: the content of the
/// kernel and the rootfs (with the agent in it) and of the runner itself
/// (its VMM and device models), vCPUs, memory, and the host's CPU and KVM.
/// Contents are hashed once per version of each file (`trusted_cache`).
pub fn identity(cache: &TrustedCache, spec: &VmSpec) -> Result<(String, String), String> {
    let exe = crate::programs::runner_exe()?;
    let host = host_fingerprint()?;
    let description = format!(
        "snapshot format {}\nrunner {}\nkernel {}\nrootfs {}\nvcpus {}\nmemory {} MiB\nhost {host}\n",
        runner_vmm::snapshot::file::FORMAT_VERSION,
        cache.content_digest(&exe)?,
        cache.content_digest(&spec.kernel)?,
        cache.content_digest(&spec.rootfs)?,
        spec.vcpus,
        spec.memory_mib,
    );
    let mut description = description;
    if let Some(nic) = &spec.segment {
        // Member `i` has the same MAC and address on every segment.
        description.push_str(&format!(
            "segment member {} {}\n",
            crate::network::mac_text(nic.mac),
            nic.address
        ));
    }
    if let Some(preparation) = &spec.prepare {
        description.push_str(&format!("prepared\n{}\n", preparation.identity()));
    }
    tracing::debug!(%description, "snapshot identity");
    let digest = crate::digest::sha256_bytes(description.as_bytes());
    Ok((digest[..16].to_string(), digest))
}

/// The host's CPU and KVM fingerprint, read once per process: every job
/// of a run asks, and the answer cannot change while the runner runs.
fn host_fingerprint() -> Result<String, String> {
    static HOST: OnceLock<Result<String, String>> = OnceLock::new();
    HOST.get_or_init(|| runner_vmm::snapshot::host_fingerprint().map_err(|e| e.to_string()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh cache under `dir`; its snapshots in `dir/cache/snapshots`.
    fn store_in(dir: &Path) -> SnapshotStore {
        SnapshotStore::open_in(TrustedCache::at(dir.join("cache"))).unwrap()
    }

    #[test]
    fn an_unusable_cache_means_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        // A directory cannot be created under a regular file.
        assert!(SnapshotStore::open_in(TrustedCache::at(file.join("cache"))).is_none());
        assert!(SnapshotStore::open_in(Err("planted".into())).is_none());
        store_in(dir.path());
    }

    #[test]
    fn a_snapshot_is_used_only_while_it_matches_its_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        std::fs::write(store.path("k"), b"memory").unwrap();
        assert!(store.check_seal("k", "id").unwrap_err().contains("no seal"));
        store.seal("k", "id").unwrap();
        store.check_seal("k", "id").unwrap();
        assert!(store.check_seal("k", "another id").is_err());
        // Planted in its place (a local user, a copy from elsewhere).
        let planted = dir.path().join("planted");
        std::fs::write(&planted, b"memory").unwrap();
        std::fs::rename(&planted, store.path("k")).unwrap();
        assert_eq!(
            store.check_seal("k", "id").unwrap_err(),
            "it changed after it was sealed"
        );
        store.remove("k");
        assert!(!store.path("k").exists() && !store.seal_path("k").exists());
    }

    #[test]
    fn the_identity_is_stable_and_follows_the_vm_size() {
        if std::fs::File::open("/dev/kvm").is_err() {
            panic!("this test reads the host's KVM capabilities and /dev/kvm is unusable");
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&rootfs, b"r").unwrap();
        let cache = TrustedCache::at(dir.path().join("cache")).unwrap();
        let spec = VmSpec {
            name: "a".into(),
            kernel: kernel.clone(),
            rootfs,
            vcpus: 1,
            memory_mib: 256,
            boot_timeout: std::time::Duration::from_secs(1),
            serial_log_limit: None,
            network: Default::default(),
            segment: None,
            prepare: None,
            caches: Vec::new(),
        };
        let first = identity(&cache, &spec).unwrap();
        // From every CPU: KVM answers some CPUID leaves from the CPU the
        // caller runs on, which must not change the identity.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let others: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (spec, cache) = (spec.clone(), cache.clone());
                std::thread::spawn(move || {
                    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in it.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
                    }
                    (
                        runner_vmm::snapshot::host_fingerprint().unwrap(),
                        identity(&cache, &spec).unwrap(),
                    )
                })
            })
            .collect();
        let host = runner_vmm::snapshot::host_fingerprint().unwrap();
        for other in others {
            let (other_host, other_identity) = other.join().unwrap();
            assert_eq!(other_host, host);
            assert_eq!(other_identity, first);
        }
        let bigger = VmSpec {
            memory_mib: 512,
            ..spec.clone()
        };
        assert_ne!(identity(&cache, &bigger).unwrap().0, first.0);
        assert_eq!(first.0.len(), 16);
        // A segment member, and each of its preparations, has its own.
        let (_switch, nics) =
            crate::network::segment::Switch::start(&["job".into(), "db".into()]).unwrap();
        let nics: Vec<_> = nics.into_iter().map(std::sync::Arc::new).collect();
        let member = |i: usize| VmSpec {
            segment: Some(nics[i].clone()),
            ..spec.clone()
        };
        let (job, db) = (
            identity(&cache, &member(0)).unwrap().0,
            identity(&cache, &member(1)).unwrap().0,
        );
        assert!(job != db && job != first.0 && db != first.0);
        let prepared = |run: &str| VmSpec {
            prepare: Some(std::sync::Arc::new(Prepared(run.into()))),
            ..member(1)
        };
        let a = identity(&cache, &prepared("a")).unwrap().0;
        assert!(a != db && a != identity(&cache, &prepared("b")).unwrap().0);
        // The kernel's content, not its name, size or time.
        std::fs::write(&kernel, b"K").unwrap();
        assert_ne!(identity(&cache, &spec).unwrap().0, first.0);
        std::fs::write(&kernel, b"k").unwrap();
        assert_eq!(identity(&cache, &spec).unwrap().0, first.0);
        assert!(identity(
            &cache,
            &VmSpec {
                kernel: dir.path().join("missing"),
                ..spec.clone()
            }
        )
        .is_err());
    }

    #[derive(Debug)]
    struct Prepared(String);

    impl crate::Preparation for Prepared {
        fn identity(&self) -> String {
            self.0.clone()
        }
        fn prepare(&self, _vm: &mut dyn crate::Vm) -> Result<(), crate::Unprepared> {
            Ok(())
        }
    }

    #[test]
    fn a_vm_that_can_never_be_prepared_is_remembered_with_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        assert_eq!(store.never("k"), None);
        store.mark_never("k", "its `run` stays in the foreground\n");
        assert_eq!(
            store.never("k").as_deref(),
            Some("its `run` stays in the foreground")
        );
        assert_eq!(store.never("other"), None);
    }

    #[test]
    fn unfinished_builds_of_a_key_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let keep = ["k.snap", "k.lock", ".other.12.building", "k.building"];
        for name in keep.iter().chain(&[".k.12.building", ".k.345.building"]) {
            std::fs::write(store.dir().join(name), b"").unwrap();
        }
        store.remove_unfinished_builds("k");
        let mut left: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn only_the_file_that_was_restored_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        std::fs::write(store.path("k"), b"dead").unwrap();
        let dead = FileId::of(&store.path("k")).unwrap().unwrap();

        // Rebuilt in the meantime (a new file renamed into place): kept.
        let rebuilt = store.dir().join(".k.1.building");
        std::fs::write(&rebuilt, b"fresh").unwrap();
        std::fs::rename(&rebuilt, store.path("k")).unwrap();
        assert_eq!(store.quarantine("k", &dead).unwrap(), None);
        assert_eq!(std::fs::read(store.path("k")).unwrap(), b"fresh");

        // Still the file that was restored: moved aside, replacing an older one.
        let fresh = FileId::of(&store.path("k")).unwrap().unwrap();
        let moved = store.quarantine("k", &fresh).unwrap().unwrap();
        assert_eq!(moved, store.dir().join("quarantine").join("k.snap"));
        assert_eq!(std::fs::read(&moved).unwrap(), b"fresh");
        assert!(!store.path("k").exists());
        // Gone already: nothing to do.
        assert_eq!(store.quarantine("k", &fresh).unwrap(), None);
        assert_eq!(FileId::of(&store.path("k")).unwrap(), None);
    }

    #[test]
    fn prune_drops_the_least_recently_restored_and_never_one_being_built() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86400);
        for (key, days) in [("old", 9), ("new", 1), ("building", 20)] {
            std::fs::write(store.path(key), vec![1u8; 8192]).unwrap();
            store.seal(key, "id").unwrap();
            store.touch_used(key);
            let stamp = std::fs::File::options()
                .write(true)
                .open(store.used_path(key))
                .unwrap();
            stamp.set_modified(now - day * days).unwrap();
        }
        std::fs::create_dir(store.dir().join("quarantine")).unwrap();
        let dead = store.dir().join("quarantine/dead.snap");
        std::fs::write(&dead, b"dead").unwrap();
        let lock = store.lock("building").unwrap();
        let limits = Limits {
            older_than: Some(day * 5),
            max_bytes: None,
        };
        let pruned = store.prune(limits, now + day).unwrap();
        assert_eq!(pruned.removed, [store.path("old")]);
        assert_eq!(pruned.in_use, [store.path("building")]);
        assert!(!store.path("old").exists() && !store.seal_path("old").exists());
        assert!(!store.used_path("old").exists());
        assert!(store.path("building").exists() && store.path("new").exists());
        drop(lock);
        // A cap of nothing: all of it, the quarantined one too.
        let limits = Limits {
            older_than: None,
            max_bytes: Some(0),
        };
        let pruned = store.prune(limits, now).unwrap();
        assert_eq!(pruned.removed.len(), 3);
        assert!(!dead.exists() && !store.path("new").exists());
    }

    #[test]
    fn the_lock_is_exclusive_across_file_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let held = store.lock("k").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = store.clone();
        let waiter = std::thread::spawn(move || {
            let _lock = other.lock("k").unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv().unwrap();
        waiter.join().unwrap();
    }
}
