//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! a descriptor chain and the guest memory around it, both taken from the
//! fuzzer's bytes, fed to the vsock packet and virtio-blk request parsers
//! to the virtio-net transmit path and to the egress policy with its DNS
//! forwarder ([`net_filter`]); a saved device state from a snapshot file
//! ([`device_state`]); a cache volume's layer file ([`layer_file`]); and
//! the frames members of a job's private segment send ([`segment`]).
//!
//! They live here, not in the fuzz crate, so that this crate's own tests can
//! replay the inputs kept in `fuzz/regressions/` through exactly the code the
//! fuzzer ran, and so that the parsers need not be public.
//!
//! Input layout (all the guest controls, byte for byte):
//!
//! | bytes          | meaning                                                |
//! |----------------|--------------------------------------------------------|
//! | 0              | bits 0-2: head descriptor; the rest per entry point    |
//! | 1..=128        | the raw descriptor table, [`QUEUE_SIZE`] × 16 bytes     |
//! | 129..          | guest memory from [`DATA`] on, spilling into region 2  |
//!
//! Guest memory is three 32 KiB regions: two adjacent ones from 0 (so one
//! descriptor can span a region boundary, which every copy must handle), a
//! hole, then [`REGION2`] (so a descriptor can run into the hole). The input
//! fills the first 64 KiB from [`DATA`] on, then spills into [`REGION2`].

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::request::{self, total_len, Cursor, Rejected};
use crate::common::VirtioCommon;
use crate::net::dns;
use crate::net::egress::{Egress, NameRule, Rules};
use crate::net::filter::Verdict;
use crate::net::segment::{Member, RateLimit, Segment, Switched, MAX_SEGMENT_FRAME};
use crate::net::{stream, NetConfig, NetDevice, TX_QUEUE};
use crate::snapshot::codec;
use crate::snapshot::state::DeviceState;
use crate::virtio::{DeviceContext, Interrupt, VirtioDevice};
use crate::vsock::packet::{RxBuffer, TxPacket, VsockHeader, MAX_PAYLOAD};
use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_ID_VSOCK};
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
    let (mem, mut queue) = guest(head, input);
    match queue.pop_descriptor_chain(&mem) {
        Some(chain) => f(&mem, chain),
        None => false,
    }
}

/// Guest memory laid out from `input` (everything after the control
/// byte), and a ready queue whose avail ring offers the chain headed by
/// `head`.
fn guest(head: u16, input: &[u8]) -> (GuestMemoryMmap, Queue) {
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
    (mem, queue)
}

/// The vsock device's view of one chain: a tx packet (parsed, checked, its
/// payload copied out both ways) or an rx buffer (filled both ways). Bit 7
/// of the control byte: rx (else tx). Returns whether the chain was
/// accepted.
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

/// Control byte bit of [`net_filter`]: the driver took no VERSION_1, so
/// its frames follow the 10-byte legacy header.
pub const NET_LEGACY: u8 = 1 << 3;
/// Control byte bit of [`net_filter`]: the rest of the input is a series
/// of records for the egress policy alone (no chain, no device): a kind
/// byte (even: a frame from the guest; odd: a datagram from the
/// resolver), a 16-bit big-endian length, and that many bytes.
pub const NET_BARE_FRAME: u8 = 1 << 6;

/// The egress rules [`net_filter`] runs the records through: one address,
/// a name, a wildcard, and a name the operator named.
pub fn net_rules() -> Rules {
    let name = |pattern: &str, port, named_by_operator| NameRule {
        pattern: pattern.into(),
        port,
        named_by_operator,
    };
    Rules {
        public: false,
        addresses: vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080)],
        names: vec![
            name("crates.io", 443, false),
            name("*.example.org", 80, false),
            name("web.test", 8000, true),
        ],
        dns: Ipv4Addr::new(10, 0, 2, 3),
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        resolver: true,
    }
}

