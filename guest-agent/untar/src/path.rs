//! Lexical checks of names and link targets, before anything is touched.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use crate::error::Refusal;
use crate::policy::AbsoluteNames;

/// The normal components of an archive name (or a hard link's target):
/// `.` is dropped, `..` is refused, and a leading `/` is refused or
/// dropped as `absolute` says. Empty for the archive's root.
pub fn relative_parts(path: &Path, absolute: AbsoluteNames) -> Result<Vec<&OsStr>, Refusal> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => match absolute {
                AbsoluteNames::Refuse => return Err(Refusal::Absolute),
                AbsoluteNames::FromRoot => {}
            },
        }
    }
    Ok(parts)
}

/// `parts` as a path, for messages and for the caller's bookkeeping.
pub(crate) fn joined(parts: &[&OsStr]) -> PathBuf {
    parts.iter().collect()
}

pub(crate) fn shown(parts: &[&OsStr]) -> String {
    joined(parts).display().to_string()
}

/// Whether `target` names something below the link's own directory only:
/// relative, of normal components (and `.`), at least one normal.
pub(crate) fn check_downward(target: &Path) -> Result<(), Refusal> {
    let shown = || target.display().to_string();
    if !target
        .components()
        .any(|c| matches!(c, Component::Normal(_)))
    {
        // `.` alone is the link's own directory: a cycle that loops
        // whoever walks the tree (a CI server's archive step).
        return Err(Refusal::SymlinkLoop(shown()));
    }
    if !target
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Refusal::SymlinkNotDownward(shown()));
    }
    Ok(())
}

/// Whether a symlink in `link_dir` (its normal components below the
/// destination) pointing at `target` stays inside when resolved
/// lexically. Absolute targets always count as leaving.
pub(crate) fn stays_inside(link_dir: &Path, target: &Path) -> bool {
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
    fn names_are_checked() {
        let refuse = AbsoluteNames::Refuse;
        assert_eq!(
            relative_parts(Path::new("./a/./b"), refuse).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            relative_parts(Path::new("/etc/passwd"), refuse),
            Err(Refusal::Absolute)
        );
        assert_eq!(
            relative_parts(Path::new("/etc/passwd"), AbsoluteNames::FromRoot).unwrap(),
            ["etc", "passwd"]
        );
        for absolute in [AbsoluteNames::Refuse, AbsoluteNames::FromRoot] {
            assert_eq!(
                relative_parts(Path::new("a/../../b"), absolute),
                Err(Refusal::ParentDir)
            );
            assert_eq!(
                relative_parts(Path::new("a/.."), absolute),
                Err(Refusal::ParentDir)
            );
        }
        assert!(relative_parts(Path::new("."), refuse).unwrap().is_empty());
    }

    #[test]
    fn downward_targets() {
        assert!(check_downward(Path::new("sub/file")).is_ok());
        assert!(check_downward(Path::new("./sub")).is_ok());
        assert_eq!(
            check_downward(Path::new(".")),
            Err(Refusal::SymlinkLoop(".".into()))
        );
        assert_eq!(
            check_downward(Path::new("")),
            Err(Refusal::SymlinkLoop("".into()))
        );
        for bad in ["../x", "a/../b", "/etc"] {
            assert_eq!(
                check_downward(Path::new(bad)),
                Err(Refusal::SymlinkNotDownward(bad.into()))
            );
        }
    }

    #[test]
    fn lexical_symlink_check() {
        assert!(stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(stays_inside(Path::new("a"), Path::new("..")));
        assert!(!stays_inside(Path::new("a"), Path::new("../..")));
        assert!(!stays_inside(Path::new(""), Path::new("../x")));
        assert!(!stays_inside(Path::new("a"), Path::new("/etc")));
    }
}
