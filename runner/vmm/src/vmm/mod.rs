//! `Vmm`: builds a microVM from a [`VmmConfig`], runs it until something
//! ends it, and reports why.

mod restore;
mod run;
mod take_snapshot;
mod virtio;
mod virtio_slot;

pub use virtio_slot::VirtioSlot;

use std::fs::File;

use capped_log::CappedLog;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use linux_loader::loader::{load_cmdline, Cmdline};
use vm_memory::GuestAddress;
use vm_superio::serial::SerialState;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::loader::{load_kernel, EntryPoint};
use crate::boot::mptable;
use crate::boot::params::{self, E820Entry};
use crate::config::VmmConfig;
use crate::devices::{Bus, SerialConsole, SerialOutput, I8042};
use crate::error::{Error, Result};
use crate::kvm_host;
use crate::layout;
use crate::memory::{self, GuestMemoryMmap};

/// How often the controller checks whether every vCPU is parked for good.
const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest pulsed the CPU reset line through the i8042 (Linux
    /// `reboot`/`poweroff` with `reboot=k`). The normal way a job VM ends.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: usize },
    /// Every vCPU halted with interrupts disabled (or was never started):
    /// nothing can wake the guest again (Linux `halt`, a crashed guest).
    Halted,
    /// KVM reported a system event (shutdown = 1, reset = 2).
    SystemEvent { vcpu: usize, kind: u32 },
    /// The configured timeout elapsed first.
    Timeout(Duration),
    /// [`VmmHandle::stop`] was called.
    Stopped,
    /// KVM could not run the guest (entry failure, emulation failure...).
    VcpuFailed { vcpu: usize, detail: String },
    /// [`VmmHandle::snapshot`] was called and the snapshot was written.
    Snapshotted,
    /// [`VmmHandle::snapshot`] was called and saving failed; the vCPUs had
    /// stopped, so the VM ended all the same.
    SnapshotFailed(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest requested reset (i8042)"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            ExitReason::Halted => write!(f, "all vCPUs halted with interrupts disabled"),
            ExitReason::SystemEvent { vcpu, kind } => {
                write!(f, "KVM system event {kind} on vCPU {vcpu}")
            }
            ExitReason::Timeout(t) => write!(f, "timed out after {:.1}s", t.as_secs_f64()),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::VcpuFailed { vcpu, detail } => write!(f, "vCPU {vcpu} failed: {detail}"),
            ExitReason::Snapshotted => write!(f, "snapshot written"),
            ExitReason::SnapshotFailed(detail) => write!(f, "snapshot failed: {detail}"),
        }
    }
}

/// Durations measured from the start of [`Vmm::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BootTimings {
    /// Building the VM: memory, kernel load, boot structures, vCPU setup.
    pub build: Duration,
    /// Until the first return from KVM_RUN on any vCPU (the guest ran).
    pub first_exit: Option<Duration>,
    /// Until the guest wrote its first serial byte.
    pub first_serial_byte: Option<Duration>,
    /// Until the VM ended and every vCPU thread was joined.
    pub total: Duration,
}

/// How the run ended.
#[derive(Clone, Debug)]
pub struct VmExit {
    pub reason: ExitReason,
    pub timings: BootTimings,
}

/// Which boot protocol the kernel is entered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// ELF vmlinux with a Xen PVH note: 32-bit entry with `hvm_start_info`.
    Pvh,
    /// ELF vmlinux without PVH note: 64-bit entry with a zero page.
    Linux64Elf,
    /// bzImage: 64-bit entry of the decompressor with a zero page.
    BzImage,
    /// Not booted: restored from a snapshot ([`Vmm::restore`]).
    Snapshot,
}

/// Stops a running VM from any thread. `stop` and `snapshot` only store a
/// flag and write an eventfd, so a signal handler may call them.
#[derive(Clone)]
pub struct VmmHandle {
    evt: Arc<EventFd>,
    snapshot: Arc<AtomicBool>,
}

