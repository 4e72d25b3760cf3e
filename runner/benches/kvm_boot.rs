//! Start-up cost and memory overhead of the `kvm` backend.
//!
//! `cargo bench -p runner --bench kvm_boot` with RUNNER_KERNEL (vmlinux)
//! and RUNNER_ROOTFS set (scripts/test prints both). One run each:
//!
//! 1. VMM start -> first guest instruction: `Vmm::new` until the first
//!    return from KVM_RUN of a guest whose first instruction is an `out`
//!    (so that exit *is* the first instruction), median of 5.
//! 2. Process start -> first serial byte of the real kernel, the kvm
//!    backend (in a child process running only it) against
//!    `qemu-system-x86_64 -M microvm -accel kvm -cpu host` on the same
//!    vmlinux. Both are measured the same way: spawn the process, poll its
//!    serial log file until it is not empty.
//! 3. Resident memory of the VM process (the VMM runs in one of its own)
//!    beyond guest memory: the sum of `Rss`
//!    over every mapping in /proc/<pid>/smaps except the guest RAM memfd
//!    (whose resident pages are exactly the guest pages touched so far),
//!    maximum over samples taken while the kernel boots. That counts the
//!    binary's and libc's resident text too (shared with other processes,
//!    so an upper bound); the private part is printed separately. Memory
//!    KVM itself allocates in the host kernel (page tables, vCPU state) is
//!    not in any process's RSS and not counted.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner::backend::kvm::KvmBackend;
use runner::backend::{VmSpec, GUEST_CMDLINE};
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
    // The VM process is the runner binary Cargo built for this bench.
    if std::env::var_os("RUNNER_EXE").is_none() {
        std::env::set_var("RUNNER_EXE", env!("CARGO_BIN_EXE_runner"));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
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
    println!(
        "VMM resident memory beyond guest memory: {:.2} MiB (private {:.2} MiB, of it \
         anonymous, the process's own, {:.2} MiB; file-backed {:.2} MiB, KVM mappings {:.2} MiB; \
         page tables {:.2} MiB); guest pages touched {:.1} MiB of {GUEST_MIB}; target <= \
         {OVERHEAD_TARGET_MIB} MiB: {}",
        mib(m.other_rss),
        mib(m.other_private),
        mib(m.other_anonymous),
        mib(m.file),
        mib(m.kvm),
        mib(m.page_tables),
        mib(m.guest_rss),
        if mib(m.other_rss) <= OVERHEAD_TARGET_MIB {
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
fn child(args: &[String]) {
    let [kernel, rootfs] = args else {
        fail("usage: --child KERNEL ROOTFS");
    };
    let spec = VmSpec {
        name: "bench".into(),
        kernel: kernel.into(),
        rootfs: rootfs.into(),
        vcpus: 1,
        memory_mib: GUEST_MIB,
        boot_timeout: SERIAL_BUDGET,
        serial_log_limit: Some(runner::backend::DEFAULT_SERIAL_LOG_LIMIT),
    };
    let vm = KvmBackend::new()
        .start_vm(&spec)
        .unwrap_or_else(|e| fail(&e.to_string()));
    println!("{}\t{}", vm.dir().display(), vm.pid());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_line(&mut String::new());
    drop(vm);
}

struct ChildRun {
    first_byte: Duration,
    memory: MemUse,
}

fn kvm_backend_child(kernel: &Path, rootfs: &Path) -> ChildRun {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()));
    let start = Instant::now();
    let mut child = Command::new(exe)
        .arg("--child")
        .args([kernel, rootfs])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("starting the child: {e}")));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    // The VM directory and the VM process's pid: the VMM's memory is there.
    let (dir, pid) = line
        .trim()
        .split_once('\t')
        .unwrap_or_else(|| fail(&format!("child said {line:?}")));
    let log = PathBuf::from(dir).join("serial.log");
    let pid: u32 = pid
        .parse()
        .unwrap_or_else(|_| fail(&format!("child said {line:?}")));
    let mut memory = MemUse::default();
    let mut first_byte = None;
    let mut next_sample = Instant::now();
    loop {
        let now = Instant::now();
        if first_byte.is_none() && file_len(&log) > 0 {
            first_byte = Some(now - start);
        }
        if now >= next_sample {
            if let Some(m) = mem_use(pid) {
                memory = memory.max(m);
            }
            next_sample = now + Duration::from_millis(100);
        }
        if first_byte.is_some_and(|t| now - start > t + SAMPLE_AFTER_FIRST_BYTE) {
            break;
        }
        if now - start > SERIAL_BUDGET || matches!(child.try_wait(), Ok(Some(_))) {
            end(&mut child);
            fail("the kvm backend's guest printed nothing");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    end(&mut child);
    ChildRun {
        first_byte: first_byte.unwrap_or_default(),
        memory,
    }
}

/// Closes the child's stdin (it then tears its VM down) and reaps it.
fn end(child: &mut Child) {
    drop(child.stdin.take());
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
