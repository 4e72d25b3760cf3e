//! `runner test`: a pipeline file → one fresh VM per job → JUnit, an HTML
//! report and the console.
//!
//! Exit codes: 0 when everything passed (allowed failures excepted), 1 when
//! a test failed, 2 for usage or configuration errors, 130 after Ctrl-C.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::failure::Failure;
use super::vm_args::{BackendChoice, ColdArg};
use super::{listing, out_dir};
use crate::grants::{CacheArgs, GrantArgs, Grants};
use crate::pipeline::parse_duration;
use crate::pipeline::{parse_byte_size, Pipeline};
use crate::plan::{Plan, PlannedJob};
use crate::report::events;
use crate::report::html;
use crate::report::{
    ConsoleReporter, HtmlReporter, JsonEvents, JunitOptions, JunitReporter, Reporters,
};
use crate::results::DEFAULT_OUTPUT_LIMIT;
use crate::scheduler::{self, Options, ResolvedImages};
use crate::session::{ArtifactLimits, DEFAULT_MAX_ENTRIES};
use crate::shard::{self, Shard, Timings};
use runner_machine::caches::CacheStore;
use runner_machine::images::manage::human_bytes;
use runner_machine::images::Images;

#[derive(Args)]
pub struct TestArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Most VMs running at once (default: the number of CPUs), a job's
    /// services' VMs included (a job needing more runs alone). Host memory
    /// limits it further.
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Run only jobs whose name contains this text or matches this glob;
    /// repeat to select more.
    #[arg(short, long)]
    filter: Vec<String>,
    /// Start no new job once one has failed.
    #[arg(long)]
    fail_fast: bool,
    /// Where job logs, artifacts and (by default) the JUnit and HTML reports go.
    #[arg(long, default_value = "runner-out")]
    out: PathBuf,
    /// The JUnit XML file (default: <out>/junit.xml).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The HTML report: a timeline of every job's VM, failures with their
    /// output, filters by status; one file (default: <out>/report.html).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Bytes of each step's stdout and stderr kept for the reports; the job
    /// log always has everything.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_LIMIT)]
    output_limit: usize,
    #[arg(long, value_enum, default_value = "auto", env = "RUNNER_BACKEND")]
    backend: BackendChoice,
    #[command(flatten)]
    cold: ColdArg,
    /// How long a guest may take to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    boot_timeout: Duration,
    /// Most bytes of artifacts one job may copy out (`1G`, `200M`, `4096`).
    /// A CLI flag, not a pipeline key: the pipeline is not trusted.
    #[arg(long, default_value = "1G", value_parser = parse_byte_size)]
    artifacts_max_size: u64,
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Most artifact entries (files, directories, links) one job may copy out.
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRIES)]
    artifacts_max_files: u64,
    /// Most disk each job log and each VM's serial log may take (`64M`,
    /// `1G`, bytes without a unit; `none` for no limit). Past it the log
    /// keeps its beginning and a rolling end, with a line saying how much
    /// was left out.
    #[arg(long, default_value = "64M", value_parser = parse_log_limit)]
    log_limit: LogLimit,
    /// Run only shard K of N (1-based), e.g. `2/3`; N machines with K = 1..N
    /// together run every job once. Default: GitLab's CI_NODE_INDEX of
    /// CI_NODE_TOTAL when both are set.
    /// Parsed by the command, not by clap, so that a bad value is one line.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Balance shards by each job's duration in this earlier JUnit report
    /// (e.g. `runner-out/junit.xml`) instead of by job count.
    #[arg(long, value_name = "JUNIT")]
    timings: Option<PathBuf>,
    /// Print the planned jobs and steps (after matrix, --filter and --shard)
    /// and exit, without booting anything.
    #[arg(long)]
    list: bool,
    /// `human`: the console report. `json`: one JSON object a line on
    /// stdout per event instead (docs/events.md); nothing else on stdout.
    #[arg(long, value_enum, default_value = "human")]
    message_format: MessageFormat,
    /// When a step fails, open a shell in its VM (at the step's workdir,
    /// with its env) before the VM is destroyed; one at a time. Needs a
    /// terminal; refused in CI.
    #[arg(long)]
    debug_on_failure: bool,
    /// End with each networked job's `allow` list that would have let
    /// through everything it touched (names as the guest resolved them),
    /// ready to paste; pair with `network: { audit: true }`.
    #[arg(long)]
    suggest_allow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