impl VmmHandle {
    /// Ends the VM with [`ExitReason::Stopped`].
    pub fn stop(&self) {
        let _ = self.evt.write(1);
    }

    /// Pauses the VM, writes a snapshot where its config says, and ends
    /// it with [`ExitReason::Snapshotted`] (or `SnapshotFailed`).
    pub fn snapshot(&self) {
        self.snapshot.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    fn new() -> Result<VmmHandle> {
        Ok(VmmHandle {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?),
            snapshot: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A built, not yet running microVM.
pub struct Vmm {
    config: VmmConfig,
    created: Instant,
    build_time: Duration,
    // Field order is drop order: vCPUs before the VM, the VM before memory.
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    _kvm: Kvm,
    mem: GuestMemoryMmap,
    /// The memfd, or the snapshot file a restored VM's memory maps.
    _memory_file: File,
    pio: Bus,
    mmio: Bus,
    virtio: Vec<virtio_slot::VirtioSlotState>,
    /// `None` for a restored VM: its memory already holds everything.
    entry: Option<EntryPoint>,
    serial: Arc<Mutex<SerialConsole>>,
    /// A restored VM's device states, applied in `run` once the caller has
    /// attached the same devices again.
    restored_devices: Option<Vec<crate::virtio_mmio::state::TransportState>>,
    /// Created at build time when the config asks for snapshots.
    snapshot_file: Option<File>,
    reset_evt: EventFd,
    _serial_irq: EventFd,
    first_serial_byte: Arc<OnceLock<Instant>>,
    handle: VmmHandle,
    cmdline: Cmdline,
    e820: Vec<E820Entry>,
    protocol: BootProtocol,
    hooks: ThreadHooks,
}

/// Code that runs on the VM's own threads before they serve the guest (the
/// runner installs its seccomp filters there). A hook that fails ends the
/// VM with its message.
pub type ThreadHook = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// The hooks [`Vmm::run`] calls, see [`Vmm::set_thread_hooks`].
#[derive(Clone, Default)]
pub struct ThreadHooks {
    /// First thing on every vCPU thread, before its first KVM_RUN.
    pub vcpu: Option<ThreadHook>,
    /// On the thread that called [`Vmm::run`] once every vCPU thread has
    /// been started, before the event loop serves the devices.
    pub event_loop: Option<ThreadHook>,
}

impl Vmm {
    /// Validates `config` and builds the VM. Nothing runs until [`Vmm::run`].
    pub fn new(config: VmmConfig) -> Result<Vmm> {
        let created = Instant::now();
        let num_vcpus = vcpu_count(&config)?;
        let cmdline =
            Cmdline::try_from(&config.kernel.cmdline, layout::CMDLINE_MAX_SIZE).map_err(|e| {
                Error::Cmdline(format!(
                    "{e} (at most {} bytes)",
                    layout::CMDLINE_MAX_SIZE - 1
                ))
            })?;
        let kvm = open_kvm_for(num_vcpus)?;
        let (mem, memfd) = memory::create_guest_memory(config.memory.size_mib)?;
        let kernel = load_kernel(&mem, config.memory.size_mib, &config.kernel.path)?;
        let vm = create_vm(&kvm)?;
        memory::register_with_kvm(&vm, &mem)?;

        let e820 = params::e820_table(&mem);
        let protocol = match &kernel.entry {
            EntryPoint::Pvh(_) => BootProtocol::Pvh,
            EntryPoint::Linux64 {
                setup_header: Some(_),
                ..
            } => BootProtocol::BzImage,
            EntryPoint::Linux64 { .. } => BootProtocol::Linux64Elf,
        };
        write_boot_data(&mem, &kernel.entry, &cmdline, &e820)?;
        mptable::write(&mem, num_vcpus)?;
        let legacy = Legacy::new(&vm, &config, None)?;

        // vCPUs.
        let supported: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let host = crate::x86::cpuid::HostQuirks {
            hide_cx16_and_xsave: kvm_host::is_pvm(),
            tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer),
        };
        if host.hide_cx16_and_xsave {
            tracing::info!("PVM host: hiding CX16 and XSAVE from the guest's CPUID");
        }
        let mut vcpus = Vec::with_capacity(num_vcpus);
        for index in 0..num_vcpus {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            crate::x86::configure_vcpu(
                &fd,
                index as u8,
                num_vcpus as u8,
                &supported,
                host,
                &mem,
                &kernel.entry,
            )?;
            vcpus.push(fd);
        }
        tracing::debug!(?protocol, entry = ?kernel.entry, "microVM built");
        Vmm::assemble(Parts {
            config,
            created,
            vcpus,
            vm,
            kvm,
            mem,
            memory_file: memfd,
            legacy,
            entry: Some(kernel.entry),
            restored_devices: None,
            cmdline,
            e820,
            protocol,
        })
    }

    /// The VM from what [`Vmm::new`] or [`Vmm::restore`] built.
    fn assemble(parts: Parts) -> Result<Vmm> {
        let snapshot_file = create_snapshot_file(&parts.config)?;
        Ok(Vmm {
            build_time: parts.created.elapsed(),
            config: parts.config,
            created: parts.created,
            vcpus: parts.vcpus,
            vm: parts.vm,
            _kvm: parts.kvm,
            mem: parts.mem,
            _memory_file: parts.memory_file,
            pio: parts.legacy.pio,
            mmio: Bus::new("mmio"),
            virtio: Vec::new(),
            entry: parts.entry,
            serial: parts.legacy.serial,
            restored_devices: parts.restored_devices,
            snapshot_file,
            reset_evt: parts.legacy.reset_evt,
            _serial_irq: parts.legacy.serial_irq,
            first_serial_byte: parts.legacy.first_serial_byte,
            handle: VmmHandle::new()?,
            cmdline: parts.cmdline,
            e820: parts.e820,
            protocol: parts.protocol,
            hooks: ThreadHooks::default(),
        })
    }

    /// Sets the hooks [`Vmm::run`] calls on its threads.
    pub fn set_thread_hooks(&mut self, hooks: ThreadHooks) {
        self.hooks = hooks;
    }

    /// A handle that stops the VM from another thread or a signal handler.
    pub fn handle(&self) -> VmmHandle {
        self.handle.clone()
    }

    /// The e820 map given to the guest (same in boot_params and PVH memmap).
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820
    }

    /// The exact kernel command line written to guest memory (the
    /// configured one plus a `virtio_mmio.device=` entry per device).
    pub fn cmdline(&self) -> String {
        self.cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn boot_protocol(&self) -> BootProtocol {
        self.protocol
    }

    /// For tests that look into the guest.
    #[cfg(feature = "testing")]
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

/// Writes the command line and the boot protocol's structures (zero page
/// or PVH start info, both carrying `e820`).
fn write_boot_data(
    mem: &GuestMemoryMmap,
    entry: &EntryPoint,
    cmdline: &Cmdline,
    e820: &[E820Entry],
) -> Result<()> {
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(|e| Error::BootSetup(format!("command line: {e}")))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    match entry {
        EntryPoint::Pvh(_) => {
            let (info, memmap) = params::build_pvh_info(e820);
            params::write_pvh_info(mem, &info, &memmap)
        }
        EntryPoint::Linux64 { setup_header, .. } => {
            let bp = params::build_boot_params(*setup_header, cmdline_len, e820)?;
            params::write_boot_params(mem, &bp)
        }
    }
}

/// The file [`VmmHandle::snapshot`] will write, if the config has one.
fn create_snapshot_file(config: &VmmConfig) -> Result<Option<File>> {
    config
        .snapshot
        .as_ref()
        .map(|s| crate::snapshot::file::create(&s.path))
        .transpose()
}

/// The configured vCPU count, within what the MP table describes.
fn vcpu_count(config: &VmmConfig) -> Result<usize> {
    let num_vcpus = usize::from(config.vcpus.num);
    if num_vcpus == 0 {
        return Err(Error::Config("at least one vCPU is needed".into()));
    }
    if num_vcpus > mptable::MAX_VCPUS {
        return Err(Error::Config(format!(
            "{num_vcpus} vCPUs requested; the MP table describes at most {}",
            mptable::MAX_VCPUS
        )));
    }
    Ok(num_vcpus)
}

/// Opens /dev/kvm and checks it has what every VM of ours needs.
fn open_kvm_for(num_vcpus: usize) -> Result<Kvm> {
    let kvm = kvm_host::open_kvm()?;
    check_vcpu_limit(num_vcpus, kvm.get_max_vcpus())?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmMissingCap(name));
        }
    }
    Ok(kvm)
}

/// A VM with its TSS and identity map, MSR forwarding, in-kernel irqchip
/// and PIT; no memory, no vCPUs yet.
fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    }
    if !crate::x86::msrs::forward_unbacked_msrs(kvm, &vm)? {
        tracing::debug!("this KVM cannot forward MSR accesses; PMU probes stay with KVM");
    }
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// What a booted or restored VM is made of, before [`Vmm::assemble`].
struct Parts {
    config: VmmConfig,
    created: Instant,
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemoryMmap,
    memory_file: File,
    legacy: Legacy,
    entry: Option<EntryPoint>,
    restored_devices: Option<Vec<crate::virtio_mmio::state::TransportState>>,
    cmdline: Cmdline,
    e820: Vec<E820Entry>,
    protocol: BootProtocol,
}

