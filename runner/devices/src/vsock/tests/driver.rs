//! A hand-played guest driver around a [`VsockDevice`].

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::{DeviceContext, Interrupt, VirtioDevice};
use crate::vsock::packet::{Op, VsockHeader, HDR_SIZE, HOST_CID, TYPE_STREAM};
use crate::vsock::{VsockConfig, VsockDevice, TX_QUEUE};

pub const GUEST_CID: u64 = 3;
pub const QSIZE: u16 = 256;
/// Where each queue's buffers live: one fixed slot per descriptor index.
const RX_BUFS: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
const TX_BUFS: u64 = 0x100_0000;
const TX_SLOT: u64 = 0x2_0000;
/// Guest memory no queue or buffer uses, for hand-made descriptors.
pub const FREE_AREA: u64 = 0x40_0000;
/// Event buffers, 16 bytes apart.
const EVENT_BUFS: u64 = 0xF0_0000;
/// Where the event queue's used ring lives.
pub const EVENT_USED_RING: u64 = 0x2_4000;
pub const RX_BUF_SIZE: u32 = 4096;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x300_0000)]).expect("test memory")
}

/// Counts interrupts, as a transport would raise them.
#[derive(Default)]
pub struct CountingInterrupt {
    pub used: [Cell<u32>; 3],
}

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        let c = &self.used[usize::from(queue_index)];
        c.set(c.get() + 1);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Stores one chain at descriptor index `head` and makes it available.
/// (`MockSplitQueue::add_desc_chains` does not wrap around the avail ring, so
/// long tests publish chains themselves.)
fn publish(q: &MockSplitQueue<'_, GuestMemoryMmap>, descs: &[RawDescriptor], head: u16) {
    for (i, d) in descs.iter().enumerate() {
        q.desc_table()
            .store(head + i as u16, *d)
            .expect("store descriptor");
    }
    let avail = q.avail();
    let idx = avail.idx().load();
    avail
        .ring()
        .ref_at(usize::from(idx % QSIZE))
        .expect("avail slot")
        .store(head);
    avail.idx().store(idx.wrapping_add(1));
}

/// A queue for `mock` whose used ring lives at `at`.
fn relocate_used_ring<'a>(
    mem: &'a GuestMemoryMmap,
    mock: &MockSplitQueue<'a, GuestMemoryMmap>,
    at: GuestAddress,
) -> (UsedRing<'a, GuestMemoryMmap>, Queue) {
    let used = UsedRing::new(mem, at, QSIZE);
    let mut queue = mock.create_queue::<Queue>().expect("queue");
    queue.set_used_ring_address(Some(at.0 as u32), Some((at.0 >> 32) as u32));
    (used, queue)
}

/// A received packet.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub hdr: VsockHeader,
    pub data: Vec<u8>,
}

impl Pkt {
    pub fn op(&self) -> Option<Op> {
        self.hdr.op()
    }
}

pub struct Guest<'a> {
    pub mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    evq: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_used: UsedRing<'a, GuestMemoryMmap>,
    tx_used: UsedRing<'a, GuestMemoryMmap>,
    ev_used: UsedRing<'a, GuestMemoryMmap>,
    pub queues: Vec<Queue>,
    pub device: VsockDevice,
    pub irq: CountingInterrupt,
    next_desc: [u16; 3],
    used_seen: [u16; 3],
    /// Where header and data of the rx buffer at each descriptor index are.
    rx_layout: Vec<(u64, u64)>,
    _dir: tempfile::TempDir,
    pub uds: PathBuf,
    /// Credit this guest advertises on every packet it sends.
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    /// Rx buffers offered and not yet returned by the device.
    pub rx_outstanding: usize,
}

