//! What each thread of a VM process may call: one allowlist per thread kind.
//!
//! Derived from `strace -ff` of real runs with the filters off
//! (`RUNNER_EXE` pointing at a wrapper that runs `strace -ff -o DIR runner
//! "$@"`, one file per thread, named by its `prctl(PR_SET_NAME)`; for the
//! main thread only what follows its `ready` line counts): a QEMU-backend
//! pipeline that boots the guest to its agent, reads the disk, streams
//! output, copies files in and artifacts out, and forwards stdin; and a
//! kvm-backend run as far as this PVM host gets (early boot), widened for
//! what a full Linux boot under the built-in VMM reaches (each list says
//! what was seen and what was added), since that path is only proven in
//! the nested tier. `RUNNER_SECCOMP=log` checks a list against a new
//! workload: what it would refuse shows up in `dmesg` as `type=1326`
//! lines. Every list also has [`COMMON`], what Rust's runtime needs on any
//! thread (memory allocation, futexes, thread exit, a log line).

/// A syscall in an allowlist: its `SYS_` name (for messages and tests) and
/// its number.
pub type Syscall = (&'static str, libc::c_long);

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

/// Every thread: allocation, futexes, time, leaving, a log line.
pub const COMMON: &[Syscall] = syscalls![
    SYS_brk,
    SYS_clock_gettime,
    SYS_close,
    SYS_exit,
    SYS_exit_group,
    SYS_futex,
    SYS_getrandom,
    SYS_madvise,
    SYS_mmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_munmap,
    SYS_rseq,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sched_yield,
    SYS_sigaltstack,
    SYS_write,
    SYS_writev,
];

/// What starting a thread takes (std's `thread::Builder::spawn`).
pub const THREAD_START: &[Syscall] = syscalls![
    SYS_clone,
    SYS_clone3,
    SYS_gettid,
    SYS_prctl,
    SYS_sched_getaffinity,
    SYS_set_robust_list,
];

/// Adding a narrower filter to the calling thread (argument-filtered).
pub const NARROWING: &[Syscall] = syscalls![SYS_prctl, SYS_seccomp];

/// A vCPU thread. Seen in the trace (early boot): KVM_RUN, KVM_GET_MP_STATE
/// and KVM_GET_REGS (ioctl is argument-filtered to KVM's ioctl type, see
/// `seccomp.rs`), the serial console log (pwrite64), returning from the
/// kick signal's handler. Not seen here but reachable in a full boot: the
/// capped console log wrapping (pread64, ftruncate), and a guest's device
/// reset written to a virtio-mmio register, which closes the vsock
/// device's host connections (epoll_ctl, timerfd_settime). Interrupts go
/// out through eventfd writes (write).
pub const VCPU: &[Syscall] = syscalls![
    SYS_epoll_ctl,
    SYS_fcntl,
    SYS_ftruncate,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_timerfd_settime,
];

/// The device models (`runner-devices`), on whichever thread serves them.
/// Seen in the traces: epoll (epoll_wait, epoll_ctl), eventfd reads of
/// queue notifications (read), disk reads (pread64), the vsock muxer's host
/// sockets (accept4, recvfrom, sendto, recvmsg, sendmsg, shutdown, FIONBIO,
/// fcntl) and timer (timerfd_settime), removing the hybrid socket when the
/// device is reset or dropped (unlink). Not seen but reachable: overlay
/// writes and flushes (pwrite64, fdatasync, fsync), guest-initiated vsock
/// connections (socket, connect), the timer's read-back, `poll` and
/// `epoll_pwait` (which libc may use for the same waits).
pub const DEVICES: &[Syscall] = syscalls![
    SYS_accept4,
    SYS_connect,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_wait,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fsync,
    SYS_ioctl,
    SYS_poll,
    SYS_pread64,
    SYS_pwrite64,
    SYS_read,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_shutdown,
    SYS_socket,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_unlink,
];

/// The built-in VMM's event loop, which runs the devices ([`DEVICES`]) and
/// kicks the vCPUs (getpid, tgkill filtered to this process). Seen in the
/// trace, besides: joining the vCPU threads and tearing down (futex,
/// munmap: [`COMMON`]).
pub const EVENT_LOOP: &[Syscall] = syscalls![SYS_getpid, SYS_tgkill];

/// The vhost-user servers' threads (the server thread, vhost-user-backend's
/// request handler and vring worker) run the devices ([`DEVICES`]); the
/// vhost-user socket with its passed fds (guest memory memfd, kick and call
/// eventfds) takes recvmsg, sendmsg and fcntl, all in that list. Besides:
/// the device process's main thread sleeps (its filter stacks on this one).
pub const VHOST_USER: &[Syscall] = syscalls![SYS_clock_nanosleep, SYS_nanosleep];

/// The main thread of a device process, once its servers run: it reports
/// readiness and sleeps until they end.
pub const DEVICE_MAIN: &[Syscall] = syscalls![SYS_clock_nanosleep, SYS_nanosleep,];

/// A segment's switch (`switch.rs`), once its filters are on: it waits in
/// `poll` (or `ppoll`, which libc may use for it), reads and writes its
/// ports' sockets (read, write, recvfrom, sendto), shuts down a port whose
/// member broke the framing, and says its status lines (write). Seen in
/// the e2e test: fcntl, as its sockets are closed at the end.
pub const SWITCH: &[Syscall] = syscalls![
    SYS_fcntl,
    SYS_poll,
    SYS_ppoll,
    SYS_read,
    SYS_recvfrom,
    SYS_sendto,
    SYS_shutdown,
];
