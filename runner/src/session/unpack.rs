//! Unpacking an artifact tar stream from the guest on the host.
//!
//! The guest is not trusted (pipelines come from pull requests), so what it
//! sends is data, never privileges: the stream goes through `safe-untar`
//! under [`Policy::ARTIFACTS`] (its policy module lists what that allows).
//! Here are only what artifacts add: the per-job budget with its defaults,
//! and a refused entry recorded as a [`Refusal`] for the reports, not a
//! reason to stop. When the budget runs out the transfer stops and the
//! caller must hang up rather than drain the rest.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use safe_untar::{Budget, Limits, OverBudget, Policy};

/// Default cap on the bytes of artifacts one job may copy out.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default cap on the number of artifact entries (files, directories, links).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// Per-job caps on what artifacts may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What one job has used of its [`ArtifactLimits`], across all of its
/// artifact transfers.
#[derive(Clone, Debug)]
pub struct ArtifactBudget(Budget);

impl ArtifactBudget {
    pub fn new(limits: ArtifactLimits) -> ArtifactBudget {
        ArtifactBudget(Budget::new(Limits {
            max_bytes: limits.max_bytes,
            max_entries: limits.max_entries,
        }))
    }

    /// Bytes and entries charged so far.
    pub fn used(&self) -> (u64, u64) {
        self.0.used()
    }
}

/// An entry that was not unpacked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}: {}", self.path, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The job's budget ran out. The rest of the stream was not read.
    #[error("artifact limit reached: {0}")]
    Limit(OverBudget),
    /// The stream is not a valid tar archive, or it broke off.
    #[error("bad tar stream: {0}")]
    Stream(io::Error),
    /// Never under the artifacts' policy, which notes refusals instead.
    #[error("refused: {0}")]
    Refused(safe_untar::Refused),
    /// The host could not write (disk full, permissions).
    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        // Not `source`: the message says it (anyhow would print it twice).
        cause: io::Error,
    },
}

impl From<safe_untar::Error> for UnpackError {
    fn from(e: safe_untar::Error) -> Self {
        match e {
            safe_untar::Error::OverBudget(over) => UnpackError::Limit(over),
            safe_untar::Error::Stream(e) => UnpackError::Stream(e),
            safe_untar::Error::Write { path, cause } => UnpackError::Write { path, cause },
            safe_untar::Error::Refused(refused) => UnpackError::Refused(refused),
        }
    }
}

/// What an unpacking did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Entries created (refused ones not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    pub refused: Vec<Refusal>,
    /// Why unpacking stopped early, if it did.
    pub error: Option<UnpackError>,
}

impl Unpacked {
    /// True if the transfer stopped before the end of the stream, so the
    /// connection it came over is no longer in step.
    pub fn hung_up(&self) -> bool {
        matches!(self.error, Some(UnpackError::Limit(_)))
    }
}

/// Unpacks the tar stream `input` into `dest` (which must exist), charging
/// `budget`. Unless the budget ran out, the stream is read to its end.
pub fn unpack<R: Read>(input: R, dest: &Path, budget: &mut ArtifactBudget) -> Unpacked {
    let done = safe_untar::unpack(input, dest, Policy::ARTIFACTS, &mut budget.0);
    Unpacked {
        entries: done.entries,
        bytes: done.bytes,
        refused: done
            .refused
            .into_iter()
            .map(|r| Refusal {
                path: r.entry,
                reason: r.why.to_string(),
            })
            .collect(),
        error: done.error.map(UnpackError::from),
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
