//! What the operator grants a pipeline beyond its clean room, and the
//! check that a plan asks for no more (docs/security.md).
//!
//! A pipeline comes from a pull request. It may *ask* for host files
//! (`files:` or an `image:` path outside its workspace), for a network
//! (`network:`), for big images and caches (`size:`); only the operator
//! *grants* them, from one of two places. The operator also names the
//! cache scope a run reads and writes, and whether it is protected (the
//! pipeline never does: a pull request would poison the caches of
//! protected branches).
//! - **A machine policy**, the file [`MACHINE_POLICY`], owned by root and
//!   writable by nobody else. When it exists it is the grant, for every run
//!   on the machine, and a command-line grant beyond it is refused: in
//!   GitLab CI or a Jenkinsfile the pull request writes the command line
//!   and the job's environment too, so neither may widen what the owner of
//!   the machine decided. (So no environment variable grants anything.)
//! - **Elsewhere, the command line**: `--allow-host-files`,
//!   `--allow-network[=DEST,...]`, `--allow-setup-network`,
//!   `--max-image-size`, `--cache-protected`, `--max-cache-size`, or the
//!   same keys in a `--policy FILE`. `--cache-scope` (or
//!   `RUNNER_CACHE_SCOPE`: a name grants nothing) picks the scope.
//!
//! A job that asks for more than it was granted fails before anything
//! boots, with one line naming what would grant it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use runner_machine::network::is_public;

use crate::pipeline::cache::check_cache_key;
use crate::pipeline::network::parse_allow_entry;
use crate::pipeline::{
    host_scope, parse_byte_size, AllowEntry, Image, ImageRef, Network, SpecBase,
};
use crate::plan::{Plan, PlannedCache};
use runner_machine::network::{Destination, Nic, Reach};

pub use runner_machine::images::{DEFAULT_MAX_IMAGE_SIZE, DEFAULT_SETUP_TIMEOUT};
pub use runner_machine::MACHINE_POLICY;

/// The keyword for "any public address" in a network grant.
pub const PUBLIC: &str = "public";
/// The cache scope of a run that names none.
pub const DEFAULT_CACHE_SCOPE: &str = "default";
/// The largest cache `size` granted when nothing says.
pub const DEFAULT_MAX_CACHE_SIZE: u64 = 32 << 30;

/// What a run may do beyond the clean room.
#[derive(Clone, Debug, PartialEq)]
pub struct Grants {
    /// Host files outside the workspace, in `files:` and image paths.
    pub host_files: bool,
    pub network: NetworkGrant,
    /// Image `setup` scripts may use the network.
    pub setup_network: bool,
    /// The largest `size` an image spec may have, in bytes.
    pub max_image_size: u64,
    /// Which caches the run's jobs read and write.
    pub cache: CacheGrant,
    /// The largest `size` a cache may have, in bytes.
    pub max_cache_size: u64,
    /// The most the whole cache store may take on disk; after a run, least
    /// recently used versions go until it fits. `None`: no cap (every key
    /// is still capped by `max_cache_size`, but a pipeline names its keys).
    pub cache_store_max: Option<u64>,
    /// Where the grants came from; refusals name it.
    pub source: Source,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            host_files: false,
            network: NetworkGrant::default(),
            setup_network: false,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            cache: CacheGrant::default(),
            max_cache_size: DEFAULT_MAX_CACHE_SIZE,
            cache_store_max: None,
            source: Source::CommandLine,
        }
    }
}

/// The caches a run's jobs see: the keys of one scope. A protected scope is
/// written only by runs the operator trusts (a protected branch's); any
/// other run may read its keys through `fallback_keys`, never write them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheGrant {
    /// A name like a cache key: `main`, GitLab's `$CI_COMMIT_REF_SLUG`.
    pub scope: String,
    pub protected: bool,
}

impl Default for CacheGrant {
    fn default() -> Self {
        CacheGrant {
            scope: DEFAULT_CACHE_SCOPE.to_string(),
            protected: false,
        }
    }
}

fn parse_cache_scope(text: &str) -> Result<String, String> {
    check_cache_key(text, "cache scope")?;
    Ok(text.to_string())
}

