//! Static configuration of the guest's NIC, for jobs with `network:`.
//!
//! The host picks the addresses (they are what it told passt), so there is
//! no DHCP client here: a handful of ioctls (the same ones `ifconfig` and
//! `route` use) and a resolv.conf. The root is an overlay on a tmpfs, so
//! `/etc` is writable and the file goes away with the VM.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use agent_protocol::NetworkConfig;

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Configures the first non-loopback interface; returns its name.
pub fn configure(config: &NetworkConfig) -> Result<String, String> {
    let address = parse_addr("address", &config.address)?;
    let gateway = parse_addr("gateway", &config.gateway)?;
    if config.prefix_len == 0 || config.prefix_len > 30 {
        return Err(format!("invalid prefix length {}", config.prefix_len));
    }
    if !(576..=65535).contains(&config.mtu) {
        return Err(format!("invalid MTU {}", config.mtu));
    }
    let dns = config
        .dns
        .iter()
        .map(|d| parse_addr("name server", d))
        .collect::<Result<Vec<_>, _>>()?;
    let netmask = Ipv4Addr::from(u32::MAX << (32 - u32::from(config.prefix_len)));

    let name = first_nic(Path::new("/sys/class/net"))
        .ok_or("the guest has no network interface (is CONFIG_VIRTIO_NET set in the kernel?)")?;
    let sock = inet_socket().map_err(|e| format!("socket: {e}"))?;
    let step = |what: &str, result: std::io::Result<()>| {
        result.map_err(|e| format!("{what} on {name}: {e}"))
    };
    step(
        "setting the address",
        set_addr(&sock, &name, libc::SIOCSIFADDR, address),
    )?;
    step(
        "setting the netmask",
        set_addr(&sock, &name, libc::SIOCSIFNETMASK, netmask),
    )?;
    step("setting the MTU", set_mtu(&sock, &name, config.mtu))?;
    step("bringing the interface up", set_up(&sock, &name))?;
    step(
        "adding the default route",
        add_default_route(&sock, gateway),
    )?;
    write_resolv_conf(&dns).map_err(|e| format!("writing {RESOLV_CONF}: {e}"))?;
    Ok(name)
}

fn parse_addr(what: &str, text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("invalid {what} {text:?}: expected an IPv4 address"))
}

/// The first interface in `dir` other than `lo`, by name (`eth0`).
fn first_nic(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo" && n.len() < libc::IFNAMSIZ)
        .collect();
    names.sort();
    names.into_iter().next()
}

fn inet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // `first_nic` keeps names shorter than IFNAMSIZ: the NUL stays.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // the kernel reads this one as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: every caller passes the structure its request reads/writes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *mut T) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_addr(
    sock: &OwnedFd,
    name: &str,
    request: libc::Ioctl,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(sock, request, &mut req)
}

fn set_mtu(sock: &OwnedFd, name: &str, mtu: u32) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(sock, libc::SIOCSIFMTU, &mut req)
}

fn set_up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq(name);
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: an all-zero rtentry is valid (no device name pointer).
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(sock, libc::SIOCADDRT, &mut route) {
        // A second configuration on the same boot: the route is there.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Writes resolv.conf through a temp file and a rename, so a reader never
/// sees half of it.
fn write_resolv_conf(servers: &[Ipv4Addr]) -> std::io::Result<()> {
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    let tmp = format!("{RESOLV_CONF}.runner-tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, RESOLV_CONF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_loopback_interface_is_picked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_nic(dir.path()), None);
        for name in ["lo", "eth1", "eth0"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(first_nic(dir.path()).as_deref(), Some("eth0"));
    }

    #[test]
    fn bad_values_are_refused_before_touching_anything() {
        let good = NetworkConfig {
            address: "10.0.2.15".into(),
            prefix_len: 24,
            gateway: "10.0.2.2".into(),
            mtu: 1500,
            dns: vec!["10.0.2.3".into()],
        };
        for (bad, what) in [
            (
                NetworkConfig {
                    address: "nope".into(),
                    ..good.clone()
                },
                "invalid address",
            ),
            (
                NetworkConfig {
                    prefix_len: 33,
                    ..good.clone()
                },
                "invalid prefix",
            ),
            (
                NetworkConfig {
                    mtu: 70000,
                    ..good.clone()
                },
                "invalid MTU",
            ),
            (
                NetworkConfig {
                    dns: vec!["::1".into()],
                    ..good.clone()
                },
                "invalid name server",
            ),
        ] {
            let err = configure(&bad).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
    }
}
