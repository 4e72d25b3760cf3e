//! The VM process's jail, entered first thing, before the process opens an
//! image or handles a guest byte (as Firecracker's jailer does):
//!
//! - its own **cgroup**, made and limited by the runner (memory: guest RAM
//!   plus a small overhead; pids), joined here;
//! - new **mount, PID, IPC, UTS and network namespaces** (and, for a runner
//!   that is not root, a user namespace that maps only its own ids): no
//!   network at all (host sockets are Unix sockets in the VM directory), no
//!   other process to see or signal;
//! - a **new root**: a small read-only tmpfs holding, at their own paths,
//!   only the VM's directory (writable), the files it reads (kernel,
//!   rootfs, the snapshot it restores: read-only), the snapshot file it
//!   writes, `/dev/kvm`, and a `/proc` of its own PID namespace;
//! - an **unprivileged uid and gid** (a runner that is root gives each VM
//!   its own, from the `runner-vm` user's subordinate range);
//! - **limits**: open files, no core dumps, `no_new_privs`.
//!
//! A process must fork to be inside a new PID namespace, so the process the
//! runner started stays outside as a *supervisor*: it says the jailed
//! process's pid (`jailed PID`, for the kernel's record of a seccomp kill),
//! passes the runner's signals on (SIGUSR1 asks for a snapshot), and ends
//! as the jailed process ended (its exit code, or the same signal). The
//! jailed process dies with the supervisor (parent-death signal).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

/// Where the VM process is confined (see the module docs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The VM's directory: the one writable place.
    pub dir: PathBuf,
    /// Files the VM reads.
    pub read_only: Vec<PathBuf>,
    /// Files outside `dir` the VM writes (a snapshot being built;
    /// `/dev/kvm`).
    pub read_write: Vec<PathBuf>,
    /// The uid and gid to run as; `None` keeps the runner's (then a user
    /// namespace gives the process the rights to build its jail).
    pub user: Option<(u32, u32)>,
    /// The cgroups to join (one per v1 hierarchy, or the v2 one).
    pub cgroups: Vec<PathBuf>,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
}

/// The new root's mount point, in the VM's directory.
const NEW_ROOT: &str = ".root";

/// Enters the jail. Returns in the jailed process; the supervisor never
/// returns (it exits as the jailed process did). Call while the process
/// has a single thread.
pub fn enter(jail: &JailConfig) -> Result<(), String> {
    for cgroup in &jail.cgroups {
        fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("jail: joining the cgroup {}: {e}", cgroup.display()))?;
    }
    let root = nix::unistd::geteuid().is_root();
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET;
    if !root {
        namespaces |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(namespaces).map_err(|e| format!("jail: new namespaces: {e}"))?;
    if !root {
        // Our own ids, and no others: files keep their owners.
        let write = |file: &str, text: String| {
            fs::write(format!("/proc/self/{file}"), text)
                .map_err(|e| format!("jail: writing /proc/self/{file}: {e}"))
        };
        write("setgroups", "deny".into())?;
        write("uid_map", format!("{uid} {uid} 1"))?;
        write("gid_map", format!("{gid} {gid} 1"))?;
    }
    // The runner's signals wait in a signalfd for the supervisor; the
    // jailed process unblocks them again.
    let forwarded = forwarded_signals();
    forwarded
        .thread_block()
        .map_err(|e| format!("jail: blocking signals: {e}"))?;
    // SAFETY: the process has one thread (the caller's promise), so the
    // child may run any code.
    match unsafe { fork() }.map_err(|e| format!("jail: fork: {e}"))? {
        ForkResult::Parent { child } => supervise(child, &forwarded),
        ForkResult::Child => {
            forwarded
                .thread_unblock()
                .map_err(|e| format!("jail: unblocking signals: {e}"))?;
            build_root(jail)?;
            drop_privileges(jail)?;
            Ok(())
        }
    }
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// The supervisor: says the jailed pid, passes signals on, ends as the
/// jailed process ended.
fn supervise(child: Pid, signals: &SigSet) -> ! {
    let _ = writeln!(std::io::stdout(), "jailed {child}");
    let _ = std::io::stdout().flush();
    // No core file of ours when we die by the child's signal.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let Ok(fd) = SignalFd::new(signals) else {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        std::process::exit(1);
    };
    loop {
        loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => die_by(signal),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(_) => std::process::exit(1),
            }
        }
        if let Ok(Some(info)) = fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(signal) => {
                    let _ = nix::sys::signal::kill(child, signal);
                }
            }
        }
    }
}

/// Ends this process by `signal`, as the jailed process ended.
fn die_by(signal: Signal) -> ! {
    // SAFETY: resetting a disposition and raising: plain syscalls.
    unsafe {
        libc::signal(signal as i32, libc::SIG_DFL);
    }
    let mut set = SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32)
}