/// A size cap, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimit(pub Option<u64>);

/// `64M`, `1G`, `1048576` (bytes, as [`parse_byte_size`]); `none` or `0`
/// for no limit.
pub fn parse_log_limit(text: &str) -> Result<LogLimit, String> {
    if matches!(text.trim(), "none" | "0") {
        return Ok(LogLimit(None));
    }
    let bytes = parse_byte_size(text)?;
    let min = capped_log::MIN_LOG_LIMIT;
    if bytes < min {
        return Err(format!(
            "log limit `{text}` is too small: the least is {min} bytes"
        ));
    }
    Ok(LogLimit(Some(bytes)))
}

pub fn run(args: TestArgs) -> Result<i32, Failure> {
    let config = |e: anyhow::Error| Failure::new(2, e);
    if args.debug_on_failure {
        debug_allowed(&args, |name| std::env::var(name).ok()).map_err(config)?;
    }
    runner_machine::vm_dir::sweep_stale_in_temp();
    let pipeline = Pipeline::load(&args.pipeline).map_err(|e| config(e.into()))?;
    let plan = Plan::new(&pipeline)
        .filter(&args.filter)
        .map_err(|e| config(e.into()))?;
    let plan = select_shard(plan, &args).map_err(config)?;
    if args.list {
        match args.message_format {
            MessageFormat::Human => print!("{}", listing::render(&plan)),
            MessageFormat::Json => events::plan_events(&plan)
                .iter()
                .for_each(|line| println!("{line}")),
        }
        return Ok(0);
    }
    let grants = args
        .grants
        .resolve_with_caches(&args.cache)
        .map_err(|e| config(anyhow::Error::msg(e)))?;
    grants
        .check_plan(&plan)
        .map_err(|e| config(anyhow::Error::msg(e)))?;
    // A job with `network` on a host without passt fails before anything boots.
    if plan.jobs.iter().any(|job| job.network.is_on()) {
        runner_machine::network::passt::locate().map_err(|e| config(anyhow::Error::msg(e)))?;
    }
    // Before images are built: a refused --out should not wait for that.
    out_dir::prepare(&args.out).map_err(config)?;
    let images = resolve_images(&plan, &grants).map_err(config)?;
    let backend = args.backend.backend(args.cold.cold).map_err(config)?;
    // Only a run with caches needs the store: opening it sweeps what
    // killed runs left there.
    let caches = if plan.jobs.iter().any(|job| !job.caches.is_empty()) {
        let dir = CacheStore::default_dir().map_err(|e| config(anyhow::Error::new(e)))?;
        Some(CacheStore::open(&dir).map_err(|e| config(anyhow::Error::new(e)))?)
    } else {
        None
    };

    let options = Options {
        jobs: args.jobs.unwrap_or_else(default_jobs).max(1),
        fail_fast: args.fail_fast,
        boot_timeout: args.boot_timeout,
        output_limit: args.output_limit,
        out_dir: args.out.clone(),
        log_limit: args.log_limit.0,
        artifact_limits: ArtifactLimits {
            max_bytes: args.artifacts_max_size,
            max_entries: args.artifacts_max_files,
        },
        grants,
        debug_on_failure: args.debug_on_failure,
        caches,
    };
    let junit_options = JunitOptions {
        output_limit: args.output_limit,
        ..JunitOptions::default()
    };
    let junit_path = args.junit.unwrap_or_else(|| args.out.join("junit.xml"));
    let html_path = args.html.unwrap_or_else(|| args.out.join(html::FILE_NAME));
    let mut reporters = Reporters::new();
    match args.message_format {
        MessageFormat::Human => reporters.add(ConsoleReporter::stdout(args.suggest_allow)),
        MessageFormat::Json => reporters.add(JsonEvents::stdout()),
    };
    reporters
        .add(JunitReporter::new(junit_path, junit_options))
        .add(HtmlReporter::new(html_path));
    let results = scheduler::run(&plan, backend.as_ref(), &images, &reporters, &options);
    if let (Some(store), Some(cap)) = (&options.caches, options.grants.cache_store_max) {
        // Once the jobs are done with their versions, so none is held.
        match store.enforce_cap(cap) {
            Ok(pruned) if !pruned.removed.is_empty() => eprintln!(
                "runner: cache store over its {} cap: removed {} least recently used versions ({})",
                human_bytes(cap),
                pruned.removed.len(),
                human_bytes(pruned.freed_bytes)
            ),
            Ok(_) => {}
            Err(e) => eprintln!("runner: warning: capping the cache store: {e}"),
        }
    }
    let written = reporters
        .written()
        .map_err(|e| Failure::new(1, anyhow::Error::new(e)))?;
    for file in written {
        eprintln!("runner: {} in {}", file.what, file.path.display());
    }
    Ok(results.exit_code())
}

