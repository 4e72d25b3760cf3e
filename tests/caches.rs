//! `cache:` end to end: what a job leaves in a cache reaches the next run's
//! job, only when the cache's `policy` and `when` say so; an unprotected
//! scope reads a protected key through `fallback_keys` but never writes
//! it; two jobs committing one key leave one whole version; a corrupt
//! version is discarded with one warning and the job runs without it.
//!
//! Runs on the backend `RUNNER_BACKEND` names (the nested tier runs it with
//! the kvm backend, where jobs restore from a snapshot and get their cache
//! disks after the restore).

use std::path::{Path, PathBuf};
use std::process::Output;

use e2e_tests::{both, job_log, runner_test};

const HEAD: &str = "memory: 256M\ndefaults: { files: none }\n";

fn cache(key: &str, extra: &str) -> String {
    format!("    cache: {{ key: {key}, paths: [/var/cache/job], size: 64M{extra} }}\n")
}

/// One `runner test` with the test's own runner cache (its snapshots and
/// its cache store); warm start on, so that on kvm every job but the one
/// that builds the snapshot is a restored clone whose cache disks are
/// attached after the restore.
fn run(dir: &Path, yaml: &str, args: &[&str]) -> Output {
    runner_test(dir, yaml)
        .env("RUNNER_CACHE", dir.join("runner-cache"))
        .env("RUNNER_COLD", "0")
        .args(["--jobs", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn passed(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", both(out));
}

/// Every committed version file under the store, for the corruption test.
fn versions(store: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![store.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "img")
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('v'))
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_cache_carries_files_to_the_next_run_only_when_its_policy_and_when_say_so() {
    let dir = tempfile::tempdir().unwrap();
    // More than the cache's 64M is ENOSPC in the guest, and the job goes on.
    let fill = format!(
        "{HEAD}jobs:\n  fill:\n{}    steps:\n      - echo one > /var/cache/job/marker && grep /var/cache/job /proc/mounts\n      - if dd if=/dev/zero of=/var/cache/job/big bs=1M count=80 2>dd.err; then exit 1; fi; grep -i 'no space' dd.err && rm /var/cache/job/big\n",
        cache("k", "")
    );
    let out = run(dir.path(), &fill, &[]);
    passed(&out);
    let log = job_log(dir.path(), "fill");
    assert!(log.contains("cache `k`: no version yet"), "{log}");
    assert!(log.contains("cache `k`: committed version"), "{log}");

    // Three jobs on version 1: one reads it, one fails (`when: on_success`
    // keeps its writes out), one may only pull.
    let next = format!(
        "{HEAD}jobs:\n  read:\n{}    steps:\n      - test \"$(cat /var/cache/job/marker)\" = one\n  fails:\n{}    steps:\n      - echo two > /var/cache/job/marker; exit 3\n    allow_failure: true\n  pulls:\n{}    steps:\n      - echo three > /var/cache/job/marker\n",
        cache("k", ", policy: pull-push"),
        cache("k", ", when: on_success"),
        cache("k", ", policy: pull"),
    );
    let out = run(dir.path(), &next, &[]);
    passed(&out);
    assert!(job_log(dir.path(), "read").contains("cache `k`: restored version"));
    for job in ["fails", "pulls"] {
        let log = job_log(dir.path(), job);
        assert!(
            !log.contains("committed version"),
            "{job} committed:\n{log}"
        );
    }

    let check = format!(
        "{HEAD}jobs:\n  check:\n{}    steps:\n      - test \"$(cat /var/cache/job/marker)\" = one\n",
        cache("k", ", policy: pull")
    );
    passed(&run(dir.path(), &check, &[]));

    // The operator's cap on the whole store: applied once the jobs are done.
    let out = run(dir.path(), &check, &["--cache-store-max-size", "1K"]);
    passed(&out);
    let text = both(&out);
    assert!(
        text.contains("cache store over its 1.0K cap: removed "),
        "{text}"
    );
}

#[test]
fn an_unprotected_scope_reads_a_protected_key_through_fallback_keys_but_never_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let main = format!(
        "{HEAD}jobs:\n  main:\n{}    steps:\n      - echo main > /var/cache/job/marker\n",
        cache("deps", "")
    );
    passed(&run(
        dir.path(),
        &main,
        &["--cache-scope", "main", "--cache-protected"],
    ));

    // The pull request: a key of its own that falls back to the protected
    // one, and an attempt to write the protected key itself.
    let pr = format!(
        "{HEAD}jobs:\n  falls-back:\n{}    steps:\n      - test \"$(cat /var/cache/job/marker)\" = main && echo pr > /var/cache/job/marker\n  overwrites:\n{}    steps:\n      - echo evil > /var/cache/job/marker\n",
        cache("deps-pr", ", fallback_keys: [deps]"),
        cache("deps", "")
    );
    passed(&run(dir.path(), &pr, &["--cache-scope", "main"]));
    let log = job_log(dir.path(), "falls-back");
    assert!(log.contains("fallback key `deps`"), "{log}");

    let check = format!(
        "{HEAD}jobs:\n  check:\n{}    steps:\n      - test \"$(cat /var/cache/job/marker)\" = main\n",
        cache("deps", ", policy: pull")
    );
    passed(&run(
        dir.path(),
        &check,
        &["--cache-scope", "main", "--cache-protected"],
    ));
}

#[test]
fn concurrent_commits_leave_one_whole_version_and_a_corrupt_one_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    // Two jobs commit one key at once: the last complete commit wins.
    let both_write = format!(
        "{HEAD}jobs:\n  a:\n{}    steps:\n      - dd if=/dev/urandom of=/var/cache/job/blob bs=1M count=4 2>/dev/null && echo a > /var/cache/job/marker\n  b:\n{}    steps:\n      - dd if=/dev/urandom of=/var/cache/job/blob bs=1M count=4 2>/dev/null && echo b > /var/cache/job/marker\n",
        cache("k", ""),
        cache("k", "")
    );
    passed(&run(dir.path(), &both_write, &[]));
    let read = format!(
        "{HEAD}jobs:\n  read:\n{}    steps:\n      - m=$(cat /var/cache/job/marker) && test \"$m\" = a -o \"$m\" = b && test $(stat -c %s /var/cache/job/blob) = 4194304\n",
        cache("k", ", policy: pull")
    );
    passed(&run(dir.path(), &read, &[]));

    // Garble the newest version's superblock (the guest's kernel is its
    // only reader): the job runs without the cache, with one warning.
    let store = dir.path().join("runner-cache");
    let mut all = versions(&store);
    assert!(!all.is_empty(), "no versions under {}", store.display());
    all.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let newest = all.last().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xa5; 4096], 0).unwrap();
    drop(file);
    let cold = format!(
        "{HEAD}jobs:\n  cold:\n{}    steps:\n      - test ! -e /var/cache/job/marker && echo x > /var/cache/job/marker\n",
        cache("k", "")
    );
    let out = run(dir.path(), &cold, &[]);
    passed(&out);
    let log = job_log(dir.path(), "cold");
    assert!(log.contains("could not mount it"), "{log}");
    assert_eq!(log.matches("warning:").count(), 1, "{log}");
    assert!(!newest.exists(), "the corrupt version was kept");
}
