//! Shared by the kvm backend tests: the guest images and what the VMM
//! leaves running in this process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use runner::backend::kvm::VMM_THREAD_NAME;
use runner::backend::VmSpec;

/// The project kernel and rootfs from RUNNER_KERNEL / RUNNER_ROOTFS.
pub fn images() -> (PathBuf, PathBuf) {
    let get = |var: &str| {
        let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "{var} is not set: these tests boot the project's guest images; run them \
                 through scripts/test (it builds the images and sets RUNNER_KERNEL and \
                 RUNNER_ROOTFS), or set both to the files it prints"
            )
        });
        assert!(
            path.is_file(),
            "{var}={} is not a file; scripts/test builds it",
            path.display()
        );
        path
    };
    (get("RUNNER_KERNEL"), get("RUNNER_ROOTFS"))
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

pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "the kvm backend tests need /dev/kvm ({e}): {}",
            runner_vmm::kvm_host::open_hint(e.raw_os_error().unwrap_or(0))
        );
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
