//! What a job's network touched, from its NIC's egress process on the
//! host: every destination (allowed or not) with the name the guest
//! resolved to it and bytes each way, and the names it was refused. Every
//! reporter shows it from here: the console's table, JUnit's properties,
//! the HTML report's table and the JSON events; `--suggest-allow` turns it
//! into the `allow` list that would have sufficed.

use runner_machine::network::{EgressReport, Touched};

/// A job's network use, and whether the job asked for an audit (every
/// destination shown, not only the refused ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkUse {
    pub audit: bool,
    pub report: EgressReport,
}

impl NetworkUse {
    /// `net 1.2 KiB out, 34.0 KiB in`.
    pub fn summary(&self) -> String {
        format!(
            "net {} out, {} in",
            bytes(self.report.bytes_out),
            bytes(self.report.bytes_in)
        )
    }

    /// What was refused: destinations whose packets were dropped, and
    /// names answered NXDOMAIN; what a failing job's reader needs first.
    pub fn refused(&self) -> Vec<String> {
        let report = &self.report;
        let mut lines: Vec<String> = (report.destinations.iter())
            .filter(|d| !d.allowed)
            .map(row)
            .collect();
        lines.extend(
            (report.refused_names.iter()).map(|name| format!("refused  DNS  {name} (NXDOMAIN)")),
        );
        if report.more_refused_names > 0 {
            lines.push(format!(
                "... and {} more refused names",
                report.more_refused_names
            ));
        }
        lines
    }

    /// Every destination, then the refused names: the audit table.
    pub fn table(&self) -> Vec<String> {
        let report = &self.report;
        let mut lines: Vec<String> = report.destinations.iter().map(row).collect();
        if report.more_destinations > 0 {
            lines.push(format!(
                "... and {} more destinations (not listed)",
                report.more_destinations
            ));
        }
        lines.extend(
            (report.refused_names.iter()).map(|name| format!("refused  DNS  {name} (NXDOMAIN)")),
        );
        lines
    }

    /// The `allow` entries that would have let every destination through:
    /// `name:port` for each name the guest resolved to it, else
    /// `address:port`, in the order first touched.
    pub fn suggested_allow(&self) -> Vec<String> {
        let mut entries: Vec<String> = Vec::new();
        for d in &self.report.destinations {
            let mut add = |entry: String| {
                if !entries.contains(&entry) {
                    entries.push(entry);
                }
            };
            if d.names.is_empty() {
                add(format!("{}:{}", d.address, d.port));
            }
            for name in &d.names {
                add(format!("{name}:{}", d.port));
            }
        }
        entries
    }
}

/// `allowed  TCP  crates.io  151.101.0.1:443  out 1.2 KiB, in 34.0 KiB`.
pub fn row(d: &Touched) -> String {
    let verdict = if d.allowed { "allowed" } else { "denied " };
    let name = if d.names.is_empty() {
        "-".to_string()
    } else {
        d.names.join(",")
    };
    let mut line = format!(
        "{verdict}  {}  {name}  {}:{}",
        d.protocol, d.address, d.port
    );
    if d.allowed {
        line.push_str(&format!(
            "  out {}, in {}",
            bytes(d.bytes_out),
            bytes(d.bytes_in)
        ));
    }
    line
}

/// `512 B`, `1.2 KiB`, `3.4 MiB`, `1.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_the_refusals_and_the_suggested_allow_list() {
        let job = crate::results::tests::networked("build", true);
        let mut network = job.metering.network.unwrap();
        assert_eq!(network.summary(), "net 1.3 KiB out, 34.2 KiB in");
        assert_eq!(
            network.table()[0],
            "allowed  TCP  crates.io  151.101.0.1:443  out 1.3 KiB, in 34.2 KiB"
        );
        assert_eq!(
            network.refused(),
            [
                "denied   TCP  -  10.0.0.5:5432",
                "refused  DNS  evil.example (NXDOMAIN)"
            ]
        );
        // Two names on one address (a CDN), and the same one again.
        let mut cdn = network.report.destinations[0].clone();
        cdn.names.push("static.crates.io".into());
        cdn.address = [151, 101, 0, 2].into();
        network.report.destinations.push(cdn);
        assert_eq!(
            network.suggested_allow(),
            ["crates.io:443", "10.0.0.5:5432", "static.crates.io:443"]
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
