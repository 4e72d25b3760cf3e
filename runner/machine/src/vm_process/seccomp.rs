//! Seccomp filters for the threads of a VM process, built with
//! `seccompiler` (the crate Firecracker uses) from the allowlists in
//! [`super::allowlists`].
//!
//! Each filter allows exactly its list and kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`) on anything else, so a device model that
//! is tricked into an unexpected syscall ends its own VM, and the runner
//! reports it. Filters are installed after set-up (opening images, binding
//! sockets, creating the VM), on the thread they belong to, and are
//! inherited by the threads it starts later. `RUNNER_SECCOMP=off` turns
//! them off for debugging.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde::{Deserialize, Serialize};

use super::allowlists::{self, Syscall};

/// The environment variable that sets the [`Mode`].
pub const ENV: &str = "RUNNER_SECCOMP";

/// What VM processes do with their filters (`RUNNER_SECCOMP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `on` (the default): a disallowed syscall kills the VM process.
    On,
    /// `off`: no filters, for debugging.
    Off,
    /// `log`: disallowed syscalls are allowed but logged by the kernel
    /// (`type=1326` audit lines, `dmesg`): how the allowlists are checked
    /// against a new workload.
    Log,
}

/// `RUNNER_SECCOMP`, or one line saying what is wrong with it.
pub fn mode_from_env() -> Result<Mode, String> {
    let mode = parse_mode(std::env::var(ENV).ok().as_deref())?;
    if mode != Mode::On {
        super::policy::refuse_weakening_on_a_policed_machine(ENV)?;
    }
    Ok(mode)
}

fn parse_mode(value: Option<&str>) -> Result<Mode, String> {
    match value {
        None | Some("") | Some("on") => Ok(Mode::On),
        Some("off") => Ok(Mode::Off),
        Some("log") => Ok(Mode::Log),
        Some(other) => Err(format!(
            "{ENV}={other} is not valid (expected on, off or log)"
        )),
    }
}

/// The kinds of thread in a VM process, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU of the built-in VMM.
    Vcpu,
    /// The built-in VMM's event loop, which runs the virtio devices.
    EventLoop,
    /// The vhost-user servers' threads of a QEMU VM's device process.
    VhostUser,
    /// The main thread of a device process once its servers run (on top of
    /// [`ThreadKind::VhostUser`], which every thread there has).
    DeviceMain,
    /// The one thread of a segment's switch.
    Switch,
    /// The one thread of a NIC's egress process: the switch's calls (poll,
    /// read and write its sockets, the resolver's UDP one too).
    Egress,
}

