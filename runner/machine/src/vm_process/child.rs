//! Inside a VM process (`runner __vm-process`): read the config, set up the
//! VM or the device servers, install the seccomp filters, say `ready`, run.
//!
//! Threads and their filters:
//!
//! - built-in VMM: each vCPU thread installs the vCPU filter before its
//!   first KVM_RUN; the main thread runs the event loop (the devices) and
//!   installs the event-loop filter once the vCPU threads are started;
//! - device process: the main thread starts the vhost-user servers, then
//!   installs the vhost-user filter on every thread at once (TSYNC; threads
//!   the servers start later inherit it), then its own, narrower one on top.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use runner_devices::block::{BlockConfig, BlockDevice, Disk, DiskMode};
use runner_devices::net::{NetConfig, NetDevice};
use runner_devices::vsock::{VsockConfig, VsockDevice};
use runner_vhost::block::{BlockServer, BlockServerConfig};
use runner_vhost::vsock::{VsockServer, VsockServerConfig};
use runner_vmm::{
    KernelConfig, MemoryConfig, SerialConfig, SnapshotConfig, VcpuConfig, Vmm, VmmConfig,
};

use super::cache_disks::{self, CacheRole};
use super::seccomp::{self, Filters, Mode, ThreadKind};
use super::{DevicesRole, ProcessConfig, Role, VmmRole, PROTOCOL};
use crate::network::GUEST_MAC;

/// A test hook, read only here: `<vm name>:<milliseconds>` makes the VM of
/// that name perform a disallowed syscall from a thread under its device
/// filter that long after its filters are in place. The seccomp tests use
/// it to prove that the kill stays inside that VM's process.
pub const TEST_HOOK_ENV: &str = "RUNNER_TEST_HOOK_SECCOMP_VIOLATION";

/// A test hook: the VM of the name this names probes its jail right after
/// entering it (it opens /etc/passwd and connects to an internet address,
/// logging what happened: both must fail), then, once its filters are in
/// place, makes an internet socket, which kills it. The jail tests use it.
pub const TEST_HOOK_JAIL_ENV: &str = "RUNNER_TEST_HOOK_JAIL_PROBE";

/// Runs the VM process; returns its exit code.
pub fn main() -> i32 {
    cap_malloc_arenas();
    let mut status = std::io::stdout().lock();
    let mut say = move |line: &str| {
        // The runner may be gone; nothing to do about it then.
        let _ = writeln!(status, "{line}");
        let _ = status.flush();
    };
    let config = match read_config() {
        Ok(config) => config,
        Err(e) => {
            say(&format!("error {e}"));
            return 2;
        }
    };
    // First of all, while this process has one thread (see `jail`).
    if let Some(jail) = &config.jail {
        // The jail has no /sys: learn the host's KVM kind while it is in view.
        runner_vmm::kvm_host::is_pvm();
        if let Err(e) = super::jail::enter(jail) {
            say(&format!("error {e}"));
            return 1;
        }
        if jail_probe_named(&config.name) {
            probe_jail();
        }
    }
    tracing::debug!(vm = %config.name, seccomp = ?config.seccomp, "VM process starting");
    let result = match &config.role {
        Role::Vmm(role) => run_vmm(&config, role, &mut say),
        Role::Devices(role) => run_devices(&config, role, &mut say),
        // Switch until every member left.
        Role::Switch(role) => lock_down_for(&config, ThreadKind::Switch)
            .and_then(|lock_down| super::switch::serve(role, lock_down, &mut say)),
        // Relay until the guest or passt went away.
        Role::Egress(role) => lock_down_for(&config, ThreadKind::Egress)
            .and_then(|lock_down| super::egress::serve(role, lock_down, &mut say)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("error {}", e.replace('\n', " ")));
            1
        }
    }
}

/// Most malloc arenas the process's threads may create. Past 8 arenas
/// glibc counts the host's CPUs, by opening `/sys/devices/system/cpu/online`
/// from whichever thread needs one more: a file the jail does not have,
/// through a syscall no thread's seccomp filter allows (a VM with a few
/// cache disks has that many threads). With a limit set, it never counts.
const MALLOC_ARENAS: libc::c_int = 8;

fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets a malloc parameter; called before any
    // thread is started.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
        tracing::warn!("cannot cap malloc's arenas; a busy VM process may be killed by seccomp");
    }
}

fn read_config() -> Result<ProcessConfig, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("the VM process could not read its config: {e}"))?;
    let config: ProcessConfig = serde_json::from_str(&text).map_err(|e| {
        format!("the VM process could not parse its config ({e}); is it an older runner binary?")
    })?;
    if config.protocol != PROTOCOL {
        return Err(format!(
            "the VM process speaks protocol {PROTOCOL}, the runner {}: they are different builds",
            config.protocol
        ));
    }
    Ok(config)
}

fn filters(config: &ProcessConfig, kinds: &[ThreadKind]) -> Result<Option<Arc<Filters>>, String> {
    match config.seccomp {
        Mode::On => {}
        Mode::Off => {
            tracing::warn!(
                "{}=off: this VM process runs without seccomp filters",
                seccomp::ENV
            );
            return Ok(None);
        }
        Mode::Log => tracing::warn!(
            "{}=log: disallowed syscalls are only logged by the kernel (dmesg)",
            seccomp::ENV
        ),
    }
    Filters::compile(kinds, config.seccomp)
        .map(|f| Some(Arc::new(f)))
        .map_err(|e| e.to_string())
}

/// The built-in VMM: set up, then run until the guest or the runner ends it.
fn run_vmm(
    config: &ProcessConfig,
    role: &VmmRole,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let vmm_config = VmmConfig {
        kernel: KernelConfig {
            path: role.kernel.clone(),
            cmdline: role.cmdline.clone(),
        },
        memory: MemoryConfig {
            size_mib: role.memory_mib,
        },
        vcpus: VcpuConfig { num: role.vcpus },
        serial: SerialConfig {
            log_path: Some(role.serial_log.clone()),
            log_limit: role.serial_log_limit,
            console: false,
        },
        // The runner enforces boot and job timeouts; it kills this process.
        timeout: None,
        snapshot: role.snapshot.as_ref().map(|s| SnapshotConfig {
            path: s.path.clone(),
            identity: s.identity.clone(),
        }),
    };
    let mut vmm = match &role.restore {
        Some(from) => Vmm::restore(
            vmm_config,
            &SnapshotConfig {
                path: from.path.clone(),
                identity: from.identity.clone(),
            },
        ),
        None => Vmm::new(vmm_config),
    }
    .map_err(vmm_error)?;
    // The root disk first: it gets the first virtio-mmio window.
    let disk = BlockDevice::new(BlockConfig {
        image: role.disk.image.clone(),
        mode: DiskMode::Overlay {
            dir: Some(role.disk.overlay_dir.clone()),
        },
        serial: role.disk.serial.clone(),
    })
    .map_err(|e| format!("kvm backend: root disk: {e}"))?;
    if let Some(fd) = role.disk.written_counter_fd {
        disk.stats().mirror_written(written_counter(fd)?);
    }
    vmm.add_virtio_device(Box::new(disk)).map_err(vmm_error)?;
    let vsock = VsockDevice::new(VsockConfig::new(role.vsock.guest_cid, &role.vsock.uds))
        .map_err(|e| format!("kvm backend: vsock device: {e}"))?;
    vmm.add_virtio_device(Box::new(vsock)).map_err(vmm_error)?;
    // The caches' descriptors are theirs: a NIC may not name one.
    let mut taken: HashSet<i32> = role
        .caches
        .iter()
        .flat_map(|c| [c.base_fd, c.layer_fd])
        .collect();
    // passt keeps the guest's flows: that NIC cannot be restored onto
    // another. A segment's switch answers from its own table: it can.
    if let Some(net) = &role.network {
        let nic = inherited_nic(net.fd, GUEST_MAC, false, "", &mut taken)?;
        vmm.add_virtio_device(Box::new(nic)).map_err(vmm_error)?;
    }
    if let Some(segment) = &role.segment {
        let nic = inherited_nic(segment.fd, segment.mac, true, "segment ", &mut taken)?;
        vmm.add_virtio_device(Box::new(nic)).map_err(vmm_error)?;
    }
    // The caches last: the root disk stays the guest's first disk.
    for device in cache_devices(role)? {
        vmm.add_virtio_device(Box::new(device)).map_err(vmm_error)?;
    }
    tracing::debug!(vm = %config.name, cmdline = %vmm.cmdline(), "starting the built-in VMM");

    let filters = filters(config, &[ThreadKind::Vcpu, ThreadKind::EventLoop])?;
    let test_hook = TestHook::start(config, filters.clone().map(|f| (f, ThreadKind::EventLoop)));
    if let Some(filters) = filters {
        let vcpu = filters.clone();
        vmm.set_thread_hooks(runner_vmm::ThreadHooks {
            vcpu: Some(Arc::new(move || {
                seccomp::apply(ThreadKind::Vcpu, vcpu.get(ThreadKind::Vcpu))
                    .map_err(|e| e.to_string())
            })),
            event_loop: Some(Arc::new(move || {
                seccomp::apply(ThreadKind::EventLoop, filters.get(ThreadKind::EventLoop))
                    .map_err(|e| e.to_string())?;
                test_hook.arm();
                Ok(())
            })),
        });
    }
    if role.snapshot.is_some() {
        // VmmHandle::snapshot only stores a flag and writes an eventfd:
        // safe in a signal handler, on whichever thread takes the signal.
        let handle = vmm.handle();
        // SAFETY: the closure does only async-signal-safe work (above).
        unsafe {
            signal_hook::low_level::register(libc::SIGUSR1, move || handle.snapshot())
                .map_err(|e| format!("kvm backend: installing the snapshot signal: {e}"))?;
        }
    }
    say("ready");
    let exit = vmm
        .run()
        .map_err(|e| format!("the VMM failed: {}", e.to_string().replace('\n', " ")))?;
    tracing::debug!(reason = %exit.reason, timings = ?exit.timings, "VM ended");
    say(&format!("exit {}", exit.reason));
    Ok(())
}

