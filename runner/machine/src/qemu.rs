//! The `qemu` backend: `qemu-system-x86_64 -M microvm`, the rootfs as a
//! read-only virtio-blk disk and vsock through a vhost-user device.
//!
//! Our own devices (disk and vsock) are served over vhost-user by a VM
//! process of the VM's own, under seccomp filters (see
//! [`super::vm_process`]); QEMU itself runs with `-sandbox on`.
//!
//! Each VM lives in its own temp directory (vhost-user sockets, hybrid
//! vsock socket, serial log, QEMU's and the device process's logs),
//! removed with the VM.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::network::{self, user_nic::UserNic};
use super::serial_pump::SerialPump;
use super::vm_process::cache_disks::OpenCaches;
use super::vm_process::confinement::VmIds;
use super::vm_process::{self, DevicesRole, DiskRole, ProcessConfig, Role, VmProcess, VsockRole};
use super::write_counter::WriteCounter;
use super::{tail_lines, BootError, Vm, VmSpec, GUEST_CID, GUEST_CMDLINE};
use crate::interrupt::{self, HookGuard};
use crate::process::{inherit_fds, kill_pid, spawn_guarded, ChildGuard};

/// CPU emulation QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization; only worth it where KVM runs guest ring 0
    /// natively (see `runner doctor`).
    Kvm,
    /// Software emulation; works everywhere.
    Tcg,
}

/// Who serves the guest's vsock device.
#[derive(Clone, Debug)]
pub enum VsockProvider {
    /// Our own device model (`runner-devices`), served over vhost-user by
    /// the VM's device process.
    Builtin,
    /// An external vhost-user-vsock daemon with vhost-device-vsock's command
    /// line; kept to compare against in benchmarks.
    External(PathBuf),
}

/// Who serves the root disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskProvider {
    /// Our virtio-blk model over vhost-user-blk, served by the VM's device
    /// process: the image read-only, guest writes into a throwaway overlay.
    Builtin,
    /// QEMU's own virtio-blk, read-only; kept to compare against.
    Qemu,
}

#[derive(Clone, Debug)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub vsock: VsockProvider,
    pub disk: DiskProvider,
}

impl QemuBackend {
    /// Finds `qemu-system-x86_64` on PATH, or says how to install it.
    pub fn locate(
        accel: Accel,
        vsock: VsockProvider,
        disk: DiskProvider,
    ) -> Result<QemuBackend, BootError> {
        let qemu = which::which_global("qemu-system-x86_64").map_err(|_| {
            BootError::Setup(
                "qemu-system-x86_64 not found; install it with `apt-get install qemu-system-x86`"
                    .into(),
            )
        })?;
        Ok(QemuBackend {
            qemu,
            accel,
            vsock,
            disk,
        })
    }
}

impl super::Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, BootError> {
        for (what, path) in [("kernel", &spec.kernel), ("rootfs", &spec.rootfs)] {
            if !path.is_file() {
                return Err(BootError::Setup(format!(
                    "{what} {} does not exist",
                    path.display()
                )));
            }
        }
        let dir = super::vm_dir::create()
            .map_err(|e| BootError::Setup(format!("creating the VM directory: {e}")))?;
        let ids = VmIds::allocate().map_err(BootError::Setup)?;
        if let Some(ids) = &ids {
            vm_process::give_to(ids, dir.path(), &[]).map_err(BootError::Setup)?;
        }
        let paths = VmPaths::new(dir.path());

