//! What the runner prepares for a VM's jail (see [`super::jail`]), and
//! takes down after it: the VM's own unprivileged ids, and its cgroup.
//!
//! - **Ids.** A runner that is root gives every VM process, and the VM's
//!   passt, a uid and gid of their own from the subordinate range of the
//!   system user [`VM_USER`] (`scripts/setup-host` creates both): ids that
//!   own nothing on the host, and that no other VM shares, so one VM's
//!   processes cannot signal or trace another's. A slot of the range is
//!   taken with an `flock` on a file in [`SLOTS_DIR`] and held for the
//!   VM's life. A runner that is not root keeps its own ids.
//! - **Cgroup.** Memory (the guest's RAM plus [`MEMORY_OVERHEAD`], plus as
//!   much as its disk's copy-on-write layer can grow: see [`memory_limit`])
//!   and processes are capped, on cgroup v2 (`/sys/fs/cgroup/runner/`) or on
//!   the v1 memory and pids hierarchies (below the runner's own cgroup).
//!   A host that offers neither (a container without delegation, a runner
//!   that is not root) runs VMs without one, after one warning line.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// The system user whose subordinate ids VM processes run as.
pub const VM_USER: &str = "runner-vm";
/// Where the slots of that range are locked (a tmpfs: empty after boot).
pub const SLOTS_DIR: &str = "/run/runner/vm-ids";
/// Memory a VM process may use beyond its guest's RAM: the VMM, device
/// buffers, page tables (about 2 MiB in use; the rest is margin).
pub const MEMORY_OVERHEAD: u64 = 128 << 20;
/// Threads a VM process may have beyond one per vCPU.
const EXTRA_PIDS: u64 = 32;

/// A VM's own ids; the slot is free again when this is dropped.
pub struct VmIds {
    pub uid: u32,
    pub gid: u32,
    _slot: File,
}

impl VmIds {
    /// Fresh ids for a VM, if the runner is root; `None` otherwise.
    pub fn allocate() -> Result<Option<VmIds>, String> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let missing = || {
            format!(
                "VM processes run as ids of the unprivileged user `{VM_USER}`, which does not \
                 exist or has no range in /etc/subuid and /etc/subgid: run scripts/setup-host"
            )
        };
        let (uid_base, count) = subordinate_range(Path::new("/etc/subuid")).ok_or_else(missing)?;
        let (gid_base, gid_count) =
            subordinate_range(Path::new("/etc/subgid")).ok_or_else(missing)?;
        let count = count.min(gid_count);
        fs::create_dir_all(SLOTS_DIR).map_err(|e| format!("creating {SLOTS_DIR}: {e}"))?;
        for slot in 0..count {
            let path = Path::new(SLOTS_DIR).join(slot.to_string());
            let file = crate::trusted_cache::open_no_follow(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(VmIds {
                    uid: uid_base + slot,
                    gid: gid_base + slot,
                    _slot: file,
                }));
            }
        }
        Err(format!(
            "all {count} VM ids of `{VM_USER}` are in use: too many VMs on this host"
        ))
    }
}

/// Whether `uid` is one of the ids VMs run as.
pub fn is_vm_uid(uid: u32) -> bool {
    subordinate_range(Path::new("/etc/subuid"))
        .is_some_and(|(start, count)| uid >= start && uid - start < count)
}

/// `VM_USER`'s range in a subordinate id file: (first id, count).
fn subordinate_range(file: &Path) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        (parts.next()? == VM_USER).then_some(())?;
        let start = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        Some((start, count))
    })
}

/// The memory a VM process may use: the guest's RAM, [`MEMORY_OVERHEAD`],
/// and its disk's copy-on-write layer at its largest, the size of `disk`.
/// The layer's pages are charged to the process that writes them: page
/// cache that can be reclaimed where the VM's directory is on a disk, but
/// memory for good where it is on a tmpfs (a tmpfs /tmp, or an overlay on
/// one, which no cheap check tells apart).
pub fn memory_limit(guest_mib: u64, disk: Option<&Path>) -> u64 {
    let layer = disk
        .and_then(|d| fs::metadata(d).ok())
        .map_or(0, |m| m.len());
    (guest_mib << 20) + MEMORY_OVERHEAD + layer
}

