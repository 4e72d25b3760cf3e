use std::ops::Range;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::lru::Limits;

const SIZE: u64 = 4 << 20;

fn store() -> (tempfile::TempDir, CacheStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(&dir.path().join("caches")).unwrap();
    (dir, store)
}

fn request(scope: &Scope, key: &str, fallback_keys: &[&str]) -> CacheRequest {
    CacheRequest {
        scope: scope.clone(),
        key: key.into(),
        fallback_keys: fallback_keys.iter().map(|k| k.to_string()).collect(),
        size: SIZE,
        pull: true,
    }
}

fn pr() -> Scope {
    Scope::new("pr-7", false)
}

fn main_branch() -> Scope {
    Scope::new("main", true)
}

/// What a job wrote: each (offset, bytes) goes into the layer as the
/// device would put it; returns the ranges the layer's reader would give.
fn write_layer(checkout: &Checkout, writes: &[(u64, Vec<u8>)]) -> Vec<Range<u64>> {
    let layer = std::fs::OpenOptions::new()
        .write(true)
        .open(&checkout.layer)
        .unwrap();
    writes
        .iter()
        .map(|(at, bytes)| {
            layer.write_all_at(bytes, *at).unwrap();
            *at..*at + bytes.len() as u64
        })
        .collect()
}

/// Commits `writes` to `key` in `scope`; returns the version's bytes.
fn commit(store: &CacheStore, scope: &Scope, key: &str, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let checkout = store.checkout(&request(scope, key, &[])).unwrap();
    let ranges = write_layer(&checkout, writes);
    let committed = store.commit(checkout, &ranges).unwrap();
    std::fs::read(version_path(store, scope, key, committed.version)).unwrap()
}

fn key_dir(store: &CacheStore, scope: &Scope, key: &str) -> std::path::PathBuf {
    store
        .dir()
        .join(if scope.protected {
            "protected"
        } else {
            "unprotected"
        })
        .join(&scope.name)
        .join(key)
}

