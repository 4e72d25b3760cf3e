//! The virtio-net device against a hand-played driver (virtio-queue's mock
//! split queues in real guest memory) and a Unix socket pair standing in
//! for passt.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{NetConfig, NetDevice, NET_HDR_SIZE, RX_QUEUE, TX_QUEUE};
use super::stream;
use crate::virtio::{DeviceContext, Interrupt, VirtioDevice};

type Mem = GuestMemoryMmap;
const QSIZE: u16 = 16;
const QUEUE_BASE: [u64; 2] = [0x0, 0x2_0000];
const USED_BASE: [u64; 2] = [0x1_0000, 0x3_0000];
const DATA: u64 = 0x10_0000;

#[derive(Default)]
struct Irq(Cell<u32>);

impl Interrupt for Irq {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

struct Driver<'a> {
    mem: &'a Mem,
    mqs: Vec<MockSplitQueue<'a, Mem>>,
    used: Vec<UsedRing<'a, Mem>>,
    used_seen: [u16; 2],
    next_desc: [u16; 2],
    queues: Vec<Queue>,
    irq: Irq,
    device: NetDevice,
}

impl<'a> Driver<'a> {
    /// A driver of a NIC on passt (which never snapshots).
    fn new(mem: &'a Mem) -> (Driver<'a>, UnixStream) {
        let (device, passt) = device(false);
        Driver::of(mem, device, passt)
    }

    fn of(mem: &'a Mem, mut device: NetDevice, passt: UnixStream) -> (Driver<'a>, UnixStream) {
        let features = VirtioDevice::<Mem>::features(&device);
        VirtioDevice::<Mem>::ack_features(&mut device, features);
        VirtioDevice::<Mem>::activate(&mut device).unwrap();
        let mqs: Vec<_> = QUEUE_BASE
            .iter()
            .map(|&b| MockSplitQueue::create(mem, GuestAddress(b), QSIZE))
            .collect();
        let used = USED_BASE
            .iter()
            .map(|&b| UsedRing::new(mem, GuestAddress(b), QSIZE))
            .collect();
        let queues = mqs
            .iter()
            .zip(USED_BASE)
            .map(|(mq, used)| {
                let mut q: Queue = mq.create_queue().unwrap();
                q.set_used_ring_address(Some(used as u32), Some(0));
                q
            })
            .collect();
        let driver = Driver {
            mem,
            mqs,
            used,
            used_seen: [0; 2],
            next_desc: [0; 2],
            queues,
            irq: Irq::default(),
            device,
        };
        (driver, passt)
    }

    /// Makes a chain of `(addr, len, device-writable)` available on `queue`.
    fn publish(&mut self, queue: u16, descs: &[(u64, u32, bool)]) {
        let q = usize::from(queue);
        let first = self.next_desc[q];
        self.next_desc[q] += descs.len() as u16;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            self.mqs[q]
                .desc_table()
                .store(first + i as u16, desc)
                .unwrap();
        }
        let avail = self.mqs[q].avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(first);
        avail.idx().store(idx.wrapping_add(1));
    }

    fn kick(&mut self, queue: u16) {
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device.process_queue(queue, &mut ctx).unwrap();
    }

    fn backend(&mut self) {
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device.process_backend(&mut ctx).unwrap();
    }

    fn next_used(&mut self, queue: u16) -> Option<u32> {
        let q = usize::from(queue);
        if self.used[q].idx().load() == self.used_seen[q] {
            return None;
        }
        let elem = self.used[q]
            .ring()
            .ref_at(usize::from(self.used_seen[q] % QSIZE))
            .unwrap()
            .load();
        self.used_seen[q] += 1;
        Some(elem.len())
    }

    /// The guest sends `frame` (header and frame in two descriptors).
    fn send(&mut self, at: u64, frame: &[u8]) {
        self.mem
            .write_slice(&[0; NET_HDR_SIZE], GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(at + 0x100))
            .unwrap();
        self.publish(
            TX_QUEUE,
            &[
                (at, NET_HDR_SIZE as u32, false),
                (at + 0x100, frame.len() as u32, false),
            ],
        );
        self.kick(TX_QUEUE);
    }
}

