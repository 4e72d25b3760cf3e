//! Host side of opt-in networking (`network:` in the pipeline).
//!
//! A VM with a NIC ([`Nic`]) gets its own passt ([`passt`]), and the
//! guest's network is the same on both backends: address
//! [`GUEST_ADDRESS`]/[`GUEST_PREFIX_LEN`], gateway [`GATEWAY`], DNS through
//! the forwarder at [`DNS_ADDRESS`]. The agent configures the guest
//! statically with these values ([`guest_config`]). passt maps the gateway
//! to the host's loopback only when the operator named a destination that
//! may be there; otherwise it is no address at all.
//!
//! Every NIC's policy is enforced on the host, on the guest's frames, by
//! the VM's egress process between the NIC and passt ([`user_nic`]; the
//! policy is `runner_devices::net::egress`), which is also the guest's DNS
//! forwarder: names in `allow` are enforced when the guest resolves them.
//!
//! A job with services also has a private [`segment`] with them, behind a
//! switch of its own.

pub mod passt;
pub mod segment;
pub mod user_nic;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use agent_protocol::NetworkConfig;
/// What a NIC's guest touched: every destination, its name and bytes.
pub use runner_devices::net::egress::{EgressReport, Touched};
use runner_devices::net::egress::{NameRule, Rules};

/// Whether an address is on the public internet (not loopback, private,
/// link-local, …): `runner`'s grants check `allow` entries with it too.
pub use runner_devices::net::addresses::is_public;

use crate::BootError;

/// The guest's address (the one passt hands out and NATs).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GUEST_PREFIX_LEN: u8 = 24;
/// The guest's default gateway; passt maps it to the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The guest's DNS forwarder: its egress process answers here.
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The MAC address of the guest's NIC (a locally administered one, as
/// QEMU's default is); passt learns it from the guest's first frame.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The guest's MTU: Ethernet-sized frames keep every buffer on the way
/// (egress process, device queues) small.
pub const GUEST_MTU: u32 = 1500;

/// What the agent is asked to configure.
pub fn guest_config() -> NetworkConfig {
    NetworkConfig {
        mac: Some(mac_text(GUEST_MAC)),
        address: GUEST_ADDRESS.to_string(),
        prefix_len: GUEST_PREFIX_LEN,
        gateway: Some(GATEWAY.to_string()),
        mtu: GUEST_MTU,
        dns: vec![DNS_ADDRESS.to_string()],
        hosts: Vec::new(),
    }
}

/// A MAC as Linux and QEMU write it: `52:54:00:12:34:56`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A VM's NIC, as its job asked and the operator granted: none at all (the
/// clean room's default), or one that reaches what [`Reach`] says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Nic {
    #[default]
    None,
    User(Reach),
}

impl Nic {
    pub fn is_on(&self) -> bool {
        matches!(self, Nic::User(_))
    }
}

/// Where a NIC's traffic may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Any public address (`runner_devices::net::addresses`).
    pub public: bool,
    /// These destinations too.
    pub destinations: Vec<Destination>,
}

/// One `host:port` a NIC may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    /// The operator named it: it may be the host's loopback (reached at
    /// [`GATEWAY`]), or a private or link-local address. Any other
    /// destination reaches only the public addresses its name resolves to.
    pub named_by_operator: bool,
}

/// The egress rules for a NIC. Addresses are kept as they are, and the
/// host's loopback (or `localhost`) stands for the host, which the guest
/// reaches at [`GATEWAY`]; names are matched when the guest resolves them.
pub fn rules(reach: &Reach) -> Result<Rules, BootError> {
    let mut rules = Rules {
        public: reach.public,
        addresses: Vec::new(),
        names: Vec::new(),
        dns: DNS_ADDRESS,
        gateway: GATEWAY,
        resolver: true,
    };
    for dest in &reach.destinations {
        let address = match dest.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            Ok(IpAddr::V6(_)) => {
                return Err(BootError::Setup(format!(
                    "`allow` entry `[{}]:{}`: the guest's network is IPv4 only",
                    dest.host, dest.port
                )))
            }
            Err(_) if dest.host == "localhost" => Some(Ipv4Addr::LOCALHOST),
            Err(_) => None,
        };
        match address {
            Some(ip) => {
                let ip = if ip.is_loopback() { GATEWAY } else { ip };
                let to = SocketAddrV4::new(ip, dest.port);
                if !rules.addresses.contains(&to) {
                    rules.addresses.push(to);
                }
            }
            None => rules.names.push(NameRule {
                pattern: dest.host.trim_end_matches('.').to_ascii_lowercase(),
                port: dest.port,
                named_by_operator: dest.named_by_operator,
            }),
        }
    }
    Ok(rules)
}

/// Whether `rules` may reach the host at the gateway (an entry for its
/// loopback, or a name the operator named, whose answer may be it): only
/// then does passt map the gateway to the host's loopback.
pub fn maps_host(rules: &Rules) -> bool {
    rules.addresses.iter().any(|a| *a.ip() == GATEWAY)
        || rules.names.iter().any(|n| n.named_by_operator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, port: u16, named_by_operator: bool) -> Destination {
        Destination {
            host: host.into(),
            port,
            named_by_operator,
        }
    }

    #[test]
    fn addresses_stay_addresses_names_become_rules_and_the_host_is_the_gateway() {
        let reach = Reach {
            public: false,
            destinations: vec![
                dest("127.0.0.1", 8080, true),
                dest("1.1.1.1", 443, false),
                dest("Crates.IO.", 443, false),
                dest("*.pythonhosted.org", 443, false),
            ],
        };
        let rules = rules(&reach).unwrap();
        assert_eq!(
            rules.addresses,
            vec![
                "10.0.2.2:8080".parse::<SocketAddrV4>().unwrap(),
                "1.1.1.1:443".parse().unwrap()
            ]
        );
        let patterns: Vec<&str> = rules.names.iter().map(|n| n.pattern.as_str()).collect();
        assert_eq!(patterns, ["crates.io", "*.pythonhosted.org"]);
        assert!(!rules.public && maps_host(&rules));
        assert_eq!(rules.dns, DNS_ADDRESS);
        // An open network with nothing the operator named: no host.
        let open = super::rules(&Reach {
            public: true,
            destinations: vec![dest("db.internal", 5432, false)],
        })
        .unwrap();
        assert!(open.public && !maps_host(&open));
        // The operator's name may answer with the host.
        let named = super::rules(&Reach {
            public: false,
            destinations: vec![dest("web.test", 8000, true)],
        })
        .unwrap();
        assert!(maps_host(&named));
    }

    #[test]
    fn an_ipv6_entry_is_refused() {
        let reach = Reach {
            public: false,
            destinations: vec![dest("::1", 80, true)],
        };
        match rules(&reach) {
            Err(BootError::Setup(msg)) => assert!(msg.contains("IPv4 only"), "{msg}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
