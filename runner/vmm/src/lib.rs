//! The built-in KVM microVM monitor.
//!
//! `Vmm::new(VmmConfig)` validates the config and builds a VM (memfd guest
//! RAM, kernel loaded via linux-loader, boot structures, in-kernel irqchip
//! and PIT, 8250 serial and i8042 on the PIO bus, configured vCPUs).
//! `Vmm::run()` starts one thread per vCPU and waits, in the calling
//! thread, for whatever ends the VM; it returns an [`ExitReason`] with boot
//! timings. [`probe::probe_host`] tells `runner doctor` what this host's
//! KVM can do.

pub mod boot;
pub mod config;
pub mod devices;
pub mod error;
/// Fuzz entry points; built for `fuzz/` and for this crate's tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod kvm_host;
pub mod layout;
pub mod memory;
pub mod probe;
pub mod snapshot;
/// Helpers for tests and benchmarks; built for this crate's tests and with
/// the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vcpu;
pub mod virtio_mmio;
pub mod vmm;
pub mod x86;

pub use boot::params::E820Entry;
pub use config::{KernelConfig, MemoryConfig, SerialConfig, SnapshotConfig, VcpuConfig, VmmConfig};
pub use error::{Error, Result};
pub use vmm::{
    BootProtocol, BootTimings, ExitReason, ThreadHook, ThreadHooks, VmExit, Vmm, VmmHandle,
};
