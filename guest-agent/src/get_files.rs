//! `get-files`: pack paths under a base directory into a tar stream.
//!
//! All patterns are resolved before the first byte is sent, so a pattern
//! that matches nothing is a clean `Error` rather than a broken stream.
//! Directories are walked recursively; symlinks are archived as symlinks,
//! never followed.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use safe_untar::{relative_parts, AbsoluteNames};
use tar::{Builder, HeaderMode};

use crate::put_files::Transferred;

/// Names (relative to `base`) of everything `patterns` select, sorted.
pub fn resolve(base: &str, patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let base_path = Path::new("/").join(base);
    if !base_path.is_dir() {
        return Err(format!("base directory {base:?} does not exist"));
    }
    if patterns.is_empty() {
        return Err("no patterns given".to_string());
    }
    let mut names = BTreeSet::new();
    for pattern in patterns {
        let parts = relative_parts(Path::new(pattern), AbsoluteNames::Refuse)
            .map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        let plain: PathBuf = parts.iter().collect();
        let mut matched = false;
        let literal_exists = !plain.as_os_str().is_empty()
            && std::fs::symlink_metadata(base_path.join(&plain)).is_ok();
        if pattern.contains(['*', '?', '[']) && !literal_exists {
            let full = format!(
                "{}/{pattern}",
                glob::Pattern::escape(&base_path.to_string_lossy())
            );
            let paths = glob::glob(&full).map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
            for path in paths.flatten() {
                if let Ok(name) = path.strip_prefix(&base_path) {
                    matched = true;
                    names.insert(name.to_path_buf());
                }
            }
        } else if plain.as_os_str().is_empty() {
            // "." (or "./"): everything in the base directory.
            for child in std::fs::read_dir(&base_path).map_err(|e| format!("{base:?}: {e}"))? {
                let child = child.map_err(|e| format!("{base:?}: {e}"))?;
                matched = true;
                names.insert(PathBuf::from(child.file_name()));
            }
        } else if literal_exists {
            // A plain path, or one whose name merely contains `*?[`.
            matched = true;
            names.insert(plain);
        }
        if !matched {
            return Err(format!(
                "pattern {pattern:?} matched nothing under {base:?}"
            ));
        }
    }
    Ok(names.into_iter().collect())
}

/// Writes `names` (from [`resolve`]) as a complete tar stream into `out`.
pub fn pack<W: Write>(base: &str, names: &[PathBuf], out: W) -> std::io::Result<(Transferred, W)> {
    let base_path = Path::new("/").join(base);
    let mut builder = Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(HeaderMode::Complete);
    let mut done = Transferred::default();
    // An explicit stack instead of recursion: trees may be deep.
    let mut todo: Vec<PathBuf> = names.iter().rev().cloned().collect();
    while let Some(name) = todo.pop() {
        let full = base_path.join(&name);
        let meta = std::fs::symlink_metadata(&full)?;
        if meta.file_type().is_socket() {
            continue; // Sockets cannot be archived and mean nothing elsewhere.
        }
        builder.append_path_with_name(&full, &name)?;
        done.entries += 1;
        if meta.is_file() {
            done.bytes += meta.len();
        }
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&full)?
                .map(|child| child.map(|c| name.join(c.file_name())))
                .collect::<Result<_, _>>()?;
            children.sort();
            todo.extend(children.into_iter().rev());
        }
    }
    let out = builder.into_inner()?;
    Ok((done, out))
}
