//! The engine under each policy, fed forged archives.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tar::EntryType;

use crate::forge::Forge;
use crate::*;

const GIB: u64 = 1 << 30;

/// The artifacts' default limits.
const ROOMY: Limits = Limits {
    max_bytes: GIB,
    max_entries: 10_000,
};

fn artifacts(tar: &[u8], dest: &Path, budget: &mut Budget) -> Unpacked {
    unpack(tar, dest, Policy::ARTIFACTS, budget)
}

/// Everything a hostile guest might try, plus a few honest entries.
fn hostile_archive(outside: &Path) -> Vec<u8> {
    let outside = outside.display().to_string();
    let mut tar = Forge::default();
    tar.entry("./", EntryType::Directory, 0o755, "", b"");
    tar.file("ok.txt", 0o644, "hello");
    tar.file("../escape.txt", 0o644, "out");
    tar.file(&format!("{outside}/absolute.txt"), 0o644, "out");
    tar.file("suid", 0o4777, "#!/bin/sh\n");
    tar.file("sgid-sticky", 0o3775, "x");
    tar.entry("shadow", EntryType::Symlink, 0o777, "/etc/shadow", b"");
    tar.entry("up", EntryType::Symlink, 0o777, "../outside", b"");
    tar.entry("loop", EntryType::Symlink, 0o777, ".", b"");
    tar.entry("sub", EntryType::Directory, 0o7777, "", b"");
    tar.entry("inner", EntryType::Symlink, 0o777, "sub", b"");
    tar.file("inner/through.txt", 0o644, "via link");
    tar.entry(
        "up/through.txt",
        EntryType::Regular,
        0o644,
        "",
        b"via refused link",
    );
    tar.entry("hard-out", EntryType::Link, 0o644, "../outside/secret", b"");
    tar.entry(
        "hard-abs",
        EntryType::Link,
        0o644,
        &format!("{outside}/secret"),
        b"",
    );
    tar.entry("hard-in", EntryType::Link, 0o644, "ok.txt", b"");
    tar.entry("null", EntryType::Char, 0o666, "", b"");
    tar.entry("disk", EntryType::Block, 0o666, "", b"");
    tar.entry("pipe", EntryType::Fifo, 0o666, "", b"");
    tar.file("pre/x.txt", 0o644, "through a symlink already there");
    tar.file("pre", 0o644, "replaces the symlink, not its target");
    tar.finish()
}

