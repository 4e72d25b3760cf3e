//! The `kvm` backend with the real project kernel (RUNNER_KERNEL) and
//! rootfs (RUNNER_ROOTFS); `scripts/test` provides both.
//!
//! On a PVM host (no VT-x/AMD-V, see `runner doctor`) guest ring 0 is
//! emulated: the kernel prints its early console within tens of seconds and
//! then stops. These tests assert what holds everywhere: the boot contract
//! on the console, a clear boot error instead of a hang, and a complete,
//! prompt teardown.
//!
//! The tests look at this process's children, so they run one at a time.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{require_kvm, spec, vm_processes};
use runner::session::wait_for_agent;
use runner_machine::kvm::{KvmBackend, KvmVm};
use runner_machine::{Backend, BootError, Vm, GUEST_CMDLINE};
use runner_vmm::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};

/// How long the early console may take (emulated ring 0 on a loaded
/// 2-core machine prints it after about 20 s; hardware in milliseconds).
const CONSOLE_BUDGET: Duration = Duration::from_secs(120);
/// How long dropping a VM may take: stop the vCPUs, join every thread,
/// remove the directory.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(10);
/// Virtio devices the backend attaches (root disk, vsock), in attach order.
const VIRTIO_DEVICES: u64 = 2;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// GUEST_CMDLINE plus the entry the VMM appends for each virtio device.
fn expected_cmdline() -> String {
    let mut cmdline = GUEST_CMDLINE.to_string();
    for i in 0..VIRTIO_DEVICES {
        cmdline.push_str(&format!(
            " virtio_mmio.device=4K@{:#x}:{}",
            VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE,
            VIRTIO_IRQ_BASE + i as u32
        ));
    }
    cmdline
}

