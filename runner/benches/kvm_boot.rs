//! Start-up cost and memory overhead of the `kvm` backend.
//!
//! `cargo bench -p runner --bench kvm_boot` with RUNNER_KERNEL (vmlinux)
//! and RUNNER_ROOTFS set (scripts/test prints both). One run each:
//!
//! 1. VMM start -> first guest instruction: `Vmm::new` until the first
//!    return from KVM_RUN of a guest whose first instruction is an `out`
//!    (so that exit *is* the first instruction), median of 5.
//! 2. Process start -> first serial byte of the real kernel, the kvm
//!    backend (`runner exec --backend kvm -- true`) against
//!    `qemu-system-x86_64 -M microvm -accel kvm -cpu host` on the same
//!    vmlinux. Both are measured the same way: spawn the process, poll its
//!    serial log file until it is not empty.
//! 3. Memory of the VM process (`runner exec` starts one per VM, running
//!    the VMM) beyond guest memory: its proportional share (`Pss`) over
//!    every mapping in /proc/<pid>/smaps except the guest RAM memfd (whose
//!    resident pages are exactly the guest pages touched so far), plus its
//!    page tables, maximum over samples taken while the kernel boots. PSS,
//!    because the VM process is the runner binary: its text and libc's are
//!    the same page cache pages the runner process maps, so RSS would count
//!    them once per VM (RSS is printed too). Memory KVM itself allocates in
//!    the host kernel (shadow page tables, vCPU state) is not counted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner_machine::GUEST_CMDLINE;
use runner_vmm::testing::elf_image;
use runner_vmm::{Vmm, VmmConfig};

#[path = "common/mem.rs"]
mod mem;
use mem::{mem_use, MemUse};

const GUEST_MIB: u32 = 256;
/// Longest the real kernel may take to print (emulated ring 0 is slow).
const SERIAL_BUDGET: Duration = Duration::from_secs(180);
/// Memory is sampled until this long after the first serial byte.
const SAMPLE_AFTER_FIRST_BYTE: Duration = Duration::from_secs(2);
const OVERHEAD_TARGET_MIB: f64 = 3.0;

