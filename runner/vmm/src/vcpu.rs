//! vCPU threads: each runs KVM_RUN in a loop, hands PIO/MMIO exits to the
//! buses and reports anything that ends the VM to the controller.
//!
//! A vCPU blocked in KVM_RUN (or halted inside KVM) is interrupted with a
//! thread-directed real-time signal. The handler sets `immediate_exit` in
//! the thread's `kvm_run` page, so a kick that lands while the thread is in
//! user space still makes the next KVM_RUN return at once (no lost wakeups).
//!
//! For a snapshot the controller first *pauses* every vCPU: each leaves
//! KVM_RUN at an instruction boundary, reports [`VcpuEvent::Paused`] and
//! waits. Only once all of them are out does anything get saved, so no
//! guest code runs (no IPI is sent, no queue is kicked) between the first
//! vCPU's save and the last device's. A paused vCPU is then told to save
//! itself, to run on, or to stop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_run, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::Bus;
use crate::snapshot::vcpu_state::VcpuState;
use crate::vmm::ExitReason;

/// KVM_SYSTEM_EVENT types (include/uapi/linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
/// RFLAGS.IF
const RFLAGS_IF: u64 = 1 << 9;

/// Why a vCPU thread stopped running the guest.
pub enum VcpuEvent {
    /// KVM_EXIT_SHUTDOWN: the vCPU triple-faulted.
    TripleFault,
    /// KVM_EXIT_HLT (only without an in-kernel LAPIC).
    Halted,
    /// KVM_SYSTEM_EVENT shutdown or reset.
    SystemEvent { kind: u32 },
    /// KVM could not run the guest: entry failure, internal (emulation)
    /// error, or an exit the VMM cannot handle.
    Failed(String),
    /// The controller asked the thread to stop.
    Stopped,
    /// The controller asked the thread to pause: it left KVM_RUN and waits
    /// to be told to save, run on, or stop.
    Paused,
    /// The controller asked for a snapshot: the thread stopped running the
    /// guest for good and saved its vCPU.
    Saved(Box<VcpuState>),
}

impl VcpuEvent {
    /// How the VM ended if vCPU `vcpu` reported this; `None` for the
    /// events that only answer a pause or a save.
    pub(crate) fn exit_reason(self, vcpu: usize) -> Option<ExitReason> {
        match self {
            VcpuEvent::TripleFault => Some(ExitReason::TripleFault { vcpu }),
            VcpuEvent::Halted => Some(ExitReason::Halted),
            VcpuEvent::SystemEvent { kind } => Some(ExitReason::SystemEvent { vcpu, kind }),
            VcpuEvent::Failed(detail) => Some(ExitReason::VcpuFailed { vcpu, detail }),
            // Only asked for by `try_snapshot`, which collects these itself.
            VcpuEvent::Stopped | VcpuEvent::Paused | VcpuEvent::Saved(_) => None,
        }
    }
}

/// What a halt probe found (see `VcpuControl::probe`).
pub const PROBE_PENDING: u8 = 0;
pub const PROBE_RUNNING: u8 = 1;
/// Halted with interrupts disabled, or an AP never started: only an
/// NMI/INIT could wake it, and nothing in this VM sends one.
pub const PROBE_PARKED: u8 = 2;

/// What the controller wants a vCPU thread to do (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Directive {
    Run,
    /// Leave KVM_RUN, report `Paused`, and wait for the next directive.
    Pause,
    /// Save the vCPU, report `Saved`, and end the thread.
    Save,
}

/// Shared between a vCPU thread and the controller.
pub struct VcpuControl {
    stop: AtomicBool,
    directive: Mutex<Directive>,
    /// Wakes a paused thread when the directive changes or it must stop.
    changed: Condvar,
    probe_requested: AtomicBool,
    probe_result: AtomicU8,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            stop: AtomicBool::new(false),
            directive: Mutex::new(Directive::Run),
            changed: Condvar::new(),
            probe_requested: AtomicBool::new(false),
            probe_result: AtomicU8::new(PROBE_PENDING),
        }
    }
}