/// A cache volume's block device config, from the files the runner gave.
fn cache_config(role: &CacheRole, taken: &mut HashSet<i32>) -> Result<BlockConfig, String> {
    let (base, layer) = cache_disks::take(role, taken)?;
    Ok(BlockConfig::layer(&role.base, base, layer).with_serial(role.serial.clone()))
}

/// The kvm backend's cache disks: one per cache; or, with snapshots,
/// [`VmmRole::cache_slots`] empty slots, the caches to be attached to the
/// first of them once the snapshot is restored.
fn cache_devices(role: &VmmRole) -> Result<Vec<BlockDevice>, String> {
    let mut taken = HashSet::new();
    let fail = |e: &dyn std::fmt::Display| format!("kvm backend: cache disk: {e}");
    if role.cache_slots == 0 {
        return role
            .caches
            .iter()
            .map(|cache| {
                let config = cache_config(cache, &mut taken)?;
                BlockDevice::new(config).map_err(|e| fail(&e))
            })
            .collect();
    }
    if role.caches.len() > role.cache_slots || (role.restore.is_none() && !role.caches.is_empty()) {
        return Err(fail(&format!(
            "{} caches for {} slots{}: a cache goes into a slot only after a restore",
            role.caches.len(),
            role.cache_slots,
            if role.restore.is_none() {
                " without a restore"
            } else {
                ""
            }
        )));
    }
    (0..role.cache_slots)
        .map(|index| {
            let serial = cache_disks::slot_serial(index);
            let disk = match role.caches.get(index) {
                Some(cache) if cache.serial != serial => {
                    return Err(fail(&format!(
                        "cache {} cannot go into slot {serial}",
                        cache.serial
                    )))
                }
                Some(cache) => {
                    let config = cache_config(cache, &mut taken)?;
                    Some(Disk::open(&config.image, &config.mode).map_err(|e| fail(&e))?)
                }
                None => None,
            };
            BlockDevice::slot(&serial, disk).map_err(|e| fail(&e))
        })
        .collect()
}

/// The root disk's write counter the runner passed (`write_counter`).
fn written_counter(fd: i32) -> Result<&'static std::sync::atomic::AtomicU64, String> {
    if fd < 3 {
        return Err(format!(
            "the disk's write counter has a bad descriptor {fd}"
        ));
    }
    crate::write_counter::map_for_device(fd)
}

