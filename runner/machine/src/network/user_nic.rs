//! A VM's NIC to the outside, on either backend: passt, and the VM's
//! egress process between passt and the guest (`vm_process::egress`),
//! which enforces the job's policy and forwards its DNS queries to the
//! host's resolver.
//!
//! The guest's NIC is one end of a socket pair the runner makes; the
//! egress process holds the other end, a connection to passt and a UDP
//! socket connected to the resolver, all made here, so the jailed process
//! opens nothing itself.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use runner_devices::net::egress::EgressReport;

use super::passt::{self, Passt};
use super::Reach;
use crate::vm_process::confinement::VmIds;
use crate::vm_process::egress::EgressRole;
use crate::vm_process::{HelperProcess, Role};
use crate::BootError;

/// Names the resolver the guests' DNS queries go to (`ADDRESS` or
/// `ADDRESS:PORT`), instead of the first `nameserver` of
/// `/etc/resolv.conf`. The operator's setting, never the pipeline's.
pub const RESOLVER_ENV: &str = "RUNNER_DNS_SERVER";
/// What the egress process may use: a few frames each way and a bounded
/// table of answers and flows.
const EGRESS_MEMORY_MIB: u64 = 64;
/// How long the egress process may take to report (it answers at once).
const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A report is at most 512 entries of a few hundred bytes; anything
/// longer is cut and fails to parse.
const MAX_REPORT_BYTES: u64 = 1 << 20;

/// A running NIC. Field order is drop order: the egress process is killed
/// first, then passt.
pub struct UserNic {
    egress: HelperProcess,
    /// Where the record of what the guest touched is asked for.
    control: UnixStream,
    passt: Passt,
}

impl UserNic {
    /// Starts passt in `vm_dir` (as `vm_ids`) and the egress process with
    /// `reach`'s rules; returns them with the guest NIC's end of the
    /// socket pair, for the VM to inherit.
    pub fn start(
        reach: &Reach,
        vm_dir: &Path,
        vm_ids: Option<&VmIds>,
        vm: &str,
    ) -> Result<(UserNic, OwnedFd), BootError> {
        let mut rules = super::rules(reach)?;
        let resolver = resolver()?;
        let program = passt::locate().map_err(BootError::Setup)?;
        let (passt, to_passt) = Passt::start(&program, vm_dir, vm_ids, super::maps_host(&rules))?;
        let setup = |what: &str, e: std::io::Error| BootError::Setup(format!("{what}: {e}"));
        // A name server the host cannot reach (no route: a sandbox, the
        // nested tier) is as good as none: the VM still boots.
        let to_resolver = match resolver.map(|r| (r, connected_udp(r))) {
            Some((_, Ok(socket))) => Some(socket),
            Some((resolver, Err(e))) => {
                tracing::warn!(
                    "`{vm}` has a network, and the host's name server {resolver} is out of reach ({e}): its guest resolves no name"
                );
                None
            }
            None => {
                tracing::warn!(
                    "`{vm}` has a network and the host no name server (/etc/resolv.conf lists none, and {RESOLVER_ENV} is not set): its guest resolves no name"
                );
                None
            }
        };
        rules.resolver = to_resolver.is_some();
        let (guest, ours) = UnixStream::pair().map_err(|e| setup("making the NIC's socket", e))?;
        let (control, control_end) =
            UnixStream::pair().map_err(|e| setup("making the NIC's control socket", e))?;
        let mut inherit = vec![
            ours.as_raw_fd(),
            to_passt.as_raw_fd(),
            control_end.as_raw_fd(),
        ];
        inherit.extend(to_resolver.as_ref().map(|r| r.as_raw_fd()));
        let role = Role::Egress(EgressRole {
            vm: vm.to_string(),
            guest_fd: ours.as_raw_fd(),
            passt_fd: to_passt.as_raw_fd(),
            resolver_fd: to_resolver.as_ref().map(|r| r.as_raw_fd()),
            control_fd: control_end.as_raw_fd(),
            rules,
        });
        let egress = HelperProcess::start(
            format!("network of {vm}"),
            role,
            EGRESS_MEMORY_MIB,
            &inherit,
        )?;
        // The process holds its own copies now.
        drop((ours, to_passt, to_resolver, control_end));
        control
            .set_read_timeout(Some(REPORT_TIMEOUT))
            .map_err(|e| setup("the NIC's control socket", e))?;
        let nic = UserNic {
            egress,
            control,
            passt,
        };
        Ok((nic, guest.into()))
    }

    /// What the guest touched so far, from its egress process; `None`
    /// (logged) if it does not answer.
    pub fn report(&mut self) -> Option<EgressReport> {
        let asked = (&self.control).write_all(b"?");
        let mut line = Vec::new();
        let read = asked.and_then(|()| {
            let mut reader = std::io::BufReader::new(&self.control).take(MAX_REPORT_BYTES);
            reader.read_until(b'\n', &mut line)
        });
        match read.map(|_| serde_json::from_slice::<EgressReport>(&line)) {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                tracing::warn!("the network's egress process sent no report: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("the network's egress process did not report: {e}");
                None
            }
        }
    }

    /// Kills the egress process and passt (a runner interrupted).
    pub fn killer(&self) -> impl Fn() + Send + Sync + 'static {
        let kill_egress = self.egress.process.killer();
        let passt = self.passt.pid();
        move || {
            kill_egress();
            crate::process::kill_pid(passt);
        }
    }
}

/// The resolver: [`RESOLVER_ENV`], else the host's first name server;
/// `None` when the host has none.
pub fn resolver() -> Result<Option<SocketAddr>, BootError> {
    if let Ok(named) = std::env::var(RESOLVER_ENV) {
        return parse_resolver(&named).map(Some).ok_or_else(|| {
            BootError::Setup(format!(
                "{RESOLVER_ENV}={named} is not an address or address:port"
            ))
        });
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| parse_resolver(rest.trim())))
}

fn parse_resolver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse().ok()
}

fn connected_udp(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(to)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolver_is_an_address_with_an_optional_port() {
        assert_eq!(
            parse_resolver("10.255.255.53"),
            Some("10.255.255.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_resolver("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_resolver("resolver.example"), None);
    }
}