/// Interrupts nobody listens for.
struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What the guest sends on the network. Without [`NET_BARE_FRAME`]: the
/// chain is the virtio-net device's TX queue (bits 0-2 of the control
/// byte: head descriptor; [`NET_LEGACY`]: a legacy driver), and what
/// reaches the socket must be one well-framed frame at most. With it: the
/// records go through the egress policy under [`net_rules`], and every
/// frame that passes is checked again here, independently of the policy,
/// to be ARP, DHCP, or TCP/UDP to an entry's address or to an address an
/// accepted answer gave on a rule's port; every answer and forwarded query
/// must read back. Returns whether a frame passed.
pub fn net_filter(data: &[u8]) -> bool {
    let Some((&control, rest)) = data.split_first() else {
        return false;
    };
    if control & NET_BARE_FRAME != 0 {
        return egress_records(rest);
    }
    let (ours, mut passt) = UnixStream::pair().expect("socket pair");
    let mut device = NetDevice::new(NetConfig {
        backend: ours,
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        restorable: false,
    })
    .expect("net device");
    let features = if control & NET_LEGACY != 0 {
        1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC
    } else {
        VirtioDevice::<GuestMemoryMmap>::features(&device)
    };
    VirtioDevice::<GuestMemoryMmap>::ack_features(&mut device, features);
    VirtioDevice::<GuestMemoryMmap>::activate(&mut device).expect("activate");
    let (mem, tx) = guest(u16::from(control & 7), rest);
    // The RX queue stays unready: only what the guest sends is under test.
    let rx = Queue::new(QUEUE_SIZE).expect("queue size is a power of two");
    let mut queues = vec![rx, tx];
    let mut ctx = DeviceContext::new(&mem, &mut queues, &NoInterrupt);
    // The rings themselves are valid: nothing a chain holds may make the
    // queue unusable.
    device
        .process_queue(TX_QUEUE, &mut ctx)
        .expect("the tx path handles any chain");
    drop(device);

    let mut wire = Vec::new();
    passt.read_to_end(&mut wire).expect("read what passt got");
    let mut reader = &wire[..];
    let mut frames = 0;
    let mut frame = Vec::new();
    while stream::read_frame(&mut reader, &mut frame).expect("well-framed") {
        assert!(frame.len() >= stream::MIN_FRAME, "a runt frame went out");
        frames += 1;
    }
    assert!(frames <= 1, "{frames} frames out of one chain");
    frames == 1
}

/// The bare mode of [`net_filter`]: records through one [`Egress`], a
/// second apart each.
fn egress_records(mut input: &[u8]) -> bool {
    let rules = net_rules();
    let mut egress = Egress::new(rules.clone());
    let start = std::time::Instant::now();
    let mut answered: Vec<Ipv4Addr> = Vec::new();
    let mut passed = false;
    let mut step = 0u32;
    while let [kind, hi, lo, tail @ ..] = input {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        input = next;
        step += 1;
        let now = start + std::time::Duration::from_secs(step.into());
        if kind % 2 == 1 {
            if let Some(frame) = egress.from_resolver(bytes, now) {
                let message = answer_of(&frame);
                let response = dns::parse_response(message).expect("an answer reads back");
                answered.extend(response.a_records.iter().map(|a| a.address));
            }
            continue;
        }
        match egress.outbound(bytes, now) {
            Verdict::Pass => {
                assert_really_allowed(&rules, &answered, bytes);
                passed = true;
            }
            Verdict::Answer { frame, .. } => {
                dns::parse_response(answer_of(&frame)).expect("our answer reads back");
            }
            Verdict::Resolve(query) => {
                let query = dns::parse_query(&query).expect("a forwarded query reads back");
                assert!(
                    rules.names.iter().any(|r| r.covers(&query.name)),
                    "`{}` was forwarded",
                    query.name
                );
                assert_eq!(query.qtype, dns::TYPE_A, "only A queries are forwarded");
            }
            Verdict::Drop(_) => {}
        }
    }
    passed
}

/// The DNS message in a frame the policy made: IPv4 header checksum
/// right, UDP from port 53.
fn answer_of(frame: &[u8]) -> &[u8] {
    let ip = &frame[14..34];
    let mut sum = 0u32;
    for pair in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "the IPv4 header checksum of an answer");
    assert_eq!(&frame[34..36], &53u16.to_be_bytes());
    &frame[42..]
}

