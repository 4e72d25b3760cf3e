//! `runner cache`: the jobs' cache volumes (`cache:` in a pipeline), kept
//! per scope and key in `~/.cache/runner/caches` (docs/caches.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::failure::Failure;
use super::image::{parse_age, DEFAULT_PRUNE_AGE};
use crate::pipeline::parse_byte_size;
use runner_machine::caches::{CacheError, CacheStore, Evictable, Listed, Scope, DIR_ENV};
use runner_machine::images::manage::{human_bytes, short_age};
use runner_machine::lru::Limits;

#[derive(Args)]
pub struct CacheArgs {
    /// The store (default: `caches` in the runner's cache, ~/.cache/runner).
    #[arg(long, global = true, value_name = "DIR", env = DIR_ENV)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Every key: scope, size, size on disk, versions, last use.
    List,
    /// Remove versions least recently used first; never one a running job
    /// holds. Default: those unused for 30 days.
    Prune {
        /// Remove versions last used longer ago than this (`7d`, `12h`, `0s`
        /// for all).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<Duration>,
        /// Then remove more, least recently used first, until the store
        /// takes at most this on disk (`20G`).
        #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
        max_size: Option<u64>,
    },
    /// Remove every version of KEY, in every scope or in one.
    Clear {
        key: String,
        /// Only in the scope of this name.
        #[arg(long, value_name = "NAME")]
        scope: Option<String>,
    },
    /// Write KEY's newest version to one sparse-aware file, for another
    /// machine's `runner cache import`.
    Export {
        key: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The scope to take it from, when more than one has KEY.
        #[arg(long, value_name = "NAME")]
        scope: Option<String>,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Make the key in FILE (from `runner cache export`) a new version in a
    /// scope: the file names the key, never the scope.
    Import {
        file: PathBuf,
        /// The scope it goes to (as `runner test` is given it).
        #[arg(long, value_name = "NAME")]
        scope: String,
        /// The scope is a protected one (a protected branch's): a grant,
        /// refused where a machine policy does not give it, as
        /// `runner test --cache-protected` is.
        #[arg(long)]
        protected: bool,
    },
}

/// Bad input is exit code 2, a broken store or host 1.
fn failure(e: CacheError) -> Failure {
    let code = match e {
        CacheError::InvalidName { .. }
        | CacheError::InvalidSize { .. }
        | CacheError::NotFound { .. }
        | CacheError::Ambiguous { .. }
        | CacheError::BadExport { .. }
        | CacheError::Exists { .. } => 2,
        _ => 1,
    };
    Failure::new(code, e)
}

pub fn run(args: CacheArgs) -> Result<i32, Failure> {
    let dir = match args.cache_dir {
        Some(dir) => dir,
        None => CacheStore::default_dir().map_err(failure)?,
    };
    let store = CacheStore::open(&dir).map_err(failure)?;
    match args.command {
        CacheCommand::List => {
            let listed = store.list().map_err(failure)?;
            print!("{}", render(&listed, store.dir(), SystemTime::now()));
        }
        CacheCommand::Prune {
            older_than,
            max_size,
        } => {
            let limits = Limits {
                older_than: older_than.or(max_size.is_none().then_some(DEFAULT_PRUNE_AGE)),
                max_bytes: max_size,
            };
            let pruned = store.prune(limits, SystemTime::now()).map_err(failure)?;
            report_removed(&pruned.removed, &pruned.in_use);
            eprintln!(
                "runner: pruned {} cache versions, freed {}; {} left",
                pruned.removed.len(),
                human_bytes(pruned.freed_bytes),
                human_bytes(pruned.remaining_bytes)
            );
        }
        CacheCommand::Clear { key, scope } => {
            let cleared = store.clear(&key, scope.as_deref()).map_err(failure)?;
            report_removed(&cleared.removed, &cleared.in_use);
        }
        CacheCommand::Export {
            key,
            output,
            scope,
            force,
        } => {
            let exported = store
                .export(&key, scope.as_deref(), &output, force)
                .map_err(failure)?;
            println!(
                "exported {key} version {} (scope {}) to {}, {} of data",
                exported.version,
                exported.scope,
                output.display(),
                human_bytes(exported.data_bytes)
            );
        }
        CacheCommand::Import {
            file,
            scope,
            protected,
        } => {
            // The same grant as a run's: a pull request's CI job must not
            // plant a protected key where the machine's owner said no.
            let asked = crate::grants::CacheArgs {
                cache_scope: Some(scope),
                cache_protected: protected,
                ..Default::default()
            };
            let grants = crate::grants::GrantArgs::default()
                .resolve_with_caches(&asked)
                .map_err(|e| Failure::new(2, anyhow::Error::msg(e)))?;
            let scope = Scope::new(grants.cache.scope, grants.cache.protected);
            let imported = store.import(&file, &scope).map_err(failure)?;
            println!(
                "imported {} as version {} in scope {scope}, {}",
                imported.key,
                imported.version,
                human_bytes(imported.size)
            );
        }
    }
    Ok(0)
}

fn report_removed(removed: &[Evictable], in_use: &[Evictable]) {
    for item in removed {
        println!("removed {item}");
    }
    for item in in_use {
        println!("kept {item}: a running job uses it");
    }
}

/// The table `runner cache list` prints.
fn render(listed: &[Listed], dir: &Path, now: SystemTime) -> String {
    let mut out = format!(
        "{:<24}  {:<24}  {:>9}  {:>9}  {:>8}  LAST USE\n",
        "SCOPE", "KEY", "SIZE", "ON DISK", "VERSIONS"
    );
    for l in listed {
        let age = l
            .last_used
            .and_then(|t| now.duration_since(t).ok())
            .map_or("-".to_string(), |d| format!("{} ago", short_age(d)));
        let line = format!(
            "{:<24}  {:<24}  {:>9}  {:>9}  {:>8}  {:<10}{}",
            l.scope.to_string(),
            l.key,
            human_bytes(l.size),
            human_bytes(l.disk_bytes),
            l.versions.len(),
            age,
            if l.in_use { "  in use" } else { "" }
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let total: u64 = listed.iter().map(|l| l.disk_bytes).sum();
    out.push_str(&format!(
        "{} keys, {} on disk in {}\n",
        listed.len(),
        human_bytes(total),
        dir.display()
    ));
    out
}
