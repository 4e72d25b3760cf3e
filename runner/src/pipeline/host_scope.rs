//! Which host files a pipeline may copy into its guests.
//!
//! A pipeline may come from a pull request, so by default `files` can only
//! reach inside the workspace: `from: ~/.ssh` or `from: /etc/shadow` is an
//! error unless `runner test --allow-host-files` is given. Lexical checks
//! are not enough, because a symlink inside the workspace can point out of
//! it; so every collected file's real parent directory is checked too. (A
//! symlink that is itself copied is copied as a symlink, never followed,
//! so only the directories a path goes *through* matter.)

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::files::{collect, CollectedFile, FileEntry, FileKind, FilesError};

/// The flag that lifts the restriction; named in every error.
pub const ALLOW_FLAG: &str = "--allow-host-files";

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "files: `{path}` is outside the workspace {workspace}; pass {ALLOW_FLAG} to copy host files"
    )]
    Outside { path: String, workspace: String },
    #[error(
        "files: `{path}` leads out of the workspace {workspace} through a symlink; pass {ALLOW_FLAG} to copy host files"
    )]
    ThroughSymlink { path: String, workspace: String },
    #[error("files: cannot resolve the workspace {workspace}: {message}")]
    Workspace { workspace: String, message: String },
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// Refuses entries whose `from` is not lexically inside `workspace`: the
/// cheap check, done before anything boots.
pub fn check_entries(entries: &[FileEntry], workspace: &Path) -> Result<(), ScopeError> {
    for entry in entries {
        if !lexically_inside(&entry.from, workspace) {
            return Err(ScopeError::Outside {
                path: entry.from.display().to_string(),
                workspace: workspace.display().to_string(),
            });
        }
    }
    Ok(())
}

/// An image spec's `files`, held to the same rule as a job's: they end up
/// in an image every job using it sees, and the runner (root, in CI) reads
/// them. Other image references have no host files.
pub fn check_image_files(
    image: &crate::pipeline::ImageRef,
    workspace: &Path,
) -> Result<(), ScopeError> {
    let crate::pipeline::ImageRef::Spec(spec) = image else {
        return Ok(());
    };
    let entries: Vec<FileEntry> = spec
        .files
        .iter()
        .map(|file| FileEntry {
            from: file.from.clone(),
            to: file.to.clone(),
            gitignore: false,
        })
        .collect();
    collect_within(&entries, workspace).map(|_| ())
}

/// [`collect`], refusing anything outside `workspace`, lexically or through
/// a symlink.
pub fn collect_within(
    entries: &[FileEntry],
    workspace: &Path,
) -> Result<Vec<CollectedFile>, ScopeError> {
    check_entries(entries, workspace)?;
    let shown = workspace.display().to_string();
    let real_workspace = workspace
        .canonicalize()
        .map_err(|e| ScopeError::Workspace {
            workspace: shown.clone(),
            message: e.to_string(),
        })?;
    let collected = collect(entries)?;
    // Directories are shared by many files: resolve each once.
    let mut resolved: HashMap<PathBuf, bool> = HashMap::new();
    for file in &collected {
        // A walked directory is read through; a copied symlink is not.
        let through = match file.kind {
            FileKind::Symlink => file.host.parent(),
            FileKind::File | FileKind::Dir => Some(file.host.as_path()),
        };
        let Some(through) = through else { continue };
        let inside = match resolved.get(through) {
            Some(&inside) => inside,
            None => {
                let inside = through
                    .canonicalize()
                    .is_ok_and(|real| real.starts_with(&real_workspace));
                resolved.insert(through.to_path_buf(), inside);
                inside
            }
        };
        if !inside {
            return Err(ScopeError::ThroughSymlink {
                path: file.host.display().to_string(),
                workspace: shown,
            });
        }
    }
    Ok(collected)
}

/// True if `path`, with `.` and `..` applied (no symlinks resolved), stays
/// under `workspace`.
pub(crate) fn lexically_inside(path: &Path, workspace: &Path) -> bool {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !normal.pop() {
                    return false;
                }
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.starts_with(workspace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    struct Setup {
        _dir: tempfile::TempDir,
        ws: PathBuf,
        outside: PathBuf,
    }

    /// A workspace with a file, next to an outside directory with a secret,
    /// and symlinks from the workspace to it.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let outside = dir.path().join("outside");
        fs::create_dir_all(ws.join("src")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(ws.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        symlink(&outside, ws.join("linkdir")).unwrap();
        symlink(outside.join("secret"), ws.join("src/secret-link")).unwrap();
        Setup {
            _dir: dir,
            ws,
            outside,
        }
    }

    fn entry(from: PathBuf) -> FileEntry {
        FileEntry {
            from,
            to: "/x".into(),
            gitignore: true,
        }
    }

    fn error(entries: &[FileEntry], ws: &Path) -> String {
        collect_within(entries, ws).unwrap_err().to_string()
    }

    #[test]
    fn the_workspace_itself_is_fine() {
        let s = setup();
        let files = collect_within(&[FileEntry::workspace(&s.ws)], &s.ws).unwrap();
        // The symlink inside the tree is copied as a symlink, not followed.
        let link = files
            .iter()
            .find(|f| f.host.ends_with("src/secret-link"))
            .unwrap();
        assert_eq!(link.kind, FileKind::Symlink);
        assert!(!files.iter().any(|f| f.host.ends_with("secret")));
    }

    #[test]
    fn host_paths_outside_are_refused_with_the_flag_named() {
        let s = setup();
        for from in [
            s.outside.join("secret"),
            s.ws.join("../outside/secret"),
            PathBuf::from("/etc/passwd"),
            s.outside.join("*"),
        ] {
            let err = error(&[entry(from.clone())], &s.ws);
            assert_eq!(
                err,
                format!(
                    "files: `{}` is outside the workspace {}; pass --allow-host-files to copy host files",
                    from.display(),
                    s.ws.display()
                )
            );
            assert_eq!(err.lines().count(), 1);
        }
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_not_followed() {
        let s = setup();
        for from in [
            s.ws.join("linkdir"),
            s.ws.join("linkdir/secret"),
            s.ws.join("linkdir/*"),
        ] {
            let err = error(&[entry(from.clone())], &s.ws);
            assert!(err.contains("through a symlink"), "{from:?}: {err}");
            assert!(err.contains("--allow-host-files"), "{err}");
        }
    }

    #[test]
    fn a_symlinked_workspace_root_is_followed_once() {
        // The workspace path itself may be a symlink (a checkout under a
        // link); only leaving its real location is refused.
        let s = setup();
        let alias = s.ws.parent().unwrap().join("alias");
        symlink(&s.ws, &alias).unwrap();
        let src = FileEntry::workspace_path("src", &alias).unwrap();
        assert!(collect_within(&[src], &alias).is_ok());
    }
}
