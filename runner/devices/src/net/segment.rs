//! The private network of one job and its service VMs: a switch between
//! their NICs that decides, frame by frame, where each goes.
//!
//! Every member is as hostile as any guest, so the switch trusts nothing a
//! frame says about who sent it. Each port is bound to the one member the
//! runner connected to it, with the MAC and IPv4 address the runner gave
//! that member, and:
//!
//! - a frame must carry its port's MAC as source, and an IPv4 packet its
//!   port's address: no member can pose as another;
//! - ARP is answered by the switch itself, from the runner's table, and
//!   never forwarded: nobody can poison another's cache, and a member
//!   learns no address that is not on the segment;
//! - IPv4 goes only to the member whose MAC *and* address it names:
//!   nothing is flooded, broadcast or routed through a member;
//! - frames are at most [`MAX_SEGMENT_FRAME`] bytes (the guests' MTU), and
//!   each port has a budget of frames and bytes per second;
//! - everything else (IPv6, VLAN tags, other ethertypes) is dropped.
//!
//! This module only decides; the process that moves the frames (see
//! `runner_machine`'s switch role) knows nothing of their contents.

use std::net::Ipv4Addr;
use std::time::Duration;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// An ARP packet for IPv4 over Ethernet.
const ARP_LEN: usize = 28;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// The largest frame on the segment: the guests' MTU (1500) and an
/// Ethernet header. Our NICs have no offloads, so nothing larger is valid.
pub const MAX_SEGMENT_FRAME: usize = 1500 + ETH_HEADER;

/// One member of the segment, as the runner set it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

/// What each port may send per second, and in one burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub frames_per_second: u64,
    pub bytes_per_second: u64,
    /// A burst may use this many seconds' worth at once.
    pub burst: Duration,
}

impl Default for RateLimit {
    /// Far above what a database or a cache needs under emulation, and far
    /// below what would starve the other members' ports.
    fn default() -> RateLimit {
        RateLimit {
            frames_per_second: 20_000,
            bytes_per_second: 32 << 20,
            burst: Duration::from_millis(250),
        }
    }
}