fn version_path(store: &CacheStore, scope: &Scope, key: &str, version: u64) -> std::path::PathBuf {
    key_dir(store, scope, key).join(format!("v{version}.img"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn has_ext4_magic(bytes: &[u8]) -> bool {
    bytes[1080..1082] == [0x53, 0xef]
}

#[test]
fn a_missing_key_starts_from_an_empty_ext4_of_its_size() {
    let (_dir, store) = store();
    let checkout = store.checkout(&request(&pr(), "cargo", &["nope"])).unwrap();
    assert_eq!(checkout.found, Found::Empty);
    let base = std::fs::read(&checkout.base).unwrap();
    assert_eq!(base.len() as u64, SIZE);
    assert!(has_ext4_magic(&base));
    // The layer: an empty file of its own, in the key's directory.
    assert_eq!(std::fs::metadata(&checkout.layer).unwrap().len(), 0);
    assert_eq!(
        checkout.layer.parent().unwrap(),
        key_dir(&store, &pr(), "cargo")
    );
    let layer = checkout.layer.clone();
    store.discard(checkout);
    assert!(!layer.exists());
    // The empty image is kept for the next cold start of this size.
    let again = store.checkout(&request(&pr(), "other", &[])).unwrap();
    assert_eq!(
        again.base,
        store.dir().join("empty").join(format!("{SIZE}.img"))
    );
}

#[test]
fn a_commit_is_the_base_with_the_written_ranges_applied() {
    let (_dir, store) = store();
    let first = commit(
        &store,
        &pr(),
        "cargo",
        &[(0, vec![1; 8192]), (1 << 20, vec![2; 65536])],
    );
    let checkout = store.checkout(&request(&pr(), "cargo", &[])).unwrap();
    assert_eq!(checkout.found, Found::Key { version: 1 });
    let base = std::fs::read(&checkout.base).unwrap();
    assert_eq!(base, first);
    // Data over data, zeros over the 64 KiB of twos (they become a hole),
    // and a range that ends mid-file, off a 4 KiB boundary.
    let writes = vec![
        (4096, vec![3; 4096]),
        (1 << 20, vec![0; 65536]),
        (3 << 20, vec![4; 1536]),
    ];
    let ranges = write_layer(&checkout, &writes);
    let committed = store.commit(checkout, &ranges).unwrap();
    assert_eq!(committed.version, 2);
    assert_eq!(committed.bytes_written, 4096 + 65536 + 1536);
    assert!(!committed.replaced_concurrent);
    let mut expected = base;
    for (at, bytes) in &writes {
        expected[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
    }
    let path = version_path(&store, &pr(), "cargo", 2);
    assert!(std::fs::read(&path).unwrap() == expected);
    // The zeros hold no blocks.
    let version = std::fs::File::open(&path).unwrap();
    let holes: Vec<_> = blocks::data_extents(&version, SIZE)
        .map(Result::unwrap)
        .filter(|e| e.start < (1 << 20) + 65536 && e.end > 1 << 20)
        .collect();
    assert!(holes.is_empty(), "data at {holes:?}");
    // The old version went: nobody held it.
    assert_eq!(
        names(&key_dir(&store, &pr(), "cargo")),
        ["key.lock", "v2.img", "v2.json"]
    );
}

#[test]
fn a_version_a_job_holds_stays_until_it_ends() {
    let (_dir, store) = store();
    commit(&store, &pr(), "k", &[(0, vec![1; 4096])]);
    let reader = store.checkout(&request(&pr(), "k", &[])).unwrap();
    commit(&store, &pr(), "k", &[(0, vec![2; 4096])]);
    assert!(reader.base.exists());
    assert_eq!(std::fs::read(&reader.base).unwrap()[0], 1);
    let base = reader.base.clone();
    store.discard(reader);
    // Without another commit, the next open removes it.
    let again = CacheStore::open(store.dir()).unwrap();
    assert!(!base.exists());
    commit(&again, &pr(), "k", &[(0, vec![3; 4096])]);
    let dir = key_dir(&store, &pr(), "k");
    assert_eq!(names(&dir), ["key.lock", "v3.img", "v3.json"]);
}

#[test]
fn an_unprotected_scope_reads_a_protected_key_only_as_a_fallback_and_never_writes_it() {
    let (_dir, store) = store();
    let main = commit(&store, &main_branch(), "cargo-main", &[(0, vec![9; 4096])]);
    let protected_dir = key_dir(&store, &main_branch(), "cargo-main");
    let before = names(&protected_dir);

    // The key itself is not looked up in other scopes.
    let checkout = store.checkout(&request(&pr(), "cargo-main", &[])).unwrap();
    assert_eq!(checkout.found, Found::Empty);
    drop(checkout);

    let checkout = store
        .checkout(&request(&pr(), "cargo-pr", &["missing", "cargo-main"]))
        .unwrap();
    assert_eq!(
        checkout.found,
        Found::Fallback {
            key: "cargo-main".into(),
            scope: main_branch(),
            version: 1
        }
    );
    assert_eq!(std::fs::read(&checkout.base).unwrap(), main);
    // The layer lives with the job's own key, not with what it read.
    assert!(checkout
        .layer
        .starts_with(key_dir(&store, &pr(), "cargo-pr")));
    let ranges = write_layer(&checkout, &[(0, vec![6; 4096])]);
    let committed = store.commit(checkout, &ranges).unwrap();
    assert_eq!(committed.version, 1);
    let written = std::fs::read(version_path(&store, &pr(), "cargo-pr", 1)).unwrap();
    assert_eq!(written[0], 6);
    assert_eq!(names(&protected_dir), before);
    assert_eq!(std::fs::read(protected_dir.join("v1.img")).unwrap(), main);

    // An unprotected scope with a protected one's name is another scope.
    let same_name = Scope::new("main", false);
    let checkout = store
        .checkout(&request(&same_name, "cargo-main", &[]))
        .unwrap();
    assert_eq!(checkout.found, Found::Empty);
    let ranges = write_layer(&checkout, &[(0, vec![5; 4096])]);
    store.commit(checkout, &ranges).unwrap();
    assert_eq!(names(&protected_dir), before);
    assert_eq!(std::fs::read(protected_dir.join("v1.img")).unwrap(), main);
}

#[test]
fn the_newest_protected_commit_wins_among_fallbacks() {
    let (_dir, store) = store();
    commit(
        &store,
        &Scope::new("release", true),
        "base",
        &[(0, vec![1; 4096])],
    );
    // Creation times are in milliseconds.
    std::thread::sleep(Duration::from_millis(5));
    commit(&store, &main_branch(), "base", &[(0, vec![2; 4096])]);
    let checkout = store.checkout(&request(&pr(), "k", &["base"])).unwrap();
    assert!(matches!(&checkout.found, Found::Fallback { scope, .. } if *scope == main_branch()));
    assert_eq!(std::fs::read(&checkout.base).unwrap()[0], 2);
}

#[test]
fn two_concurrent_committers_leave_one_whole_version() {
    let (_dir, store) = store();
    let barrier = std::sync::Barrier::new(2);
    let checkouts: Vec<Checkout> = (0..2)
        .map(|_| store.checkout(&request(&pr(), "k", &[])).unwrap())
        .collect();
    let results: Vec<(u8, Committed)> = std::thread::scope(|s| {
        let handles: Vec<_> = checkouts
            .into_iter()
            .zip([7u8, 8u8])
            .map(|(checkout, byte)| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    let ranges = write_layer(&checkout, &[(1 << 20, vec![byte; 1 << 20])]);
                    barrier.wait();
                    (byte, store.commit(checkout, &ranges).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let replaced: Vec<_> = results
        .iter()
        .filter(|(_, c)| c.replaced_concurrent)
        .collect();
    assert_eq!(replaced.len(), 1, "{results:?}");
    let (winner, last) = replaced[0];
    assert_eq!(last.version, 2);
    let dir = key_dir(&store, &pr(), "k");
    assert_eq!(names(&dir), ["key.lock", "v2.img", "v2.json"]);
    let bytes = std::fs::read(dir.join("v2.img")).unwrap();
    assert!(bytes[1 << 20..2 << 20].iter().all(|b| b == winner));
    assert!(has_ext4_magic(&bytes));
}

#[test]
fn a_killed_commit_is_swept_at_the_next_open_and_the_previous_version_is_intact() {
    let (dir, store) = store();
    let before = commit(&store, &pr(), "k", &[(0, vec![1; 4096])]);
    let key = key_dir(&store, &pr(), "k");
    // What a runner killed mid-commit leaves: a temporary version, its
    // layer (no lock holder: the process is gone), metadata renamed
    // without its image; and an unfinished empty image.
    for leftover in [
        ".v2.tmp-abc123",
        "layer-dead01.tmp",
        "v2.json",
        ".v2.json.x1.tmp",
    ] {
        std::fs::write(key.join(leftover), b"half").unwrap();
    }
    std::fs::write(store.dir().join("empty/.8388608.tmp-zz"), b"half").unwrap();
    // A live job's layer, in this process, must survive.
    let live = store.checkout(&request(&pr(), "k", &[])).unwrap();
    let reopened = CacheStore::open(&dir.path().join("caches")).unwrap();
    let mut expected = vec!["key.lock", "v1.img", "v1.json"];
    let live_name = live
        .layer
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    expected.push(&live_name);
    expected.sort();
    assert_eq!(names(&key), expected);
    assert_eq!(
        names(&store.dir().join("empty")),
        ["4194304.img", "empty.lock"]
    );
    assert_eq!(std::fs::read(key.join("v1.img")).unwrap(), before);
    drop(live);
    let checkout = reopened.checkout(&request(&pr(), "k", &[])).unwrap();
    assert_eq!(checkout.found, Found::Key { version: 1 });
}

#[test]
fn a_damaged_version_is_discarded_and_the_job_falls_back() {
    let (_dir, store) = store();
    commit(&store, &main_branch(), "fallback", &[(0, vec![4; 4096])]);
    for damage in [
        "truncated",
        "metadata garbled",
        "metadata missing",
        "another size",
    ] {
        commit(&store, &pr(), "k", &[(0, vec![1; 4096])]);
        let dir = key_dir(&store, &pr(), "k");
        let version = *KeyDirProbe::versions(&dir).last().unwrap();
        let image = dir.join(format!("v{version}.img"));
        let meta = dir.join(format!("v{version}.json"));
        match damage {
            "truncated" => {
                std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&image)
                    .unwrap()
                    .set_len(SIZE / 2)
                    .unwrap();
            }
            "metadata garbled" => std::fs::write(&meta, b"{\"format\": 1, \"si").unwrap(),
            "metadata missing" => std::fs::remove_file(&meta).unwrap(),
            _ => {
                let text = std::fs::read_to_string(&meta).unwrap();
                let text = text.replace(&SIZE.to_string(), &(SIZE * 2).to_string());
                std::fs::write(&meta, text).unwrap();
            }
        }
        let checkout = store.checkout(&request(&pr(), "k", &["fallback"])).unwrap();
        assert!(matches!(checkout.found, Found::Fallback { .. }), "{damage}");
        assert_eq!(std::fs::read(&checkout.base).unwrap()[0], 4, "{damage}");
        assert!(!image.exists(), "{damage}: the damaged version stays");
        drop(checkout);
    }
}

/// Versions in a key's directory, from its file names.
struct KeyDirProbe;

impl KeyDirProbe {
    fn versions(dir: &Path) -> Vec<u64> {
        let mut versions: Vec<u64> = names(dir)
            .iter()
            .filter_map(|n| layout::version_of(n, ".img"))
            .collect();
        versions.sort_unstable();
        versions
    }
}

#[test]
fn a_full_disk_at_commit_leaves_nothing_and_keeps_the_previous_version() {
    let (_dir, store) = store();
    let before = commit(&store, &pr(), "k", &[(0, vec![1; 4096])]);
    let checkout = store.checkout(&request(&pr(), "k", &[])).unwrap();
    let ranges = write_layer(&checkout, &[(0, vec![2; 4096])]);
    let layer = checkout.layer.clone();
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        let checkout = store.checkout(&request(&pr(), "k", &[])).unwrap();
        let ranges = write_layer(&checkout, &[(0, vec![2; 4096])]);
        blocks::FAIL_WRITES_WITH.with(|f| f.set(Some(errno)));
        let err = store.commit(checkout, &ranges).unwrap_err();
        blocks::FAIL_WRITES_WITH.with(|f| f.set(None));
        assert!(err.is_disk_full(), "{err}");
        let message = err.to_string();
        assert_eq!(message.lines().count(), 1);
        assert!(
            message.contains("the host disk is full") && message.contains("nothing was committed"),
            "{message}"
        );
    }
    let dir = key_dir(&store, &pr(), "k");
    let layer_name = layer.file_name().unwrap().to_str().unwrap().to_string();
    let mut expected = vec![
        "key.lock".to_string(),
        "v1.img".into(),
        "v1.json".into(),
        layer_name,
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);
    assert_eq!(std::fs::read(dir.join("v1.img")).unwrap(), before);
    // The checkout that was not failed still commits.
    store.commit(checkout, &ranges).unwrap();
}

#[test]
fn a_range_outside_the_disk_is_refused() {
    let (_dir, store) = store();
    let checkout = store.checkout(&request(&pr(), "k", &[])).unwrap();
    let err = store
        .commit(checkout, std::slice::from_ref(&(SIZE - 4096..SIZE + 4096)))
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(KeyDirProbe::versions(&key_dir(&store, &pr(), "k")).is_empty());
}

#[test]
fn bad_names_and_sizes_are_refused_in_one_line() {
    let (_dir, store) = store();
    for (scope, key, size) in [
        ("../x", "k", SIZE),
        ("s", "a/b", SIZE),
        ("s", "k", SIZE + 1),
        ("s", "k", 4096),
    ] {
        let request = CacheRequest {
            scope: Scope::new(scope, false),
            key: key.into(),
            fallback_keys: vec![],
            size,
            pull: true,
        };
        let err = store.checkout(&request).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_store_another_user_could_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("caches");
    CacheStore::open(&root).unwrap();
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = CacheStore::open(&root).unwrap_err().to_string();
    assert!(err.contains("writable by everyone"), "{err}");
}

#[test]
fn export_and_import_carry_a_version_whole() {
    let (dir, store) = store();
    let original = commit(&store, &main_branch(), "cargo", &[(8192, vec![3; 100_000])]);
    let file = dir.path().join("cargo.cache");
    let exported = store.export("cargo", None, &file, false).unwrap();
    assert_eq!((exported.scope, exported.version), (main_branch(), 1));
    // Sparse: far smaller than the image.
    assert!(std::fs::metadata(&file).unwrap().len() < SIZE / 2);
    let err = store.export("cargo", None, &file, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    store.export("cargo", None, &file, true).unwrap();

    let (_other_dir, other) = self::store();
    let imported = other.import(&file, &pr()).unwrap();
    assert_eq!(
        (imported.key.as_str(), imported.version, imported.size),
        ("cargo", 1, SIZE)
    );
    assert!(std::fs::read(version_path(&other, &pr(), "cargo", 1)).unwrap() == original);
    // Into a scope that has it: a new version.
    assert_eq!(other.import(&file, &pr()).unwrap().version, 2);
    let checkout = other.checkout(&request(&pr(), "cargo", &[])).unwrap();
    assert_eq!(checkout.found, Found::Key { version: 2 });
    drop(checkout);
    // The file names no scope: a protected one is only what the operator says.
    assert!(!other.dir().join("protected/main").exists());
    // The key in two scopes must be named.
    let err = other.export("cargo", None, &dir.path().join("x"), false);
    assert!(err.is_ok(), "only pr-7 has it");
    other.import(&file, &main_branch()).unwrap();
    let err = other
        .export("cargo", None, &dir.path().join("y"), false)
        .unwrap_err();
    assert!(err.to_string().contains("--scope"), "{err}");
    other
        .export("cargo", Some("main"), &dir.path().join("y"), false)
        .unwrap();
    let err = other
        .export("nothing", None, &dir.path().join("z"), false)
        .unwrap_err();
    assert_eq!(err.to_string(), "no cache `nothing`");
}

#[test]
fn a_damaged_or_hostile_export_is_refused_in_one_line() {
    let (dir, store) = store();
    commit(&store, &pr(), "cargo", &[(0, vec![3; 10_000])]);
    let file = dir.path().join("good");
    store.export("cargo", None, &file, false).unwrap();
    let good = std::fs::read(&file).unwrap();
    let header = 8 + 4 + 4 + 8 + "cargo".len();

    let le64 = |v: u64| v.to_le_bytes().to_vec();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("not an export", b"#!/bin/sh\necho hello\n".to_vec()),
        ("truncated", good[..good.len() - 100].to_vec()),
        ("trailing bytes", [good.clone(), vec![0]].concat()),
    ];
    let mut flipped = good.clone();
    flipped[header + 16 + 50] ^= 1;
    cases.push(("a flipped bit", flipped));
    let mut huge_key = good.clone();
    huge_key[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    cases.push(("a huge key length", huge_key));
    let mut bad_key = good.clone();
    bad_key[header - 5..header].copy_from_slice(b"../..");
    cases.push(("a key with slashes", bad_key));
    // A record that claims more bytes than exist: refused before any read.
    let mut huge = good[..header].to_vec();
    huge.extend(le64(0));
    huge.extend(le64(u64::MAX - 1));
    cases.push(("a huge record", huge));
    let mut past_end = good[..header].to_vec();
    past_end.extend(le64(SIZE - 10));
    past_end.extend(le64(20));
    cases.push(("a record past the end", past_end));
    let mut huge_size = good.clone();
    huge_size[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("a huge size", huge_size));

    for (what, bytes) in cases {
        let path = dir.path().join("bad");
        std::fs::write(&path, &bytes).unwrap();
        let err = store.import(&path, &pr()).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(err.contains("is not a cache export"), "{what}: {err}");
    }
    // Nothing was made of them, and nothing left half-written.
    let key = key_dir(&store, &pr(), "cargo");
    assert_eq!(names(&key), ["key.lock", "v1.img", "v1.json"]);
}

#[test]
fn prune_removes_the_least_recently_used_and_never_what_a_job_holds() {
    let (_dir, store) = store();
    for (key, age_days) in [("old", 30), ("older", 40), ("new", 1), ("held", 50)] {
        commit(&store, &pr(), key, &[(0, vec![1; 65536])]);
        let meta = key_dir(&store, &pr(), key).join("v1.json");
        let file = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86400))
            .unwrap();
    }
    // A checkout records a use: make "held" old again after it.
    let held = store.checkout(&request(&pr(), "held", &[])).unwrap();
    let meta = key_dir(&store, &pr(), "held").join("v1.json");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&meta)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(50 * 86400))
        .unwrap();

    let listed = store.list().unwrap();
    let keys: Vec<_> = listed.iter().map(|l| (l.key.as_str(), l.in_use)).collect();
    assert_eq!(
        keys,
        [
            ("held", true),
            ("new", false),
            ("old", false),
            ("older", false)
        ]
    );
    assert!(listed
        .iter()
        .all(|l| l.size == SIZE && l.versions == [1] && l.disk_bytes > 0));

    let limits = Limits {
        older_than: Some(Duration::from_secs(20 * 86400)),
        max_bytes: None,
    };
    let pruned = store.prune(limits, SystemTime::now()).unwrap();
    let removed: Vec<String> = pruned.removed.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        removed,
        ["older version 1 (scope pr-7)", "old version 1 (scope pr-7)"]
    );
    assert_eq!(pruned.in_use.len(), 1);
    assert!(version_path(&store, &pr(), "held", 1).exists());
    drop(held);
    // A cap of nothing: everything nobody holds goes, oldest first.
    let pruned = store.enforce_cap(0).unwrap();
    let removed: Vec<String> = pruned.removed.iter().map(|r| r.to_string()).collect();
    assert_eq!(removed[0], "held version 1 (scope pr-7)");
    assert!(removed.contains(&"new version 1 (scope pr-7)".to_string()));
    assert_eq!(pruned.remaining_bytes, 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn clear_removes_a_key_in_every_scope_or_one() {
    let (_dir, store) = store();
    commit(&store, &pr(), "k", &[(0, vec![1; 4096])]);
    commit(&store, &main_branch(), "k", &[(0, vec![1; 4096])]);
    let cleared = store.clear("k", Some("pr-7")).unwrap();
    assert_eq!(cleared.removed.len(), 1);
    assert!(version_path(&store, &main_branch(), "k", 1).exists());
    let held = store.checkout(&request(&main_branch(), "k", &[])).unwrap();
    let cleared = store.clear("k", None).unwrap();
    assert_eq!((cleared.removed.len(), cleared.in_use.len()), (0, 1));
    drop(held);
    assert_eq!(store.clear("k", None).unwrap().removed.len(), 1);
    assert_eq!(
        store.clear("k", None).unwrap_err().to_string(),
        "no cache `k`"
    );
}

#[test]
fn a_push_only_checkout_starts_empty_whatever_the_key_holds() {
    let (_dir, store) = store();
    commit(&store, &pr(), "deps", &[(0, vec![9; 4096])]);
    let mut push = request(&pr(), "deps", &["deps"]);
    push.pull = false;
    let checkout = store.checkout(&push).unwrap();
    assert_eq!(checkout.found, Found::Empty);
    let ranges = write_layer(&checkout, &[(0, vec![3; 4096])]);
    assert_eq!(store.commit(checkout, &ranges).unwrap().version, 2);
}

#[test]
fn a_version_the_guest_could_not_mount_is_forgotten_in_its_own_scope_only() {
    let (_dir, store) = store();
    commit(&store, &main_branch(), "deps", &[(0, vec![9; 4096])]);
    commit(&store, &pr(), "deps-pr", &[(0, vec![7; 4096])]);

    // Read through a fallback from a protected scope: never removed there.
    let checkout = store.checkout(&request(&pr(), "other", &["deps"])).unwrap();
    assert!(matches!(checkout.found, Found::Fallback { .. }));
    assert!(!store.forget(checkout));
    assert!(version_path(&store, &main_branch(), "deps", 1).exists());

    // Its own key: removed, unless another job still holds it.
    let held = store.checkout(&request(&pr(), "deps-pr", &[])).unwrap();
    let checkout = store.checkout(&request(&pr(), "deps-pr", &[])).unwrap();
    assert!(!store.forget(checkout));
    assert!(store.forget(held));
    assert!(!version_path(&store, &pr(), "deps-pr", 1).exists());
    let next = store.checkout(&request(&pr(), "deps-pr", &[])).unwrap();
    assert_eq!(next.found, Found::Empty);
}
