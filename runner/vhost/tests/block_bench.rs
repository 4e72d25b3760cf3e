//! Block benchmark: runner's virtio-blk model over vhost-user against QEMU's
//! own `virtio-blk-device`, both under the real Linux driver in QEMU TCG.
//! Ignored by default; `tests/bench/block.sh` prepares its inputs and runs it.
//!
//! Per round and backend:
//! - boot: QEMU start to the agent's ready line with the rootfs as the root
//!   disk (ours: read-only; QEMU's: `readonly=on`);
//! - dd: an initramfs reads the whole data disk with `dd bs=1M iflag=direct`
//!   and writes `BLOCK_BENCH_WRITE_MB` MiB with `oflag=direct conv=fsync`,
//!   timed with the guest's /proc/uptime. Both backends write into a
//!   throwaway overlay: ours, and QEMU's `snapshot=on` (a temporary qcow2).
//!   The host CPU time of that whole run (QEMU, plus our server threads) is
//!   recorded too: on a shared, loaded machine it is steadier than rates.
//!
//! Inputs (environment): RUNNER_KERNEL, RUNNER_ROOTFS, BLOCK_BENCH_INITRD,
//! BLOCK_BENCH_DATA, BLOCK_BENCH_ROUNDS (default 3), BLOCK_BENCH_WRITE_MB
//! (default 64).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner_vhost::block::{BlockServer, BlockServerConfig, DiskMode};
use runner_vmm::testing::image_from_env;

const READY: &str = "runner-agent: ready on vsock port 10000";
const BUDGET: Duration = Duration::from_secs(600);

fn env_path(var: &str) -> PathBuf {
    let path = PathBuf::from(
        std::env::var_os(var)
            .unwrap_or_else(|| panic!("{var} is not set; run tests/bench/block.sh")),
    );
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v} is not a number"))
        })
        .unwrap_or(default)
}

fn kernel() -> PathBuf {
    image_from_env("RUNNER_KERNEL", Some("vmlinux"))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Backend {
    Ours,
    Qemu,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Ours => "ours",
            Backend::Qemu => "qemu",
        }
    }
}

