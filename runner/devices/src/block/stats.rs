//! Request counters a block device keeps, readable from any thread while the
//! device runs (e.g. by whoever owns the vhost-user server it was moved into).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// Successful read requests, and the bytes they returned.
    pub reads: u64,
    pub read_bytes: u64,
    /// Successful write requests, and the bytes they stored.
    pub writes: u64,
    pub written_bytes: u64,
    pub flushes: u64,
    /// Requests answered with anything but OK, or dropped as malformed.
    pub failed: u64,
}

/// The live counters of one device.
#[derive(Debug, Default)]
pub struct BlockStats {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    written_bytes: AtomicU64,
    flushes: AtomicU64,
    failed: AtomicU64,
    /// Bytes written, also counted here: a word of memory the host shares
    /// with this process, so the host reads it without asking.
    written_mirror: OnceLock<&'static AtomicU64>,
}

impl BlockStats {
    pub fn counts(&self) -> IoCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoCounts {
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            written_bytes: get(&self.written_bytes),
            flushes: get(&self.flushes),
            failed: get(&self.failed),
        }
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn wrote(&self, bytes: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(mirror) = self.written_mirror.get() {
            mirror.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts the bytes written in `mirror` too, from now on (once).
    pub fn mirror_written(&self, mirror: &'static AtomicU64) {
        let _ = self.written_mirror.set(mirror);
    }

    pub(crate) fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}
