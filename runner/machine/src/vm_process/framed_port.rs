//! A non-blocking socket carrying Ethernet frames with passt's framing (a
//! 4-byte big-endian length before each), as the segment's switch and a
//! NIC's egress process hold them: whole frames out of what was read, and
//! a bounded queue of frames to write.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use runner_devices::net::stream::{MAX_FRAME, MIN_FRAME};

/// What a port may have queued towards its peer before frames are
/// dropped: about 170 full frames.
pub const MAX_QUEUED: usize = 256 << 10;
/// Reads of one port before the others get their turn.
pub const READS_PER_ROUND: usize = 16;

pub struct FramedPort {
    pub name: String,
    stream: UnixStream,
    /// Bytes read and not yet a whole frame.
    pub input: Vec<u8>,
    output: VecDeque<u8>,
    /// Its peer went away (or broke the framing): nothing more is read
    /// from or written to it.
    pub closed: bool,
    /// Why its frames were refused, each said once.
    noted: Vec<&'static str>,
}

/// What one read of a port gave.
pub enum Read1 {
    /// Bytes were added to the input.
    Some,
    /// Nothing more for now, or the port closed.
    Done,
}

impl FramedPort {
    pub fn new(name: String, stream: UnixStream) -> io::Result<FramedPort> {
        stream.set_nonblocking(true)?;
        Ok(FramedPort {
            name,
            stream,
            input: Vec::new(),
            output: VecDeque::new(),
            closed: false,
            noted: Vec::new(),
        })
    }

    /// The `poll` entry for this port: readable always, writable when
    /// something waits.
    pub fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN
                | if self.output.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                },
            revents: 0,
        }
    }

    /// One read into the input (after the bytes already there).
    pub fn read_once(&mut self, buf: &mut [u8]) -> Read1 {
        if self.closed {
            return Read1::Done;
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.close("its peer went away");
                    return Read1::Done;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    return Read1::Some;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(&format!("reading it failed: {e}"));
                    return Read1::Done;
                }
            }
        }
    }

    /// Reads what the peer sent (a bounded number of reads, so a peer that
    /// never stops cannot keep the others waiting) and gives each whole
    /// frame to `each` as it comes, so the input never holds more than one
    /// frame and one read. Broken framing closes the port.
    pub fn read_frames(&mut self, buf: &mut [u8], mut each: impl FnMut(&[u8])) {
        for _ in 0..READS_PER_ROUND {
            if let Read1::Done = self.read_once(buf) {
                return;
            }
            // Out of the port while `each` runs, and put back with only the
            // partial frame left, keeping its allocation.
            let mut input = std::mem::take(&mut self.input);
            match whole_frames(&input, &mut each) {
                Ok(taken) => {
                    input.drain(..taken);
                    self.input = input;
                }
                Err(why) => {
                    self.close(&why);
                    return;
                }
            }
        }
    }

    /// Queues `frame` for the peer; dropped when the queue is full, as a
    /// busy switch drops it.
    pub fn queue(&mut self, frame: &[u8]) {
        if self.closed || self.output.len() + 4 + frame.len() > MAX_QUEUED {
            tracing::debug!(port = %self.name, "dropped a frame: its peer does not keep up");
            return;
        }
        self.output.extend((frame.len() as u32).to_be_bytes());
        self.output.extend(frame);
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self) {
        while !self.closed && !self.output.is_empty() {
            let (front, _) = self.output.as_slices();
            match self.stream.write(front) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.close(&format!("writing to it failed: {e}")),
            }
        }
    }

    /// Says why the port's frames are refused, once per reason: a peer
    /// that spoofs or floods is worth a line, not a line per frame.
    pub fn note(&mut self, what: &str, why: &'static str) {
        if !self.noted.contains(&why) {
            self.noted.push(why);
            tracing::warn!("{what}: {} sent {why}: refused (said once)", self.name);
        }
    }

    pub fn close(&mut self, why: &str) {
        if !self.closed {
            tracing::debug!("port {} closed: {why}", self.name);
            self.closed = true;
            self.output.clear();
            self.input.clear();
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The whole frames at the front of `input`, each given to `each`;
/// returns how many bytes they took, or why the framing is broken.
pub fn whole_frames(input: &[u8], mut each: impl FnMut(&[u8])) -> Result<usize, String> {
    let mut at = 0;
    while let Some(len) = input.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(format!(
                "it sent a frame length of {len}, outside {MIN_FRAME}..={MAX_FRAME}"
            ));
        }
        let Some(frame) = input.get(at + 4..at + 4 + len) else {
            break;
        };
        at += 4 + len;
        each(frame);
    }
    Ok(at)
}

/// Waits until one of `fds` is ready; an interrupted wait is no error.
pub fn wait(fds: &mut [libc::pollfd], what: &str) -> Result<(), String> {
    // SAFETY: `fds` is a valid array of pollfd of that length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("polling {what}: {e}"));
        }
    }
    Ok(())
}
