//! `put-files` / `get-files` against the real agent code, including tar
//! streams crafted to escape the target directory.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use agent_protocol::Message;
use common::{connect, Client};

/// A small tree with odd modes, an empty file, a bigger file, nesting and
/// an internal symlink.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("data/deep/er")).unwrap();
    std::fs::write(root.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("bin/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(root.join("data/secret"), "s3cret").unwrap();
    std::fs::set_permissions(root.join("data/secret"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(root.join("data/empty"), "").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.join("data/deep/er/big.bin"), big).unwrap();
    std::fs::set_permissions(root.join("data/deep"), PermissionsExt::from_mode(0o750)).unwrap();
    symlink("../bin/run.sh", root.join("data/run-link")).unwrap();
}

fn tar_of(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// Every path under `root` with its type, mode and content (or link target).
fn snapshot(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                todo.push(path);
                Vec::new()
            };
            out.push((name, meta.permissions().mode(), content));
        }
    }
    out.sort();
    out
}

#[test]
fn put_then_get_round_trips_byte_identical_with_modes() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let guest = tempfile::tempdir().unwrap();
    let target = guest.path().join("new/target");
    let (mut c, _) = connect();

    let answer = c.put_tar(target.to_str().unwrap(), &tar_of(src.path()));
    match answer {
        Message::FilesDone { entries, bytes } => {
            assert_eq!(entries, 9, "4 dirs + 4 files + 1 symlink");
            assert_eq!(bytes, 300_000 + 6 + 18);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&target), snapshot(src.path()));

    let (tar, done) = c
        .get_tar(target.to_str().unwrap(), &["bin", "data"])
        .unwrap();
    assert!(
        matches!(
            done,
            Message::FilesDone {
                entries: 9,
                bytes: 300_024
            }
        ),
        "{done:?}"
    );
    let back = tempfile::tempdir().unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    archive.set_preserve_permissions(true);
    archive.unpack(back.path()).unwrap();
    assert_eq!(snapshot(back.path()), snapshot(src.path()));
}

#[test]
fn get_files_globs_dot_and_missing_patterns() {
    let base = tempfile::tempdir().unwrap();
    make_tree(base.path());
    let b = base.path().to_str().unwrap();
    let (mut c, _) = connect();

    let names = |tar: &[u8]| -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        let mut v: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (tar, _) = c.get_tar(b, &["data/*/er/*.bin", "bin/run.sh"]).unwrap();
    assert_eq!(names(&tar), ["bin/run.sh", "data/deep/er/big.bin"]);
    let (tar, _) = c.get_tar(b, &["."]).unwrap();
    assert_eq!(names(&tar).len(), 9);
    // A name with glob characters is taken literally when it exists.
    std::fs::write(base.path().join("data/odd[1].txt"), "odd").unwrap();
    let (tar, _) = c.get_tar(b, &["data/odd[1].txt"]).unwrap();
    assert_eq!(names(&tar), ["data/odd[1].txt"]);

    let err = c.get_tar(b, &["bin", "nothing-*.log"]).unwrap_err();
    assert!(err.contains("\"nothing-*.log\" matched nothing"), "{err}");
    let err = c.get_tar(b, &["missing.txt"]).unwrap_err();
    assert!(err.contains("\"missing.txt\" matched nothing"), "{err}");
    let err = c.get_tar(b, &["../etc"]).unwrap_err();
    assert!(err.contains(".."), "{err}");
    // The connection is in step after each error.
    assert!(matches!(c.ping(5), Message::Pong { nonce: 5, .. }));
}

/// The host fetches an absolute artifact (`/tmp/x.xml`) as base `/` and
/// pattern `tmp/x.xml`: the entries come back named by their whole path
/// minus the leading `/`, for literal paths and globs alike.
#[test]
fn get_files_from_the_root_keeps_whole_paths() {
    let base = tempfile::tempdir().unwrap();
    make_tree(base.path());
    let relative = base.path().to_str().unwrap().trim_start_matches('/');
    let (mut c, _) = connect();
    let names = |tar: &[u8]| -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let literal = format!("{relative}/bin/run.sh");
    let (tar, _) = c.get_tar("/", &[&literal]).unwrap();
    assert_eq!(names(&tar), std::slice::from_ref(&literal));
    let glob = format!("{relative}/bin/*.sh");
    let (tar, _) = c.get_tar("/", &[&glob]).unwrap();
    assert_eq!(names(&tar), [literal]);
}

