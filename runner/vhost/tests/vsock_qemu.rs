//! The vsock device under the real Linux virtio-vsock driver: QEMU (TCG,
//! microvm) boots the project kernel with a [`VsockServer`] behind
//! `vhost-user-vsock-device` and `tests/guest/vsock_guest.rs` as `/init`; the
//! test talks to it through the hybrid-vsock Unix socket.
//!
//! Needs qemu-system-x86_64, rustc (to build the guest program) and the guest
//! kernel in RUNNER_KERNEL (the `vmlinux`, or its directory): build it with
//! `kernels/build.sh`, or run everything through `scripts/test`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner_vhost::{VsockServer, VsockServerConfig};
use runner_vmm::testing::image_from_env;

/// Boot to a listening guest takes 2-10 s under TCG; a loaded CI machine more.
const BOOT_BUDGET: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn kernel() -> PathBuf {
    image_from_env("RUNNER_KERNEL", Some("vmlinux"))
}

/// Appends one entry to a `newc` cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Compiles the guest program and packs it as `/init` in an initramfs.
fn initramfs(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vsock_guest.rs");
    let init = dir.join("init");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
        ])
        .arg(&source)
        .arg("-o")
        .arg(&init)
        .output()
        .expect("rustc must be installed to build the guest program");
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = std::fs::read(&init).expect("guest binary");
    let mut archive = Vec::new();
    cpio_entry(&mut archive, 1, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut archive, 2, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut archive, 3, "init", 0o100755, (0, 0), &binary);
    cpio_entry(&mut archive, 4, "TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, archive).expect("write initramfs");
    path
}

/// A running QEMU; killed and reaped when dropped, whatever happened.
struct Qemu {
    child: Child,
    serial: PathBuf,
}

impl Qemu {
    fn start(dir: &Path, socket: &Path, initramfs: &Path) -> Qemu {
        let serial = dir.join("serial.log");
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
            .args(["-M", "microvm,acpi=off,memory-backend=mem"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .arg("-chardev")
            .arg(format!("socket,id=vs,path={}", socket.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vs"])
            .arg("-kernel")
            .arg(kernel())
            .arg("-initrd")
            .arg(initramfs)
            .args([
                "-append",
                "console=ttyS0 panic=-1 no_timer_check rdinit=/init quiet",
            ])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 must be installed");
        Qemu { child, serial }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for QEMU to exit on its own; true if it did within `budget`.
    fn wait_exit(&mut self, budget: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < budget {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CONNECT port` through the hybrid socket, retrying while the guest boots.
fn connect(uds: &Path, port: u32, qemu: &Qemu, budget: Duration) -> UnixStream {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = UnixStream::connect(uds) {
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            if s.write_all(format!("CONNECT {port}\n").as_bytes()).is_ok() {
                let line = read_line(&mut s);
                if line.starts_with("OK ") {
                    return s;
                }
            }
        }
        assert!(
            start.elapsed() < budget,
            "guest port {port} not reachable within {budget:?}; serial:\n{}",
            qemu.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads one line byte by byte, so nothing after it is consumed.
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while let Ok(1) = s.read(&mut b) {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn real_linux_driver_talks_through_our_vsock_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let initramfs = initramfs(dir.path());
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("run dir");
    let mut server = VsockServer::start(VsockServerConfig {
        socket_path: run.join("vu.sock"),
        uds_path: run.join("vm.vsock"),
        guest_cid: 3,
    })
    .expect("start vsock server");
    let uds = server.uds_path().to_path_buf();
    let mut qemu = Qemu::start(dir.path(), server.socket_path(), &initramfs);

    // Host -> guest connection and a small echo.
    let mut s = connect(&uds, 1234, &qemu, BOOT_BUDGET);
    s.write_all(b"hello vsock").expect("write");
    let mut got = [0u8; 11];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"hello vsock");
    drop(s);

    // A large transfer both ways at once, ended by a host half-close: every
    // byte comes back, then EOF.
    let data = pattern(8 << 20, 0x1234_5678);
    let mut s = connect(&uds, 1234, &qemu, IO_TIMEOUT);
    let mut writer = s.try_clone().expect("clone");
    let sent = data.clone();
    let feeder = std::thread::spawn(move || {
        writer.write_all(&sent).expect("send");
        writer.shutdown(Shutdown::Write).expect("half close");
    });
    let mut back = Vec::with_capacity(data.len());
    s.read_to_end(&mut back).expect("echo back until EOF");
    feeder.join().expect("feeder");
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "echoed bytes differ");

    // Connecting to a guest port nobody listens on closes the socket.
    let mut refused = UnixStream::connect(&uds).expect("connect");
    refused.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    refused.write_all(b"CONNECT 4321\n").expect("write");
    let mut buf = [0u8; 16];
    assert_eq!(
        refused.read(&mut buf).expect("closed"),
        0,
        "no OK for a closed port"
    );

    // Guest-initiated: the guest dials host port 5555, i.e. `<uds>_5555`.
    let listener = UnixListener::bind(run.join("vm.vsock_5555")).expect("bind");
    let host_side = std::thread::spawn(move || {
        let (c, _) = listener.accept().expect("guest connection");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("guest line");
        let mut w = c;
        w.write_all(format!("host saw: {line}").as_bytes())
            .expect("reply");
    });
    let mut cmd = connect(&uds, 1235, &qemu, IO_TIMEOUT);
    cmd.write_all(b"DIAL 5555\n").expect("DIAL");
    assert_eq!(read_line(&mut cmd), "DIALED host saw: hello from guest\n");
    host_side.join().expect("host side");
    std::fs::remove_file(run.join("vm.vsock_5555")).expect("remove listener socket");

    // The guest shuts down; QEMU leaves; the server notices and cleans up.
    let mut cmd = connect(&uds, 1235, &qemu, IO_TIMEOUT);
    cmd.write_all(b"REBOOT\n").expect("REBOOT");
    assert_eq!(read_line(&mut cmd), "BYE\n");
    assert!(
        qemu.wait_exit(IO_TIMEOUT),
        "QEMU did not exit; serial:\n{}",
        qemu.serial()
    );
    let start = Instant::now();
    while !server.is_finished() {
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "server did not notice QEMU leaving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop().expect("stop");
    let left: Vec<_> = std::fs::read_dir(&run)
        .expect("run dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
