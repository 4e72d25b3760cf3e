//! virtio-vsock packets in guest memory.
//!
//! A packet is a 44-byte little-endian `virtio_vsock_hdr` followed by `len` bytes
//! of payload. The driver may split both over any number of descriptors (Linux
//! 6.1 puts the header and the payload in separate descriptors, later kernels
//! use one), so everything here works on the list of guest ranges a chain
//! covers rather than on single descriptors.
//!
//! Payload bytes are never copied through an intermediate buffer when a socket
//! can take or give them directly: [`TxPacket::write_payload_to`] and
//! [`RxBuffer::read_payload_from`] move them between guest memory and the host
//! socket.

use std::io;
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions, ReadVolatile,
    VolatileMemoryError, WriteVolatile,
};

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload a packet may carry; the same bound Linux uses for its own
/// packets (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device implements.
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `VIRTIO_VSOCK_OP_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_raw(raw: u16) -> Option<Op> {
        Some(match raw {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes the little-endian wire form.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> VsockHeader {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        VsockHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if it is one this device knows.
    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }
}

/// Why a buffer from the driver was not accepted as a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("descriptor chain holds {0} bytes, less than the {HDR_SIZE}-byte header")]
    HeaderTooShort(usize),
    #[error("rx buffer of {0} bytes has no room for payload after the {HDR_SIZE}-byte header")]
    RxBufferTooSmall(usize),
    #[error("descriptor points outside guest memory")]
    BadDescriptor,
    #[error("header claims {claimed} payload bytes but the buffer holds {available}")]
    LenExceedsBuffer { claimed: usize, available: usize },
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    Oversized(usize),
    #[error("source CID {got} is not the guest's CID {expected}")]
    WrongSrcCid { got: u64, expected: u64 },
    #[error("destination CID {0} is not the host")]
    WrongDstCid(u64),
    #[error("unsupported socket type {0}")]
    UnknownType(u16),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
}

/// The guest-physical ranges one direction of a descriptor chain covers, in order.
#[derive(Debug, Default)]
struct GuestRanges {
    ranges: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl GuestRanges {
    /// Collects the readable (`writable == false`) or writable descriptors of
    /// `chain`, checking that each one lies in guest memory.
    fn from_chain<M, T>(
        mem: &M,
        chain: DescriptorChain<T>,
        writable: bool,
    ) -> Result<Self, PacketError>
    where
        M: GuestMemory,
        T: Deref,
        T::Target: GuestMemory,
    {
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let mut out = GuestRanges::default();
        let descs = if writable {
            chain.writable()
        } else {
            chain.readable()
        };
        for desc in descs {
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len, access) {
                return Err(PacketError::BadDescriptor);
            }
            out.ranges.push((desc.addr(), len));
            // A chain is at most 64Ki descriptors of at most 4 GiB each, which
            // fits in usize on the 64-bit hosts we support.
            out.len = out.len.saturating_add(len);
        }
        Ok(out)
    }

    /// The ranges covering bytes `[offset, offset + len)`, clipped to the chain.
    fn window(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
        let end = offset.saturating_add(len);
        let mut pos = 0usize;
        self.ranges.iter().filter_map(move |&(addr, rlen)| {
            let (rstart, rend) = (pos, pos + rlen);
            pos = rend;
            let start = offset.max(rstart);
            let stop = end.min(rend);
            (start < stop).then(|| (addr.unchecked_add_usize(start - rstart), stop - start))
        })
    }

    fn read_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.window(offset, buf.len()) {
            mem.read_slice(&mut buf[done..done + len], addr)?;
            done += len;
        }
        Ok(())
    }

    fn write_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        data: &[u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.window(offset, data.len()) {
            mem.write_slice(&data[done..done + len], addr)?;
            done += len;
        }
        Ok(())
    }
}

trait AddUsize {
    fn unchecked_add_usize(self, n: usize) -> GuestAddress;
}

impl AddUsize for GuestAddress {
    fn unchecked_add_usize(self, n: usize) -> GuestAddress {
        // Ranges were validated by `check_range`, so this cannot wrap.
        GuestAddress(self.0.wrapping_add(n as u64))
    }
}

fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

fn guest_to_io(e: GuestMemoryError) -> io::Error {
    match e {
        GuestMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// A packet the driver put on the tx queue.
#[derive(Debug)]
pub struct TxPacket {
    pub hdr: VsockHeader,
    payload: GuestRanges,
}

impl TxPacket {
    /// Reads and checks the header of a tx chain. Only the shape of the buffer
    /// is checked here; see [`TxPacket::check_addressing`] for the fields.
    pub fn parse<M, T>(mem: &M, chain: DescriptorChain<T>) -> Result<TxPacket, PacketError>
    where
        M: GuestMemory,
        T: Deref,
        T::Target: GuestMemory,
    {
        let ranges = GuestRanges::from_chain(mem, chain, false)?;
        if ranges.len < HDR_SIZE {
            return Err(PacketError::HeaderTooShort(ranges.len));
        }
        let mut raw = [0u8; HDR_SIZE];
        ranges
            .read_at(mem, 0, &mut raw)
            .map_err(|_| PacketError::BadDescriptor)?;
        let hdr = VsockHeader::from_bytes(&raw);
        let available = ranges.len - HDR_SIZE;
        let claimed = hdr.len as usize;
        // Only data packets carry payload; a length on anything else is ignored.
        let payload_len = if hdr.op == Op::Rw as u16 { claimed } else { 0 };
        if payload_len > MAX_PAYLOAD {
            return Err(PacketError::Oversized(payload_len));
        }
        if payload_len > available {
            return Err(PacketError::LenExceedsBuffer { claimed, available });
        }
        let payload = GuestRanges {
            ranges: ranges.window(HDR_SIZE, payload_len).collect(),
            len: payload_len,
        };
        Ok(TxPacket { hdr, payload })
    }

    /// Checks the addressing fields: the packet must come from `guest_cid`, go
    /// to the host, be a stream packet and carry a known operation.
    pub fn check_addressing(&self, guest_cid: u64) -> Result<Op, PacketError> {
        if self.hdr.src_cid != guest_cid {
            return Err(PacketError::WrongSrcCid {
                got: self.hdr.src_cid,
                expected: guest_cid,
            });
        }
        if self.hdr.dst_cid != HOST_CID {
            return Err(PacketError::WrongDstCid(self.hdr.dst_cid));
        }
        if self.hdr.type_ != TYPE_STREAM {
            return Err(PacketError::UnknownType(self.hdr.type_));
        }
        self.hdr.op().ok_or(PacketError::UnknownOp(self.hdr.op))
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload.len
    }

    /// Writes the payload from byte `offset` on to `dst` until it is all written
    /// or `dst` would block. Returns how many bytes went out; `Ok(0)` with bytes
    /// left means `dst` would block right away.
    pub fn write_payload_to<M, W>(&self, mem: &M, offset: usize, dst: &mut W) -> io::Result<usize>
    where
        M: GuestMemory,
        W: WriteVolatile,
    {
        let mut total = 0;
        for (addr, len) in self.payload.window(offset, self.payload.len) {
            let slices = mem
                .get_slices(addr, len, Permissions::Read)
                .map_err(guest_to_io)?;
            for slice in slices {
                let slice = slice.map_err(guest_to_io)?;
                match dst.write_volatile(&slice) {
                    Ok(n) => {
                        total += n;
                        if n < slice.len() {
                            return Ok(total);
                        }
                    }
                    Err(e) => {
                        let e = volatile_to_io(e);
                        return match e.kind() {
                            io::ErrorKind::WouldBlock if total > 0 => Ok(total),
                            io::ErrorKind::WouldBlock => Ok(0),
                            _ => Err(e),
                        };
                    }
                }
            }
        }
        Ok(total)
    }

    /// Appends the payload from byte `offset` on to `out`.
    pub fn copy_payload<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let start = out.len();
        let n = self.payload.len.saturating_sub(offset);
        out.resize(start + n, 0);
        self.payload
            .read_at(mem, offset, &mut out[start..])
            .map_err(guest_to_io)
    }
}

/// A buffer the driver offered on the rx queue, to be filled with one packet.
#[derive(Debug)]
pub struct RxBuffer {
    ranges: GuestRanges,
}

impl RxBuffer {
    /// Collects the writable part of an rx chain. It must fit a header and at
    /// least one payload byte: a header-only buffer could never carry data, and
    /// keeping it would stall the queue behind it.
    pub fn parse<M, T>(mem: &M, chain: DescriptorChain<T>) -> Result<RxBuffer, PacketError>
    where
        M: GuestMemory,
        T: Deref,
        T::Target: GuestMemory,
    {
        let ranges = GuestRanges::from_chain(mem, chain, true)?;
        if ranges.len <= HDR_SIZE {
            return Err(PacketError::RxBufferTooSmall(ranges.len));
        }
        Ok(RxBuffer { ranges })
    }

    /// How many payload bytes fit after the header (capped at [`MAX_PAYLOAD`]).
    pub fn payload_capacity(&self) -> usize {
        (self.ranges.len - HDR_SIZE).min(MAX_PAYLOAD)
    }

    /// Writes the header; `hdr.len` must already describe the payload.
    /// Returns the number of bytes the packet occupies.
    pub fn write_header<M: GuestMemory>(&self, mem: &M, hdr: &VsockHeader) -> io::Result<u32> {
        self.ranges
            .write_at(mem, 0, &hdr.to_bytes())
            .map_err(guest_to_io)?;
        Ok(HDR_SIZE as u32 + hdr.len)
    }

    /// Writes a payload copied from host memory; it must fit
    /// [`RxBuffer::payload_capacity`].
    pub fn write_payload<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> io::Result<()> {
        if data.len() > self.payload_capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "payload exceeds rx buffer",
            ));
        }
        self.ranges
            .write_at(mem, HDR_SIZE, data)
            .map_err(guest_to_io)
    }

    /// Reads up to `max` payload bytes from `src` straight into guest memory.
    /// Returns `Ok(0)` at end of stream and `WouldBlock` if nothing was ready.
    pub fn read_payload_from<M, R>(&self, mem: &M, src: &mut R, max: usize) -> io::Result<usize>
    where
        M: GuestMemory,
        R: ReadVolatile,
    {
        let max = max.min(self.payload_capacity());
        let mut total = 0;
        for (addr, len) in self.ranges.window(HDR_SIZE, max) {
            let slices = mem
                .get_slices(addr, len, Permissions::Write)
                .map_err(guest_to_io)?;
            for slice in slices {
                let mut slice = slice.map_err(guest_to_io)?;
                match src.read_volatile(&mut slice) {
                    Ok(n) => {
                        total += n;
                        if n < slice.len() {
                            return Ok(total);
                        }
                    }
                    Err(e) => {
                        let e = volatile_to_io(e);
                        return if e.kind() == io::ErrorKind::WouldBlock && total > 0 {
                            Ok(total)
                        } else {
                            Err(e)
                        };
                    }
                }
            }
        }
        Ok(total)
    }
}
