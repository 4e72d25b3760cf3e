//! Where a job's VM time went: boot, file copies, each step attempt, test
//! reports, artifacts. Only the HTML report draws it; the console and JUnit
//! have the totals they need in the results themselves.

use std::time::{Duration, Instant};

/// One span of a job's VM time, measured from the job's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub kind: PhaseKind,
    /// From the job's start ([`super::JobResult::started`]).
    pub start: Duration,
    pub duration: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    /// Starting the VM until the agent answered (or the boot failed).
    Boot,
    /// Waiting for the job's services to be ready (they boot beside the
    /// job's VM; this is what is left once it has booted).
    Services,
    /// Copying the job's `files` in.
    CopyFiles,
    /// One attempt of step `index` (of [`super::JobResult::steps`]).
    Step { index: usize, attempt: u32 },
    /// Reading the guest's test reports back.
    ImportedTests,
    /// Copying the artifacts out.
    Artifacts,
    /// Merging the job's cache writes into new versions, after its VM.
    Caches,
}

impl PhaseKind {
    /// `boot`, `step`, … as the HTML report's data names them.
    pub fn label(self) -> &'static str {
        match self {
            PhaseKind::Boot => "boot",
            PhaseKind::Services => "services",
            PhaseKind::CopyFiles => "files",
            PhaseKind::Step { .. } => "step",
            PhaseKind::ImportedTests => "reports",
            PhaseKind::Artifacts => "artifacts",
            PhaseKind::Caches => "caches",
        }
    }
}

impl Phase {
    /// The span from `began` until now, on the clock of a job that started
    /// at `job_clock`.
    pub fn until_now(kind: PhaseKind, job_clock: Instant, began: Instant) -> Phase {
        Phase {
            kind,
            start: began.saturating_duration_since(job_clock),
            duration: began.elapsed(),
        }
    }
}
