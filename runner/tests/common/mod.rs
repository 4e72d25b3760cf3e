//! Shared by the kvm backend tests: the guest images and the VM processes
//! this test process has running.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use runner::backend::vm_process::SUBCOMMAND;
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

/// The pids of this process's children that are VM processes (`runner
/// __vm-process`), reaped or not.
pub fn vm_processes() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so look
            // after its closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(me.as_str())
                && cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == SUBCOMMAND.as_bytes())
        })
        .collect()
}
