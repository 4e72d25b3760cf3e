//! The `kvm` backend: the built-in VMM (`runner-vmm`) runs each guest in
//! this process, on its own thread, with our own device models attached
//! over virtio-mmio:
//!
//! - virtio-blk over the rootfs in overlay mode: the image is opened
//!   read-only, guest writes land in a private copy-on-write file that is
//!   thrown away with the VM (the guest is `/dev/vda`);
//! - vsock, with the hybrid `CONNECT <port>` protocol on a Unix socket,
//!   exactly like the QEMU backend's, so sessions do not care which backend
//!   runs the guest.
//!
//! Each VM lives in its own temp directory (hybrid vsock socket, serial
//! log, overlay), removed with the VM once the VMM thread has been joined.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use runner_devices::block::{BlockConfig, BlockDevice, DiskMode};
use runner_devices::vsock::{VsockConfig, VsockDevice};
use runner_vmm::{
    KernelConfig, MemoryConfig, SerialConfig, VcpuConfig, VmExit, Vmm, VmmConfig, VmmHandle,
};

use super::{tail_lines, BootError, Vm, VmSpec, GUEST_CID, GUEST_CMDLINE};
use crate::interrupt::{self, HookGuard};

/// What the guest reads from `/sys/block/vda/serial`.
pub const ROOT_DISK_SERIAL: &str = "runner-rootfs";

/// Name of the thread that runs a VM's VMM (its vCPUs get their own
/// threads, `vcpu<N>`, started by the VMM).
pub const VMM_THREAD_NAME: &str = "kvm-vmm";

/// Boots guests with the built-in KVM VMM.
#[derive(Clone, Debug, Default)]
pub struct KvmBackend {
    _private: (),
}

impl KvmBackend {
    pub fn new() -> KvmBackend {
        // Detect and explain; never behave differently (see `runner doctor`).
        if runner_vmm::kvm_host::is_pvm() {
            tracing::warn!(
                "this host's /dev/kvm is PVM (kvm_pvm): guest ring 0 is emulated, so a Linux \
                 guest under the kvm backend only gets through early boot here; \
                 `runner doctor` explains, `--backend auto` uses QEMU instead"
            );
        }
        KvmBackend { _private: () }
    }

    /// Like [`super::Backend::start`], with the concrete VM type (its
    /// directory is visible, for tests and diagnostics).
    pub fn start_vm(&self, spec: &VmSpec) -> Result<KvmVm, BootError> {
        if !spec.rootfs.is_file() {
            return Err(BootError::Setup(format!(
                "rootfs {} does not exist",
                spec.rootfs.display()
            )));
        }
        let vcpus = u8::try_from(spec.vcpus).map_err(|_| {
            BootError::Setup(format!(
                "kvm backend: {} vCPUs requested; at most {} are supported",
                spec.vcpus,
                runner_vmm::boot::mptable::MAX_VCPUS
            ))
        })?;
        let dir = super::vm_dir::create()
            .map_err(|e| BootError::Setup(format!("creating the VM directory: {e}")))?;
        let paths = VmPaths::new(dir.path());

        let config = VmmConfig {
            kernel: KernelConfig {
                path: spec.kernel.clone(),
                cmdline: GUEST_CMDLINE.to_string(),
            },
            memory: MemoryConfig {
                size_mib: spec.memory_mib,
            },
            vcpus: VcpuConfig { num: vcpus },
            serial: SerialConfig {
                log_path: Some(paths.serial.clone()),
                log_limit: spec.serial_log_limit,
                console: false,
            },
            // No VMM-side limit: the boot timeout is enforced by
            // `wait_for_agent`, and after boot a job may run for as long as
            // its own timeout allows; dropping the Vm stops the VMM.
            timeout: None,
        };
        let mut vmm = Vmm::new(config).map_err(setup_error)?;
        // The root disk first: it gets the first virtio-mmio window.
        let root = BlockDevice::new(BlockConfig {
            image: spec.rootfs.clone(),
            mode: DiskMode::Overlay {
                dir: Some(dir.path().to_path_buf()),
            },
            serial: ROOT_DISK_SERIAL.to_string(),
        })
        .map_err(|e| BootError::Setup(format!("kvm backend: root disk: {e}")))?;
        vmm.add_virtio_device(Box::new(root)).map_err(setup_error)?;
        let vsock = VsockDevice::new(VsockConfig::new(GUEST_CID, &paths.vsock_uds))
            .map_err(|e| BootError::Setup(format!("kvm backend: vsock device: {e}")))?;
        vmm.add_virtio_device(Box::new(vsock))
            .map_err(setup_error)?;
        tracing::debug!(vm = %spec.name, cmdline = %vmm.cmdline(), "starting the built-in VMM");

        let handle = vmm.handle();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(VMM_THREAD_NAME.into())
            .spawn(move || {
                // `run` consumes the VMM: when it returns, the vCPU threads
                // are joined and every device (and its sockets) is dropped.
                let _ = done_tx.send(vmm.run());
            })
            .map_err(|e| BootError::Setup(format!("starting the VMM thread: {e}")))?;
        let hook = {
            let handle = handle.clone();
            interrupt::on_interrupt(move || handle.stop())
        };
        Ok(KvmVm {
            _hook: hook,
            handle,
            thread: Some(thread),
            done: done_rx,
            outcome: None,
            paths,
            dir: Some(dir),
        })
    }
}