/// QEMU plus, for `Ours`, the block server; both torn down on drop.
struct Vm {
    child: Child,
    serial: PathBuf,
    _server: Option<BlockServer>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start(dir: &Path, backend: Backend, image: &Path, writable: bool, boot: &[&str]) -> Vm {
        let serial = dir.join("serial.log");
        let _ = std::fs::remove_file(&serial);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
            .args(["-M", "microvm,acpi=off,memory-backend=mem"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(kernel())
            .args(boot)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let server = match backend {
            Backend::Ours => {
                let socket = dir.join("blk.sock");
                let mode = if writable {
                    DiskMode::Overlay {
                        dir: Some(dir.to_path_buf()),
                    }
                } else {
                    DiskMode::ReadOnly
                };
                let server = BlockServer::start(BlockServerConfig {
                    socket_path: socket.clone(),
                    image: image.to_path_buf(),
                    mode,
                    serial: String::new(),
                })
                .expect("block server");
                cmd.arg("-chardev")
                    .arg(format!("socket,id=blk0,path={}", socket.display()))
                    .args(["-device", "vhost-user-blk,chardev=blk0"]);
                Some(server)
            }
            Backend::Qemu => {
                let access = if writable {
                    "snapshot=on"
                } else {
                    "readonly=on"
                };
                cmd.arg("-drive")
                    .arg(format!(
                        "file={},format=raw,if=none,id=d0,{access}",
                        image.display()
                    ))
                    .args(["-device", "virtio-blk-device,drive=d0"]);
                None
            }
        };
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        Vm {
            child,
            serial,
            _server: server,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until `done(console)` or QEMU exits; returns the console.
    fn wait(&mut self, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.console();
            if done(&text) {
                return text;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.console();
            }
            assert!(start.elapsed() < BUDGET, "timed out; console:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn boot_seconds(dir: &Path, backend: Backend) -> f64 {
    let rootfs = image_from_env("RUNNER_ROOTFS", None);
    let start = Instant::now();
    let mut vm = Vm::start(
        dir,
        backend,
        &rootfs,
        false,
        &[
            "-append",
            "console=ttyS0 reboot=k panic=-1 no_timer_check root=/dev/vda ro rootfstype=ext4 \
             init=/sbin/runner-init quiet",
        ],
    );
    let console = vm.wait(|c| c.contains(READY));
    assert!(
        console.contains(READY),
        "{backend:?} did not boot:\n{console}"
    );
    start.elapsed().as_secs_f64()
}

/// The guest uptime printed after `marker`.
fn uptime_after(console: &str, marker: &str) -> f64 {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(marker))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {marker:?} line in the console:\n{console}"))
}

/// CPU seconds (user + system) process `pid` ("self" for this one) has used.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name's closing parenthesis start at field 3
    // (state); utime and stime are fields 14 and 15.
    let after_name = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11..13]
        .iter()
        .map(|f| f.parse::<f64>().expect("tick count"))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// What one dd run measured.
struct DdRun {
    read_mbps: f64,
    write_mbps: f64,
    /// Host CPU seconds of the whole run (QEMU plus, for ours, the block
    /// server threads in this process): robust against a loaded machine,
    /// unlike the rates.
    cpu: f64,
}

/// Reads the data disk and writes part of it from an initramfs guest.
fn dd_run(dir: &Path, backend: Backend, data_mb: f64, write_mb: u64) -> DdRun {
    let self_before = cpu_seconds("self");
    let initrd = env_path("BLOCK_BENCH_INITRD");
    let data = env_path("BLOCK_BENCH_DATA");
    let append = format!(
        "console=ttyS0 panic=-1 no_timer_check rdinit=/init quiet bench_write_mb={write_mb}"
    );
    let mut vm = Vm::start(
        dir,
        backend,
        &data,
        true,
        &[
            "-initrd",
            initrd.to_str().expect("utf-8 path"),
            "-append",
            &append,
        ],
    );
    let console = vm.wait(|c| c.contains("BENCH done"));
    let cpu = cpu_seconds(&vm.child.id().to_string()) + cpu_seconds("self") - self_before;
    assert!(
        console.contains("BENCH done"),
        "{backend:?}: the dd guest did not finish:\n{console}"
    );
    let read =
        uptime_after(&console, "BENCH read-end") - uptime_after(&console, "BENCH read-start");
    let write =
        uptime_after(&console, "BENCH write-end") - uptime_after(&console, "BENCH write-start");
    DdRun {
        read_mbps: data_mb / read,
        write_mbps: write_mb as f64 / write,
        cpu,
    }
}

/// One backend's numbers in one round.
struct Sample {
    backend: Backend,
    boot: f64,
    read: f64,
    write: f64,
    cpu: f64,
}

/// Picks one number out of a sample.
type Metric = fn(&Sample) -> f64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark; run tests/bench/block.sh"]
fn block_bench() {
    let rounds = env_num("BLOCK_BENCH_ROUNDS", 3);
    let write_mb = env_num("BLOCK_BENCH_WRITE_MB", 64);
    let data_len = std::fs::metadata(env_path("BLOCK_BENCH_DATA"))
        .expect("stat data image")
        .len();
    let data_mb = data_len as f64 / (1 << 20) as f64;
    let backends = [Backend::Ours, Backend::Qemu];
    let mut results: Vec<Sample> = Vec::new();
    for round in 1..=rounds {
        for backend in backends {
            let dir = tempfile::tempdir().expect("tempdir");
            let boot = boot_seconds(dir.path(), backend);
            let dd = dd_run(dir.path(), backend, data_mb, write_mb);
            println!(
                "round {round} {:>4}: boot {boot:.2} s, read {:.1} MB/s, write {:.1} MB/s, \
                 dd run {:.2} CPU s",
                backend.name(),
                dd.read_mbps,
                dd.write_mbps,
                dd.cpu
            );
            results.push(Sample {
                backend,
                boot,
                read: dd.read_mbps,
                write: dd.write_mbps,
                cpu: dd.cpu,
            });
        }
    }
    let med =
        |b: Backend, f: Metric| median(results.iter().filter(|r| r.backend == b).map(f).collect());
    println!("median of {rounds}: {data_mb:.0} MiB read, {write_mb} MiB written");
    println!("{:<28}{:>10}{:>10}{:>14}", "", "ours", "qemu", "ours/qemu");
    let rows: [(&str, Metric); 4] = [
        ("boot to ready (s)", |r| r.boot),
        ("sequential read (MB/s)", |r| r.read),
        ("sequential write (MB/s)", |r| r.write),
        ("host CPU of a dd run (s)", |r| r.cpu),
    ];
    for (label, f) in rows {
        let (ours, qemu) = (med(Backend::Ours, f), med(Backend::Qemu, f));
        println!("{label:<28}{ours:>10.2}{qemu:>10.2}{:>13.2}x", ours / qemu);
    }
}
