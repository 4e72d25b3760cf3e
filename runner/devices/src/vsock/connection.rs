//! One vsock stream between a guest socket and a host Unix socket.
//!
//! Data moves in two directions with independent credit accounting
//! (virtio spec 5.10.6.3):
//! - *to guest*: bytes read from the host socket go straight into rx buffers,
//!   never more than the guest's advertised free space
//!   (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`). When that space runs out we
//!   stop reading, so the host writer is held back by its own socket buffer.
//! - *to host*: bytes from tx packets are written straight to the host socket;
//!   whatever the socket does not take waits in `to_host`, which never exceeds
//!   the `buf_alloc` we advertise. A guest that sends beyond its credit is reset.
//!
//! Socket readiness comes from an edge-triggered epoll, so `readable` and
//! `writable` stay set until a read or write hits `EAGAIN`.

use std::sync::Arc;

use crate::bounded::RateLimiter;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;
use std::{io, net::Shutdown};

use vm_memory::GuestMemory;

use super::config::VsockTimeouts;
use super::packet::{
    Op, RxBuffer, TxPacket, VsockHeader, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};
use super::socket::{send_nosignal, NoSigPipe};

/// Control packets waiting for an rx buffer, in the order they are sent.
mod pending {
    pub const RST: u8 = 1 << 0;
    pub const REQUEST: u8 = 1 << 1;
    pub const RESPONSE: u8 = 1 << 2;
    pub const SHUTDOWN: u8 = 1 << 3;
    pub const CREDIT_UPDATE: u8 = 1 << 4;
    pub const CREDIT_REQUEST: u8 = 1 << 5;
}

/// What every connection of a device shares.
#[derive(Clone, Debug)]
pub(crate) struct ConnParams {
    pub guest_cid: u64,
    /// The device's warning budget: the guest decides how often these fire.
    pub warnings: Arc<RateLimiter>,
    /// Our receive buffer for guest data (the `buf_alloc` we advertise).
    pub buf_alloc: u32,
    pub timeouts: VsockTimeouts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    AwaitingResponse,
    /// Both ends may exchange data (subject to shutdown flags).
    Established,
    /// Both directions are shut; waiting for the last bytes to reach the host
    /// or for the guest's RST.
    Closing,
    /// Nothing more to do once queued packets are out; the muxer removes it.
    Dead,
}

pub(crate) struct Connection {
    pub stream: UnixStream,
    /// Port on the host side (our `src_port` in packets to the guest).
    pub local_port: u32,
    /// Port of the guest socket.
    pub peer_port: u32,
    guest_cid: u64,
    timeouts: VsockTimeouts,
    warnings: Arc<RateLimiter>,
    pub state: State,
    pending: u8,
    shutdown_flags: u32,
    /// Set by the muxer while the connection sits in its rx work queue.
    pub in_rx_queue: bool,
    /// When the connection gives up waiting (for a RESPONSE, or for a clean close).
    pub deadline: Option<Instant>,

    // Host socket -> guest.
    readable: bool,
    host_hup: bool,
    /// We told the guest we will send nothing more.
    sent_shutdown_send: bool,
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_request_sent: bool,

