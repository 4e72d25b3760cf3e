//! What running each VM's devices in a process of its own costs.
//!
//! `cargo bench -p runner --bench vm_process` with RUNNER_KERNEL (vmlinux)
//! and RUNNER_ROOTFS set (scripts/test prints both). One run prints:
//!
//! 1. Start-up of a QEMU VM's device process: the same two vhost-user
//!    servers (root disk, vsock) started in this process, until their
//!    sockets exist, against `runner __vm-process` started until it says
//!    `ready` (spawn, exec, config, set-up, seccomp filters). Median of 10
//!    each; the difference is what the process adds to every VM's start.
//! 2. The same for the built-in VMM (`Vmm::new` with both devices against
//!    its VM process), where /dev/kvm opens.
//! 3. Memory of a device process, idle (servers started, no QEMU yet) and
//!    serving a real QEMU VM booted to its agent after a command ran:
//!    resident memory beyond guest memory (guest pages mapped from QEMU's
//!    memfd are counted apart), and what the process adds: its anonymous
//!    pages (heap, stacks, relocated data) and page tables. Its file pages
//!    are the `runner` binary's and libc's, page cache shared with the
//!    runner that started it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runner::backend::vm_process::{
    self, DevicesRole, DiskRole, ProcessConfig, Role, VmProcess, VmmRole, VsockRole,
};
use runner::backend::{self, GUEST_CID, GUEST_CMDLINE};
use runner_devices::block::{BlockConfig, BlockDevice, DiskMode};
use runner_devices::vsock::{VsockConfig, VsockDevice};
use runner_vhost::block::{BlockServer, BlockServerConfig};
use runner_vhost::vsock::{VsockServer, VsockServerConfig};
use runner_vmm::{KernelConfig, MemoryConfig, SerialConfig, VcpuConfig, Vmm, VmmConfig};

#[path = "common/mem.rs"]
mod mem;

const ROUNDS: usize = 10;
const GUEST_MIB: u32 = 256;

fn main() {
    if std::env::var_os("RUNNER_EXE").is_none() {
        std::env::set_var("RUNNER_EXE", env!("CARGO_BIN_EXE_runner"));
    }
    let kernel = image("RUNNER_KERNEL");
    let rootfs = image("RUNNER_ROOTFS");

    let (inside, outside) = compare(
        ROUNDS,
        |dir| devices_in_process(dir, &rootfs),
        |dir| process(devices_role(dir, &rootfs)),
    );
    report("QEMU device servers (disk + vsock)", inside, outside);

    if std::fs::File::open("/dev/kvm").is_ok() {
        let (inside, outside) = compare(
            ROUNDS / 2,
            |dir| vmm_in_process(dir, &kernel, &rootfs),
            |dir| process(vmm_role(dir, &kernel, &rootfs)),
        );
        report("built-in VMM (Vmm::new + disk + vsock)", inside, outside);
    } else {
        println!("built-in VMM: skipped, /dev/kvm does not open here");
    }

    device_process_memory(&rootfs);
}

fn image(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        fail(&format!(
            "{var} must name the guest image file; scripts/test builds the images and prints them"
        ))
    })
}

fn fail(msg: &str) -> ! {
    eprintln!("vm_process bench: {msg}");
    std::process::exit(1);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median start-up time of `inside` and of `outside`, alternating, each in
/// a fresh directory.
fn compare(
    rounds: usize,
    mut inside: impl FnMut(&Path) -> Duration,
    mut outside: impl FnMut(&Path) -> Duration,
) -> (Duration, Duration) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
        a.push(inside(dir.path()));
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
        b.push(outside(dir.path()));
    }
    a.sort();
    b.sort();
    (a[a.len() / 2], b[b.len() / 2])
}

fn report(what: &str, inside: Duration, outside: Duration) {
    println!(
        "{what}: in this process {:.2} ms, in a VM process {:.2} ms: the process adds {:.2} ms \
         (median of each)",
        ms(inside),
        ms(outside),
        ms(outside.saturating_sub(inside))
    );
}

fn devices_in_process(dir: &Path, rootfs: &Path) -> Duration {
    let start = Instant::now();
    let mut disk = BlockServerConfig::overlay(dir.join("blk.sock"), rootfs);
    disk.mode = DiskMode::Overlay {
        dir: Some(dir.to_path_buf()),
    };
    let disk = BlockServer::start(disk).unwrap_or_else(|e| fail(&e.to_string()));
    let vsock = VsockServer::start(VsockServerConfig {
        socket_path: dir.join("vsock.sock"),
        uds_path: dir.join("vm.vsock"),
        guest_cid: GUEST_CID,
    })
    .unwrap_or_else(|e| fail(&e.to_string()));
    let took = start.elapsed();
    drop((disk, vsock));
    took
}

/// The root disk and vsock device in `dir`, with vhost-user sockets or
/// without (for the built-in VMM).
fn disk_and_vsock(dir: &Path, rootfs: &Path, vhost_user: bool) -> (DiskRole, VsockRole) {
    let socket = |name: &str| vhost_user.then(|| dir.join(name));
    (
        DiskRole {
            image: rootfs.to_path_buf(),
            overlay_dir: dir.to_path_buf(),
            serial: String::new(),
            socket: socket("blk.sock"),
        },
        VsockRole {
            uds: dir.join("vm.vsock"),
            guest_cid: GUEST_CID,
            socket: socket("vsock.sock"),
        },
    )
}

