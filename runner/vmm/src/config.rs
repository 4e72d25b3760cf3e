//! What a microVM looks like, as small plain structs (in the style of
//! rust-vmm's vmm-reference). `Vmm::new` validates all of it before any
//! guest code runs.

use std::path::PathBuf;
use std::time::Duration;

/// The whole microVM.
#[derive(Clone, Debug)]
pub struct VmmConfig {
    pub kernel: KernelConfig,
    pub memory: MemoryConfig,
    pub vcpus: VcpuConfig,
    pub serial: SerialConfig,
    /// Stop the VM (exit reason `Timeout`) after this long. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Where [`crate::VmmHandle::snapshot`] writes; `None`: it cannot.
    pub snapshot: Option<SnapshotConfig>,
}

/// A snapshot file and the identity it is made for: a string the caller
/// builds from whatever the snapshot must match (kernel, rootfs, agent,
/// vCPUs, memory, the host's CPU and KVM). A restore refuses a file made
/// for another identity. See `crate::snapshot::file`.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    pub path: PathBuf,
    pub identity: String,
}

/// The guest kernel: an ELF `vmlinux` (PVH entry when it has the Xen
/// PHYS32_ENTRY note, 64-bit Linux boot protocol otherwise) or a `bzImage`.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    pub path: PathBuf,
    /// Passed verbatim. The VMM appends `virtio_mmio.device=` entries for
    /// its virtio devices after it.
    pub cmdline: String,
}

/// Guest RAM.
#[derive(Clone, Copy, Debug)]
pub struct MemoryConfig {
    pub size_mib: u32,
}

/// Virtual CPUs.
#[derive(Clone, Copy, Debug)]
pub struct VcpuConfig {
    pub num: u8,
}

/// The 8250 UART on COM1 (0x3f8, IRQ 4): the guest console.
#[derive(Clone, Debug, Default)]
pub struct SerialConfig {
    /// Every byte the guest writes is appended here (created/truncated).
    pub log_path: Option<PathBuf>,
    /// Most bytes the log may take; past it, its head and a rolling tail are
    /// kept (see `capped_log::CappedLog`). `None`: no limit.
    pub log_limit: Option<u64>,
    /// Also copy guest output to the host's stdout.
    pub console: bool,
}

impl VmmConfig {
    /// A config with one vCPU, 256 MiB, no serial log and no timeout.
    pub fn new(kernel_path: impl Into<PathBuf>, cmdline: impl Into<String>) -> Self {
        VmmConfig {
            kernel: KernelConfig {
                path: kernel_path.into(),
                cmdline: cmdline.into(),
            },
            memory: MemoryConfig { size_mib: 256 },
            vcpus: VcpuConfig { num: 1 },
            serial: SerialConfig::default(),
            timeout: None,
            snapshot: None,
        }
    }
}
