//! Starting a job's VM from the cached snapshot of its identity, building
//! the snapshot first when there is none (see [`crate::snapshots`]).
//!
//! A snapshot is trusted only as far as a clone of it works:
//! - **Before it is published**, a clone restored from the new file must
//!   answer the agent handshake and the restore announcement, and run a
//!   command that reads its disk (the [`AgentProbe`] the backend was given
//!   speaks to the agent). A file that fails is deleted and built
//!   again, once; if that fails too, the job boots cold.
//! - **At every use**, the clone's agent must answer within
//!   [`CLONE_ANSWER_LIMIT`]. One that does not means the file is bad: it is
//!   quarantined (if it is still the file that was restored) and this job
//!   boots cold, so a bad snapshot fails no job, and the next job builds a
//!   new one.
//!
//! A VM with a [`crate::Preparation`] (a service) is prepared after its
//! agent's first answer and before the snapshot; one that never can be
//! boots cold from then on. A VM on a segment is made and checked on a
//! stand-in for its NIC ([`SegmentNic::stand_in`]): only its clone gets
//! the job's.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::vm::{KvmVm, Start};
use crate::network::segment::SegmentNic;
use crate::snapshots::{warn_once, FileId, SnapshotStore};
use crate::vm_process::SnapshotRole;
use crate::{AgentProbe, BootError, Unprepared, VmSpec};

/// How long the snapshot VM gets to write its snapshot and end once asked:
/// guest memory goes to disk, at disk speed.
const SNAPSHOT_WRITE_LIMIT: Duration = Duration::from_secs(300);

/// What the snapshot VM ends with when its snapshot was written
/// (`runner_vmm::ExitReason::Snapshotted`).
const SNAPSHOT_WRITTEN: &str = "snapshot written";

/// How long a restored clone's agent gets to answer, restore announcement
/// included, before its snapshot is judged dead. Healthy clones answer in
/// 0.2-0.4 s even under nested KVM inside TCG; this is 25 times that, so
/// only a clone that will never answer runs into it.
const CLONE_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// What the check of a new snapshot runs in its clone: a read of the root
/// disk that no cache can answer (every image has busybox: runner-init
/// runs under it).
const DISK_CHECK: [&str; 7] = [
    "/bin/busybox",
    "dd",
    "if=/dev/vda",
    "of=/dev/null",
    "bs=4096",
    "count=1",
    "iflag=direct",
];

/// A restored clone of `spec`'s snapshot, or a cold boot when snapshots
/// cannot be had (one warning line says why).
pub(super) fn start(
    start_process: StartProcess,
    store: &SnapshotStore,
    probe: &dyn AgentProbe,
    spec: &VmSpec,
) -> Result<KvmVm, BootError> {
    let (key, identity) = match store.identity(spec) {
        Ok(found) => found,
        Err(e) => {
            warn_once(&format!(
                "cannot identify the snapshot to use ({e}): booting cold"
            ));
            return start_process(spec, Start::Cold);
        }
    };
    if let Some(why) = store.never(&key) {
        warn_once(&format!(
            "{} boots cold: snapshot {key} cannot be made ({why})",
            spec.name
        ));
        return start_process(spec, Start::Cold);
    }
    let warm = WarmStart {
        start_process,
        store,
        probe,
        spec,
        role: SnapshotRole {
            path: store.path(&key),
            identity,
        },
        key,
    };
    // The common case takes no lock: the file is renamed into place whole,
    // and an open file outlives its removal, so clones start in parallel.
    let found = match warm.clone_published()? {
        Cloned::Missing | Cloned::Refused(_) => warm.build_if_still_needed()?,
        found => found,
    };
    match found {
        Cloned::Ready(vm) => Ok(*vm),
        Cloned::Dead(dead) => warm.heal(dead),
        // Built and checked a moment ago, and gone or refused now: another
        // runner's doing, not worth a second build in this job.
        Cloned::NotBuilt(why) => warm.cold(&why),
        Cloned::Missing => warm.cold("the snapshot just built is gone"),
        Cloned::Refused(why) => warm.cold(&format!("the snapshot just built is refused: {why}")),
    }
}

/// The backend's way to start a VM process (`KvmBackend::start_process`).
type StartProcess<'a> = &'a dyn Fn(&VmSpec, Start) -> Result<KvmVm, BootError>;