/// Where one frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switched {
    /// To the member on this port, unchanged.
    Forward(usize),
    /// Back to the sender: the switch's answer to its ARP request.
    Reply(Vec<u8>),
    /// Dropped, as any guest's chatter is (IPv6, multicast, gratuitous
    /// ARP): nobody on the segment needs it.
    Drop(&'static str),
    /// Dropped, and worth saying: a frame no honest member sends (a forged
    /// address, a flood, an oversized frame).
    Refuse(&'static str),
}

/// The switch's decisions, and each port's rate budget.
#[derive(Debug)]
pub struct Segment {
    members: Vec<Member>,
    limit: RateLimit,
    buckets: Vec<Bucket>,
}

impl Segment {
    /// A segment whose port `i` is `members[i]`.
    pub fn new(members: Vec<Member>, limit: RateLimit) -> Segment {
        let buckets = members.iter().map(|_| Bucket::full(&limit)).collect();
        Segment {
            members,
            limit,
            buckets,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Where the frame that port `from` sent at `now` (any monotonic clock,
    /// the same for every call) goes.
    pub fn switch(&mut self, from: usize, frame: &[u8], now: Duration) -> Switched {
        let Some(sender) = self.members.get(from).copied() else {
            return Switched::Refuse("a frame from no port");
        };
        if frame.len() < ETH_HEADER {
            return Switched::Refuse("a runt frame");
        }
        if frame.len() > MAX_SEGMENT_FRAME {
            return Switched::Refuse("a frame larger than the segment's MTU");
        }
        // Charged before anything else: a flood of frames that are all
        // dropped still costs the switch the work of looking at them.
        if !self.buckets[from].take(&self.limit, frame.len(), now) {
            return Switched::Refuse("a frame over its port's rate");
        }
        if frame[6..12] != sender.mac {
            return Switched::Refuse("a frame with another source MAC than its port's");
        }
        let payload = &frame[ETH_HEADER..];
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETHERTYPE_ARP => self.arp(sender, payload),
            ETHERTYPE_IPV4 => self.ipv4(sender, &frame[0..6], payload),
            _ => Switched::Drop("a frame that is neither IPv4 nor ARP"),
        }
    }

    fn arp(&self, sender: Member, arp: &[u8]) -> Switched {
        // Ethernet (1), IPv4 (0x0800), 6-byte and 4-byte addresses.
        if arp.len() < ARP_LEN || arp[0..6] != [0, 1, 8, 0, 6, 4] {
            return Switched::Drop("an ARP packet that is not IPv4 over Ethernet");
        }
        let op = u16::from_be_bytes([arp[6], arp[7]]);
        let sender_ip = ipv4_at(arp, 14);
        // A probe (RFC 5227) comes from 0.0.0.0; anything else must be the
        // port's own address.
        if arp[8..14] != sender.mac
            || (sender_ip != sender.address && sender_ip != Ipv4Addr::UNSPECIFIED)
        {
            return Switched::Refuse("an ARP packet that claims another member's addresses");
        }
        if op != ARP_REQUEST {
            // Replies and announcements: the switch answers for everyone,
            // so there is nothing anyone needs to hear.
            return Switched::Drop("an ARP reply or announcement");
        }
        let wanted = ipv4_at(arp, 24);
        let Some(target) = self
            .members
            .iter()
            .find(|m| m.address == wanted && m.address != sender.address)
        else {
            return Switched::Drop("an ARP request for an address not on the segment");
        };
        Switched::Reply(arp_reply(target, sender, sender_ip))
    }

    fn ipv4(&self, sender: Member, dst_mac: &[u8], packet: &[u8]) -> Switched {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return Switched::Refuse("a malformed IPv4 header");
        }
        if ipv4_at(packet, 12) != sender.address {
            return Switched::Refuse("an IPv4 packet with another source than its port's");
        }
        let dst = ipv4_at(packet, 16);
        match self.members.iter().position(|m| m.mac == dst_mac) {
            Some(to) if self.members[to].address == dst && self.members[to] != sender => {
                Switched::Forward(to)
            }
            Some(_) => Switched::Refuse("an IPv4 packet whose address is not its MAC's member"),
            None => Switched::Drop("an IPv4 packet for a MAC not on the segment"),
        }
    }
}

/// `target`'s answer to `asker`, who asked from `asker_ip`.
fn arp_reply(target: &Member, asker: Member, asker_ip: Ipv4Addr) -> Vec<u8> {
    let to = Member {
        address: asker_ip,
        ..asker
    };
    arp_frame(ARP_REPLY, *target, asker.mac, to)
}

/// The request a member sends for `wanted`'s MAC (broadcast), as guests
/// send it: what the switch answers.
pub fn arp_request(asker: Member, wanted: Ipv4Addr) -> Vec<u8> {
    let target = Member {
        mac: [0; 6],
        address: wanted,
    };
    arp_frame(ARP_REQUEST, asker, [0xff; 6], target)
}

/// An ARP frame for IPv4 over Ethernet from `sender` to `dst_mac`, about
/// `target`.
fn arp_frame(op: u16, sender: Member, dst_mac: [u8; 6], target: Member) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    frame.extend(dst_mac);
    frame.extend(sender.mac);
    frame.extend(ETHERTYPE_ARP.to_be_bytes());
    frame.extend([0, 1, 8, 0, 6, 4]);
    frame.extend(op.to_be_bytes());
    frame.extend(sender.mac);
    frame.extend(sender.address.octets());
    frame.extend(target.mac);
    frame.extend(target.address.octets());
    frame
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

/// A port's budget: two token buckets, frames and bytes, refilled with
/// time and capped at one burst.
#[derive(Debug)]
struct Bucket {
    frames: f64,
    bytes: f64,
    last: Duration,
}

impl Bucket {
    fn full(limit: &RateLimit) -> Bucket {
        let burst = limit.burst.as_secs_f64();
        Bucket {
            frames: limit.frames_per_second as f64 * burst,
            bytes: limit.bytes_per_second as f64 * burst,
            last: Duration::ZERO,
        }
    }

    fn take(&mut self, limit: &RateLimit, len: usize, now: Duration) -> bool {
        let burst = limit.burst.as_secs_f64();
        // A clock that went backwards refills nothing.
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        let refill = |level: f64, per_second: u64| {
            (level + elapsed * per_second as f64).min(per_second as f64 * burst)
        };
        self.frames = refill(self.frames, limit.frames_per_second);
        self.bytes = refill(self.bytes, limit.bytes_per_second);
        if self.frames < 1.0 || self.bytes < len as f64 {
            return false;
        }
        self.frames -= 1.0;
        self.bytes -= len as f64;
        true
    }
}
