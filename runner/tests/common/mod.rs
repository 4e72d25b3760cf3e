//! Shared by the kvm backend tests: the guest images and what the VMM
//! leaves running in this process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use runner::backend::kvm::VMM_THREAD_NAME;
use runner::backend::VmSpec;
pub use runner_vmm::testing::{image_from_env, require_kvm};

/// The project kernel and rootfs from RUNNER_KERNEL / RUNNER_ROOTFS.
pub fn images() -> (PathBuf, PathBuf) {
    (
        image_from_env("RUNNER_KERNEL", Some("vmlinux")),
        image_from_env("RUNNER_ROOTFS", None),
    )
}

pub fn spec(name: &str, boot_timeout: Duration) -> VmSpec {
    let (kernel, rootfs) = images();
    VmSpec {
        name: name.into(),
        kernel,
        rootfs,
        vcpus: 1,
        memory_mib: 256,
        boot_timeout,
        serial_log_limit: Some(runner::backend::DEFAULT_SERIAL_LOG_LIMIT),
    }
}

/// Names of this process's threads that belong to a VMM: the VMM thread
/// itself and its vCPU threads.
pub fn vmm_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .filter(|comm| comm == VMM_THREAD_NAME || comm.starts_with("vcpu"))
        .collect()
}