/// Everything warm start needs for one job.
struct WarmStart<'a> {
    start_process: StartProcess<'a>,
    store: &'a SnapshotStore,
    probe: &'a dyn AgentProbe,
    spec: &'a VmSpec,
    key: String,
    /// The published snapshot.
    role: SnapshotRole,
}

/// What restoring from the published snapshot gave.
enum Cloned {
    /// A clone whose agent answered; its connection waits in the VM.
    Ready(Box<KvmVm>),
    /// No snapshot file yet.
    Missing,
    /// The VMM refused the file, saying why.
    Refused(String),
    /// The file loaded, but the clone did not answer.
    Dead(DeadClone),
    /// There was none, and building one failed, for this reason.
    NotBuilt(String),
}

struct DeadClone {
    why: String,
    /// The file that was restored; `None` if it was replaced meanwhile
    /// (then it is not this job's to quarantine).
    file: Option<FileId>,
}

/// Why no snapshot was built.
enum BuildError {
    /// The guest did not boot to its agent.
    Boot(BootError),
    /// Saving it failed.
    Snapshot(String),
    /// A clone of it did not work (see [`WarmStart::check`]).
    Check(String),
    /// The VM can never be prepared for one, as it is.
    Never(String),
}

impl WarmStart<'_> {
    fn clone_published(&self) -> Result<Cloned, BootError> {
        let identify = |path: &Path| {
            FileId::of(path)
                .map_err(|e| BootError::Setup(format!("reading {}: {e}", path.display())))
        };
        let Some(file) = identify(&self.role.path)? else {
            return Ok(Cloned::Missing);
        };
        // Nothing restores a file this runner did not build and seal.
        if let Err(why) = self.store.check_seal(&self.key, &self.role.identity) {
            return Ok(Cloned::Refused(format!(
                "{}: {why}",
                self.role.path.display()
            )));
        }
        self.store.touch_used(&self.key);
        let vm = match restore(self.start_process, self.spec, &self.role) {
            Ok(vm) => vm,
            Err(e) => return refused_file(e, &self.role.path).map(Cloned::Refused),
        };
        // The VM process has mapped the file by now: if the path still
        // names the same file, that is the one it restored.
        let same = identify(&self.role.path)? == Some(file);
        Ok(match self.answered(vm)? {
            Ok(vm) => Cloned::Ready(vm),
            Err(why) => Cloned::Dead(DeadClone {
                why,
                file: same.then_some(file),
            }),
        })
    }

    /// Under the key's lock: a clone of the snapshot another job built
    /// while this one waited for the lock, else one of a snapshot built
    /// now. A file the VMM refuses is rebuilt.
    fn build_if_still_needed(&self) -> Result<Cloned, BootError> {
        {
            let _lock = self
                .store
                .lock(&self.key)
                .map_err(|e| BootError::Setup(format!("locking snapshot {}: {e}", self.key)))?;
            match self.clone_published()? {
                Cloned::Missing => {}
                Cloned::Refused(why) => {
                    eprintln!(
                        "runner: warning: snapshot {} is unusable ({why}): rebuilding it",
                        self.key
                    );
                    self.store.remove(&self.key);
                }
                found => return Ok(found),
            }
            if let Err(why) = self.build()? {
                return Ok(Cloned::NotBuilt(why));
            }
        }
        self.clone_published()
    }

    /// A clone of the published snapshot did not answer: quarantine the
    /// file, say so in one line, boot this job cold.
    fn heal(&self, dead: DeadClone) -> Result<KvmVm, BootError> {
        let what = match dead
            .file
            .map(|file| self.store.quarantine(&self.key, &file))
        {
            Some(Ok(Some(to))) => format!(
                "quarantined it as {} (the next job builds a new one)",
                to.display()
            ),
            Some(Ok(None)) | None => "another job has replaced it already".to_string(),
            Some(Err(e)) => format!("could not quarantine it ({e})"),
        };
        eprintln!(
            "runner: warning: snapshot {} is dead: a clone of it did not answer ({}); {what}; \
             this job boots cold",
            self.key, dead.why
        );
        (self.start_process)(self.spec, Start::Cold)
    }

    fn cold(&self, why: &str) -> Result<KvmVm, BootError> {
        warn_once(&format!("{why}: booting cold"));
        (self.start_process)(self.spec, Start::Cold)
    }

    /// Boots `spec` cold, snapshots it once its agent is up, checks a clone
    /// of the new file, and renames it into place. A file that fails its
    /// check is built once more. Call with the key's lock held. The inner
    /// error says why there is no snapshot (the job boots cold); the outer
    /// one is the guest's failure to boot at all (the job's error).
    fn build(&self) -> Result<Result<(), String>, BootError> {
        let key = &self.key;
        let prepared = match self.spec.prepare {
            Some(_) => format!(" of {}, prepared,", self.spec.name),
            None => String::new(),
        };
        eprintln!(
            "runner: snapshot {key}{prepared} ({} vCPU, {} MiB): building (once per kernel, rootfs and VM size; --cold boots without)",
            self.spec.vcpus, self.spec.memory_mib
        );
        let started = Instant::now();
        // A runner killed while building left its file; we hold the lock.
        self.store.remove_unfinished_builds(key);
        let building = self.store.building_path(key);
        let mut result;
        let mut attempt = 1;
        loop {
            result = self
                .make(&building)
                .and_then(|()| self.check(&building).map_err(BuildError::Check))
                .and_then(|()| {
                    std::fs::rename(&building, &self.role.path).map_err(|e| {
                        BuildError::Snapshot(format!(
                            "renaming {} into place: {e}",
                            building.display()
                        ))
                    })
                })
                .and_then(|()| {
                    self.store
                        .seal(key, &self.role.identity)
                        .map_err(BuildError::Snapshot)
                        .inspect_err(|_| self.store.remove(key))
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&building);
            }
            match &result {
                Err(BuildError::Check(why)) if attempt == 1 => eprintln!(
                    "runner: warning: snapshot {key} failed its check (a clone of it {why}): \
                     deleted it, building it again"
                ),
                _ => break,
            }
            attempt += 1;
        }
        match result {
            Ok(()) => {
                eprintln!(
                    "runner: snapshot {key}: built and checked in {:.1}s, {}",
                    started.elapsed().as_secs_f64(),
                    self.role.path.display()
                );
                Ok(Ok(()))
            }
            // The guest itself did not come up: a cold boot would fail the
            // same way, only later. That boot's error is the job's.
            Err(BuildError::Boot(e)) => Err(e),
            // Building is best effort: the job boots cold, the next one
            // tries again. Failing it would fail every job of a run.
            Err(BuildError::Snapshot(why)) => {
                Ok(Err(format!("could not build snapshot {key} ({why})")))
            }
            Err(BuildError::Check(why)) => Ok(Err(format!(
                "snapshot {key} failed its check twice (a clone of it {why})"
            ))),
            Err(BuildError::Never(why)) => {
                self.store.mark_never(key, &why);
                Ok(Err(format!("snapshot {key} cannot be made ({why})")))
            }
        }
    }

    /// Boots `spec` cold and snapshots it into `building` once its agent
    /// answered.
    fn make(&self, building: &Path) -> Result<(), BuildError> {
        let mut maker = VmSpec {
            name: format!("snapshot-{}", self.key),
            segment: stand_in(self.spec).map_err(BuildError::Snapshot)?,
            ..self.spec.clone()
        };
        maker.network = Default::default();
        // A snapshot never holds a cache: it has empty slots for them.
        maker.caches = Vec::new();
        let mut vm = (self.start_process)(
            &maker,
            Start::ForSnapshot(SnapshotRole {
                path: building.to_path_buf(),
                identity: self.role.identity.clone(),
            }),
        )
        .map_err(|e| BuildError::Snapshot(e.to_string()))?;
        // The agent is up; its connection is closed again before the VMM
        // saves (the vsock device waits for that).
        drop(
            self.probe
                .answer(&mut vm, self.spec.boot_timeout)
                .map_err(BuildError::Boot)?,
        );
        if let Some(preparation) = &self.spec.prepare {
            preparation.prepare(&mut vm).map_err(|e| match e {
                Unprepared::Failed(why) => BuildError::Snapshot(why),
                Unprepared::Never(why) => BuildError::Never(why),
            })?;
        }
        vm.process.request_snapshot();
        vm.process.wait_exit(SNAPSHOT_WRITE_LIMIT);
        match vm.process.outcome() {
            Some(o) if o.clean && o.description == SNAPSHOT_WRITTEN => {}
            Some(o) => return Err(BuildError::Snapshot(o.description)),
            None => return Err(BuildError::Snapshot("the snapshot VM did not end".into())),
        }
        drop(vm);
        self.store.claim(building).map_err(BuildError::Snapshot)
    }

    /// Restores a clone of the unpublished `building` and runs
    /// [`DISK_CHECK`] in it; says what went wrong.
    fn check(&self, building: &Path) -> Result<(), String> {
        let role = SnapshotRole {
            path: building.to_path_buf(),
            identity: self.role.identity.clone(),
        };
        // Without the job's caches and NIC: they are for its own clone.
        let spec = VmSpec {
            caches: Vec::new(),
            segment: stand_in(self.spec)?,
            ..self.spec.clone()
        };
        let vm =
            restore(self.start_process, &spec, &role).map_err(|e| format!("did not load: {e}"))?;
        let mut vm = self
            .answered(vm)
            .map_err(|e| e.to_string())?
            .map_err(|why| format!("did not answer ({why})"))?;
        let mut agent = vm
            .answered_agent
            .take()
            .ok_or("did not answer (no connection)")?;
        self.probe
            .run(&mut agent, &DISK_CHECK, CLONE_ANSWER_LIMIT)
            .map_err(|why| {
                format!(
                    "could not read its disk (`{}`: {why})",
                    DISK_CHECK.join(" ")
                )
            })
    }

    /// Waits (at most [`CLONE_ANSWER_LIMIT`]) for a clone's agent to
    /// answer and take its restore announcement; keeps the connection in
    /// the VM. The inner error says why a clone is dead; the outer one
    /// ends the job (Ctrl-C).
    fn answered(&self, mut vm: KvmVm) -> Result<Result<Box<KvmVm>, String>, BootError> {
        let limit = CLONE_ANSWER_LIMIT.min(self.spec.boot_timeout);
        match self.probe.answer(&mut vm, limit) {
            Ok(agent) => {
                vm.answered_agent = Some(agent);
                Ok(Ok(Box::new(vm)))
            }
            Err(BootError::Interrupted) => Err(BootError::Interrupted),
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}

/// A stand-in for `spec`'s segment NIC, if it has one.
fn stand_in(spec: &VmSpec) -> Result<Option<Arc<SegmentNic>>, String> {
    spec.segment
        .as_ref()
        .map(|nic| nic.stand_in().map(Arc::new))
        .transpose()
        .map_err(|e| format!("making a stand-in for its segment NIC: {e}"))
}

fn restore(
    start_process: StartProcess,
    spec: &VmSpec,
    role: &SnapshotRole,
) -> Result<KvmVm, BootError> {
    let mut vm = start_process(spec, Start::Restore(role.clone()))?;
    // Every clone starts from the snapshot's agent, which has applied no
    // generation yet.
    vm.restore_generation = Some(1);
    Ok(vm)
}

/// Why the VMM refused the snapshot file at `path`, when `err` is that
/// refusal (a damaged or truncated file, one of another format version or
/// made for another identity: the caller rebuilds it); any other failure
/// is returned as it is. The VMM names the file when it refuses it
/// (`runner_vmm::Error::SnapshotRefused`).
fn refused_file(err: BootError, path: &Path) -> Result<String, BootError> {
    match err {
        BootError::Setup(why) if why.contains(&*path.to_string_lossy()) => Ok(why),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_vmm::snapshot::file;

    const IDENTITY: &str = "warm-start-test";
    const MEMORY: u64 = 64 * 1024;

    /// What the VM process reports when its VMM cannot restore `path`.
    fn restore_error(path: &Path) -> BootError {
        let Err(e) = file::open(path, IDENTITY, MEMORY) else {
            panic!("{} opened", path.display());
        };
        BootError::Setup(crate::vm_process::child::vmm_error(e))
    }

    /// A file an older runner wrote (another format version) is refused
    /// like a damaged one: both are rebuilt. Other failures are not the
    /// file's.
    #[test]
    fn an_old_format_version_or_a_damaged_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.snap");
        let out = file::create(&path).unwrap();
        file::write(&out, IDENTITY, b"state", MEMORY, |_, _| Ok(())).unwrap();
        let whole = std::fs::read(&path).unwrap();

        // The version is read before the header's checksum (runner-vmm's
        // own test keeps that checksum whole).
        let mut old = whole.clone();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        let why = refused_file(restore_error(&path), &path).expect("rebuilt");
        assert!(
            why.contains("format version 1, but this runner reads only version"),
            "{why}"
        );
        assert!(!why.contains('\n'), "{why}");

        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let why = refused_file(restore_error(&path), &path).expect("rebuilt");
        assert!(why.contains("truncated"), "{why}");

        let other = BootError::Setup("creating the VM directory: no space left".into());
        assert!(refused_file(other, &path).is_err());
    }
}
