//! Cache volumes: disks the host attaches with the job's caches on them.
//!
//! Each cache disk holds an ext4 file system (made empty by the host, or a
//! version an earlier job left). The agent mounts it under [`CACHES_DIR`]
//! and binds each of the cache's guest paths onto a directory of its own
//! on it, so the job sees its `~/.cargo/registry` or `target/` where it
//! expects them. After the job the host asks for an unmount: only a disk
//! whose file system was cleanly unmounted may be kept for the next job.
//!
//! A disk is found by its virtio-blk serial, not its name: names follow
//! probe order, which the host does not promise.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use agent_protocol::{CacheMount, CacheMounted, CACHE_DISK_WAIT_MS, MAX_CACHES, MAX_CACHE_PATHS};
use nix::mount::{mount, umount, MsFlags};

/// Where the cache file systems are mounted. Cache paths may not lie under
/// `/run` (the runner refuses them), so nothing binds over this.
const CACHES_DIR: &str = "/run/runner-caches";
const SYS_BLOCK: &str = "/sys/block";
/// Longest serial a virtio-blk disk reports (the spec's 20 bytes).
const MAX_SERIAL: usize = 20;

/// What this guest mounted, so that an unmount knows what to undo.
static MOUNTED: Mutex<Vec<Mounted>> = Mutex::new(Vec::new());

struct Mounted {
    serial: String,
    root: PathBuf,
    /// Bind targets, in the order they were bound.
    binds: Vec<PathBuf>,
}

/// Checks a request as a whole: the host is trusted, but a malformed
/// request is refused before anything is mounted.
pub fn check(request: &[CacheMount]) -> Result<(), String> {
    if request.len() > MAX_CACHES {
        return Err(format!(
            "{} caches requested; at most {MAX_CACHES}",
            request.len()
        ));
    }
    for cache in request {
        let serial_ok = !cache.serial.is_empty()
            && cache.serial.len() <= MAX_SERIAL
            && cache
                .serial
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !serial_ok {
            return Err(format!("invalid cache disk serial {:?}", cache.serial));
        }
        if cache.paths.is_empty() || cache.paths.len() > MAX_CACHE_PATHS {
            return Err(format!(
                "cache {} has {} paths; 1 to {MAX_CACHE_PATHS} are allowed",
                cache.serial,
                cache.paths.len()
            ));
        }
        for path in &cache.paths {
            if !is_plain_absolute(path) {
                return Err(format!(
                    "cache path {path:?} is not an absolute, normalized path"
                ));
            }
        }
    }
    Ok(())
}

/// An absolute path of normal components only (no `.`, `..` or `//`).
/// Split by hand: `Path::components` quietly drops `.` and empty parts.
fn is_plain_absolute(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some(rest) => {
            !path.contains('\0')
                && rest
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..")
        }
        None => false,
    }
}

/// Mounts every cache of a checked request; one outcome per cache. A
/// cache that cannot be mounted still gets its paths, as empty directories
/// on the guest's own root: the job runs as on a cold cache.
pub fn mount_all(request: &[CacheMount]) -> Vec<CacheMounted> {
    request
        .iter()
        .map(|cache| {
            let error = mount_one(cache).err();
            if error.is_some() {
                for path in &cache.paths {
                    let _ = std::fs::create_dir_all(path);
                }
            }
            CacheMounted {
                serial: cache.serial.clone(),
                error,
            }
        })
        .collect()
}

fn mount_one(cache: &CacheMount) -> Result<(), String> {
    let device = wait_for_disk(&cache.serial, Duration::from_millis(CACHE_DISK_WAIT_MS))?;
    let root = Path::new(CACHES_DIR).join(&cache.serial);
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    // nosuid, nodev: the file system is whatever an earlier job wrote.
    mount(
        Some(&device),
        &root,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {} (ext4): {e}", device.display()))?;
    let mut mounted = Mounted {
        serial: cache.serial.clone(),
        root: root.clone(),
        binds: Vec::new(),
    };
    let bound = cache
        .paths
        .iter()
        .try_for_each(|path| bind(&root, path).map(|target| mounted.binds.push(target)));
    if let Err(e) = bound {
        // Leave nothing half-done: the paths stay on the guest's own root.
        undo(&mounted);
        return Err(e);
    }
    MOUNTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(mounted);
    Ok(())
}

/// Binds `path` onto its own directory on the cache file system.
fn bind(root: &Path, path: &str) -> Result<PathBuf, String> {
    let parent = root.join("paths");
    let source = parent.join(escape(path));
    // What an earlier job left on the cache is not to be followed: a
    // symlink here would bind some other guest directory over `path`.
    for dir in [&parent, &source] {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!(
                    "{} on the cache is not a directory (left by an earlier job?)",
                    dir.display()
                ))
            }
            _ => {}
        }
    }
    std::fs::create_dir_all(&source)
        .map_err(|e| format!("creating {} on the cache: {e}", source.display()))?;
    let target = PathBuf::from(path);
    std::fs::create_dir_all(&target).map_err(|e| format!("creating {path}: {e}"))?;
    mount(
        Some(&source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("binding {path} onto the cache: {e}"))?;
    Ok(target)
}

