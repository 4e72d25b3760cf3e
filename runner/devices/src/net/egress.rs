//! A job's egress policy, applied to the frames its guest sends: what the
//! job's `allow` list names, by address or by name, under the operator's
//! grant.
//!
//! **Names are enforced at DNS time.** Every DNS query the guest sends to
//! its forwarder address comes here ([`Egress::outbound`]):
//! - a name no rule covers gets NXDOMAIN from this filter, and is never
//!   forwarded, so no data leaves as DNS queries for names of one's own;
//! - an `A` query for a covered name goes to the resolver
//!   ([`Verdict::Resolve`]); its answer ([`Egress::from_resolver`]) opens
//!   the addresses it gives, on the rule's port, for the answer's TTL (at
//!   least [`MIN_TTL`]), so names whose addresses rotate keep working;
//! - `AAAA` and other types get an empty answer: the guest is IPv4 only.
//!
//! With an open network (`network: true`) every name is forwarded and
//! every public address is open; the rules still open what the operator
//! named (a private address, the host).
//!
//! **Connections** are TCP or UDP flows: a flow whose first packet passed
//! keeps passing while it is used, after its answer's TTL ran out (a long
//! download outlives a CDN's 60 s TTL); an idle one is forgotten after
//! [`FLOW_IDLE`]. An address no answer gave, hard-coded in the job, is
//! dropped unless an entry names it.
//!
//! **What the guest touched** is kept as it goes ([`EgressReport`]):
//! every destination it sent TCP or UDP to, allowed or not, with the name
//! it resolved to it, bytes each way and when; and the names it was
//! refused. That is the audit record, and `allow`'s raw material.
//!
//! Everything here is bounded: pending queries, learned addresses, flows
//! and the record each have a cap, past which the oldest or expired go
//! first, or the rest is only counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::addresses::is_public;
use super::dns;
use super::filter::{classify, Dropped, Packet, Transport, Verdict, ETH_HEADER, PROTO_UDP};

/// A TTL shorter than this is taken as this: the answer must still open
/// the connection the guest asked it for.
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// And a longer one as this, so that a stale answer cannot hold an
/// address open for a day.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// A flow not used for this long is forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(300);
/// How long a query waits for the resolver.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PENDING: usize = 256;
const MAX_LEARNED: usize = 4096;
const MAX_FLOWS: usize = 8192;
const DNS_PORT: u16 = 53;
/// Largest answer that fits the guest's MTU in one UDP datagram.
const MAX_ANSWER: usize = 1500 - 20 - 8;
/// Most destinations and refused names a report lists; the rest are
/// counted.
pub const MAX_REPORTED: usize = 256;
/// Most addresses whose names are remembered for the report.
const MAX_NAMED: usize = 4096;
/// Most names remembered for one address.
pub const MAX_NAMES_PER_ADDRESS: usize = 8;

/// What a NIC's guest touched, as the egress policy saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressReport {
    /// Every destination the guest sent TCP or UDP to, allowed or not, in
    /// the order first seen (DNS to the forwarder is not one).
    pub destinations: Vec<Touched>,
    /// Destinations past the first [`MAX_REPORTED`]: counted only.
    pub more_destinations: u64,
    /// Names the guest was refused (NXDOMAIN), in the order first asked.
    pub refused_names: Vec<String>,
    pub more_refused_names: u64,
    /// Bytes of the frames that went out, and of those that came in.
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// One destination: protocol, address and port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Touched {
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// The names whose answers gave the guest this address (several names
    /// may share one, as on a CDN), at most [`MAX_NAMES_PER_ADDRESS`].
    pub names: Vec<String>,
    /// Whether the policy let its first packet through.
    pub allowed: bool,
    /// Frame bytes each way.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Milliseconds from the NIC's first frame to its first and last.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// One `allow` entry by name: `crates.io:443`, or `*.example.org:443` for
/// every name under `example.org` (not the name itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    /// Lower case, no final dot.
    pub pattern: String,
    pub port: u16,
    /// The operator named it: its answers may open the host's loopback
    /// (as the gateway) and private addresses; otherwise only public ones.
    pub named_by_operator: bool,
}

impl NameRule {
    pub fn covers(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => name == self.pattern,
        }
    }
}

