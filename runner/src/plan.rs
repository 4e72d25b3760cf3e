//! The plan: every job of a pipeline after matrix expansion, with all
//! defaults resolved, in a stable order (file order, then matrix order).
//!
//! Environment precedence, lowest first: runner built-ins (`RUNNER_JOB`),
//! `defaults.env`, the job's `env`, its matrix values, the step's `env`.

use std::path::PathBuf;
use std::time::Duration;

use agent_protocol::{Command, ExecRequest};

use crate::pipeline::cache::resolve_cache_path;
use crate::pipeline::service::{DEFAULT_SERVICE_MEMORY_MIB, SERVICE_VCPUS};
use crate::pipeline::{
    Cache, Combination, Env, FileEntry, Image, Network, Pipeline, ReportFiles, Service,
    StepCommand, DEFAULT_JOB_TIMEOUT,
};
pub use crate::pipeline::{CachePolicy, CacheWhen};

/// Jobs to run, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub pipeline_name: String,
    pub pipeline_path: PathBuf,
    pub workspace: PathBuf,
    pub jobs: Vec<PlannedJob>,
}

/// One VM's worth of work, fully resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedJob {
    /// Position in the unfiltered plan; stays the same when filtering.
    pub index: usize,
    /// Display name, unique: `test (os=alpine, n=1)`. Also the JUnit classname.
    pub name: String,
    /// The job's key in the file: `test`.
    pub job_name: String,
    /// Matrix values, in axis order; empty without a matrix.
    pub matrix: Combination,
    /// File-system-safe unique name for log directories: `03-test-os-alpine-n-1`.
    pub slug: String,
    pub image: Image,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Budget of the whole job: boot, file copies and all steps.
    pub timeout: Duration,
    /// Job-level environment (built-ins, defaults, job, matrix).
    pub env: Env,
    pub workdir: String,
    /// What to copy in before the first step; empty for `files: none`.
    pub files: Vec<FileEntry>,
    /// Guest paths or globs, relative to `workdir` unless absolute, copied
    /// out after the last step (also after a failure).
    pub artifacts: Vec<String>,
    /// Test reports read after the last step (the job's or `defaults`').
    pub reports: ReportFiles,
    /// The job's or `defaults`' `network`; [`Network::Off`] when neither says.
    pub network: Network,
    pub allow_failure: bool,
    /// Extra attempts after a failure, each in a fresh VM.
    pub retry: u32,
    /// The job's caches (its own, or `defaults`'), in file order: the VM's
    /// cache disks `cache0`, `cache1`, ...
    pub caches: Vec<PlannedCache>,
    /// The job's services (its own, or `defaults`'), in file order; each
    /// is a VM of its own, on a private segment shared only with the job.
    pub services: Vec<PlannedService>,
    pub steps: Vec<PlannedStep>,
}

impl PlannedJob {
    /// The images this job needs: its own, then its services'.
    pub fn images(&self) -> impl Iterator<Item = &Image> {
        std::iter::once(&self.image).chain(self.services.iter().map(|service| &service.image))
    }
}

/// One service of a job, resolved: what its VM boots and runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    /// The host name the job reaches it by; unique within the job.
    pub name: String,
    /// The service's `image`, else the pipeline's (not the job's: a
    /// service is its own machine, whatever the job boots).
    pub image: Image,
    /// Script started in the service's VM; it may stay in the foreground.
    pub run: String,
    /// Script polled in the service's VM until it exits 0; `None` when the
    /// service has no `ready`.
    pub ready: Option<String>,
    /// How long `ready` may take to succeed.
    pub ready_timeout: Duration,
    /// The service's own `env`, nothing else: neither the runner's
    /// built-ins (`RUNNER_JOB`, …) nor the job's or `defaults`' `env`,
    /// which are the job's settings, not its services'.
    pub env: Env,
    pub memory_mib: u64,
    pub vcpus: u32,
}

impl PlannedService {
    /// `service` of `pipeline`, its defaults filled in.
    fn new(service: &Service, pipeline: &Pipeline) -> PlannedService {
        PlannedService {
            name: service.name.clone(),
            image: service
                .image
                .clone()
                .unwrap_or_else(|| pipeline.image.clone()),
            run: service.run.clone(),
            ready: service.ready.clone(),
            ready_timeout: service.ready_timeout,
            env: service.env.clone(),
            memory_mib: service.memory_mib.unwrap_or(DEFAULT_SERVICE_MEMORY_MIB),
            vcpus: SERVICE_VCPUS,
        }
    }
}

