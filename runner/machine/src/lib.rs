//! runner-machine: everything that owns a VM. It boots, restores and jails
//! disposable guests and finds or builds what they boot from; it does not
//! speak the guest agent's protocol, and it knows nothing of pipelines,
//! jobs or reports (the `runner` crate above does).
//!
//! The face is small: a [`Backend`] (chosen in [`select`]) starts a [`Vm`]
//! from a [`VmSpec`]; [`images`] resolves the kernel and rootfs the spec
//! names. Inside:
//!
//! - backends: [`kvm`] (the built-in VMM, warm start from [`snapshots`])
//!   and [`qemu`]; both expose the guest's vsock as [`hybrid_vsock`];
//! - [`vm_process`]: the process each VM runs in, its jail and seccomp;
//! - [`network`]: a VM's NIC, as the operator granted it;
//! - [`trusted_cache`]: the cache directory images and snapshots live in;
//! - [`caches`]: the jobs' cache volumes (`cache:`), versioned per key;
//!   [`lru`] evicts from it, the image cache and the snapshots alike;
//! - [`process`] and [`interrupt`]: guarded children and Ctrl-C.

pub mod caches;
pub mod cpu_time;
mod digest;
mod error;
pub mod file_lock;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hybrid_vsock;
pub mod images;
pub mod interrupt;
pub mod kvm;
pub mod lru;
pub mod network;
pub mod process;
pub mod programs;
pub mod qemu;
pub mod select;
pub mod serial_pump;
pub mod snapshots;
pub mod trusted_cache;
mod vm;
pub mod vm_dir;
pub mod vm_process;
pub mod write_counter;

pub use error::BootError;
pub use vm::*;

/// The operator's machine policy file: `runner`'s grants read it, and while
/// it exists the VM processes refuse the knobs that would weaken them.
pub const MACHINE_POLICY: &str = "/etc/runner/policy.yml";
