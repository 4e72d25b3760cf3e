//! `cache:`: what parses, what the plan makes of it, and every mistake
//! with its `file:line:col`.

use std::path::Path;

use crate::pipeline::cache::{DEFAULT_CACHE_SIZE, MAX_CACHES};
use crate::pipeline::{CachePolicy, CacheWhen, Pipeline};
use crate::plan::{Plan, PlannedCache};

fn parse_in(workspace: &Path, text: &str) -> Result<Pipeline, String> {
    Pipeline::parse(text, Path::new("p.yml"), workspace).map_err(|e| e.to_string())
}

fn parse(text: &str) -> Result<Pipeline, String> {
    parse_in(Path::new("/repo"), text)
}

fn caches(text: &str) -> Vec<Vec<PlannedCache>> {
    let pipeline = parse(text).unwrap_or_else(|e| panic!("{e}"));
    Plan::new(&pipeline)
        .jobs
        .into_iter()
        .map(|job| job.caches)
        .collect()
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(p) => panic!("expected an error, parsed {:#?}", p.jobs),
        Err(e) => {
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

#[test]
fn a_full_cache_and_the_defaults() {
    let text = r#"
jobs:
  build:
    cache:
      key: cargo
      paths: [/usr/local/cargo/registry, target]
      policy: pull
      when: always
      fallback_keys: [cargo-main, cargo]
      size: 8G
    steps: [true]
  test:
    files: none
    cache:
      paths: [/root/.cache/pip]
    steps: [true]
"#;
    let all = caches(text);
    assert_eq!(
        all[0],
        [PlannedCache {
            key: "cargo".into(),
            fallback_keys: vec!["cargo-main".into(), "cargo".into()],
            paths: vec![
                "/usr/local/cargo/registry".into(),
                "/workspace/target".into()
            ],
            policy: CachePolicy::Pull,
            when: CacheWhen::Always,
            size: 8 << 30,
        }]
    );
    assert_eq!(
        all[1],
        [PlannedCache {
            key: "default".into(),
            fallback_keys: vec![],
            paths: vec!["/root/.cache/pip".into()],
            policy: CachePolicy::PullPush,
            when: CacheWhen::OnSuccess,
            size: DEFAULT_CACHE_SIZE,
        }]
    );
}

#[test]
fn a_jobs_cache_replaces_the_defaults_and_an_empty_list_turns_them_off() {
    let text = r#"
defaults:
  cache:
    - { key: a, paths: [/a] }
    - { key: b, paths: [/b] }
jobs:
  inherits: { steps: [true] }
  replaces:
    cache: { key: c, paths: [/c] }
    steps: [true]
  none:
    cache: []
    steps: [true]
"#;
    let keys: Vec<Vec<String>> = caches(text)
        .into_iter()
        .map(|list| list.into_iter().map(|c| c.key).collect())
        .collect();
    assert_eq!(keys, [vec!["a", "b"], vec!["c"], vec![]]);
    assert!(caches("jobs:\n  a: { steps: [true] }\n")[0].is_empty());
}

#[test]
fn relative_paths_follow_each_jobs_workdir() {
    let text = r#"
defaults:
  cache: { key: k, paths: [target, ../shared, ./x/../y/] }
jobs:
  workspace: { steps: [true] }
  elsewhere:
    workdir: /src/app
    steps: [true]
  root:
    files: none
    cache: { key: k, paths: [target] }
    steps: [true]
"#;
    let paths: Vec<Vec<String>> = caches(text)
        .into_iter()
        .map(|list| list[0].paths.clone())
        .collect();
    assert_eq!(paths[0], ["/workspace/target", "/shared", "/workspace/y"]);
    assert_eq!(paths[1], ["/src/app/target", "/src/shared", "/src/app/y"]);
    assert_eq!(paths[2], ["/target"]);
}

#[test]
fn relative_paths_are_checked_in_every_job_that_inherits_them() {
    // `defaults` after `jobs`, `workdir` after `cache`: the check still
    // points at the path.
    let text = "jobs:\n  ok: { steps: [true] }\n  root:\n    files: none\n    steps: [true]\ndefaults:\n  cache: { paths: [../shared] }\n";
    assert_eq!(
        error(text),
        "p.yml:7:20: cache path `../shared` climbs above `/` from the workdir `/` of job `root`"
    );
    let text = "jobs:\n  a:\n    cache: { paths: [proc] }\n    steps: [true]\n    workdir: /\n";
    assert_eq!(
        error(text),
        "p.yml:3:22: cache path `/proc` is outside the guest's writable tree: /proc is made anew at every boot (`proc` from the workdir `/` of job `a`)"
    );
}

/// Job `a` with this `cache:` (indented under it).
fn job_with(cache: &str) -> String {
    let indented: String = cache.lines().map(|l| format!("    {l}\n")).collect();
    format!("jobs:\n  a:\n{indented}    steps: [true]\n")
}

/// `cache:` of job `a` → the error.
fn job_error(cache: &str) -> String {
    error(&job_with(cache))
}

/// `cache:` of job `a` → its planned caches.
fn caches_of(cache: &str) -> Vec<PlannedCache> {
    caches(&job_with(cache)).remove(0)
}

#[test]
fn mistakes_are_located() {
    let key_chars = "a key has letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 128 characters";
    let cases = [
        ("cache:", "3:11: `cache` in job `a` is empty: write `cache: []` for no cache".to_string()),
        ("cache: cargo", "3:12: `cache` in job `a` must be a mapping with `key` and `paths`, or a list of them, not `cargo`".into()),
        ("cache: [cargo]", "3:13: a cache is a mapping with `key` and `paths`, not `cargo`".into()),
        ("cache: { key: k }", "3:12: missing `paths` in a `cache` in job `a`: list the guest directories to keep".into()),
        ("cache: { key: k, paths: [] }", "3:29: `paths` of a cache must not be empty: list the guest directories to keep".into()),
        ("cache: { key: k, paths: /a }", "3:29: `paths` of a cache is a list: write `paths: [/a]`".into()),
        ("cache: { key: k, paths: [/a], untracked: true }", "3:35: unknown key `untracked` in a `cache` in job `a` (valid keys: key, paths, policy, when, fallback_keys, size)".into()),
        ("cache: { key: k, paths: [/a], key: j }", "3:35: duplicate key `key` in a `cache` in job `a`".into()),
        ("cache: { key: a/b, paths: [/a] }", format!("3:19: invalid cache key `a/b`: {key_chars}")),
        ("cache: { key: .., paths: [/a] }", format!("3:19: invalid cache key `..`: {key_chars}")),
        ("cache: { key: ~, paths: [/a] }", "3:19: a cache `key` is empty: write one, or leave `key` out for `default`".into()),
        ("cache: { key: { prefix: x }, paths: [/a] }", "3:19: missing `files` in a cache `key`: list the files whose contents make the key, or write the key itself".into()),
        ("cache: { key: { files: [] }, paths: [/a] }", "3:28: `files` of a cache `key` must not be empty".into()),
        ("cache: { key: { files: Cargo.lock }, paths: [/a] }", "3:28: `files` of a cache `key` is a list: write `files: [Cargo.lock]`".into()),
        ("cache: { key: { files: [../x] }, paths: [/a] }", "3:29: cache key file `../x` is outside the workspace: name a file relative to /repo".into()),
        ("cache: { key: { files: [/etc/passwd] }, paths: [/a] }", "3:29: cache key file `/etc/passwd` is outside the workspace: name a file relative to /repo".into()),
        ("cache: { key: { files: [a, ./a] }, paths: [/a] }", "3:32: cache key file `a` is listed twice".into()),
        ("cache: { key: { files: [a], prefix: 'a b' }, paths: [/a] }", format!("3:41: invalid cache key prefix `a b`: {key_chars}")),
        ("cache: { key: { files: [a], prefix: x, extra: 1 }, paths: [/a] }", "3:44: unknown key `extra` in a cache `key` (valid keys: files, prefix)".into()),
        ("cache: { paths: [/a], policy: pull_push }", "3:35: invalid cache `policy: pull_push`: expected `pull`, `push` or `pull-push`".into()),
        ("cache: { paths: [/a], when: never }", "3:33: invalid cache `when: never`: expected `on_success`, `on_failure` or `always`".into()),
        ("cache: { paths: [/a], size: 8 }", "3:33: cache `size: 8` is too small: a cache needs at least 16M".into()),
        ("cache: { paths: [/a], size: lots }", "3:33: invalid size `lots`: expected a size like `4096`, `200M` or `1G`".into()),
        ("cache: { paths: [/a], fallback_keys: [main, ../x] }", format!("3:49: invalid fallback key `../x`: {key_chars}")),
        ("cache: { paths: [/a], fallback_keys: [main, main] }", "3:49: fallback key `main` is listed twice".into()),
        ("cache: { paths: [/a], fallback_keys: main }", "3:42: `fallback_keys` is a list: write `fallback_keys: [main]`".into()),
        ("cache: { paths: [/] }", "3:22: cache path `/` is outside the guest's writable tree: name the directories to keep".into()),
        ("cache: { paths: [/sys/kernel] }", "3:22: cache path `/sys/kernel` is outside the guest's writable tree: /sys is made anew at every boot".into()),
        ("cache: { paths: [/dev/shm] }", "3:22: cache path `/dev/shm` is outside the guest's writable tree: /dev is made anew at every boot".into()),
        ("cache: { paths: [/run/x] }", "3:22: cache path `/run/x` is outside the guest's writable tree: /run is made anew at every boot".into()),
        ("cache: { paths: [/proc/../proc/1] }", "3:22: cache path `/proc/1` is outside the guest's writable tree: /proc is made anew at every boot".into()),
        ("cache: { paths: [/usr] }", "3:22: cache path `/usr` is outside the guest's writable tree: it holds the runner's own /usr/sbin/runner-agent".into()),
        ("cache: { paths: [/etc/runner/x] }", "3:22: cache path `/etc/runner/x` is outside the guest's writable tree: it is in the runner's own /etc/runner".into()),
        ("cache: { paths: [/..] }", "3:22: cache path `/..` climbs above `/`".into()),
        ("cache: { paths: [/a, /b, /a/c] }", "3:30: cache path `/a/c` overlaps `/a`: one is inside the other, and a directory can be in one cache path only".into()),
        ("cache: { paths: [/a, /a/] }", "3:26: cache path `/a` is listed twice".into()),
        ("cache: { paths: [/workspace/target, target] }", "3:41: cache path `/workspace/target` is listed twice (`target` from the workdir `/workspace` of job `a`)".into()),
        ("cache: { paths: [/workspace] }", "3:22: cache path `/workspace` would hide `/workspace`, where `files` copies to: cache a directory inside it".into()),
        ("cache: { paths: ['.'] }", "3:22: cache path `/workspace` would hide `/workspace`, where `files` copies to (`.` from the workdir `/workspace` of job `a`): cache a directory inside it".into()),
        ("cache: { paths: [\"/a\\nb\"] }", "3:22: cache path \"/a\\nb\" is not a usable guest path (too long, or control characters)".into()),
        ("cache:\n  - { key: a, paths: [/a] }\n  - { key: b, paths: [/b/c, /a/x] }", "5:33: cache path `/a/x` overlaps `/a`: one is inside the other, and a directory can be in one cache path only".into()),
        ("cache:\n  - { key: a, paths: [/a] }\n  - { key: a, paths: [/b] }", "5:16: two caches of one job have the key `a`: each needs its own".into()),
        ("cache:\n  - { paths: [/a] }\n  - { paths: [/b] }", "5:9: two caches of one job have the key `default`: each needs its own".into()),
    ];
    for (cache, expected) in cases {
        let err = job_error(cache);
        assert_eq!(err, format!("p.yml:{expected}"), "{cache}");
    }
}

#[test]
fn limits_are_errors() {
    let many = |n: usize, item: &dyn Fn(usize) -> String| -> String {
        (0..n).map(item).collect::<Vec<_>>().join(", ")
    };
    let paths = many(17, &|i| format!("/p{i}"));
    let err = job_error(&format!("cache: {{ paths: [{paths}] }}"));
    assert!(err.ends_with("more than 16 paths in a cache"), "{err}");
    let files = many(17, &|i| format!("f{i}"));
    let err = job_error(&format!(
        "cache: {{ key: {{ files: [{files}] }}, paths: [/a] }}"
    ));
    assert!(
        err.ends_with("more than 16 files in a cache `key`"),
        "{err}"
    );
    let fallbacks = many(17, &|i| format!("k{i}"));
    let err = job_error(&format!(
        "cache: {{ paths: [/a], fallback_keys: [{fallbacks}] }}"
    ));
    assert!(
        err.ends_with("more than 16 `fallback_keys` in a cache"),
        "{err}"
    );
    let cache = |i| format!("{{ key: k{i}, paths: [/p{i}] }}");
    let err = job_error(&format!("cache: [{}]", many(MAX_CACHES + 1, &cache)));
    assert!(
        err.ends_with(&format!(
            "more than {MAX_CACHES} caches in job `a`: each is a disk of the VM"
        )),
        "{err}"
    );
    let most = caches_of(&format!("cache: [{}]", many(MAX_CACHES, &cache)));
    assert_eq!(most.len(), MAX_CACHES);
    let long = "k".repeat(129);
    let err = job_error(&format!("cache: {{ key: {long}, paths: [/a] }}"));
    assert!(err.contains("at most 128 characters"), "{err}");
    let prefix = "p".repeat(112);
    let err = job_error(&format!(
        "cache: {{ key: {{ files: [a], prefix: {prefix} }}, paths: [/a] }}"
    ));
    assert!(err.contains("longer than 111 characters"), "{err}");
}

#[test]
fn a_files_key_is_hashed_from_the_workspace_at_parse_time() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    std::fs::write(ws.join("Cargo.lock"), "one").unwrap();
    let text = "jobs:\n  a:\n    cache: { key: { files: [Cargo.lock, missing.lock], prefix: cargo }, paths: [/a] }\n    steps: [true]\n";
    let key = |ws: &Path| {
        let pipeline = parse_in(ws, text).unwrap();
        Plan::new(&pipeline).jobs[0].caches[0].key.clone()
    };
    let first = key(ws);
    assert!(
        first.starts_with("cargo-") && first.len() == 6 + 16,
        "{first}"
    );
    assert_eq!(key(ws), first);
    std::fs::write(ws.join("missing.lock"), "").unwrap();
    let second = key(ws);
    assert_ne!(second, first);
    std::fs::write(ws.join("Cargo.lock"), "two").unwrap();
    assert_ne!(key(ws), second);

    // The key is the same wherever the workspace is.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("Cargo.lock"), "two").unwrap();
    std::fs::write(other.path().join("missing.lock"), "").unwrap();
    assert_eq!(key(other.path()), key(ws));

    // Two caches whose keys hash to the same: one key twice.
    let twice = "jobs:\n  a:\n    cache:\n      - { key: { files: [x] }, paths: [/a] }\n      - { key: { files: [x] }, paths: [/b] }\n    steps: [true]\n";
    let err = parse_in(ws, twice).unwrap_err();
    assert!(
        err.starts_with("p.yml:5:16: two caches of one job have the key `"),
        "{err}"
    );
}

#[test]
fn a_key_file_that_leaves_the_workspace_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", ws.join("lock")).unwrap();
    let text =
        "jobs:\n  a:\n    cache: { key: { files: [lock] }, paths: [/a] }\n    steps: [true]\n";
    let err = parse_in(&ws, text).unwrap_err();
    assert_eq!(
        err,
        format!(
            "p.yml:3:29: cache key file `lock` leads out of the workspace {} through a symlink",
            ws.display()
        )
    );
}

#[test]
fn commits_follows_policy_and_when() {
    let cache = |policy, when| PlannedCache {
        key: "k".into(),
        fallback_keys: vec![],
        paths: vec!["/a".into()],
        policy,
        when,
        size: DEFAULT_CACHE_SIZE,
    };
    use CachePolicy::*;
    use CacheWhen::*;
    let table = [
        (PullPush, OnSuccess, [true, false]),
        (PullPush, OnFailure, [false, true]),
        (PullPush, Always, [true, true]),
        (Push, OnSuccess, [true, false]),
        (Push, Always, [true, true]),
        (Pull, OnSuccess, [false, false]),
        (Pull, OnFailure, [false, false]),
        (Pull, Always, [false, false]),
    ];
    for (policy, when, [on_success, on_failure]) in table {
        let cache = cache(policy, when);
        assert_eq!(
            cache.commits(true),
            on_success,
            "{policy:?} {when:?} success"
        );
        assert_eq!(
            cache.commits(false),
            on_failure,
            "{policy:?} {when:?} failure"
        );
    }
}
