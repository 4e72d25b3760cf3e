//! Warm start: `runner test` on the kvm backend restores each job from a
//! snapshot of a booted guest (built on first use, cached) instead of
//! booting it. Every clone is still a clean room: it sees none of another
//! clone's files, draws its own random bytes, has the host's time and an
//! identity of its own. A damaged snapshot is rebuilt, an unwritable cache
//! means cold boots, each with one warning line. A dead one (it loads, but
//! its clones never answer) fails no job: it is quarantined, and the next
//! job builds a new one.
//!
//! Runs on the backend `RUNNER_BACKEND` names. The nested tier runs it with
//! the kvm backend, where the snapshot lines are checked; on QEMU (which
//! keeps cold boots) the same jobs must pass and no snapshot is made.

use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use e2e_tests::{both, job_log, runner_test, vm_dirs};

/// Each job: refuses a file another clone left, leaves one, and prints its
/// random bytes, its clock and its machine id.
const JOB: &str = concat!(
    "    steps:\n",
    "      - test ! -e /left-by-a-clone && touch /left-by-a-clone\n",
    "      - echo random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')\n",
    "      - echo clock=$(date +%s)\n",
    "      - echo machine=$(cat /etc/machine-id 2>/dev/null)\n",
);
const JOBS: [&str; 4] = ["one", "two", "three", "four"];

fn on_kvm() -> bool {
    std::env::var("RUNNER_BACKEND").as_deref() == Ok("kvm")
}

fn pipeline() -> String {
    let mut yaml = String::from("name: warm\ndefaults: { files: none }\njobs:\n");
    for job in JOBS {
        yaml.push_str(&format!("  {job}:\n{JOB}"));
    }
    yaml
}

fn run(dir: &Path, cache: &Path) -> Output {
    run_with(dir, cache, &pipeline())
}

fn run_with(dir: &Path, cache: &Path, pipeline: &str) -> Output {
    runner_test(dir, pipeline)
        .env("RUNNER_CACHE", cache)
        .env("RUNNER_COLD", "0")
        .args(["--jobs", "2"])
        .output()
        .unwrap()
}

/// The `name=value` a job printed.
fn printed(log: &str, name: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in:\n{log}"))
        .to_string()
}

fn snapshots(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs the pipeline and checks the clean-room properties of its jobs;
/// `clones`: they are restored clones (each has its own machine id).
fn run_and_check(dir: &Path, cache: &Path, clones: bool) -> String {
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let started = now();
    let out = run(dir, cache);
    let ended = now();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut randoms = Vec::new();
    let mut machines = Vec::new();
    for job in JOBS {
        let log = job_log(dir, job);
        randoms.push(printed(&log, "random"));
        machines.push(printed(&log, "machine"));
        let clock: u64 = printed(&log, "clock").parse().unwrap();
        // The host's time while the job ran; a clone that kept its
        // snapshot's clock would be behind the run's start (the second run
        // reuses a snapshot made before it). A second of slack for rounding.
        assert!(
            (started.saturating_sub(1)..=ended + 1).contains(&clock),
            "{job}'s clock says {clock}, the run lasted from {started} to {ended}\n{log}"
        );
    }
    // Cold boots of one image share its machine id (if it has one);
    // restored clones each get their own. A job of a warm run may still
    // boot cold (its clone was dead, or the snapshot was being rebuilt):
    // it prints no machine id, since the test image has none, and is left
    // out; every clone must have its own.
    machines.retain(|id| !id.is_empty());
    let distinct: &[&Vec<String>] = if clones {
        &[&randoms, &machines]
    } else {
        &[&randoms]
    };
    for list in distinct {
        let mut unique = (*list).clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            list.len(),
            "clones share state: {list:?}\n{text}"
        );
    }
    assert_eq!(vm_dirs(dir), Vec::<String>::new());
    text
}