impl super::Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, BootError> {
        Ok(Box::new(self.start_vm(spec)?))
    }
}

/// VMM build errors (no /dev/kvm, not a kernel, too little memory, too
/// many vCPUs...) already carry their fix; keep them on one line.
fn setup_error(e: runner_vmm::Error) -> BootError {
    let text = e.to_string().replace('\n', " ");
    BootError::Setup(format!("kvm backend: {text}"))
}

struct VmPaths {
    vsock_uds: PathBuf,
    serial: PathBuf,
}

impl VmPaths {
    fn new(dir: &Path) -> VmPaths {
        VmPaths {
            vsock_uds: dir.join("vsock.sock"),
            serial: dir.join("serial.log"),
        }
    }
}

/// A guest running under the built-in VMM. Dropping it stops the VMM,
/// joins its thread (and so every vCPU thread), then removes the directory.
pub struct KvmVm {
    _hook: HookGuard,
    handle: VmmHandle,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<runner_vmm::Result<VmExit>>,
    /// Why the VM ended, once it has.
    outcome: Option<String>,
    paths: VmPaths,
    dir: Option<tempfile::TempDir>,
}

impl KvmVm {
    /// The VM's own directory (sockets, serial log); gone after drop.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    /// The serial console log.
    pub fn serial_log(&self) -> &Path {
        &self.paths.serial
    }

    fn record(&mut self, result: Result<runner_vmm::Result<VmExit>, ()>) {
        self.outcome = Some(match result {
            Ok(Ok(exit)) => {
                tracing::debug!(reason = %exit.reason, timings = ?exit.timings, "VM ended");
                exit.reason.to_string()
            }
            Ok(Err(e)) => format!("the VMM failed: {e}"),
            Err(()) => "the VMM thread panicked".to_string(),
        });
    }

    /// Stops the VMM (a no-op if it already ended) and joins its thread.
    fn stop_and_join(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the VMM thread panicked");
            }
        }
    }
}

impl Vm for KvmVm {
    fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        // No need to track the streams for Ctrl-C: stopping the VMM drops
        // the vsock device, which closes its end of every connection.
        super::hybrid_vsock::connect(&self.paths.vsock_uds, port)
    }

    fn exited(&mut self) -> Option<String> {
        if self.outcome.is_none() {
            match self.done.try_recv() {
                Ok(result) => self.record(Ok(result)),
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => self.record(Err(())),
            }
        }
        self.outcome.clone()
    }

    fn serial_tail(&self, n: usize) -> Vec<String> {
        tail_lines(&self.paths.serial, n)
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        if self.outcome.is_some() {
            self.stop_and_join();
            return true;
        }
        let by_itself = match self.done.recv_timeout(limit) {
            Ok(result) => {
                self.record(Ok(result));
                true
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.record(Err(()));
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        };
        self.stop_and_join();
        by_itself
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.stop_and_join();
        // Only now that nothing writes into it any more.
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                tracing::warn!("removing the VM directory: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    fn spec(dir: &Path) -> VmSpec {
        let rootfs = dir.join("rootfs.ext4");
        std::fs::write(&rootfs, b"").unwrap();
        VmSpec {
            name: "unit".into(),
            kernel: dir.join("vmlinux"),
            rootfs,
            vcpus: 1,
            memory_mib: 64,
            boot_timeout: Duration::from_secs(1),
            serial_log_limit: None,
        }
    }

    fn setup_error_of(spec: &VmSpec) -> String {
        match KvmBackend::new().start(spec) {
            Err(BootError::Setup(msg)) => msg,
            Err(other) => panic!("expected a setup error, got {other}"),
            Ok(_) => panic!("the VM started"),
        }
    }

    #[test]
    fn missing_rootfs_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.rootfs = dir.path().join("nope.ext4");
        let msg = setup_error_of(&spec);
        assert!(
            msg.contains("nope.ext4") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn unusable_dev_kvm_is_one_line_with_the_fix() {
        for (errno, fix) in [(libc::EACCES, "kvm` group"), (libc::ENOENT, "modprobe")] {
            let err = runner_vmm::Error::KvmUnavailable {
                source: std::io::Error::from_raw_os_error(errno),
                hint: runner_vmm::kvm_host::open_hint(errno),
            };
            let BootError::Setup(msg) = setup_error(err) else {
                panic!("not a setup error");
            };
            assert!(
                msg.starts_with("kvm backend: cannot open /dev/kvm"),
                "{msg}"
            );
            assert!(msg.contains(fix) && !msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn vcpu_count_beyond_u8_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.vcpus = 1000;
        let msg = setup_error_of(&spec);
        assert!(msg.contains("1000 vCPUs") && msg.contains("254"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