impl ThreadKind {
    /// Every kind, so the tests cover each filter.
    #[cfg(test)]
    const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::VhostUser,
        ThreadKind::DeviceMain,
        ThreadKind::Switch,
        ThreadKind::Egress,
    ];

    /// The syscalls this kind of thread may make.
    pub fn allowlist(self) -> Vec<Syscall> {
        let own: &[&[Syscall]] = match self {
            ThreadKind::Vcpu => &[allowlists::VCPU],
            ThreadKind::EventLoop => &[allowlists::DEVICES, allowlists::EVENT_LOOP],
            ThreadKind::VhostUser => &[
                allowlists::DEVICES,
                allowlists::VHOST_USER,
                allowlists::THREAD_START,
                allowlists::NARROWING,
            ],
            ThreadKind::DeviceMain => &[allowlists::DEVICE_MAIN],
            ThreadKind::Switch | ThreadKind::Egress => &[allowlists::SWITCH],
        };
        let mut list: Vec<Syscall> = [allowlists::COMMON]
            .iter()
            .chain(own)
            .flat_map(|l| l.iter().copied())
            .collect();
        list.sort_by_key(|&(_, nr)| nr);
        list.dedup_by_key(|&mut (_, nr)| nr);
        list
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
    #[error("installing the {kind:?} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// `ioctl` requests of the KVM type (`KVMIO`, 0xAE): bits 8..16 of the
/// request number.
const IOCTL_TYPE_MASK: u64 = 0xff00;
const KVMIO: u64 = 0xae00;

fn condition(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // The arguments are constants of ours, known to be in range.
    SeccompCondition::new(arg, len, op, value).expect("a valid seccomp condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a non-empty seccomp rule")
}

/// The flags `clone` may not have: a new process's namespaces.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Argument filters, where they are clearly safe: vCPU threads may only
/// make KVM ioctls; the event loop KVM ioctls and FIONBIO/FIONREAD; the
/// vhost-user threads FIONBIO/FIONREAD; `tgkill` only reaches threads of
/// this process (the vCPU kick); `prctl`
/// only names a thread or sets no-new-privs; `seccomp` only adds a filter
/// to the calling thread (a narrower one, for the device main thread);
/// `socket` makes only Unix sockets (the vsock device's host side: the VM
/// process has no network of its own anyway); `clone` only starts threads
/// of this process, without new namespaces (`clone3`, whose flags sit in
/// memory a filter cannot read, fails with ENOSYS instead, see
/// [`compile_clone3_refusal`], and the C library falls back to `clone`).
fn argument_rules(kind: ThreadKind, nr: libc::c_long) -> Vec<SeccompRule> {
    let kvm_ioctl = || {
        rule(vec![condition(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(IOCTL_TYPE_MASK),
            KVMIO,
        )])
    };
    let eq =
        |index: u8, value: u64| condition(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value);
    let request = |value: libc::c_ulong| rule(vec![eq(1, value)]);
    match (kind, nr) {
        (ThreadKind::Vcpu, libc::SYS_ioctl) => vec![kvm_ioctl()],
        (ThreadKind::EventLoop, libc::SYS_ioctl) => {
            vec![kvm_ioctl(), request(libc::FIONBIO), request(libc::FIONREAD)]
        }
        (ThreadKind::VhostUser, libc::SYS_ioctl) => {
            vec![request(libc::FIONBIO), request(libc::FIONREAD)]
        }
        (_, libc::SYS_tgkill) => vec![rule(vec![eq(0, u64::from(std::process::id()))])],
        (_, libc::SYS_prctl) => vec![
            rule(vec![eq(0, libc::PR_SET_NAME as u64)]),
            rule(vec![eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)]),
        ],
        (_, libc::SYS_seccomp) => vec![rule(vec![
            eq(0, u64::from(libc::SECCOMP_SET_MODE_FILTER)),
            eq(1, 0),
        ])],
        (_, libc::SYS_socket) => vec![rule(vec![eq(0, libc::AF_UNIX as u64)])],
        (_, libc::SYS_clone) => vec![rule(vec![condition(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64 | CLONE_NAMESPACES),
            libc::CLONE_THREAD as u64,
        )])],
        _ => Vec::new(),
    }
}

/// A filter that makes `clone3` fail with ENOSYS and lets everything else
/// through, stacked on a thread kind's own (which allows `clone3`: of two
/// filters the stricter verdict wins, and an error beats "allow").
pub fn compile_clone3_refusal() -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        kind: ThreadKind::VhostUser,
        source,
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| build(seccompiler::Error::Backend(e)))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| build(seccompiler::Error::Backend(e)))?;
    filter
        .try_into()
        .map_err(|e| build(seccompiler::Error::Backend(e)))
}

/// Compiles the filter of `kind` to BPF, killing the process on anything
/// else.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    compile_with(kind, Mode::On)
}

/// Compiles the filter of `kind`; in [`Mode::Log`] what it refuses is
/// only logged.
pub fn compile_with(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let mismatch = match mode {
        Mode::Log => SeccompAction::Log,
        Mode::On | Mode::Off => SeccompAction::KillProcess,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = kind
        .allowlist()
        .into_iter()
        .map(|(_, nr)| (nr, argument_rules(kind, nr)))
        .collect();
    let build = |source| SeccompError::Build { kind, source };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| build(seccompiler::Error::Backend(e)))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| build(seccompiler::Error::Backend(e)))?;
    filter
        .try_into()
        .map_err(|e| build(seccompiler::Error::Backend(e)))
}

/// Installs `program` (the filter of `kind`) on the calling thread.
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
}

/// Installs `program` on every thread of the process (TSYNC).
pub fn apply_all_threads(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(program)
        .map_err(|source| SeccompError::Install { kind, source })
}

/// The filters of one VM process, compiled before any is installed.
pub struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl Filters {
    pub fn compile(kinds: &[ThreadKind], mode: Mode) -> Result<Filters, SeccompError> {
        let programs = kinds
            .iter()
            .map(|&kind| Ok((kind, compile_with(kind, mode)?)))
            .collect::<Result<_, SeccompError>>()?;
        Ok(Filters { programs })
    }

    pub fn get(&self, kind: ThreadKind) -> &BpfProgram {
        self.programs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p)
            .expect("the filter was compiled")
    }
}