/// What a NIC may reach, as the runner resolved the job's `network` under
/// the grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Any public address, and every name (`network: true`).
    pub public: bool,
    /// Destinations by address (`allow: ["10.0.0.5:5432"]`; the host's
    /// loopback written as the gateway).
    pub addresses: Vec<SocketAddrV4>,
    pub names: Vec<NameRule>,
    /// The forwarder's address in the guest's network.
    pub dns: Ipv4Addr,
    /// The guest's gateway: an answer of the host's loopback for a name
    /// the operator named is given to the guest as this.
    pub gateway: Ipv4Addr,
    /// Whether there is a resolver to forward to; without one (a host with
    /// no name server) every query the policy would forward fails
    /// (SERVFAIL) at once, rather than after the guest's timeouts.
    pub resolver: bool,
}

/// A query sent to the resolver, waiting for its answer.
struct Pending {
    guest_id: u16,
    name: String,
    qtype: u16,
    /// The query frame's Ethernet, IP and UDP addressing, to answer with.
    to_guest: Addressing,
    sent: Instant,
}

#[derive(Clone, Copy)]
struct Addressing {
    guest_mac: [u8; 6],
    our_mac: [u8; 6],
    guest: SocketAddrV4,
    us: SocketAddrV4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Flow {
    protocol: &'static str,
    from_port: u16,
    to: SocketAddrV4,
}

pub struct Egress {
    rules: Rules,
    /// Addresses and ports answers opened, until when.
    learned: HashMap<SocketAddrV4, Instant>,
    flows: HashMap<Flow, Instant>,
    pending: HashMap<u16, Pending>,
    next_id: u16,
    /// Answers left out, said once each (`name -> address`).
    left_out: Vec<(String, Ipv4Addr)>,
    report: EgressReport,
    /// Where each destination is in the report.
    touched: HashMap<(&'static str, SocketAddrV4), usize>,
    /// The names each answered address was given for.
    names: HashMap<Ipv4Addr, Vec<String>>,
    /// The NIC's first frame: the report's times count from it.
    epoch: Option<Instant>,
}

impl Egress {
    pub fn new(rules: Rules) -> Egress {
        Egress {
            rules,
            learned: HashMap::new(),
            flows: HashMap::new(),
            pending: HashMap::new(),
            // Not zero, so that ids do not start where the guest's might.
            next_id: 0x5a5a,
            left_out: Vec::new(),
            report: EgressReport::default(),
            touched: HashMap::new(),
            names: HashMap::new(),
            epoch: None,
        }
    }

    /// What the guest touched so far.
    pub fn report(&self) -> &EgressReport {
        &self.report
    }

    /// A frame passt sent the guest: counted, and its bytes added to the
    /// destination it comes from.
    pub fn inbound(&mut self, frame: &[u8], now: Instant) {
        self.report.bytes_in += frame.len() as u64;
        if let Ok(Packet::Transport(t)) = classify(frame) {
            let ms = self.ms(now);
            if let Some(&at) = self.touched.get(&(t.protocol, t.from)) {
                let entry = &mut self.report.destinations[at];
                entry.bytes_in += frame.len() as u64;
                entry.last_ms = ms;
            }
        }
    }