/// Panics unless `frame`, read with nothing but its headers, is ARP, DHCP
/// (IPv4 UDP from port 68 to 67 broadcast), or IPv4 TCP/UDP to an entry's
/// address, or to an address in `answered` (or the gateway, for the
/// operator's name) on a rule's port, in a datagram whose lengths hold
/// its whole transport header: what passt will make of the frame.
fn assert_really_allowed(rules: &Rules, answered: &[Ipv4Addr], frame: &[u8]) {
    let be16 = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ethertype = be16(frame, 12).expect("a frame that passed has an Ethernet header");
    if ethertype == 0x0806 {
        return;
    }
    assert_eq!(ethertype, 0x0800, "ethertype {ethertype:#06x} passed");
    let ip = &frame[14..];
    assert!(ip.len() >= 20 && ip[0] >> 4 == 4, "not IPv4: {frame:02x?}");
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2).unwrap_or(0));
    assert!(
        20 <= header && header <= total && total <= ip.len(),
        "IPv4 header of {header} bytes, total length {total}, {} bytes sent",
        ip.len()
    );
    assert_eq!(be16(ip, 6).unwrap_or(0) & 0x3fff, 0, "an IPv4 fragment");
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let segment = &ip[header..total];
    let min_header = match ip[9] {
        6 => 20,
        17 => 8,
        other => panic!("IP protocol {other} passed"),
    };
    assert!(
        segment.len() >= min_header,
        "a transport header cut to {} bytes passed",
        segment.len()
    );
    let src_port = be16(segment, 0).unwrap_or(0);
    let dst_port = be16(segment, 2).unwrap_or(0);
    let dhcp = ip[9] == 17 && dst == Ipv4Addr::BROADCAST && src_port == 68 && dst_port == 67;
    let listed = rules.addresses.contains(&SocketAddrV4::new(dst, dst_port));
    let learned = answered.contains(&dst) && rules.names.iter().any(|r| r.port == dst_port);
    assert!(
        dhcp || listed || learned,
        "protocol {} from port {src_port} to {dst} port {dst_port} passed",
        ip[9]
    );
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
/// Features the vsock device state is checked against (what a
/// `VsockDevice` offers).
pub const STATE_VSOCK_FEATURES: u64 = 0x1_3000_0000;
/// Features and MAC the net device state is checked against (what a
/// segment's `NetDevice` offers).
pub const STATE_NET_FEATURES: u64 = 0x1_2000_0020;
pub const STATE_NET_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5e, 0x00, 0x02];

/// Control byte bit of [`device_state`]: the block device checking the
/// state is read-only (else copy-on-write).
pub const STATE_READ_ONLY: u8 = 1 << 1;

/// A saved device state from a snapshot file, decoded by the snapshot
/// codec and checked the way `restore_state` does before it changes
/// anything, against a block, vsock or net device configured as the `STATE_*`
/// constants say. Byte 0: control bits ([`STATE_READ_ONLY`]); the rest is
/// one encoded [`DeviceState`]. Returns whether the state was accepted.
pub fn device_state(data: &[u8]) -> bool {
    let Some((&control, encoded)) = data.split_first() else {
        return false;
    };
    let Ok(state) = codec::decode::<DeviceState>(encoded) else {
        return false;
    };
    // What decodes survives its own round trip (what a clone of a clone
    // does with it).
    let again = codec::encode(&state).expect("a decoded state encodes");
    assert_eq!(
        codec::decode::<DeviceState>(&again).ok().as_ref(),
        Some(&state)
    );
    match &state {
        DeviceState::Vsock(saved) => {
            let virtio = VirtioCommon::new(VIRTIO_ID_VSOCK, STATE_VSOCK_FEATURES, &[8; 3]);
            crate::vsock::state::check(saved, &virtio, STATE_VSOCK_CID).is_ok()
        }
        DeviceState::Net(saved) => {
            let virtio = VirtioCommon::new(VIRTIO_ID_NET, STATE_NET_FEATURES, &[8; 2]);
            crate::net::state::check(saved, &virtio, STATE_NET_MAC).is_ok()
        }
        DeviceState::Block(saved) => {
            let virtio = VirtioCommon::new(VIRTIO_ID_BLOCK, STATE_BLOCK_FEATURES, &[8]);
            let read_only = control & STATE_READ_ONLY != 0;
            let expect = crate::block::state::Expected {
                virtio: &virtio,
                capacity: STATE_BLOCK_SECTORS,
                serial: *STATE_BLOCK_SERIAL,
                read_only,
            };
            match crate::block::state::check(saved, &expect) {
                Ok(chunks) => {
                    assert_eq!(
                        saved.virtio.acked_features & !STATE_BLOCK_FEATURES,
                        0,
                        "acked features never offered"
                    );
                    assert_eq!(chunks.is_none(), read_only);
                    if let Some(chunks) = chunks {
                        // Chunks are at least a sector.
                        assert!(chunks.count() <= STATE_BLOCK_SECTORS);
                    }
                    true
                }
                Err(_) => false,
            }
        }
    }
}

