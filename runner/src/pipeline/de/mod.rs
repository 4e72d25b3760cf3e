//! The pipeline file's YAML, read with hand-written serde visitors.
//!
//! Derived `Deserialize` would validate types only; every semantic check
//! here happens while the node is being visited so that serde_norway can
//! attach its position (see `error.rs`). No `#[serde(untagged)]` or
//! buffering either: buffered content loses its position.

mod cache;
mod fields;
mod image;
mod network;
mod reports;
mod services;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use self::cache::CacheListSeed;
pub(crate) use self::cache::CacheTarget;
use self::fields::{
    next_key, non_empty, parse_bool, parse_guest_dir, parse_retry, parse_value, parse_vcpus,
    EnvSeed, FilesSeed, KeySeed, StringList, EXTENSION_KEY,
};
use self::image::ImageSeed;
use self::network::NetworkSeed;
use self::reports::ReportsSeed;
use self::services::ServiceListSeed;
use self::steps::{MatrixSeed, StepsSeed};
use super::error::located;
use super::scalars::{parse_duration, parse_memory};
use super::{
    Cache, Defaults, Env, Files, Image, Job, Network, ReportFiles, Service, MAX_MATRIX_JOBS,
};

/// The top level of a pipeline, before defaults are filled in.
pub(crate) struct Parsed {
    pub name: Option<String>,
    pub image: Option<Image>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub defaults: Defaults,
    pub jobs: Vec<Job>,
}

/// The jobs each cache list applies to, for the second reading of a
/// pipeline with caches (see `de/cache.rs`).
#[derive(Debug, Default)]
pub(crate) struct CacheTargets {
    /// The jobs without a `cache` of their own, which use `defaults`'.
    pub defaults: Vec<CacheTarget>,
    /// The jobs with a `cache` of their own, by name.
    pub jobs: BTreeMap<String, CacheTarget>,
}

pub(crate) fn parse(
    source: &str,
    workspace: &Path,
    targets: &CacheTargets,
) -> Result<Parsed, serde_norway::Error> {
    if source.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Err(de::Error::custom(
            "the pipeline file is empty: it needs at least a `jobs` mapping",
        ));
    }
    TopSeed { workspace, targets }.deserialize(serde_norway::Deserializer::from_str(source))
}

/// Settings shared by `defaults` and each job.
#[derive(Default)]
struct Settings {
    timeout: Option<Duration>,
    step_timeout: Option<Duration>,
    env: Env,
    workdir: Option<String>,
    shell: Option<String>,
    files: Option<Files>,
    artifacts: Option<Vec<String>>,
    reports: Option<ReportFiles>,
    network: Option<Network>,
    cache: Option<Vec<Cache>>,
    services: Option<Vec<Service>>,
}

const SETTINGS_KEYS: [&str; 11] = [
    "timeout",
    "step_timeout",
    "env",
    "workdir",
    "shell",
    "files",
    "artifacts",
    "reports",
    "network",
    "cache",
    "services",
];

