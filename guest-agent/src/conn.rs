//! A connection with a small receive buffer, so that frames can be read
//! both blockingly (between requests, through `Read`) and without blocking
//! (while a command runs and the agent `poll`s the socket next to the
//! command's pipes, where a half-arrived frame must not stall the output).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use agent_protocol::{read_frame, write_frame, Frame, ProtocolError, MAX_FRAME};

/// Frame header: `u32` little-endian payload length, then the kind byte.
const HEADER: usize = 5;
/// Largest single read from the socket into the buffer.
const READ_CHUNK: usize = 64 * 1024;

pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
}

impl<S: Read + Write + AsFd> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        write_frame(&mut self.stream, frame)
    }

    /// Ends our side of the connection (the peer reads EOF after everything
    /// sent so far) and waits up to `linger` for the peer to close its side,
    /// which tells that it has read everything. Errors mean it is gone already.
    pub fn finish_sending(&mut self, linger: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{shutdown, Shutdown};
        use std::os::fd::AsRawFd;
        if shutdown(self.stream.as_fd().as_raw_fd(), Shutdown::Write).is_err() {
            return;
        }
        let until = Instant::now() + linger;
        let mut sink = [0u8; 4096];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return, // linger expired
                Ok(_) => match self.stream.read(&mut sink) {
                    Ok(0) => return, // the peer closed: it has everything
                    Ok(_) => {}      // late frames: nothing to do with them now
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                },
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// The raw write side, for adapters that frame data themselves.
    pub fn writer(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Blocks for the next frame; `Ok(None)` on a clean close.
    pub fn recv(&mut self) -> Result<Option<Frame>, ProtocolError> {
        read_frame(self)
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Takes a complete frame out of the buffer, if one is there. Never
    /// touches the socket.
    pub fn take_buffered_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let have = self.buffered();
        if have.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([have[0], have[1], have[2], have[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::Oversized(len));
        }
        if have.len() < HEADER + len {
            return Ok(None);
        }
        let mut frame_bytes = &have[..HEADER + len];
        let frame = read_frame(&mut frame_bytes)?;
        self.start += HEADER + len;
        self.compact();
        frame.ok_or(ProtocolError::Truncated).map(Some)
    }

    /// One `read` from the socket into the buffer: call it when `poll` said
    /// the socket is readable, so it does not block. Returns the byte count,
    /// 0 meaning the peer closed.
    pub fn fill_once(&mut self) -> io::Result<usize> {
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let result = loop {
            match self.stream.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        result
    }

    /// Drops consumed bytes so the buffer never grows past about one frame.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() > 2 * READ_CHUNK && self.buf.len() <= READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
    }
}

/// Serves buffered bytes first, then reads the socket directly.
impl<S: Read + Write + AsFd> Read for Conn<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.buf.len() {
            let have = self.buffered();
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            self.start += n;
            self.compact();
            return Ok(n);
        }
        self.stream.read(out)
    }
}