/// A cache volume's layer file, read back as the runner does before it
/// commits the cache: bytes 0..2 are the disk's size in 512-byte sectors
/// (u16, little-endian), the rest is the file. Returns whether the reader
/// accepted it; what it returns must be ranges of the disk, whole chunks
/// (but for the disk's end), sorted and coalesced.
pub fn layer_file(data: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;

    use crate::block::layer::written_ranges;
    use crate::block::OVERLAY_CHUNK_SIZE;

    let Some((size, content)) = data.split_first_chunk::<2>() else {
        return false;
    };
    let disk_size = u64::from(u16::from_le_bytes(*size)) * 512;
    let file = tempfile::tempfile().expect("a temp file");
    file.write_all_at(content, 0).expect("write the layer");
    let Ok(ranges) = written_ranges(&file, disk_size) else {
        return false;
    };
    let mut end = None;
    for range in &ranges {
        assert!(
            range.start < range.end && range.end <= disk_size,
            "{ranges:?}"
        );
        assert!(range.start.is_multiple_of(OVERLAY_CHUNK_SIZE), "{ranges:?}");
        assert!(
            range.end.is_multiple_of(OVERLAY_CHUNK_SIZE) || range.end == disk_size,
            "{ranges:?}"
        );
        assert!(
            end.is_none_or(|e| e < range.start),
            "not coalesced: {ranges:?}"
        );
        end = Some(range.end);
    }
    assert!(ranges.is_empty() || !content.is_empty());
    true
}

/// The members of the segment [`segment`] switches between: a job and two
/// services, as the runner numbers them.
pub fn segment_members() -> Vec<Member> {
    (0..3u8)
        .map(|i| Member {
            mac: [0x52, 0x54, 0, 0, 0, i + 1],
            address: Ipv4Addr::new(10, 0, 2, 15 + i),
        })
        .collect()
}

/// Frames from the members of a job's private segment, one after another:
/// each record is a port (byte, modulo 4, so that port 3 does not exist),
/// a number of milliseconds that pass before it (byte), the frame's length
/// (u16, little-endian) and the frame. Whatever the switch forwards or
/// answers must be what its rules say: from its port's own MAC and
/// address, to the one member the frame names, never back to the sender.
/// Returns whether any frame went anywhere.
pub fn segment(data: &[u8]) -> bool {
    let members = segment_members();
    let limit = RateLimit {
        frames_per_second: 1000,
        bytes_per_second: 1 << 20,
        burst: std::time::Duration::from_millis(20),
    };
    let mut switch = Segment::new(members.clone(), limit);
    let mut now = std::time::Duration::ZERO;
    let mut rest = data;
    let mut delivered = false;
    while let [port, millis, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let from = usize::from(*port % 4);
        now += std::time::Duration::from_millis(u64::from(*millis));
        match switch.switch(from, frame, now) {
            Switched::Drop(_) | Switched::Refuse(_) => continue,
            Switched::Forward(to) => {
                let (sender, target) = (members[from], members[to]);
                assert_ne!(from, to, "a frame sent back to its sender");
                assert!(frame.len() <= MAX_SEGMENT_FRAME);
                assert_eq!(frame[6..12], sender.mac, "forged source MAC");
                assert_eq!(frame[0..6], target.mac, "not the MAC it named");
                assert_eq!(frame[12..14], [8, 0], "only IPv4 is forwarded");
                assert_eq!(frame[26..30], sender.address.octets(), "forged source");
                assert_eq!(frame[30..34], target.address.octets());
            }
            Switched::Reply(reply) => {
                let sender = members[from];
                assert_eq!(reply[0..6], sender.mac, "an answer to someone else");
                let answering = members
                    .iter()
                    .position(|m| m.mac[..] == reply[6..12])
                    .expect("an answer from a member");
                assert_ne!(answering, from);
                assert_eq!(reply[28..32], members[answering].address.octets());
            }
        }
        delivered = true;
    }
    delivered
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

/// Where `fuzz/seeds/<target>` is.
fn seed_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds")).join(target)
}