/// One cache of a job, resolved: the store's key and the guest paths kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedCache {
    /// The literal key, or `{prefix}-{hash of the files}` of `key: { files }`.
    pub key: String,
    pub fallback_keys: Vec<String>,
    /// Absolute, normalized guest paths; none inside another.
    pub paths: Vec<String>,
    pub policy: CachePolicy,
    pub when: CacheWhen,
    /// Bytes.
    pub size: u64,
}

impl PlannedCache {
    /// `cache` for a job whose steps run in `workdir`.
    fn new(cache: &Cache, workdir: &str) -> PlannedCache {
        PlannedCache {
            key: cache.key.clone(),
            fallback_keys: cache.fallback_keys.clone(),
            // `Pipeline::parse` refused paths that do not resolve in this
            // very job; only a pipeline built by hand keeps one as written.
            paths: cache
                .paths
                .iter()
                .map(|path| resolve_cache_path(workdir, path).unwrap_or_else(|_| path.clone()))
                .collect(),
            policy: cache.policy,
            when: cache.when,
            size: cache.size,
        }
    }

    /// Whether the job's writes become the cache's next version, once the
    /// job has ended (`job_succeeded`: every step passed): the policy
    /// pushes, and `when` matches the outcome.
    pub fn commits(&self, job_succeeded: bool) -> bool {
        self.policy.pushes() && self.when.matches(job_succeeded)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// Position in the job, from 0.
    pub index: usize,
    pub name: String,
    pub command: StepCommand,
    /// Shell for a script; `None` is the agent's default, `/bin/sh`.
    pub shell: Option<String>,
    /// Complete environment for this step.
    pub env: Env,
    pub workdir: String,
    /// The step's own limit; the job's remaining budget applies as well.
    pub timeout: Option<Duration>,
    /// Test reports read right after this step.
    pub reports: ReportFiles,
    /// Extra attempts after a failure, in the same VM.
    pub retry: u32,
}

impl PlannedStep {
    /// The agent request for this step. `job_remaining` is what is left of
    /// the job's budget; the request's timeout is the smaller of the two.
    pub fn exec_request(&self, job_remaining: Option<Duration>) -> ExecRequest {
        let timeout = match (self.timeout, job_remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let command = match &self.command {
            StepCommand::Script(script) => Command::Script {
                script: script.clone(),
                shell: self.shell.clone().unwrap_or_default(),
            },
            StepCommand::Argv(argv) => Command::Argv(argv.clone()),
        };
        ExecRequest {
            command,
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: Some(self.workdir.clone()),
            timeout_ms: timeout.map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
            stdin: false,
        }
    }
}

/// A `--filter` that selects nothing, or is not a valid glob.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter `{filter}` matches no job; the jobs are: {}", available.join(", "))]
    NoMatch {
        filter: String,
        available: Vec<String>,
    },
    #[error("filter `{filter}` is not a valid glob: {message}")]
    BadPattern { filter: String, message: String },
}

impl Plan {
    /// Expands matrices and resolves defaults. Names are unique: the parser
    /// already rejected pipelines whose expansions collide.
    pub fn new(pipeline: &Pipeline) -> Plan {
        let defaults = &pipeline.defaults;
        let mut jobs = Vec::new();
        for job in &pipeline.jobs {
            let files = pipeline.job_files(job);
            let workdir = pipeline.job_workdir(job, &files);
            let caches: Vec<PlannedCache> = pipeline
                .job_caches(job)
                .iter()
                .map(|cache| PlannedCache::new(cache, &workdir))
                .collect();
            let services: Vec<PlannedService> = pipeline
                .job_services(job)
                .iter()
                .map(|service| PlannedService::new(service, pipeline))
                .collect();
            let shell = job.shell.clone().or_else(|| defaults.shell.clone());
            let step_timeout = job.step_timeout.or(defaults.step_timeout);
            for (name, matrix) in job.expand() {
                let mut env = Env::new();
                env.insert("RUNNER_JOB".to_string(), name.clone());
                env.extend(defaults.env.clone());
                env.extend(job.env.clone());
                env.extend(matrix.iter().cloned());
                let steps = job
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(index, step)| {
                        let mut step_env = env.clone();
                        step_env.extend(step.env.clone());
                        PlannedStep {
                            index,
                            name: step.name.clone(),
                            command: step.command.clone(),
                            shell: step.shell.clone().or_else(|| shell.clone()),
                            env: step_env,
                            workdir: step.workdir.clone().unwrap_or_else(|| workdir.clone()),
                            timeout: step.timeout.or(step_timeout),
                            reports: step.reports.clone().unwrap_or_default(),
                            retry: step.retry,
                        }
                    })
                    .collect();
                jobs.push(PlannedJob {
                    index: jobs.len(),
                    slug: String::new(),
                    name,
                    job_name: job.name.clone(),
                    matrix,
                    image: job.image.clone().unwrap_or_else(|| pipeline.image.clone()),
                    vcpus: job.vcpus.unwrap_or(pipeline.vcpus),
                    memory_mib: job.memory_mib.unwrap_or(pipeline.memory_mib),
                    timeout: job
                        .timeout
                        .or(defaults.timeout)
                        .unwrap_or(DEFAULT_JOB_TIMEOUT),
                    env,
                    workdir: workdir.clone(),
                    files: files.clone(),
                    artifacts: job
                        .artifacts
                        .clone()
                        .unwrap_or_else(|| defaults.artifacts.clone()),
                    reports: job
                        .reports
                        .clone()
                        .or_else(|| defaults.reports.clone())
                        .unwrap_or_default(),
                    network: job
                        .network
                        .clone()
                        .or_else(|| defaults.network.clone())
                        .unwrap_or_default(),
                    allow_failure: job.allow_failure,
                    retry: job.retry,
                    caches: caches.clone(),
                    services: services.clone(),
                    steps,
                });
            }
        }
        let width = jobs.len().to_string().len().max(2);
        for job in &mut jobs {
            job.slug = format!("{:0width$}-{}", job.index + 1, slugify(&job.name));
        }
        Plan {
            pipeline_name: pipeline.name.clone(),
            pipeline_path: pipeline.path.clone(),
            workspace: pipeline.workspace.clone(),
            jobs,
        }
    }