impl<'a> Guest<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Guest<'a> {
        Guest::with_config(mem, |_| {})
    }

    pub fn with_config(
        mem: &'a GuestMemoryMmap,
        tweak: impl FnOnce(&mut VsockConfig),
    ) -> Guest<'a> {
        let (config, dir) = Guest::config(tweak);
        let mut device = VsockDevice::new(config).expect("device");
        let features = VirtioDevice::<GuestMemoryMmap>::features(&device);
        VirtioDevice::<GuestMemoryMmap>::ack_features(&mut device, features);
        VirtioDevice::<GuestMemoryMmap>::activate(&mut device).expect("activate");
        Guest::around(mem, device, dir)
    }

    /// The test configuration, `tweak`ed, with its socket in a new temp dir.
    pub fn config(tweak: impl FnOnce(&mut VsockConfig)) -> (VsockConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = VsockConfig::new(GUEST_CID, dir.path().join("vsock"));
        tweak(&mut config);
        (config, dir)
    }

    /// A driver for `device`, which is already set up (activated, or
    /// restored from a snapshot), whose socket lives in `dir`.
    pub fn around(
        mem: &'a GuestMemoryMmap,
        device: VsockDevice,
        dir: tempfile::TempDir,
    ) -> Guest<'a> {
        let uds = device.uds_path().to_path_buf();
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
        // MockSplitQueue places the used ring `len` bytes after the avail ring
        // start instead of `2 * len`, so the two overlap once more than half
        // the ring has been used; each used ring gets its own place instead.
        let (rx_used, rxq_q) = relocate_used_ring(mem, &rxq, GuestAddress(0x4000));
        let (tx_used, txq_q) = relocate_used_ring(mem, &txq, GuestAddress(0x1_4000));
        let (ev_used, evq_q) = relocate_used_ring(mem, &evq, GuestAddress(EVENT_USED_RING));
        let queues = vec![rxq_q, txq_q, evq_q];
        Guest {
            mem,
            rxq,
            txq,
            evq,
            rx_used,
            tx_used,
            ev_used,
            queues,
            device,
            irq: CountingInterrupt::default(),
            next_desc: [0; 3],
            used_seen: [0; 3],
            rx_layout: vec![(0, 0); usize::from(QSIZE)],
            _dir: dir,
            uds,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
            rx_outstanding: 0,
        }
    }

    fn alloc_desc(&mut self, queue: usize, n: u16) -> u16 {
        if self.next_desc[queue] + n > QSIZE {
            self.next_desc[queue] = 0;
        }
        let idx = self.next_desc[queue];
        self.next_desc[queue] += n;
        idx
    }

    fn rx_slot(idx: u16) -> u64 {
        RX_BUFS + u64::from(idx) * RX_SLOT
    }

    fn tx_slot(idx: u16) -> u64 {
        TX_BUFS + u64::from(idx) * TX_SLOT
    }

    /// Offers `n` rx buffers the way Linux 6.1 does: a header descriptor and a
    /// separate 4 KiB data descriptor.
    pub fn offer_rx(&mut self, n: usize) {
        for _ in 0..n {
            let idx = self.alloc_desc(0, 2);
            let base = Self::rx_slot(idx);
            let f = VRING_DESC_F_WRITE as u16;
            let descs = [
                RawDescriptor::from(Descriptor::new(base, HDR_SIZE as u32, f | 1, idx + 1)),
                RawDescriptor::from(Descriptor::new(base + 0x100, RX_BUF_SIZE, f, 0)),
            ];
            self.rx_layout[usize::from(idx)] = (base, base + 0x100);
            self.rx_outstanding += 1;
            publish(&self.rxq, &descs, idx);
        }
    }

    /// Offers `n` rx buffers the way Linux 6.2+ does: one descriptor holding
    /// header and data.
    pub fn offer_rx_single(&mut self, n: usize) {
        for _ in 0..n {
            let idx = self.alloc_desc(0, 1);
            let base = Self::rx_slot(idx);
            let len = HDR_SIZE as u32 + RX_BUF_SIZE;
            let descs = [RawDescriptor::from(Descriptor::new(
                base,
                len,
                VRING_DESC_F_WRITE as u16,
                0,
            ))];
            self.rx_layout[usize::from(idx)] = (base, base + HDR_SIZE as u64);
            self.rx_outstanding += 1;
            publish(&self.rxq, &descs, idx);
        }
    }

    /// Posts `n` event buffers of `len` bytes, as Linux posts its
    /// 4-byte `virtio_vsock_event`s (without a kick; see `kick`).
    pub fn offer_events(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let idx = self.alloc_desc(2, 1);
            let addr = EVENT_BUFS + u64::from(idx) * 16;
            self.mem
                .write_obj(0xFFFF_FFFFu32, GuestAddress(addr))
                .expect("poison event buffer");
            let descs = [RawDescriptor::from(Descriptor::new(
                addr,
                len,
                VRING_DESC_F_WRITE as u16,
                0,
            ))];
            publish(&self.evq, &descs, idx);
        }
    }

    /// Events the device put in the event used ring since the last call:
    /// (used length, event id).
    pub fn events(&mut self) -> Vec<(u32, u32)> {
        let end = self.ev_used.idx().load();
        let mut out = Vec::new();
        while self.used_seen[2] != end {
            let slot = usize::from(self.used_seen[2] % QSIZE);
            let elem = self.ev_used.ring().ref_at(slot).expect("used elem").load();
            self.used_seen[2] = self.used_seen[2].wrapping_add(1);
            let addr = EVENT_BUFS + u64::from(elem.id()) * 16;
            let id: u32 = self.mem.read_obj(GuestAddress(addr)).expect("event");
            out.push((elem.len(), u32::from_le(id)));
        }
        out
    }

    /// Offers one rx buffer made of raw descriptors (for malformed-buffer tests).
    pub fn offer_rx_raw(&mut self, descs: &[(u64, u32)]) {
        let n = descs.len() as u16;
        let idx = self.alloc_desc(0, n);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let last = i + 1 == descs.len();
                let flags = VRING_DESC_F_WRITE as u16 | if last { 0 } else { 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, idx + i as u16 + 1))
            })
            .collect();
        publish(&self.rxq, &raw, idx);
        self.rx_outstanding += 1;
    }

    pub fn header(&self, op: Op, src_port: u32, dst_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Puts a packet on the tx queue as header + payload descriptors and kicks.
    pub fn send(&mut self, hdr: VsockHeader, payload: &[u8]) {
        let idx = self.alloc_desc(1, 2);
        let base = Self::tx_slot(idx);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .expect("write hdr");
        let mut descs = vec![RawDescriptor::from(Descriptor::new(
            base,
            HDR_SIZE as u32,
            0,
            0,
        ))];
        if !payload.is_empty() {
            self.mem
                .write_slice(payload, GuestAddress(base + 0x100))
                .expect("write payload");
            descs[0] = RawDescriptor::from(Descriptor::new(base, HDR_SIZE as u32, 1, idx + 1));
            descs.push(RawDescriptor::from(Descriptor::new(
                base + 0x100,
                payload.len() as u32,
                0,
                0,
            )));
        }
        publish(&self.txq, &descs, idx);
        self.kick(TX_QUEUE);
    }

    /// Puts raw readable descriptors on the tx queue and kicks.
    pub fn send_raw(&mut self, descs: &[(u64, u32)]) {
        let n = descs.len() as u16;
        let idx = self.alloc_desc(1, n);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let flags = if i + 1 == descs.len() { 0 } else { 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, idx + i as u16 + 1))
            })
            .collect();
        publish(&self.txq, &raw, idx);
        self.kick(TX_QUEUE);
    }

    pub fn kick(&mut self, queue: u16) {
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device
            .process_queue(queue, &mut ctx)
            .expect("process queue");
    }

    pub fn backend_fd(&self) -> RawFd {
        VirtioDevice::<GuestMemoryMmap>::backend_fd(&self.device).expect("vsock has a backend fd")
    }

    /// Waits up to `timeout` for host-side events and handles them.
    pub fn pump(&mut self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.backend_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device
            .process_backend(&mut ctx)
            .expect("process backend");
    }

    /// Packets the device put in the rx used ring since the last call.
    pub fn received(&mut self) -> Vec<Pkt> {
        let used = &self.rx_used;
        let end = used.idx().load();
        let mut out = Vec::new();
        while self.used_seen[0] != end {
            let slot = usize::from(self.used_seen[0] % QSIZE);
            let elem = used.ring().ref_at(slot).expect("used elem").load();
            self.used_seen[0] = self.used_seen[0].wrapping_add(1);
            self.rx_outstanding -= 1;
            let (hdr_at, data_at) = self.rx_layout[elem.id() as usize % usize::from(QSIZE)];
            let len = elem.len() as usize;
            if len < HDR_SIZE {
                out.push(Pkt {
                    hdr: VsockHeader::default(),
                    data: Vec::new(),
                });
                continue;
            }
            let mut raw = [0u8; HDR_SIZE];
            self.mem
                .read_slice(&mut raw, GuestAddress(hdr_at))
                .expect("read hdr");
            let hdr = VsockHeader::from_bytes(&raw);
            let mut data = vec![0u8; len - HDR_SIZE];
            self.mem
                .read_slice(&mut data, GuestAddress(data_at))
                .expect("read data");
            assert_eq!(hdr.len as usize, data.len(), "header len matches used len");
            out.push(Pkt { hdr, data });
        }
        out
    }

    /// Number of tx buffers the device has returned so far.
    pub fn tx_used(&self) -> u16 {
        self.tx_used.idx().load()
    }

    /// Pumps until `want` says the packets collected so far are enough.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&[Pkt]) -> bool,
    ) -> Vec<Pkt> {
        let start = Instant::now();
        let mut all = self.received();
        while !want(&all) {
            assert!(start.elapsed() < timeout, "timed out; got {all:?}");
            self.pump(Duration::from_millis(20));
            all.extend(self.received());
        }
        all
    }
}