struct Dirs {
    _root: tempfile::TempDir,
    dest: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// `dest` and a sibling `outside` holding a secret; `dest/pre` is a symlink
/// to `outside`, as if something had left it there.
fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let outside = root.path().join("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("pre")).unwrap();
    Dirs {
        _root: root,
        dest,
        outside,
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_outside_untouched(dirs: &Dirs) {
    let mut names: Vec<_> = fs::read_dir(&dirs.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    assert_eq!(
        fs::read_to_string(dirs.outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!dirs.dest.parent().unwrap().join("escape.txt").exists());
}

fn check_hostile_result(dirs: &Dirs, unpacked: &Unpacked) {
    assert!(unpacked.error.is_none(), "{:?}", unpacked.error);
    let refused: Vec<String> = unpacked
        .refused
        .iter()
        .map(|r| format!("refused: {r}"))
        .collect();
    let outside = dirs.outside.display();
    let expected = [
        "refused: ../escape.txt: the name contains `..`".to_string(),
        format!("refused: {outside}/absolute.txt: absolute names are not allowed"),
        "refused: shadow: symlink to /etc/shadow leads out of its directory (only relative targets without `..` are kept)".to_string(),
        "refused: up: symlink to ../outside leads out of its directory (only relative targets without `..` are kept)".to_string(),
        "refused: loop: symlink to . is its own directory: a loop".to_string(),
        "refused: inner/through.txt: inner is a symlink, and nothing is written through one".to_string(),
        "refused: hard-out: hard link target: the name contains `..`".to_string(),
        "refused: hard-abs: hard link target: absolute names are not allowed".to_string(),
        format!("refused: null: {}", Refusal::DeviceNode),
        format!("refused: disk: {}", Refusal::DeviceNode),
        "refused: pipe: fifos are not unpacked".to_string(),
        "refused: pre/x.txt: pre is a symlink, and nothing is written through one".to_string(),
    ];
    assert_eq!(refused, expected);

    let dest = &dirs.dest;
    assert_eq!(fs::read_to_string(dest.join("ok.txt")).unwrap(), "hello");
    // Setuid, setgid and sticky bits are gone, and so is group/other write.
    assert_eq!(mode(&dest.join("suid")), 0o755);
    assert_eq!(mode(&dest.join("sgid-sticky")), 0o755);
    assert_eq!(mode(&dest.join("sub")), 0o755);
    // The downward symlink is kept as a symlink.
    assert_eq!(fs::read_link(dest.join("inner")).unwrap(), Path::new("sub"));
    assert!(!dest.join("sub/through.txt").exists());
    // `up` was refused, so `up/` became a plain directory inside `dest`.
    assert!(fs::symlink_metadata(dest.join("up")).unwrap().is_dir());
    // A hard link inside is a copy.
    assert_eq!(fs::read_to_string(dest.join("hard-in")).unwrap(), "hello");
    // The old symlink `pre` was replaced by a file; its target is untouched.
    let pre = fs::symlink_metadata(dest.join("pre")).unwrap();
    assert!(pre.is_file());
    for name in [
        "shadow", "loop", "null", "disk", "pipe", "hard-out", "hard-abs",
    ] {
        assert!(fs::symlink_metadata(dest.join(name)).is_err(), "{name}");
    }
    assert_outside_untouched(dirs);
}

#[test]
fn hostile_entries_are_refused_and_the_rest_unpacked() {
    let dirs = dirs();
    let tar = hostile_archive(&dirs.outside);
    let mut budget = Budget::new(ROOMY);
    let unpacked = artifacts(&tar, &dirs.dest, &mut budget);
    check_hostile_result(&dirs, &unpacked);
    // ok.txt, suid, sgid-sticky, sub, inner, up/through.txt (+ its dir),
    // hard-in, pre.
    assert_eq!(unpacked.entries, 8);
}

#[test]
fn a_huge_sparse_file_is_refused_before_a_byte_is_written() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("small.txt", 0o644, "small");
    tar.huge("big", 50 * GIB);
    // No content follows: had the unpacker tried to read it, it would have
    // failed with a stream error instead of the limit.
    let mut budget = Budget::new(ROOMY);
    let unpacked = artifacts(&tar.0, &dirs.dest, &mut budget);
    let error = unpacked.error.as_ref().expect("the limit");
    assert!(unpacked.over_budget());
    assert_eq!(
        error.to_string(),
        format!(
            "limit reached: big: its {} bytes would take the total past the limit of {GIB} bytes",
            50 * GIB
        )
    );
    assert!(fs::symlink_metadata(dirs.dest.join("big")).is_err());
    assert!(dirs.dest.join("small.txt").exists());
}

/// A GNU long name of 8 MiB: the tar crate would read it whole into memory
/// before yielding the entry; the framing check stops it at its header.
#[test]
fn an_oversized_long_name_is_refused_unread() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("first.txt", 0o644, "first");
    let long = vec![b'a'; 8 << 20];
    tar.entry("././@LongLink", EntryType::GNULongName, 0o644, "", &long);
    tar.file("after.txt", 0o644, "after");
    let mut budget = Budget::new(ROOMY);
    let unpacked = artifacts(&tar.finish(), &dirs.dest, &mut budget);
    let error = unpacked.error.as_ref().expect("refused").to_string();
    assert!(
        error.contains("extension header ('L') of 8388608 bytes"),
        "{error}"
    );
    assert!(dirs.dest.join("first.txt").exists());
    assert!(!dirs.dest.join("after.txt").exists());
}

#[test]
fn too_many_entries_stop_the_transfer() {
    let dirs = dirs();
    let mut tar = Forge::default();
    for i in 0..20 {
        tar.file(&format!("f{i:02}"), 0o644, "x");
    }
    let mut budget = Budget::new(Limits {
        max_bytes: GIB,
        max_entries: 5,
    });
    let unpacked = artifacts(&tar.finish(), &dirs.dest, &mut budget);
    assert_eq!(
        unpacked.error.map(|e| e.to_string()).as_deref(),
        Some("limit reached: f05: more than 5 entries")
    );
    assert_eq!(unpacked.entries, 5);
    assert!(!dirs.dest.join("f05").exists());
}

#[test]
fn the_budget_is_shared_by_a_job_s_transfers() {
    let dirs = dirs();
    let mut budget = Budget::new(Limits {
        max_bytes: 8,
        max_entries: 100,
    });
    let mut first = Forge::default();
    first.file("a", 0o644, "12345");
    assert!(artifacts(&first.finish(), &dirs.dest, &mut budget)
        .error
        .is_none());
    let mut second = Forge::default();
    second.file("b", 0o644, "12345");
    let unpacked = artifacts(&second.finish(), &dirs.dest, &mut budget);
    assert!(unpacked.over_budget(), "{:?}", unpacked.error);
    assert!(!dirs.dest.join("b").exists());
}

fn mtime(path: &Path) -> SystemTime {
    fs::symlink_metadata(path).unwrap().modified().unwrap()
}

const MTIME: u64 = 1_700_000_000;

/// An entry with an mtime, as image layers have.
fn timed(tar: &mut Forge, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) {
    let start = tar.0.len();
    tar.entry(name, kind, mode, link, data);
    let header = tar::Header::from_byte_slice(&tar.0[start..start + 512]).clone();
    let mut header = header;
    header.set_mtime(MTIME);
    header.set_cksum();
    tar.0[start..start + 512].copy_from_slice(header.as_bytes());
}

#[test]
fn an_image_layer_overlays_what_is_below_it() {
    let dirs = dirs();
    let dest = &dirs.dest;
    fs::create_dir(dest.join("was-dir")).unwrap();
    fs::write(dest.join("was-dir/inner"), "x").unwrap();
    fs::write(dest.join("was-file"), "x").unwrap();
    let mut tar = Forge::default();
    timed(&mut tar, "/etc/", EntryType::Directory, 0o755, "", b"");
    timed(
        &mut tar,
        "/etc/passwd",
        EntryType::Regular,
        0o644,
        "",
        b"root",
    );
    timed(&mut tar, "sudo", EntryType::Regular, 0o4755, "", b"s");
    tar.symlink("tmp", "/tmp");
    tar.hard_link("etc/again", "/etc/passwd");
    tar.entry("pipe", EntryType::Fifo, 0o644, "", b"");
    // An upper layer's file replaces a directory, its directory a file, a
    // symlink (`pre`, to `outside`), without following it.
    tar.file("was-dir", 0o644, "now a file");
    timed(&mut tar, "was-file/", EntryType::Directory, 0o500, "", b"");
    tar.file("was-file/inside", 0o644, "in a read-only directory");
    tar.dir("pre/", 0o755);
    let mut unpacker = Unpacker::new(dest, Policy::OCI_LAYER).unwrap();
    let mut budget = Budget::new(ROOMY);
    let done = unpacker.unpack(tar.finish().as_slice(), &mut budget, &mut NoVisitor);
    assert!(done.error.is_none(), "{:?}", done.error);
    unpacker.finish().unwrap();

    assert_eq!(fs::read_to_string(dest.join("etc/passwd")).unwrap(), "root");
    assert_eq!(
        mtime(&dest.join("etc/passwd")),
        SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME)
    );
    // Directory times are set last, after their children were added.
    assert_eq!(
        mtime(&dest.join("etc")),
        SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME)
    );
    // On disk, no setuid bit; the caller records the header's mode.
    assert_eq!(mode(&dest.join("sudo")), 0o755);
    assert_eq!(fs::read_link(dest.join("tmp")).unwrap(), Path::new("/tmp"));
    let again = fs::metadata(dest.join("etc/again")).unwrap();
    assert_eq!(again.nlink(), 2);
    assert!(fs::symlink_metadata(dest.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode(&dest.join("pipe")), 0o644);
    assert_eq!(
        fs::read_to_string(dest.join("was-dir")).unwrap(),
        "now a file"
    );
    // Read-only as the layer says, with the owner's access kept.
    assert_eq!(mode(&dest.join("was-file")), 0o700);
    assert!(dest.join("was-file/inside").is_file());
    assert!(fs::symlink_metadata(dest.join("pre")).unwrap().is_dir());
    assert_outside_untouched(&dirs);
}

#[test]
fn an_image_layer_is_never_written_through_a_symlink() {
    for (link, then) in [("/tmp", "evil/x"), ("../outside", "evil/x")] {
        let dirs = dirs();
        let mut tar = Forge::default();
        tar.symlink("evil", link);
        tar.file(then, 0o644, "x");
        tar.file("after", 0o644, "x");
        let done = unpack(
            tar.finish().as_slice(),
            &dirs.dest,
            Policy::OCI_LAYER,
            &mut Budget::new(ROOMY),
        );
        assert_eq!(
            done.error.map(|e| e.to_string()).as_deref(),
            Some("evil/x: evil is a symlink, and nothing is written through one")
        );
        assert!(!dirs.dest.join("after").exists(), "a refusal stops a layer");
        assert_outside_untouched(&dirs);
    }
}

/// Records what the engine tells a caller, and removes what a `.gone.NAME`
/// entry names (a whiteout, as the OCI caller does).
#[derive(Default)]
struct Recorder {
    placed: Vec<PathBuf>,
    removed: Vec<PathBuf>,
}

impl Visitor for Recorder {
    fn intercept(&mut self, tree: &mut Tree, entry: &Entry<'_>) -> Result<bool, Error> {
        let Some(name) = entry.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(false);
        };
        let Some(hidden) = name.strip_prefix(".gone.") else {
            return Ok(false);
        };
        tree.remove(&entry.path.with_file_name(hidden))?;
        Ok(true)
    }

    fn placed(&mut self, entry: &Entry<'_>) -> Result<(), String> {
        if entry.path == Path::new("forbidden") {
            return Err("the caller refuses it".into());
        }
        self.placed.push(entry.path.to_path_buf());
        Ok(())
    }

    fn removed(&mut self, path: &Path) {
        self.removed.push(path.to_path_buf());
    }
}

#[test]
fn a_visitor_sees_what_is_placed_and_removed() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("a/b", 0o644, "x");
    tar.file("a", 0o644, "replaces the directory a");
    tar.file("c", 0o644, "x");
    tar.file(".gone.c", 0o644, "");
    tar.file(".gone.pre", 0o644, "");
    tar.file(".gone.missing", 0o644, "");
    tar.file("forbidden", 0o644, "x");
    tar.file("never", 0o644, "x");
    let mut unpacker = Unpacker::new(&dirs.dest, Policy::OCI_LAYER).unwrap();
    let mut recorder = Recorder::default();
    let done = unpacker.unpack(
        tar.finish().as_slice(),
        &mut Budget::new(ROOMY),
        &mut recorder,
    );
    assert_eq!(
        done.error.map(|e| e.to_string()).as_deref(),
        Some("forbidden: the caller refuses it")
    );
    let paths = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&recorder.placed), ["a/b", "a", "c"]);
    assert_eq!(paths(&recorder.removed), ["a", "c", "pre"]);
    assert!(!dirs.dest.join("c").exists());
    // The whiteout removed the symlink `pre`, not what it points at.
    assert_outside_untouched(&dirs);
    assert!(!dirs.dest.join("never").exists());
}