    fn ms(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    /// Records a TCP or UDP frame to `to` (`bytes` long) and whether it
    /// passed.
    fn touch(
        &mut self,
        protocol: &'static str,
        to: SocketAddrV4,
        allowed: bool,
        bytes: usize,
        now: Instant,
    ) {
        let ms = self.ms(now);
        if allowed {
            self.report.bytes_out += bytes as u64;
        }
        let at = match self.touched.get(&(protocol, to)) {
            Some(&at) => at,
            None if self.report.destinations.len() < MAX_REPORTED => {
                self.report.destinations.push(Touched {
                    protocol: protocol.to_string(),
                    address: *to.ip(),
                    port: to.port(),
                    names: self.names.get(to.ip()).cloned().unwrap_or_default(),
                    allowed,
                    bytes_out: 0,
                    bytes_in: 0,
                    first_ms: ms,
                    last_ms: ms,
                });
                let at = self.report.destinations.len() - 1;
                self.touched.insert((protocol, to), at);
                at
            }
            None => {
                self.report.more_destinations += 1;
                // Counted once (while the map is not huge): later frames
                // find it here and add nothing.
                if self.touched.len() < 16 * MAX_REPORTED {
                    self.touched.insert((protocol, to), usize::MAX);
                }
                return;
            }
        };
        if let Some(entry) = self.report.destinations.get_mut(at) {
            entry.allowed |= allowed;
            if allowed {
                entry.bytes_out += bytes as u64;
            }
            entry.last_ms = ms;
        }
    }

    fn refuse_name(&mut self, name: &str) {
        let report = &mut self.report;
        if report.refused_names.iter().any(|n| n == name) {
            return;
        }
        if report.refused_names.len() < MAX_REPORTED {
            report.refused_names.push(name.to_string());
        } else {
            report.more_refused_names += 1;
        }
    }

    /// The verdict on a frame the guest sent, at `now`.
    pub fn outbound(&mut self, frame: &[u8], now: Instant) -> Verdict {
        let transport = match classify(frame) {
            Ok(Packet::Arp | Packet::Dhcp) => return Verdict::Pass,
            Ok(Packet::Transport(t)) => t,
            Err(why) => return Verdict::Drop(Dropped::Other(why)),
        };
        if *transport.to.ip() == self.rules.dns && transport.to.port() == DNS_PORT {
            return match transport.protocol {
                "UDP" => self.query(frame, &transport, now),
                // An open network lets every name through anyway: a retry
                // over TCP (after a truncated answer) goes to passt's
                // forwarder, unread.
                _ if self.rules.public => Verdict::Pass,
                _ => Verdict::Drop(Dropped::Other(
                    "DNS over TCP (with an `allow` list the forwarder answers UDP only; an answer too big for it fails)",
                )),
            };
        }
        let flow = Flow {
            protocol: transport.protocol,
            from_port: transport.from.port(),
            to: transport.to,
        };
        if let Some(seen) = self.flows.get_mut(&flow) {
            *seen = now;
            self.touch(flow.protocol, flow.to, true, frame.len(), now);
            return Verdict::Pass;
        }
        if !self.opens(transport.to, now) {
            self.touch(flow.protocol, flow.to, false, frame.len(), now);
            return Verdict::Drop(Dropped::NotAllowed {
                protocol: transport.protocol,
                to: SocketAddr::V4(transport.to),
            });
        }
        self.touch(flow.protocol, flow.to, true, frame.len(), now);
        if self.flows.len() >= MAX_FLOWS {
            self.flows
                .retain(|_, seen| now.duration_since(*seen) < FLOW_IDLE);
        }
        // Still full: this packet passes, and the flow lives on its answer.
        if self.flows.len() < MAX_FLOWS {
            self.flows.insert(flow, now);
        }
        Verdict::Pass
    }

    fn opens(&self, to: SocketAddrV4, now: Instant) -> bool {
        self.rules.addresses.contains(&to)
            || (self.rules.public && is_public(IpAddr::V4(*to.ip())))
            || self.learned.get(&to).is_some_and(|until| *until > now)
    }

    /// A DNS query from the guest: answered here, or forwarded.
    fn query(&mut self, frame: &[u8], transport: &Transport, now: Instant) -> Verdict {
        let msg = transport.payload;
        let query = match dns::parse_query(msg) {
            Ok(query) => query,
            Err(why) => return Verdict::Drop(Dropped::Other(why)),
        };
        let addressing = Addressing {
            guest_mac: frame[6..12]
                .try_into()
                .expect("a classified frame has a header"),
            our_mac: frame[0..6]
                .try_into()
                .expect("a classified frame has a header"),
            guest: transport.from,
            us: transport.to,
        };
        let covered = self.rules.names.iter().any(|r| r.covers(&query.name));
        if !covered && !self.rules.public {
            self.refuse_name(&query.name);
            let answer = dns::reply(msg, &query, dns::RCODE_NXDOMAIN);
            return Verdict::Answer {
                frame: udp_frame(&addressing, &answer),
                refused: Some(Dropped::Name(query.name)),
            };
        }
        // The guest is IPv4 only: an IPv6 address would be a detour to a
        // timeout. Other types of a name `allow` lists are nobody's need.
        if query.qtype != dns::TYPE_A && !self.rules.public {
            let answer = dns::reply(msg, &query, dns::RCODE_NOERROR);
            return Verdict::Answer {
                frame: udp_frame(&addressing, &answer),
                refused: None,
            };
        }
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < QUERY_TIMEOUT);
        let unanswerable = if !self.rules.resolver {
            Some("a DNS query, with no name server on the host to ask")
        } else if self.pending.len() >= MAX_PENDING {
            Some("a DNS query while 256 others wait")
        } else {
            None
        };
        if let Some(why) = unanswerable {
            let answer = dns::reply(msg, &query, dns::RCODE_SERVFAIL);
            return Verdict::Answer {
                frame: udp_frame(&addressing, &answer),
                refused: Some(Dropped::Other(why)),
            };
        }
        let id = self.fresh_id();
        self.pending.insert(
            id,
            Pending {
                guest_id: query.id,
                name: query.name,
                qtype: query.qtype,
                to_guest: addressing,
                sent: now,
            },
        );
        Verdict::Resolve(dns::with_id(msg, id))
    }

