//! A job's private segment with its service VMs: which addresses the
//! members get, and the switch between them, started as a jailed process
//! of its own (`vm_process::switch`) that reads every member's frames.
//!
//! Each member's NIC is one end of a socket pair; the switch holds the
//! other ends. Nothing else is on the segment: no host, no passt, no other
//! job. The range is not passt's (`10.0.2.0/24`), so a job that also has
//! its own network keeps the two apart.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use agent_protocol::{HostEntry, NetworkConfig};

use crate::vm_process::switch::{PortRole, SwitchRole};
use crate::vm_process::{HelperProcess, Outcome, Role};
use crate::BootError;

/// The segment's subnet: `10.0.3.0/24`, members from `.2` on.
pub const SEGMENT_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 0);
pub const SEGMENT_PREFIX_LEN: u8 = 24;
/// At most this many members: the job and its services.
pub const MAX_MEMBERS: usize = 16;
/// What the switch's process may use: it holds a few frames per port.
const SWITCH_MEMORY_MIB: u64 = 64;

/// Member `index`'s address on the segment.
pub fn member_address(index: usize) -> Ipv4Addr {
    let [a, b, c, _] = SEGMENT_NETWORK.octets();
    Ipv4Addr::new(a, b, c, 2 + index as u8)
}

/// Member `index`'s MAC: locally administered, and not QEMU's default.
pub fn member_mac(index: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x5e, 0x00, 2 + index as u8]
}

/// One member's end of the segment: its NIC's connection to the switch.
#[derive(Debug)]
pub struct SegmentNic {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub socket: OwnedFd,
}

impl SegmentNic {
    /// What the member's agent is asked to configure: this NIC, no
    /// gateway (the segment leads nowhere else), no name servers, and the
    /// names of every other member.
    pub fn guest_config(&self, members: &[(String, Ipv4Addr)]) -> NetworkConfig {
        NetworkConfig {
            mac: Some(super::mac_text(self.mac)),
            address: self.address.to_string(),
            prefix_len: SEGMENT_PREFIX_LEN,
            gateway: None,
            mtu: super::GUEST_MTU,
            dns: Vec::new(),
            hosts: members
                .iter()
                .filter(|(name, _)| *name != self.name)
                .map(|(name, address)| HostEntry {
                    name: name.clone(),
                    address: address.to_string(),
                })
                .collect(),
        }
    }
}

impl SegmentNic {
    /// This member on a segment of its own that leads nowhere, for the VMs
    /// that make and check a snapshot of it: nothing they send reaches the
    /// job's segment, and its NIC's stream is whole for the clone that gets
    /// it. What they send is read and thrown away, until the last end of
    /// the returned NIC's socket is closed.
    pub fn stand_in(&self) -> std::io::Result<SegmentNic> {
        let (member, sink) = UnixStream::pair()?;
        std::thread::Builder::new()
            .name("segment stand-in".into())
            .spawn(move || {
                let _ = std::io::copy(&mut &sink, &mut std::io::sink());
            })?;
        Ok(SegmentNic {
            name: self.name.clone(),
            mac: self.mac,
            address: self.address,
            socket: member.into(),
        })
    }
}

/// The running switch. Dropping it kills its process; its members' NICs
/// then see their connection close.
pub struct Switch {
    helper: HelperProcess,
}

impl Switch {
    /// Starts the switch for members named `names` (the job first), each
    /// with the next address; returns it with each member's NIC end.
    pub fn start(names: &[String]) -> Result<(Switch, Vec<SegmentNic>), BootError> {
        if names.is_empty() || names.len() > MAX_MEMBERS {
            return Err(BootError::Setup(format!(
                "a segment has 1 to {MAX_MEMBERS} members, not {}",
                names.len()
            )));
        }
        let setup = |what: &str, e: std::io::Error| BootError::Setup(format!("{what}: {e}"));
        let mut nics = Vec::new();
        let mut ports = Vec::new();
        let mut switch_ends = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let (member, switch) =
                UnixStream::pair().map_err(|e| setup("making a segment port", e))?;
            let (mac, address) = (member_mac(index), member_address(index));
            ports.push(PortRole {
                name: name.clone(),
                fd: switch.as_raw_fd(),
                mac,
                address,
            });
            switch_ends.push(switch);
            nics.push(SegmentNic {
                name: name.clone(),
                mac,
                address,
                socket: member.into(),
            });
        }
        let inherit: Vec<RawFd> = switch_ends.iter().map(|s| s.as_raw_fd()).collect();
        let helper = HelperProcess::start(
            format!("segment of {}", names[0]),
            Role::Switch(SwitchRole { ports }),
            SWITCH_MEMORY_MIB,
            &inherit,
        )?;
        // The switch holds its own copies now.
        drop(switch_ends);
        Ok((Switch { helper }, nics))
    }

    /// How the switch ended, once it has (it ends when every member left).
    pub fn outcome(&mut self) -> Option<Outcome> {
        self.helper.process.outcome()
    }
}
