//! Drives a `VsockServer` with the vhost crate's own vhost-user frontend, the
//! way QEMU does: shared memfd memory, real kick/call eventfds, and rings laid
//! out by virtio-queue's `MockSplitQueue`. The test plays the guest driver.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use runner_devices::vsock::packet::{Op, VsockHeader, HDR_SIZE, HOST_CID, TYPE_STREAM};
use runner_vhost::vsock::VsockServerError;
use runner_vhost::{ServerError, VsockServer, VsockServerConfig};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 16 << 20;
const QSIZE: u16 = 128;
const GUEST_CID: u64 = 3;
const WAIT: Duration = Duration::from_secs(10);

fn memfd() -> File {
    // SAFETY: plain syscall with a NUL-terminated name; the fd is checked.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).expect("size memfd");
    file
}

/// One ring as the guest sees it.
struct Ring<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    used_addr: GuestAddress,
    kick: EventFd,
    call: EventFd,
    next_desc: u16,
    seen: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap, base: u64) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        // Own place for the used ring: the mock's overlaps its avail ring.
        let used_addr = GuestAddress(base + 0x4000);
        Ring {
            mock,
            used: UsedRing::new(mem, used_addr, QSIZE),
            used_addr,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick"),
            call: EventFd::new(EFD_NONBLOCK).expect("call"),
            next_desc: 0,
            seen: 0,
        }
    }

    /// Publishes a chain of `(addr, len, writable)` descriptors and kicks.
    fn push(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > QSIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        self.next_desc += n;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = Descriptor::new(addr, len, flags, head + i as u16 + 1);
            self.mock
                .desc_table()
                .store(head + i as u16, RawDescriptor::from(d))
                .expect("store");
        }
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .expect("slot")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
        self.kick.write(1).expect("kick");
        head
    }

    /// Waits for the device's interrupt, then returns the new used entries.
    fn wait_used(&mut self) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let end = self.used.idx().load();
            if end != self.seen {
                let mut out = Vec::new();
                while self.seen != end {
                    let e = self
                        .used
                        .ring()
                        .ref_at(usize::from(self.seen % QSIZE))
                        .expect("used")
                        .load();
                    out.push((e.id() as u16, e.len()));
                    self.seen = self.seen.wrapping_add(1);
                }
                return out;
            }
            assert!(Instant::now() < deadline, "no used buffers within {WAIT:?}");
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            let _ = self.call.read();
        }
    }
}

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: Ring<'a>,
    tx: Ring<'a>,
    _ev: Ring<'a>,
}

const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

impl Guest<'_> {
    fn offer_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = RX_BUFS + u64::from(self.rx.next_desc) * 0x2000;
            self.rx.push(&[(slot, HDR_SIZE as u32 + 4096, true)]);
        }
    }

    fn send(&mut self, hdr: VsockHeader, payload: &[u8]) {
        let slot = TX_BUFS + u64::from(self.tx.next_desc) * 0x2000;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(slot))
            .expect("hdr");
        self.mem
            .write_slice(payload, GuestAddress(slot + 0x100))
            .expect("payload");
        let mut descs = vec![(slot, HDR_SIZE as u32, false)];
        if !payload.is_empty() {
            descs.push((slot + 0x100, payload.len() as u32, false));
        }
        self.tx.push(&descs);
        let done = self.tx.wait_used();
        assert_eq!(done.len(), 1, "one tx buffer back");
    }

    fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        self.rx
            .wait_used()
            .into_iter()
            .map(|(head, len)| {
                let slot = RX_BUFS + u64::from(head) * 0x2000;
                let mut raw = [0u8; HDR_SIZE];
                self.mem
                    .read_slice(&mut raw, GuestAddress(slot))
                    .expect("hdr");
                let hdr = VsockHeader::from_bytes(&raw);
                let mut data = vec![0u8; len as usize - HDR_SIZE];
                self.mem
                    .read_slice(&mut data, GuestAddress(slot + HDR_SIZE as u64))
                    .expect("data");
                (hdr, data)
            })
            .collect()
    }
}

fn header(op: Op, src_port: u32, dst_port: u32, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

/// What QEMU does before the guest runs: negotiate, share memory, set up rings.
fn set_up(frontend: &mut Frontend, file: &File, mem: &GuestMemoryMmap, rings: &[&Ring]) {
    frontend.set_owner().expect("set_owner");
    let features = frontend.get_features().expect("get_features");
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
    // Without EVENT_IDX every used buffer interrupts, which keeps the test simple.
    frontend
        .set_features(features & !(1 << VIRTIO_RING_F_EVENT_IDX))
        .expect("set_features");
    let protocol = frontend.get_protocol_features().expect("protocol features");
    assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
    frontend
        .set_protocol_features(
            protocol & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
        )
        .expect("set protocol features");
    assert_eq!(frontend.get_queue_num().expect("queue num"), 3);
    let (_, config) = frontend
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .expect("get_config");
    assert_eq!(
        config,
        GUEST_CID.to_le_bytes(),
        "config space is the guest CID"
    );

    let host = mem.get_host_address(GuestAddress(0)).expect("host address") as u64;
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .expect("set_mem_table");
    for (i, ring) in rings.iter().enumerate() {
        frontend.set_vring_num(i, QSIZE).expect("num");
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: host + ring.mock.desc_table_addr().0,
            used_ring_addr: host + ring.used_addr.0,
            avail_ring_addr: host + ring.mock.avail_addr().0,
            log_addr: None,
        };
        frontend.set_vring_addr(i, &config).expect("addr");
        frontend.set_vring_base(i, 0).expect("base");
        frontend.set_vring_call(i, &ring.call).expect("call");
        frontend.set_vring_kick(i, &ring.kick).expect("kick");
        frontend.set_vring_enable(i, true).expect("enable");
    }
}

