//! What a job's VM used: the CPU time of its vCPUs (from the host), the
//! most guest memory in use at once during its steps and how full its root
//! file system was (from the agent, which samples them), what the steps
//! wrote to the root disk (from our block device), and its network (from
//! its NIC's egress process). A job close to its `memory` gets a warning naming the
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
    /// The guest's disks after the steps.
    pub disk: Option<DiskUse>,
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

/// The guest's disks: bytes its steps wrote to the root disk, as our block
/// device counts them (`None` where the disk is not ours), and its root
/// file system's size (about the image's `size`) and use at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    pub written_bytes: Option<u64>,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

impl DiskUse {
    /// The root file system's use as a share of its size, in whole percent.
    pub fn percent(&self) -> u64 {
        (self.used_bytes.saturating_mul(100))
            .checked_div(self.total_bytes)
            .unwrap_or(0)
    }
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
        if let Some(disk) = self.disk.filter(|d| d.percent() >= WARN_AT_PERCENT) {
            lines.push(format!(
                "filled {}% of its root file system ({} of {} MiB): raise the image's `size` before it runs out",
                disk.percent(),
                disk.used_bytes >> 20,
                disk.total_bytes >> 20
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
        if let Some(disk) = self.disk {
            let written = (disk.written_bytes)
                .map(|w| format!("{} MiB written, ", w >> 20))
                .unwrap_or_default();
            parts.push(format!(
                "disk {written}{}/{} MiB used",
                disk.used_bytes >> 20,
                disk.total_bytes >> 20
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
            disk: None,
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
        let full = Metering {
            disk: Some(DiskUse {
                written_bytes: Some(100 * MIB),
                used_bytes: 950 * MIB,
                total_bytes: 1000 * MIB,
            }),
            ..Metering::default()
        };
        assert_eq!(
            full.warnings(),
            ["filled 95% of its root file system (950 of 1000 MiB): raise the image's `size` before it runs out"]
        );
        assert_eq!(full.summary(), "disk 100 MiB written, 950/1000 MiB used");
    }
}
