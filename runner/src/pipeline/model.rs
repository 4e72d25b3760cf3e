//! The pipeline as the rest of the runner sees it: a parsed, validated
//! file (jobs, steps, defaults, images) with nothing left to check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::files::FileEntry;
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
    pub allow_failure: bool,
    /// Extra attempts after a failure, each in a fresh VM.
    pub retry: u32,
    pub image: Option<Image>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
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
