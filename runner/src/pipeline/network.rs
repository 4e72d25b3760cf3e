//! `network:`: whether a job's VM gets a NIC, and where it may connect.
//!
//! Without it the guest has loopback only (the clean-room default). The
//! format is `network: true | false`, `network: { allow: [host:port, …] }`
//! or `network: { audit: true }`; the host side is `runner_machine::network`.

use std::fmt;

/// A job's network, as written (`network: false` is [`Network::Off`], so a
/// job can turn off what `defaults` turned on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// No NIC at all.
    #[default]
    Off,
    /// A NIC with user-mode networking, unrestricted.
    Open,
    /// A NIC whose TCP and UDP traffic may only go to these destinations
    /// (plus the built-in DNS forwarder); everything else is dropped on
    /// the host.
    Allow(Vec<AllowEntry>),
    /// An open NIC whose every destination is listed in the reports, to
    /// write an `allow` list from (`--suggest-allow`).
    Audit,
}

impl Network {
    pub fn is_on(&self) -> bool {
        !matches!(self, Network::Off)
    }
}

/// One `host:port` of an `allow` list. The host is an IPv4 address, a
/// name (enforced when the guest resolves it), or `*.name` for every name
/// under that one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
}

impl AllowEntry {
    /// Whether this entry names `other`'s destinations and more: the same
    /// entry, or a wildcard over `other`'s name (or wildcard) on its port.
    pub fn covers(&self, other: &AllowEntry) -> bool {
        if self.port != other.port {
            return false;
        }
        let under = |suffix: &str| other.host.ends_with(suffix);
        self.host == other.host || self.host.strip_prefix('*').is_some_and(under)
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses `host:port`, `*.host:port` or `1.2.3.4:port`. IPv6 is refused:
/// the guest's network is IPv4 only, and an entry that could never work
/// is better an error than a silent drop.
pub fn parse_allow_entry(text: &str) -> Result<AllowEntry, String> {
    let text = text.trim();
    let bad = |why: &str| format!("invalid `allow` entry `{text}`: {why} (expected host:port)");
    if text.starts_with('[') || text.matches(':').count() > 1 {
        return Err(bad(
            "IPv6 is not supported (the guest's network is IPv4 only); list an IPv4 address or a name",
        ));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let name = host.strip_prefix("*.").unwrap_or(host);
    if !valid_host_name(name) || name.contains('*') {
        return Err(bad("not a host name, `*.` and a name, or an IPv4 address"));
    }
    if host.starts_with("*.") && !name.contains('.') {
        return Err(bad(
            "a wildcard covers the names under a domain, as `*.example.org`",
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    };
    Ok(AllowEntry {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Letters, digits, `-` and `.` in labels of 1 to 63 characters (which
/// covers dotted IPv4 addresses too).
fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use crate::plan::Plan;
    use std::path::Path;

    fn parse(source: &str) -> Result<Pipeline, String> {
        Pipeline::parse(source, Path::new("p.yml"), Path::new("/repo")).map_err(|e| e.to_string())
    }

    #[test]
    fn jobs_inherit_network_from_defaults_and_can_turn_it_off() {
        let source = "defaults:\n  network: true\njobs:\n  a:\n    steps: [x]\n  b:\n    network: false\n    steps: [x]\n  c:\n    network:\n      allow: [\"example.com:443\", \"*.example.org:80\"]\n    steps: [x]\n";
        let plan = Plan::new(&parse(source).unwrap());
        let networks: Vec<_> = plan.jobs.iter().map(|j| j.network.clone()).collect();
        assert_eq!(
            networks,
            vec![
                Network::Open,
                Network::Off,
                Network::Allow(vec![
                    AllowEntry {
                        host: "example.com".into(),
                        port: 443
                    },
                    AllowEntry {
                        host: "*.example.org".into(),
                        port: 80
                    }
                ])
            ]
        );
        let plain = Plan::new(&parse("jobs:\n  a:\n    steps: [x]\n").unwrap());
        assert_eq!(plain.jobs[0].network, Network::Off, "no NIC unless asked");
    }

    #[test]
    fn network_mistakes_are_located() {
        assert_eq!(
            parse("jobs:\n  a:\n    network:\n      alow: [\"x:1\"]\n    steps: [x]\n")
                .unwrap_err(),
            "p.yml:4:7: unknown key `alow` in `network` in job `a` (did you mean `allow`?)"
        );
        assert_eq!(
            parse("defaults:\n  network: yes\njobs:\n  a:\n    steps: [x]\n").unwrap_err(),
            "p.yml:2:12: `network` in `defaults` must be `true`, `false` or `{ allow: [host:port, …] }`, not `yes`"
        );
        assert_eq!(
            parse("jobs:\n  a:\n    network:\n      allow: [\"x:1\", \"x\"]\n    steps: [x]\n")
                .unwrap_err(),
            "p.yml:4:22: invalid `allow` entry `x`: no port (expected host:port)"
        );
        assert_eq!(
            parse("jobs:\n  a:\n    network:\n      allow: [\"x:1\", \"X:1\"]\n    steps: [x]\n")
                .unwrap_err(),
            "p.yml:4:22: duplicate `allow` entry `x:1`"
        );
        for (source, message) in [
            (
                "jobs:\n  a:\n    network: {}\n    steps: [x]\n",
                "missing `allow`",
            ),
            (
                "jobs:\n  a:\n    network: { allow: [] }\n    steps: [x]\n",
                "`allow` is empty",
            ),
            (
                "jobs:\n  a:\n    network:\n    steps: [x]\n",
                "`network` in job `a` is empty",
            ),
        ] {
            let err = parse(source).unwrap_err();
            assert!(err.contains(message), "{err}");
        }
    }

    #[test]
    fn an_audit_is_an_open_network_and_never_beside_allow() {
        let plan = Plan::new(
            &parse("jobs:\n  a:\n    network: { audit: true }\n    steps: [x]\n  b:\n    network: { audit: false }\n    steps: [x]\n").unwrap(),
        );
        assert_eq!(plan.jobs[0].network, Network::Audit);
        assert_eq!(plan.jobs[1].network, Network::Open);
        let err =
            parse("jobs:\n  a:\n    network: { allow: [\"x:1\"], audit: true }\n    steps: [x]\n")
                .unwrap_err();
        assert!(err.starts_with("p.yml:3:"), "{err}");
        assert!(err.contains("audit") && err.contains("allow"), "{err}");
        let err =
            parse("jobs:\n  a:\n    network: { audit: maybe }\n    steps: [x]\n").unwrap_err();
        assert!(err.contains("p.yml:3:23"), "{err}");
    }

    #[test]
    fn allow_entries_parse_names_addresses_and_ports() {
        let entry = |host: &str, port| AllowEntry {
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_allow_entry("Example.com:443"),
            Ok(entry("example.com", 443))
        );
        assert_eq!(
            parse_allow_entry("10.0.2.2:8080"),
            Ok(entry("10.0.2.2", 8080))
        );
        assert_eq!(
            parse_allow_entry("*.PythonHosted.org:443"),
            Ok(entry("*.pythonhosted.org", 443))
        );
        let wildcard = entry("*.example.org", 443);
        assert!(wildcard.covers(&entry("a.example.org", 443)));
        assert!(wildcard.covers(&entry("*.b.example.org", 443)));
        assert!(!wildcard.covers(&entry("example.org", 443)));
        assert!(!wildcard.covers(&entry("a.example.org", 80)));
        assert!(!wildcard.covers(&entry("evilexample.org", 443)));
        assert!(entry("a.b", 1).covers(&entry("a.b", 1)));
        assert!(wildcard.covers(&wildcard));
        let err = parse_allow_entry("[::1]:80").unwrap_err();
        assert!(err.contains("IPv6 is not supported"), "{err}");
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:70000",
            "example.com:http",
            ":80",
            "a b:80",
            "::1:80",
            "[::1]80",
            "[nope]:80",
            "a..b:80",
            "*:80",
            "*.com:80",
            "a.*.com:80",
            "**.a.com:80",
        ] {
            let err = parse_allow_entry(bad).unwrap_err();
            assert!(err.contains("invalid `allow` entry"), "{bad}: {err}");
        }
    }
}