/// The new root (module docs), then `pivot_root` into it.
fn build_root(jail: &JailConfig) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("jail: {what}: {e}");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making mounts private", &e))?;
    let new_root = jail.dir.join(NEW_ROOT);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&new_root)
        .map_err(|e| fail(&format!("creating {}", new_root.display()), &e))?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &new_root,
        Some("tmpfs"),
        quiet,
        Some("size=256k,mode=0755"),
    )
    .map_err(|e| fail("mounting the new root", &e))?;
    expose(&jail.dir, &new_root, Access::Write)?;
    for path in &jail.read_only {
        // A missing image is the VMM's to report, in its own words.
        if path.exists() {
            expose(path, &new_root, Access::Read)?;
        }
    }
    for path in &jail.read_write {
        let device = fs::metadata(path).map_err(|e| fail(&format!("{}", path.display()), &e))?;
        match (device_number(&device), jail.user) {
            // A process that drops to ids of its own could not open the
            // host's node (it is root's, or a group's): it gets a node of
            // its own, as Firecracker's jailer makes one.
            (Some(rdev), Some(owner)) => make_device(path, &new_root, rdev, owner)?,
            _ => expose(path, &new_root, Access::Write)?,
        }
    }
    let proc = new_root.join("proc");
    fs::create_dir_all(&proc).map_err(|e| fail("creating /proc", &e))?;
    mount(Some("proc"), &proc, Some("proc"), quiet, None::<&str>)
        .map_err(|e| fail("mounting /proc", &e))?;
    let old = new_root.join(".old");
    fs::create_dir(&old).map_err(|e| fail("creating the old root's mount point", &e))?;
    nix::unistd::pivot_root(&new_root, &old).map_err(|e| fail("pivot_root", &e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", &e))?;
    umount2("/.old", MntFlags::MNT_DETACH).map_err(|e| fail("leaving the old root", &e))?;
    fs::remove_dir("/.old").map_err(|e| fail("removing the old root's mount point", &e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | quiet,
        None::<&str>,
    )
    .map_err(|e| fail("making the new root read-only", &e))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Bind-mounts `path` at the same path under `new_root`.
fn expose(path: &Path, new_root: &Path, access: Access) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("jail: exposing {}: {e}", path.display());
    let relative = path
        .strip_prefix("/")
        .map_err(|_| fail(&"not an absolute path"))?;
    let target = new_root.join(relative);
    let meta = fs::metadata(path).map_err(|e| fail(&e))?;
    if let Some(parent) = target.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| fail(&e))?;
    }
    if meta.is_dir() {
        fs::create_dir_all(&target).map_err(|e| fail(&e))?;
    } else {
        File::create(&target).map_err(|e| fail(&e))?;
    }
    mount(
        Some(path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail(&e))?;
    // A bind mount keeps the flags of the mount it comes from, and inside
    // a user namespace they may not be cleared: add ours to them.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_char_device() {
        flags |= MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    }
    if access == Access::Read {
        flags |= MsFlags::MS_RDONLY;
    }
    if let Ok(stat) = statvfs(path) {
        let have = stat.flags();
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if have.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(|e| fail(&e))
}

/// The device number of a character device (`/dev/kvm`).
fn device_number(meta: &fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device().then(|| meta.rdev())
}

/// A node for the character device `rdev` at `path` under `new_root`,
/// readable and writable by `owner` only, on a small tmpfs of its own (the
/// new root itself is `nodev`).
fn make_device(path: &Path, new_root: &Path, rdev: u64, owner: (u32, u32)) -> Result<(), String> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let fail = |e: &dyn std::fmt::Display| format!("jail: making {}: {e}", path.display());
    let relative = path
        .strip_prefix("/")
        .map_err(|_| fail(&"not an absolute path"))?;
    let target = new_root.join(relative);
    let dir = target.parent().ok_or_else(|| fail(&"no directory"))?;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| fail(&e))?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("size=16k,mode=0755"),
        )
        .map_err(|e| fail(&e))?;
    }
    mknod(
        &target,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        rdev,
    )
    .map_err(|e| fail(&e))?;
    std::os::unix::fs::chown(&target, Some(owner.0), Some(owner.1)).map_err(|e| fail(&e))
}

/// The unprivileged ids, the parent-death signal (cleared by any change
/// of ids), and the limits.
fn drop_privileges(jail: &JailConfig) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("jail: {what}: {e}");
    if let Some((uid, gid)) = jail.user {
        nix::unistd::setgroups(&[]).map_err(|e| fail("dropping groups", &e))?;
        let gid = nix::unistd::Gid::from_raw(gid);
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail("setting the gid", &e))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail("setting the uid", &e))?;
    }
    // SAFETY: prctl on ourselves with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(fail(
            "parent-death signal",
            &std::io::Error::last_os_error(),
        ));
    }
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(
        Resource::RLIMIT_NOFILE,
        jail.max_open_files,
        jail.max_open_files,
    )
    .map_err(|e| fail("limiting open files", &e))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| fail("no core dumps", &e))?;
    // SAFETY: prctl on ourselves with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("no_new_privs", &std::io::Error::last_os_error()));
    }
    Ok(())
}