fn tcp_frame(dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut f = vec![0; 12];
    f.extend([
        0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 2, 15,
    ]);
    f.extend(dst);
    f.extend(40000u16.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend([0; 16]);
    f
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A device that no driver has set up yet, and the other end of its socket.
fn device(restorable: bool) -> (NetDevice, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let device = NetDevice::new(NetConfig {
        backend: ours,
        mac: MAC,
        restorable,
    })
    .unwrap();
    (device, theirs)
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

#[test]
fn frames_go_out_framed_and_come_in_with_a_header() {
    let mem = memory();
    let (mut driver, mut passt) = Driver::new(&mem);
    let frame = tcp_frame([10, 0, 2, 2], 80);
    driver.send(DATA, &frame);
    assert_eq!(driver.next_used(TX_QUEUE), Some(0));
    let mut got = Vec::new();
    assert!(stream::read_frame(&mut passt, &mut got).unwrap());
    assert_eq!(got, frame);

    // passt answers before the guest has posted a buffer: the frame waits.
    stream::write_frame(&mut passt, &[0xab; 60]).unwrap();
    driver.backend();
    assert_eq!(driver.next_used(RX_QUEUE), None);
    let buf = DATA + 0x1_0000;
    driver.publish(RX_QUEUE, &[(buf, 2048, true)]);
    driver.kick(RX_QUEUE);
    assert_eq!(driver.next_used(RX_QUEUE), Some((NET_HDR_SIZE + 60) as u32));
    let mut header = [0u8; NET_HDR_SIZE];
    mem.read_slice(&mut header, GuestAddress(buf)).unwrap();
    assert_eq!(header[10], 1, "num_buffers");
    let mut body = [0u8; 60];
    mem.read_slice(&mut body, GuestAddress(buf + NET_HDR_SIZE as u64))
        .unwrap();
    assert_eq!(body, [0xab; 60]);
}

#[test]
fn oversized_or_small_buffers_and_a_broken_peer_are_survived() {
    let mem = memory();
    let (mut driver, mut passt) = Driver::new(&mem);
    // An RX buffer too small for the frame: used with length 0.
    stream::write_frame(&mut passt, &[1; 200]).unwrap();
    driver.publish(RX_QUEUE, &[(DATA, 100, true)]);
    driver.kick(RX_QUEUE);
    assert_eq!(driver.next_used(RX_QUEUE), Some(0));
    // A TX chain longer than any frame: dropped, returned.
    driver.publish(TX_QUEUE, &[(DATA, 0x2_0000, false)]);
    driver.kick(TX_QUEUE);
    assert_eq!(driver.next_used(TX_QUEUE), Some(0));
    // A peer claiming a 4 GiB frame is cut off; the guest's frames are
    // then consumed and dropped.
    passt.write_all(&u32::MAX.to_be_bytes()).unwrap();
    driver.publish(RX_QUEUE, &[(DATA, 2048, true)]);
    driver.kick(RX_QUEUE);
    assert_eq!(driver.next_used(RX_QUEUE), None);
    driver.send(DATA, &tcp_frame([10, 0, 2, 2], 80));
    assert_eq!(driver.next_used(TX_QUEUE), Some(0));
    let mut rest = Vec::new();
    passt
        .set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    assert_eq!(
        passt.read_to_end(&mut rest).unwrap(),
        0,
        "the device hung up"
    );
}

/// A legacy driver (no VERSION_1) uses the 10-byte header both ways.
#[test]
fn a_legacy_driver_gets_the_10_byte_header() {
    let mem = memory();
    let (mut driver, mut passt) = Driver::new(&mem);
    let mac_only = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
    VirtioDevice::<Mem>::ack_features(&mut driver.device, mac_only);
    let frame = tcp_frame([10, 0, 2, 2], 80);
    let mut chain = vec![0u8; super::device::LEGACY_NET_HDR_SIZE];
    chain.extend(&frame);
    mem.write_slice(&chain, GuestAddress(DATA)).unwrap();
    driver.publish(TX_QUEUE, &[(DATA, chain.len() as u32, false)]);
    driver.kick(TX_QUEUE);
    let mut got = Vec::new();
    assert!(stream::read_frame(&mut passt, &mut got).unwrap());
    assert_eq!(got, frame);

    stream::write_frame(&mut passt, &[0xcd; 60]).unwrap();
    let buf = DATA + 0x1_0000;
    driver.publish(RX_QUEUE, &[(buf, 2048, true)]);
    driver.kick(RX_QUEUE);
    assert_eq!(driver.next_used(RX_QUEUE), Some(70));
    let mut body = [0u8; 60];
    mem.read_slice(&mut body, GuestAddress(buf + 10)).unwrap();
    assert_eq!(body, [0xcd; 60]);
}

#[test]
fn snapshots_are_refused_with_the_reason() {
    let mem = memory();
    let (mut driver, _passt) = Driver::new(&mem);
    let err = VirtioDevice::<Mem>::save_state(&driver.device).expect_err("net never saves");
    assert!(
        matches!(err, crate::SnapshotError::Unsupported { device: "net", .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "net: cannot be snapshotted: the guest's connections and address belong to one passt \
         process that a clone cannot share; jobs with a network always cold-boot"
    );
    let vsock_state = crate::snapshot::state::DeviceState::Vsock(crate::vsock::state::VsockState {
        virtio: crate::common::CommonState {
            features: 0,
            acked_features: 0,
            activated: false,
        },
        guest_cid: 3,
    });
    let err = VirtioDevice::<Mem>::restore_state(&mut driver.device, &vsock_state)
        .expect_err("net never restores");
    assert!(err.to_string().contains("always cold-boot"), "{err}");
}

/// A NIC on a segment is saved with its MAC and negotiation; restored on
/// a new socket, it reads that socket at once, into the receive buffers
/// the guest posted before the snapshot (a restored driver kicks no more).
#[test]
fn a_segment_nic_restores_onto_a_new_socket_and_receives_at_once() {
    let mem = memory();
    let (original, switch) = device(true);
    let (mut driver, _old_switch) = Driver::of(&mem, original, switch);
    driver.publish(RX_QUEUE, &[(DATA, 2048, true)]);
    driver.kick(RX_QUEUE);
    let saved = VirtioDevice::<Mem>::save_state(&driver.device).expect("a segment NIC saves");

    // Only a fresh device of the same MAC takes it.
    let (socket, _s) = UnixStream::pair().unwrap();
    let mut other_mac = NetDevice::new(NetConfig {
        backend: socket,
        mac: [0x52, 0x54, 0, 0x5e, 0, 9],
        restorable: true,
    })
    .unwrap();
    let err = VirtioDevice::<Mem>::restore_state(&mut other_mac, &saved).unwrap_err();
    assert!(err.to_string().contains("MAC 52:54:00:12:34:56"), "{err}");
    let err = VirtioDevice::<Mem>::restore_state(&mut driver.device, &saved).unwrap_err();
    assert!(err.to_string().contains("freshly created"), "{err}");

    let (mut clone, mut new_switch) = device(true);
    VirtioDevice::<Mem>::restore_state(&mut clone, &saved).expect("restores");
    assert!(VirtioDevice::<Mem>::virtio(&clone).is_activated());
    driver.device = clone;
    let frame = tcp_frame([10, 0, 3, 2], 5432);
    stream::write_frame(&mut new_switch, &frame).unwrap();
    driver.backend();
    assert_eq!(
        driver.next_used(RX_QUEUE),
        Some((NET_HDR_SIZE + frame.len()) as u32)
    );
    let mut got = vec![0; frame.len()];
    mem.read_slice(&mut got, GuestAddress(DATA + NET_HDR_SIZE as u64))
        .unwrap();
    assert_eq!(got, frame);
}

/// Found by the `mmio_transport` fuzz target (there with vsock): a
/// driver's avail index more than a queue's length ahead made the device
/// spin for ever. The queue is unusable: an error, so the transport asks
/// for a reset.
#[test]
fn an_avail_index_out_of_reach_is_an_error_not_a_spin() {
    let mem = memory();
    let (mut driver, _passt) = Driver::new(&mem);
    let avail = driver.queues[usize::from(TX_QUEUE)].avail_ring();
    mem.write_obj(QSIZE + 1, GuestAddress(avail + 2)).unwrap();
    let mut ctx = DeviceContext::new(driver.mem, &mut driver.queues, &driver.irq);
    let result = driver.device.process_queue(TX_QUEUE, &mut ctx);
    assert!(
        matches!(
            result,
            Err(crate::virtio::DeviceError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ),
        "{result:?}"
    );
}
