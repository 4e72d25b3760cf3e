//! `put-files`: unpack the host's tar stream under a target directory.
//!
//! The tar crate's own `unpack` is not used: entries are written one by one
//! through [`SafeRoot`], which refuses anything that would land outside the
//! target, and the stream is consumed as it arrives (never held whole).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::{Archive, EntryType};

use crate::safe_path::{relative_components, symlink_stays_inside, Refusal, SafeRoot};

/// What an unpack wrote.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar stream in `input` under `target`. Stops at the first
/// refused or failed entry; entries before it stay (all inside the target).
pub fn unpack<R: Read>(input: R, target: &str) -> Result<Unpacked, Refusal> {
    let root = SafeRoot::create(Path::new(target))?;
    let mut archive = Archive::new(input);
    let mut done = Unpacked::default();
    // Directory modes are applied last: a read-only directory must not stop
    // the entries that go inside it.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut symlinks: Vec<PathBuf> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("cannot read the tar stream: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot read the tar stream: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("bad entry name in the tar stream: {e}"))?
            .into_owned();
        let parts = relative_components(&name)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let kind = entry.header().entry_type();
        let Some((leaf, dirs)) = parts.split_last() else {
            // "./" itself: the target directory.
            if kind.is_dir() {
                dir_modes.push((root.path().to_path_buf(), mode));
            }
            continue;
        };
        let dir = root.directory(dirs, &name)?;
        match kind {
            EntryType::Directory => {
                dir_modes.push((root.directory(&parts, &name)?, mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                let path = root.replaceable(&dir, leaf, &name, false)?;
                done.bytes += write_file(&mut entry, &path, mode)
                    .map_err(|e| format!("{name:?}: cannot write {path:?}: {e}"))?;
            }
            EntryType::Symlink => {
                let target = link_target(&entry, &name)?;
                let inside = dir.strip_prefix(root.path()).unwrap_or(Path::new(""));
                if !symlink_stays_inside(inside, &target) {
                    return Err(format!(
                        "refusing symlink {name:?} -> {target:?}: it leads outside the target"
                    ));
                }
                let path = root.replaceable(&dir, leaf, &name, false)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| format!("{name:?}: cannot create symlink: {e}"))?;
                check_symlink(&root, &path, &name)?;
                symlinks.push(path);
            }
            EntryType::Link => {
                let source = link_target(&entry, &name)?;
                let source_parts =
                    relative_components(&source).map_err(|e| format!("hard link {name:?}: {e}"))?;
                let Some((source_leaf, source_dirs)) = source_parts.split_last() else {
                    return Err(format!("refusing hard link {name:?} to the target itself"));
                };
                let source_path = root.directory(source_dirs, &name)?.join(source_leaf);
                let meta = std::fs::symlink_metadata(&source_path)
                    .map_err(|e| format!("hard link {name:?}: source {source:?}: {e}"))?;
                if meta.is_dir() {
                    return Err(format!("refusing hard link {name:?} to a directory"));
                }
                let path = root.replaceable(&dir, leaf, &name, false)?;
                std::fs::hard_link(&source_path, &path)
                    .map_err(|e| format!("{name:?}: cannot create hard link: {e}"))?;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            other => {
                return Err(format!(
                    "refusing {name:?}: entries of type {other:?} are not supported"
                ))
            }
        }
        done.entries += 1;
    }
    // A symlink created while its target was missing is only judged now,
    // when everything it may resolve through exists.
    for link in &symlinks {
        let shown = link.strip_prefix(root.path()).unwrap_or(link);
        check_symlink(&root, link, shown)?;
    }
    for (dir, mode) in dir_modes.iter().rev() {
        std::fs::set_permissions(dir, Permissions::from_mode(*mode))
            .map_err(|e| format!("cannot set the mode of {dir:?}: {e}"))?;
    }
    Ok(done)
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, name: &Path) -> Result<PathBuf, Refusal> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => Err(format!("link {name:?} has no target")),
        Err(e) => Err(format!("link {name:?}: bad target: {e}")),
    }
}

/// Removes and refuses a symlink that really resolves outside the root.
fn check_symlink(root: &SafeRoot, link: &Path, name: &Path) -> Result<(), Refusal> {
    match link.canonicalize() {
        Ok(real) if !root.contains(&real) => {
            let _ = std::fs::remove_file(link);
            Err(format!(
                "refusing symlink {name:?}: it resolves to {real:?}, outside the target"
            ))
        }
        // Inside, or dangling (checked again at the end of the stream).
        _ => Ok(()),
    }
}

fn write_file<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path, mode: u32) -> io::Result<u64> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(path)?;
    let bytes = io::copy(entry, &mut file)?;
    // Set explicitly: the open mode above is filtered by the umask.
    file.set_permissions(Permissions::from_mode(mode))?;
    if let Ok(mtime) = entry.header().mtime() {
        let _ = File::set_modified(&file, UNIX_EPOCH + Duration::from_secs(mtime));
    }
    Ok(bytes)
}
