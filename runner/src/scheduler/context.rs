//! What the scheduler's parts share: the run's options, its resolved
//! images, and the context every job runs in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use super::budget::Budget;
use crate::pipeline::Image;
use crate::report::Reporter;
use crate::session::ArtifactLimits;
use runner_machine::Backend;

/// Kernel and rootfs files for each image the plan uses, resolved (and
/// built, on first use) before the run starts.
pub type ResolvedImages = HashMap<Image, (PathBuf, PathBuf)>;

pub struct Options {
    /// Most VMs running at once.
    pub jobs: usize,
    /// Start no new job once one has failed.
    pub fail_fast: bool,
    pub boot_timeout: Duration,
    /// Bytes of each step's stdout and stderr kept in memory for reports.
    pub output_limit: usize,
    /// Job logs go to `<out_dir>/logs`, artifacts to `<out_dir>/artifacts`.
    pub out_dir: PathBuf,
    /// Most bytes each job log and each VM's serial log may take on disk
    /// (head and tail are kept); `None` for no limit.
    pub log_limit: Option<u64>,
    /// Caps on what each job's artifacts may hold.
    pub artifact_limits: ArtifactLimits,
    /// What the operator granted beyond the clean room (`files` from any
    /// host path, the network); the plan was checked against it.
    pub grants: crate::grants::Grants,
    /// Open a shell in the VM of a failed step (`--debug-on-failure`);
    /// only with a terminal.
    pub debug_on_failure: bool,
    /// Where `cache:` volumes live; `None` when no job has a cache.
    pub caches: Option<runner_machine::caches::CacheStore>,
}

/// Everything a job needs from the run around it.
pub(super) struct RunContext<'a> {
    pub(super) backend: &'a dyn Backend,
    pub(super) images: &'a ResolvedImages,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) options: &'a Options,
    /// The pipeline's workspace: what `files` may read without the
    /// host-files grant.
    pub(super) workspace: &'a std::path::Path,
    /// The host's memory for VMs, in MiB.
    pub(super) memory: &'a Budget,
    /// VMs running at once (`--jobs`).
    pub(super) vms: &'a Budget,
    /// Set by fail-fast: jobs that have not started yet are skipped.
    pub(super) stop: AtomicBool,
    /// The name of the job that triggered fail-fast.
    pub(super) first_failure: Mutex<Option<String>>,
}