/// Reads the value of `key` into `settings`; false when `key` is not a setting.
fn read_setting<'de, A: MapAccess<'de>>(
    key: &str,
    map: &mut A,
    settings: &mut Settings,
    workspace: &Path,
    context: &str,
    cache_targets: &[CacheTarget],
) -> Result<bool, A::Error> {
    match key {
        "timeout" => settings.timeout = Some(parse_value(map, "a duration", &parse_duration)?),
        "step_timeout" => {
            settings.step_timeout = Some(parse_value(map, "a duration", &parse_duration)?)
        }
        "env" => settings.env = map.next_value_seed(EnvSeed { context })?,
        "workdir" => settings.workdir = Some(parse_value(map, "a guest path", &parse_guest_dir)?),
        "shell" => {
            let what = format!("`shell` {context}");
            settings.shell = Some(parse_value(map, "a shell path", &non_empty(what))?)
        }
        "files" => settings.files = Some(map.next_value_seed(FilesSeed { workspace, context })?),
        "artifacts" => {
            settings.artifacts = Some(map.next_value_seed(StringList {
                what: "`artifacts`",
                allow_empty: true,
            })?)
        }
        "reports" => settings.reports = Some(map.next_value_seed(ReportsSeed { context })?),
        "network" => settings.network = Some(map.next_value_seed(NetworkSeed { context })?),
        "cache" => {
            settings.cache = Some(map.next_value_seed(CacheListSeed {
                workspace,
                context,
                targets: cache_targets,
            })?)
        }
        "services" => {
            settings.services = Some(map.next_value_seed(ServiceListSeed { workspace, context })?)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `image`, `vcpus` and `memory`: at the top level and per job.
#[derive(Default)]
struct Machine {
    image: Option<Image>,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
}

fn read_machine<'de, A: MapAccess<'de>>(
    key: &str,
    map: &mut A,
    machine: &mut Machine,
    workspace: &Path,
    context: &str,
) -> Result<bool, A::Error> {
    match key {
        "image" => machine.image = Some(map.next_value_seed(ImageSeed { workspace, context })?),
        "vcpus" => machine.vcpus = Some(parse_value(map, "a number of vCPUs", &parse_vcpus)?),
        "memory" => machine.memory_mib = Some(parse_value(map, "a memory size", &parse_memory)?),
        _ => return Ok(false),
    }
    Ok(true)
}

struct TopSeed<'a> {
    workspace: &'a Path,
    targets: &'a CacheTargets,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Parsed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pipeline: a mapping with `jobs`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        const KEYS: &[&str] = &["name", "image", "vcpus", "memory", "defaults", "jobs"];
        let context = "at the top level";
        let (mut seen, mut machine) = (Vec::new(), Machine::default());
        let (mut name, mut defaults, mut jobs) = (None, Defaults::default(), None);
        loop {
            let key = map.next_key_seed(KeySeed {
                valid: KEYS,
                context,
                seen: &mut seen,
                exclusive: &[],
                extensions: true,
            })?;
            let Some(key) = key else { break };
            if key == EXTENSION_KEY {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            if read_machine(key, &mut map, &mut machine, self.workspace, "")? {
                continue;
            }
            match key {
                "name" => {
                    name = Some(parse_value(
                        &mut map,
                        "a name",
                        &non_empty("`name`".into()),
                    )?)
                }
                "defaults" => {
                    defaults = map.next_value_seed(DefaultsSeed {
                        workspace: self.workspace,
                        targets: &self.targets.defaults,
                    })?
                }
                _ => {
                    jobs = Some(map.next_value_seed(JobsSeed {
                        workspace: self.workspace,
                        targets: &self.targets.jobs,
                    })?)
                }
            }
        }
        let Some(jobs) = jobs else {
            return Err(located("the pipeline has no `jobs` mapping"));
        };
        Ok(Parsed {
            name,
            image: machine.image,
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
            defaults,
            jobs,
        })
    }
}

struct DefaultsSeed<'a> {
    workspace: &'a Path,
    targets: &'a [CacheTarget],
}

impl<'de> DeserializeSeed<'de> for DefaultsSeed<'_> {
    type Value = Defaults;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Defaults, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DefaultsSeed<'_> {
    type Value = Defaults;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of default settings")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Defaults, A::Error> {
        let context = "in `defaults`";
        let (mut seen, mut settings) = (Vec::new(), Settings::default());
        while let Some(key) = next_key(&mut map, &SETTINGS_KEYS, context, &mut seen, &[])? {
            read_setting(
                key,
                &mut map,
                &mut settings,
                self.workspace,
                context,
                self.targets,
            )?;
        }
        Ok(Defaults {
            timeout: settings.timeout,
            step_timeout: settings.step_timeout,
            env: settings.env,
            workdir: settings.workdir,
            shell: settings.shell,
            files: settings.files,
            artifacts: settings.artifacts.unwrap_or_default(),
            reports: settings.reports,
            network: settings.network,
            cache: settings.cache,
            services: settings.services,
        })
    }
}

/// `jobs:`, a mapping of job names to jobs, kept in file order.
struct JobsSeed<'a> {
    workspace: &'a Path,
    targets: &'a BTreeMap<String, CacheTarget>,
}

