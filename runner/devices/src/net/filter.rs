//! The policy of a job's network, applied to the Ethernet frames the guest
//! sends: an `allow` list, or (`network: true`) any public address; the
//! host's loopback, private and link-local addresses only where the
//! operator named them (see `addresses`).
//!
//! Only guest → host frames are filtered. passt is a NAT-like user-mode
//! stack: it forwards no host ports to the guest (`-t none -u none`), so
//! every frame it sends belongs to a flow the guest opened, and a flow the
//! guest cannot open (its TCP SYN or first UDP datagram is dropped here)
//! never gets an answer. What passes:
//!
//! - ARP (the guest must find the gateway's MAC);
//! - DHCP requests, broadcast to the server port (passt answers them);
//! - DNS (TCP or UDP port 53) to passt's forwarder address only;
//! - TCP and UDP to an allowed `(address, port)`, and, with `public`, to
//!   any public address.
//!
//! Everything else is dropped: ICMP, IPv4 fragments (they would carry no
//! port to check), IPv6 extension headers, VLAN tags and other ethertypes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::addresses::is_public;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;
const DNS_PORT: u16 = 53;

/// Which destinations a guest may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Any public address (`network: true`, granted `--allow-network`).
    pub public: bool,
    /// Resolved `allow` entries, and destinations the operator named.
    pub allowed: Vec<SocketAddr>,
    /// The DNS forwarder's address in the guest's network.
    pub dns: Ipv4Addr,
}

/// What to do with one frame, and why (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(Dropped),
}

/// Why a frame was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// TCP or UDP to a destination the policy does not open.
    NotAllowed {
        protocol: &'static str,
        to: SocketAddr,
    },
    /// Anything else the policy does not let through.
    Other(&'static str),
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Dropped::NotAllowed { protocol, to } if is_public(to.ip()) => {
                write!(f, "{protocol} to {to}, which `allow` does not list")
            }
            Dropped::NotAllowed { protocol, to } => write!(
                f,
                "{protocol} to {to}, a host, private or link-local address the operator did not name"
            ),
            Dropped::Other(what) => f.write_str(what),
        }
    }
}

impl Policy {
    /// The verdict on a frame the guest sent.
    pub fn outbound(&self, frame: &[u8]) -> Verdict {
        let Some(ethertype) = frame.get(12..ETH_HEADER).map(be16) else {
            return drop("a runt frame");
        };
        let payload = &frame[ETH_HEADER..];
        match ethertype {
            ETHERTYPE_ARP => Verdict::Pass,
            ETHERTYPE_IPV4 => self.ipv4(payload),
            ETHERTYPE_IPV6 => self.ipv6(payload),
            _ => drop("a frame that is neither IPv4, IPv6 nor ARP"),
        }
    }

    fn ipv4(&self, packet: &[u8]) -> Verdict {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return drop("a malformed IPv4 header");
        }
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        // The datagram ends where its total length says (what follows is
        // Ethernet padding), and a datagram cut short is no datagram: the
        // ports checked must be the ones passt reads.
        let total_len = usize::from(be16(&packet[2..4]));
        if header_len < 20 || total_len < header_len || packet.len() < total_len {
            return drop("a malformed IPv4 header");
        }
        let flags_fragment = be16(&packet[6..8]);
        let more_fragments = flags_fragment & 0x2000 != 0;
        let offset = flags_fragment & 0x1fff;
        if more_fragments || offset != 0 {
            return drop("an IPv4 fragment");
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        self.transport(packet[9], IpAddr::V4(dst), &packet[header_len..total_len])
    }

