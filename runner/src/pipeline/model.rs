//! The pipeline as the rest of the runner sees it: a parsed, validated
//! file (jobs, steps, defaults, images) with nothing left to check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::files::{FileEntry, GUEST_WORKSPACE};
use super::imported::ReportFiles;
use super::network::Network;
use super::scalars::ImageRef;
use runner_machine::images::{KERNEL_NAMES, ROOTFS_NAMES};

/// vCPUs per VM when the pipeline does not say.
pub const DEFAULT_VCPUS: u32 = 1;
/// Guest memory when the pipeline does not say.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Budget of one job (boot, file copies, all steps) when nothing says.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Most jobs one `matrix` may expand to; more is a mistake, not a plan.
pub const MAX_MATRIX_JOBS: usize = 256;

/// Environment variables, sorted by name.
pub type Env = BTreeMap<String, String>;

/// A parsed and validated pipeline file.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// `name:` from the file, or the file name without extension.
    pub name: String,
    /// The file, as the user named it (used in messages).
    pub path: PathBuf,
    /// Root for relative host paths and the default `files`: the git work
    /// tree holding the pipeline file, or else the file's directory.
    pub workspace: PathBuf,
    pub image: Image,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub defaults: Defaults,
    /// In file order.
    pub jobs: Vec<Job>,
}

/// Kernel and root file system of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Image {
    pub kernel: ImageRef,
    pub rootfs: ImageRef,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            kernel: ImageRef::Named(KERNEL_NAMES[0].to_string()),
            rootfs: ImageRef::Named(ROOTFS_NAMES[0].to_string()),
        }
    }
}

/// Settings every job inherits unless it sets its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    /// Budget of a whole job.
    pub timeout: Option<Duration>,
    /// Budget of each step.
    pub step_timeout: Option<Duration>,
    pub env: Env,
    pub workdir: Option<String>,
    pub shell: Option<String>,
    pub files: Option<Files>,
    pub artifacts: Vec<String>,
    pub reports: Option<ReportFiles>,
    /// `network:`; `None` when not set (no NIC).
    pub network: Option<Network>,
    /// `cache:`; `None` when not set.
    pub cache: Option<Vec<Cache>>,
    /// `services:`; `None` when not set.
    pub services: Option<Vec<Service>>,
}

/// What to copy into the guest before the first step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Files {
    /// `files: none` or `files: []`.
    Nothing,
    Entries(Vec<FileEntry>),
}

/// One job as written; a `matrix` turns it into several planned jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub name: String,
    pub steps: Vec<Step>,
    pub env: Env,
    pub workdir: Option<String>,
    pub shell: Option<String>,
    pub timeout: Option<Duration>,
    pub step_timeout: Option<Duration>,
    pub matrix: Vec<MatrixAxis>,
    pub files: Option<Files>,
    pub artifacts: Option<Vec<String>>,
    pub reports: Option<ReportFiles>,
    /// `network:`; `None` inherits `defaults`.
    pub network: Option<Network>,
    /// `cache:`; `None` inherits `defaults`, `Some(vec![])` (`cache: []`)
    /// turns them off: a job's list replaces `defaults`', as in GitLab.
    pub cache: Option<Vec<Cache>>,
    /// `services:`; `None` inherits `defaults`, `Some(vec![])`
    /// (`services: []`) turns them off: like `cache`, a job's list replaces
    /// `defaults`'.
    pub services: Option<Vec<Service>>,
    pub allow_failure: bool,
    /// Extra attempts after a failure, each in a fresh VM.
    pub retry: u32,
    pub image: Option<Image>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// One `cache:` entry: a volume that outlives the job's VM (see
/// `docs/pipeline-format.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    /// The key as the store names it: the literal, or `{prefix}-{hash}` of
    /// `key: { files }`, computed when the file was parsed.
    pub key: String,
    /// Keys to start from when `key` has nothing yet, in order.
    pub fallback_keys: Vec<String>,
    /// Guest paths, normalized; absolute, or relative to the job's `workdir`
    /// (resolved by [`Pipeline::job_workdir`] and the plan).
    pub paths: Vec<String>,
    pub policy: CachePolicy,
    pub when: CacheWhen,
    /// The file system's size in bytes: the most the cache can hold.
    pub size: u64,
}

/// One `services:` entry: a VM of its own that runs `run` next to the
/// job's, reached from the job by `name` (see `docs/pipeline-format.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The host name the job uses: one lowercase DNS label, unique in the
    /// job's list.
    pub name: String,
    /// `None` boots the pipeline's `image`.
    pub image: Option<Image>,
    /// Script started in the service's VM; it may stay in the foreground.
    pub run: String,
    /// Script polled in the service's VM until it exits 0.
    pub ready: Option<String>,
    /// How long `ready` may take to succeed.
    pub ready_timeout: Duration,
    pub env: Env,
    /// `None`: [`crate::pipeline::service::DEFAULT_SERVICE_MEMORY_MIB`].
    pub memory_mib: Option<u64>,
}

/// Whether a job reads the cache, writes it back, or both (GitLab's words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Read only: the job's writes are dropped.
    Pull,
    /// Start empty and write back: for the job that fills the cache.
    Push,
    #[default]
    PullPush,
}

