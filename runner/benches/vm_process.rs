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
//! 4. What the jail costs (`vm_process/jail.rs`): each VM process
//!    started jailed against the same one with `jail: None` (as
//!    `RUNNER_JAIL=off` has it), start-up (median of 10 each) and memory
//!    (the jailed process plus its supervisor, PSS and page tables), as
//!    ratios. Run it in the nested tier for the kvm backend's figures:
//!    there /dev/kvm is real KVM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runner::session::wait_for_agent;
use runner_devices::block::{BlockConfig, BlockDevice, DiskMode};
use runner_devices::vsock::{VsockConfig, VsockDevice};
use runner_machine::vm_process::confinement::VmIds;
use runner_machine::vm_process::{
    self, DevicesRole, DiskRole, ProcessConfig, Role, VmProcess, VmmRole, VsockRole,
};
use runner_machine::{select, VmSpec, GUEST_CID, GUEST_CMDLINE};
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
        |dir| process(devices_role(dir, &rootfs), jail(dir, &rootfs, None)),
    );
    report("QEMU device servers (disk + vsock)", inside, outside);
    jail_cost(
        "QEMU device process",
        |dir| devices_role(dir, &rootfs),
        |dir| jail(dir, &rootfs, None),
    );

    if std::fs::File::open("/dev/kvm").is_ok() {
        let (inside, outside) = compare(
            ROUNDS / 2,
            |dir| vmm_in_process(dir, &kernel, &rootfs),
            |dir| {
                process(
                    vmm_role(dir, &kernel, &rootfs),
                    jail(dir, &rootfs, Some(&kernel)),
                )
            },
        );
        report("built-in VMM (Vmm::new + disk + vsock)", inside, outside);
        jail_cost(
            "kvm backend's VM process",
            |dir| vmm_role(dir, &kernel, &rootfs),
            |dir| jail(dir, &rootfs, Some(&kernel)),
        );
    } else {
        println!("built-in VMM: skipped, /dev/kvm does not open here");
    }

    device_process_memory(&rootfs);
}

/// The jail a VM process in `dir` gets; with a `kernel`, the built-in
/// VMM's (it reads the kernel and opens /dev/kvm).
fn jail(dir: &Path, rootfs: &Path, kernel: Option<&Path>) -> Option<vm_process::jail::JailConfig> {
    let mut reads = vec![rootfs.to_path_buf()];
    let mut writes = Vec::new();
    if let Some(kernel) = kernel {
        reads.push(kernel.to_path_buf());
        writes.push(PathBuf::from(runner_vmm::kvm_host::KVM_DEVICE));
    }
    vm_process::jail_for(dir, reads, writes).unwrap_or_else(|e| fail(&e))
}

/// Start-up and memory of the VM process with its jail against without.
fn jail_cost(
    what: &str,
    role: impl Fn(&Path) -> Role,
    jail: impl Fn(&Path) -> Option<vm_process::jail::JailConfig>,
) {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut with_mem, mut without_mem) = (None, None);
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
        let (took, memory) = process_and_memory(role(dir.path()), jail(dir.path()));
        with.push(took);
        with_mem = memory.or(with_mem);
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
        let (took, memory) = process_and_memory(role(dir.path()), None);
        without.push(took);
        without_mem = memory.or(without_mem);
    }
    with.sort();
    without.sort();
    let (with, without) = (with[with.len() / 2], without[without.len() / 2]);
    println!(
        "{what}: start-up jailed {:.2} ms, not jailed {:.2} ms: ratio {:.2} (median of {ROUNDS} each)",
        ms(with),
        ms(without),
        with.as_secs_f64() / without.as_secs_f64()
    );
    if let (Some(with), Some(without)) = (with_mem, without_mem) {
        let cost = |m: &mem::MemUse| (m.other_pss + m.page_tables) as f64 / 1024.0;
        println!(
            "{what}: memory beyond guest RAM (PSS + page tables, supervisor included) jailed \
             {:.2} MiB, not jailed {:.2} MiB: ratio {:.2}",
            cost(&with),
            cost(&without),
            cost(&with) / cost(&without)
        );
    }
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
            written_counter_fd: None,
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
        caches: Vec::new(),
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
        segment: None,
        snapshot: None,
        restore: None,
        disk,
        vsock,
        caches: Vec::new(),
        cache_slots: 0,
    }))
}

/// Starts a VM process with `role` (jailed in `jail`) until it is ready;
/// kills it.
fn process(role: Role, jail: Option<vm_process::jail::JailConfig>) -> Duration {
    process_and_memory(role, jail).0
}

/// Like [`process`], with the ready process's memory: the jailed process
/// and its supervisor together.
fn process_and_memory(
    role: Role,
    jail: Option<vm_process::jail::JailConfig>,
) -> (Duration, Option<mem::MemUse>) {
    let ids = VmIds::allocate().unwrap_or_else(|e| fail(&e));
    if let (Some(ids), Some(jail)) = (&ids, &jail) {
        vm_process::give_to(ids, &jail.dir, &[]).unwrap_or_else(|e| fail(&e));
    }
    let config = ProcessConfig {
        protocol: vm_process::PROTOCOL,
        name: "bench".into(),
        seccomp: vm_process::seccomp::mode_from_env().unwrap_or_else(|e| fail(&e)),
        jail,
        role,
    };
    let start = Instant::now();
    let mut process = VmProcess::start(&config, ids.as_ref(), u64::from(GUEST_MIB), 1, &[])
        .unwrap_or_else(|e| fail(&e.to_string()));
    let took = start.elapsed();
    let memory = match process.jailed_pid() {
        Some(jailed) => mem::mem_use(jailed)
            .zip(mem::mem_use(process.pid()))
            .map(|(a, b)| a.plus(&b)),
        None => mem::mem_use(process.pid()),
    };
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
    let (_, idle) = process_and_memory(
        devices_role(dir.path(), rootfs),
        jail(dir.path(), rootfs, None),
    );
    print_memory(
        "idle device process",
        &idle.unwrap_or_else(|| fail("cannot read the device process's smaps")),
    );
    let qemu = select::qemu_tcg_backend().unwrap_or_else(|e| fail(&e.to_string()));
    let spec = VmSpec {
        name: "bench-memory".into(),
        kernel: image("RUNNER_KERNEL"),
        rootfs: image("RUNNER_ROOTFS"),
        vcpus: 1,
        memory_mib: GUEST_MIB,
        boot_timeout: Duration::from_secs(120),
        serial_log_limit: None,
        network: Default::default(),
        segment: None,
        prepare: None,
        caches: Vec::new(),
    };
    let mut vm = qemu.start(&spec).unwrap_or_else(|e| fail(&e.to_string()));
    let mut session =
        wait_for_agent(vm.as_mut(), spec.boot_timeout).unwrap_or_else(|e| fail(&e.to_string()));
    let request = agent_protocol::ExecRequest {
        command: agent_protocol::Command::Argv(vec!["true".into()]),
        ..Default::default()
    };
    session
        .exec(request, None, &mut |_, _| {})
        .unwrap_or_else(|e| fail(&e.to_string()));
    let supervisor = vm_process::children()
        .first()
        .copied()
        .unwrap_or_else(|| fail("no device process found"));
    // The devices run in the jailed process, the supervisor's only child.
    let pid = runner_machine::process::children_of(supervisor as i32)
        .first()
        .map_or(supervisor, |&jailed| jailed as u32);
    let m = mem::mem_use(pid).unwrap_or_else(|| fail("cannot read the device process's smaps"));
    print_memory("device process of a booted QEMU VM", &m);
    let _ = session.shutdown();
    drop(vm);
}