#[test]
fn a_tree_removes_only_below_its_root() {
    let dirs = dirs();
    let mut tree = Unpacker::new(&dirs.dest, Policy::OCI_LAYER).unwrap();
    let tree = tree.tree();
    for bad in ["..", "a/../..", "/", ""] {
        assert!(tree.remove(Path::new(bad)).is_err(), "{bad}");
    }
    // Through the symlink `pre` to `outside`: refused, not followed.
    let err = tree.remove(Path::new("pre/secret")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pre/secret: pre is a symlink, and nothing is written through one"
    );
    assert_eq!(
        tree.children(Path::new("missing")).unwrap(),
        Vec::<std::ffi::OsString>::new()
    );
    assert_outside_untouched(&dirs);
}

#[test]
fn the_workspace_follows_symlinks_that_stay_inside_only() {
    let dirs = dirs();
    let dest = &dirs.dest;
    // As in a guest's root: `lib -> usr/lib`.
    fs::create_dir_all(dest.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib", dest.join("lib")).unwrap();
    let mut tar = Forge::default();
    tar.dir("./", 0o750);
    tar.file("lib/libx.so", 0o4755, "via an inside symlink");
    tar.dir("ro/", 0o555);
    tar.file("ro/file", 0o400, "in a read-only directory");
    tar.symlink("ro/up", "../usr");
    tar.hard_link("hard", "lib/libx.so");
    let done = unpack(
        tar.finish().as_slice(),
        dest,
        Policy::WORKSPACE,
        &mut Budget::new(Limits::UNLIMITED),
    );
    assert!(done.error.is_none(), "{:?}", done.error);
    assert_eq!(done.entries, 5);
    let lib = dest.join("usr/lib/libx.so");
    assert_eq!(fs::read_to_string(&lib).unwrap(), "via an inside symlink");
    // Modes as sent: the guest's root owns everything anyway.
    assert_eq!(mode(&lib), 0o4755);
    assert_eq!(mode(&dest.join("ro")), 0o555);
    assert_eq!(mode(&dest.join("ro/file")), 0o400);
    assert_eq!(mode(dest), 0o750);
    assert_eq!(fs::metadata(dest.join("hard")).unwrap().nlink(), 2);

    let refusals = [
        (vec![("pre/x", "")], "pre/x: it would be written through the symlink pre, which leads outside the target directory"),
        (vec![("up", "../outside")], "up: symlink to ../outside leads outside the target directory"),
        (vec![("abs", "/etc")], "abs: symlink to /etc leads outside the target directory"),
    ];
    for (entries, message) in refusals {
        let mut tar = Forge::default();
        for (name, link) in entries {
            if link.is_empty() {
                tar.file(name, 0o644, "x");
            } else {
                tar.symlink(name, link);
            }
        }
        let done = unpack(
            tar.finish().as_slice(),
            dest,
            Policy::WORKSPACE,
            &mut Budget::new(Limits::UNLIMITED),
        );
        assert_eq!(done.error.map(|e| e.to_string()).as_deref(), Some(message));
    }
    assert_outside_untouched(&dirs);
}

/// Each link stays inside lexically, and `y` and `z` dangle when they are
/// made; once `x` exists, they resolve to the destination's parent.
#[test]
fn a_workspace_symlink_is_judged_again_once_everything_exists() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.symlink("y", "x/x/..");
    tar.symlink("z", "x/x/..");
    tar.symlink("x", ".");
    let done = unpack(
        tar.finish().as_slice(),
        &dirs.dest,
        Policy::WORKSPACE,
        &mut Budget::new(Limits::UNLIMITED),
    );
    let error = done.error.expect("refused").to_string();
    assert!(error.starts_with("y: symlink resolves to "), "{error}");
    // Every such link is gone, not only the one reported.
    assert!(fs::symlink_metadata(dirs.dest.join("y")).is_err());
    assert!(fs::symlink_metadata(dirs.dest.join("z")).is_err());
}

/// A layer that unpacks to more than its budget, in bytes or in raw
/// stream (trailing zeros for ever): stopped at the budget either way.
#[test]
fn a_stream_longer_than_its_entries_stops_at_the_budget() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("small", 0o644, "x");
    let mut bytes = tar.finish();
    bytes.resize(64 << 20, 0);
    let mut budget = Budget::new(Limits {
        max_bytes: 1 << 20,
        max_entries: 10,
    });
    let done = unpack(bytes.as_slice(), &dirs.dest, Policy::OCI_LAYER, &mut budget);
    assert_eq!(
        done.error.map(|e| e.to_string()).as_deref(),
        Some("limit reached: the stream is larger than its entries' sizes and the limits allow")
    );
}
