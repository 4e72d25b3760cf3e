//! Starting a job's VM from the cached snapshot of its identity, building
//! the snapshot first when there is none (see [`super::super::snapshots`]).

use std::time::Duration;

use super::{KvmBackend, KvmVm, Start};
use crate::backend::snapshots::{identity, warn_once, SnapshotStore};
use crate::backend::vm_process::SnapshotRole;
use crate::backend::{wait_for_agent, BootError, VmSpec};
use crate::session::new_clone_id;

/// How long the snapshot VM gets to write its snapshot and end once asked:
/// guest memory goes to disk, at disk speed.
const SNAPSHOT_WRITE_LIMIT: Duration = Duration::from_secs(300);

/// What the snapshot VM ends with when its snapshot was written
/// (`runner_vmm::ExitReason::Snapshotted`).
const SNAPSHOT_WRITTEN: &str = "snapshot written";

/// A restored clone of `spec`'s snapshot, or a cold boot when snapshots
/// cannot be had (one warning line says why).
pub(super) fn start(
    backend: &KvmBackend,
    store: &SnapshotStore,
    spec: &VmSpec,
) -> Result<KvmVm, BootError> {
    let (key, identity) = match identity(spec) {
        Ok(found) => found,
        Err(e) => {
            warn_once(&format!(
                "cannot identify the snapshot to use ({e}): booting cold"
            ));
            return backend.start_process(spec, Start::Cold);
        }
    };
    let role = SnapshotRole {
        path: store.path(&key),
        identity,
    };
    // The common case takes no lock: the file is renamed into place whole,
    // and an open file outlives its removal, so clones start in parallel.
    if let Restored::Vm(vm) = restore_if_usable(backend, spec, &role)? {
        return Ok(*vm);
    }
    {
        let _lock = store
            .lock(&key)
            .map_err(|e| BootError::Setup(format!("locking snapshot {key}: {e}")))?;
        // Another job may have built (or rebuilt) it while we waited.
        match restore_if_usable(backend, spec, &role)? {
            Restored::Vm(vm) => return Ok(*vm),
            Restored::Missing => {}
            Restored::Refused(why) => {
                eprintln!("runner: warning: snapshot {key} is unusable ({why}): rebuilding it");
                let _ = std::fs::remove_file(&role.path);
            }
        }
        match build(backend, store, spec, &key, &role) {
            Ok(()) => {}
            // The guest itself did not come up: a cold boot would fail the
            // same way, only later. That boot's error is the job's.
            Err(BuildError::Boot(e)) => return Err(e),
            Err(BuildError::Snapshot(why)) => {
                warn_once(&format!(
                    "could not build the snapshot ({why}): booting cold"
                ));
                return backend.start_process(spec, Start::Cold);
            }
        }
    }
    restore(backend, spec, &role)
}

/// What restoring from a cached snapshot gave.
enum Restored {
    Vm(Box<KvmVm>),
    /// No snapshot file yet.
    Missing,
    /// The VMM refused the file, saying why.
    Refused(String),
}

fn restore_if_usable(
    backend: &KvmBackend,
    spec: &VmSpec,
    role: &SnapshotRole,
) -> Result<Restored, BootError> {
    if !role.path.exists() {
        return Ok(Restored::Missing);
    }
    match restore(backend, spec, role) {
        Ok(vm) => Ok(Restored::Vm(Box::new(vm))),
        // The VMM names the file when it refuses it (`Error::SnapshotRefused`).
        Err(BootError::Setup(why)) if why.contains(&*role.path.to_string_lossy()) => {
            Ok(Restored::Refused(why))
        }
        Err(other) => Err(other),
    }
}

fn restore(backend: &KvmBackend, spec: &VmSpec, role: &SnapshotRole) -> Result<KvmVm, BootError> {
    let mut vm = backend.start_process(spec, Start::Restore(role.clone()))?;
    let id = new_clone_id().map_err(|e| BootError::Setup(format!("a clone identity: {e}")))?;
    // Every clone starts from the snapshot's agent, which has applied no
    // generation yet.
    vm.clone_identity = Some((1, id));
    Ok(vm)
}

/// Why no snapshot was built.
enum BuildError {
    /// The guest did not boot to its agent.
    Boot(BootError),
    /// Saving it failed.
    Snapshot(String),
}

/// Boots `spec` cold, waits for its agent, and snapshots it into
/// `role.path` (renamed into place only once whole).
fn build(
    backend: &KvmBackend,
    store: &SnapshotStore,
    spec: &VmSpec,
    key: &str,
    role: &SnapshotRole,
) -> Result<(), BuildError> {
    eprintln!(
        "runner: snapshot {key} ({} vCPU, {} MiB): building (once per kernel, rootfs and VM size; --cold boots without)",
        spec.vcpus, spec.memory_mib
    );
    let started = std::time::Instant::now();
    // A runner killed while building left its file; we hold the lock.
    store.remove_unfinished_builds(key);
    let building = store.building_path(key);
    let result = (|| {
        let mut maker = VmSpec {
            name: format!("snapshot-{key}"),
            ..spec.clone()
        };
        maker.network = Default::default();
        let mut vm = backend
            .start_process(
                &maker,
                Start::ForSnapshot(SnapshotRole {
                    path: building.clone(),
                    identity: role.identity.clone(),
                }),
            )
            .map_err(|e| BuildError::Snapshot(e.to_string()))?;
        // The agent is up; its connection is closed again before the VMM
        // saves (the vsock device waits for that).
        drop(wait_for_agent(&mut vm, spec.boot_timeout).map_err(BuildError::Boot)?);
        vm.process.request_snapshot();
        vm.process.wait_exit(SNAPSHOT_WRITE_LIMIT);
        match vm.process.outcome() {
            Some(o) if o.clean && o.description == SNAPSHOT_WRITTEN => Ok(()),
            Some(o) => Err(BuildError::Snapshot(o.description)),
            None => Err(BuildError::Snapshot("the snapshot VM did not end".into())),
        }
    })();
    let result = result.and_then(|()| {
        std::fs::rename(&building, &role.path).map_err(|e| {
            BuildError::Snapshot(format!("renaming {} into place: {e}", building.display()))
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&building);
    } else {
        eprintln!(
            "runner: snapshot {key}: built in {:.1}s, {}",
            started.elapsed().as_secs_f64(),
            role.path.display()
        );
    }
    result
}
