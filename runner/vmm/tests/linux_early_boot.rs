//! Early boot of the real project kernel under the built-in VMM.
//!
//! Needs RUNNER_KERNEL (the `vmlinux` built by `kernels/build.sh`, or its
//! directory) and a usable /dev/kvm. The serial console must show the
//! `Linux version` banner, `Command line: <exactly what we passed>` and
//! every entry of the e820 map we built, and find both vCPUs in our MP
//! table, within a bounded time; then the VM is stopped and torn down.
//!
//! On a PVM host (no VT-x) guest ring 0 is emulated, so only this early
//! part of boot is reachable in test time; on VT-x/AMD-V it takes well
//! under a second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runner_vmm::testing::{e820_log_line, image_from_env, require_kvm};
use runner_vmm::{BootProtocol, ExitReason, Vmm, VmmConfig};

/// Upper bound for the markers to appear (PVM emulation is slow).
const BOOT_BUDGET: Duration = Duration::from_secs(120);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 runner.early_boot_test=1";

/// `vmlinux` (RUNNER_KERNEL) or another file of the same kernel build.
fn kernel_image(name: &str) -> PathBuf {
    let vmlinux = image_from_env("RUNNER_KERNEL", Some("vmlinux"));
    if name == "vmlinux" {
        return vmlinux;
    }
    let image = vmlinux.with_file_name(name);
    assert!(
        image.is_file(),
        "{} is missing beside {}: kernels/build.sh builds both",
        image.display(),
        vmlinux.display()
    );
    image
}

#[test]
fn vmlinux_prints_banner_cmdline_and_our_e820_map() {
    let kernel = kernel_image("vmlinux");
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let mut config = VmmConfig::new(&kernel, CMDLINE);
    config.memory.size_mib = 128;
    // Two vCPUs: the kernel must find both in our MP table.
    config.vcpus.num = 2;
    config.serial.log_path = Some(log.clone());
    // The VMM's own timeout is a backstop; the watcher below stops earlier.
    config.timeout = Some(BOOT_BUDGET + Duration::from_secs(10));

    let start = Instant::now();
    let vmm = Vmm::new(config).unwrap();
    assert_eq!(
        vmm.boot_protocol(),
        BootProtocol::Pvh,
        "the project kernel has a PVH note"
    );
    assert_eq!(vmm.cmdline(), CMDLINE);
    let mut expected = vec![
        "Linux version ".to_string(),
        format!("Command line: {CMDLINE}"),
    ];
    expected.extend(vmm.e820().iter().map(e820_log_line));
    expected.push("MPTABLE: OEM ID: RUNNER".to_string());
    expected.push("Processors: 2".to_string());

    let handle = vmm.handle();
    let watch_log = log.clone();
    let watch_expected = expected.clone();
    let watcher = std::thread::spawn(move || {
        let mut seen_at: Vec<Option<Duration>> = vec![None; watch_expected.len()];
        while start.elapsed() < BOOT_BUDGET {
            let text = std::fs::read_to_string(&watch_log).unwrap_or_default();
            for (i, want) in watch_expected.iter().enumerate() {
                if seen_at[i].is_none() && text.contains(want.as_str()) {
                    seen_at[i] = Some(start.elapsed());
                }
            }
            if seen_at.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        handle.stop();
        seen_at
    });

    let exit = vmm.run().unwrap();
    let seen_at = watcher.join().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let missing: Vec<&String> = expected
        .iter()
        .zip(&seen_at)
        .filter(|(_, t)| t.is_none())
        .map(|(w, _)| w)
        .collect();
    assert!(
        missing.is_empty(),
        "after {:?} the serial log lacks {missing:?}; exit {exit:?}; log tail:\n{}",
        start.elapsed(),
        tail(&text, 40)
    );
    assert_eq!(exit.reason, ExitReason::Stopped, "{exit:?}");
    // The usable ranges are exactly ours. (Linux's PVH entry adds the
    // legacy ISA hole 0xa0000-0xfffff as "reserved" by itself.)
    let usable = text
        .lines()
        .filter(|l| l.contains("BIOS-e820:") && l.trim_end().ends_with("usable"))
        .count();
    assert_eq!(
        usable,
        vmm_e820_len(&expected),
        "e820 lines in log:\n{text}"
    );
    eprintln!("early boot: {:?}", exit.timings);
    for (want, t) in expected.iter().zip(&seen_at) {
        eprintln!("  {:>8.2?}  {want}", t.unwrap_or_default());
    }
}

fn vmm_e820_len(expected: &[String]) -> usize {
    expected
        .iter()
        .filter(|e| e.starts_with("BIOS-e820:"))
        .count()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The bzImage path (64-bit boot protocol, zero page from the image's setup
/// header): the kernel's own decompressor must run and start writing the
/// uncompressed vmlinux ELF at the kernel's physical load address. Under
/// PVM the decompression itself takes far longer than a test may, so this
/// checks the first step only; on VT-x the same image boots fully.
#[test]
fn bzimage_decompressor_starts_writing_the_kernel() {
    let bzimage = kernel_image("bzImage");
    let vmlinux = std::fs::read(kernel_image("vmlinux")).unwrap();
    let load_addr = first_load_paddr(&vmlinux);
    require_kvm();
    let mut config = VmmConfig::new(&bzimage, "console=ttyS0 reboot=k panic=-1");
    config.memory.size_mib = 128;
    config.timeout = Some(BOOT_BUDGET + Duration::from_secs(10));
    let vmm = Vmm::new(config).unwrap();
    assert_eq!(vmm.boot_protocol(), BootProtocol::BzImage);
    let mem = vmm.guest_memory().clone();
    let handle = vmm.handle();
    let start = Instant::now();
    let watcher = std::thread::spawn(move || {
        use vm_memory::Bytes;
        let mut magic = [0u8; 4];
        while start.elapsed() < BOOT_BUDGET {
            let _ = mem.read_slice(&mut magic, vm_memory::GuestAddress(load_addr));
            if &magic == b"\x7fELF" {
                handle.stop();
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        handle.stop();
        None
    });
    let exit = vmm.run().unwrap();
    let seen = watcher.join().unwrap();
    assert!(
        seen.is_some(),
        "no ELF header appeared at {load_addr:#x} within {BOOT_BUDGET:?}: {exit:?}"
    );
    assert_eq!(exit.reason, ExitReason::Stopped);
    eprintln!(
        "bzImage decompressor output began after {:?}",
        seen.unwrap_or_default()
    );
}

/// Physical address of vmlinux's first PT_LOAD segment (its load address).
fn first_load_paddr(elf: &[u8]) -> u64 {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54), u16_at(56));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|ph| u32::from_le_bytes(elf[*ph..*ph + 4].try_into().unwrap()) == 1)
        .map(|ph| u64_at(ph + 24))
        .expect("vmlinux has a PT_LOAD segment")
}