    fn fresh_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(0x9e37);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// A datagram from the resolver: the frame that answers the guest's
    /// query, with the addresses it gives opened, or `None` for anything
    /// that answers no query of ours (late, spoofed, malformed).
    pub fn from_resolver(&mut self, msg: &[u8], now: Instant) -> Option<Vec<u8>> {
        let response = dns::parse_response(msg).ok()?;
        let pending = self.pending.get(&response.id)?;
        if pending.name != response.name || pending.qtype != response.qtype {
            return None;
        }
        let pending = self.pending.remove(&response.id)?;
        let mut answer = dns::with_id(msg, pending.guest_id);
        let rules: Vec<NameRule> = (self.rules.names.iter())
            .filter(|r| r.covers(&pending.name))
            .cloned()
            .collect();
        for record in &response.a_records {
            self.name(record.address, &pending.name);
            let ttl = Duration::from_secs(record.ttl.into()).clamp(MIN_TTL, MAX_TTL);
            for rule in &rules {
                let opened = if record.address.is_loopback() && rule.named_by_operator {
                    answer[record.offset..record.offset + 4]
                        .copy_from_slice(&self.rules.gateway.octets());
                    self.name(self.rules.gateway, &pending.name);
                    self.rules.gateway
                } else if rule.named_by_operator || is_public(IpAddr::V4(record.address)) {
                    record.address
                } else {
                    self.leave_out(&pending.name, record.address);
                    continue;
                };
                self.learn(SocketAddrV4::new(opened, rule.port), now + ttl);
            }
        }
        if answer.len() > MAX_ANSWER {
            // Cut to the question, marked truncated: the guest's resolver
            // knows what that means (and its retry over TCP is refused).
            answer.truncate(response.question_end);
            answer[2] |= 0x02;
            answer[6..12].fill(0);
        }
        Some(udp_frame(&pending.to_guest, &answer))
    }

    /// Remembers that the guest was given `address` for `name`.
    fn name(&mut self, address: Ipv4Addr, name: &str) {
        let add = |names: &mut Vec<String>| {
            if names.len() < MAX_NAMES_PER_ADDRESS && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        if self.names.len() < MAX_NAMED || self.names.contains_key(&address) {
            add(self.names.entry(address).or_default());
        }
        // A destination seen before this answer (a retry, or another name
        // on the same address) gets the name too.
        for entry in &mut self.report.destinations {
            if entry.address == address {
                add(&mut entry.names);
            }
        }
    }

    fn learn(&mut self, to: SocketAddrV4, until: Instant) {
        if self.learned.len() >= MAX_LEARNED && !self.learned.contains_key(&to) {
            // The one that runs out first goes.
            if let Some(first) = self
                .learned
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| *a)
            {
                self.learned.remove(&first);
            }
        }
        let entry = self.learned.entry(to).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn leave_out(&mut self, name: &str, address: Ipv4Addr) {
        let key = (name.to_string(), address);
        if self.left_out.len() < 64 && !self.left_out.contains(&key) {
            tracing::warn!(
                "`allow` entry for `{name}`: its answer {address} is a host, private or \
                 link-local address the operator did not name: left out"
            );
            self.left_out.push(key);
        }
    }
}

/// An Ethernet frame with `payload` in a UDP datagram from the forwarder
/// back to the guest, checksums computed.
fn udp_frame(to: &Addressing, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(ETH_HEADER + total);
    f.extend(to.guest_mac);
    f.extend(to.our_mac);
    f.extend(0x0800u16.to_be_bytes());
    let ip_at = f.len();
    f.extend([0x45, 0]);
    f.extend((total as u16).to_be_bytes());
    // Id 0, don't fragment, TTL 64, UDP, checksum below.
    f.extend([0, 0, 0x40, 0, 64, PROTO_UDP, 0, 0]);
    f.extend(to.us.ip().octets());
    f.extend(to.guest.ip().octets());
    let sum = checksum(&[&f[ip_at..ip_at + 20]]);
    f[ip_at + 10..ip_at + 12].copy_from_slice(&sum.to_be_bytes());
    let udp_at = f.len();
    f.extend(to.us.port().to_be_bytes());
    f.extend(to.guest.port().to_be_bytes());
    f.extend((udp_len as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend(to.us.ip().octets());
    pseudo.extend(to.guest.ip().octets());
    pseudo.extend([0, PROTO_UDP]);
    pseudo.extend((udp_len as u16).to_be_bytes());
    let sum = match checksum(&[&pseudo, &f[udp_at..]]) {
        0 => 0xffff,
        sum => sum,
    };
    f[udp_at + 6..udp_at + 8].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum (RFC 1071) of the parts, one after the other
/// (each but the last of even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
