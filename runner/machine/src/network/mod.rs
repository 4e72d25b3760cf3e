//! Host side of opt-in networking (`network:` in the pipeline).
//!
//! A VM with a NIC ([`Nic`]) gets its own passt ([`passt`]), and the
//! guest's network is the same on both backends: address
//! [`GUEST_ADDRESS`]/[`GUEST_PREFIX_LEN`], gateway [`GATEWAY`], DNS through
//! passt's forwarder at [`DNS_ADDRESS`]. The agent configures the guest
//! statically with these values ([`guest_config`]). passt maps the gateway
//! to the host's loopback only when the operator named a port there
//! (`--allow-network=127.0.0.1:PORT`); otherwise it is no address at all.
//!
//! Every NIC's policy is enforced on the host, on the guest's frames (see
//! `runner_devices::net::filter`): by the [`relay`] between QEMU and passt,
//! and inside our virtio-net device for the built-in VMM.
//!
//! A job with services also has a private [`segment`] with them, behind a
//! switch of its own.

pub mod passt;
pub mod relay;
pub mod segment;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use agent_protocol::NetworkConfig;
use runner_devices::net::filter::Policy;

/// Whether an address is on the public internet (not loopback, private,
/// link-local, …): `runner`'s grants check `allow` entries with it too.
pub use runner_devices::net::addresses::is_public;

use crate::BootError;

/// The guest's address (the one passt hands out and NATs).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GUEST_PREFIX_LEN: u8 = 24;
/// The guest's default gateway; passt maps it to the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// passt forwards DNS queries sent here to the host's resolver.
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The MAC address of the guest's NIC (a locally administered one, as
/// QEMU's default is); passt learns it from the guest's first frame.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The guest's MTU: Ethernet-sized frames keep every buffer on the way
/// (relay, device queues) small.
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

/// The filter for a NIC. Host names are resolved here, once, when the VM
/// starts; an address on the host's loopback stands for the host, which the
/// guest reaches at [`GATEWAY`].
pub fn policy(reach: &Reach) -> Result<Policy, BootError> {
    let mut allowed = Vec::new();
    for dest in &reach.destinations {
        let shown = format!("{}:{}", dest.host, dest.port);
        let addrs = (dest.host.as_str(), dest.port)
            .to_socket_addrs()
            .map_err(|e| BootError::Setup(format!("resolving `allow` entry `{shown}`: {e}")))?;
        for addr in addrs {
            let addr = match addr.ip() {
                ip if ip.is_loopback() => SocketAddr::new(IpAddr::V4(GATEWAY), addr.port()),
                _ => addr,
            };
            if !dest.named_by_operator && !is_public(addr.ip()) {
                // A name that resolves to the host or a private network
                // (DNS rebinding, a split horizon) gets no further.
                tracing::warn!(
                    "`allow` entry `{shown}` resolves to {addr}, a host, private or link-local \
                     address the operator did not name: left out"
                );
                continue;
            }
            if !allowed.contains(&addr) {
                allowed.push(addr);
            }
        }
    }
    Ok(Policy {
        public: reach.public,
        allowed,
        dns: DNS_ADDRESS,
    })
}

/// Whether `policy` reaches the host at the gateway: only then does passt
/// map the gateway to the host's loopback.
pub fn maps_host(policy: &Policy) -> bool {
    policy.allowed.iter().any(|a| a.ip() == IpAddr::V4(GATEWAY))
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
    fn the_host_and_private_addresses_are_reached_only_where_the_operator_named_them() {
        let reach = Reach {
            public: false,
            destinations: vec![
                dest("127.0.0.1", 8080, true),
                dest("1.1.1.1", 443, false),
                // Resolves to the host, and nobody named it: left out.
                dest("localhost", 22, false),
                dest("10.1.2.3", 5432, false),
            ],
        };
        let policy = policy(&reach).unwrap();
        assert_eq!(
            policy.allowed,
            vec![
                "10.0.2.2:8080".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:443".parse().unwrap()
            ]
        );
        assert!(!policy.public);
        assert_eq!(policy.dns, DNS_ADDRESS);
        assert!(maps_host(&policy));
        let open = super::policy(&Reach {
            public: true,
            destinations: vec![],
        })
        .unwrap();
        assert!(open.public && open.allowed.is_empty() && !maps_host(&open));
    }

    #[test]
    fn an_unresolvable_name_is_a_setup_error() {
        let reach = Reach {
            public: false,
            destinations: vec![dest("no-such-host.invalid", 80, false)],
        };
        match policy(&reach) {
            Err(BootError::Setup(msg)) => {
                assert!(msg.contains("no-such-host.invalid:80"), "{msg}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