/// Waits until the log holds the banner and the whole `Command line: `
/// line; returns the log.
fn wait_for_console(vm: &mut KvmVm) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
        // The whole line: the log may be read while the guest writes it.
        let cmdline_line_done = log
            .split_once("Command line: ")
            .is_some_and(|(_, rest)| rest.contains('\n'));
        if log.contains("Linux version") && cmdline_line_done {
            return log;
        }
        if let Some(status) = vm.exited() {
            panic!("the VM ended before its early console ({status}):\n{log}");
        }
        assert!(
            start.elapsed() < CONSOLE_BUDGET,
            "no banner and command line within {CONSOLE_BUDGET:?}; console so far:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drops `vm` and checks that everything it made is gone, in bounded time.
fn drop_and_check_teardown(vm: KvmVm) {
    let dir = vm.dir().to_path_buf();
    let vmm = vm.vmm_pid();
    assert!(dir.is_dir());
    let start = Instant::now();
    drop(vm);
    let took = start.elapsed();
    assert!(took < TEARDOWN_LIMIT, "teardown took {took:?}");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(vm_processes(), Vec::<u32>::new(), "VM processes left");
    // The jailed VMM dies with its supervisor (parent-death signal), a
    // moment later; an upper bound far above that moment.
    let gone = Instant::now() + Duration::from_secs(60);
    let alive = || {
        // A zombie is gone too: whoever adopted it reaps it when it likes.
        std::fs::read_to_string(format!("/proc/{vmm}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while alive() {
        assert!(
            Instant::now() < gone,
            "the jailed VMM {vmm} outlived its VM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("teardown took {:.1} ms", took.as_secs_f64() * 1e3);
}

#[test]
fn console_shows_banner_and_our_exact_command_line() {
    let _one = serial();
    require_kvm();
    let spec = spec("kvm-console", Duration::from_secs(60));
    let mut vm = KvmBackend::new().start_vm(&spec).expect("the VM starts");
    let log = wait_for_console(&mut vm);
    let banner = log.lines().find(|l| l.contains("Linux version"));
    assert!(
        banner.is_some_and(|l| l.contains("Linux version 6.")),
        "{log}"
    );
    let cmdline = log
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c))
        .map(|c| c.trim_end_matches('\r'));
    assert_eq!(cmdline, Some(expected_cmdline().as_str()), "{log}");
    drop_and_check_teardown(vm);
}

#[test]
fn dropping_a_running_vm_stops_it_promptly() {
    let _one = serial();
    require_kvm();
    let spec = spec("kvm-drop", Duration::from_secs(60));
    let mut vm = KvmBackend::new().start_vm(&spec).expect("the VM starts");
    std::thread::sleep(Duration::from_secs(1));
    // Still running (on any host the kernel is busy for longer than this:
    // it waits for its root disk or its agent's host).
    assert_eq!(vm.exited(), None);
    // The VMM runs in a process of its own, with a thread per vCPU.
    assert_eq!(vm_processes(), vec![vm.pid()]);
    let vmm = vm.vmm_pid();
    let vcpu = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", vmm, vcpu_tid(vmm)))
        .unwrap_or_default();
    assert_eq!(vcpu.trim(), "vcpu0");
    drop_and_check_teardown(vm);
}

/// The thread of `pid` other than its main thread (a one-vCPU VM process
/// has no other).
fn vcpu_tid(pid: u32) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .find(|&tid| tid != pid)
        .expect("a vCPU thread")
}

/// `wait_for_agent` never hangs: where ring 0 runs natively the agent
/// answers; where it is emulated (PVM) the guest cannot come up in time and
/// the result is a boot error carrying the console. There the console is
/// awaited first, so that the error has lines to carry even on a slow host.
#[test]
fn wait_for_agent_gives_a_session_or_a_boot_error_with_console_lines() {
    let _one = serial();
    require_kvm();
    let native = matches!(
        runner_vmm::probe::probe_host().calibration,
        Some(Ok(c)) if c.speed == runner_vmm::probe::Ring0Speed::Native
    );
    // The nested tier (tests/nested) runs this under real KVM: there only
    // agent-ready counts.
    if std::env::var_os("RUNNER_NESTED").is_some() {
        assert!(native, "RUNNER_NESTED is set but ring 0 is not native here");
    }
    // Where ring 0 is native the agent must answer: give it all the time a
    // loaded machine (or a nested one) may need. Where it is emulated the
    // wait must end with a boot error: keep that wait short.
    let boot_timeout = Duration::from_secs(if native { 120 } else { 20 });
    let spec = spec("kvm-timeout", boot_timeout);
    let mut vm = KvmBackend::new().start_vm(&spec).expect("the VM starts");
    if !native {
        // Early on, the guest is alive but nowhere near its agent: the
        // boot timeout is what ends the wait.
        let short = Duration::from_secs(2);
        let start = Instant::now();
        let result = wait_for_agent(&mut vm, short);
        let took = start.elapsed();
        assert!(
            matches!(result, Err(BootError::Timeout { timeout, .. }) if timeout == short),
            "{:?}",
            result.err()
        );
        assert!(took < short + Duration::from_secs(6), "{took:?}");
        wait_for_console(&mut vm);
    }
    let start = Instant::now();
    let result = wait_for_agent(&mut vm, spec.boot_timeout);
    let took = start.elapsed();
    // A connect attempt may block for its 5 s handshake timeout while the
    // guest's vsock driver is not up yet.
    assert!(
        took < spec.boot_timeout + Duration::from_secs(6),
        "{took:?}"
    );
    match result {
        Ok(mut session) if native => {
            eprintln!("agent ready after {took:?}");
            let ran = run_in_guest(&mut session, "uname -sr; echo $((6 * 7))");
            assert!(ran.0.success(), "{ran:?}");
            assert!(ran.1.starts_with("Linux 6."), "{ran:?}");
            assert!(ran.1.ends_with("42\n"), "{ran:?}");
            // The guest timed itself with the LAPIC's TSC-deadline mode
            // (CPUID shows it when KVM has it): without it, its APIC timer
            // calibration failed under nested KVM and the boot fell back to
            // the PIT at half speed.
            let log = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
            assert!(log.contains("TSC deadline timer available"), "{log}");
            assert!(!log.contains("APIC timer disabled"), "{log}");
            let _ = session.shutdown();
        }
        Err(e @ (BootError::Timeout { .. } | BootError::Exited { .. })) if !native => {
            let tail = e.serial_tail();
            assert!(!tail.is_empty(), "no console lines in: {e}");
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            // The tail is the guest's own console, in order.
            let log = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
            let log: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
            assert!(
                log.windows(tail.len()).any(|w| w == tail),
                "{tail:#?} is not a run of console lines"
            );
            eprintln!(
                "boot error after {took:?}: {text}; last console line: {:?}",
                tail.last()
            );
        }
        Err(e) => panic!("native ring 0: {native}; boot error: {e}"),
        Ok(_) => panic!("the agent answered although ring 0 is emulated here"),
    }
    drop_and_check_teardown(vm);
}

/// Runs a shell script through the agent: its exit status and stdout.
fn run_in_guest(
    session: &mut runner::session::AgentSession,
    script: &str,
) -> (agent_protocol::ExitStatus, String) {
    let request = agent_protocol::ExecRequest {
        command: agent_protocol::Command::Script {
            script: script.into(),
            shell: String::new(),
        },
        ..Default::default()
    };
    let mut stdout = Vec::new();
    let status = session
        .exec(request, None, &mut |_, bytes| {
            stdout.extend_from_slice(bytes)
        })
        .expect("exec");
    (status, String::from_utf8_lossy(&stdout).into_owned())
}

fn setup_error(spec: &runner_machine::VmSpec) -> String {
    match KvmBackend::new().start(spec).map(|_| ()) {
        Err(BootError::Setup(msg)) => {
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
        Err(other) => panic!("expected a setup error, got: {other}"),
        Ok(()) => panic!("the VM started"),
    }
}

#[test]
fn bad_configs_are_one_line_setup_errors() {
    let _one = serial();
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // VM directories go to the temp dir: make it one only this test uses
    // (the tests in this file run one at a time) to see that failed starts
    // leave nothing there.
    let vm_dirs = tempfile::tempdir().unwrap();
    let _tmpdir = TmpDirOverride::set(vm_dirs.path());
    let base = spec("kvm-bad", Duration::from_secs(5));
    let not_a_kernel = dir.path().join("notes.txt");
    std::fs::write(&not_a_kernel, "this is not a kernel\n").unwrap();

    let mut s = base.clone();
    s.kernel = not_a_kernel.clone();
    let msg = setup_error(&s);
    assert!(
        msg.contains("is not a usable x86_64 ELF vmlinux or bzImage"),
        "{msg}"
    );
    assert!(msg.contains("notes.txt"), "{msg}");

    let mut s = base.clone();
    s.kernel = dir.path().join("missing-vmlinux");
    let msg = setup_error(&s);
    assert!(
        msg.contains("cannot read kernel image") && msg.contains("missing-vmlinux"),
        "{msg}"
    );

    let mut s = base.clone();
    s.memory_mib = 4;
    let msg = setup_error(&s);
    assert!(
        msg.contains("memory size 4 MiB is below the minimum"),
        "{msg}"
    );

    let mut s = base.clone();
    s.vcpus = 255;
    let msg = setup_error(&s);
    assert!(msg.contains("255 vCPUs"), "{msg}");

    let mut s = base.clone();
    s.vcpus = 0;
    let msg = setup_error(&s);
    assert!(msg.contains("at least one vCPU"), "{msg}");

    // Nothing was left behind by the failed starts.
    assert_eq!(vm_processes(), Vec::<u32>::new());
    let left: Vec<_> = std::fs::read_dir(vm_dirs.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Points TMPDIR elsewhere until dropped (even when the test fails).
struct TmpDirOverride(Option<std::ffi::OsString>);

impl TmpDirOverride {
    fn set(dir: &std::path::Path) -> TmpDirOverride {
        let old = std::env::var_os("TMPDIR");
        std::env::set_var("TMPDIR", dir);
        TmpDirOverride(old)
    }
}

impl Drop for TmpDirOverride {
    fn drop(&mut self) {
        match self.0.take() {
            Some(old) => std::env::set_var("TMPDIR", old),
            None => std::env::remove_var("TMPDIR"),
        }
    }
}
