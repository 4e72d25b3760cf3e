//! Every way building or running a microVM can fail, each with enough
//! context to act on.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {source}. {hint}")]
    KvmUnavailable {
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("the host KVM lacks {0}, which the VMM requires")]
    KvmMissingCap(&'static str),
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("invalid VM config: {0}")]
    Config(String),
    #[error("{requested} vCPUs requested but this host's KVM allows at most {max}")]
    TooManyVcpus { requested: usize, max: usize },
    #[error("cannot read kernel image {}: {source}", path.display())]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel image {} is not a usable x86_64 ELF vmlinux or bzImage: {detail}", path.display())]
    KernelFormat { path: PathBuf, detail: String },
    #[error(
        "guest memory ({mem_mib} MiB) is too small for kernel {}: it needs up to {needed:#x}",
        path.display()
    )]
    KernelTooBig {
        path: PathBuf,
        mem_mib: u32,
        needed: u64,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("writing boot data into guest memory: {0}")]
    BootSetup(String),
    #[error("serial log {}: {source}", path.display())]
    SerialLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up the event loop thread: {0}")]
    ThreadHook(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("vCPU {index} failed: {detail}")]
    Vcpu { index: usize, detail: String },
    /// A snapshot file that must not be loaded: corrupt, truncated, of
    /// another format version, or made for another kernel, image or host.
    #[error("snapshot {}: {detail}", path.display())]
    SnapshotRefused { path: PathBuf, detail: String },
    /// Taking a snapshot failed (a device that cannot be saved now, I/O).
    #[error("taking a snapshot: {0}")]
    Snapshot(String),
}

impl Error {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}
