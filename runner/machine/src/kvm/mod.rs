//! The `kvm` backend: the built-in VMM (`runner-vmm`) runs each guest in a
//! VM process of its own (see [`crate::vm_process`]), under seccomp
//! filters, with our own device models attached over virtio-mmio:
//!
//! - virtio-blk over the rootfs in overlay mode: the image is opened
//!   read-only, guest writes land in a private copy-on-write file that is
//!   thrown away with the VM (the guest is `/dev/vda`);
//! - vsock, with the hybrid `CONNECT <port>` protocol on a Unix socket,
//!   exactly like the QEMU backend's, so sessions do not care which backend
//!   runs the guest;
//! - the NIC, if the job has one;
//! - the job's cache volumes ([`crate::CacheDisk`]), last: virtio-blk over
//!   the cache's base with the guest's writes in its layer file. A VM that
//!   takes or restores a snapshot has [`CACHE_SLOTS`] empty slots there
//!   instead, and a restored clone gets its caches attached to them (see
//!   docs/snapshots.md).
//!
//! Each VM lives in its own temp directory (hybrid vsock socket, serial
//! log, overlay, the VM process's log), removed with the VM once its
//! process has been killed and reaped.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::interrupt;
use crate::network::{user_nic::UserNic, Nic};
use crate::snapshots::SnapshotStore;
use crate::vm_process::cache_disks::OpenCaches;
use crate::vm_process::confinement::VmIds;
use crate::vm_process::{
    self, DiskRole, NetRole, ProcessConfig, Role, SegmentRole, VmProcess, VmmRole, VsockRole,
};
use crate::write_counter::WriteCounter;
use crate::{AgentProbe, BootError, Vm, VmSpec, GUEST_CID, GUEST_CMDLINE};

mod vm;
mod warm_start;

pub use vm::KvmVm;
use vm::{Start, VmPaths};

/// What the guest reads from `/sys/block/vda/serial`.
pub const ROOT_DISK_SERIAL: &str = "runner-rootfs";

/// How many cache volumes a snapshot has room for: every snapshot has
/// this many empty slots (virtio-blk disks of no sectors, `cache0`...), so
/// that one snapshot serves every job, whatever caches it has. A job with
/// more caches boots cold. Each slot takes one of the 19 interrupt lines
/// of the VMM's virtio devices.
pub const CACHE_SLOTS: usize = 4;

/// Boots guests with the built-in KVM VMM.
#[derive(Clone, Debug, Default)]
pub struct KvmBackend {
    /// Warm start from cached snapshots; `None`: every VM boots cold.
    warm: Option<WarmStarts>,
}