/// The cache flags of `runner test`: the scope is a name, so the
/// environment may set it; protection and size are grants, so it may not.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CacheArgs {
    /// The cache scope jobs read and write (default `default`), e.g.
    /// `--cache-scope "$CI_COMMIT_REF_SLUG"`; a name like a cache key.
    #[arg(long, value_name = "NAME", env = "RUNNER_CACHE_SCOPE", value_parser = parse_cache_scope)]
    pub cache_scope: Option<String>,
    /// The scope is protected: only runs given this grant (a protected
    /// branch's) write its keys; other runs may read them only through
    /// `fallback_keys`. Never pass it for a pull request.
    #[arg(long)]
    pub cache_protected: bool,
    /// The largest `size` a cache may ask for (`8G`; default 32G).
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub max_cache_size: Option<u64>,
    /// After the run, evict least recently used cache versions until the
    /// whole store takes at most SIZE on disk (`100G`).
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub cache_store_max_size: Option<u64>,
}

/// Where a job's network may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkGrant {
    /// Any public address (see `runner_machine::network::is_public`).
    pub public: bool,
    /// These destinations too, whatever their address: the only way to the
    /// host's loopback (`127.0.0.1:PORT`, reached at the guest's gateway),
    /// private ranges and link-local addresses.
    pub destinations: Vec<AllowEntry>,
}

impl NetworkGrant {
    /// Whether a job may have a NIC at all.
    pub fn any(&self) -> bool {
        self.public || !self.destinations.is_empty()
    }

    fn parse(values: &[String]) -> Result<NetworkGrant, String> {
        let mut grant = NetworkGrant::default();
        for value in values.iter().flat_map(|v| v.split(',')) {
            match value.trim() {
                "" => {}
                PUBLIC => grant.public = true,
                dest => {
                    let entry = parse_allow_entry(dest).map_err(|e| {
                        format!("{e}; a network grant is `{PUBLIC}` or host:port entries")
                    })?;
                    if !grant.destinations.contains(&entry) {
                        grant.destinations.push(entry);
                    }
                }
            }
        }
        Ok(grant)
    }

    /// Whether `entry` of a job's `allow` list is within this grant.
    fn covers(&self, entry: &AllowEntry) -> bool {
        self.names(entry) || (self.public && !names_a_special_address(entry))
    }

    /// Whether the operator named `entry` (or a wildcard over it): then
    /// its answers may be the host or a private address.
    fn names(&self, entry: &AllowEntry) -> bool {
        self.destinations.iter().any(|d| d.covers(entry))
    }

    /// Whether `other` grants nothing this one does not.
    fn includes(&self, other: &NetworkGrant) -> bool {
        (self.public || !other.public) && other.destinations.iter().all(|d| self.covers(d))
    }
}

/// How an open network was written, for a refusal.
fn open_network(network: &Network) -> &'static str {
    match network {
        Network::Audit => "network: { audit: true }",
        _ => "network: true",
    }
}

/// A literal address that is not public, or `localhost`: names are
/// resolved by the guest, and the filter keeps their answers to public
/// addresses then.
fn names_a_special_address(entry: &AllowEntry) -> bool {
    entry.host == "localhost" || entry.host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip))
}

/// Where grants came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Machine(PathBuf),
}

/// The grant flags of every command that runs a pipeline's jobs or builds
/// its images.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GrantArgs {
    /// Let `files:` and `image:` paths reach host files outside the
    /// workspace (`~/...`, `/etc/...`, or through a symlink). A pipeline
    /// from a pull request must not read the host.
    #[arg(long)]
    pub allow_host_files: bool,
    /// Let jobs have a network. Alone (or `=public`): any public address.
    /// With destinations (`--allow-network=public,127.0.0.1:8080`): those
    /// too, or only those; the only way to the host's loopback, private or
    /// link-local addresses. A job still lists what it needs in `network:`.
    #[arg(
        long,
        value_name = "DEST,...",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = PUBLIC
    )]
    pub allow_network: Vec<String>,
    /// Let image `setup` scripts use the network (they run without one).
    #[arg(long)]
    pub allow_setup_network: bool,
    /// The largest `size` an image spec may ask for (`16G`, `500M`).
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub max_image_size: Option<u64>,
    /// Grants from a policy file (the keys of /etc/runner/policy.yml,
    /// docs/security.md) instead of, or besides, the flags.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

impl GrantArgs {
    /// The run's grants: the machine policy's if there is one (refusing
    /// flags that ask beyond it), else the command line's.
    pub fn resolve(&self) -> Result<Grants, String> {
        self.resolve_with(&CacheArgs::default(), Path::new(MACHINE_POLICY))
    }

    /// [`GrantArgs::resolve`] for a command that runs jobs with caches.
    pub fn resolve_with_caches(&self, cache: &CacheArgs) -> Result<Grants, String> {
        self.resolve_with(cache, Path::new(MACHINE_POLICY))
    }