fn config(dir: &Path) -> VsockServerConfig {
    VsockServerConfig {
        socket_path: dir.join("vu.sock"),
        uds_path: dir.join("vm.vsock"),
        guest_cid: GUEST_CID,
    }
}

#[test]
fn serves_vsock_to_a_vhost_user_frontend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = VsockServer::start(config(dir.path())).expect("start");
    assert!(server.socket_path().exists() && server.uds_path().exists());

    let file = memfd();
    let offset = FileOffset::new(file.try_clone().expect("dup"), 0);
    let mem =
        GuestMemoryMmap::<()>::from_ranges_with_files([(GuestAddress(0), MEM_SIZE, Some(offset))])
            .expect("memory");
    let mut guest = Guest {
        mem: &mem,
        rx: Ring::new(&mem, 0),
        tx: Ring::new(&mem, 0x1_0000),
        _ev: Ring::new(&mem, 0x2_0000),
    };
    let mut frontend = Frontend::connect(server.socket_path(), 3).expect("connect frontend");
    set_up(
        &mut frontend,
        &file,
        &mem,
        &[&guest.rx, &guest.tx, &guest._ev],
    );
    guest.offer_rx(16);

    // A guest connection to a port nobody serves is refused.
    guest.send(header(Op::Request, 50000, 4000, 0), &[]);
    let pkts = guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op(), Some(Op::Rst));

    // A host program reaches the guest: the REQUEST arrives through the
    // backend fd, i.e. through vhost-user-backend's worker thread.
    let mut host = UnixStream::connect(server.uds_path()).expect("connect uds");
    host.set_read_timeout(Some(WAIT)).expect("timeout");
    host.write_all(b"CONNECT 4001\n").expect("CONNECT");
    let pkts = guest.recv();
    assert_eq!(pkts.len(), 1);
    let (req, _) = pkts[0];
    assert_eq!((req.op(), req.dst_port), (Some(Op::Request), 4001));
    guest.send(header(Op::Response, 4001, req.src_port, 0), &[]);
    let mut ok = vec![0u8; format!("OK {}\n", req.src_port).len()];
    host.read_exact(&mut ok).expect("OK line");
    assert_eq!(ok, format!("OK {}\n", req.src_port).as_bytes());

    host.write_all(b"to the guest").expect("host writes");
    let pkts = guest.recv();
    assert_eq!(pkts[0].0.op(), Some(Op::Rw));
    assert_eq!(pkts[0].1, b"to the guest");
    guest.send(header(Op::Rw, 4001, req.src_port, 11), b"to the host");
    let mut got = [0u8; 11];
    host.read_exact(&mut got).expect("host reads");
    assert_eq!(&got, b"to the host");

    // Stopping disconnects the frontend and the host program, and cleans up.
    server.stop().expect("stop");
    assert!(server.is_finished());
    assert!(
        !dir.path().join("vu.sock").exists(),
        "vhost-user socket removed"
    );
    assert!(
        !dir.path().join("vm.vsock").exists(),
        "vsock socket removed"
    );
    assert_eq!(
        host.read(&mut got).expect("EOF"),
        0,
        "host connection closed"
    );
    assert!(frontend.get_features().is_err(), "frontend disconnected");
}

#[test]
fn frontend_disconnect_ends_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = VsockServer::start(config(dir.path())).expect("start");
    let frontend = Frontend::connect(server.socket_path(), 3).expect("connect");
    frontend.set_owner().expect("set_owner");
    drop(frontend);
    let deadline = Instant::now() + WAIT;
    while !server.is_finished() {
        assert!(
            Instant::now() < deadline,
            "server did not notice the disconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(server);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn drop_without_frontend_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = VsockServer::start(config(dir.path())).expect("start");
    assert!(!server.is_finished());
    drop(server);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn a_socket_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = VsockServer::start(config(dir.path())).expect("start");
    let mut other = config(dir.path());
    other.uds_path = dir.path().join("other.vsock");
    match VsockServer::start(other) {
        Err(VsockServerError::Server(ServerError::SocketInUse(p))) => {
            assert_eq!(p, dir.path().join("vu.sock"))
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second server on the same socket"),
    }
    assert!(
        !dir.path().join("other.vsock").exists(),
        "failed start left nothing behind"
    );
}

#[test]
fn invalid_cid_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.guest_cid = 2;
    let err = VsockServer::start(c).err().expect("CID 2 is the host");
    assert!(err.to_string().contains("guest CID 2 is invalid"), "{err}");
}