/// A NIC on a socket the runner passed: its egress process or its
/// segment's switch holds the other end and enforces the rules.
fn inherited_nic(
    fd: i32,
    mac: [u8; 6],
    restorable: bool,
    what: &str,
    taken: &mut HashSet<i32>,
) -> Result<NetDevice, String> {
    if fd < 3 || !taken.insert(fd) {
        return Err(format!(
            "kvm backend: the {what}NIC has a bad descriptor {fd}"
        ));
    }
    // SAFETY: the runner passed this descriptor for this NIC alone
    // (checked above against every other one it passed).
    let backend = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    NetDevice::new(NetConfig {
        backend,
        mac,
        restorable,
    })
    .map_err(|e| format!("kvm backend: {what}network device: {e}"))
}

/// VMM build errors (no /dev/kvm, not a kernel, too little memory, too
/// many vCPUs...) already carry their fix; keep them on one line.
/// A VMM error as the VM process reports it: one line.
pub(crate) fn vmm_error(e: runner_vmm::Error) -> String {
    format!("kvm backend: {}", e.to_string().replace('\n', " "))
}

/// The vhost-user servers of a QEMU VM: serve until QEMU goes away.
fn run_devices(
    config: &ProcessConfig,
    role: &DevicesRole,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let mut disk = None;
    if let Some(d) = &role.disk {
        let socket = role_socket(d.socket.as_deref(), "disk")?;
        let mut server_config = BlockServerConfig::overlay(socket, &d.image);
        server_config.mode = DiskMode::Overlay {
            dir: Some(d.overlay_dir.clone()),
        };
        server_config.serial = d.serial.clone();
        let server = BlockServer::start(server_config)
            .map_err(|e| format!("starting the root disk: {e}"))?;
        if let Some(fd) = d.written_counter_fd {
            server.mirror_written(written_counter(fd)?);
        }
        disk = Some(server);
    }
    let mut caches = Vec::new();
    let mut taken = HashSet::new();
    for cache in &role.caches {
        let config = cache_config(cache, &mut taken)?;
        let socket = role_socket(cache.socket.as_deref(), &cache.serial)?;
        let server = BlockServer::start(BlockServerConfig {
            socket_path: socket.to_path_buf(),
            image: config.image,
            mode: config.mode,
            serial: config.serial,
        })
        .map_err(|e| format!("starting cache disk {}: {e}", cache.serial))?;
        caches.push(server);
    }
    let mut vsock = None;
    if let Some(v) = &role.vsock {
        let server = VsockServer::start(VsockServerConfig {
            socket_path: role_socket(v.socket.as_deref(), "vsock")?.to_path_buf(),
            uds_path: v.uds.clone(),
            guest_cid: v.guest_cid,
        })
        .map_err(|e| format!("starting the vsock device: {e}"))?;
        vsock = Some(server);
    }

    let filters = filters(config, &[ThreadKind::VhostUser, ThreadKind::DeviceMain])?;
    // Started before the filters go on: it gets the vhost-user filter with
    // every other thread.
    let test_hook = TestHook::start(config, None);
    if let Some(filters) = &filters {
        let clone3 = seccomp::compile_clone3_refusal().map_err(|e| e.to_string())?;
        seccomp::apply_all_threads(ThreadKind::VhostUser, &clone3).map_err(|e| e.to_string())?;
        seccomp::apply_all_threads(ThreadKind::VhostUser, filters.get(ThreadKind::VhostUser))
            .map_err(|e| e.to_string())?;
        seccomp::apply(ThreadKind::DeviceMain, filters.get(ThreadKind::DeviceMain))
            .map_err(|e| e.to_string())?;
    }
    test_hook.arm();
    say("ready");
    // QEMU's end of the sockets closing is how a VM normally ends; the
    // runner kills this process in any case.
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let finished = disk.as_ref().is_none_or(BlockServer::is_finished)
            && vsock.as_ref().is_none_or(VsockServer::is_finished)
            && caches.iter().all(BlockServer::is_finished);
        if finished {
            say("exit the devices' frontend disconnected");
            // Without the servers' teardown: the runner removes the VM
            // directory, and the filters need not allow what it would do.
            std::process::exit(0);
        }
    }
}

