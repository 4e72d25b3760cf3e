//! A job's caches around its VM: checked out of the store before the boot
//! (each becomes a disk), mounted by the agent before the first step,
//! unmounted after the last, and merged back into the store once the VM is
//! gone, when the cache's `policy` and `when` say so (docs/caches.md).
//!
//! A cache never decides the job's outcome: whatever goes wrong with one
//! (the store, a disk the guest cannot mount, a full host disk at commit)
//! is one note, and the job runs on without it.

use std::time::Instant;

use agent_protocol::CacheMount;
use runner_machine::caches::{CacheRequest, CacheStore, Checkout, Found, Scope};
use runner_machine::images::manage::human_bytes;
use runner_machine::CacheDisk;

use crate::plan::{PlannedCache, PlannedJob};
use crate::results::{JobLog, JobResult};
use crate::session::AgentSession;

/// The job's caches that made it to a disk, in disk order.
pub(super) struct JobCaches<'a> {
    store: Option<&'a CacheStore>,
    attached: Vec<Attached<'a>>,
}

struct Attached<'a> {
    cache: &'a PlannedCache,
    checkout: Checkout,
    serial: String,
    /// Mounted by the agent, so the job's writes went to its disk.
    mounted: bool,
}

impl<'a> JobCaches<'a> {
    /// Checks out each of the job's caches. One that cannot be is a note:
    /// the job runs with its paths on the throwaway root.
    pub(super) fn checkout(
        job: &'a PlannedJob,
        store: Option<&'a CacheStore>,
        scope: &Scope,
        log: &JobLog,
        result: &mut JobResult,
    ) -> JobCaches<'a> {
        let mut attached = Vec::new();
        if let Some(store) = store {
            for cache in &job.caches {
                let request = CacheRequest {
                    scope: scope.clone(),
                    key: cache.key.clone(),
                    fallback_keys: cache.fallback_keys.clone(),
                    size: cache.size,
                    pull: cache.policy.pulls(),
                };
                match store.checkout(&request) {
                    Ok(checkout) => {
                        let note = format!("cache `{}`: {}", cache.key, describe(&checkout.found));
                        log.note(&format!("==> {note}"));
                        result.cache_notes.push(note);
                        let serial = format!("cache{}", attached.len());
                        attached.push(Attached {
                            cache,
                            checkout,
                            serial,
                            mounted: false,
                        });
                    }
                    Err(e) => note(log, result, format!("cache `{}` not used: {e}", cache.key)),
                }
            }
        }
        JobCaches { store, attached }
    }

    /// The disks the VM gets.
    pub(super) fn disks(&self) -> Vec<CacheDisk> {
        self.attached
            .iter()
            .map(|a| CacheDisk {
                serial: a.serial.clone(),
                base: a.checkout.base.clone(),
                layer: a.checkout.layer.clone(),
            })
            .collect()
    }

    /// Has the agent mount every disk. A disk it cannot mount (a corrupt
    /// version) is dropped from the store with a note, and the job runs
    /// with those paths on its throwaway root.
    pub(super) fn mount(
        &mut self,
        session: &mut AgentSession,
        log: &JobLog,
        result: &mut JobResult,
    ) {
        if self.attached.is_empty() {
            return;
        }
        let request: Vec<CacheMount> = self
            .attached
            .iter()
            .map(|a| CacheMount {
                serial: a.serial.clone(),
                paths: a.cache.paths.clone(),
            })
            .collect();
        let outcomes = match session.mount_caches(&request) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                note(log, result, format!("caches not mounted: {e}"));
                return;
            }
        };
        let attached = std::mem::take(&mut self.attached);
        for (mut a, outcome) in attached.into_iter().zip(outcomes) {
            match outcome.error {
                None => {
                    a.mounted = true;
                    self.attached.push(a);
                }
                Some(error) => {
                    let key = &a.cache.key;
                    let removed = self.store.is_some_and(|store| store.forget(a.checkout));
                    let removed = if removed {
                        "; that version was removed from the cache"
                    } else {
                        ""
                    };
                    note(
                        log,
                        result,
                        format!(
                            "cache `{key}`: the guest could not mount it ({error}), so this job \
                             runs without it{removed}"
                        ),
                    );
                }
            }
        }
    }

    /// After the last step (and the artifacts, which may live on a cache):
    /// unmounts the caches that are to be committed. Returns what to commit
    /// once the VM is gone; every other checkout is discarded.
    pub(super) fn finish(
        self,
        session: &mut AgentSession,
        job_succeeded: bool,
        log: &JobLog,
        result: &mut JobResult,
    ) -> Pending<'a> {
        let Some(store) = self.store else {
            return Pending::default();
        };
        let (commit, skip): (Vec<_>, Vec<_>) = self
            .attached
            .into_iter()
            .partition(|a| a.mounted && a.cache.commits(job_succeeded));
        for a in skip {
            store.discard(a.checkout);
        }
        if commit.is_empty() {
            return Pending::default();
        }
        let clean = match session.unmount_caches() {
            Ok((clean, failed)) => {
                for line in failed {
                    note(log, result, format!("{line}: not committed"));
                }
                clean
            }
            Err(e) => {
                note(
                    log,
                    result,
                    format!("caches not committed: unmounting them: {e}"),
                );
                Vec::new()
            }
        };
        let (ready, unclean): (Vec<_>, Vec<_>) =
            commit.into_iter().partition(|a| clean.contains(&a.serial));
        for a in unclean {
            store.discard(a.checkout);
        }
        Pending {
            store: Some(store),
            ready,
        }
    }
}

/// Caches whose disks hold a clean file system, to be merged into the
/// store after the VM (and every write it made) is gone.
#[derive(Default)]
pub(super) struct Pending<'a> {
    store: Option<&'a CacheStore>,
    ready: Vec<Attached<'a>>,
}

impl Pending<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Merges each layer into a new version. Call only once the VM process
    /// has been reaped.
    pub(super) fn commit(self, log: &JobLog, result: &mut JobResult) {
        let Some(store) = self.store else { return };
        for a in self.ready {
            let key = &a.cache.key;
            let started = Instant::now();
            match store.commit_layer(a.checkout) {
                Ok(done) => {
                    let mut line = format!(
                        "cache `{key}`: committed version {} ({} written, {:.1}s)",
                        done.version,
                        human_bytes(done.bytes_written),
                        started.elapsed().as_secs_f64()
                    );
                    if done.replaced_concurrent {
                        line.push_str("; another job committed this key meanwhile, and this later commit is the one kept");
                    }
                    log.note(&format!("==> {line}"));
                    result.cache_notes.push(line);
                }
                Err(e) => note(log, result, format!("cache `{key}` not committed: {e}")),
            }
        }
    }
}

fn describe(found: &Found) -> String {
    match found {
        Found::Key { version } => format!("restored version {version}"),
        Found::Fallback {
            key,
            scope,
            version,
        } => {
            format!("restored version {version} of fallback key `{key}` (scope {scope})")
        }
        Found::Empty => "no version yet: starting empty".to_string(),
    }
}

/// A warning for the job's log and the report's caches block (the console
/// shows it once, there).
fn note(log: &JobLog, result: &mut JobResult, line: String) {
    log.note(&format!("==> warning: {line}"));
    result.cache_notes.push(format!("warning: {line}"));
}