    fn ipv6(&self, packet: &[u8]) -> Verdict {
        if packet.len() < 40 || packet[0] >> 4 != 6 {
            return drop("a malformed IPv6 header");
        }
        // As for IPv4: the payload is what the header says it is.
        let Some(payload) = packet[40..].get(..usize::from(be16(&packet[4..6]))) else {
            return drop("a truncated IPv6 packet");
        };
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&packet[24..40]);
        // Only TCP or UDP right after the fixed header: extension headers
        // could hide the ports, and nothing here needs them.
        self.transport(packet[6], IpAddr::V6(Ipv6Addr::from(dst)), payload)
    }

    fn transport(&self, protocol: u8, dst: IpAddr, segment: &[u8]) -> Verdict {
        // The whole fixed header, not only the ports: what is cut short is
        // no TCP or UDP.
        let (protocol, header_len) = match protocol {
            PROTO_TCP => ("TCP", 20),
            PROTO_UDP => ("UDP", 8),
            _ => return drop("a packet that is neither TCP nor UDP"),
        };
        if segment.len() < header_len {
            return drop("a truncated TCP or UDP header");
        }
        let (src_port, dst_port) = (be16(&segment[0..2]), be16(&segment[2..4]));
        // DHCP is IPv4's (passt answers it); over IPv6 these ports lead to
        // a destination like any other (DHCPv6 uses 546 and 547).
        let dhcp = dst == IpAddr::V4(Ipv4Addr::BROADCAST)
            && src_port == DHCP_CLIENT_PORT
            && dst_port == DHCP_SERVER_PORT;
        if protocol == "UDP" && dhcp {
            return Verdict::Pass;
        }
        if dst == IpAddr::V4(self.dns) && dst_port == DNS_PORT {
            return Verdict::Pass;
        }
        let to = SocketAddr::new(dst, dst_port);
        if self.allowed.contains(&to) || (self.public && is_public(dst)) {
            Verdict::Pass
        } else {
            Verdict::Drop(Dropped::NotAllowed { protocol, to })
        }
    }
}

/// Most destinations [`DropNotes`] remembers; later ones are not reported.
const MAX_NOTED: usize = 64;

/// Decides which drops are worth a warning: the first attempt to reach
/// each destination `allow` does not list (a job's connection retries
/// would otherwise repeat it), bounded; everything else (the guest's own
/// IPv6 and ICMP chatter) only at debug level.
#[derive(Debug, Default)]
pub struct DropNotes {
    noted: Vec<SocketAddr>,
}

impl DropNotes {
    /// Logs `why` once per destination, as a warning naming `vm`.
    pub fn note(&mut self, vm: &str, why: &Dropped) {
        match why {
            Dropped::NotAllowed { to, .. } if !self.noted.contains(to) => {
                if self.noted.len() < MAX_NOTED {
                    self.noted.push(*to);
                    tracing::warn!("network policy of `{vm}`: dropped {why}");
                } else {
                    tracing::debug!("network policy of `{vm}`: dropped {why}");
                }
            }
            _ => tracing::debug!("network policy of `{vm}`: dropped {why}"),
        }
    }
}

