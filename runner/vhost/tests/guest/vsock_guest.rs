//! Guest `/init` for the vsock real-driver checks (`tests/vsock_qemu.rs` and
//! `tests/bench/vsock.sh`). Built on the fly as a static binary with plain
//! `rustc` (no crates: the few libc calls are declared below), packed into an
//! initramfs and booted under QEMU with the vsock device under test.
//!
//! Port 1234 echoes. Port 1235 takes one command line per connection:
//!   SINK <n>      read n bytes, reply "<crc32 hex> <bytes missing>\n"
//!   SOURCE <n>    send n bytes of a pattern (see `pattern_byte`), then close
//!   DIAL <port>   connect to host port, send "hello from guest\n", relay the
//!                 first reply line back as "DIALED <line>\n"
//!   REBOOT        reply "BYE\n" and reboot (QEMU exits with -no-reboot)

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SOCK_CLOEXEC: i32 = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const HOST_CID: u32 = 2;
const SHUT_WR: i32 = 1;
const RB_AUTOBOOT: i32 = 0x0123_4567;

/// `struct sockaddr_vm`.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept4(fd: i32, addr: *mut u8, len: *mut u32, flags: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
    fn close(fd: i32) -> i32;
    fn sync();
    fn reboot(cmd: i32) -> i32;
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    }
}

fn listen_on(port: u32) -> i32 {
    let a = addr(VMADDR_CID_ANY, port);
    // SAFETY: plain syscalls on a socket we own, with a valid address.
    unsafe {
        let fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let len = std::mem::size_of::<SockaddrVm>() as u32;
        assert!(
            bind(fd, &a, len) == 0,
            "bind {port}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            listen(fd, 64) == 0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

fn accept_one(fd: i32) -> File {
    loop {
        // SAFETY: accept without peer address; the new fd is owned by the File.
        let c = unsafe { accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), SOCK_CLOEXEC) };
        if c >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return unsafe { File::from_raw_fd(c) };
        }
    }
}

fn connect_host(port: u32) -> std::io::Result<File> {
    let a = addr(HOST_CID, port);
    // SAFETY: plain syscalls on a socket we own, with a valid address.
    unsafe {
        let fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if connect(fd, &a, std::mem::size_of::<SockaddrVm>() as u32) != 0 {
            let e = std::io::Error::last_os_error();
            close(fd);
            return Err(e);
        }
        Ok(File::from_raw_fd(fd))
    }
}

fn crc32(table: &[u32; 256], crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for b in data {
        c = table[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    t
}

/// Byte `i` of a SOURCE stream: block `k = i / 65536` holds `(j * 7 + k) & 0xff`.
fn pattern_byte(i: u64) -> u8 {
    ((i % 65536) * 7 + i / 65536) as u8
}

fn echo(mut s: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // SAFETY: half-close of a socket we own.
    unsafe { shutdown(s.as_raw_fd(), SHUT_WR) };
}

fn command(s: File) {
    let Ok(reader) = s.try_clone() else { return };
    let mut r = BufReader::new(reader);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut w = s;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["SINK", n] => {
            let mut left: u64 = n.parse().unwrap_or(0);
            let table = crc_table();
            let mut crc = 0u32;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                match r.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        crc = crc32(&table, crc, &buf[..k]);
                        left -= k as u64;
                    }
                }
            }
            let _ = writeln!(w, "{crc:08x} {left}");
        }
        ["SOURCE", n] => {
            let total: u64 = n.parse().unwrap_or(0);
            let mut buf = vec![0u8; 64 * 1024];
            let mut i = 0u64;
            while i < total {
                let k = (buf.len() as u64).min(total - i) as usize;
                for (j, b) in buf[..k].iter_mut().enumerate() {
                    *b = pattern_byte(i + j as u64);
                }
                if w.write_all(&buf[..k]).is_err() {
                    break;
                }
                i += k as u64;
            }
        }
        ["DIAL", port] => {
            let reply = match connect_host(port.parse().unwrap_or(0)) {
                Ok(mut c) => {
                    let _ = c.write_all(b"hello from guest\n");
                    let mut l = String::new();
                    let _ = BufReader::new(c).read_line(&mut l);
                    format!("DIALED {}", l.trim_end())
                }
                Err(e) => format!("DIAL-FAILED {e}"),
            };
            let _ = writeln!(w, "{reply}");
        }
        ["REBOOT"] => {
            let _ = writeln!(w, "BYE");
            drop(w);
            std::thread::sleep(std::time::Duration::from_millis(200));
            // SAFETY: we are init; rebooting is the point.
            unsafe {
                sync();
                reboot(RB_AUTOBOOT);
            }
        }
        _ => {
            let _ = writeln!(w, "ERR {line:?}");
        }
    }
}

fn main() {
    let echo_fd = listen_on(1234);
    let command_fd = listen_on(1235);
    std::thread::spawn(move || loop {
        let s = accept_one(echo_fd);
        std::thread::spawn(move || echo(s));
    });
    println!("vsock-guest: listening on 1234 (echo) and 1235 (commands)");
    loop {
        let s = accept_one(command_fd);
        std::thread::spawn(move || command(s));
    }
}