        let written =
            match self.disk {
                DiskProvider::Builtin => Some(WriteCounter::new().map_err(|e| {
                    BootError::Setup(format!("making the disk's write counter: {e}"))
                })?),
                _ => None,
            };
        let devices =
            self.start_devices(spec, dir.path(), &paths, ids.as_ref(), written.as_ref())?;
        let caches: Vec<PathBuf> = (0..spec.caches.len())
            .map(|index| paths.cache_socket(index))
            .collect();
        // Every NIC's frames pass the VM's egress process: QEMU's end of
        // the NIC is a socket whose other end that process holds.
        let (network, guest_nic) = match &spec.network {
            network::Nic::User(reach) => {
                let (nic, guest) = UserNic::start(reach, dir.path(), ids.as_ref(), &spec.name)?;
                (Some(nic), Some(guest))
            }
            network::Nic::None => (None, None),
        };
        let external_vsock = match &self.vsock {
            VsockProvider::External(program) => Some(start_external_vsock(program, &paths)?),
            VsockProvider::Builtin => None,
        };
        let serial = SerialPump::start(&paths.serial_socket, &paths.serial, spec.serial_log_limit)
            .map_err(|e| BootError::Setup(format!("starting the serial console log: {e}")))?;
        let qemu_log = File::create(&paths.qemu_log)
            .map_err(|e| BootError::Setup(format!("creating {}: {e}", paths.qemu_log.display())))?;
        let mut cmd = self.command(spec, &paths);
        if let Some(guest) = &guest_nic {
            cmd.args(nic_args(guest.as_raw_fd()));
            inherit_fds(&mut cmd, &[guest.as_raw_fd()]);
        }
        if let Some(segment) = &spec.segment {
            cmd.args(segment_nic_args(segment));
            inherit_fds(&mut cmd, &[segment.socket.as_raw_fd()]);
        }
        // After the root disk: it stays the guest's /dev/vda.
        cmd.args(cache_args(&caches));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(qemu_log));
        tracing::debug!(vm = %spec.name, "starting {cmd:?}");
        let qemu = spawn_guarded(&mut cmd, "qemu")
            .map_err(|e| BootError::Setup(format!("starting {}: {e}", self.qemu.display())))?;
        // QEMU has its own descriptor of it now.
        drop(guest_nic);

        let hook = {
            let external_pid = external_vsock.as_ref().map(ChildGuard::pid);
            let kill_devices = devices.as_ref().map(VmProcess::killer);
            let qemu_pid = qemu.pid();
            let kill_network = network.as_ref().map(UserNic::killer);
            // Killing the processes closes every host connection to the
            // guest, so blocked reads end.
            interrupt::on_interrupt(move || {
                kill_pid(qemu_pid);
                if let Some(kill) = &kill_devices {
                    kill();
                }
                if let Some(pid) = external_pid {
                    kill_pid(pid);
                }
                if let Some(kill) = &kill_network {
                    kill();
                }
            })
        };
        Ok(Box::new(QemuVm {
            _hook: hook,
            qemu,
            network,
            _serial: serial,
            devices,
            written,
            _external_vsock: external_vsock,
            paths,
            _dir: dir,
            _ids: ids,
        }))
    }
}

impl QemuBackend {
    /// Starts the VM process that serves our own devices, if any is used.
    fn start_devices(
        &self,
        spec: &VmSpec,
        dir: &Path,
        paths: &VmPaths,
        ids: Option<&VmIds>,
        written: Option<&WriteCounter>,
    ) -> Result<Option<VmProcess>, BootError> {
        let disk = (self.disk == DiskProvider::Builtin).then(|| DiskRole {
            image: spec.rootfs.clone(),
            overlay_dir: dir.to_path_buf(),
            serial: String::new(),
            socket: Some(paths.vhost_user_blk.clone()),
            written_counter_fd: written.map(WriteCounter::fd),
        });
        let vsock = matches!(self.vsock, VsockProvider::Builtin).then(|| VsockRole {
            uds: paths.vsock_uds.clone(),
            guest_cid: GUEST_CID,
            socket: Some(paths.vhost_user.clone()),
        });
        if disk.is_none() && vsock.is_none() && spec.caches.is_empty() {
            return Ok(None);
        }
        let caches = OpenCaches::open(&spec.caches, |index| Some(paths.cache_socket(index)))
            .map_err(BootError::Setup)?;
        let config = ProcessConfig {
            protocol: vm_process::PROTOCOL,
            name: spec.name.clone(),
            seccomp: vm_process::seccomp::mode_from_env().map_err(BootError::Setup)?,
            // The device servers read the rootfs; guest memory comes from
            // QEMU as a passed fd.
            jail: vm_process::jail_for(dir, vec![spec.rootfs.clone()], Vec::new())
                .map_err(BootError::Setup)?,
            role: Role::Devices(DevicesRole {
                disk,
                vsock,
                caches: caches.roles.clone(),
            }),
        };
        let mut inherit = caches.fds();
        inherit.extend(written.map(WriteCounter::fd));
        // Guest memory is QEMU's (it touches it first), not this process's.
        VmProcess::start(&config, ids, 0, 1, &inherit).map(Some)
    }

