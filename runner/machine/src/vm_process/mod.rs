//! One process per VM, as in Firecracker: the built-in VMM with its
//! devices (kvm backend), or the vhost-user device servers of a QEMU VM,
//! run in a child process of their own (`runner __vm-process`), under
//! seccomp filters. A device-model bug, or a guest that exploits one, can
//! then take down only its own VM, never the runner or other jobs.
//!
//! The parent writes a [`ProcessConfig`] as JSON to the child's stdin and
//! reads status lines from its stdout:
//!
//! - `ready` once the child's sockets exist (QEMU may start, hosts may
//!   connect);
//! - `error <message>` if set-up failed (one line, shown as a boot error);
//! - `exit <reason>` when the VMM ended (guest power-off, triple fault...).
//!
//! The child's stderr is the runner's: its warnings (a guest misusing a
//! device, rate-limited) show up where they did when the devices ran in the
//! runner itself. It dies with the runner (see [`crate::process`]).

pub mod allowlists;
pub mod cache_disks;
pub mod child;
pub mod confinement;
pub mod egress;
mod framed_port;
pub mod jail;
mod kernel_log;
mod policy;
pub mod seccomp;
pub mod switch;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BootError;
use crate::process::{inherit_fds, kill_pid, spawn_guarded, ChildGuard};
pub use cache_disks::CacheRole;
use policy::refuse_weakening_on_a_policed_machine;

/// The hidden subcommand that runs a VM process.
pub const SUBCOMMAND: &str = "__vm-process";
/// Bumped whenever [`ProcessConfig`] or the status lines change, so that a
/// stale `runner` binary refuses instead of misreading.
pub const PROTOCOL: u32 = 6;
/// Turns the jail off (`off`), for debugging and for measuring what it
/// costs; refused on a machine with a policy file.
pub const JAIL_ENV: &str = "RUNNER_JAIL";
/// Open files a VM process may hold: its devices' host connections (at
/// most 256 vsock streams) and its own fds, with room to spare.
const MAX_OPEN_FILES: u64 = 1024;
/// How long set-up (opening images, creating the VM) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a VM process needs, sent as JSON on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub protocol: u32,
    /// The VM's name (logs, and the test hook).
    pub name: String,
    /// What to do with the seccomp filters (`RUNNER_SECCOMP`).
    pub seccomp: seccomp::Mode,
    /// Where the process is confined; `None` with `RUNNER_JAIL=off`.
    pub jail: Option<jail::JailConfig>,
    pub role: Role,
}

/// The jail the VM's process gets: `dir` writable, `read_only` files
/// readable, `read_write` files writable (see [`jail`]); `None` when
/// `RUNNER_JAIL=off`.
pub fn jail_for(
    dir: &Path,
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
) -> Result<Option<jail::JailConfig>, String> {
    match std::env::var(JAIL_ENV).as_deref() {
        Ok("off") => {
            refuse_weakening_on_a_policed_machine(JAIL_ENV)?;
            tracing::warn!("{JAIL_ENV}=off: VM processes run without their jail");
            return Ok(None);
        }
        Ok("on") | Ok("") | Err(_) => {}
        Ok(other) => {
            return Err(format!(
                "{JAIL_ENV}={other} is not valid (expected on or off)"
            ))
        }
    }
    Ok(Some(jail::JailConfig {
        dir: dir.to_path_buf(),
        read_only,
        read_write,
        user: None,
        cgroups: Vec::new(),
        max_open_files: MAX_OPEN_FILES,
    }))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Role {
    /// The built-in VMM and its virtio-mmio devices.
    Vmm(Box<VmmRole>),
    /// vhost-user device servers for QEMU.
    Devices(DevicesRole),
    /// The switch of a job's private segment with its services.
    Switch(switch::SwitchRole),
    /// Between a NIC and passt: the job's egress policy.
    Egress(egress::EgressRole),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmRole {
    pub kernel: PathBuf,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub serial_log: PathBuf,
    pub serial_log_limit: Option<u64>,
    pub disk: DiskRole,
    pub vsock: VsockRole,
    /// A virtio-net NIC on passt's socket; `None`: no NIC at all.
    #[serde(default)]
    pub network: Option<NetRole>,
    /// A virtio-net NIC on the job's private segment with its services.
    #[serde(default)]
    pub segment: Option<SegmentRole>,
    /// Where a snapshot goes when the runner sends SIGUSR1 (see
    /// [`VmProcess::request_snapshot`]); `None`: SIGUSR1 is ignored.
    #[serde(default)]
    pub snapshot: Option<SnapshotRole>,
    /// Restore this snapshot instead of booting `kernel`.
    #[serde(default)]
    pub restore: Option<SnapshotRole>,
    /// Cache volumes, as disks after every other device.
    #[serde(default)]
    pub caches: Vec<CacheRole>,
    /// With snapshots (taking or restoring one): this many empty cache
    /// slots instead of plain cache disks, the caches attached to the
    /// first of them after the restore. 0: plain disks.
    #[serde(default)]
    pub cache_slots: usize,
}

/// A snapshot file and the identity it is (to be) made for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRole {
    pub path: PathBuf,
    pub identity: String,
}

/// The guest's NIC: the inherited socket whose other end its egress
/// process holds. That process enforces the job's policy, so the NIC
/// itself filters nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRole {
    pub fd: RawFd,
}