/// The syscall the test hook makes: in no allowlist, harmless unfiltered.
pub const TEST_FORBIDDEN_SYSCALL: libc::c_long = libc::SYS_getpriority;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child with `kind`'s filter installed;
    /// returns how the child ended.
    fn in_filtered_child(kind: ThreadKind, body: impl FnOnce() -> i32) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let program = compile(kind).expect("the filter compiles");
        // SAFETY: the child only installs the filter, makes raw syscalls
        // and leaves with _exit: nothing that needs other threads' locks.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match seccompiler::apply_filter(&program) {
                Ok(()) => body(),
                Err(_) => 99,
            };
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        std::process::ExitStatus::from_raw(status)
    }

    #[test]
    fn every_filter_compiles_to_bpf() {
        for kind in ThreadKind::ALL {
            let program = compile(kind).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn a_forbidden_syscall_kills_the_process_under_every_filter() {
        use std::os::unix::process::ExitStatusExt;
        for kind in ThreadKind::ALL {
            assert!(
                !kind
                    .allowlist()
                    .iter()
                    .any(|&(_, nr)| nr == TEST_FORBIDDEN_SYSCALL),
                "{kind:?}"
            );
            // An allowed syscall goes through...
            let fine = in_filtered_child(kind, || {
                // SAFETY: getpid-free raw write of nothing to stderr.
                unsafe { libc::syscall(libc::SYS_write, 2, std::ptr::null::<u8>(), 0) };
                7
            });
            assert_eq!(fine.code(), Some(7), "{kind:?}: {fine:?}");
            // ...a forbidden one kills the process with SIGSYS.
            let killed = in_filtered_child(kind, || {
                // SAFETY: a harmless syscall the filter refuses.
                unsafe { libc::syscall(TEST_FORBIDDEN_SYSCALL, libc::PRIO_PROCESS, 0) };
                0
            });
            assert_eq!(killed.signal(), Some(libc::SIGSYS), "{kind:?}: {killed:?}");
        }
    }

    #[test]
    fn only_unix_sockets_and_plain_threads_may_be_made() {
        use std::os::unix::process::ExitStatusExt;
        let unix = in_filtered_child(ThreadKind::VhostUser, || {
            // SAFETY: a raw socket call; the fd is left to _exit.
            let fd =
                unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                7
            } else {
                1
            }
        });
        assert_eq!(unix.code(), Some(7), "{unix:?}");
        let inet = in_filtered_child(ThreadKind::EventLoop, || {
            // SAFETY: as above; refused.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            0
        });
        assert_eq!(inet.signal(), Some(libc::SIGSYS), "{inet:?}");
        // A new process (fork's flags: no CLONE_THREAD).
        let fork = in_filtered_child(ThreadKind::VhostUser, || {
            // SAFETY: raw clone with fork's flags; refused before it runs.
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            0
        });
        assert_eq!(fork.signal(), Some(libc::SIGSYS), "{fork:?}");
        // clone3 says ENOSYS under the stacked refusal.
        let refusal = compile_clone3_refusal().unwrap();
        let clone3 = in_filtered_child(ThreadKind::VhostUser, || {
            if seccompiler::apply_filter(&refusal).is_err() {
                return 98;
            }
            // SAFETY: clone3 with no arguments; refused with ENOSYS.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if r == -1 && errno == Some(libc::ENOSYS) {
                7
            } else {
                1
            }
        });
        assert_eq!(clone3.code(), Some(7), "{clone3:?}");
    }

    #[test]
    fn vcpu_threads_may_only_make_kvm_ioctls() {
        use std::os::unix::process::ExitStatusExt;
        let killed = in_filtered_child(ThreadKind::Vcpu, || {
            let mut on: libc::c_int = 0;
            // SAFETY: FIONBIO on stderr with a valid pointer; refused anyway.
            unsafe { libc::ioctl(2, libc::FIONBIO, &mut on) };
            0
        });
        assert_eq!(killed.signal(), Some(libc::SIGSYS), "{killed:?}");
    }

    #[test]
    fn the_switch_is_on_unless_turned_off() {
        assert_eq!(parse_mode(None), Ok(Mode::On));
        assert_eq!(parse_mode(Some("on")), Ok(Mode::On));
        assert_eq!(parse_mode(Some("off")), Ok(Mode::Off));
        assert_eq!(parse_mode(Some("log")), Ok(Mode::Log));
        let err = parse_mode(Some("maybe")).unwrap_err();
        assert!(
            err.contains("RUNNER_SECCOMP=maybe") && err.contains("on, off or log"),
            "{err}"
        );
    }
}