/// COM1 and the i8042 on a fresh PIO bus, with their eventfds.
struct Legacy {
    pio: Bus,
    serial: Arc<Mutex<SerialConsole>>,
    serial_irq: EventFd,
    reset_evt: EventFd,
    first_serial_byte: Arc<OnceLock<Instant>>,
}

impl Legacy {
    /// `serial_state`: a restored UART's registers; `None` for reset.
    fn new(vm: &VmFd, config: &VmmConfig, serial_state: Option<&SerialState>) -> Result<Legacy> {
        let serial_log = match &config.serial.log_path {
            Some(path) => Some(CappedLog::create(path, config.serial.log_limit).map_err(
                |source| Error::SerialLog {
                    path: path.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let output = SerialOutput::new(serial_log, config.serial.console);
        let first_serial_byte = output.first_byte_time();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        vm.register_irqfd(&serial_irq, layout::SERIAL_COM1_IRQ)
            .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
        let irq = serial_irq.try_clone().map_err(Error::io("eventfd clone"))?;
        let serial = match serial_state {
            None => SerialConsole::new(irq, output),
            Some(state) => SerialConsole::from_state(irq, output, state)?,
        };
        let serial = Arc::new(Mutex::new(serial));
        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        let i8042 = I8042::new(reset_evt.try_clone().map_err(Error::io("eventfd clone"))?);
        let mut pio = Bus::new("pio");
        pio.insert(serial.clone(), u64::from(layout::SERIAL_COM1_PORT), 8)
            .map_err(|e| Error::Config(e.to_string()))?;
        pio.insert(
            Arc::new(Mutex::new(i8042)),
            u64::from(layout::I8042_PORT),
            5,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Legacy {
            pio,
            serial,
            serial_irq,
            reset_evt,
            first_serial_byte,
        })
    }
}

/// Refuses more vCPUs than the host's KVM_CAP_MAX_VCPUS.
pub fn check_vcpu_limit(requested: usize, kvm_max: usize) -> Result<()> {
    if requested > kvm_max {
        return Err(Error::TooManyVcpus {
            requested,
            max: kvm_max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_and_handle_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        fn assert_sync<T: Sync>() {}
        assert_send::<Vmm>();
        assert_send::<VmmHandle>();
        assert_sync::<VmmHandle>();
    }

    #[test]
    fn vcpu_limit_is_enforced_with_a_clear_message() {
        assert!(check_vcpu_limit(4, 4).is_ok());
        let err = check_vcpu_limit(5, 4).unwrap_err().to_string();
        assert_eq!(
            err,
            "5 vCPUs requested but this host's KVM allows at most 4"
        );
    }
}
