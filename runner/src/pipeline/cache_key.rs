//! `key: { files: [...], prefix: ... }`: a cache key that follows the
//! contents of workspace files (lock files, typically), as GitLab's does.
//!
//! The files come from the pull request, so they are held to the workspace
//! (lexically and once symlinks are resolved) and read only if they are
//! regular files: a FIFO must not hang the runner, a symlink must not make
//! it read the host.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

/// Most `files` of one key.
pub const MAX_KEY_FILES: usize = 16;
/// Hex digits of the hash in a key: 64 bits, plenty to tell lock files apart.
pub const KEY_HASH_HEX: usize = 16;

/// A key file as written, checked to be a relative path staying inside the
/// workspace; returned normalized (`./a//b` → `a/b`), which is what the
/// hash covers, so the key does not depend on where the workspace is.
pub fn parse_key_file(text: &str, workspace: &Path) -> Result<String, String> {
    let text = text.trim();
    let outside = || {
        format!(
            "cache key file `{text}` is outside the workspace: name a file relative to {}",
            workspace.display()
        )
    };
    if text.is_empty() {
        return Err("a cache key file must not be empty".to_string());
    }
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(text).components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => return Err(outside()),
            },
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside())
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("cache key file `{text}` names no file"));
    }
    let relative = parts.join("/");
    // A file that does not exist yet is hashed as absent; one that does
    // must really be inside, symlinks followed.
    let full = workspace.join(&relative);
    if let Ok(real) = full.canonicalize() {
        let real_workspace = workspace
            .canonicalize()
            .map_err(|e| format!("cannot resolve the workspace {}: {e}", workspace.display()))?;
        if !real.starts_with(&real_workspace) {
            return Err(format!(
                "cache key file `{text}` leads out of the workspace {} through a symlink",
                workspace.display()
            ));
        }
    }
    Ok(relative)
}

/// The key of `key: { files, prefix }`: `{prefix}-{hash}`, or the hash
/// alone. The hash is the first [`KEY_HASH_HEX`] hex digits of a SHA-256
/// over each file's path, whether it exists, and its contents' SHA-256, in
/// the order given. `files` come from [`parse_key_file`].
pub fn files_key(
    workspace: &Path,
    files: &[String],
    prefix: Option<&str>,
) -> Result<String, String> {
    let mut hasher = Sha256::new();
    for file in files {
        // Length-prefixed and fixed-size parts: no two lists of files hash
        // the same input.
        hasher.update((file.len() as u64).to_le_bytes());
        hasher.update(file.as_bytes());
        match content_hash(workspace, file)? {
            Some(digest) => {
                hasher.update([1]);
                hasher.update(digest);
            }
            None => hasher.update([0]),
        }
    }
    let digest = hex::encode(hasher.finalize());
    let hash = &digest[..KEY_HASH_HEX];
    Ok(match prefix {
        Some(prefix) => format!("{prefix}-{hash}"),
        None => hash.to_string(),
    })
}

/// The SHA-256 of a workspace file's contents; `None` when it is absent.
fn content_hash(workspace: &Path, file: &str) -> Result<Option<[u8; 32]>, String> {
    let path = workspace.join(file);
    let failed = |e: std::io::Error| format!("cannot read cache key file `{file}`: {e}");
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    // Non-blocking, so that opening a FIFO returns at once; the type is
    // checked on what was opened, not on the name.
    let mut opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&real)
        .map_err(failed)?;
    if !opened.metadata().map_err(failed)?.is_file() {
        return Err(format!("cache key file `{file}` is not a regular file"));
    }
    let mut hasher = Sha256::new();
    hash_contents(&mut opened, &mut hasher).map_err(failed)?;
    Ok(Some(hasher.finalize().into()))
}

fn hash_contents(file: &mut File, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path, files: &[&str], prefix: Option<&str>) -> String {
        let files: Vec<String> = files
            .iter()
            .map(|f| parse_key_file(f, dir).unwrap())
            .collect();
        files_key(dir, &files, prefix).unwrap()
    }

    #[test]
    fn the_key_follows_the_contents_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("Cargo.lock"), "v1").unwrap();
        let first = key(ws, &["Cargo.lock"], Some("cargo"));
        assert!(first.starts_with("cargo-"), "{first}");
        assert_eq!(first.len(), "cargo-".len() + KEY_HASH_HEX);
        assert!(first["cargo-".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key(ws, &["./Cargo.lock"], Some("cargo")), first);

        std::fs::write(ws.join("Cargo.lock"), "v2").unwrap();
        let second = key(ws, &["Cargo.lock"], Some("cargo"));
        assert_ne!(second, first);
        std::fs::write(ws.join("Cargo.lock"), "v1").unwrap();
        assert_eq!(key(ws, &["Cargo.lock"], Some("cargo")), first);

        let bare = key(ws, &["Cargo.lock"], None);
        assert_eq!(bare.len(), KEY_HASH_HEX);
        assert!(first.ends_with(&bare));
    }

    #[test]
    fn an_absent_file_counts_and_its_appearance_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("a"), "").unwrap();
        let absent = key(ws, &["a", "sub/b.lock"], None);
        std::fs::create_dir(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/b.lock"), "").unwrap();
        let present = key(ws, &["a", "sub/b.lock"], None);
        assert_ne!(absent, present, "an empty file is not an absent one");
        // The path is part of the hash: same contents, other name.
        std::fs::write(ws.join("c"), "").unwrap();
        assert_ne!(key(ws, &["c"], None), key(ws, &["a"], None));
        // And the order of the files.
        assert_ne!(key(ws, &["a", "c"], None), key(ws, &["c", "a"], None));
    }

    #[test]
    fn files_outside_the_workspace_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        for bad in ["/etc/passwd", "../secret", "a/../../secret"] {
            let err = parse_key_file(bad, &ws).unwrap_err();
            assert!(err.contains("is outside the workspace"), "{bad}: {err}");
        }
        assert!(parse_key_file(".", &ws)
            .unwrap_err()
            .contains("names no file"));
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.join("link")).unwrap();
        let err = parse_key_file("link", &ws).unwrap_err();
        assert!(err.contains("through a symlink"), "{err}");
        // A link that stays inside is followed.
        std::fs::write(ws.join("real"), "y").unwrap();
        std::os::unix::fs::symlink("real", ws.join("inner")).unwrap();
        assert_eq!(parse_key_file("inner", &ws).unwrap(), "inner");
        assert_ne!(
            files_key(&ws, &["inner".into()], None).unwrap(),
            files_key(&ws, &["real".into()], None).unwrap(),
            "the name is hashed, not only the contents"
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        nix::unistd::mkfifo(&ws.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(ws.join("dir")).unwrap();
        for name in ["fifo", "dir"] {
            let files = vec![parse_key_file(name, ws).unwrap()];
            let err = files_key(ws, &files, None).unwrap_err();
            assert!(err.contains("not a regular file"), "{name}: {err}");
        }
    }
}
