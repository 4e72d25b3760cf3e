//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! a descriptor chain and the guest memory around it, both taken from the
//! fuzzer's bytes, fed to the vsock packet and virtio-blk request parsers;
//! and a saved device state from a snapshot file ([`device_state`]).
//!
//! They live here, not in the fuzz crate, so that this crate's own tests can
//! replay the inputs kept in `fuzz/regressions/` through exactly the code the
//! fuzzer ran, and so that the parsers need not be public.
//!
//! Input layout (all the guest controls, byte for byte):
//!
//! | bytes          | meaning                                                |
//! |----------------|--------------------------------------------------------|
//! | 0              | bits 0-2: head descriptor; bit 7: vsock rx (else tx)   |
//! | 1..=128        | the raw descriptor table, [`QUEUE_SIZE`] × 16 bytes     |
//! | 129..          | guest memory from [`DATA`] on, spilling into region 2  |
//!
//! Guest memory is three 32 KiB regions: two adjacent ones from 0 (so one
//! descriptor can span a region boundary, which every copy must handle), a
//! hole, then [`REGION2`] (so a descriptor can run into the hole). The input
//! fills the first 64 KiB from [`DATA`] on, then spills into [`REGION2`].

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::request::{self, total_len, Cursor, Rejected};
use crate::vsock::packet::{RxBuffer, TxPacket, VsockHeader, MAX_PAYLOAD};
use virtio_queue::{DescriptorChain, Queue, QueueT};

/// Descriptors in the queue; small, so the fuzzer finds loops and indirect
/// tables quickly.
pub const QUEUE_SIZE: u16 = 8;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
/// Where the free-form part of the input lands in guest memory.
pub const DATA: u64 = 0x1000;
const REGION_SIZE: usize = 0x8000;
/// Start of the last region; `[2 * REGION_SIZE, REGION2)` is a hole.
pub const REGION2: u64 = 0x2_0000;
const TABLE_BYTES: usize = QUEUE_SIZE as usize * 16;
/// The guest's CID as far as the vsock checks go.
const GUEST_CID: u64 = 3;

/// Builds guest memory and a queue from `input` (everything after the
/// control byte) and pops the chain headed by `head`.
/// Returns what `f` returns, or false if no chain could be popped.
fn with_chain(
    head: u16,
    input: &[u8],
    f: impl FnOnce(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> bool,
) -> bool {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION_SIZE),
        (GuestAddress(REGION_SIZE as u64), REGION_SIZE),
        (GuestAddress(REGION2), REGION_SIZE),
    ])
    .expect("guest memory");
    let (table, data) = input.split_at(input.len().min(TABLE_BYTES));
    let (first, second) = data.split_at(data.len().min(2 * REGION_SIZE - DATA as usize));
    let second = &second[..second.len().min(REGION_SIZE)];
    // The avail ring offers exactly one chain.
    let avail: [u16; 3] = [0, 1, head];
    let written = mem.write_slice(table, GuestAddress(DESC_TABLE)).is_ok()
        && mem.write_slice(first, GuestAddress(DATA)).is_ok()
        && mem.write_slice(second, GuestAddress(REGION2)).is_ok()
        && avail.iter().enumerate().all(|(i, v)| {
            mem.write_obj(*v, GuestAddress(AVAIL_RING + 2 * i as u64))
                .is_ok()
        });
    assert!(written, "the fixed layout fits guest memory");

    let mut queue = Queue::new(QUEUE_SIZE).expect("queue size is a power of two");
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    match queue.pop_descriptor_chain(&mem) {
        Some(chain) => f(&mem, chain),
        None => false,
    }
}

/// The vsock device's view of one chain: a tx packet (parsed, checked, its
/// payload copied out both ways) or an rx buffer (filled both ways).
/// Returns whether the chain was accepted.
pub fn vsock_packet(data: &[u8]) -> bool {
    let Some((&control, rest)) = data.split_first() else {
        return false;
    };
    with_chain(u16::from(control & 7), rest, |mem, chain| {
        if control & 0x80 == 0 {
            vsock_tx(mem, chain)
        } else {
            vsock_rx(mem, chain)
        }
    })
}