    // Guest -> host socket.
    to_host: Vec<u8>,
    to_host_start: usize,
    /// Leading bytes of `to_host` that are our own (the `OK` line), not guest
    /// data, and so must not count towards `fwd_cnt`.
    to_host_own: usize,
    writable: bool,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    buf_alloc: u32,
    guest_shutdown: u32,
    host_write_shut: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        params: ConnParams,
        state: State,
    ) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid: params.guest_cid,
            timeouts: params.timeouts,
            warnings: params.warnings,
            state,
            pending: 0,
            shutdown_flags: 0,
            in_rx_queue: false,
            deadline: None,
            readable: false,
            host_hup: false,
            sent_shutdown_send: false,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_request_sent: false,
            to_host: Vec::new(),
            to_host_start: 0,
            to_host_own: 0,
            // A freshly connected socket has room; EAGAIN will say otherwise.
            writable: true,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            buf_alloc: params.buf_alloc,
            guest_shutdown: 0,
            host_write_shut: false,
        }
    }

    /// A host program asked (`CONNECT <peer_port>`) to reach the guest.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        params: ConnParams,
    ) -> Self {
        let mut c = Connection::new(
            stream,
            local_port,
            peer_port,
            params,
            State::AwaitingResponse,
        );
        c.pending = pending::REQUEST;
        c
    }

    /// The guest connected to host port `local_port` and the host listener accepted.
    pub fn guest_initiated(stream: UnixStream, request: &VsockHeader, params: ConnParams) -> Self {
        let mut c = Connection::new(
            stream,
            request.dst_port,
            request.src_port,
            params,
            State::Established,
        );
        c.update_peer_credit(request);
        c.pending = pending::RESPONSE;
        c
    }

    pub fn is_dead(&self) -> bool {
        self.state == State::Dead && self.pending & pending::RST == 0
    }

    /// Resets the connection: an RST goes to the guest, the host socket closes
    /// when the muxer drops the connection.
    pub fn kill(&mut self) {
        self.state = State::Dead;
        // Anything else still queued is moot once the guest sees the RST.
        self.pending = pending::RST;
    }

    /// Ends the connection without telling the guest (it reset it, or never knew).
    fn drop_silently(&mut self) {
        self.state = State::Dead;
        self.pending = 0;
    }

    fn update_peer_credit(&mut self, hdr: &VsockHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_free() > 0 {
            self.credit_request_sent = false;
        }
    }

    /// Bytes the guest can still take.
    fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn to_host_len(&self) -> usize {
        self.to_host.len() - self.to_host_start
    }

    /// Whether the connection has something for the rx queue.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0 || self.wants_to_read()
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.sent_shutdown_send
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_free() > 0
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet<M: GuestMemory>(&mut self, mem: &M, pkt: &TxPacket, op: Op) {
        self.update_peer_credit(&pkt.hdr);
        match (self.state, op) {
            (_, Op::Rst) => self.drop_silently(),
            (State::Dead, _) => {}
            (State::AwaitingResponse, Op::Response) => {
                self.state = State::Established;
                self.deadline = None;
                // The hybrid protocol's acknowledgement to the host program.
                let ack = format!("OK {}\n", self.local_port);
                self.to_host.extend_from_slice(ack.as_bytes());
                self.to_host_own = ack.len();
                self.flush_to_host();
            }
            (State::AwaitingResponse, _) | (_, Op::Request) | (_, Op::Response) => {
                crate::warn_limited!(
                self.warnings,
                    port = self.local_port,
                    peer = self.peer_port,
                    ?op,
                    state = ?self.state,
                    "vsock: unexpected packet, resetting connection"
                );
                self.kill();
            }
            (_, Op::Rw) => self.forward_to_host(mem, pkt),
            (_, Op::Shutdown) => self.on_guest_shutdown(pkt.hdr.flags),
            (_, Op::CreditUpdate) => {}
            (_, Op::CreditRequest) => self.pending |= pending::CREDIT_UPDATE,
        }
    }

    fn forward_to_host<M: GuestMemory>(&mut self, mem: &M, pkt: &TxPacket) {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 || self.state != State::Established {
            // Normal when the host hung up while the guest was still sending.
            tracing::debug!(
                port = self.local_port,
                peer = self.peer_port,
                "vsock: data after shutdown"
            );
            self.kill();
            return;
        }
        let len = pkt.payload_len();
        let unforwarded = (self.rx_cnt - self.fwd_cnt).0 as usize;
        if unforwarded + len > self.buf_alloc as usize {
            crate::warn_limited!(
                self.warnings,
                port = self.local_port,
                peer = self.peer_port,
                "vsock: guest sent beyond its credit, resetting connection"
            );
            self.kill();
            return;
        }
        self.rx_cnt += Wrapping(len as u32);
        let mut done = 0;
        if self.to_host_len() == 0 && self.writable && !self.host_write_shut {
            match pkt.write_payload_to(mem, 0, &mut NoSigPipe(&self.stream)) {
                Ok(n) => done = n,
                Err(e) => {
                    tracing::debug!(
                        port = self.local_port,
                        "vsock: host socket write failed: {e}"
                    );
                    self.kill();
                    return;
                }
            }
            self.fwd_cnt += Wrapping(done as u32);
            if done < len {
                self.writable = false;
            }
        }
        if done < len {
            self.compact_to_host();
            if let Err(e) = pkt.copy_payload(mem, done, &mut self.to_host) {
                crate::warn_limited!(
                    self.warnings,
                    port = self.local_port,
                    "vsock: cannot read tx payload: {e}"
                );
                self.kill();
                return;
            }
        }
        self.check_credit_update();
    }

    /// Moves buffered bytes to the front so the buffer never grows past what is queued.
    fn compact_to_host(&mut self) {
        if self.to_host_start > 0 {
            self.to_host.drain(..self.to_host_start);
            self.to_host_start = 0;
        }
    }

    fn on_guest_shutdown(&mut self, flags: u32) {
        self.guest_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed its socket. Once the host has all the data,
            // answer with RST, which lets the guest free the socket at once.
            self.state = State::Closing;
            self.deadline = Some(Instant::now() + self.timeouts.close);
        }
        self.flush_to_host();
    }

    /// Writes buffered guest data to the host socket, then applies pending
    /// guest shutdowns that were waiting for the buffer to drain.
    pub fn flush_to_host(&mut self) {
        while self.to_host_len() > 0 && self.writable {
            match send_nosignal(self.stream.as_raw_fd(), &self.to_host[self.to_host_start..]) {
                Ok(n) => {
                    self.to_host_start += n;
                    let own = n.min(self.to_host_own);
                    self.to_host_own -= own;
                    self.fwd_cnt += Wrapping((n - own) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(
                        port = self.local_port,
                        "vsock: host socket write failed: {e}"
                    );
                    self.kill();
                    return;
                }
            }
        }
        if self.to_host_len() == 0 {
            self.to_host.clear();
            self.to_host_start = 0;
            if self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            if self.state == State::Closing && self.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                self.kill();
                return;
            }
        }
        self.check_credit_update();
    }

    /// Queues a CREDIT_UPDATE when the guest's idea of our free space is stale
    /// enough to slow it down.
    fn check_credit_update(&mut self) {
        let unreported = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if unreported == 0 || self.state != State::Established {
            return;
        }
        let guest_view_used = (self.rx_cnt - self.last_fwd_cnt_sent).0;
        let guest_view_free = self.buf_alloc.saturating_sub(guest_view_used);
        if unreported >= self.buf_alloc / 2 || guest_view_free < MAX_PAYLOAD as u32 {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// Handles readiness of the host socket.
    pub fn on_host_event(&mut self, readable: bool, writable: bool, hangup: bool) {
        if hangup {
            self.host_hup = true;
            if self.state == State::AwaitingResponse {
                // The host program gave up before the guest answered. If the
                // guest never saw the REQUEST it need not hear about it.
                if self.pending & pending::REQUEST != 0 {
                    self.drop_silently();
                } else {
                    self.kill();
                }
                return;
            }
        }
        if readable || hangup {
            self.readable = true;
        }
        if writable {
            self.writable = true;
            self.flush_to_host();
        }
        self.check_credit_request();
    }

    fn check_credit_request(&mut self) {
        if self.state == State::Established
            && self.readable
            && self.peer_free() == 0
            && !self.credit_request_sent
        {
            self.credit_request_sent = true;
            self.pending |= pending::CREDIT_REQUEST;
        }
    }

    /// The connection gave up waiting: for a RESPONSE, the host socket is simply
    /// closed; otherwise the guest gets an RST.
    pub fn on_deadline(&mut self) {
        self.deadline = None;
        tracing::debug!(port = self.local_port, peer = self.peer_port, state = ?self.state, "vsock: connection timed out");
        self.kill();
    }

    fn header(&mut self, op: Op, flags: u32, len: u32) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }

    /// Writes the next packet for the guest into `buf`. Returns its length, or
    /// `None` if there turned out to be nothing to send.
    pub fn fill_rx<M: GuestMemory>(&mut self, mem: &M, buf: &RxBuffer) -> io::Result<Option<u32>> {
        let control = if self.take(pending::RST) {
            Some((Op::Rst, 0))
        } else if self.take(pending::REQUEST) {
            self.deadline = Some(Instant::now() + self.timeouts.request);
            Some((Op::Request, 0))
        } else if self.take(pending::RESPONSE) {
            Some((Op::Response, 0))
        } else {
            None
        };
        if let Some((op, flags)) = control {
            let hdr = self.header(op, flags, 0);
            return buf.write_header(mem, &hdr).map(Some);
        }

        if self.wants_to_read() {
            let max = (self.peer_free() as usize).min(buf.payload_capacity());
            match buf.read_payload_from(mem, &mut &self.stream, max) {
                Ok(0) => self.host_eof(),
                Ok(n) => {
                    self.tx_cnt += Wrapping(n as u32);
                    self.check_credit_request();
                    let hdr = self.header(Op::Rw, 0, n as u32);
                    return buf.write_header(mem, &hdr).map(Some);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) => {
                    tracing::debug!(
                        port = self.local_port,
                        "vsock: host socket read failed: {e}"
                    );
                    self.kill();
                    return self.fill_rx(mem, buf);
                }
            }
        }

        let control = if self.take(pending::SHUTDOWN) {
            Some((Op::Shutdown, self.shutdown_flags))
        } else if self.take(pending::CREDIT_UPDATE) {
            Some((Op::CreditUpdate, 0))
        } else if self.take(pending::CREDIT_REQUEST) {
            Some((Op::CreditRequest, 0))
        } else {
            None
        };
        match control {
            Some((op, flags)) => {
                let hdr = self.header(op, flags, 0);
                buf.write_header(mem, &hdr).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The host program closed its sending side (or the whole socket).
    fn host_eof(&mut self) {
        self.readable = false;
        self.sent_shutdown_send = true;
        self.shutdown_flags = SHUTDOWN_SEND;
        if self.host_hup {
            // The socket is gone: nothing the guest sends can be delivered either.
            self.shutdown_flags |= SHUTDOWN_RCV;
            self.state = State::Closing;
            self.deadline = Some(Instant::now() + self.timeouts.close);
        }
        self.pending |= pending::SHUTDOWN;
    }
}
