//! Accepting connections: AF_VSOCK in the guest, a Unix socket for tests on
//! the host. Each connection gets its own thread, so a long command on one
//! does not hold up another.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use crate::server::{serve_connection, ConnectionEnd};

/// Connection threads only run the small request loop: keep stacks small.
const CONNECTION_STACK: usize = 256 * 1024;

/// Binds AF_VSOCK `port` on any CID. Retries briefly: the vsock transport
/// may still be probing when init starts.
pub fn bind_vsock(port: u32) -> io::Result<OwnedFd> {
    let mut attempt = 0;
    loop {
        match try_bind_vsock(port) {
            Ok(fd) => return Ok(fd),
            Err(e) if attempt < 10 => {
                attempt += 1;
                crate::console!("vsock port {port} not ready yet ({e}), retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn try_bind_vsock(port: u32) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// Serves connections accepted on a bound vsock socket; never returns.
pub fn serve_vsock(listener: OwnedFd) -> ! {
    loop {
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nobody else owns.
            // A `File` is just read(2)/write(2) on it, which is all a
            // connected stream socket needs.
            Ok(fd) => handle(File::from(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {}
            Err(e) => {
                // E.g. EMFILE: back off rather than spin; keep serving.
                crate::console!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket file.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Serves connections accepted on a Unix listener; never returns.
pub fn serve_unix(listener: UnixListener) -> ! {
    loop {
        match listener.accept() {
            Ok((stream, _)) => handle(stream),
            Err(e) => {
                crate::console!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle<S>(stream: S)
where
    S: io::Read + io::Write + std::os::fd::AsFd + Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name("connection".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            if serve_connection(stream) == ConnectionEnd::Shutdown {
                crate::pid1::power_off();
            }
        });
    if let Err(e) = spawned {
        // The stream was moved into the failed closure and is closed with it.
        crate::console!("cannot start a connection thread: {e}");
    }
}