    fn resolve_with(&self, cache: &CacheArgs, machine_policy: &Path) -> Result<Grants, String> {
        let mut asked = match &self.policy {
            Some(path) => PolicyFile::read(path)?.grants(),
            None => Grants::default(),
        };
        asked.host_files |= self.allow_host_files;
        asked.setup_network |= self.allow_setup_network;
        let flags = NetworkGrant::parse(&self.allow_network)
            .map_err(|e| format!("--allow-network: {e}"))?;
        asked.network.public |= flags.public;
        for dest in flags.destinations {
            if !asked.network.destinations.contains(&dest) {
                asked.network.destinations.push(dest);
            }
        }
        if let Some(size) = self.max_image_size {
            asked.max_image_size = size;
        }
        if let Some(scope) = &cache.cache_scope {
            asked.cache.scope = scope.clone();
        }
        asked.cache.protected |= cache.cache_protected;
        if let Some(size) = cache.max_cache_size {
            asked.max_cache_size = size;
        }
        if let Some(size) = cache.cache_store_max_size {
            asked.cache_store_max = Some(size);
        }
        let Some(machine) = PolicyFile::read_machine(machine_policy)? else {
            return Ok(asked);
        };
        let mut granted = machine.grants();
        granted.source = Source::Machine(machine_policy.to_path_buf());
        let beyond = |what: &str| {
            format!(
                "{what} goes beyond this machine's policy {}; only its owner can grant more",
                machine_policy.display()
            )
        };
        if asked.host_files && !granted.host_files {
            return Err(beyond("--allow-host-files"));
        }
        if asked.setup_network && !granted.setup_network {
            return Err(beyond("--allow-setup-network"));
        }
        if !granted.network.includes(&asked.network) {
            return Err(beyond("--allow-network"));
        }
        if self
            .max_image_size
            .is_some_and(|s| s > granted.max_image_size)
        {
            return Err(beyond("--max-image-size"));
        }
        if asked.cache.protected && !granted.cache.protected {
            return Err(beyond("--cache-protected"));
        }
        match cache.max_cache_size {
            Some(size) if size > granted.max_cache_size => return Err(beyond("--max-cache-size")),
            // Asking for less than the machine allows is honoured.
            Some(size) => granted.max_cache_size = size,
            None => {}
        }
        // A cap is the machine's to loosen: a smaller one is honoured.
        match (granted.cache_store_max, cache.cache_store_max_size) {
            (Some(cap), Some(size)) if size > cap => return Err(beyond("--cache-store-max-size")),
            (_, Some(size)) => granted.cache_store_max = Some(size),
            _ => {}
        }
        // The machine's scope, if it names one, is the scope; otherwise the
        // command line's names it (a name grants nothing).
        match (&machine.cache_scope, &cache.cache_scope) {
            (Some(fixed), Some(asked)) if fixed != asked => {
                return Err(format!(
                    "--cache-scope {asked} is not this machine's scope: its policy {} sets `cache_scope: {fixed}`",
                    machine_policy.display()
                ))
            }
            (Some(_), _) => {}
            (None, _) => granted.cache.scope = asked.cache.scope,
        }
        Ok(granted)
    }
}

/// A policy file: YAML with these keys, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    host_files: bool,
    /// `false`, `true` (= `public`), `public`, or a list of `public` and
    /// host:port entries.
    #[serde(default)]
    network: Option<PolicyNetwork>,
    #[serde(default)]
    setup_network: bool,
    #[serde(default)]
    max_image_size: Option<String>,
    #[serde(default)]
    cache_scope: Option<String>,
    #[serde(default)]
    cache_protected: bool,
    #[serde(default)]
    max_cache_size: Option<String>,
    #[serde(default)]
    cache_store_max_size: Option<String>,
    #[serde(skip)]
    parsed: Option<Parsed>,
}

