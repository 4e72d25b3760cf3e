//! The block device under the real Linux virtio-blk driver: QEMU (TCG,
//! microvm) boots the project kernel with a [`BlockServer`] as its root disk
//! over `vhost-user-blk`, until the guest agent says it is ready.
//!
//! Needs qemu-system-x86_64 and the guest images in RUNNER_KERNEL (the
//! `vmlinux`, or its directory) and RUNNER_ROOTFS (an ext4 image);
//! `scripts/test` builds both and sets the variables.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner_vhost::block::{BlockServer, BlockServerConfig, DiskMode};
use runner_vmm::testing::image_from_env;

/// Boot to the ready line takes 2-10 s under TCG; a loaded CI machine
/// running both tests at once gets a lot more.
const BOOT_BUDGET: Duration = Duration::from_secs(120);
const READY: &str = "runner-agent: ready on vsock port 10000";

fn kernel() -> PathBuf {
    image_from_env("RUNNER_KERNEL", Some("vmlinux"))
}

fn rootfs() -> PathBuf {
    image_from_env("RUNNER_ROOTFS", None)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) must be installed");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A running QEMU; killed and reaped when dropped, whatever happened.
struct Qemu {
    child: Child,
    serial: PathBuf,
}

impl Qemu {
    fn start(dir: &Path, socket: &Path, append: &str) -> Qemu {
        let serial = dir.join("serial.log");
        let stderr = std::fs::File::create(dir.join("qemu.stderr")).expect("qemu stderr file");
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
            .args(["-M", "microvm,acpi=off,memory-backend=mem"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .arg("-chardev")
            .arg(format!("socket,id=blk0,path={}", socket.display()))
            .args(["-device", "vhost-user-blk,chardev=blk0"])
            .arg("-kernel")
            .arg(kernel())
            .args(["-append", append])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start qemu-system-x86_64 ({e}); scripts/setup-host installs it")
            });
        Qemu { child, serial }
    }

    fn serial_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.serial) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Waits for `needle` on the console; panics with the console and
    /// QEMU's stderr if QEMU ends first or the budget runs out.
    fn wait_for(&mut self, needle: &str, budget: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.serial_text();
            if text.contains(needle) {
                return text;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > budget {
                let stderr_path = self.serial.with_file_name("qemu.stderr");
                let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
                let why = match exited {
                    Some(status) => format!("QEMU exited ({status})"),
                    None => format!("no {needle:?} within {budget:?}"),
                };
                panic!("{why}\n--- console ---\n{text}\n--- qemu stderr ---\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Boot {
    console: String,
    server: BlockServer,
    elapsed: Duration,
}

/// Boots to the agent's ready line with `mode` behind /dev/vda and the root
/// mounted `root_flag` ("ro" or "rw"), then stops QEMU.
fn boot(dir: &Path, mode: DiskMode, root_flag: &str) -> Boot {
    let socket = dir.join("blk.sock");
    let server = BlockServer::start(BlockServerConfig {
        socket_path: socket.clone(),
        image: rootfs(),
        mode,
        serial: "runner-root".into(),
    })
    .expect("start the block server");
    let append = format!(
        "console=ttyS0 reboot=k panic=-1 no_timer_check root=/dev/vda {root_flag} rootfstype=ext4 \
         init=/sbin/runner-init"
    );
    let start = Instant::now();
    let mut qemu = Qemu::start(dir, &socket, &append);
    let console = qemu.wait_for(READY, BOOT_BUDGET);
    let elapsed = start.elapsed();
    drop(qemu);
    Boot {
        console,
        server,
        elapsed,
    }
}

/// Stops the server and checks it cleaned up after itself.
fn stop(mut server: BlockServer) {
    let socket = server.socket_path().to_path_buf();
    server
        .stop()
        .expect("the server ends cleanly when QEMU goes away");
    assert!(!socket.exists(), "the vhost-user socket is removed");
}

#[test]
fn boots_read_only_root_from_our_block_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = rootfs();
    let image_len = std::fs::metadata(&image).expect("stat rootfs").len();
    let boot = boot(dir.path(), DiskMode::ReadOnly, "ro");
    eprintln!("read-only boot to ready: {:?}", boot.elapsed);

    // The driver saw our capacity, and the kernel mounted the root from it.
    let sectors = image_len.div_ceil(512);
    let capacity_line = format!("[vda] {sectors} 512-byte logical blocks");
    assert!(
        boot.console.contains(&capacity_line),
        "no {capacity_line:?} in the console:\n{}",
        boot.console
    );
    assert!(boot.console.contains("EXT4-fs (vda): mounted filesystem"));
    assert_eq!(boot.server.capacity(), sectors);
    assert!(boot.server.is_read_only());

    let counts = boot.server.io_counts();
    assert!(counts.reads > 10, "the guest read its root: {counts:?}");
    assert_eq!(counts.writes, 0, "{counts:?}");
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    stop(boot.server);
}

#[test]
fn writable_root_writes_go_to_the_overlay_and_never_to_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay_dir = dir.path().join("overlay");
    std::fs::create_dir(&overlay_dir).expect("overlay dir");
    let image = rootfs();
    let before = sha256(&image);
    let mtime = std::fs::metadata(&image).and_then(|m| m.modified()).ok();

    let mode = DiskMode::Overlay {
        dir: Some(overlay_dir.clone()),
    };
    let boot = boot(dir.path(), mode, "rw");
    eprintln!("read-write boot to ready: {:?}", boot.elapsed);
    assert!(
        boot.console
            .contains("VFS: Mounted root (ext4 filesystem) on device"),
        "the root was mounted read-write:\n{}",
        boot.console
    );
    assert!(!boot.server.is_read_only());
    let counts = boot.server.io_counts();
    eprintln!("read-write boot: {counts:?}");
    assert!(
        counts.writes > 0 && counts.written_bytes > 0,
        "mounting ext4 read-write writes its superblock: {counts:?}"
    );
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    let names: Vec<_> = std::fs::read_dir(&overlay_dir)
        .expect("list overlay dir")
        .collect();
    assert!(names.is_empty(), "the overlay has no name: {names:?}");
    stop(boot.server);

    assert_eq!(sha256(&image), before, "the base image is unchanged");
    assert_eq!(
        std::fs::metadata(&image).and_then(|m| m.modified()).ok(),
        mtime
    );
}