fn drop(what: &'static str) -> Verdict {
    Verdict::Drop(Dropped::Other(what))
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

    fn policy() -> Policy {
        Policy {
            public: false,
            allowed: vec![
                "10.0.2.2:8080".parse().unwrap(),
                "[2001:db8::1]:443".parse().unwrap(),
            ],
            dns: DNS,
        }
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend([0x52, 0x54, 0, 0, 0, 1]);
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    fn ipv4(protocol: u8, dst: [u8; 4], src_port: u16, dst_port: u16, fragment: u16) -> Vec<u8> {
        let mut packet = vec![0x45, 0, 0, 40, 0, 0];
        packet.extend(fragment.to_be_bytes());
        packet.extend([64, protocol, 0, 0, 10, 0, 2, 15]);
        packet.extend(dst);
        packet.extend(src_port.to_be_bytes());
        packet.extend(dst_port.to_be_bytes());
        packet.extend([0; 16]);
        ethernet(ETHERTYPE_IPV4, &packet)
    }

    fn ipv6(next: u8, dst: Ipv6Addr, dst_port: u16) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0, 0, 20, next, 64];
        packet.extend([0; 16]);
        packet.extend(dst.octets());
        packet.extend(40000u16.to_be_bytes());
        packet.extend(dst_port.to_be_bytes());
        packet.extend([0; 16]);
        ethernet(ETHERTYPE_IPV6, &packet)
    }

    #[test]
    fn allowed_destinations_pass_and_others_are_dropped() {
        let p = policy();
        assert_eq!(
            p.outbound(&ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0)),
            Verdict::Pass
        );
        assert_eq!(
            p.outbound(&ipv4(PROTO_UDP, [10, 0, 2, 2], 40000, 8080, 0)),
            Verdict::Pass
        );
        assert_eq!(
            p.outbound(&ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8081, 0)),
            Verdict::Drop(Dropped::NotAllowed {
                protocol: "TCP",
                to: "10.0.2.2:8081".parse().unwrap()
            })
        );
        assert!(matches!(
            p.outbound(&ipv4(PROTO_TCP, [1, 1, 1, 1], 40000, 8080, 0)),
            Verdict::Drop(Dropped::NotAllowed { .. })
        ));
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(p.outbound(&ipv6(PROTO_TCP, v6, 443)), Verdict::Pass);
        assert!(matches!(
            p.outbound(&ipv6(PROTO_TCP, v6, 80)),
            Verdict::Drop(_)
        ));
        // A hop-by-hop header hides the ports: dropped.
        assert!(matches!(p.outbound(&ipv6(0, v6, 443)), Verdict::Drop(_)));
    }

    #[test]
    fn an_open_network_reaches_public_addresses_and_no_host_or_private_one() {
        let p = Policy {
            public: true,
            allowed: vec!["10.0.2.2:5432".parse().unwrap()],
            dns: DNS,
        };
        for open in [[1, 1, 1, 1], [151, 101, 1, 137]] {
            assert_eq!(
                p.outbound(&ipv4(PROTO_TCP, open, 40000, 443, 0)),
                Verdict::Pass
            );
        }
        // The gateway is the host's loopback: only the port the operator named.
        assert_eq!(
            p.outbound(&ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 5432, 0)),
            Verdict::Pass
        );
        for closed in [
            [10, 0, 2, 2],        // the host, another port
            [169, 254, 169, 254], // cloud metadata
            [192, 168, 1, 1],
            [172, 17, 0, 1], // a Docker bridge
            [127, 0, 0, 1],
        ] {
            let verdict = p.outbound(&ipv4(PROTO_TCP, closed, 40000, 80, 0));
            let Verdict::Drop(why) = verdict else {
                panic!("{closed:?} passed");
            };
            assert!(
                why.to_string().contains("the operator did not name"),
                "{why}"
            );
        }
    }

    #[test]
    fn dhcp_is_broadcast_only() {
        let p = policy();
        assert!(matches!(
            p.outbound(&ipv4(PROTO_UDP, [1, 2, 3, 4], 68, 67, 0)),
            Verdict::Drop(Dropped::NotAllowed { .. })
        ));
    }

    #[test]
    fn arp_dhcp_and_dns_to_the_forwarder_pass() {
        let p = policy();
        assert_eq!(
            p.outbound(&ethernet(ETHERTYPE_ARP, &[0; 28])),
            Verdict::Pass
        );
        assert_eq!(
            p.outbound(&ipv4(PROTO_UDP, [255, 255, 255, 255], 68, 67, 0)),
            Verdict::Pass
        );
        assert_eq!(
            p.outbound(&ipv4(PROTO_UDP, DNS.octets(), 5000, 53, 0)),
            Verdict::Pass
        );
        assert_eq!(
            p.outbound(&ipv4(PROTO_TCP, DNS.octets(), 5000, 53, 0)),
            Verdict::Pass
        );
        // DNS to anyone else is a destination like any other.
        assert!(matches!(
            p.outbound(&ipv4(PROTO_UDP, [8, 8, 8, 8], 5000, 53, 0)),
            Verdict::Drop(Dropped::NotAllowed { .. })
        ));
    }

    /// Whatever the guest sends, the verdict is reached without a panic:
    /// every length from empty to past the headers, over random bytes and
    /// over real headers cut short.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let p = policy();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        let templates = [
            ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0),
            ipv6(PROTO_UDP, "2001:db8::1".parse().unwrap(), 443),
        ];
        for len in 0..120 {
            for _ in 0..50 {
                let mut frame: Vec<u8> = (0..len).map(|_| next()).collect();
                if len > 13 && next() % 2 == 0 {
                    frame[12..14].copy_from_slice(&[0x08, 0x00]);
                    frame[14.min(len - 1)] = 0x40 | (next() & 0x0f);
                }
                let _ = p.outbound(&frame);
            }
            for template in &templates {
                let _ = p.outbound(&template[..len.min(template.len())]);
            }
        }
    }

    /// Found by the `net_filter` fuzz target: the ports were read past
    /// the end of the IP datagram (from Ethernet padding), and a datagram
    /// longer than its frame passed.
    #[test]
    fn ports_outside_the_datagram_or_a_cut_datagram_are_dropped() {
        let p = policy();
        let ip = ETH_HEADER;
        // The total length ends the datagram at its IP header: the allowed
        // port after it is padding.
        let mut padded = ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0);
        padded[ip + 2..ip + 4].copy_from_slice(&20u16.to_be_bytes());
        assert!(matches!(p.outbound(&padded), Verdict::Drop(_)));
        // The total length promises more than the frame holds.
        let mut cut = ipv4(PROTO_UDP, [255; 4], 68, 67, 0);
        cut[ip + 2..ip + 4].copy_from_slice(&268u16.to_be_bytes());
        assert!(matches!(p.outbound(&cut), Verdict::Drop(_)));
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut padded6 = ipv6(PROTO_TCP, v6, 443);
        padded6[ip + 4..ip + 6].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(p.outbound(&padded6), Verdict::Drop(_)));
        let mut cut6 = ipv6(PROTO_TCP, v6, 443);
        cut6[ip + 4..ip + 6].copy_from_slice(&200u16.to_be_bytes());
        assert!(matches!(p.outbound(&cut6), Verdict::Drop(_)));
        // Ethernet padding after a whole datagram is no reason to drop it.
        let mut with_padding = ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0);
        with_padding.extend([0; 6]);
        assert_eq!(p.outbound(&with_padding), Verdict::Pass);
    }

    /// Found while writing the `net_filter` fuzz target's check (the
    /// fuzzer did not reach it in 10 minutes): the DHCP ports passed over
    /// IPv6 too, to any address, and passt forwards those.
    #[test]
    fn dhcp_ports_over_ipv6_are_a_destination_like_any_other() {
        let p = policy();
        let mut frame = ipv6(PROTO_UDP, "2001:db8::99".parse().unwrap(), 67);
        let udp = ETH_HEADER + 40;
        frame[udp..udp + 2].copy_from_slice(&DHCP_CLIENT_PORT.to_be_bytes());
        assert_eq!(
            p.outbound(&frame),
            Verdict::Drop(Dropped::NotAllowed {
                protocol: "UDP",
                to: "[2001:db8::99]:67".parse().unwrap()
            })
        );
    }

    /// Found by the `net_filter` fuzz target: a TCP header cut to its
    /// ports passed.
    #[test]
    fn a_transport_header_cut_short_is_dropped() {
        let p = policy();
        let whole = ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0);
        assert_eq!(p.outbound(&whole), Verdict::Pass);
        // 16 of the TCP header's 20 bytes, the total length to match.
        let mut cut = whole[..whole.len() - 4].to_vec();
        cut[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&36u16.to_be_bytes());
        assert!(matches!(p.outbound(&cut), Verdict::Drop(_)));
        // UDP's header is 8 bytes: 7 are not enough.
        let mut udp = ipv4(PROTO_UDP, [10, 0, 2, 2], 40000, 8080, 0);
        udp.truncate(ETH_HEADER + 20 + 7);
        udp[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&27u16.to_be_bytes());
        assert!(matches!(p.outbound(&udp), Verdict::Drop(_)));
        udp.push(0);
        udp[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&28u16.to_be_bytes());
        assert_eq!(p.outbound(&udp), Verdict::Pass);
    }

    #[test]
    fn drop_notes_remember_a_bounded_number_of_destinations() {
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
        notes.note("vm", &Dropped::Other("ICMP"));
        assert_eq!(notes.noted.len(), MAX_NOTED);
    }

    #[test]
    fn fragments_icmp_and_malformed_frames_are_dropped() {
        let p = policy();
        for frame in [
            ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0x2000),
            ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0x0010),
            ipv4(1, [10, 0, 2, 2], 0, 0, 0),
            ethernet(0x8100, &[0; 40]),
            ethernet(ETHERTYPE_IPV4, &[0x45, 0, 0]),
            ethernet(ETHERTYPE_IPV4, &[0x4f; 30]),
            vec![0; 10],
        ] {
            assert!(matches!(p.outbound(&frame), Verdict::Drop(_)), "{frame:?}");
        }
        // Truncated after the IP header.
        let mut short = ipv4(PROTO_TCP, [10, 0, 2, 2], 40000, 8080, 0);
        short.truncate(ETH_HEADER + 22);
        assert!(matches!(p.outbound(&short), Verdict::Drop(_)));
    }
}