/// A policy file's values that need parsing.
#[derive(Clone, Debug)]
struct Parsed {
    network: NetworkGrant,
    max_image_size: u64,
    max_cache_size: u64,
    cache_store_max: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum PolicyNetwork {
    Switch(bool),
    One(String),
    List(Vec<String>),
}

impl PolicyFile {
    fn read(path: &Path) -> Result<PolicyFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the policy {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("the policy {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<PolicyFile, String> {
        let mut file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| e.to_string())?
        };
        let values = match &file.network {
            None | Some(PolicyNetwork::Switch(false)) => vec![],
            Some(PolicyNetwork::Switch(true)) => vec![PUBLIC.to_string()],
            Some(PolicyNetwork::One(one)) => vec![one.clone()],
            Some(PolicyNetwork::List(list)) => list.clone(),
        };
        let network = NetworkGrant::parse(&values).map_err(|e| format!("network: {e}"))?;
        let size = |text: &Option<String>, key: &str, default: u64| match text {
            Some(text) => parse_byte_size(text).map_err(|e| format!("{key}: {e}")),
            None => Ok(default),
        };
        let max_image_size = size(
            &file.max_image_size,
            "max_image_size",
            DEFAULT_MAX_IMAGE_SIZE,
        )?;
        let max_cache_size = size(
            &file.max_cache_size,
            "max_cache_size",
            DEFAULT_MAX_CACHE_SIZE,
        )?;
        if let Some(scope) = &file.cache_scope {
            check_cache_key(scope, "cache scope").map_err(|e| format!("cache_scope: {e}"))?;
        }
        let cache_store_max = match &file.cache_store_max_size {
            Some(text) => {
                Some(parse_byte_size(text).map_err(|e| format!("cache_store_max_size: {e}"))?)
            }
            None => None,
        };
        file.parsed = Some(Parsed {
            network,
            max_image_size,
            max_cache_size,
            cache_store_max,
        });
        Ok(file)
    }

    /// The machine policy at `path`, if there is one; it must be root's and
    /// writable by nobody else, or nothing runs.
    fn read_machine(path: &Path) -> Result<Option<PolicyFile>, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading the policy {}: {e}", path.display())),
        };
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "the policy {} must be owned by root and writable by nobody else (it is uid {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
        Self::read(path).map(Some)
    }

    fn grants(&self) -> Grants {
        let defaults = Grants::default();
        let parsed = self.parsed.clone().unwrap_or(Parsed {
            network: defaults.network,
            max_image_size: defaults.max_image_size,
            max_cache_size: defaults.max_cache_size,
            cache_store_max: defaults.cache_store_max,
        });
        Grants {
            host_files: self.host_files,
            network: parsed.network,
            setup_network: self.setup_network,
            max_image_size: parsed.max_image_size,
            cache: CacheGrant {
                scope: self.cache_scope.clone().unwrap_or(defaults.cache.scope),
                protected: self.cache_protected,
            },
            max_cache_size: parsed.max_cache_size,
            cache_store_max: parsed.cache_store_max,
            source: Source::CommandLine,
        }
    }
}

impl Grants {
    /// What image builds may do under these grants.
    pub fn build_limits(&self) -> runner_machine::images::BuildLimits {
        runner_machine::images::BuildLimits {
            max_bytes: self.max_image_size,
            setup_network: self.setup_network,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
        }
    }

    /// What would grant `flag`'s permission, for a refusal.
    fn how_to_grant(&self, flag: &str) -> String {
        match &self.source {
            Source::CommandLine => format!("pass {flag} to grant it"),
            Source::Machine(path) => {
                format!("this machine's policy {} does not grant it", path.display())
            }
        }
    }

    /// Refuses a plan with a job that asks for more than these grants.
    pub fn check_plan(&self, plan: &Plan) -> Result<(), String> {
        for job in &plan.jobs {
            let in_job = |e: String| format!("job `{}`: {e}", job.name);
            if !self.host_files {
                host_scope::check_entries(&job.files, &plan.workspace)
                    .map_err(|e| in_job(format!("{e}")))?;
            }
            self.check_image(&job.image, &plan.workspace)
                .map_err(in_job)?;
            // A service's image spec is built on this host like the job's.
            for service in &job.services {
                self.check_image(&service.image, &plan.workspace)
                    .map_err(|e| in_job(format!("service `{}`: {e}", service.name)))?;
            }
            self.check_network(&job.network).map_err(in_job)?;
            self.check_caches(&job.caches).map_err(in_job)?;
        }
        Ok(())
    }

    /// Refuses a cache bigger than the grant.
    pub fn check_caches(&self, caches: &[PlannedCache]) -> Result<(), String> {
        for cache in caches {
            if cache.size > self.max_cache_size {
                return Err(format!(
                    "cache `{}` has `size: {}`, more than the {} allowed; {}",
                    cache.key,
                    show_size(cache.size),
                    show_size(self.max_cache_size),
                    self.how_to_grant("--max-cache-size")
                ));
            }
        }
        Ok(())
    }

