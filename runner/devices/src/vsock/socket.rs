//! Small Unix-socket helpers std does not offer: writes that cannot raise
//! SIGPIPE (the embedding process may not ignore it) and a non-blocking connect
//! (a plain `connect` blocks the device thread when a listener's backlog is full).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{VolatileMemoryError, VolatileSlice, WriteVolatile};

/// `send(2)` with `MSG_NOSIGNAL`: a closed peer yields `EPIPE`, not a signal.
pub(crate) fn send_nosignal(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid readable buffer of `data.len()` bytes for the
    // duration of the call.
    let ret = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Adapts a stream so guest memory can be written to it with [`send_nosignal`].
pub(crate) struct NoSigPipe<'a>(pub &'a UnixStream);

impl WriteVolatile for NoSigPipe<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        // SAFETY: the guard keeps the guest mapping alive and valid for
        // `buf.len()` bytes while `send` reads from it; the kernel copies the
        // bytes, so concurrent guest writes can only change what is sent.
        let ret = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if ret < 0 {
            Err(VolatileMemoryError::IOError(io::Error::last_os_error()))
        } else {
            Ok(ret as usize)
        }
    }
}

/// Connects a non-blocking stream socket to `path`. A listener with a full
/// backlog yields `WouldBlock` instead of stalling the caller.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