impl<'de> DeserializeSeed<'de> for JobsSeed<'_> {
    type Value = Vec<Job>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Job>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for JobsSeed<'_> {
    type Value = Vec<Job>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of job names to jobs")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Job>, A::Error> {
        let mut jobs: Vec<Job> = Vec::new();
        // Display names of all expanded jobs so far, to catch collisions.
        let mut taken = BTreeSet::new();
        loop {
            let key = map.next_key_seed(fields::Parse {
                what: "a job name",
                parse: &|name: &str| {
                    check_job_name(name)?;
                    if jobs.iter().any(|job| job.name == name) {
                        return Err(format!("duplicate job `{name}`"));
                    }
                    Ok(name.to_string())
                },
            })?;
            let Some(name) = key else { break };
            let cache_targets = self.targets.get(&name).map(std::slice::from_ref);
            let job = map.next_value_seed(JobSeed {
                name,
                workspace: self.workspace,
                taken: &mut taken,
                cache_targets: cache_targets.unwrap_or_default(),
            })?;
            jobs.push(job);
        }
        if jobs.is_empty() {
            return Err(located("`jobs` is empty: define at least one job"));
        }
        Ok(jobs)
    }
}

fn check_job_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a job name must not be empty".to_string());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("job name {name:?} contains control characters"));
    }
    Ok(())
}

struct JobSeed<'a> {
    name: String,
    workspace: &'a Path,
    taken: &'a mut BTreeSet<String>,
    /// This job, when it has a `cache` and the reading is the second.
    cache_targets: &'a [CacheTarget],
}

impl<'de> DeserializeSeed<'de> for JobSeed<'_> {
    type Value = Job;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Job, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for JobSeed<'_> {
    type Value = Job;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "job `{}`: a mapping with `steps`", self.name)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Job, A::Error> {
        const KEYS: &[&str] = &[
            "steps",
            "matrix",
            "allow_failure",
            "image",
            "vcpus",
            "memory",
            "timeout",
            "step_timeout",
            "env",
            "workdir",
            "shell",
            "files",
            "artifacts",
            "reports",
            "retry",
            "network",
            "cache",
            "services",
        ];
        let name = self.name;
        let context = format!("in job `{name}`");
        let (mut seen, mut settings, mut machine) =
            (Vec::new(), Settings::default(), Machine::default());
        let (mut steps, mut matrix, mut allow_failure, mut retry) = (None, Vec::new(), false, 0);
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, &[])? {
            if read_setting(
                key,
                &mut map,
                &mut settings,
                self.workspace,
                &context,
                self.cache_targets,
            )? || read_machine(key, &mut map, &mut machine, self.workspace, &context)?
            {
                continue;
            }
            match key {
                "steps" => steps = Some(map.next_value_seed(StepsSeed { job: &name })?),
                "matrix" => matrix = map.next_value_seed(MatrixSeed { job: &name })?,
                "retry" => retry = parse_value(&mut map, "a number of retries", &parse_retry)?,
                _ => allow_failure = parse_value(&mut map, "true or false", &parse_bool)?,
            }
        }
        let Some(steps) = steps else {
            return Err(located(format!("job `{name}` has no `steps`")));
        };
        let job = Job {
            name,
            steps,
            env: settings.env,
            workdir: settings.workdir,
            shell: settings.shell,
            timeout: settings.timeout,
            step_timeout: settings.step_timeout,
            matrix,
            files: settings.files,
            artifacts: settings.artifacts,
            reports: settings.reports,
            network: settings.network,
            cache: settings.cache,
            services: settings.services,
            allow_failure,
            retry,
            image: machine.image,
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
        };
        if job.expansion_count() > MAX_MATRIX_JOBS {
            return Err(located(format!(
                "the matrix of job `{}` expands to {} jobs, more than the limit of {MAX_MATRIX_JOBS}",
                job.name,
                job.expansion_count()
            )));
        }
        for (display, _) in job.expand() {
            if !self.taken.insert(display.clone()) {
                return Err(located(format!(
                    "job `{}` expands to `{display}`, a name another job already has",
                    job.name
                )));
            }
        }
        Ok(job)
    }
}