/// `--debug-on-failure` needs a person at a terminal: a terminal on stdin
/// and stdout, not CI, and the console rather than JSON on stdout.
fn debug_allowed(args: &TestArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let ci =
        env("CI").is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
    let terminal = crate::terminal::stdin_is_terminal() && std::io::stdout().is_terminal();
    if ci || !terminal {
        let why = if ci {
            "CI is set"
        } else {
            "stdin or stdout is not a terminal"
        };
        anyhow::bail!(
            "--debug-on-failure needs a person at a terminal ({why}); leave it out in CI"
        );
    }
    if args.message_format == MessageFormat::Json {
        anyhow::bail!(
            "--debug-on-failure needs the console; it cannot go with --message-format json"
        );
    }
    Ok(())
}

/// The plan's share for `--shard` (or GitLab's CI_NODE_INDEX/TOTAL);
/// the whole plan without either.
fn select_shard(plan: Plan, args: &TestArgs) -> anyhow::Result<Plan> {
    let shard = match &args.shard {
        Some(text) => Some(text.parse::<Shard>().map_err(anyhow::Error::msg)?),
        None => Shard::from_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?,
    };
    // Read even without a shard: a wrong --timings file should not go unnoticed.
    let timings = args
        .timings
        .as_deref()
        .map(Timings::from_junit)
        .transpose()?;
    Ok(match shard {
        Some(shard) => shard::select(plan, shard, timings.as_ref()),
        None => plan,
    })
}

/// Resolves every image the plan uses (jobs' and services') once, building
/// named ones and specs on first use.
fn resolve_images(plan: &Plan, grants: &Grants) -> anyhow::Result<ResolvedImages> {
    let images = Images::from_env().with_limits(grants.build_limits());
    let mut resolved = HashMap::new();
    for image in plan.jobs.iter().flat_map(PlannedJob::images) {
        if !resolved.contains_key(image) {
            let kernel = images.kernel(&image.kernel)?;
            let rootfs = images.rootfs(&image.rootfs)?;
            resolved.insert(image.clone(), (kernel, rootfs));
        }
    }
    Ok(resolved)
}

/// Parses `1G`, `200M`, `64K`, `4096` (bytes) with binary units.
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limits_parse() {
        assert_eq!(parse_log_limit("64M"), Ok(LogLimit(Some(64 << 20))));
        assert_eq!(parse_log_limit("1G"), Ok(LogLimit(Some(1 << 30))));
        assert_eq!(parse_log_limit("4096"), Ok(LogLimit(Some(4096))));
        assert_eq!(parse_log_limit("none"), Ok(LogLimit(None)));
        assert_eq!(parse_log_limit("0"), Ok(LogLimit(None)));
        for bad in ["", "M", "12X", "-1M", "10", "99999999999999999999G"] {
            assert!(parse_log_limit(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("200M"), Ok(200 << 20));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert!(parse_byte_size("1X").is_err());
        assert!(parse_byte_size("99999999999T").is_err());
    }
}
