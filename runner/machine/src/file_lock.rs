//! `flock(2)` locks, the one way the caches (images, snapshots, cache
//! volumes) say "in use" or "being written": the kernel drops a lock when
//! its holder dies, so a killed runner never leaves an entry locked, and a
//! sweep can tell a live writer's file from a dead one's by trying the lock.
//! A lock belongs to an open file description: two opens of one file in
//! the same process exclude each other like two processes do.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::trusted_cache::open_no_follow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: any number at once.
    Shared,
    /// One writer (or remover), and no reader.
    Exclusive,
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Locks the lock file at `path` (created, never through a symlink).
    /// With `wait` false, `None` when someone else holds it.
    pub fn acquire(path: &Path, mode: LockMode, wait: bool) -> std::io::Result<Option<FileLock>> {
        FileLock::on(open_no_follow(path)?, mode, wait)
    }

    /// Locks `file` itself. With `wait` false, `None` when someone else
    /// holds it.
    pub fn on(file: File, mode: LockMode, wait: bool) -> std::io::Result<Option<FileLock>> {
        let operation = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        } | if wait { 0 } else { libc::LOCK_NB };
        loop {
            // SAFETY: flock on a file descriptor we own; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Some(FileLock { file }));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) if !crate::interrupt::is_interrupted() => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(err),
            }
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_exclude_an_exclusive_one_and_not_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let reader = FileLock::acquire(&path, LockMode::Shared, false).unwrap();
        assert!(reader.is_some());
        assert!(FileLock::acquire(&path, LockMode::Shared, false)
            .unwrap()
            .is_some());
        assert!(FileLock::acquire(&path, LockMode::Exclusive, false)
            .unwrap()
            .is_none());
        drop(reader);
        let writer = FileLock::acquire(&path, LockMode::Exclusive, false).unwrap();
        assert!(writer.is_some());
        assert!(FileLock::acquire(&path, LockMode::Shared, false)
            .unwrap()
            .is_none());
    }
}
