//! Host side of opt-in networking (`network:` in the pipeline).
//!
//! A VM with a NIC gets its own passt ([`passt`]), and the guest's network
//! is the same on both backends: address [`GUEST_ADDRESS`]/[`GUEST_PREFIX_LEN`],
//! gateway [`GATEWAY`] (which passt maps to the host's loopback, so a
//! server the host runs on 127.0.0.1 is reachable at the gateway), DNS
//! through passt's forwarder at [`DNS_ADDRESS`]. The agent configures the
//! guest statically with these values ([`guest_config`]).
//!
//! An `allow` policy is enforced on the host, on the guest's frames (see
//! `runner_devices::net::filter`): by the [`relay`] between QEMU and passt,
//! and inside our virtio-net device for the built-in VMM.

pub mod passt;
pub mod relay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use agent_protocol::NetworkConfig;
use runner_devices::net::filter::Policy;

use crate::backend::BootError;
use crate::pipeline::Network;

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
        address: GUEST_ADDRESS.to_string(),
        prefix_len: GUEST_PREFIX_LEN,
        gateway: GATEWAY.to_string(),
        mtu: GUEST_MTU,
        dns: vec![DNS_ADDRESS.to_string()],
    }
}

/// The filter for a job's network: `None` when it is open (or off).
/// Host names are resolved here, once, when the VM starts; an address
/// on the host's loopback (`localhost`, `127.0.0.1`) stands for the host,
/// which the guest reaches at [`GATEWAY`].
pub fn policy(network: &Network) -> Result<Option<Policy>, BootError> {
    let Network::Allow(entries) = network else {
        return Ok(None);
    };
    let mut allowed = Vec::new();
    for entry in entries {
        let host = entry.host.as_str();
        let addrs = (host, entry.port)
            .to_socket_addrs()
            .map_err(|e| BootError::Setup(format!("resolving `allow` entry `{entry}`: {e}")))?;
        for addr in addrs {
            let addr = match addr.ip() {
                ip if ip.is_loopback() => SocketAddr::new(IpAddr::V4(GATEWAY), addr.port()),
                _ => addr,
            };
            if !allowed.contains(&addr) {
                allowed.push(addr);
            }
        }
    }
    Ok(Some(Policy {
        allowed,
        dns: DNS_ADDRESS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::AllowEntry;

    #[test]
    fn loopback_entries_mean_the_host_at_the_gateway() {
        let network = Network::Allow(vec![
            AllowEntry {
                host: "127.0.0.1".into(),
                port: 8080,
            },
            AllowEntry {
                host: "192.0.2.7".into(),
                port: 443,
            },
        ]);
        let policy = policy(&network).unwrap().unwrap();
        assert_eq!(
            policy.allowed,
            vec![
                "10.0.2.2:8080".parse::<SocketAddr>().unwrap(),
                "192.0.2.7:443".parse().unwrap()
            ]
        );
        assert_eq!(policy.dns, DNS_ADDRESS);
        assert!(super::policy(&Network::Open).unwrap().is_none());
    }

    #[test]
    fn an_unresolvable_name_is_a_setup_error() {
        let network = Network::Allow(vec![AllowEntry {
            host: "no-such-host.invalid".into(),
            port: 80,
        }]);
        match policy(&network) {
            Err(BootError::Setup(msg)) => {
                assert!(msg.contains("no-such-host.invalid:80"), "{msg}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