#[test]
fn clones_are_clean_rooms_and_the_snapshot_is_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = run_and_check(dir.path(), &cache, on_kvm());
    let second = run_and_check(dir.path(), &cache, on_kvm());
    if !on_kvm() {
        assert_eq!(snapshots(&cache), Vec::<String>::new(), "{first}");
        return;
    }
    assert_eq!(first.matches("): building").count(), 1, "{first}");
    assert!(first.contains("runner: snapshot "), "{first}");
    assert!(
        !second.contains("building"),
        "the second run must reuse it:\n{second}"
    );
    assert_eq!(snapshots(&cache).len(), 1);
}

#[test]
fn a_damaged_snapshot_is_rebuilt_and_an_unwritable_cache_means_cold_boots() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    run_and_check(dir.path(), &cache, on_kvm());
    if on_kvm() {
        let [snap] = snapshots(&cache).try_into().expect("one snapshot");
        let path = cache.join("snapshots").join(snap);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let text = run_and_check(dir.path(), &cache, true);
        assert_eq!(text.matches("is unusable").count(), 1, "{text}");
        assert!(text.contains("it changed after it was sealed"), "{text}");
        assert_eq!(text.matches("): building").count(), 1, "{text}");
    }

    // A cache under a regular file cannot hold a snapshot directory.
    let blocked = dir.path().join("not-a-directory");
    std::fs::write(&blocked, b"").unwrap();
    let text = run_and_check(dir.path(), &blocked, false);
    if on_kvm() {
        let warnings = text.matches("no snapshots: creating the cache").count();
        assert_eq!(warnings, 1, "{text}");
        assert!(!text.contains("building"), "{text}");
    }
}

/// The snapshot in `cache`, made dead the way a lost queue notification
/// made snapshots dead (issue 17): it loads, but the restored vsock device
/// never takes what the guest sends (its TX queue is saved as not ready),
/// so no clone's agent ever answers.
fn kill_vsock_tx(cache: &Path) {
    let [snap] = snapshots(cache).try_into().expect("one snapshot");
    let path = cache.join("snapshots").join(&snap);
    runner_vmm::snapshot::file::rewrite_state(&path, |state| {
        let mut state = runner_vmm::snapshot::SnapshotState::decode(&state).unwrap();
        // Devices in attach order: the root disk, then vsock (RX, TX, event).
        let tx = &mut state.devices[1].queues[1];
        assert!(tx.ready, "{tx:?}");
        tx.ready = false;
        state.encode().unwrap()
    })
    .unwrap();
    // Sealed again, as the runner sealed it: the damage is now one only a
    // clone can find (a file changed behind the runner's back is refused
    // before any restore; the test above).
    let trusted = runner_machine::trusted_cache::TrustedCache::at(cache.to_path_buf());
    let store = runner_machine::snapshots::SnapshotStore::open_in(trusted).unwrap();
    store.reseal(snap.trim_end_matches(".snap")).unwrap();
}

#[test]
fn a_dead_snapshot_fails_no_job_and_the_next_job_builds_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    run_and_check(dir.path(), &cache, on_kvm());
    if !on_kvm() {
        // QEMU keeps cold boots: nothing to kill.
        assert_eq!(snapshots(&cache), Vec::<String>::new());
        return;
    }
    kill_vsock_tx(&cache);
    // Cold boots share the image's machine id, so only the randoms are
    // checked for clean rooms: the jobs that met the dead file boot cold.
    let text = run_and_check(dir.path(), &cache, false);
    // Two jobs start at once (--jobs 2), so one or both meet it; one
    // quarantines it, and one job builds a new one.
    let dead = text
        .matches("is dead: a clone of it did not answer")
        .count();
    assert!((1..=2).contains(&dead), "{text}");
    assert!(
        text.contains("the guest did not answer the connection to vsock port"),
        "{text}"
    );
    assert_eq!(text.matches("quarantined it as").count(), 1, "{text}");
    assert_eq!(text.matches("): building").count(), 1, "{text}");
    let quarantined = cache.join("snapshots").join("quarantine");
    assert_eq!(std::fs::read_dir(&quarantined).unwrap().count(), 1);
    assert_eq!(snapshots(&cache).len(), 1, "{text}");

    // The new one is alive: the next run restores it and warns of nothing.
    let again = run_and_check(dir.path(), &cache, true);
    assert!(!again.contains("warning"), "{again}");
    assert!(!again.contains("building"), "{again}");
}