fn vsock_tx(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> bool {
    let Ok(packet) = TxPacket::parse(mem, chain) else {
        return false;
    };
    let len = packet.payload_len();
    assert!(len <= MAX_PAYLOAD, "payload of {len} bytes accepted");
    let _ = packet.check_addressing(GUEST_CID);
    // Every range of a parsed packet was checked, so reading cannot fail.
    let mut copied = Vec::new();
    packet
        .copy_payload(mem, 0, &mut copied)
        .expect("a parsed payload is readable");
    assert_eq!(copied.len(), len);
    // A socket that takes 7 bytes at a time, so writes resume mid-range.
    let mut sent = vec![0u8; len];
    let mut offset = 0;
    while offset < len {
        let mut window = &mut sent[offset..(offset + 7).min(len)];
        let n = packet
            .write_payload_to(mem, offset, &mut window)
            .expect("a parsed payload is readable");
        assert!(n > 0, "no progress at {offset} of {len}");
        offset += n;
    }
    assert_eq!(sent, copied, "both ways of reading the payload agree");
    true
}

fn vsock_rx(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> bool {
    let Ok(buffer) = RxBuffer::parse(mem, chain) else {
        return false;
    };
    let capacity = buffer.payload_capacity();
    assert!(
        capacity > 0 && capacity <= MAX_PAYLOAD,
        "capacity {capacity}"
    );
    let payload: Vec<u8> = (0..capacity).map(|i| i as u8).collect();
    let hdr = VsockHeader {
        len: capacity as u32,
        ..VsockHeader::default()
    };
    buffer
        .write_header(mem, &hdr)
        .expect("a parsed buffer is writable");
    buffer
        .write_payload(mem, &payload)
        .expect("a payload of its capacity fits");
    assert!(buffer.write_payload(mem, &[0; MAX_PAYLOAD + 1]).is_err());
    let n = buffer
        .read_payload_from(mem, &mut &payload[..], usize::MAX)
        .expect("a parsed buffer is writable");
    assert_eq!(n, capacity);
    true
}

/// The block device's view of one chain: parsed, then the status byte and
/// every data byte of a valid request touched the way the device would.
/// Returns whether the chain parsed as a request.
pub fn block_request(data: &[u8]) -> bool {
    let Some((&control, rest)) = data.split_first() else {
        return false;
    };
    with_chain(u16::from(control & 7), rest, |mem, chain| {
        match request::parse(mem, chain) {
            Err(Rejected::NoStatus) => false,
            Err(Rejected::Malformed { status, .. }) => {
                mem.write_obj(0xffu8, status)
                    .expect("the status byte of a malformed request is writable");
                false
            }
            Ok(req) => {
                mem.write_obj(0u8, req.status)
                    .expect("the status byte of a request is writable");
                // Bounded: an indirect table can claim 4 GiB per descriptor.
                let cap = 1 << 20;
                let mut buf = vec![0u8; total_len(&req.readable).min(cap) as usize];
                Cursor::new(&req.readable)
                    .gather(mem, &mut buf)
                    .expect("the data of a request is readable");
                let buf = vec![0xa5u8; total_len(&req.writable).min(cap) as usize];
                Cursor::new(&req.writable)
                    .scatter(mem, &buf)
                    .expect("the data buffer of a request is writable");
                true
            }
        }
    })
}

/// Features the block device state is checked against (what a
/// `BlockDevice` offers for a writable disk).
pub const STATE_BLOCK_FEATURES: u64 = 0x1_3000_0244;
/// Disk size, in sectors, the block device state is checked against: 33
/// 4 KiB chunks and a half (so the bitmap's last word is partial and the
/// last chunk short).
pub const STATE_BLOCK_SECTORS: u64 = 33 * 8 + 4;
/// The serial the block device state is checked against.
pub const STATE_BLOCK_SERIAL: &[u8; 20] = b"fuzz-serial\0\0\0\0\0\0\0\0\0";
/// The guest CID the vsock device state is checked against.
pub const STATE_VSOCK_CID: u64 = 3;

/// A saved device state from a snapshot file, decoded the way
/// `restore_state` does before it changes anything. Byte 0 picks the
/// device: bit 0 clear for block (bit 1 set: a read-only device), set for
/// vsock; the rest is the state. Returns whether the state was accepted.
pub fn device_state(data: &[u8]) -> bool {
    let Some((&control, state)) = data.split_first() else {
        return false;
    };
    if control & 1 == 1 {
        return crate::vsock::snapshot::decode(state, STATE_VSOCK_CID).is_ok();
    }
    let expect = crate::block::snapshot::Expected {
        features: STATE_BLOCK_FEATURES,
        capacity: STATE_BLOCK_SECTORS,
        serial: *STATE_BLOCK_SERIAL,
        read_only: control & 2 != 0,
    };
    match crate::block::snapshot::decode(state, &expect) {
        Ok(decoded) => {
            assert_eq!(
                decoded.acked_features & !STATE_BLOCK_FEATURES,
                0,
                "acked features never offered"
            );
            assert_eq!(decoded.chunks.is_none(), expect.read_only);
            if let Some(chunks) = decoded.chunks {
                // Chunks are at least a sector.
                assert!(chunks.count() <= STATE_BLOCK_SECTORS);
            }
            true
        }
        Err(_) => false,
    }
}

/// Replays every input kept under `fuzz/regressions/<target>` (crashes
/// the fuzzer once found) and `fuzz/seeds/<target>`, so they stay fixed
/// without running a fuzzer. Seeds are valid inputs, so each must be
/// accepted: that keeps them in step with the input layout. Every crate
/// with fuzz entry points replays its targets through this (in its tests).
pub fn replay(target: &str, entry: fn(&[u8]) -> bool) {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"));
    let mut replayed = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for file in entries {
            let path = file.unwrap().path();
            let accepted = entry(&std::fs::read(&path).unwrap());
            assert!(
                accepted || dir != "seeds",
                "seed {} rejected",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no fuzz inputs for {target}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_vsock_packet_inputs() {
        replay("vsock_packet", vsock_packet);
    }

    #[test]
    fn replay_block_request_inputs() {
        replay("block_request", block_request);
    }

    #[test]
    fn replay_device_state_inputs() {
        replay("device_state", device_state);
    }

    /// A few thousand mutations of each seed (bit flips, overwritten
    /// words, truncations, insertions) through the decoders, so their
    /// checks run on near-valid input in every `cargo test`, not only
    /// under a fuzzer.
    #[test]
    fn mutated_device_states_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/device_state");
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |bound: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % bound.max(1) as u64) as usize
        };
        let mut accepted = 0;
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("seeds") {
            let seed = std::fs::read(entry.expect("seed").path()).expect("read seed");
            seeds += 1;
            for _ in 0..20_000 {
                let mut input = seed.clone();
                for _ in 0..1 + next(3) {
                    let at = next(input.len());
                    match next(4) {
                        0 => input[at] ^= 1 << next(8),
                        1 => {
                            let word = (next(usize::MAX) as u64).to_le_bytes();
                            let end = (at + 8).min(input.len());
                            input[at..end].copy_from_slice(&word[..end - at]);
                        }
                        2 => input.truncate(at.max(1)),
                        _ => input.insert(at, next(256) as u8),
                    }
                }
                if device_state(&input) {
                    accepted += 1;
                }
            }
        }
        assert!(seeds >= 4, "seeds missing from {dir}");
        // Some mutations (of flags, padding or chunk contents) stay valid.
        assert!(accepted > 0);
    }
}
