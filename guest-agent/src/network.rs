//! Static configuration of the guest's NICs: user-mode networking for jobs
//! with `network:`, and the private segment of a job with its services.
//!
//! The host picks the addresses (they are what it told passt or the
//! segment's switch), so there is no DHCP client here: a handful of ioctls
//! (the same ones `ifconfig` and `route` use), a resolv.conf and lines in
//! /etc/hosts. The root is an overlay on a tmpfs, so `/etc` is writable and
//! the files go away with the VM.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use agent_protocol::NetworkConfig;

const RESOLV_CONF: &str = "/etc/resolv.conf";
const HOSTS: &str = "/etc/hosts";
const SYS_NET: &str = "/sys/class/net";

/// Configures the interface `config` names (by MAC, or the first one);
/// returns its name.
pub fn configure(config: &NetworkConfig) -> Result<String, String> {
    let address = parse_addr("address", &config.address)?;
    let gateway = config
        .gateway
        .as_deref()
        .map(|g| parse_addr("gateway", g))
        .transpose()?;
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
    let hosts = config
        .hosts
        .iter()
        .map(|h| {
            Ok((
                valid_host_name(&h.name)?,
                parse_addr("host address", &h.address)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let netmask = Ipv4Addr::from(u32::MAX << (32 - u32::from(config.prefix_len)));

    let name = match &config.mac {
        None => first_nic(Path::new(SYS_NET)).ok_or(
            "the guest has no network interface (is CONFIG_VIRTIO_NET set in the kernel?)",
        )?,
        Some(mac) => nic_with_mac(Path::new(SYS_NET), mac)
            .ok_or_else(|| format!("the guest has no network interface with MAC {mac}"))?,
    };
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
    if let Some(gateway) = gateway {
        step(
            "adding the default route",
            add_default_route(&sock, gateway),
        )?;
    }
    if !dns.is_empty() {
        write_resolv_conf(&dns).map_err(|e| format!("writing {RESOLV_CONF}: {e}"))?;
    }
    if !hosts.is_empty() {
        add_hosts(Path::new(HOSTS), &hosts).map_err(|e| format!("writing {HOSTS}: {e}"))?;
    }
    Ok(name)
}

/// A host name as the runner hands them out (a service's name: one
/// lowercase label); anything else would let a line of /etc/hosts say more
/// than one name.
fn valid_host_name(name: &str) -> Result<&str, String> {
    match agent_protocol::is_host_label(name) {
        true => Ok(name),
        false => Err(format!("invalid host name {name:?}")),
    }
}

/// The interface in `dir` whose `address` file holds `mac`.
fn nic_with_mac(dir: &Path, mac: &str) -> Option<String> {
    let wanted = mac.to_ascii_lowercase();
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() < libc::IFNAMSIZ)
        .find(|n| {
            std::fs::read_to_string(dir.join(n).join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&wanted))
        })
}

/// Appends `hosts` to the hosts file at `path` (kept if it exists),
/// through a temp file and a rename.
fn add_hosts(path: &Path, hosts: &[(&str, Ipv4Addr)]) -> std::io::Result<()> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for (name, address) in hosts {
        text.push_str(&format!("{address}\t{name}\n"));
    }
    replace_file(path, text.as_bytes())
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

fn write_resolv_conf(servers: &[Ipv4Addr]) -> std::io::Result<()> {
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    replace_file(Path::new(RESOLV_CONF), text.as_bytes())
}

/// Writes `path` through a temp file beside it and a rename, so a reader
/// never sees half of it.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".runner-tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
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
    fn an_interface_is_found_by_its_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("eth0", "52:54:00:12:34:56"), ("eth1", "52:54:00:5e:00:02")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        let found = nic_with_mac(dir.path(), "52:54:00:5E:00:02");
        assert_eq!(found.as_deref(), Some("eth1"));
        assert_eq!(nic_with_mac(dir.path(), "52:54:00:5e:00:09"), None);
    }

    #[test]
    fn host_names_are_added_to_what_the_hosts_file_had() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1\tlocalhost").unwrap();
        let db = Ipv4Addr::new(10, 0, 3, 3);
        add_hosts(&hosts, &[("db", db), ("cache", Ipv4Addr::new(10, 0, 3, 4))]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "127.0.0.1\tlocalhost\n10.0.3.3\tdb\n10.0.3.4\tcache\n"
        );
        let fresh = dir.path().join("none-yet");
        add_hosts(&fresh, &[("db", db)]).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "10.0.3.3\tdb\n");
        for bad in ["", "-db", "db-", "DB", "db.example", &"a".repeat(64)] {
            assert!(valid_host_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_are_refused_before_touching_anything() {
        let good = NetworkConfig {
            mac: None,
            address: "10.0.2.15".into(),
            prefix_len: 24,
            gateway: Some("10.0.2.2".into()),
            mtu: 1500,
            dns: vec!["10.0.2.3".into()],
            hosts: Vec::new(),
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
            (
                NetworkConfig {
                    hosts: vec![agent_protocol::HostEntry {
                        name: "db localhost".into(),
                        address: "10.0.3.3".into(),
                    }],
                    ..good.clone()
                },
                "invalid host name",
            ),
            (
                NetworkConfig {
                    gateway: Some("".into()),
                    ..good.clone()
                },
                "invalid gateway",
            ),
        ] {
            let err = configure(&bad).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
    }
}