    fn command(&self, spec: &VmSpec, paths: &VmPaths) -> Command {
        let mem = spec.memory_mib;
        let mut cmd = Command::new(&self.qemu);
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        cmd.args(["-accel", accel, "-cpu", cpu])
            // acpi=off makes QEMU announce the virtio-mmio devices on the
            // kernel command line, which is how our ACPI-less kernel finds them.
            .args(["-M", "microvm,acpi=off,memory-backend=mem"])
            .args(["-m", &format!("{mem}M"), "-smp", &spec.vcpus.to_string()])
            // Names its vCPU threads `CPU 0/TCG`...: their CPU time is the
            // guest's (crate::cpu_time).
            .args(["-name", "runner,debug-threads=on"])
            // vhost-user needs guest memory the backend can map: a shared memfd.
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            ])
            .args(["-kernel", &qemu_path(&spec.kernel)])
            .args(["-append", GUEST_CMDLINE])
            .args(self.disk_args(spec, paths))
            .args([
                "-chardev",
                &format!("socket,id=vsock,path={}", qemu_path(&paths.vhost_user)),
            ])
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
            // Through our capped log, not `file:` (see serial_pump.rs):
            // QEMU connects to the pump's socket as a client.
            .args([
                "-chardev",
                &format!(
                    "socket,id=serial0,path={},server=off",
                    qemu_path(&paths.serial_socket)
                ),
            ])
            .args(["-serial", "chardev:serial0"])
            .args(["-display", "none", "-nodefaults", "-no-user-config"])
            // QEMU's own seccomp filter (obsolete syscalls, privileges,
            // spawning, resource control all refused).
            .args([
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ])
            // The agent's shutdown reboots through the keyboard controller
            // (reboot=k), which microvm lacks unless asked; -no-reboot turns
            // the reset into an exit. Without it a bzImage guest loops.
            .args(["-device", "i8042"])
            .arg("-no-reboot");
        cmd
    }
}

impl QemuBackend {
    fn disk_args(&self, spec: &VmSpec, paths: &VmPaths) -> Vec<String> {
        match self.disk {
            DiskProvider::Builtin => vec![
                "-chardev".into(),
                format!("socket,id=root,path={}", qemu_path(&paths.vhost_user_blk)),
                "-device".into(),
                "vhost-user-blk,chardev=root".into(),
            ],
            DiskProvider::Qemu => vec![
                "-drive".into(),
                format!(
                    "id=root,file={},format=raw,if=none,readonly=on",
                    qemu_path(&spec.rootfs)
                ),
                "-device".into(),
                "virtio-blk-device,drive=root".into(),
            ],
        }
    }
}

/// A vhost-user-blk disk for each cache, served by the device process on
/// its socket (the serial, `cache0`..., comes from our device model).
fn cache_args(sockets: &[PathBuf]) -> Vec<String> {
    sockets
        .iter()
        .enumerate()
        .flat_map(|(index, socket)| {
            [
                "-chardev".into(),
                format!("socket,id=cache{index},path={}", qemu_path(socket)),
                "-device".into(),
                format!("vhost-user-blk,chardev=cache{index}"),
            ]
        })
        .collect()
}

/// QEMU option values use `,` as a separator; a literal comma is doubled.
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

struct VmPaths {
    vhost_user: PathBuf,
    vhost_user_blk: PathBuf,
    vsock_uds: PathBuf,
    serial: PathBuf,
    serial_socket: PathBuf,
    qemu_log: PathBuf,
}

impl VmPaths {
    fn new(dir: &Path) -> VmPaths {
        VmPaths {
            vhost_user: dir.join("vhost-user.sock"),
            vhost_user_blk: dir.join("vhost-user-blk.sock"),
            vsock_uds: dir.join("vsock.sock"),
            serial: dir.join("serial.log"),
            serial_socket: dir.join("serial.sock"),
            qemu_log: dir.join("qemu.log"),
        }
    }