/// Keeps `fuzz/seeds/<target>` equal to `seeds` (name, input): seeds whose
/// layout is a Rust type's encoding are written by the crate's tests from
/// the types themselves, not by `fuzz/make_seeds.py`. With
/// `RUNNER_WRITE_SEEDS=1` the directory is rewritten; otherwise every file
/// must match, so a change to the encoding fails here until the seeds are
/// regenerated (and reviewed).
pub fn keep_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = seed_dir(target);
    if std::env::var_os("RUNNER_WRITE_SEEDS").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (name, input) in seeds {
            std::fs::write(dir.join(name), input).expect("write a seed");
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("the seed directory")
        .map(|e| {
            e.expect("a seed")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = seeds.iter().map(|(name, _)| name.to_string()).collect();
    expected.sort();
    assert_eq!(
        on_disk,
        expected,
        "{}: rerun with RUNNER_WRITE_SEEDS=1",
        dir.display()
    );
    for (name, input) in seeds {
        let stored = std::fs::read(dir.join(name)).expect("read a seed");
        assert!(
            &stored == input,
            "seed {target}/{name} is not the current encoding: rerun with RUNNER_WRITE_SEEDS=1"
        );
    }
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
    fn replay_net_filter_inputs() {
        replay("net_filter", net_filter);
    }

    /// The `device_state` seeds: states as the devices save them, for the
    /// devices the entry point checks against.
    fn device_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::block::{BlockState, SavedOverlay};
        use crate::common::CommonState;
        use crate::vsock::VsockState;

        const CHUNK: u64 = 4096;
        let size = STATE_BLOCK_SECTORS * 512;
        let block = |written: &[u64]| {
            let words = size.div_ceil(CHUNK).div_ceil(64) as usize;
            let mut bitmap = vec![0u64; words];
            let mut data = Vec::new();
            for &c in written {
                bitmap[(c / 64) as usize] |= 1 << (c % 64);
                let len = CHUNK.min(size - c * CHUNK) as usize;
                data.extend(std::iter::repeat_n(c as u8 + 1, len));
            }
            DeviceState::Block(BlockState {
                virtio: CommonState {
                    features: STATE_BLOCK_FEATURES,
                    acked_features: STATE_BLOCK_FEATURES,
                    activated: true,
                },
                capacity: STATE_BLOCK_SECTORS,
                serial: *STATE_BLOCK_SERIAL,
                overlay: Some(SavedOverlay {
                    chunk_size: CHUNK,
                    bitmap: bitmap.iter().flat_map(|w| w.to_le_bytes()).collect(),
                    data,
                }),
            })
        };
        let read_only = DeviceState::Block(BlockState {
            virtio: CommonState {
                features: STATE_BLOCK_FEATURES,
                acked_features: 0,
                activated: false,
            },
            capacity: STATE_BLOCK_SECTORS,
            serial: *STATE_BLOCK_SERIAL,
            overlay: None,
        });
        let vsock = DeviceState::Vsock(VsockState {
            virtio: CommonState {
                features: STATE_VSOCK_FEATURES,
                acked_features: STATE_VSOCK_FEATURES,
                activated: true,
            },
            guest_cid: STATE_VSOCK_CID,
        });
        let net = DeviceState::Net(crate::net::state::NetState {
            virtio: CommonState {
                features: STATE_NET_FEATURES,
                acked_features: STATE_NET_FEATURES,
                activated: true,
            },
            mac: STATE_NET_MAC,
        });
        let input = |control: u8, state: &DeviceState| {
            let mut input = vec![control];
            input.extend(codec::encode(state).expect("encode"));
            input
        };
        vec![
            ("block-empty", input(0, &block(&[]))),
            // The last chunk (33) is short.
            ("block-written", input(0, &block(&[0, 1, 5, 33]))),
            ("block-read-only", input(STATE_READ_ONLY, &read_only)),
            ("vsock", input(0, &vsock)),
            ("net", input(0, &net)),
        ]
    }

    #[test]
    fn device_state_seeds_are_the_current_encoding() {
        keep_seeds("device_state", &device_state_seeds());
    }

    /// The `layer_file` seeds: layers as the device writes them.
    fn layer_file_seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::block::{BlockConfig, Disk};
        use std::os::unix::fs::FileExt;

        let layer = |sectors: u16, writes: &[(u64, usize)]| {
            let image = tempfile::NamedTempFile::new().expect("image");
            std::fs::write(image.path(), vec![0x5A; usize::from(sectors) * 512]).expect("image");
            let file = tempfile::tempfile().expect("layer");
            let base = std::fs::File::open(image.path()).expect("base");
            let config = BlockConfig::layer(image.path(), base, file.try_clone().expect("fd"));
            let mut disk = Disk::open(&config.image, &config.mode).expect("disk");
            for &(sector, len) in writes {
                disk.write_at(&vec![0xC3; len], sector * 512)
                    .expect("write");
            }
            let mut input = sectors.to_le_bytes().to_vec();
            let len = file.metadata().expect("stat").len() as usize;
            let at = input.len();
            input.resize(at + len, 0);
            file.read_exact_at(&mut input[at..], 0).expect("read layer");
            input
        };
        vec![
            ("empty-file", vec![24, 0]),
            ("nothing-written", layer(24, &[])),
            ("two-chunks", layer(24, &[(0, 512), (17, 1024)])),
            // 17 sectors: the last chunk is one sector.
            ("partial-last-chunk", layer(17, &[(16, 512), (8, 4096)])),
        ]
    }

    #[test]
    fn layer_file_seeds_are_what_the_device_writes() {
        keep_seeds("layer_file", &layer_file_seeds());
    }

    /// The `segment` seeds: a job asking for a service's MAC and talking
    /// to it, and a member trying to pose as another.
    fn segment_seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::net::segment::arp_request;
        let m = segment_members();
        let record = |port: u8, frame: Vec<u8>| {
            let mut r = vec![port, 1];
            r.extend((frame.len() as u16).to_le_bytes());
            r.extend(frame);
            r
        };
        let tcp = |from: Member, to: Member, src: Ipv4Addr| {
            let mut f = to.mac.to_vec();
            f.extend(from.mac);
            f.extend([8, 0, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend(src.octets());
            f.extend(to.address.octets());
            f.extend([0x9c, 0x40, 0x15, 0x38]);
            f.resize(14 + 40, 0);
            f
        };
        let mut talk = record(0, arp_request(m[0], m[1].address));
        talk.extend(record(0, tcp(m[0], m[1], m[0].address)));
        talk.extend(record(1, tcp(m[1], m[0], m[1].address)));
        let mut posing = record(2, tcp(m[2], m[1], m[0].address));
        posing.extend(record(2, arp_request(m[2], m[2].address)));
        posing.extend(record(2, tcp(m[2], m[0], m[2].address)));
        vec![("job-asks-and-talks", talk), ("posing", posing)]
    }

    #[test]
    fn segment_seeds_are_frames_the_switch_forwards() {
        keep_seeds("segment", &segment_seeds());
    }

    #[test]
    fn replay_segment_inputs() {
        replay("segment", segment);
    }

    #[test]
    fn replay_layer_file_inputs() {
        replay("layer_file", layer_file);
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
