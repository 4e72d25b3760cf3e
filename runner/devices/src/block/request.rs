//! Turns a descriptor chain into a validated virtio-blk request.
//!
//! A request is a 16-byte header (`type`, reserved, `sector`) in
//! device-readable memory, then the data, then one status byte in
//! device-writable memory. With `VIRTIO_F_VERSION_1` the driver may frame this
//! however it likes, so the chain is treated as two byte streams: everything
//! readable (header, then data for writes) followed by everything writable
//! (data for reads, then the status byte, which is the very last byte).
//!
//! Nothing here trusts the driver: every guest range is checked against guest
//! memory before use, lengths are summed in u64, and the caller decides what
//! to tell the driver about a chain that does not parse.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_SIZE: u64 = 16;

/// What the driver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    /// Any other `VIRTIO_BLK_T_*`; answered with UNSUPP.
    Other(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> RequestType {
        match raw {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Other(other),
        }
    }
}

/// One contiguous piece of guest memory, known to be inside it.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u64,
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Device-readable bytes after the header (the data of a write).
    pub readable: Vec<Segment>,
    /// Device-writable bytes before the status byte (where reads and
    /// `GET_ID` put their data).
    pub writable: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A chain that is not a valid request.
#[derive(Debug)]
pub enum Rejected {
    /// Not a single writable byte: there is nowhere to put a status, so the
    /// chain can only be handed back unanswered.
    NoStatus,
    /// The status byte can be written (IOERR), but the request is unusable.
    Malformed {
        status: GuestAddress,
        reason: String,
    },
}

/// Total length of `segments`.
pub fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// Drops the first `n` bytes of `segments`.
fn skip_front(segments: &mut Vec<Segment>, mut n: u64) {
    let mut drop = 0;
    for seg in segments.iter_mut() {
        if n < seg.len {
            seg.addr = seg.addr.unchecked_add(n);
            seg.len -= n;
            break;
        }
        n -= seg.len;
        drop += 1;
    }
    segments.drain(..drop);
}

/// Parses `chain`.
pub fn parse<M, T>(mem: &M, chain: DescriptorChain<T>) -> Result<Request, Rejected>
where
    M: GuestMemory,
    T: Deref,
    T::Target: GuestMemory,
{
    let mut readable = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    let mut readable_after_writable = false;
    let mut outside_memory = None;
    // The iterator ends early on a broken chain (bad index, loop, bad
    // indirect table); what was collected until then is judged below.
    for desc in chain {
        if desc.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(seg.addr, desc.len() as usize, access) {
            outside_memory.get_or_insert(seg);
        }
        if desc.is_write_only() {
            writable.push(seg);
        } else {
            readable_after_writable |= !writable.is_empty();
            readable.push(seg);
        }
    }

    let Some(last) = writable.last_mut() else {
        return Err(Rejected::NoStatus);
    };
    let status = match last.addr.checked_add(last.len - 1) {
        Some(status) if mem.check_range(status, 1, Permissions::Write) => status,
        _ => return Err(Rejected::NoStatus),
    };
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    let malformed = |reason: String| Rejected::Malformed { status, reason };

    if let Some(seg) = outside_memory {
        return Err(malformed(format!(
            "buffer of {} bytes at {:#x} is outside guest memory",
            seg.len,
            seg.addr.raw_value()
        )));
    }
    if readable_after_writable {
        return Err(malformed(
            "device-readable descriptor after a device-writable one".into(),
        ));
    }
    let mut header = [0u8; HEADER_SIZE as usize];
    read_from(mem, &readable, &mut header).map_err(|_| {
        malformed(format!(
            "request header needs {HEADER_SIZE} readable bytes, the chain has {}",
            total_len(&readable)
        ))
    })?;
    skip_front(&mut readable, HEADER_SIZE);
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    Ok(Request {
        kind: RequestType::from_raw(u32::from_le_bytes([t0, t1, t2, t3])),
        sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        readable,
        writable,
        status,
    })
}

/// Fills `buf` from the start of `segments`.
fn read_from<M: GuestMemory>(
    mem: &M,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), GuestMemoryError> {
    let mut cursor = Cursor::new(segments);
    cursor.gather(mem, buf)
}

/// A position in a list of segments, for moving data between them and one
/// host buffer a window at a time.
pub struct Cursor<'s> {
    segments: &'s [Segment],
    index: usize,
    offset: u64,
}

impl<'s> Cursor<'s> {
    pub fn new(segments: &'s [Segment]) -> Cursor<'s> {
        Cursor {
            segments,
            index: 0,
            offset: 0,
        }
    }

    /// Calls `f(guest address, host range)` for the next `len` bytes.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0usize;
        while done < len {
            let Some(seg) = self.segments.get(self.index) else {
                return Err(GuestMemoryError::PartialBuffer {
                    expected: len,
                    completed: done,
                });
            };
            let take = (seg.len - self.offset).min((len - done) as u64) as usize;
            f(seg.addr.unchecked_add(self.offset), done..done + take)?;
            done += take;
            self.offset += take as u64;
            if self.offset == seg.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        Ok(())
    }

    /// Copies the next `buf.len()` bytes of guest memory into `buf`.
    pub fn gather<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let len = buf.len();
        self.walk(len, |addr, range| mem.read_slice(&mut buf[range], addr))
    }

    /// Copies `buf` into the next `buf.len()` bytes of guest memory.
    pub fn scatter<M: GuestMemory>(&mut self, mem: &M, buf: &[u8]) -> Result<(), GuestMemoryError> {
        self.walk(buf.len(), |addr, range| mem.write_slice(&buf[range], addr))
    }
}