/// A VM process's cgroup(s); removed when dropped (after the process
/// was reaped).
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// A cgroup limited for a VM of `memory_mib` MiB and `vcpus` vCPUs;
    /// `None` (one warning line per run) where the host offers none.
    pub fn create(memory: u64, vcpus: u64) -> Option<VmCgroup> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "vm-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let pids = vcpus + EXTRA_PIDS;
        let made = if nix::unistd::geteuid().is_root() {
            create_v2(&name, memory, pids)
                .or_else(|v2| create_v1(&name, memory, pids).map_err(|v1| format!("{v2}; {v1}")))
        } else {
            Err("the runner is not root".to_string())
        };
        match made {
            Ok(dirs) => Some(VmCgroup { dirs }),
            Err(why) => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "runner: warning: VM processes run without cgroup limits on memory and \
                         processes ({why}); they are jailed otherwise"
                    )
                });
                None
            }
        }
    }

    /// The directories the VM process joins.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// How long the VM's processes get to be gone from its cgroup, once the
/// runner killed the process it started (the jailed one dies by its
/// parent-death signal, a moment later).
const EMPTY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for VmCgroup {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + EMPTY_WAIT;
        for dir in &self.dirs {
            loop {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let left: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if left.is_empty() || std::time::Instant::now() >= deadline {
                    break;
                }
                // What is left of this VM (nothing else is in its cgroup).
                for pid in left {
                    // SAFETY: a plain syscall without memory arguments.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!("removing the VM's cgroup {}: {e}", dir.display());
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    fs::write(dir.join(file), value)
        .map_err(|e| format!("writing {}: {e}", dir.join(file).display()))
}

/// cgroup v2: `/sys/fs/cgroup/runner/NAME`, its controllers enabled below
/// `runner` (which holds no process, as v2 wants).
fn create_v2(name: &str, memory: u64, pids: u64) -> Result<Vec<PathBuf>, String> {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|_| "no cgroup v2 at /sys/fs/cgroup".to_string())?;
    for needed in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(format!("cgroup v2 offers no {needed} controller"));
        }
    }
    let parent = root.join("runner");
    fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    write(&parent, "cgroup.subtree_control", "+memory +pids")?;
    let dir = parent.join(name);
    fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let limited = write(&dir, "memory.max", &memory.to_string())
        .and_then(|()| write(&dir, "memory.swap.max", "0").or(Ok(())))
        .and_then(|()| write(&dir, "pids.max", &pids.to_string()));
    if let Err(e) = limited {
        let _ = fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(vec![dir])
}

/// cgroup v1: NAME below the runner's own cgroup in the memory and pids
/// hierarchies.
fn create_v1(name: &str, memory: u64, pids: u64) -> Result<Vec<PathBuf>, String> {
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let mut dirs = Vec::new();
    let made = (|| {
        for (controller, file, value) in [
            ("memory", "memory.limit_in_bytes", memory),
            ("pids", "pids.max", pids),
        ] {
            let path = own
                .lines()
                .find_map(|line| {
                    let mut parts = line.splitn(3, ':');
                    let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                    list.split(',')
                        .any(|c| c == controller)
                        .then(|| path.to_string())
                })
                .ok_or_else(|| format!("no cgroup v1 {controller} hierarchy"))?;
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join(name);
            fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            dirs.push(dir.clone());
            write(&dir, file, &value.to_string())?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(dirs),
        Err(e) => {
            for dir in dirs {
                let _ = fs::remove_dir(dir);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_layer_counts_toward_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.ext4");
        fs::File::create(&disk).unwrap().set_len(100 << 20).unwrap();
        let base = (256 << 20) + MEMORY_OVERHEAD;
        assert_eq!(memory_limit(256, Some(&disk)), base + (100 << 20));
        assert_eq!(memory_limit(256, None), base);
    }

    #[test]
    fn a_subordinate_range_is_found_by_user_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subuid");
        fs::write(&file, "runner-build:100000:65536\nrunner-vm:165536:65536\n").unwrap();
        assert_eq!(subordinate_range(&file), Some((165536, 65536)));
        fs::write(&file, "runner-build:100000:65536\n").unwrap();
        assert_eq!(subordinate_range(&file), None);
    }
}
