//! Focused KVM tests: tiny hand-assembled 64-bit guests, loaded as ELF
//! vmlinux images through the real `Vmm` (linux-loader, boot params, page
//! tables, CPUID/MSR setup, vCPU threads, PIO bus, serial, i8042). Each one
//! prints over COM1 and then ends the VM a different way.
//!
//! They need /dev/kvm and fail with the reason when it is unusable.

use std::io::Write;
use std::time::{Duration, Instant};

mod common;

use common::{elf_image, require_kvm};
use runner_vmm::{BootProtocol, ExitReason, Vmm, VmmConfig};

/// Load address of the test guests (above 1 MiB like a kernel).
const GUEST_BASE: u64 = 0x20_0000;

/// Prints "Hello\n" on COM1 (0x3f8) with `out`, then runs `tail`.
fn guest_code(tail: &[u8]) -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x35, 0x00, 0x00, 0x00, // lea rsi, [rip + 0x35] (-> 0x40)
        0xb9, 0x06, 0x00, 0x00, 0x00, // mov ecx, 6
        0xac, // 1: lodsb
        0xee, // out dx, al
        0xe2, 0xfc, // loop 1b
    ];
    code.extend_from_slice(tail);
    assert!(code.len() <= 0x40);
    code.resize(0x40, 0x90);
    code.extend_from_slice(b"Hello\n");
    code
}

const TAIL_CLI_HLT: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd]; // cli; 1: hlt; jmp 1b
const TAIL_I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]; // mov al,0xfe; out 0x64,al; jmp .
const TAIL_UD2: &[u8] = &[0x0f, 0x0b]; // #UD with an empty IDT: triple fault
const TAIL_SPIN: &[u8] = &[0xeb, 0xfe]; // jmp .
/// Probes ports nothing emulates, then resets: unknown PIO must be ignored.
const TAIL_UNKNOWN_PIO_THEN_RESET: &[u8] = &[
    0xe4, 0x71, // in al, 0x71
    0xe6, 0x80, // out 0x80, al
    0x66, 0xba, 0x34, 0x12, // mov dx, 0x1234
    0xed, // in eax, dx
    0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe, // reset
];

/// Writes 0xffff to AMD's PERF_CTR3 and reads it back, as Linux's PMU
/// probe does on AMD, prints the low byte + '0' and a newline, then halts.
/// With no PMU behind it the write must neither fault (an empty IDT would
/// make that a triple fault) nor stick.
const TAIL_AMD_PERFCTR_PROBE: &[u8] = &[
    0xb9, 0x07, 0x00, 0x01, 0xc0, // mov ecx, 0xc0010007
    0xb8, 0xff, 0xff, 0x00, 0x00, // mov eax, 0xffff
    0x31, 0xd2, // xor edx, edx
    0x0f, 0x30, // wrmsr
    0x31, 0xc0, // xor eax, eax
    0x0f, 0x32, // rdmsr
    0x04, 0x30, // add al, '0'
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0xb0, 0x0a, 0xee, // mov al, '\n'; out dx, al
    0xfa, 0xf4, 0xeb, 0xfd, // cli; 1: hlt; jmp 1b
];

struct Guest {
    _dir: tempfile::TempDir,
    config: VmmConfig,
    log: std::path::PathBuf,
}

fn guest(tail: &[u8], vcpus: u8, timeout: Duration) -> Guest {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::File::create(&kernel)
        .unwrap()
        .write_all(&elf_image(GUEST_BASE, &guest_code(tail)))
        .unwrap();
    let log = dir.path().join("serial.log");
    let mut config = VmmConfig::new(&kernel, "console=ttyS0");
    config.memory.size_mib = 32;
    config.vcpus.num = vcpus;
    config.serial.log_path = Some(log.clone());
    config.timeout = Some(timeout);
    Guest {
        _dir: dir,
        config,
        log,
    }
}

