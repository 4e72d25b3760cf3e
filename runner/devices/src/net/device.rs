//! virtio-net (device id 1) whose backend is a passt socket: the guest's
//! Ethernet frames go out length-prefixed ([`super::stream`]), and frames
//! from passt are put into the guest's receive buffers.
//!
//! Deliberately plain: one RX and one TX queue, no offloads (no checksum
//! or segmentation offload, no mergeable buffers), so every frame is one
//! Ethernet frame of at most the guest's MTU plus headers, and a frame in
//! either direction is one buffer in memory at most:
//!
//! - TX: a chain is copied into a buffer capped at [`MAX_CHAIN`]; a larger
//!   chain is dropped. When the socket cannot take a frame, it is kept and
//!   the TX queue is left alone until the socket drains (EPOLLOUT).
//! - RX: the socket is read one frame at a time; while a frame waits for a
//!   guest buffer, the socket is not read (no EPOLLIN), so passt is slowed
//!   down instead of the device buffering.
//!
//! The device enforces no policy: what is on the other end does (the
//! job's egress process before passt, or the segment's switch).
//!
//! Snapshots: a NIC on a segment saves and restores ([`super::state`]);
//! one on passt refuses ([`SNAPSHOT_UNSUPPORTED`]).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::state::{self, NetState};
use super::stream::{MAX_FRAME, MIN_FRAME};
use crate::bounded::RateLimiter;
use crate::common::VirtioCommon;
use crate::queue::{drain_queue, pop_or_arm, Served};
use crate::snapshot::error::SnapshotError;
use crate::snapshot::state::DeviceState;
use crate::virtio::{DeviceContext, DeviceError, VirtioDevice};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 it is always 12
/// bytes, `num_buffers` included.
pub const NET_HDR_SIZE: usize = 12;
/// A legacy driver (no VERSION_1, no mergeable buffers) uses the 10-byte
/// header without `num_buffers`.
pub const LEGACY_NET_HDR_SIZE: usize = 10;
/// Most bytes one TX chain may hold: the header and the largest frame.
pub const MAX_CHAIN: usize = NET_HDR_SIZE + MAX_FRAME;

const FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// How the device reaches the network.
pub struct NetConfig {
    /// Connected to passt (or anything speaking its framing).
    pub backend: UnixStream,
    pub mac: [u8; 6],
    /// Whether the other end keeps nothing of the guest, so that a clone
    /// of the VM may be connected to a new one: true for a segment's
    /// switch (it answers ARP from its own table, and a member's MAC and
    /// address are its index's on every segment), false for passt.
    pub restorable: bool,
}

/// A frame read from the socket, part way or whole.
#[derive(Default)]
struct Incoming {
    len_bytes: [u8; 4],
    len_read: usize,
    frame: Vec<u8>,
    frame_read: usize,
}

impl Incoming {
    fn complete(&self) -> bool {
        self.len_read == 4 && self.frame_read == self.frame.len()
    }
}

pub struct NetDevice {
    virtio: VirtioCommon,
    socket: Option<UnixStream>,
    epoll: Epoll,
    mac: [u8; 6],
    /// A frame (with its length prefix) the socket has not taken yet.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The TX chain being read, reused (at most [`MAX_CHAIN`] bytes).
    chain: Vec<u8>,
    incoming: Incoming,
    /// What epoll watches on the socket now.
    interest: EventSet,
    /// Whether the driver has made the RX queue usable; until then the
    /// socket is not read (nothing could take a frame).
    rx_usable: bool,
    restorable: bool,
    warnings: RateLimiter,
}

impl NetDevice {
    pub fn new(config: NetConfig) -> io::Result<NetDevice> {
        config.backend.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let interest = EventSet::IN;
        epoll.ctl(
            ControlOperation::Add,
            config.backend.as_raw_fd(),
            EpollEvent::new(interest, 0),
        )?;
        Ok(NetDevice {
            virtio: VirtioCommon::new(VIRTIO_ID_NET, FEATURES, &[QUEUE_SIZE; 2]),
            socket: Some(config.backend),
            epoll,
            mac: config.mac,
            outgoing: Vec::new(),
            outgoing_sent: 0,
            chain: Vec::with_capacity(MAX_CHAIN),
            incoming: Incoming::default(),
            interest,
            rx_usable: false,
            restorable: config.restorable,
            warnings: RateLimiter::default(),
        })
    }

    /// Watches the socket for reading unless a frame waits for the guest,
    /// and for writing while a frame waits for the socket.
    fn update_interest(&mut self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut wanted = EventSet::empty();
        if self.rx_usable && !self.incoming.complete() {
            wanted |= EventSet::IN;
        }
        if self.outgoing_sent < self.outgoing.len() {
            wanted |= EventSet::OUT;
        }
        if wanted != self.interest {
            self.epoll.ctl(
                ControlOperation::Modify,
                socket.as_raw_fd(),
                EpollEvent::new(wanted, 0),
            )?;
            self.interest = wanted;
        }
        Ok(())
    }