/// One directory name per guest path: `/usr/local/cargo` → `usr%2Flocal%2Fcargo`.
fn escape(path: &str) -> String {
    path.trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// The `/dev` node of the disk with `serial`, once it has a capacity.
fn wait_for_disk(serial: &str, wait: Duration) -> Result<PathBuf, String> {
    let start = Instant::now();
    loop {
        match find_disk(Path::new(SYS_BLOCK), serial) {
            Some((name, sectors)) if sectors > 0 => return Ok(Path::new("/dev").join(name)),
            found if start.elapsed() >= wait => {
                return Err(match found {
                    Some((name, _)) => format!("cache disk {serial} ({name}) is still empty"),
                    None => format!("no disk with serial {serial}"),
                } + &format!(" after {wait:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The block device under `sys_block` whose serial is `serial`, and its
/// size in sectors.
fn find_disk(sys_block: &Path, serial: &str) -> Option<(String, u64)> {
    for entry in std::fs::read_dir(sys_block).ok()?.flatten() {
        let dir = entry.path();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if read("serial").trim() == serial {
            let sectors = read("size").trim().parse().unwrap_or(0);
            return Some((entry.file_name().to_string_lossy().into_owned(), sectors));
        }
    }
    None
}

fn undo(mounted: &Mounted) -> Vec<String> {
    let mut failed = Vec::new();
    for target in mounted.binds.iter().rev() {
        if let Err(e) = umount(target) {
            failed.push(format!("unmounting {}: {e}", target.display()));
        }
    }
    if failed.is_empty() {
        if let Err(e) = umount(&mounted.root) {
            failed.push(format!("unmounting the cache file system: {e}"));
        }
    }
    failed
}

/// Syncs, then unmounts every cache mounted so far. A cache still in use
/// (a process left running holds a file on it) stays mounted and is
/// reported as failed: its disk is not a clean file system.
pub fn unmount_all() -> (Vec<String>, Vec<String>) {
    nix::unistd::sync();
    let mut mounted = MOUNTED.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut clean, mut failed) = (Vec::new(), Vec::new());
    for cache in mounted.drain(..) {
        let errors = undo(&cache);
        if errors.is_empty() {
            clean.push(cache.serial);
        } else {
            failed.push(format!("cache {}: {}", cache.serial, errors.join("; ")));
        }
    }
    (clean, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(serial: &str, paths: &[&str]) -> Vec<CacheMount> {
        vec![CacheMount {
            serial: serial.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }]
    }

    #[test]
    fn requests_with_odd_paths_or_serials_are_refused_whole() {
        assert!(check(&request("cache0", &["/usr/local/cargo"])).is_ok());
        for bad in [
            "relative", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b",
        ] {
            assert!(check(&request("cache0", &[bad])).is_err(), "{bad:?}");
        }
        for bad in ["", "Cache0", "../vda", "cache0cache0cache0cache0"] {
            assert!(check(&request(bad, &["/x"])).is_err(), "{bad:?}");
        }
        assert!(check(&request("cache0", &[])).is_err());
        let many = vec![request("cache0", &["/x"]).remove(0); MAX_CACHES + 1];
        assert!(check(&many).is_err());
    }

    #[test]
    fn each_path_gets_its_own_directory_name() {
        assert_eq!(escape("/usr/local/cargo"), "usr%2Flocal%2Fcargo");
        assert_ne!(escape("/a/b"), escape("/a%2Fb"));
    }

    #[test]
    fn a_disk_is_found_by_its_serial_with_its_size() {
        let sys = tempfile::tempdir().unwrap();
        for (name, serial, size) in [("vda", "", "100"), ("vdb", "cache0\n", "2048\n")] {
            let dir = sys.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("serial"), serial).unwrap();
            std::fs::write(dir.join("size"), size).unwrap();
        }
        assert_eq!(
            find_disk(sys.path(), "cache0"),
            Some(("vdb".to_string(), 2048))
        );
        assert_eq!(find_disk(sys.path(), "cache1"), None);
    }
}
