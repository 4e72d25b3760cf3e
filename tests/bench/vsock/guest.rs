// Guest /init for tests/bench/vsock.sh: exercises a vsock device through the
// real Linux driver. Built by the script as a static binary outside the
// workspace (its only dependency is libc).
//
// Port 1234: echo. Port 1235: command protocol (one line per connection):
//   SINK <n>      read n bytes, reply "<crc32 hex> <bytes missing>\n"
//   SOURCE <n>    send n bytes of a pattern, then close
//   DIAL <port>   connect to host port, send "hello from guest\n", relay the
//                 first reply line back as "DIALED <line>"
//   REBOOT        reboot (QEMU exits with -no-reboot)
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as u16;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn listen(port: u32) -> i32 {
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let a = vsock_addr(libc::VMADDR_CID_ANY, port);
        let r = libc::bind(fd, &a as *const _ as *const libc::sockaddr, std::mem::size_of_val(&a) as u32);
        assert!(r == 0, "bind {port}: {}", std::io::Error::last_os_error());
        assert!(libc::listen(fd, 16) == 0);
        fd
    }
}

fn accept(fd: i32) -> File {
    loop {
        let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c >= 0 {
            return unsafe { File::from_raw_fd(c) };
        }
    }
}

fn connect(port: u32) -> std::io::Result<File> {
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let a = vsock_addr(2, port);
        if libc::connect(fd, &a as *const _ as *const libc::sockaddr, std::mem::size_of_val(&a) as u32) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(File::from_raw_fd(fd))
    }
}

fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB88320 ^ (c >> 1) } else { c >> 1 };
        }
        *e = c;
    }
    t
}

fn crc32(t: &[u32; 256], crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for b in data {
        c = t[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Byte i of a SOURCE stream: block k = i / 65536 holds (j*7 + k) & 0xff.
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
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SHUT_WR) };
}

fn command(s: File) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut w = s;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["SINK", n] => {
            let mut left: u64 = n.parse().unwrap_or(0);
            let t = crc_table();
            let mut h = 0u32;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                match r.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        h = crc32(&t, h, &buf[..k]);
                        left -= k as u64;
                    }
                }
            }
            let _ = writeln!(w, "{h:08x} {left}");
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
            let port: u32 = port.parse().unwrap_or(0);
            let reply = match connect(port) {
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
            unsafe {
                libc::sync();
                libc::reboot(libc::RB_AUTOBOOT);
            }
        }
        _ => {
            let _ = writeln!(w, "ERR {line:?}");
        }
    }
}

fn main() {
    println!("vsock-guest: up");
    let e = listen(1234);
    let c = listen(1235);
    std::thread::spawn(move || loop {
        let s = accept(e);
        std::thread::spawn(move || echo(s));
    });
    println!("vsock-guest: listening on 1234 (echo) and 1235 (commands)");
    loop {
        let s = accept(c);
        std::thread::spawn(move || command(s));
    }
}
