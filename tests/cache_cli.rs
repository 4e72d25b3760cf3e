//! `runner cache` as an operator runs it, on a store filled through the
//! store's own API (no VM boots here): the table, one line per action,
//! export and import between two stores, and bad input as one line with a
//! non-zero exit. And the same LRU cap on the image and snapshot caches.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use e2e_tests::runner_bin;
use runner_machine::caches::{CacheRequest, CacheStore, Scope};
use runner_machine::trusted_cache::TrustedCache;

const SIZE: u64 = 8 << 20;

fn cache(dir: &Path, args: &[&str]) -> Output {
    Command::new(runner_bin())
        .env("RUNNER_CACHE_DIR", dir)
        .args(["cache"])
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bad input (exit 2), or a file that cannot be read (exit 1).
fn assert_refused(out: &Output, expected: &str) {
    let stderr = text(&out.stderr);
    let code = if expected.starts_with('/') { 1 } else { 2 };
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("runner: ") && stderr.contains(expected),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

/// Commits `byte` x 64 KiB at 1 MiB into `key` in `scope`.
fn fill(store: &CacheStore, scope: &Scope, key: &str, byte: u8) {
    let checkout = store
        .checkout(&CacheRequest {
            scope: scope.clone(),
            key: key.into(),
            fallback_keys: vec![],
            size: SIZE,
            pull: true,
        })
        .unwrap();
    let layer = std::fs::OpenOptions::new()
        .write(true)
        .open(&checkout.layer)
        .unwrap();
    layer.write_all_at(&[byte; 65536], 1 << 20).unwrap();
    let written = (1 << 20)..(1 << 20) + 65536;
    store
        .commit(checkout, std::slice::from_ref(&written))
        .unwrap();
}

#[test]
fn list_export_import_clear_and_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caches");
    let store = CacheStore::open(&dir).unwrap();
    let main = Scope::new("main", true);
    let pr = Scope::new("pr-12", false);
    fill(&store, &main, "cargo", 1);
    fill(&store, &main, "cargo", 2);
    fill(&store, &pr, "pip", 3);

    let out = cache(&dir, &["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("SCOPE") && lines[0].contains("ON DISK"),
        "{table}"
    );
    let cargo: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cargo[..4],
        ["main", "(protected)", "cargo", "8.0M"],
        "{table}"
    );
    assert!(
        lines[2].starts_with("pr-12") && lines[2].contains("pip"),
        "{table}"
    );
    assert!(lines[3].starts_with("2 keys"), "{table}");

    // Export, then import on "another machine" (another store).
    let file = tmp.path().join("cargo.cache");
    let file_arg = file.to_str().unwrap();
    let out = cache(&dir, &["export", "cargo", "-o", file_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("exported cargo version 2 (scope main (protected))"));
    assert_refused(
        &cache(&dir, &["export", "cargo", "-o", file_arg]),
        "--force",
    );
    let other = tmp.path().join("other");
    let out = cache(
        &other,
        &["import", file_arg, "--scope", "main", "--protected"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "imported cargo as version 1 in scope main (protected), 8.0M\n"
    );
    let original = std::fs::read(dir.join("protected/main/cargo/v2.img")).unwrap();
    let imported = std::fs::read(other.join("protected/main/cargo/v1.img")).unwrap();
    assert!(original == imported);

    // Bad input: one line, exit 2.
    assert_refused(&cache(&dir, &["clear", "nothing"]), "no cache `nothing`");
    assert_refused(&cache(&dir, &["clear", "../etc"]), "invalid cache key");
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"not a cache").unwrap();
    assert_refused(
        &cache(&dir, &["import", junk.to_str().unwrap(), "--scope", "x"]),
        "is not a cache export",
    );
    assert_refused(
        &cache(&dir, &["import", "/nonexistent/file", "--scope", "x"]),
        "/nonexistent/file",
    );

    // Clear one scope's key, then prune the rest by size.
    let out = cache(&dir, &["clear", "pip", "--scope", "pr-12"]);
    assert_eq!(text(&out.stdout), "removed pip version 1 (scope pr-12)\n");
    let out = cache(&dir, &["prune", "--max-size", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("removed cargo version 2 (scope main (protected))"));
    assert!(text(&out.stderr).starts_with("runner: pruned"));
    let out = cache(&dir, &["list"]);
    assert!(
        text(&out.stdout).contains("0 keys"),
        "{}",
        text(&out.stdout)
    );
}

/// A spec image entry as `runner image build` leaves it, `age_days` after
/// its last use, taking `bytes` on disk.
fn plant_image(cache: &TrustedCache, byte: u8, bytes: usize, age_days: u64) -> String {
    let dir = cache.subdir("images").unwrap();
    let key = format!("{byte:02x}").repeat(32);
    let short = &key[..16];
    let image = dir.join(format!("{short}.ext4"));
    let mut content = vec![byte; bytes];
    content[1080..1082].copy_from_slice(&[0x53, 0xef]);
    std::fs::write(&image, &content).unwrap();
    let manifest = serde_json::json!({
        "version": 1, "key": key, "summary": "test", "size_bytes": bytes,
        "sha256": "0".repeat(64), "built_at": 0, "inputs": [],
    });
    std::fs::write(dir.join(format!("{short}.json")), manifest.to_string()).unwrap();
    cache
        .seal(
            &image,
            &dir.join(format!("{short}.seal")),
            &format!("image {key}"),
            &"0".repeat(64),
        )
        .unwrap();
    stamp(&dir.join(format!("{short}.used")), age_days);
    short.to_string()
}

/// Creates `path` with a modification time `age_days` ago.
fn stamp(path: &Path, age_days: u64) {
    let file = std::fs::File::create(path).unwrap();
    let when = SystemTime::now() - Duration::from_secs(age_days * 86400);
    file.set_modified(when).unwrap();
}

#[test]
fn image_and_snapshot_prune_evict_the_least_recently_used() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runner-cache");
    let cache = TrustedCache::at(root.clone()).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(runner_bin())
            .env("RUNNER_CACHE", &root)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // Three images of 1 MiB: at most 2.5 MiB keeps the two most recent.
    let oldest = plant_image(&cache, 1, 1 << 20, 9);
    let middle = plant_image(&cache, 2, 1 << 20, 5);
    let newest = plant_image(&cache, 3, 1 << 20, 1);
    let out = run(&["image", "prune", "--max-size", "2560K"]);
    assert_eq!(out, format!("removed {oldest}\n"));
    let out = run(&["image", "prune", "--older-than", "3d"]);
    assert_eq!(out, format!("removed {middle}\n"));
    let images = cache.subdir("images").unwrap();
    assert!(images.join(format!("{newest}.ext4")).exists());

    let snapshots = cache.subdir("snapshots").unwrap();
    for (key, age_days) in [("aaaa", 9), ("bbbb", 5), ("cccc", 1)] {
        std::fs::write(snapshots.join(format!("{key}.snap")), vec![1u8; 1 << 20]).unwrap();
        stamp(&snapshots.join(format!("{key}.used")), age_days);
    }
    let out = run(&["snapshot", "prune", "--max-size", "1536K"]);
    let removed: Vec<&str> = out.lines().collect();
    assert_eq!(
        removed,
        [
            format!("removed {}", snapshots.join("aaaa.snap").display()),
            format!("removed {}", snapshots.join("bbbb.snap").display()),
        ]
    );
    assert!(snapshots.join("cccc.snap").exists());
    assert!(!snapshots.join("aaaa.used").exists());
}
