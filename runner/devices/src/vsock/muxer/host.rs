//! The host side of the hybrid vsock protocol: host programs connect to
//! the device's Unix socket, send `CONNECT <port>\n`, and become
//! connections to the guest. Split from the muxer to keep each file to one
//! concern; it is the same `Muxer`.

use std::io::Read;

use super::*;

impl Muxer {
    pub(super) fn accept_host_connections(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued and
                    // we will be told again when another one arrives.
                    crate::warn_limited!(
                        self.params.warnings,
                        "vsock: accept on {} failed: {e}",
                        self.uds_path.display()
                    );
                    return;
                }
            };
            let handshakes = self.slots.len() - self.conns.len();
            if handshakes >= MAX_HANDSHAKES || self.conns.len() >= self.max_connections {
                crate::warn_limited!(
                    self.params.warnings,
                    "vsock: too many host connections, refusing one"
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                crate::warn_limited!(
                    self.params.warnings,
                    "vsock: cannot make host socket non-blocking: {e}"
                );
                continue;
            }
            let token = self.new_token();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(event_set(false), token),
            ) {
                crate::warn_limited!(self.params.warnings, "vsock: cannot watch host socket: {e}");
                continue;
            }
            let deadline = Instant::now() + self.params.timeouts.handshake;
            self.arm_timer(deadline);
            let handshake = Handshake {
                stream,
                line: Vec::new(),
                deadline,
            };
            self.slots.insert(token, Slot::Handshake(handshake));
            // The CONNECT line may already be there; edge-triggered epoll
            // only reports data arriving after registration.
            self.on_handshake_readable(token);
        }
    }

    pub(super) fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    pub(super) fn on_stream_event(&mut self, token: u64, set: EventSet) {
        let key = match self.slots.get(&token) {
            Some(Slot::Conn(key)) => *key,
            Some(Slot::Handshake(_)) => return self.on_handshake_readable(token),
            None => return,
        };
        if let Some((_, conn)) = self.conns.get_mut(&key) {
            let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
            conn.on_host_event(
                set.intersects(EventSet::IN | EventSet::READ_HANG_UP),
                set.contains(EventSet::OUT),
                hangup,
            );
            self.after_change(key);
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so nothing the
    /// host program sends after it is consumed here.
    pub(super) fn on_handshake_readable(&mut self, token: u64) {
        let Some(Slot::Handshake(h)) = self.slots.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match (&h.stream).read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT".to_string()),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&h.line),
                Ok(_) if h.line.len() >= MAX_CONNECT_LINE => {
                    break Err("CONNECT line too long".to_string())
                }
                Ok(_) => h.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        let Some(Slot::Handshake(h)) = self.slots.remove(&token) else {
            return;
        };
        match port {
            Ok(port) => self.start_host_connection(token, h.stream, port),
            Err(why) => {
                crate::warn_limited!(
                    self.params.warnings,
                    "vsock: dropping host connection: {why}"
                );
                unwatch(&self.epoll, h.stream.as_raw_fd());
            }
        }
    }

    pub(super) fn start_host_connection(&mut self, token: u64, stream: UnixStream, peer_port: u32) {
        let fd = stream.as_raw_fd();
        if self.conns.len() >= self.max_connections {
            crate::warn_limited!(
                self.params.warnings,
                "vsock: connection limit reached, refusing CONNECT {peer_port}"
            );
            unwatch(&self.epoll, fd);
            return;
        }
        let local_port = self.alloc_local_port();
        // Now that it carries data, also watch for room to write and hang-ups.
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(event_set(true), token),
        ) {
            crate::warn_limited!(self.params.warnings, "vsock: cannot watch host socket: {e}");
            return;
        }
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::host_initiated(stream, local_port, peer_port, self.params.clone());
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, (token, conn));
        self.after_change(key);
    }

    pub(super) fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }
}

fn parse_connect(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8".to_string())?;
    let port = text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected `CONNECT <port>`, got {text:?}"))?;
    port.trim()
        .parse::<u32>()
        .map_err(|_| format!("bad port in {text:?}"))
}