#[test]
fn serial_output_then_cli_hlt_ends_as_halted() {
    let g = guest(TAIL_CLI_HLT, 1, Duration::from_secs(30));
    let vmm = Vmm::new(g.config.clone()).unwrap();
    assert_eq!(vmm.boot_protocol(), BootProtocol::Linux64Elf);
    let exit = vmm.run().unwrap();
    assert_eq!(exit.reason, ExitReason::Halted, "{exit:?}");
    assert_eq!(std::fs::read_to_string(&g.log).unwrap(), "Hello\n");
    let t = exit.timings;
    assert!(
        t.first_exit.is_some() && t.first_serial_byte.is_some(),
        "{t:?}"
    );
    eprintln!("cli;hlt guest timings: {t:?}");
}

#[test]
fn pmu_counter_writes_are_dropped_and_read_as_zero() {
    let g = guest(TAIL_AMD_PERFCTR_PROBE, 1, Duration::from_secs(30));
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::Halted, "{exit:?}");
    assert_eq!(std::fs::read_to_string(&g.log).unwrap(), "Hello\n0\n");
}

#[test]
fn i8042_reset_ends_the_vm() {
    let g = guest(TAIL_I8042_RESET, 1, Duration::from_secs(30));
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::Reset, "{exit:?}");
    assert_eq!(std::fs::read_to_string(&g.log).unwrap(), "Hello\n");
}

#[test]
fn triple_fault_is_reported() {
    let g = guest(TAIL_UD2, 1, Duration::from_secs(30));
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::TripleFault { vcpu: 0 }, "{exit:?}");
}

#[test]
fn unknown_ports_are_ignored() {
    let g = guest(TAIL_UNKNOWN_PIO_THEN_RESET, 1, Duration::from_secs(30));
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::Reset, "{exit:?}");
}

#[test]
fn spinning_guest_hits_the_timeout() {
    let g = guest(TAIL_SPIN, 1, Duration::from_millis(700));
    let start = Instant::now();
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::Timeout(Duration::from_millis(700)));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "teardown took {took:?}");
    assert_eq!(std::fs::read_to_string(&g.log).unwrap(), "Hello\n");
}

#[test]
fn handle_stops_a_spinning_smp_guest() {
    // Two vCPUs: the AP waits for INIT/SIPI inside KVM and must be kicked
    // out of it; the BSP spins.
    let g = guest(TAIL_SPIN, 2, Duration::from_secs(60));
    let vmm = Vmm::new(g.config.clone()).unwrap();
    let handle = vmm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.stop();
    });
    let start = Instant::now();
    let exit = vmm.run().unwrap();
    stopper.join().unwrap();
    assert_eq!(exit.reason, ExitReason::Stopped);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn smp_guest_halts_when_bsp_halts_and_aps_never_started() {
    let g = guest(TAIL_CLI_HLT, 4, Duration::from_secs(30));
    let exit = Vmm::new(g.config.clone()).unwrap().run().unwrap();
    assert_eq!(exit.reason, ExitReason::Halted, "{exit:?}");
}

#[test]
fn bad_configs_fail_before_anything_runs() {
    require_kvm();
    let g = guest(TAIL_CLI_HLT, 1, Duration::from_secs(5));
    let mut c = g.config.clone();
    c.vcpus.num = 0;
    assert!(Vmm::new(c).is_err());
    let mut c = g.config.clone();
    c.vcpus.num = 255;
    let err = Vmm::new(c).err().unwrap().to_string();
    assert!(err.contains("vCPUs"), "{err}");
    let mut c = g.config.clone();
    c.kernel.cmdline = "x".repeat(5000);
    let err = Vmm::new(c).err().unwrap().to_string();
    assert!(err.contains("command line"), "{err}");
    let mut c = g.config.clone();
    c.kernel.path = g.log.clone(); // does not exist yet
    let err = Vmm::new(c).err().unwrap().to_string();
    assert!(err.contains("serial.log"), "{err}");
}