/// The guest's NIC on a segment: the inherited socket its switch holds
/// the other end of, and the MAC the switch knows it by. The switch
/// enforces the segment's rules, so the NIC itself filters nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRole {
    pub fd: RawFd,
    pub mac: [u8; 6],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesRole {
    pub disk: Option<DiskRole>,
    pub vsock: Option<VsockRole>,
    /// Cache volumes, each on its own vhost-user socket.
    #[serde(default)]
    pub caches: Vec<CacheRole>,
}

/// The root disk: the image read-only, guest writes into an overlay in
/// `overlay_dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRole {
    pub image: PathBuf,
    pub overlay_dir: PathBuf,
    pub serial: String,
    /// The vhost-user socket (device processes only).
    pub socket: Option<PathBuf>,
    /// The inherited memory file whose first word counts the bytes the
    /// guest writes (`write_counter`); `None`: not counted.
    #[serde(default)]
    pub written_counter_fd: Option<RawFd>,
}

/// The vsock device: host programs connect to `uds`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockRole {
    pub uds: PathBuf,
    pub guest_cid: u64,
    /// The vhost-user socket (device processes only).
    pub socket: Option<PathBuf>,
}

/// Gives the VM's directory, and the files it writes, to its own ids.
pub fn give_to(ids: &confinement::VmIds, dir: &Path, files: &[PathBuf]) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid))
            .map_err(|e| format!("giving {} to the VM's ids: {e}", path.display()))
    };
    chown(dir)?;
    for file in files {
        // A device (/dev/kvm) stays as it is: it is opened, never owned.
        let device = std::fs::metadata(file).is_ok_and(|m| m.file_type().is_char_device());
        if !device {
            chown(file)?;
        }
    }
    Ok(())
}

/// A running VM process, seen from the runner. Dropping it kills the
/// process and reaps it; the VM directory is its owner's to remove.
pub struct VmProcess {
    child: ChildGuard,
    status: Option<ChildStdout>,
    /// Set when the runner killed it (stop, Ctrl-C): not a failure.
    killed: Arc<AtomicBool>,
    outcome: Option<Outcome>,
    /// The jailed process's pid, when the jail's supervisor said it: the
    /// kernel records a seccomp kill under it.
    jailed_pid: Option<u32>,
    /// Removed after the process (dropped above) was reaped.
    _cgroup: Option<confinement::VmCgroup>,
}

/// How a VM process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// False for a crash, a seccomp kill or a failed VMM.
    pub clean: bool,
    pub description: String,
}

