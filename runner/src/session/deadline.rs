//! Socket I/O that cannot outlast a deadline.
//!
//! The guest is hostile: it may keep talking for ever, trickle one byte at a
//! time, or stop granting vsock credit so that our writes block. A socket
//! timeout alone bounds only one `read`/`write` call, so a guest that sends
//! a byte just before each timeout would never be stopped. [`DeadlineIo`]
//! therefore sets the socket timeout to the time *left* before every call:
//! however the guest paces its bytes, the operation ends at the deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Why a [`DeadlineIo`] operation gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The overall deadline passed.
    Deadline,
    /// One call made no progress for the whole stall limit.
    Stalled(Duration),
}

/// A `Read`/`Write` view of a socket bounded by an overall deadline and,
/// optionally, a limit on how long one call may make no progress.
pub(crate) struct DeadlineIo<'a> {
    stream: &'a UnixStream,
    deadline: Option<Instant>,
    stall: Option<Duration>,
    expired: Option<Expiry>,
}

impl<'a> DeadlineIo<'a> {
    pub(crate) fn new(
        stream: &'a UnixStream,
        deadline: Option<Instant>,
        stall: Option<Duration>,
    ) -> DeadlineIo<'a> {
        DeadlineIo {
            stream,
            deadline,
            stall,
            expired: None,
        }
    }

    /// What ended the last operation, if a limit did.
    pub(crate) fn expired(&self) -> Option<Expiry> {
        self.expired
    }

    /// The socket timeout for the next call, and what it will mean if it
    /// runs out; an error once the deadline has passed.
    fn next_limit(&mut self) -> io::Result<Option<(Duration, Expiry)>> {
        let left = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // A zero socket timeout means "block for ever": never pass it.
                if left < Duration::from_millis(1) {
                    return Err(self.expire(Expiry::Deadline));
                }
                Some(left)
            }
            None => None,
        };
        Ok(match (left, self.stall) {
            (Some(left), Some(stall)) if stall < left => Some((stall, Expiry::Stalled(stall))),
            (Some(left), _) => Some((left, Expiry::Deadline)),
            (None, Some(stall)) => Some((stall, Expiry::Stalled(stall))),
            (None, None) => None,
        })
    }

    fn expire(&mut self, why: Expiry) -> io::Error {
        self.expired = Some(why);
        io::Error::new(io::ErrorKind::TimedOut, "host deadline passed")
    }

    fn check<T>(&mut self, result: io::Result<T>, why: Option<Expiry>) -> io::Result<T> {
        match (result, why) {
            (Err(e), Some(why)) if is_timeout(&e) => Err(self.expire(why)),
            (result, _) => result,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self.next_limit()?;
        self.stream.set_read_timeout(limit.map(|(t, _)| t))?;
        let result = (&mut &*self.stream).read(buf);
        self.check(result, limit.map(|(_, why)| why))
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let limit = self.next_limit()?;
        self.stream.set_write_timeout(limit.map(|(t, _)| t))?;
        let result = (&mut &*self.stream).write(buf);
        self.check(result, limit.map(|(_, why)| why))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickling_peer_cannot_stretch_a_read_past_the_deadline() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // One byte every 20 ms: each single read succeeds quickly, only the
        // overall deadline can end it.
        let trickle = std::thread::spawn(move || {
            let mut theirs = theirs;
            while theirs.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut io = DeadlineIo::new(
            &ours,
            Some(Instant::now() + Duration::from_millis(300)),
            Some(Duration::from_secs(60)),
        );
        let mut sink = Vec::new();
        let err = io.read_to_end(&mut sink).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io.expired(), Some(Expiry::Deadline));
        assert!(!sink.is_empty());
        // Hanging up ends the trickle.
        drop(ours);
        trickle.join().unwrap();
    }

    #[test]
    fn a_peer_that_stops_reading_makes_writes_stall() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut io = DeadlineIo::new(&ours, None, Some(Duration::from_millis(200)));
        // Nobody reads: the socket buffer fills, then the write blocks.
        let chunk = vec![0u8; 64 * 1024];
        let err = loop {
            if let Err(e) = io.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            io.expired(),
            Some(Expiry::Stalled(Duration::from_millis(200)))
        );
    }

    #[test]
    fn a_passed_deadline_fails_at_once() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut io = DeadlineIo::new(&ours, Some(Instant::now()), None);
        assert!(io.read(&mut [0u8; 4]).is_err());
        assert_eq!(io.expired(), Some(Expiry::Deadline));
    }
}