/// A tar entry written by hand: the tar crate refuses to build these.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(kind);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn expect_refused(c: &mut Client, target: &Path, tar: Vec<u8>, why: &str) {
    match c.put_tar(target.to_str().unwrap(), &finish(tar)) {
        Message::Error { message } => assert!(message.contains(why), "{message:?} lacks {why:?}"),
        other => panic!("accepted a malicious tar ({why}): {other:?}"),
    }
    // The stream was consumed to its end: the connection still works.
    assert!(matches!(c.ping(1), Message::Pong { nonce: 1, .. }));
}

#[test]
fn malicious_tars_are_refused_and_nothing_escapes() {
    use tar::EntryType::{Link, Regular, Symlink};
    let top = tempfile::tempdir().unwrap();
    let target = top.path().join("target");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let (mut c, _) = connect();

    let mut t = Vec::new();
    let abs = format!("{}/abs", outside.display());
    raw_entry(&mut t, &abs, Regular, "", b"x");
    expect_refused(&mut c, &target, t, "absolute names are not allowed");

    let mut t = Vec::new();
    raw_entry(&mut t, "ok.txt", Regular, "", b"fine");
    raw_entry(&mut t, "../outside/dotdot", Regular, "", b"x");
    expect_refused(&mut c, &target, t, "contains `..`");
    assert_eq!(std::fs::read(target.join("ok.txt")).unwrap(), b"fine");

    let mut t = Vec::new();
    raw_entry(&mut t, "esc", Symlink, "../outside", b"");
    raw_entry(&mut t, "esc/through", Regular, "", b"x");
    expect_refused(&mut c, &target, t, "leads outside the target");

    let mut t = Vec::new();
    raw_entry(&mut t, "abs-link", Symlink, outside.to_str().unwrap(), b"");
    expect_refused(&mut c, &target, t, "leads outside the target");

    // A symlink that looks harmless lexically but resolves outside.
    let mut t = Vec::new();
    raw_entry(&mut t, "y", Symlink, "x/x/..", b"");
    raw_entry(&mut t, "x", Symlink, ".", b"");
    expect_refused(&mut c, &target, t, "outside the target");
    assert!(
        !target.join("y").exists(),
        "the escaping symlink was left behind"
    );

    // A symlink already in the target (made by an earlier command), then a
    // file written through it.
    symlink(&outside, target.join("planted")).unwrap();
    let mut t = Vec::new();
    raw_entry(&mut t, "planted/pwned", Regular, "", b"x");
    expect_refused(&mut c, &target, t, "written through the symlink");

    let mut t = Vec::new();
    raw_entry(&mut t, "hard", Link, "../outside/f", b"");
    expect_refused(&mut c, &target, t, "contains `..`");

    let mut t = Vec::new();
    raw_entry(&mut t, "dev", tar::EntryType::Char, "", b"");
    expect_refused(&mut c, &target, t, "device node refused");

    let leaked: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(leaked.is_empty(), "written outside the target: {leaked:?}");

    // Symlinks that stay inside are fine, and so is replacing a file.
    let mut t = Vec::new();
    raw_entry(&mut t, "sub/file", Regular, "", b"one");
    raw_entry(&mut t, "sub/link", Symlink, "../ok.txt", b"");
    raw_entry(&mut t, "sub/file", Regular, "", b"two");
    raw_entry(&mut t, "sub/hard", Link, "sub/file", b"");
    match c.put_tar(target.to_str().unwrap(), &finish(t)) {
        Message::FilesDone { entries: 4, .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(target.join("sub/link")).unwrap(), b"fine");
    assert_eq!(std::fs::read(target.join("sub/hard")).unwrap(), b"two");
}

#[test]
fn garbage_tar_is_an_error_not_a_hang() {
    let target = tempfile::tempdir().unwrap();
    let (mut c, _) = connect();
    match c.put_tar(target.path().to_str().unwrap(), &[0x55u8; 3000]) {
        Message::Error { message } => assert!(message.contains("put-files"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.ping(2), Message::Pong { nonce: 2, .. }));
}
