//! Host side of the vsock device: maps guest streams onto Unix sockets.
//!
//! The protocol is the "hybrid vsock" one of Firecracker, cloud-hypervisor and
//! vhost-device-vsock:
//! - a host program connects to `uds_path`, writes `CONNECT <port>\n`, and gets
//!   `OK <host_port>\n` once the guest accepted on `<port>`; the socket is closed
//!   if the guest refuses (RST) or does not answer in time;
//! - a guest connection to host port `P` is connected to the Unix socket
//!   `<uds_path>_<P>`; no listener there means an RST to the guest.
//!
//! All sockets are non-blocking and registered edge-triggered in one epoll
//! instance, whose fd is the device's backend fd. The work the rx queue has to
//! do is a FIFO of connections with something to say, plus RSTs for packets
//! that matched no connection; both are bounded.

use std::sync::Arc;

use crate::bounded::RateLimiter;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::config::VsockConfig;
use super::connection::{ConnParams, Connection, State};
use super::packet::{Op, RxBuffer, TxPacket, VsockHeader, HOST_CID, TYPE_STREAM};
use super::socket::connect_nonblocking;

mod host;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
/// The device asks for a `process_backend` call (see [`Muxer::wake`]).
const TOKEN_WAKE: u64 = 2;
const FIRST_STREAM_TOKEN: u64 = 3;
/// Longest accepted `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// Host programs that connected but have not finished their CONNECT line.
const MAX_HANDSHAKES: usize = 64;
/// RST replies to stray packets waiting for rx buffers; more are dropped.
const MAX_ORPHAN_REPLIES: usize = 256;
/// Host ports handed out for host-initiated connections start here, far from
/// ports a guest would listen on or connect to.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host program that connected to `uds_path` and is still sending its
/// `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

enum Slot {
    Handshake(Handshake),
    Conn(ConnKey),
}

pub(crate) struct Muxer {
    epoll: Epoll,
    listener: UnixListener,
    uds_path: PathBuf,
    timer: TimerFd,
    /// When the timer fires next, if armed.
    timer_at: Option<Instant>,
    wake: EventFd,
    params: ConnParams,
    max_connections: usize,
    conns: HashMap<ConnKey, (u64, Connection)>,
    slots: HashMap<u64, Slot>,
    next_token: u64,
    next_local_port: u32,
    rx_work: VecDeque<ConnKey>,
    orphan_replies: VecDeque<VsockHeader>,
}

fn event_set(token_is_stream: bool) -> EventSet {
    let base = EventSet::IN | EventSet::EDGE_TRIGGERED;
    if token_is_stream {
        base | EventSet::OUT | EventSet::READ_HANG_UP
    } else {
        base
    }
}

/// Binds `path`, replacing a socket file left behind by a dead process but
/// never one somebody still listens on.
fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Stops watching a host socket that is being dropped. A failure means it
/// was not watched, which is what we want anyway.
fn unwatch(epoll: &Epoll, fd: RawFd) {
    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
}