pub const WAIT: Duration = Duration::from_secs(5);

/// The concatenated payload of the data packets in `pkts`.
pub fn rw_bytes(pkts: &[Pkt]) -> Vec<u8> {
    pkts.iter()
        .filter(|p| p.op() == Some(Op::Rw))
        .flat_map(|p| p.data.iter().copied())
        .collect()
}

/// Deterministic test data.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

impl Guest<'_> {
    /// Path of the host listener for guest connections to `port`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        p.into()
    }

    /// Guest port `guest_port` connects to host port `port`, where a listener
    /// accepts. Returns the listener and the host end.
    pub fn connect_from_guest(&mut self, guest_port: u32, port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(self.port_path(port)).expect("bind host listener");
        self.offer_rx(8);
        self.send(self.header(Op::Request, guest_port, port), &[]);
        let pkts = self.received();
        assert_eq!(pkts.len(), 1, "one reply to REQUEST: {pkts:?}");
        assert_eq!(pkts[0].op(), Some(Op::Response));
        assert_eq!(
            (pkts[0].hdr.src_port, pkts[0].hdr.dst_port),
            (port, guest_port)
        );
        let (host, _) = listener.accept().expect("accept");
        host.set_read_timeout(Some(WAIT)).expect("timeout");
        (listener, host)
    }

    /// A host program connects to guest port `port` and the guest accepts.
    /// Returns the host end (past the `OK` line) and the host-side port.
    pub fn connect_from_host(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.uds).expect("connect uds");
        host.set_read_timeout(Some(WAIT)).expect("timeout");
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("write CONNECT");
        self.offer_rx(8);
        let pkts = self.collect_until(WAIT, |p| !p.is_empty());
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        assert_eq!(pkts[0].op(), Some(Op::Request));
        assert_eq!(pkts[0].hdr.dst_port, port);
        let local = pkts[0].hdr.src_port;
        self.send(self.header(Op::Response, port, local), &[]);
        let line = read_line(&mut host);
        assert_eq!(line, format!("OK {local}\n"));
        (host, local)
    }
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed).
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read line") == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).expect("utf8 line")
}