    /// Refuses an image whose paths leave `workspace` without a grant, or
    /// whose spec asks for more than the grants allow.
    pub fn check_image(&self, image: &Image, workspace: &Path) -> Result<(), String> {
        if !self.host_files {
            let flag = self.how_to_grant(host_scope::ALLOW_FLAG);
            for (what, path) in image_paths(image) {
                check_inside(what, path, workspace).map_err(|e| format!("{e}; {flag}"))?;
            }
            host_scope::check_image_files(&image.rootfs, workspace).map_err(|e| e.to_string())?;
        }
        if let ImageRef::Spec(spec) = &image.rootfs {
            if let Some(mib) = spec.size_mib {
                if mib << 20 > self.max_image_size {
                    return Err(format!(
                        "image `size: {}M` is more than the {}M allowed; {}",
                        mib,
                        self.max_image_size >> 20,
                        self.how_to_grant("--max-image-size")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The NIC a job with `network` gets under these grants (which
    /// [`Grants::check_network`] found it within): an open network reaches
    /// public addresses and what the operator named; an `allow` list its
    /// entries, named ones (the operator's) wherever they are.
    pub fn nic(&self, network: &Network) -> Nic {
        let dest = |entry: &AllowEntry, named_by_operator: bool| Destination {
            host: entry.host.clone(),
            port: entry.port,
            named_by_operator,
        };
        match network {
            Network::Off => Nic::None,
            Network::Open | Network::Audit => Nic::User(Reach {
                public: true,
                destinations: self
                    .network
                    .destinations
                    .iter()
                    .map(|e| dest(e, true))
                    .collect(),
            }),
            Network::Allow(entries) => Nic::User(Reach {
                public: false,
                destinations: entries
                    .iter()
                    .map(|e| dest(e, self.network.names(e)))
                    .collect(),
            }),
        }
    }

    /// Refuses a `network:` the grants do not cover.
    pub fn check_network(&self, network: &Network) -> Result<(), String> {
        match network {
            Network::Off => Ok(()),
            Network::Open | Network::Audit if self.network.public => Ok(()),
            Network::Open | Network::Audit if self.network.any() => Err(format!(
                "`{}` asks for every address, and only {} {} granted; list what the job needs in `network: {{ allow: [...] }}`",
                open_network(network),
                self.granted_destinations(),
                if self.network.destinations.len() == 1 { "is" } else { "are" }
            )),
            Network::Open | Network::Audit => Err(format!(
                "`{}` needs the network; {}",
                open_network(network),
                self.how_to_grant("--allow-network")
            )),
            Network::Allow(entries) => {
                for entry in entries {
                    if self.network.covers(entry) {
                        continue;
                    }
                    let flag = format!("--allow-network={entry}");
                    return Err(if names_a_special_address(entry) {
                        format!(
                            "`allow: {entry}` is the host's loopback or a private address, which only a grant naming it opens; {}",
                            self.how_to_grant(&flag)
                        )
                    } else {
                        format!("`allow: {entry}` is not granted; {}", self.how_to_grant(&flag))
                    });
                }
                Ok(())
            }
        }
    }

    fn granted_destinations(&self) -> String {
        let listed: Vec<String> = self
            .network
            .destinations
            .iter()
            .map(ToString::to_string)
            .collect();
        listed.join(", ")
    }
}

/// `8G`, `512M`, or bytes: the largest unit that divides `bytes`.
fn show_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// The host paths an image names: a kernel or rootfs file, an OCI base.
fn image_paths(image: &Image) -> Vec<(&'static str, &Path)> {
    let mut paths = Vec::new();
    if let ImageRef::Path(path) = &image.kernel {
        paths.push(("kernel", path.as_path()));
    }
    match &image.rootfs {
        ImageRef::Path(path) => paths.push(("rootfs", path.as_path())),
        ImageRef::Spec(spec) => {
            if let SpecBase::Oci(path) = &spec.base {
                paths.push(("oci", path.as_path()));
            }
        }
        ImageRef::Named(_) => {}
    }
    paths
}

/// `path` is inside `workspace`, lexically and once symlinks are resolved.
fn check_inside(what: &str, path: &Path, workspace: &Path) -> Result<(), String> {
    let outside = || {
        format!(
            "image `{what}: {}` is outside the workspace {}",
            path.display(),
            workspace.display()
        )
    };
    if !host_scope::lexically_inside(path, workspace) {
        return Err(outside());
    }
    // A missing file is reported when the image is looked for.
    let (Ok(real), Ok(real_workspace)) = (path.canonicalize(), workspace.canonicalize()) else {
        return Ok(());
    };
    if !real.starts_with(&real_workspace) {
        return Err(format!(
            "image `{what}: {}` leads out of the workspace {} through a symlink",
            path.display(),
            workspace.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