impl VcpuControl {
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Under the lock, so a thread about to wait cannot miss it.
        let _directive = self.lock();
        self.changed.notify_all();
    }
    /// Asks the thread to pause at its next kick (see the module docs).
    pub fn request_pause(&self) {
        self.set(Directive::Pause);
    }
    /// Lets a paused thread run the guest again.
    pub fn request_resume(&self) {
        self.set(Directive::Run);
    }
    /// Asks a paused thread (or, at its next kick, a running one) to save
    /// its vCPU and stop.
    pub fn request_save(&self) {
        self.set(Directive::Save);
    }
    /// Asks the thread to report its run state at its next kick.
    pub fn request_probe(&self) {
        self.probe_result.store(PROBE_PENDING, Ordering::SeqCst);
        self.probe_requested.store(true, Ordering::SeqCst);
    }
    pub fn probe_result(&self) -> u8 {
        self.probe_result.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directive> {
        self.directive.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, directive: Directive) {
        *self.lock() = directive;
        self.changed.notify_all();
    }

    fn directive(&self) -> Directive {
        *self.lock()
    }

    /// Waits while the directive is `Pause`; `None` if the thread must stop.
    fn wait_while_paused(&self) -> Option<Directive> {
        let mut directive = self.lock();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if *directive != Directive::Pause {
                return Some(*directive);
            }
            directive = self
                .changed
                .wait(directive)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: one volatile store into this thread's
    // own kvm_run mapping, which outlives the thread's run loop.
    let ptr = KVM_RUN_PTR.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: `ptr` is this thread's kvm_run mmap, set by `run_loop`
        // and cleared before the VcpuFd is dropped.
        unsafe { std::ptr::addr_of_mut!((*ptr).immediate_exit).write_volatile(1) };
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Makes kicks of the current thread set `immediate_exit` in `run`, the
/// thread's `kvm_run` page (null to stop). The page must stay mapped while
/// it is the target.
pub(crate) fn set_kick_target(run: *mut kvm_run) {
    KVM_RUN_PTR.with(|p| p.set(run));
}

pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    static RESULT: OnceLock<Option<i32>> = OnceLock::new();
    INSTALL.call_once(|| {
        let r = register_signal_handler(kick_signal(), kick_handler).err();
        let _ = RESULT.set(r.map(|e| e.errno()));
    });
    match RESULT.get().copied().flatten() {
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => Ok(()),
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuRunner {
    pub index: usize,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    pub events: mpsc::Sender<(usize, VcpuEvent)>,
    pub events_ready: Arc<EventFd>,
    /// Set by the first vCPU to come back from KVM_RUN: proof the guest ran.
    pub first_exit: Arc<OnceLock<Instant>>,
    /// Runs first on the thread (see [`crate::ThreadHooks`]).
    pub hook: Option<crate::ThreadHook>,
    /// The MSRs a snapshot saves.
    pub msr_list: Arc<Vec<u32>>,
}

/// A started vCPU thread.
pub struct VcpuThread {
    pub control: Arc<VcpuControl>,
    handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Interrupts KVM_RUN so the thread looks at its control flags.
    pub fn kick(&self) {
        if let Err(e) = self.handle.kill(kick_signal()) {
            tracing::warn!("kicking vCPU thread failed: {e}");
        }
    }

    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

/// Starts the thread for one vCPU.
pub fn spawn(runner: VcpuRunner) -> std::io::Result<VcpuThread> {
    install_kick_handler()?;
    let control = runner.control.clone();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{}", runner.index))
        .spawn(move || runner.run())?;
    Ok(VcpuThread { control, handle })
}

impl VcpuRunner {
    fn run(mut self) {
        // The kick signal may be blocked in the thread that spawned us.
        let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
        set_kick_target(self.fd.get_kvm_run());
        let event = match self.hook.as_ref().map(|hook| hook()) {
            Some(Err(e)) => VcpuEvent::Failed(format!("setting up the vCPU thread: {e}")),
            _ => self.run_loop(),
        };
        set_kick_target(std::ptr::null_mut());
        self.report(event);
    }

    fn report(&self, event: VcpuEvent) {
        let _ = self.events.send((self.index, event));
        let _ = self.events_ready.write(1);
    }

    fn save(&self) -> VcpuEvent {
        match VcpuState::save(&self.fd, &self.msr_list) {
            Ok(state) => VcpuEvent::Saved(Box::new(state)),
            Err(e) => VcpuEvent::Failed(format!("saving the vCPU: {e}")),
        }
    }

    fn run_loop(&mut self) -> VcpuEvent {
        loop {
            if self.control.stop.load(Ordering::SeqCst) {
                return VcpuEvent::Stopped;
            }
            let result = self.fd.run();
            self.first_exit.get_or_init(Instant::now);
            match result {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::X86Rdmsr(exit)) => crate::x86::msrs::handle_read(exit),
                Ok(VcpuExit::X86Wrmsr(exit)) => crate::x86::msrs::handle_write(exit),
                Ok(VcpuExit::Hlt) => return VcpuEvent::Halted,
                Ok(VcpuExit::Shutdown) => return VcpuEvent::TripleFault,
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    if kind == SYSTEM_EVENT_SHUTDOWN || kind == SYSTEM_EVENT_RESET {
                        return VcpuEvent::SystemEvent { kind };
                    }
                    return VcpuEvent::Failed(format!("KVM system event {kind}"));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuEvent::Failed(format!(
                        "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on cpu {cpu}"
                    ));
                }
                Ok(VcpuExit::InternalError) => return VcpuEvent::Failed(self.internal_error()),
                Ok(VcpuExit::Intr) => {}
                Ok(other) => {
                    return VcpuEvent::Failed(format!("unexpected KVM exit {other:?}"));
                }
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    // This KVM_RUN completed any pending port/MMIO access
                    // before returning: the vCPU is at an instruction
                    // boundary, the only point its state may be saved.
                    match self.control.directive() {
                        Directive::Run => {}
                        Directive::Save => return self.save(),
                        Directive::Pause => {
                            self.report(VcpuEvent::Paused);
                            match self.control.wait_while_paused() {
                                None => return VcpuEvent::Stopped,
                                Some(Directive::Save) => return self.save(),
                                Some(_) => {}
                            }
                        }
                    }
                    if self.control.probe_requested.swap(false, Ordering::SeqCst) {
                        let state = self.probe_state();
                        self.control.probe_result.store(state, Ordering::SeqCst);
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN => {}
                Err(e) => return VcpuEvent::Failed(format!("KVM_RUN: {e}")),
            }
        }
    }

    /// Decodes KVM_EXIT_INTERNAL_ERROR, naming the emulation failure case.
    fn internal_error(&mut self) -> String {
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
        // the active member of the union.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let what = match suberror {
            1 => "instruction emulation failed",
            2 => "exception while delivering an event",
            3 => "unexpected exit during event delivery",
            _ => "internal error",
        };
        format!("KVM_EXIT_INTERNAL_ERROR suberror {suberror} ({what}) at rip {rip:#x}")
    }

    fn probe_state(&self) -> u8 {
        let Ok(mp) = self.fd.get_mp_state() else {
            return PROBE_RUNNING;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => PROBE_PARKED,
            KVM_MP_STATE_HALTED => match self.fd.get_regs() {
                Ok(regs) if regs.rflags & RFLAGS_IF == 0 => PROBE_PARKED,
                _ => PROBE_RUNNING,
            },
            _ => PROBE_RUNNING,
        }
    }
}
