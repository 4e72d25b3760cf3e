//! A VM's cache volumes ([`crate::CacheDisk`]), handed to its VM process
//! as open files.
//!
//! The runner opens each cache's base (read-only) and layer (read-write)
//! and the VM process inherits exactly those descriptors. Its jail then
//! needs no path into the cache store, whose files stay the runner's own
//! (the store checks who owns them), and the process gets no more access
//! than the descriptors carry: it cannot write a base, nor open any other
//! file of the store.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CacheDisk;

/// The guest's serial of cache slot `index`: `cache0`, `cache1`, ...
pub fn slot_serial(index: usize) -> String {
    format!("cache{index}")
}

/// A cache volume as its VM process gets it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRole {
    /// The virtio-blk serial (`cache0`, ...).
    pub serial: String,
    /// The base image's path, for messages only.
    pub base: PathBuf,
    /// The inherited descriptors of the base (read-only) and the layer.
    pub base_fd: RawFd,
    pub layer_fd: RawFd,
    /// The vhost-user socket (device processes only).
    pub socket: Option<PathBuf>,
}

/// The open files behind a VM's [`CacheRole`]s, which the runner keeps
/// open until the VM process has inherited them.
pub struct OpenCaches {
    pub roles: Vec<CacheRole>,
    files: Vec<File>,
}

impl OpenCaches {
    /// Opens every cache of a VM; `socket` gives cache `i`'s vhost-user
    /// socket, if it has one. Each layer is emptied: whatever an earlier,
    /// failed start of this VM wrote there is no one's.
    pub fn open(
        caches: &[CacheDisk],
        socket: impl Fn(usize) -> Option<PathBuf>,
    ) -> Result<OpenCaches, String> {
        let mut open = OpenCaches {
            roles: Vec::with_capacity(caches.len()),
            files: Vec::with_capacity(2 * caches.len()),
        };
        for (index, cache) in caches.iter().enumerate() {
            let base = open_file(&cache.base, false)
                .map_err(|e| format!("cache {}: base {e}", cache.serial))?;
            let layer = open_file(&cache.layer, true)
                .and_then(|layer| {
                    layer
                        .set_len(0)
                        .map(|()| layer)
                        .map_err(|e| format!("{}: {e}", cache.layer.display()))
                })
                .map_err(|e| format!("cache {}: layer {e}", cache.serial))?;
            open.roles.push(CacheRole {
                serial: cache.serial.clone(),
                base: cache.base.clone(),
                base_fd: base.as_raw_fd(),
                layer_fd: layer.as_raw_fd(),
                socket: socket(index),
            });
            open.files.extend([base, layer]);
        }
        Ok(open)
    }

    /// The descriptors the VM process must inherit.
    pub fn fds(&self) -> Vec<RawFd> {
        self.files.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Opens a regular file, never through a symlink; `write` for a layer.
fn open_file(path: &Path, write: bool) -> Result<File, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| fail(&e))?;
    if !file.metadata().map_err(|e| fail(&e))?.is_file() {
        return Err(fail(&"not a regular file"));
    }
    Ok(file)
}

/// In the VM process: the descriptors of a cache's base and layer, each
/// taken once (`taken` remembers which were).
pub fn take(role: &CacheRole, taken: &mut HashSet<RawFd>) -> Result<(File, File), String> {
    let mut one = |fd: RawFd, what: &str| -> Result<File, String> {
        let fail = |why: &str| format!("cache {}: {what} descriptor {fd}: {why}", role.serial);
        if fd <= 2 {
            return Err(fail("not one the runner passes"));
        }
        if !taken.insert(fd) {
            return Err(fail("named twice"));
        }
        // SAFETY: fcntl on a number; it fails (EBADF) when it is not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(fail(&std::io::Error::last_os_error().to_string()));
        }
        // SAFETY: the runner opened it for this process, which inherited
        // it and holds it nowhere else: `taken` lets each be owned once.
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    Ok((one(role.base_fd, "base")?, one(role.layer_fd, "layer")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_open_with_empty_layers_and_each_descriptor_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.ext4");
        let layer = dir.path().join("layer");
        std::fs::write(&base, [1u8; 4096]).unwrap();
        std::fs::write(&layer, b"left by a failed start").unwrap();
        let cache = CacheDisk {
            serial: slot_serial(0),
            base: base.clone(),
            layer: layer.clone(),
        };
        let open = OpenCaches::open(std::slice::from_ref(&cache), |i| {
            Some(dir.path().join(format!("{i}")))
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&layer).unwrap().len(), 0);
        let role = &open.roles[0];
        assert_eq!(role.serial, "cache0");
        assert_eq!(role.socket.as_deref(), Some(dir.path().join("0").as_path()));
        assert_eq!(open.fds(), vec![role.base_fd, role.layer_fd]);

        // Taken as the VM process would (here from duplicates, which this
        // test owns).
        // SAFETY: dup of descriptors `open` holds; the copies are this
        // test's, for `take` to own.
        let dup = |fd: RawFd| unsafe { libc::dup(fd) };
        let copy = CacheRole {
            base_fd: dup(role.base_fd),
            layer_fd: dup(role.layer_fd),
            ..role.clone()
        };
        let mut taken = HashSet::new();
        let (base_file, layer_file) = take(&copy, &mut taken).unwrap();
        assert_eq!(base_file.metadata().unwrap().len(), 4096);
        assert_eq!(layer_file.metadata().unwrap().len(), 0);
        let again = take(&copy, &mut taken).unwrap_err();
        assert!(again.contains("named twice"), "{again}");
        let stdin = CacheRole {
            base_fd: 0,
            ..copy.clone()
        };
        assert!(take(&stdin, &mut HashSet::new()).is_err());
        let closed = CacheRole {
            base_fd: 1 << 20,
            ..copy
        };
        let err = take(&closed, &mut HashSet::new()).unwrap_err();
        assert!(err.contains("descriptor"), "{err}");

        let missing = CacheDisk {
            base: dir.path().join("missing"),
            ..cache
        };
        let err = OpenCaches::open(&[missing], |_| None).err().unwrap();
        assert!(
            err.contains("cache0: base") && err.contains("missing"),
            "{err}"
        );
    }
}