    /// The vhost-user socket of cache `index`; `serial.sock` and the other
    /// sockets sit beside it.
    fn cache_socket(&self, index: usize) -> PathBuf {
        self.vhost_user_blk
            .with_file_name(format!("cache{index}.sock"))
    }
}

/// An external vhost-user-vsock daemon (benchmarks compare against one).
fn start_external_vsock(program: &Path, paths: &VmPaths) -> Result<ChildGuard, BootError> {
    let mut cmd = Command::new(program);
    cmd.args(["--guest-cid", &GUEST_CID.to_string()])
        .arg("--socket")
        .arg(&paths.vhost_user)
        .arg("--uds-path")
        .arg(&paths.vsock_uds);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn_guarded(&mut cmd, "vsock backend")
        .map_err(|e| BootError::Setup(format!("starting {}: {e}", program.display())))?;
    // QEMU refuses to start if the vhost-user socket is not there yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !paths.vhost_user.exists() {
        if let Some(status) = child.try_wait() {
            return Err(BootError::Setup(format!(
                "{} exited at start ({status})",
                program.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(BootError::Setup(format!(
                "{} did not create its socket",
                program.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

/// A virtio-net NIC on QEMU's stream netdev (passt's protocol), on the
/// inherited socket its egress process holds the other end of.
fn nic_args(fd: std::os::fd::RawFd) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("stream,id=net0,server=off,addr.type=fd,addr.str={fd}"),
        "-device".into(),
        "virtio-net-device,netdev=net0".into(),
    ]
}

/// A second virtio-net NIC, on the job's private segment: QEMU's stream
/// netdev on the socket the switch gave this member (inherited), with the
/// MAC the switch knows it by.
fn segment_nic_args(segment: &network::segment::SegmentNic) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "stream,id=seg0,server=off,addr.type=fd,addr.str={}",
            segment.socket.as_raw_fd()
        ),
        "-device".into(),
        format!(
            "virtio-net-device,netdev=seg0,mac={}",
            network::mac_text(segment.mac)
        ),
    ]
}

/// Field order is drop order: unhook, stop QEMU, stop its network, finish
/// the serial log (QEMU's end of it is closed by then), stop the devices,
/// then remove the directory.
struct QemuVm {
    _hook: HookGuard,
    qemu: ChildGuard,
    network: Option<UserNic>,
    _serial: SerialPump,
    devices: Option<VmProcess>,
    /// The bytes the guest wrote to its root disk, with our disk.
    written: Option<WriteCounter>,
    _external_vsock: Option<ChildGuard>,
    paths: VmPaths,
    _dir: tempfile::TempDir,
    /// The ids its processes run as; free again once they are gone.
    _ids: Option<VmIds>,
}

impl Vm for QemuVm {
    fn cpu_time(&self) -> Option<Duration> {
        crate::cpu_time::of_threads(self.qemu.pid(), "CPU ")
    }

    fn network_use(&mut self) -> Option<crate::network::EgressReport> {
        self.network.as_mut()?.report()
    }

    fn disk_written(&self) -> Option<u64> {
        self.written.as_ref().map(WriteCounter::bytes)
    }

    fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        super::hybrid_vsock::connect(&self.paths.vsock_uds, port)
    }

    fn exited(&mut self) -> Option<String> {
        // A device process that died (a seccomp kill, a crash) ends the VM:
        // QEMU would only wait for a device that never answers.
        if let Some(failure) = self.devices.as_mut().and_then(VmProcess::outcome) {
            if !failure.clean {
                self.qemu.kill();
                return Some(failure.description);
            }
        }
        let status = self.qemu.try_wait()?;
        let log = std::fs::read_to_string(&self.paths.qemu_log).unwrap_or_default();
        let log = log.trim();
        Some(if log.is_empty() {
            format!("qemu {status}")
        } else {
            format!("qemu {status}: {log}")
        })
    }

    fn serial_tail(&self, n: usize) -> Vec<String> {
        tail_lines(&self.paths.serial, n)
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let stopped = self.qemu.wait_timeout(limit).is_some();
        self.qemu.kill();
        stopped
    }
}