/// Where warm start keeps its snapshots, and how it tells whether a clone
/// of one answers.
#[derive(Clone, Debug)]
struct WarmStarts {
    store: SnapshotStore,
    probe: Arc<dyn AgentProbe>,
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
        KvmBackend { warm: None }
    }

    /// Restores jobs from snapshots cached in `store` (building them on
    /// first use) instead of booting them; jobs with a network still boot.
    /// `probe` tells whether a clone's agent answers.
    pub fn with_snapshots(store: Option<SnapshotStore>, probe: Arc<dyn AgentProbe>) -> KvmBackend {
        let mut backend = KvmBackend::new();
        backend.warm = store.map(|store| WarmStarts { store, probe });
        backend
    }

    /// Like [`crate::Backend::start`], with the concrete VM type (its
    /// directory is visible, for tests and diagnostics).
    pub fn start_vm(&self, spec: &VmSpec) -> Result<KvmVm, BootError> {
        let fits = spec.caches.len() <= CACHE_SLOTS;
        if self.warm.is_some() && !fits {
            tracing::debug!(
                vm = %spec.name,
                caches = spec.caches.len(),
                "booting cold: a snapshot has room for {CACHE_SLOTS} caches"
            );
        }
        // passt keeps state of its guest that no clone could share: VMs
        // with a network boot. A segment's NIC restores onto the job's.
        match (&self.warm, spec.network.is_on() || !fits) {
            (Some(warm), false) => warm_start::start(
                &|spec, start| self.start_process(spec, start),
                &warm.store,
                warm.probe.as_ref(),
                spec,
            ),
            _ => self.start_process(spec, Start::Cold),
        }
    }

    fn start_process(&self, spec: &VmSpec, start: Start) -> Result<KvmVm, BootError> {
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
        let seccomp = vm_process::seccomp::mode_from_env().map_err(BootError::Setup)?;
        let dir = crate::vm_dir::create()
            .map_err(|e| BootError::Setup(format!("creating the VM directory: {e}")))?;
        let ids = VmIds::allocate().map_err(BootError::Setup)?;
        if let Some(ids) = &ids {
            vm_process::give_to(ids, dir.path(), &[]).map_err(BootError::Setup)?;
        }
        let paths = VmPaths::new(dir.path());
        let (nic, guest_nic) = match &spec.network {
            Nic::User(reach) => {
                let (nic, guest) = UserNic::start(reach, dir.path(), ids.as_ref(), &spec.name)?;
                (Some(nic), Some(guest))
            }
            Nic::None => (None, None),
        };
        let jail = vm_process::jail_for(dir.path(), jail_reads(spec, &start), jail_writes(&start)?)
            .map_err(BootError::Setup)?;
        let caches = OpenCaches::open(&spec.caches, |_| None).map_err(BootError::Setup)?;
        let written = WriteCounter::new()
            .map_err(|e| BootError::Setup(format!("making the disk's write counter: {e}")))?;
        let config = ProcessConfig {
            protocol: vm_process::PROTOCOL,
            name: spec.name.clone(),
            seccomp,
            jail,
            role: Role::Vmm(Box::new(VmmRole {
                kernel: spec.kernel.clone(),
                cmdline: GUEST_CMDLINE.to_string(),
                memory_mib: spec.memory_mib,
                vcpus,
                serial_log: paths.serial.clone(),
                serial_log_limit: spec.serial_log_limit,
                disk: DiskRole {
                    image: spec.rootfs.clone(),
                    overlay_dir: dir.path().to_path_buf(),
                    serial: ROOT_DISK_SERIAL.to_string(),
                    socket: None,
                    written_counter_fd: Some(written.fd()),
                },
                vsock: VsockRole {
                    uds: paths.vsock_uds.clone(),
                    guest_cid: GUEST_CID,
                    socket: None,
                },
                network: guest_nic.as_ref().map(|fd| NetRole { fd: fd.as_raw_fd() }),
                segment: spec.segment.as_ref().map(|nic| SegmentRole {
                    fd: nic.socket.as_raw_fd(),
                    mac: nic.mac,
                }),
                snapshot: match &start {
                    Start::ForSnapshot(role) => Some(role.clone()),
                    _ => None,
                },
                restore: match &start {
                    Start::Restore(role) => Some(role.clone()),
                    _ => None,
                },
                caches: caches.roles.clone(),
                cache_slots: match &start {
                    Start::Cold => 0,
                    Start::ForSnapshot(_) | Start::Restore(_) => CACHE_SLOTS,
                },
            })),
        };
        tracing::debug!(vm = %spec.name, "starting the built-in VMM in its own process");
        let mut inherit = caches.fds();
        inherit.extend(spec.segment.iter().map(|nic| nic.socket.as_raw_fd()));
        inherit.extend(guest_nic.iter().map(|fd| fd.as_raw_fd()));
        inherit.push(written.fd());
        let process = VmProcess::start(
            &config,
            ids.as_ref(),
            u64::from(spec.memory_mib),
            u64::from(vcpus),
            &inherit,
        )?;
        // The VM process has its own descriptors of them now.
        drop((caches, guest_nic));
        let hook = interrupt::on_interrupt(process.killer());
        Ok(KvmVm {
            _hook: hook,
            process,
            nic,
            written,
            paths,
            dir: Some(dir),
            restore_generation: None,
            answered_agent: None,
            _ids: ids,
        })
    }
}

/// What the VM process reads outside its directory: the kernel, the
/// rootfs, and a snapshot to restore.
fn jail_reads(spec: &VmSpec, start: &Start) -> Vec<PathBuf> {
    let mut reads = vec![spec.kernel.clone(), spec.rootfs.clone()];
    if let Start::Restore(role) = start {
        reads.push(role.path.clone());
    }
    reads
}

/// What it writes outside it: `/dev/kvm`, and the file of a snapshot it is
/// to take, made here (empty) because a jailed process creates no file
/// outside its directory.
fn jail_writes(start: &Start) -> Result<Vec<PathBuf>, BootError> {
    let mut writes = vec![PathBuf::from(runner_vmm::kvm_host::KVM_DEVICE)];
    if let Start::ForSnapshot(role) = start {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&role.path)
            .map_err(|e| BootError::Setup(format!("creating {}: {e}", role.path.display())))?;
        writes.push(role.path.clone());
    }
    Ok(writes)
}

impl crate::Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, BootError> {
        Ok(Box::new(self.start_vm(spec)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;
    use std::path::Path;
    use std::time::Duration;

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
            network: Default::default(),
            segment: None,
            prepare: None,
            caches: Vec::new(),
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
    fn vcpu_count_beyond_u8_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.vcpus = 1000;
        let msg = setup_error_of(&spec);
        assert!(msg.contains("1000 vCPUs") && msg.contains("254"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