impl VmProcess {
    /// Starts the VM process for `config` and waits until it is ready. A
    /// jailed one runs as `ids` (the runner's own when `None`), in a
    /// cgroup sized for `memory_mib` and `vcpus`. It inherits the open
    /// descriptors `inherit` (a cache's files: see [`cache_disks`]) and no
    /// others.
    pub fn start(
        config: &ProcessConfig,
        ids: Option<&confinement::VmIds>,
        memory_mib: u64,
        vcpus: u64,
        inherit: &[RawFd],
    ) -> Result<VmProcess, BootError> {
        let exe = crate::programs::runner_exe().map_err(BootError::Setup)?;
        let mut config = config.clone();
        let mut cgroup = None;
        if let Some(jail) = &mut config.jail {
            if let Some(ids) = ids {
                jail.user = Some((ids.uid, ids.gid));
                give_to(ids, &jail.dir, &jail.read_write).map_err(BootError::Setup)?;
            }
            let disk = match &config.role {
                Role::Vmm(role) => Some(role.disk.image.clone()),
                Role::Devices(role) => role.disk.as_ref().map(|d| d.image.clone()),
                Role::Switch(_) | Role::Egress(_) => None,
            };
            let memory = confinement::memory_limit(memory_mib, disk.as_deref());
            cgroup = confinement::VmCgroup::create(memory, vcpus);
            if let Some(cgroup) = &cgroup {
                jail.cgroups = cgroup.dirs().to_vec();
            }
        }
        let json = serde_json::to_vec(&config)
            .map_err(|e| BootError::Setup(format!("encoding the VM process config: {e}")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        inherit_fds(&mut cmd, inherit);
        let mut child = spawn_guarded(&mut cmd, "VM process")
            .map_err(|e| BootError::Setup(format!("starting {}: {e}", exe.display())))?;
        let mut stdin = child.take_stdin();
        let status = child.take_stdout();
        let mut process = VmProcess {
            child,
            status,
            killed: Arc::new(AtomicBool::new(false)),
            outcome: None,
            jailed_pid: None,
            _cgroup: cgroup,
        };
        // Write and close: the child reads its config to EOF. A child that
        // died at once breaks the pipe; its status says why.
        if let Some(mut stdin) = stdin.take() {
            let _ = stdin.write_all(&json);
        }
        let mut line = process.read_status_line(READY_TIMEOUT);
        if let Some(pid) = line.as_deref().and_then(|l| l.strip_prefix("jailed ")) {
            process.jailed_pid = pid.parse().ok();
            line = process.read_status_line(READY_TIMEOUT);
        }
        match line {
            Some(line) if line == "ready" => Ok(process),
            Some(line) if line.starts_with("error ") => {
                Err(BootError::Setup(line["error ".len()..].to_string()))
            }
            Some(other) => Err(BootError::Setup(format!(
                "the VM process ({}) said {other:?} instead of `ready`; is it an older runner \
                 binary? ({} names the binary)",
                exe.display(),
                crate::programs::ENV
            ))),
            None => {
                process.child.kill();
                let why = process
                    .exited()
                    .unwrap_or_else(|| format!("no answer within {READY_TIMEOUT:?}"));
                Err(BootError::Setup(format!(
                    "the VM process did not start: {why}"
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The jailed process's pid (its vCPU threads and devices), when it is
    /// jailed; [`VmProcess::pid`] is then its supervisor's.
    pub fn jailed_pid(&self) -> Option<u32> {
        self.jailed_pid
    }

    /// Asks a VM process started with a snapshot role to snapshot its VM
    /// and end; [`VmProcess::outcome`] then says whether it worked.
    pub fn request_snapshot(&self) {
        // SAFETY: a signal to our own child, which is reaped only by us.
        unsafe { libc::kill(self.child.pid() as libc::pid_t, libc::SIGUSR1) };
    }

    /// A closure that kills the process (for Ctrl-C hooks); what it kills
    /// is reported as stopped by the host, not as a failure.
    pub fn killer(&self) -> impl Fn() + Send + Sync + 'static {
        let pid = self.child.pid();
        let killed = self.killed.clone();
        move || {
            killed.store(true, Ordering::SeqCst);
            kill_pid(pid);
        }
    }

    /// Reads one status line, waiting at most `limit`; None on EOF or
    /// timeout.
    fn read_status_line(&mut self, limit: Duration) -> Option<String> {
        let pipe = self.status.as_mut()?;
        let deadline = Instant::now() + limit;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis() as i32) };
            if ready == 0 {
                return None;
            }
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return None;
            }
            match pipe.read(&mut byte) {
                Ok(0) => return None,
                Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into()),
                Ok(_) if line.len() < 4096 => line.push(byte[0]),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// How the process ended, once it has.
    pub fn outcome(&mut self) -> Option<Outcome> {
        if self.outcome.is_none() {
            let status = self.child.try_wait()?;
            // The child is gone: what is left in the pipe is all there is.
            let mut rest = String::new();
            if let Some(mut pipe) = self.status.take() {
                let _ = pipe.read_to_string(&mut rest);
            }
            let killed = self.killed.load(Ordering::SeqCst);
            let mut outcome = describe(status, &rest, killed);
            if status.signal() == Some(libc::SIGSYS) {
                let pid = self.jailed_pid.unwrap_or(self.child.pid());
                let syscall = kernel_log::seccomp_kill_syscall(pid);
                outcome.description = seccomp_kill_message(syscall);
            }
            self.outcome = Some(outcome);
        }
        self.outcome.clone()
    }

    /// `Some(description)` once the process has ended.
    pub fn exited(&mut self) -> Option<String> {
        self.outcome().map(|o| o.description)
    }

    /// Waits up to `limit` for the process to end by itself; kills it
    /// otherwise. Returns whether it ended by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let by_itself = self.child.wait_timeout(limit).is_some();
        if !by_itself {
            self.kill();
        }
        by_itself
    }

    /// Kills the process (a no-op once it ended) and reaps it.
    pub fn kill(&mut self) {
        if self.child.try_wait().is_none() {
            self.killed.store(true, Ordering::SeqCst);
        }
        self.child.kill();
        let _ = self.outcome();
    }
}

/// A VM process that runs no VM: a segment's switch or a NIC's egress
/// process. It reads guest bytes, so it is jailed like a VM's, in a
/// directory and under ids of its own.
pub struct HelperProcess {
    pub process: VmProcess,
    /// Held while the process runs: nobody else gets its ids.
    _ids: Option<confinement::VmIds>,
    _dir: tempfile::TempDir,
}

impl HelperProcess {
    /// Starts `role` as `name`, inheriting `inherit`, in at most
    /// `memory_mib` of memory.
    pub fn start(
        name: String,
        role: Role,
        memory_mib: u64,
        inherit: &[RawFd],
    ) -> Result<HelperProcess, BootError> {
        let dir = crate::vm_dir::create()
            .map_err(|e| BootError::Setup(format!("creating the dir of the {name}: {e}")))?;
        let jail = jail_for(dir.path(), Vec::new(), Vec::new()).map_err(BootError::Setup)?;
        let ids = match jail {
            Some(_) => confinement::VmIds::allocate().map_err(BootError::Setup)?,
            None => None,
        };
        let config = ProcessConfig {
            protocol: PROTOCOL,
            name,
            seccomp: seccomp::mode_from_env().map_err(BootError::Setup)?,
            jail,
            role,
        };
        let process = VmProcess::start(&config, ids.as_ref(), memory_mib, 1, inherit)?;
        Ok(HelperProcess {
            process,
            _ids: ids,
            _dir: dir,
        })
    }
}

/// The pids of this process's children that are VM processes, for tests
/// and benchmarks that look at them.
pub fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so look
            // after its closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(me.as_str())
                && cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == SUBCOMMAND.as_bytes())
        })
        .collect()
}