fn main() {
    let kernel = image("RUNNER_KERNEL");
    let rootfs = image("RUNNER_ROOTFS");
    let module = runner_vmm::kvm_host::kvm_module().unwrap_or_else(|| "unknown".into());
    println!("host KVM module: {module}; kernel {}", kernel.display());

    let (build, first) = first_instruction();
    println!(
        "VMM start -> first guest instruction: {:.2} ms (build {:.2} ms; median of 5)",
        ms(first),
        ms(build)
    );

    let ours = kvm_backend_child(&kernel, &rootfs);
    let qemu = qemu_first_byte(&kernel);
    println!(
        "process start -> first serial byte: kvm backend {:.3} s, QEMU microvm {:.3} s; \
         ratio {:.2} (one run each)",
        ours.first_byte.as_secs_f64(),
        qemu.as_secs_f64(),
        ours.first_byte.as_secs_f64() / qemu.as_secs_f64()
    );
    let m = ours.memory;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let share = m.other_pss + m.page_tables;
    println!(
        "VM process memory beyond guest memory: {:.2} MiB (its share of resident pages, PSS, \
         {:.2} MiB + page tables {:.2} MiB; anonymous {:.2} MiB; RSS {:.2} MiB, which also counts \
         the runner binary's and libc's pages shared with the runner process); guest pages \
         touched {:.1} MiB of {GUEST_MIB}; target <= {OVERHEAD_TARGET_MIB} MiB: {}",
        mib(share),
        mib(m.other_pss),
        mib(m.page_tables),
        mib(m.other_anonymous),
        mib(m.other_rss),
        mib(m.guest_rss),
        if mib(share) <= OVERHEAD_TARGET_MIB {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fail(msg: &str) -> ! {
    eprintln!("kvm_boot: {msg}");
    std::process::exit(1);
}

fn image(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(_) => runner_vmm::testing::image_from_env(var, Some("vmlinux")),
        None => fail(&format!(
            "{var} must name the guest image file; scripts/test builds the images and prints them"
        )),
    }
}

/// A 64-bit guest whose first instruction exits to the VMM:
/// `out 0x80, al; cli; hlt`.
fn first_instruction() -> (Duration, Duration) {
    const CODE: &[u8] = &[0xe6, 0x80, 0xfa, 0xf4, 0xeb, 0xfd];
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let path = dir.path().join("first.elf");
    std::fs::write(&path, elf_image(0x20_0000, CODE)).unwrap_or_else(|e| fail(&e.to_string()));
    let mut builds = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let mut config = VmmConfig::new(&path, "console=ttyS0");
        config.memory.size_mib = GUEST_MIB;
        config.timeout = Some(Duration::from_secs(30));
        let exit = Vmm::new(config)
            .and_then(Vmm::run)
            .unwrap_or_else(|e| fail(&format!("tiny guest: {e}")));
        let t = exit.timings;
        builds.push(t.build);
        firsts.push(
            t.first_exit
                .unwrap_or_else(|| fail(&format!("tiny guest never ran: {}", exit.reason))),
        );
    }
    builds.sort();
    firsts.sort();
    (builds[2], firsts[2])
}

/// Child mode: one VM through the kvm backend; prints the VM directory and
/// the VM process's pid, runs until stdin closes, then tears the VM down.
struct ChildRun {
    first_byte: Duration,
    memory: MemUse,
}

/// `runner exec --backend kvm`, as a user starts it: the runner process,
/// and under it the VM process that runs the VMM. Its VM directory (and so
/// its serial log) is the only `runner-vm-*` in a private TMPDIR.
fn kvm_backend_child(kernel: &Path, rootfs: &Path) -> ChildRun {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let start = Instant::now();
    let mut runner = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["exec", "--backend", "kvm", "--boot-timeout", "300s"])
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .args(["--", "true"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("starting runner exec: {e}")));
    let mut memory = MemUse::default();
    let mut first_byte = None;
    let mut next_sample = Instant::now();
    loop {
        let now = Instant::now();
        if first_byte.is_none() && serial_log_len(tmp.path()) > 0 {
            first_byte = Some(now - start);
        }
        if now >= next_sample {
            if let Some(m) = vm_process_of(runner.id()).and_then(mem_use) {
                memory = memory.max(m);
            }
            next_sample = now + Duration::from_millis(100);
        }
        // On PVM the guest dies in early boot (the runner then exits): the
        // samples taken until then stand.
        let exited = matches!(runner.try_wait(), Ok(Some(_)));
        if first_byte.is_some_and(|t| exited || now - start > t + SAMPLE_AFTER_FIRST_BYTE) {
            break;
        }
        if now - start > SERIAL_BUDGET || exited {
            end(&mut runner);
            fail("the kvm backend's guest printed nothing");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    end(&mut runner);
    ChildRun {
        first_byte: first_byte.unwrap_or_default(),
        memory,
    }
}

fn serial_log_len(tmp: &Path) -> u64 {
    std::fs::read_dir(tmp)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("runner-vm-"))
        .map(|e| file_len(&e.path().join("serial.log")))
        .max()
        .unwrap_or(0)
}

/// The `runner __vm-process` child of `parent`, once it exists.
fn vm_process_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after `)`.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == parent && String::from_utf8_lossy(&cmdline).contains("__vm-process"))
            .then_some(pid)
    })
}

/// Ctrl-C for the runner (it tears its VM down), then reaps it.
fn end(child: &mut Child) {
    // SAFETY: a signal to our own child, which we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// QEMU's `-serial file:` log polled exactly like ours. PVM's emulator
/// cannot run `lock cmpxchg16b`, so there (and only there) CX16 and XSAVE
/// are masked, as the built-in VMM does on PVM.
fn qemu_first_byte(kernel: &Path) -> Duration {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let log = dir.path().join("serial.log");
    let cpu = if runner_vmm::kvm_host::is_pvm() {
        "host,-cx16,-xsave"
    } else {
        "host"
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", cpu])
        .args(["-m", &GUEST_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", &format!("file:{}", log.display())])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", GUEST_CMDLINE, "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    println!("QEMU: -M microvm,acpi=off -accel kvm -cpu {cpu} -m {GUEST_MIB}");
    let start = Instant::now();
    let mut qemu = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("qemu-system-x86_64: {e}")));
    let first = loop {
        if file_len(&log) > 0 {
            break start.elapsed();
        }
        if start.elapsed() > SERIAL_BUDGET || matches!(qemu.try_wait(), Ok(Some(_))) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            fail("QEMU's guest printed nothing");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    first
}