/// The seccomp filter of a one-thread role (the segment's switch, a
/// NIC's egress process), to put on once its set-up is done.
fn lock_down_for(
    config: &ProcessConfig,
    kind: ThreadKind,
) -> Result<impl FnOnce() -> Result<(), String>, String> {
    let filters = filters(config, &[kind])?;
    Ok(move || match &filters {
        Some(filters) => seccomp::apply(kind, filters.get(kind)).map_err(|e| e.to_string()),
        None => Ok(()),
    })
}

fn role_socket<'a>(socket: Option<&'a Path>, what: &str) -> Result<&'a Path, String> {
    socket.ok_or_else(|| format!("the {what} device has no vhost-user socket in the config"))
}

fn jail_probe_named(vm: &str) -> bool {
    std::env::var(TEST_HOOK_JAIL_ENV).is_ok_and(|name| name == vm)
}

/// The first half of the jail probe (see [`TEST_HOOK_JAIL_ENV`]).
fn probe_jail() {
    let open = match std::fs::File::open("/etc/passwd") {
        Ok(_) => "it opened".to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!("jail probe: open /etc/passwd: {open}");
    let address = std::net::SocketAddr::from(([1, 1, 1, 1], 53));
    let connect = match std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
        Ok(_) => "it connected".to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!("jail probe: connect to {address}: {connect}");
}

/// The seccomp test hook (see [`TEST_HOOK_ENV`]): a thread that waits to be
/// armed, then for its delay, then makes [`seccomp::TEST_FORBIDDEN_SYSCALL`]
/// (or, for the jail probe, an internet socket).
struct TestHook {
    arm: Option<mpsc::Sender<()>>,
}

impl TestHook {
    /// Starts the hook thread if the hook names this VM. `filter` is one
    /// the thread installs on itself first (where no TSYNC gives it one).
    fn start(config: &ProcessConfig, filter: Option<(Arc<Filters>, ThreadKind)>) -> TestHook {
        let jail_probe = jail_probe_named(&config.name);
        let Some(delay) = test_hook_delay(&config.name).or(jail_probe.then_some(Duration::ZERO))
        else {
            return TestHook { arm: None };
        };
        tracing::warn!(vm = %config.name, "{TEST_HOOK_ENV}: this VM will make a disallowed syscall");
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("test-hook".into())
            .spawn(move || {
                if rx.recv().is_err() {
                    return;
                }
                std::thread::sleep(delay);
                if let Some((filters, kind)) = &filter {
                    if seccomp::apply(*kind, filters.get(*kind)).is_err() {
                        return;
                    }
                }
                // SAFETY: harmless syscalls; under the filters they kill
                // this process, which is the point.
                unsafe {
                    if jail_probe {
                        libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
                    } else {
                        libc::syscall(seccomp::TEST_FORBIDDEN_SYSCALL, libc::PRIO_PROCESS, 0);
                    }
                }
            });
        TestHook {
            arm: spawned.ok().map(|_| tx),
        }
    }

    fn arm(&self) {
        if let Some(tx) = &self.arm {
            let _ = tx.send(());
        }
    }
}

/// The hook's delay, if [`TEST_HOOK_ENV`] names `vm`.
fn test_hook_delay(vm: &str) -> Option<Duration> {
    let value = std::env::var(TEST_HOOK_ENV).ok()?;
    let (name, ms) = value.rsplit_once(':')?;
    (name == vm).then_some(())?;
    ms.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_dev_kvm_is_one_line_with_the_fix() {
        for (errno, fix) in [(libc::EACCES, "kvm` group"), (libc::ENOENT, "modprobe")] {
            let err = runner_vmm::Error::KvmUnavailable {
                source: std::io::Error::from_raw_os_error(errno),
                hint: runner_vmm::kvm_host::open_hint(errno),
            };
            let msg = vmm_error(err);
            assert!(
                msg.starts_with("kvm backend: cannot open /dev/kvm"),
                "{msg}"
            );
            assert!(msg.contains(fix) && !msg.contains('\n'), "{msg}");
        }
    }
}