    /// passt went away or broke the framing: the guest's link is gone
    /// (frames it sends are dropped), the VM goes on.
    fn disconnect(&mut self, why: &str) {
        crate::warn_limited!(self.warnings, "virtio-net: network backend lost: {why}");
        if let Some(socket) = self.socket.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                socket.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.outgoing.clear();
        self.outgoing_sent = 0;
        self.incoming = Incoming::default();
    }

    /// Writes what is pending; true once nothing is.
    fn flush(&mut self) -> bool {
        while self.outgoing_sent < self.outgoing.len() {
            let Some(socket) = self.socket.as_mut() else {
                return true;
            };
            match socket.write(&self.outgoing[self.outgoing_sent..]) {
                Ok(0) => {
                    self.disconnect("the socket takes no more data");
                    return true;
                }
                Ok(n) => self.outgoing_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.disconnect(&e.to_string());
                    return true;
                }
            }
        }
        self.outgoing.clear();
        self.outgoing_sent = 0;
        true
    }

    /// The virtio-net header's size for the features the driver took.
    fn header_len(&self) -> usize {
        if self.virtio.has_feature(VIRTIO_F_VERSION_1) {
            NET_HDR_SIZE
        } else {
            LEGACY_NET_HDR_SIZE
        }
    }

    fn process_tx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        // One frame in flight at most: while the socket holds the last one,
        // the rest wait in the queue, with notifications off, until
        // process_backend sees EPOLLOUT.
        if !self.flush() {
            if let Some(queue) = ctx.queues.queue_mut(TX_QUEUE) {
                queue.disable_notification(ctx.mem)?;
            }
            return self.update_interest().map_err(DeviceError::Backend);
        }
        let mut chain_bytes = std::mem::take(&mut self.chain);
        let drained = drain_queue(ctx, TX_QUEUE, |mem, chain| {
            self.send_chain(mem, chain, &mut chain_bytes);
            if self.flush() {
                Served::Next(0)
            } else {
                Served::Pause(0)
            }
        });
        self.chain = chain_bytes;
        drained?;
        self.update_interest().map_err(DeviceError::Backend)
    }

    /// Reads one TX chain into `chain_bytes` and queues its frame for the
    /// socket, unless it is malformed.
    fn send_chain<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
        chain_bytes: &mut Vec<u8>,
    ) {
        chain_bytes.clear();
        let mut fits = true;
        for desc in chain.readable() {
            let len = desc.len() as usize;
            if chain_bytes.len() + len > MAX_CHAIN {
                fits = false;
                break;
            }
            let start = chain_bytes.len();
            chain_bytes.resize(start + len, 0);
            if mem
                .read_slice(&mut chain_bytes[start..], desc.addr())
                .is_err()
            {
                fits = false;
                break;
            }
        }
        let hdr = self.header_len();
        if !fits || chain_bytes.len() < hdr + MIN_FRAME {
            crate::warn_limited!(
                self.warnings,
                "virtio-net: dropping a tx chain of the wrong size or outside memory"
            );
            return;
        }
        let frame = &chain_bytes[hdr..];
        if self.socket.is_some() {
            self.outgoing
                .extend_from_slice(&(frame.len() as u32).to_be_bytes());
            self.outgoing.extend_from_slice(frame);
        }
    }

    /// Reads from the socket until a whole frame is there or it would
    /// block; true when a frame is complete.
    fn read_incoming(&mut self) -> bool {
        loop {
            if self.incoming.complete() {
                return true;
            }
            let Some(socket) = self.socket.as_mut() else {
                return false;
            };
            let inc = &mut self.incoming;
            let result = if inc.len_read < 4 {
                socket.read(&mut inc.len_bytes[inc.len_read..])
            } else {
                socket.read(&mut inc.frame[inc.frame_read..])
            };
            match result {
                Ok(0) => {
                    self.disconnect("end of stream");
                    return false;
                }
                Ok(n) if inc.len_read < 4 => {
                    inc.len_read += n;
                    if inc.len_read == 4 {
                        let len = u32::from_be_bytes(inc.len_bytes) as usize;
                        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
                            self.disconnect(&format!("frame length {len}"));
                            return false;
                        }
                        inc.frame.resize(len, 0);
                        inc.frame_read = 0;
                    }
                }
                Ok(n) => inc.frame_read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.disconnect(&e.to_string());
                    return false;
                }
            }
        }
    }

    fn process_rx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let mut used = false;
        let queue = ctx.queues.queue_mut(RX_QUEUE);
        self.rx_usable = queue.is_some();
        if let Some(queue) = queue {
            while self.read_incoming() {
                // Out of buffers: a kick comes when the driver adds some.
                let Some(chain) = pop_or_arm(queue, mem, false)? else {
                    break;
                };
                let head = chain.head_index();
                let frame = &self.incoming.frame;
                let hdr = self.header_len();
                let mut header = [0u8; NET_HDR_SIZE];
                // num_buffers = 1 (in the 12-byte header only).
                header[10] = 1;
                let total = hdr + frame.len();
                let mut written = 0usize;
                let mut fault = false;
                for desc in chain.writable() {
                    if written == total {
                        break;
                    }
                    let take = (desc.len() as usize).min(total - written);
                    let mut part = Vec::with_capacity(take);
                    for at in written..written + take {
                        part.push(if at < hdr {
                            header[at]
                        } else {
                            frame[at - hdr]
                        });
                    }
                    if mem.write_slice(&part, desc.addr()).is_err() {
                        fault = true;
                        break;
                    }
                    written += take;
                }
                let len = if fault || written < total {
                    crate::warn_limited!(
                        self.warnings,
                        "virtio-net: dropping a {}-byte frame: the rx buffer is too small or outside memory",
                        frame.len()
                    );
                    0
                } else {
                    written as u32
                };
                queue.add_used(mem, head, len)?;
                used = true;
                self.incoming = Incoming::default();
            }
        }
        self.update_interest().map_err(DeviceError::Backend)?;
        if used {
            ctx.notify_used(RX_QUEUE)?;
        }
        Ok(())
    }
}

