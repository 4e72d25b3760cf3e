//! Each VM's scratch directory in the temp dir (sockets, the disk overlay),
//! and sweeping the ones left behind by runners that were killed.
//!
//! A directory is named `runner-vm-<pid>-<random>`: the pid of the runner
//! that owns it. Its `TempDir` removes it when the VM is dropped, but a
//! `kill -9` skips that, and an overlay can be gigabytes; so `runner test`
//! and `runner exec` remove, at start, the directories whose owner is gone.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const PREFIX: &str = "runner-vm-";

/// Creates a fresh VM directory in the temp dir, named after this process.
pub fn create() -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir()
}

/// The owner pid in a VM directory's name, if the name is ours.
fn owner_pid(name: &str) -> Option<libc::pid_t> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, random) = rest.split_once('-')?;
    if random.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&pid: &libc::pid_t| pid > 0)
}

/// True unless `pid` certainly does not exist. A process of another user
/// (EPERM) is alive; so is a reused pid, which errs on the side of keeping.
fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the VM directories in `temp` whose owning runner is gone. Only
/// real directories (not symlinks) that match our naming scheme and belong
/// to the current user (or, for root, to a VM's own ids, which a jailed VM
/// process has its directory under) are touched. Returns what was removed.
pub fn sweep_stale(temp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return Vec::new();
    };
    // SAFETY: plain syscall with no arguments.
    let uid = unsafe { libc::geteuid() };
    let me = std::process::id() as libc::pid_t;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ours = meta.uid() == uid
            || (uid == 0 && super::vm_process::confinement::is_vm_uid(meta.uid()));
        if !meta.is_dir() || !ours || pid == me || alive(pid) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!("removing the stale VM directory {}: {e}", path.display()),
        }
    }
    removed
}

/// [`sweep_stale`] on the system temp dir, logging what it removed.
pub fn sweep_stale_in_temp() {
    for path in sweep_stale(&std::env::temp_dir()) {
        tracing::info!("removed {}, left by a runner that is gone", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The pid of a process that has exited and been reaped: dead for sure
    /// (until the pid is reused, which would only make us keep its dir).
    fn dead_pid() -> libc::pid_t {
        let mut child = Command::new("true").spawn().expect("running `true`");
        let pid = child.id() as libc::pid_t;
        child.wait().unwrap();
        pid
    }

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(owner_pid("runner-vm-1234-abCD12"), Some(1234));
        assert_eq!(owner_pid("runner-vm-abCD12"), None);
        assert_eq!(owner_pid("runner-vm-12-"), None);
        assert_eq!(owner_pid("runner-vm--12-x"), None);
        assert_eq!(owner_pid("runner-vm-0-x"), None);
        assert_eq!(owner_pid("other-1234-x"), None);
    }

    #[test]
    fn only_dirs_of_dead_runners_are_swept() {
        let temp = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let mine = std::process::id();
        let make = |name: String| {
            let dir = temp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("overlay"), "x").unwrap();
            dir
        };
        let stale = make(format!("runner-vm-{dead}-aaaaaa"));
        let ours = make(format!("runner-vm-{mine}-bbbbbb"));
        // pid 1 is alive (and, unless we are root, not ours to signal).
        let live = make("runner-vm-1-cccccc".to_string());
        let legacy = make("runner-vm-dddddd".to_string());
        let other = make(format!("something-{dead}-eeeeee"));
        // A symlink with our naming scheme is never followed nor removed.
        let target = make("target".to_string());
        let link = temp.path().join(format!("runner-vm-{dead}-ffffff"));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        assert_eq!(sweep_stale(temp.path()), std::slice::from_ref(&stale));
        assert!(!stale.exists());
        for kept in [&ours, &live, &legacy, &other, &target] {
            assert!(kept.join("overlay").exists(), "{}", kept.display());
        }
        assert!(link.symlink_metadata().is_ok());
    }

    #[test]
    fn created_dirs_carry_our_pid() {
        let dir = create().unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(owner_pid(name), Some(std::process::id() as libc::pid_t));
    }
}
