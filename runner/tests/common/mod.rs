//! Shared by the kvm backend tests: the guest images and the VM processes
//! this test process has running.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use runner_machine::VmSpec;
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
        serial_log_limit: Some(runner_machine::DEFAULT_SERIAL_LOG_LIMIT),
        network: Default::default(),
        segment: None,
        prepare: None,
        caches: Vec::new(),
    }
}

/// The pids of this process's children that are VM processes.
pub fn vm_processes() -> Vec<u32> {
    runner_machine::vm_process::children()
}
