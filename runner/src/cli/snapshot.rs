//! `runner snapshot prune`: the kvm backend's warm-start snapshots
//! (docs/snapshots.md), one per kernel, rootfs, VM size and host, which
//! nothing else ever removes.

use std::time::SystemTime;

use clap::Subcommand;

use super::failure::Failure;
use super::image::{parse_age, DEFAULT_PRUNE_AGE};
use crate::pipeline::parse_byte_size;
use runner_machine::images::manage::human_bytes;
use runner_machine::lru::Limits;
use runner_machine::snapshots::SnapshotStore;
use runner_machine::trusted_cache::TrustedCache;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Remove snapshots least recently restored first; never one being
    /// built. Default: those unused for 30 days.
    Prune {
        /// Remove snapshots last restored longer ago than this (`7d`, `12h`,
        /// `0s` for all).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Then remove more, least recently used first, until the
        /// snapshots take at most this on disk (`20G`).
        #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
        max_size: Option<u64>,
    },
}

pub fn run(cmd: SnapshotCommand) -> Result<i32, Failure> {
    let SnapshotCommand::Prune {
        older_than,
        max_size,
    } = cmd;
    let cache = TrustedCache::open().map_err(|e| Failure::new(1, anyhow::Error::msg(e)))?;
    let dir = cache
        .subdir("snapshots")
        .map_err(|e| Failure::new(1, anyhow::Error::msg(e)))?;
    let store = SnapshotStore::open_in(Ok(cache)).ok_or_else(|| {
        Failure::new(
            1,
            anyhow::anyhow!("the snapshot cache {} is not usable", dir.display()),
        )
    })?;
    let limits = Limits {
        older_than: older_than.or(max_size.is_none().then_some(DEFAULT_PRUNE_AGE)),
        max_bytes: max_size,
    };
    let pruned = store
        .prune(limits, SystemTime::now())
        .map_err(|e| Failure::new(1, anyhow::anyhow!("pruning {}: {e}", dir.display())))?;
    for path in &pruned.removed {
        println!("removed {}", path.display());
    }
    for path in &pruned.in_use {
        println!("kept {}: it is being built", path.display());
    }
    eprintln!(
        "runner: pruned {} snapshots, freed {}; {} left",
        pruned.removed.len(),
        human_bytes(pruned.freed_bytes),
        human_bytes(pruned.remaining_bytes)
    );
    Ok(0)
}