impl<M: GuestMemory> VirtioDevice<M> for NetDevice {
    fn virtio(&self) -> &VirtioCommon {
        &self.virtio
    }

    fn virtio_mut(&mut self) -> &mut VirtioCommon {
        &mut self.virtio
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: only `mac` is offered.
        crate::virtio::read_config_space(&self.mac, offset, data);
    }

    fn warnings(&self) -> &RateLimiter {
        &self.warnings
    }

    fn process_queue(
        &mut self,
        queue_index: u16,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        match queue_index {
            RX_QUEUE => self.process_rx(ctx),
            TX_QUEUE => self.process_tx(ctx),
            other => Err(DeviceError::NoSuchQueue(other)),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self, ctx: &mut DeviceContext<'_, M>) -> Result<(), DeviceError> {
        // Take the readiness events off the epoll (level-triggered: what
        // still holds is reported again).
        let mut events = [EpollEvent::default(); 1];
        let _ = self.epoll.wait(0, &mut events);
        self.process_tx(ctx)?;
        self.process_rx(ctx)
    }

    fn reset(&mut self) {
        self.virtio.reset();
        self.rx_usable = false;
        // Frames the guest or passt sent before the reset may be dropped,
        // but a frame half way through the socket must be finished, or the
        // stream's framing would be lost: only whole frames are discarded.
        if self.incoming.complete() {
            self.incoming = Incoming::default();
        }
        let _ = self.update_interest();
    }

    fn save_state(&self) -> Result<DeviceState, SnapshotError> {
        if !self.restorable {
            return Err(SNAPSHOT_UNSUPPORTED);
        }
        Ok(DeviceState::Net(NetState {
            virtio: self.virtio.save(),
            mac: self.mac,
        }))
    }

    fn restore_state(&mut self, saved: &DeviceState) -> Result<(), SnapshotError> {
        if !self.restorable {
            return Err(SNAPSHOT_UNSUPPORTED);
        }
        let DeviceState::Net(saved) = saved else {
            return Err(saved.not_for(VIRTIO_ID_NET));
        };
        if !self.virtio.is_fresh() {
            return Err(SnapshotError::Invalid {
                device: "net",
                reason: "a restore needs a freshly created device, and this one was already \
                         set up"
                    .into(),
            });
        }
        state::check(saved, &self.virtio, self.mac)?;
        self.virtio.restore(&saved.virtio);
        // The restored driver posted its receive buffers long ago and
        // kicks no more: read the new socket from now on.
        self.rx_usable = self.virtio.is_activated();
        self.update_interest().map_err(|source| SnapshotError::Io {
            device: "net",
            what: "cannot watch the new socket".into(),
            source,
        })
    }
}

/// Why a VM with a network is never snapshotted: its guest's TCP
/// connections, ARP and DHCP state are tied to one passt process, whose own
/// state (NAT flows, the guest's address lease) a clone could not share, and
/// clones of one guest would all claim the same address and connections.
const SNAPSHOT_UNSUPPORTED: SnapshotError = SnapshotError::Unsupported {
    device: "net",
    reason: "the guest's connections and address belong to one passt process that a clone \
             cannot share; jobs with a network always cold-boot",
};