impl CachePolicy {
    /// Whether the job starts from the stored content.
    pub fn pulls(self) -> bool {
        matches!(self, CachePolicy::Pull | CachePolicy::PullPush)
    }

    /// Whether the job's writes may become the next version.
    pub fn pushes(self) -> bool {
        matches!(self, CachePolicy::Push | CachePolicy::PullPush)
    }
}

/// After which job outcome a pushing cache is written back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheWhen {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

impl CacheWhen {
    pub fn matches(self, job_succeeded: bool) -> bool {
        match self {
            CacheWhen::OnSuccess => job_succeeded,
            CacheWhen::OnFailure => !job_succeeded,
            CacheWhen::Always => true,
        }
    }
}

/// One variable of a matrix and the values it takes, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixAxis {
    pub name: String,
    pub values: Vec<String>,
}

/// One command of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// `name:`, or the first line of the script / the argv joined.
    pub name: String,
    pub command: StepCommand,
    pub env: Env,
    pub workdir: Option<String>,
    pub shell: Option<String>,
    pub timeout: Option<Duration>,
    /// Test reports this step writes, read right after it.
    pub reports: Option<ReportFiles>,
    /// Extra attempts after a failure, in the same VM.
    pub retry: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepCommand {
    /// Run by the shell (`sh -c` unless `shell` says otherwise).
    Script(String),
    /// Executed directly, no shell.
    Argv(Vec<String>),
}

impl Pipeline {
    /// What `job` copies in before its first step: its `files`, else
    /// `defaults`', else the whole workspace; empty for `files: none`.
    pub fn job_files(&self, job: &Job) -> Vec<FileEntry> {
        match job.files.as_ref().or(self.defaults.files.as_ref()) {
            None => vec![FileEntry::workspace(&self.workspace)],
            Some(Files::Nothing) => Vec::new(),
            Some(Files::Entries(entries)) => entries.clone(),
        }
    }

    /// Where `job`'s steps run unless they say otherwise: its `workdir`,
    /// else `defaults`', else the guest workspace when `files` (from
    /// [`Pipeline::job_files`]) copies something there, else `/`.
    pub fn job_workdir(&self, job: &Job, files: &[FileEntry]) -> String {
        job.workdir
            .clone()
            .or_else(|| self.defaults.workdir.clone())
            .unwrap_or_else(|| default_workdir(files))
    }

    /// `job`'s services: its own `services`, else `defaults`'.
    pub fn job_services<'a>(&'a self, job: &'a Job) -> &'a [Service] {
        job.services
            .as_deref()
            .or(self.defaults.services.as_deref())
            .unwrap_or_default()
    }

    /// Every image the file names: the top-level one (also what jobs and
    /// services without an `image` boot), each job's and each service's.
    /// Repeats are left in.
    pub fn images(&self) -> impl Iterator<Item = &Image> {
        let services = self
            .defaults
            .services
            .iter()
            .chain(self.jobs.iter().filter_map(|job| job.services.as_ref()))
            .flatten()
            .filter_map(|service| service.image.as_ref());
        std::iter::once(&self.image)
            .chain(self.jobs.iter().filter_map(|job| job.image.as_ref()))
            .chain(services)
    }

    /// `job`'s caches: its own `cache`, else `defaults`'.
    pub fn job_caches<'a>(&'a self, job: &'a Job) -> &'a [Cache] {
        job.cache
            .as_deref()
            .or(self.defaults.cache.as_deref())
            .unwrap_or_default()
    }
}

/// Steps run in the guest workspace when something is copied there, else in `/`.
fn default_workdir(files: &[FileEntry]) -> String {
    let under_workspace = files.iter().any(|entry| {
        let to = entry.to.trim_end_matches('/');
        to == GUEST_WORKSPACE || to.starts_with(&format!("{GUEST_WORKSPACE}/"))
    });
    if under_workspace {
        GUEST_WORKSPACE.to_string()
    } else {
        "/".to_string()
    }
}

/// One matrix combination: `(variable, value)` pairs in axis order.
pub type Combination = Vec<(String, String)>;

impl Job {
    /// The jobs this job expands to: display name and matrix values, in
    /// order (the first axis varies slowest). Without a matrix: itself.
    pub fn expand(&self) -> Vec<(String, Combination)> {
        let mut combinations: Vec<Combination> = vec![Vec::new()];
        for axis in &self.matrix {
            combinations = combinations
                .iter()
                .flat_map(|prefix| {
                    axis.values.iter().map(move |value| {
                        let mut next = prefix.clone();
                        next.push((axis.name.clone(), value.clone()));
                        next
                    })
                })
                .collect();
        }
        combinations
            .into_iter()
            .map(|combo| (display_name(&self.name, &combo), combo))
            .collect()
    }

    /// How many jobs [`Job::expand`] yields, without building them.
    pub fn expansion_count(&self) -> usize {
        self.matrix
            .iter()
            .fold(1usize, |n, axis| n.saturating_mul(axis.values.len()))
    }
}

/// `name (k=v, k2=v2)`, or just `name` without matrix values.
pub fn display_name(name: &str, combination: &[(String, String)]) -> String {
    if combination.is_empty() {
        return name.to_string();
    }
    let values: Vec<String> = combination
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{name} ({})", values.join(", "))
}