/// One line for how a VM process ended: its own `exit` or `error` line if
/// it wrote one, else what its exit status says.
fn describe(status: ExitStatus, lines: &str, killed: bool) -> Outcome {
    let said = |prefix: &str| {
        lines
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    let failed = |description: String| Outcome {
        clean: false,
        description,
    };
    match status.signal() {
        Some(libc::SIGSYS) => failed(seccomp_kill_message(None)),
        Some(libc::SIGKILL) if killed => Outcome {
            clean: true,
            description: "stopped by the host".into(),
        },
        Some(signal) => failed(format!("the VM process was killed by signal {signal}")),
        None => match (said("exit "), said("error ")) {
            (Some(reason), _) if status.success() => Outcome {
                clean: true,
                description: reason,
            },
            (_, Some(error)) => failed(error),
            _ => failed(format!(
                "the VM process ended with {status} (its stderr, above, says why)"
            )),
        },
    }
}

/// What a seccomp kill is reported as; `syscall` is its number, if the
/// kernel log told.
fn seccomp_kill_message(syscall: Option<i64>) -> String {
    let which = match syscall {
        Some(nr) => format!("disallowed syscall {nr}"),
        None => "a disallowed syscall; the kernel log's `type=1326` audit line names it".into(),
    };
    format!(
        "the VM process was killed by seccomp ({which}; {}=off or =log to debug)",
        seccomp::ENV
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(raw: i32) -> ExitStatus {
        ExitStatus::from_raw(raw)
    }

    #[test]
    fn exits_are_described_in_one_line() {
        let sigsys = describe(status_of(libc::SIGSYS), "ready\n", false);
        assert!(!sigsys.clean);
        assert!(
            sigsys.description.contains("killed by seccomp")
                && sigsys.description.contains("RUNNER_SECCOMP=off"),
            "{sigsys:?}"
        );
        let stopped = describe(status_of(libc::SIGKILL), "ready\n", true);
        assert_eq!(stopped.description, "stopped by the host");
        assert!(stopped.clean);
        let killed = describe(status_of(libc::SIGKILL), "ready\n", false);
        assert_eq!(killed.description, "the VM process was killed by signal 9");
        let powered_off = describe(status_of(0), "ready\nexit guest powered off\n", false);
        assert_eq!(powered_off.description, "guest powered off");
        assert!(powered_off.clean);
        let failed = describe(status_of(1 << 8), "ready\nerror the VMM failed: x\n", false);
        assert_eq!(failed.description, "the VMM failed: x");
        let silent = describe(status_of(3 << 8), "", false);
        assert!(silent.description.contains("exit status: 3"), "{silent:?}");
        let numbered = seccomp_kill_message(Some(140));
        assert!(numbered.contains("(disallowed syscall 140;"), "{numbered}");
        for o in [sigsys, killed, failed, silent] {
            assert!(!o.description.contains('\n'));
        }
    }
}