    /// Keeps the jobs whose display name contains one of `filters`, or
    /// matches it as a glob when it has `*`, `?` or `[`. No filters keeps
    /// everything. Every filter must select at least one job.
    pub fn filter(mut self, filters: &[String]) -> Result<Plan, FilterError> {
        if filters.is_empty() {
            return Ok(self);
        }
        let mut matchers = Vec::new();
        for filter in filters {
            matchers.push(Matcher::new(filter)?);
        }
        for matcher in &matchers {
            if !self.jobs.iter().any(|job| matcher.matches(&job.name)) {
                return Err(FilterError::NoMatch {
                    filter: matcher.text.clone(),
                    available: self.jobs.iter().map(|job| job.name.clone()).collect(),
                });
            }
        }
        self.jobs
            .retain(|job| matchers.iter().any(|matcher| matcher.matches(&job.name)));
        Ok(self)
    }

    pub fn job(&self, name: &str) -> Option<&PlannedJob> {
        self.jobs.iter().find(|job| job.name == name)
    }
}

struct Matcher {
    text: String,
    glob: Option<glob::Pattern>,
}

impl Matcher {
    fn new(text: &str) -> Result<Matcher, FilterError> {
        let glob = if text.contains(['*', '?', '[']) {
            Some(
                glob::Pattern::new(text).map_err(|err| FilterError::BadPattern {
                    filter: text.to_string(),
                    message: err.msg.to_string(),
                })?,
            )
        } else {
            None
        };
        Ok(Matcher {
            text: text.to_string(),
            glob,
        })
    }

    fn matches(&self, name: &str) -> bool {
        match &self.glob {
            Some(pattern) => pattern.matches(name),
            None => name.contains(&self.text),
        }
    }
}

/// `test (os=alpine, n=1)` → `test-os-alpine-n-1`.
fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches(['-', '.']).chars().take(60).collect();
    if slug.is_empty() {
        "job".to_string()
    } else {
        slug
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
