//! The `--out` directory: `logs/` and `artifacts/` of an earlier run there
//! would mix with this run's, so they are cleared first. But `--out` may be
//! any directory (`--out .`), so only what the runner provably created is
//! ever removed: each of those subdirectories gets a marker file when the
//! runner creates it, and one without the marker is left alone, with an
//! error instead of a deletion.

use std::path::Path;

use anyhow::{bail, Context};

/// Written into each subdirectory the runner creates.
pub const MARKER: &str = ".runner-out";
const MARKER_TEXT: &str = "Created by `runner test`, which empties this directory at each run.\n";
const OURS: [&str; 2] = ["logs", "artifacts"];

/// Clears and recreates `<out>/logs` and `<out>/artifacts`, refusing (before
/// removing anything) if either exists without our marker.
pub fn prepare(out: &Path) -> anyhow::Result<()> {
    for sub in OURS {
        let dir = out.join(sub);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || !dir.join(MARKER).is_file() {
            bail!(
                "--out {}: {} exists and was not created by runner (it has no {MARKER}); \
                 choose another --out, or move it away",
                out.display(),
                dir.display()
            );
        }
    }
    for sub in OURS {
        let dir = out.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(MARKER), MARKER_TEXT)
            .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_the_runner_did_not_create_is_kept() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("logs")).unwrap();
        std::fs::write(out.path().join("logs/keep.txt"), "mine").unwrap();
        std::fs::create_dir(out.path().join("artifacts")).unwrap();
        std::fs::write(out.path().join("artifacts/keep.txt"), "mine").unwrap();
        let err = prepare(out.path()).unwrap_err().to_string();
        assert!(err.contains("was not created by runner"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(out.path().join("logs/keep.txt").exists());
        assert!(out.path().join("artifacts/keep.txt").exists());
    }

    #[test]
    fn nothing_is_removed_if_any_directory_is_foreign() {
        let out = tempfile::tempdir().unwrap();
        prepare(out.path()).unwrap();
        std::fs::write(out.path().join("artifacts/old.txt"), "old").unwrap();
        // logs/ replaced by the user's own directory.
        std::fs::remove_dir_all(out.path().join("logs")).unwrap();
        std::fs::create_dir(out.path().join("logs")).unwrap();
        assert!(prepare(out.path()).is_err());
        assert!(out.path().join("artifacts/old.txt").exists());
    }

    #[test]
    fn the_runner_s_own_directories_are_cleared() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("notes.txt"), "mine").unwrap();
        prepare(out.path()).unwrap();
        std::fs::write(out.path().join("logs/old.log"), "old").unwrap();
        prepare(out.path()).unwrap();
        assert!(!out.path().join("logs/old.log").exists());
        assert!(out.path().join("logs").join(MARKER).is_file());
        assert!(out.path().join("artifacts").join(MARKER).is_file());
        assert!(out.path().join("notes.txt").exists());
    }

    #[test]
    fn a_symlink_in_place_of_logs_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join(MARKER), "").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("logs")).unwrap();
        assert!(prepare(out.path()).is_err());
        assert!(elsewhere.path().join(MARKER).exists());
    }
}
