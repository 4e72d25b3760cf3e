//! `runner cache` as an operator runs it, on a store filled through the
//! store's own API (no VM boots here): the table, one line per action,
//! export and import between two stores, and bad input as one line with a
//! non-zero exit.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use e2e_tests::runner_bin;
use runner_machine::caches::{CacheRequest, CacheStore, Scope};

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
