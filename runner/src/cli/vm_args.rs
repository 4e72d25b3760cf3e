//! The VM a command boots: its images, size and backend, as flags.

use std::time::Duration;

use clap::{Args, ValueEnum};
use runner_machine::images::{ImageKind, Images};
use runner_machine::kvm::KvmBackend;
use runner_machine::select::{auto_selection, default_backend, qemu_backend, AutoPick};
use runner_machine::snapshots::SnapshotStore;
use runner_machine::{Backend, VmSpec};

use crate::pipeline::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The best backend this host runs well (`runner doctor` explains it).
    Auto,
    /// QEMU: with KVM acceleration where KVM runs guest ring 0 natively,
    /// with software emulation (TCG) elsewhere.
    Qemu,
    /// The built-in KVM VMM; needs KVM with hardware virtualization.
    Kvm,
}

impl BackendChoice {
    /// The backend; `cold` turns the kvm backend's warm start off.
    pub fn backend(self, cold: bool) -> anyhow::Result<Box<dyn Backend>> {
        let kvm = || {
            let store = (!cold).then(SnapshotStore::open);
            let probe = std::sync::Arc::new(crate::session::SessionProbe);
            Box::new(KvmBackend::with_snapshots(store.flatten(), probe)) as Box<dyn Backend>
        };
        match self {
            BackendChoice::Auto => match auto_selection().pick {
                AutoPick::Kvm => Ok(kvm()),
                AutoPick::QemuTcg => Ok(default_backend()?),
            },
            BackendChoice::Qemu => Ok(qemu_backend()?),
            BackendChoice::Kvm => Ok(kvm()),
        }
    }
}

/// `--cold`, for the commands that boot VMs.
#[derive(Args, Clone, Debug)]
pub struct ColdArg {
    /// Boot every VM from its kernel. Without it the kvm backend restores
    /// jobs from a snapshot of a booted guest, made on first use and cached
    /// in ~/.cache/runner/snapshots (QEMU always boots).
    #[arg(long, env = "RUNNER_COLD", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub cold: bool,
}

/// The VM every command boots.
#[derive(Args, Clone, Debug)]
pub struct VmArgs {
    /// Kernel: a path, or `default` (built by kernels/build.sh on first use).
    #[arg(long, default_value = "default", env = "RUNNER_KERNEL")]
    pub kernel: String,
    /// Root file system: a path, or `minimal` / `debian` (built on first use).
    #[arg(long, default_value = "minimal", env = "RUNNER_ROOTFS")]
    pub rootfs: String,
    #[arg(long, value_enum, default_value = "auto", env = "RUNNER_BACKEND")]
    pub backend: BackendChoice,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// How long the guest may take to become ready (e.g. `60s`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub boot_timeout: Duration,
    #[command(flatten)]
    pub cold: ColdArg,
}

impl VmArgs {
    pub fn spec(&self, name: &str) -> anyhow::Result<VmSpec> {
        let images = Images::from_env();
        let cwd = std::env::current_dir()?;
        let kernel = crate::pipeline::parse_image_ref(ImageKind::Kernel, &self.kernel, &cwd)
            .map_err(anyhow::Error::msg)?;
        let rootfs = crate::pipeline::parse_image_ref(ImageKind::Rootfs, &self.rootfs, &cwd)
            .map_err(anyhow::Error::msg)?;
        let kernel = images.kernel(&kernel)?;
        let rootfs = images.rootfs(&rootfs)?;
        Ok(VmSpec {
            name: name.to_string(),
            kernel,
            rootfs,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            boot_timeout: self.boot_timeout,
            serial_log_limit: Some(runner_machine::DEFAULT_SERIAL_LOG_LIMIT),
            network: Default::default(),
            segment: None,
            prepare: None,
            caches: Vec::new(),
        })
    }

    pub fn backend(&self) -> anyhow::Result<Box<dyn Backend>> {
        self.backend.backend(self.cold.cold)
    }
}