fn devices_role(dir: &Path, rootfs: &Path) -> Role {
    let (disk, vsock) = disk_and_vsock(dir, rootfs, true);
    Role::Devices(DevicesRole {
        disk: Some(disk),
        vsock: Some(vsock),
    })
}

fn vmm_in_process(dir: &Path, kernel: &Path, rootfs: &Path) -> Duration {
    let start = Instant::now();
    let mut vmm = Vmm::new(vmm_config(dir, kernel)).unwrap_or_else(|e| fail(&e.to_string()));
    let disk = BlockDevice::new(BlockConfig {
        image: rootfs.to_path_buf(),
        mode: DiskMode::Overlay {
            dir: Some(dir.to_path_buf()),
        },
        serial: String::new(),
    })
    .unwrap_or_else(|e| fail(&e.to_string()));
    let vsock = VsockDevice::new(VsockConfig::new(GUEST_CID, dir.join("vm.vsock")))
        .unwrap_or_else(|e| fail(&e.to_string()));
    vmm.add_virtio_device(Box::new(disk))
        .and_then(|_| vmm.add_virtio_device(Box::new(vsock)))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let took = start.elapsed();
    drop(vmm);
    took
}

fn vmm_config(dir: &Path, kernel: &Path) -> VmmConfig {
    VmmConfig {
        kernel: KernelConfig {
            path: kernel.to_path_buf(),
            cmdline: GUEST_CMDLINE.to_string(),
        },
        memory: MemoryConfig {
            size_mib: GUEST_MIB,
        },
        vcpus: VcpuConfig { num: 1 },
        serial: SerialConfig {
            log_path: Some(dir.join("serial.log")),
            log_limit: None,
            console: false,
        },
        timeout: None,
        snapshot: None,
    }
}

fn vmm_role(dir: &Path, kernel: &Path, rootfs: &Path) -> Role {
    let (disk, vsock) = disk_and_vsock(dir, rootfs, false);
    Role::Vmm(Box::new(VmmRole {
        kernel: kernel.to_path_buf(),
        cmdline: GUEST_CMDLINE.to_string(),
        memory_mib: GUEST_MIB,
        vcpus: 1,
        serial_log: dir.join("serial.log"),
        serial_log_limit: None,
        network: Default::default(),
        snapshot: None,
        restore: None,
        disk,
        vsock,
    }))
}

/// Starts a VM process with `role` until it is ready; kills it.
fn process(role: Role) -> Duration {
    process_and_memory(role).0
}

/// Like [`process`], with the ready process's memory.
fn process_and_memory(role: Role) -> (Duration, Option<mem::MemUse>) {
    let config = ProcessConfig {
        protocol: vm_process::PROTOCOL,
        name: "bench".into(),
        seccomp: vm_process::seccomp::mode_from_env().unwrap_or_else(|e| fail(&e)),
        role,
    };
    let start = Instant::now();
    let mut process = VmProcess::start(&config).unwrap_or_else(|e| fail(&e.to_string()));
    let took = start.elapsed();
    let memory = mem::mem_use(process.pid());
    process.kill();
    (took, memory)
}

fn print_memory(what: &str, m: &mem::MemUse) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{what}: resident beyond guest memory {:.2} MiB; what the process adds: anonymous \
         {:.2} MiB (heap, stacks, relocated data) and page tables {:.2} MiB; the rest is the \
         runner binary's and libc's file pages ({:.2} MiB), shared page cache; guest pages it \
         maps {:.2} MiB (QEMU's, shared)",
        mib(m.other_rss),
        mib(m.other_anonymous),
        mib(m.page_tables),
        mib(m.file),
        mib(m.guest_rss)
    );
}

/// Measures a device process idle, then one serving a booted QEMU VM that
/// ran `true`.
fn device_process_memory(rootfs: &Path) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let (_, idle) = process_and_memory(devices_role(dir.path(), rootfs));
    print_memory(
        "idle device process",
        &idle.unwrap_or_else(|| fail("cannot read the device process's smaps")),
    );
    let qemu = backend::qemu_tcg_backend().unwrap_or_else(|e| fail(&e.to_string()));
    let spec = backend::VmSpec {
        name: "bench-memory".into(),
        kernel: image("RUNNER_KERNEL"),
        rootfs: image("RUNNER_ROOTFS"),
        vcpus: 1,
        memory_mib: GUEST_MIB,
        boot_timeout: Duration::from_secs(120),
        serial_log_limit: None,
        network: Default::default(),
    };
    let mut vm = qemu.start(&spec).unwrap_or_else(|e| fail(&e.to_string()));
    let mut session = backend::wait_for_agent(vm.as_mut(), spec.boot_timeout)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let request = agent_protocol::ExecRequest {
        command: agent_protocol::Command::Argv(vec!["true".into()]),
        ..Default::default()
    };
    session
        .exec(request, None, &mut |_, _| {})
        .unwrap_or_else(|e| fail(&e.to_string()));
    let pid = vm_process::children()
        .first()
        .copied()
        .unwrap_or_else(|| fail("no device process found"));
    let m = mem::mem_use(pid).unwrap_or_else(|| fail("cannot read the device process's smaps"));
    print_memory("device process of a booted QEMU VM", &m);
    let _ = session.shutdown();
    drop(vm);
}
