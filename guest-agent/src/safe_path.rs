//! Path checks that keep a tar stream from touching anything outside its
//! target directory.
//!
//! Paths inside the stream are only trusted after [`relative_components`]
//! (no absolute paths, no `..`), and every directory on the way to an entry
//! is walked component by component from the (canonical) target: a missing
//! one is created, a symlink is only followed when its real location is
//! still inside the target. So nothing is ever written through a symlink
//! that leads outside, whatever the stream created before.

use std::io;
use std::path::{Component, Path, PathBuf};

/// A refused or failed entry, with a message for the host.
pub type Refusal = String;

/// The normal components of a relative archive path. `.` components are
/// dropped; absolute paths and `..` are refused.
pub fn relative_components(path: &Path) -> Result<Vec<&std::ffi::OsStr>, Refusal> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("refusing {path:?}: it contains a `..` component"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("refusing {path:?}: absolute paths are not allowed"))
            }
        }
    }
    Ok(parts)
}

/// The target directory an archive is unpacked into.
pub struct SafeRoot {
    root: PathBuf,
}

impl SafeRoot {
    /// Creates `target` if needed and pins its canonical location.
    pub fn create(target: &Path) -> Result<SafeRoot, Refusal> {
        let target = Path::new("/").join(target);
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("cannot create target directory {target:?}: {e}"))?;
        let root = target
            .canonicalize()
            .map_err(|e| format!("cannot resolve target directory {target:?}: {e}"))?;
        Ok(SafeRoot { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn contains(&self, real: &Path) -> bool {
        real.starts_with(&self.root)
    }

    /// Walks (creating as needed) the directories `dirs` below the root and
    /// returns their real location, which is inside the root.
    pub fn directory(&self, dirs: &[&std::ffi::OsStr], entry: &Path) -> Result<PathBuf, Refusal> {
        let mut current = self.root.clone();
        for name in dirs {
            let next = current.join(name);
            current = match std::fs::symlink_metadata(&next) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&next)
                        .map_err(|e| format!("{entry:?}: cannot create directory {next:?}: {e}"))?;
                    next
                }
                Err(e) => return Err(format!("{entry:?}: cannot inspect {next:?}: {e}")),
                Ok(meta) if meta.is_dir() => next,
                Ok(meta) if meta.file_type().is_symlink() => self.follow_inside(&next, entry)?,
                Ok(_) => return Err(format!("{entry:?}: {next:?} is not a directory")),
            };
        }
        Ok(current)
    }

    /// Resolves an existing symlink, refusing it unless it ends at a
    /// directory inside the root.
    fn follow_inside(&self, link: &Path, entry: &Path) -> Result<PathBuf, Refusal> {
        match link.canonicalize() {
            Ok(real) if self.contains(&real) && real.is_dir() => Ok(real),
            Ok(real) if self.contains(&real) => {
                Err(format!("{entry:?}: {link:?} is not a directory"))
            }
            _ => Err(format!(
                "refusing {entry:?}: it would be written through the symlink {link:?}, which leads outside the target"
            )),
        }
    }

    /// Where a new entry named `name` goes inside `dir`, with whatever was
    /// there (file or symlink) removed so the write cannot go through it.
    /// An existing directory is kept only if `keep_dir` is true.
    pub fn replaceable(
        &self,
        dir: &Path,
        name: &std::ffi::OsStr,
        entry: &Path,
        keep_dir: bool,
    ) -> Result<PathBuf, Refusal> {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{entry:?}: cannot inspect {path:?}: {e}")),
            Ok(meta) if meta.is_dir() => {
                if !keep_dir {
                    return Err(format!("{entry:?}: a directory is in the way at {path:?}"));
                }
            }
            Ok(_) => std::fs::remove_file(&path)
                .map_err(|e| format!("{entry:?}: cannot replace {path:?}: {e}"))?,
        }
        Ok(path)
    }
}

/// Whether a symlink at `link_dir` (relative to the root: its normal
/// components) with target `target` stays inside the root when resolved
/// lexically. Absolute targets always count as escaping.
pub fn symlink_stays_inside(link_dir: &Path, target: &Path) -> bool {
    let mut depth = link_dir.components().count();
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(relative_components(Path::new("./a/./b")).unwrap().len(), 2);
        assert!(relative_components(Path::new("/etc/passwd")).is_err());
        assert!(relative_components(Path::new("a/../../b")).is_err());
        assert!(relative_components(Path::new(".")).unwrap().is_empty());
    }

    #[test]
    fn lexical_symlink_check() {
        assert!(symlink_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(symlink_stays_inside(Path::new("a"), Path::new("..")));
        assert!(!symlink_stays_inside(Path::new("a"), Path::new("../..")));
        assert!(!symlink_stays_inside(Path::new(""), Path::new("../x")));
        assert!(!symlink_stays_inside(Path::new("a"), Path::new("/etc")));
    }
}
