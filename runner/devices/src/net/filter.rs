//! Reads a frame the guest sent, as far as the egress policy
//! ([`super::egress`]) needs: which kind it is, and for TCP and UDP its
//! addresses, ports and payload, exactly as passt will read them.
//!
//! Only guest → host frames are read. passt is a NAT-like user-mode stack:
//! it forwards no host ports to the guest (`-t none -u none`), so every
//! frame it sends belongs to a flow the guest opened, and a flow the guest
//! cannot open (its TCP SYN or first UDP datagram is dropped) never gets
//! an answer. What can pass at all:
//!
//! - ARP (the guest must find the gateway's MAC);
//! - DHCP requests, broadcast to the server port (passt answers them);
//! - IPv4 TCP and UDP, with their whole header in the datagram.
//!
//! Everything else is dropped: ICMP, IPv4 fragments (they would carry no
//! port to check), IPv6 (the guest has no IPv6 route: it is refused, never
//! open by accident), VLAN tags and other ethertypes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::addresses::is_public;

pub(super) const ETH_HEADER: usize = 14;
pub(super) const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(super) const PROTO_TCP: u8 = 6;
pub(super) const PROTO_UDP: u8 = 17;
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;

/// A frame the guest sent, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Arp,
    Dhcp,
    /// IPv4 TCP or UDP.
    Transport(Transport<'a>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport<'a> {
    /// `"TCP"` or `"UDP"`.
    pub protocol: &'static str,
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// The TCP or UDP payload (after the fixed header; for TCP, its
    /// options too).
    pub payload: &'a [u8],
}

/// What to do with one frame the guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to passt.
    Pass,
    Drop(Dropped),
    /// Answered here: `frame` goes back to the guest instead; `refused`
    /// says why, when the answer is a refusal (NXDOMAIN for a name `allow`
    /// does not list).
    Answer {
        frame: Vec<u8>,
        refused: Option<Dropped>,
    },
    /// A DNS query to forward to the resolver: this payload, which comes
    /// back through [`super::egress::Egress::from_resolver`].
    Resolve(Vec<u8>),
}

/// Why a frame was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// TCP or UDP to a destination the policy does not open.
    NotAllowed {
        protocol: &'static str,
        to: SocketAddr,
    },
    /// A DNS query for a name `allow` does not list: answered NXDOMAIN,
    /// never forwarded.
    Name(String),
    /// Anything else the policy does not let through.
    Other(&'static str),
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Dropped::NotAllowed { protocol, to } if is_public(to.ip()) => write!(
                f,
                "{protocol} to {to}, which no `allow` entry or answer for one opened"
            ),
            Dropped::NotAllowed { protocol, to } => write!(
                f,
                "{protocol} to {to}, a host, private or link-local address the operator did not name"
            ),
            Dropped::Name(name) => write!(
                f,
                "the DNS query for `{name}`, which `allow` does not list (answered NXDOMAIN, not forwarded)"
            ),
            Dropped::Other(what) => f.write_str(what),
        }
    }
}

/// Reads a frame; the error says why it cannot pass whatever the policy.
pub fn classify(frame: &[u8]) -> Result<Packet<'_>, &'static str> {
    let Some(ethertype) = frame.get(12..ETH_HEADER).map(be16) else {
        return Err("a runt frame");
    };
    let payload = &frame[ETH_HEADER..];
    match ethertype {
        ETHERTYPE_ARP => Ok(Packet::Arp),
        ETHERTYPE_IPV4 => ipv4(payload),
        ETHERTYPE_IPV6 => Err("an IPv6 packet (the guest's network is IPv4 only)"),
        _ => Err("a frame that is neither IPv4 nor ARP"),
    }
}

fn ipv4(packet: &[u8]) -> Result<Packet<'_>, &'static str> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Err("a malformed IPv4 header");
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    // The datagram ends where its total length says (what follows is
    // Ethernet padding), and a datagram cut short is no datagram: the
    // ports checked must be the ones passt reads.
    let total_len = usize::from(be16(&packet[2..4]));
    if header_len < 20 || total_len < header_len || packet.len() < total_len {
        return Err("a malformed IPv4 header");
    }
    let flags_fragment = be16(&packet[6..8]);
    let more_fragments = flags_fragment & 0x2000 != 0;
    let offset = flags_fragment & 0x1fff;
    if more_fragments || offset != 0 {
        return Err("an IPv4 fragment");
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let segment = &packet[header_len..total_len];
    // The whole fixed header, not only the ports: what is cut short is no
    // TCP or UDP.
    let (protocol, fixed) = match packet[9] {
        PROTO_TCP => ("TCP", 20),
        PROTO_UDP => ("UDP", 8),
        _ => return Err("a packet that is neither TCP nor UDP"),
    };
    if segment.len() < fixed {
        return Err("a truncated TCP or UDP header");
    }
    let (src_port, dst_port) = (be16(&segment[0..2]), be16(&segment[2..4]));
    let payload_at = if protocol == "TCP" {
        (usize::from(segment[12] >> 4) * 4).clamp(fixed, segment.len())
    } else {
        fixed
    };
    if protocol == "UDP"
        && dst == Ipv4Addr::BROADCAST
        && src_port == DHCP_CLIENT_PORT
        && dst_port == DHCP_SERVER_PORT
    {
        return Ok(Packet::Dhcp);
    }
    Ok(Packet::Transport(Transport {
        protocol,
        from: SocketAddrV4::new(src, src_port),
        to: SocketAddrV4::new(dst, dst_port),
        payload: &segment[payload_at..],
    }))
}

/// Most destinations and names [`DropNotes`] remembers; later ones are
/// not reported.
const MAX_NOTED: usize = 64;

/// Decides which drops are worth a warning: the first attempt to reach
/// each destination or name `allow` does not list (a job's connection
/// retries would otherwise repeat it), bounded; everything else (the
/// guest's own IPv6 and ICMP chatter) only at debug level.
#[derive(Debug, Default)]
pub struct DropNotes {
    noted: Vec<Dropped>,
}

impl DropNotes {
    /// Logs `why` once per destination or name, as a warning naming `vm`.
    pub fn note(&mut self, vm: &str, why: &Dropped) {
        match why {
            Dropped::NotAllowed { .. } | Dropped::Name(_) if !self.noted.contains(why) => {
                if self.noted.len() < MAX_NOTED {
                    self.noted.push(why.clone());
                    tracing::warn!("network policy of `{vm}`: dropped {why}");
                } else {
                    tracing::debug!("network policy of `{vm}`: dropped {why}");
                }
            }
            _ => tracing::debug!("network policy of `{vm}`: dropped {why}"),
        }
    }
}

pub(super) fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn drop_notes_remember_a_bounded_number_of_destinations_and_names() {
        let mut notes = DropNotes::default();
        for port in 1..=200u16 {
            let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)), port);
            let why = Dropped::NotAllowed {
                protocol: "TCP",
                to,
            };
            notes.note("vm", &why);
            notes.note("vm", &why);
        }
        notes.note("vm", &Dropped::Name("evil.example".into()));
        notes.note("vm", &Dropped::Other("ICMP"));
        assert_eq!(notes.noted.len(), MAX_NOTED);
    }
}
