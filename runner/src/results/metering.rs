//! What a job's VM used: the CPU time of its vCPUs (from the host), the
//! most guest memory in use at once during its steps (from the agent,
//! which samples it), and its network (from its NIC's egress process). A job close to its `memory` gets a warning naming the
//! setting, so that the next OOM is not a surprise.

use std::time::Duration;

use super::NetworkUse;

/// Use at or above this share of a limit is warned about.
pub const WARN_AT_PERCENT: u64 = 90;

/// A job VM's use; a field is `None` when it could not be measured (the VM
/// did not get that far, or the backend or agent cannot tell).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metering {
    /// CPU time of the vCPUs, boot included.
    pub cpu: Option<Duration>,
    /// Guest memory during the steps.
    pub memory: Option<MemoryUse>,
    /// What its NIC touched; `None` without one.
    pub network: Option<NetworkUse>,
}

/// Guest memory: what the kernel had (a little under the job's `memory`:
/// the kernel keeps some for itself) and the most of it in use at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    pub total_bytes: u64,
    pub peak_bytes: u64,
}

impl MemoryUse {
    /// The peak as a share of the total, in whole percent.
    pub fn percent(&self) -> u64 {
        (self.peak_bytes.saturating_mul(100))
            .checked_div(self.total_bytes)
            .unwrap_or(0)
    }
}

impl Metering {
    /// One line per limit the job came close to, naming the setting to
    /// raise.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(memory) = self.memory.filter(|m| m.percent() >= WARN_AT_PERCENT) {
            lines.push(format!(
                "used {}% of its memory at peak ({} of {} MiB): raise `memory` before it runs out",
                memory.percent(),
                memory.peak_bytes >> 20,
                memory.total_bytes >> 20
            ));
        }
        lines
    }

    /// A short summary (`cpu 3.1s, memory 310/497 MiB`); empty when
    /// nothing was measured.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cpu) = self.cpu {
            parts.push(format!("cpu {:.1}s", cpu.as_secs_f64()));
        }
        if let Some(memory) = self.memory {
            parts.push(format!(
                "memory {}/{} MiB",
                memory.peak_bytes >> 20,
                memory.total_bytes >> 20
            ));
        }
        if let Some(network) = &self.network {
            parts.push(network.summary());
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_job_near_its_memory_gets_one_line_naming_the_setting() {
        let near = Metering {
            cpu: Some(Duration::from_millis(3140)),
            memory: Some(MemoryUse {
                total_bytes: 500 * MIB,
                peak_bytes: 476 * MIB,
            }),
            network: None,
        };
        assert_eq!(
            near.warnings(),
            ["used 95% of its memory at peak (476 of 500 MiB): raise `memory` before it runs out"]
        );
        assert_eq!(near.summary(), "cpu 3.1s, memory 476/500 MiB");
        let fine = Metering {
            memory: Some(MemoryUse {
                total_bytes: 500 * MIB,
                peak_bytes: 300 * MIB,
            }),
            ..near.clone()
        };
        assert!(fine.warnings().is_empty());
        assert!(Metering::default().warnings().is_empty());
        assert_eq!(Metering::default().summary(), "");
        let empty = MemoryUse {
            total_bytes: 0,
            peak_bytes: 1,
        };
        assert_eq!(empty.percent(), 0);
    }
}