impl Muxer {
    pub fn new(config: &VsockConfig) -> io::Result<Muxer> {
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        // SAFETY: fcntl on an fd we own; only adds O_NONBLOCK so a spurious
        // wake-up never blocks the device thread in `read`.
        unsafe {
            let fd = timer.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(event_set(false), TOKEN_TIMER),
        )?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(event_set(false), TOKEN_WAKE),
        )?;
        // Bound last, so a failure above leaves no socket file behind.
        let listener = bind_listener(&config.uds_path)?;
        let watched = listener.set_nonblocking(true).and_then(|()| {
            epoll.ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(event_set(false), TOKEN_LISTENER),
            )
        });
        if let Err(e) = watched {
            let _ = std::fs::remove_file(&config.uds_path);
            return Err(e);
        }
        Ok(Muxer {
            epoll,
            listener,
            uds_path: config.uds_path.clone(),
            timer,
            timer_at: None,
            wake,
            params: ConnParams {
                guest_cid: config.guest_cid,
                buf_alloc: config.conn_buffer_size,
                timeouts: config.timeouts,
                warnings: Arc::new(RateLimiter::default()),
            },
            max_connections: config.max_connections,
            conns: HashMap::new(),
            slots: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rx_work: VecDeque::new(),
            orphan_replies: VecDeque::new(),
        })
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live guest connections (for tests and diagnostics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Makes the backend fd readable, so that the transport calls
    /// `process_backend` soon even if no host socket has news.
    pub fn wake(&self) -> io::Result<()> {
        self.wake.write(1)
    }

    /// What keeps the host side from being saved in a snapshot: open
    /// connections, host programs still sending their `CONNECT` line, and
    /// packets waiting for the guest. `None` when there is nothing.
    pub fn snapshot_blocker(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.conns.is_empty() {
            let mut keys: Vec<&ConnKey> = self.conns.keys().collect();
            keys.sort_by_key(|k| (k.local_port, k.peer_port));
            const SHOWN: usize = 3;
            let listed: Vec<String> = keys
                .iter()
                .take(SHOWN)
                .map(|k| format!("host port {} -> guest port {}", k.local_port, k.peer_port))
                .collect();
            let more = match keys.len().saturating_sub(SHOWN) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            why.push(match keys.len() {
                1 => format!("1 connection is open ({})", listed.join(", ")),
                n => format!("{n} connections are open ({}{more})", listed.join(", ")),
            });
        }
        let handshakes = self.slots.len().saturating_sub(self.conns.len());
        if handshakes > 0 {
            why.push(format!(
                "{handshakes} host program(s) connected to {} and did not finish the CONNECT line",
                self.uds_path.display()
            ));
        }
        if !self.orphan_replies.is_empty() {
            why.push(format!(
                "{} reset packet(s) wait for the guest",
                self.orphan_replies.len()
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.orphan_replies.is_empty() || !self.rx_work.is_empty()
    }

    /// Drops every connection and handshake; the host programs see their
    /// sockets close. The listener stays.
    pub fn reset(&mut self) {
        for (_, slot) in self.slots.drain() {
            if let Slot::Handshake(h) = slot {
                unwatch(&self.epoll, h.stream.as_raw_fd());
            }
        }
        for (_, (_, conn)) in self.conns.drain() {
            unwatch(&self.epoll, conn.stream.as_raw_fd());
        }
        self.rx_work.clear();
        self.orphan_replies.clear();
    }

    /// Handles everything the host side reported since the last call.
    pub fn process_host_events(&mut self) -> io::Result<()> {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                let set = ev.event_set();
                match ev.data() {
                    TOKEN_LISTENER => self.accept_host_connections(),
                    TOKEN_TIMER => self.on_timer(),
                    // Drained only: the device does its work after this call.
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                    }
                    token => self.on_stream_event(token, set),
                }
            }
            // Handling events can queue new ones (re-arming a socket that is
            // already ready does): leave only when none are left, so the fd
            // is quiet when we return.
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Handles one packet from the tx queue.
    pub fn handle_guest_packet<M: GuestMemory>(&mut self, mem: &M, pkt: &TxPacket) {
        let op = match pkt.check_addressing(self.params.guest_cid) {
            Ok(op) => op,
            Err(e) => {
                crate::warn_limited!(self.params.warnings, "vsock: dropping tx packet: {e}");
                return;
            }
        };
        let hdr = &pkt.hdr;
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some((_, conn)) = self.conns.get_mut(&key) {
            conn.on_guest_packet(mem, pkt, op);
            self.after_change(key);
            return;
        }
        match op {
            Op::Request => self.accept_guest_connection(hdr),
            Op::Rst => {}
            _ => self.reply_rst(hdr),
        }
    }

    fn accept_guest_connection(&mut self, hdr: &VsockHeader) {
        if self.conns.len() >= self.max_connections {
            crate::warn_limited!(
                self.params.warnings,
                "vsock: connection limit reached, refusing guest connection to port {}",
                hdr.dst_port
            );
            return self.reply_rst(hdr);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "vsock: guest connection to port {} refused: {}: {e}",
                    hdr.dst_port,
                    Path::new(&path).display()
                );
                return self.reply_rst(hdr);
            }
        };
        let token = self.new_token();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(event_set(true), token),
        ) {
            crate::warn_limited!(self.params.warnings, "vsock: cannot watch host socket: {e}");
            return self.reply_rst(hdr);
        }
        let conn = Connection::guest_initiated(stream, hdr, self.params.clone());
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, (token, conn));
        self.after_change(key);
    }

    /// Answers a packet that matches no connection with an RST.
    fn reply_rst(&mut self, to: &VsockHeader) {
        if self.orphan_replies.len() >= MAX_ORPHAN_REPLIES {
            crate::warn_limited!(
                self.params.warnings,
                "vsock: too many unanswered stray packets, dropping an RST"
            );
            return;
        }
        self.orphan_replies.push_back(VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.params.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..VsockHeader::default()
        });
    }

    /// Brings the bookkeeping up to date after `key`'s connection changed.
    fn after_change(&mut self, key: ConnKey) {
        let Some((_, conn)) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_dead() {
            return self.remove(key);
        }
        let deadline = conn.deadline;
        if conn.has_pending_rx() && !conn.in_rx_queue {
            conn.in_rx_queue = true;
            self.rx_work.push_back(key);
        }
        if let Some(d) = deadline {
            self.arm_timer(d);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some((token, conn)) = self.conns.remove(&key) {
            self.slots.remove(&token);
            unwatch(&self.epoll, conn.stream.as_raw_fd());
        }
    }

    /// Writes the next packet for the guest into `buf`. Returns the bytes
    /// used, or `None` if nothing was left to send (the buffer is untouched).
    pub fn fill_rx<M: GuestMemory>(&mut self, mem: &M, buf: &RxBuffer) -> Option<u32> {
        if let Some(hdr) = self.orphan_replies.pop_front() {
            return Some(buf.write_header(mem, &hdr).unwrap_or_else(|e| {
                crate::warn_limited!(self.params.warnings, "vsock: cannot write rx buffer: {e}");
                0
            }));
        }
        // Each connection gets one try per call: one that turns out to have
        // nothing to send goes back to the queue only afterwards.
        let mut idle = Vec::new();
        let mut written = None;
        while let Some(key) = self.rx_work.pop_front() {
            let Some((_, conn)) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_queue = false;
            written = match conn.fill_rx(mem, buf) {
                Ok(w) => w,
                Err(e) => {
                    crate::warn_limited!(
                        self.params.warnings,
                        "vsock: cannot write rx buffer: {e}"
                    );
                    conn.kill();
                    Some(0)
                }
            };
            if written.is_some() {
                // Back to the end of the line if it has more, so streams share the queue.
                self.after_change(key);
                break;
            }
            idle.push(key);
        }
        for key in idle {
            self.after_change(key);
        }
        written
    }

    fn arm_timer(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let delay = at
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1));
        match self.timer.reset(delay, None) {
            Ok(()) => self.timer_at = Some(at),
            Err(e) => crate::warn_limited!(self.params.warnings, "vsock: cannot arm timer: {e}"),
        }
    }

    fn on_timer(&mut self) {
        let mut ticks = 0u64;
        // SAFETY: reads at most 8 bytes into a u64 we own. The fd is
        // non-blocking: a timer re-armed since it fired has nothing to read.
        unsafe { libc::read(self.timer.as_raw_fd(), (&mut ticks as *mut u64).cast(), 8) };
        self.timer_at = None;
        let now = Instant::now();
        let expired_handshakes: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|(t, s)| match s {
                Slot::Handshake(h) if h.deadline <= now => Some(*t),
                _ => None,
            })
            .collect();
        for token in expired_handshakes {
            if let Some(Slot::Handshake(h)) = self.slots.remove(&token) {
                crate::warn_limited!(
                    self.params.warnings,
                    "vsock: host connection sent no CONNECT line in time"
                );
                unwatch(&self.epoll, h.stream.as_raw_fd());
            }
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some((_, conn)) = self.conns.get_mut(&key) {
                if conn.deadline.is_some_and(|d| d <= now) {
                    let was_waiting = conn.state == State::AwaitingResponse;
                    conn.on_deadline();
                    if was_waiting {
                        crate::warn_limited!(
                            self.params.warnings,
                            port = key.peer_port,
                            "vsock: guest did not answer a connection request in time"
                        );
                    }
                }
            }
            self.after_change(key);
        }
        let next = self
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Handshake(h) => Some(h.deadline),
                Slot::Conn(_) => None,
            })
            .chain(self.conns.values().filter_map(|(_, c)| c.deadline))
            .min();
        if let Some(at) = next {
            self.arm_timer(at);
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Muxer {
    /// The device's warning budget, shared with its connections.
    pub(crate) fn warnings(&self) -> &RateLimiter {
        &self.params.warnings
    }
}
