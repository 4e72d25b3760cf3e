//! The `--out` directory: `logs/`, `artifacts/` and `reports/` of an earlier run there
//! would mix with this run's, so they are cleared first. But `--out` may be
//! any directory (`--out .`), so only what the runner provably created is
//! ever removed: `<out>/.runner-out` lists the subdirectories the runner
//! created, and one that exists without being listed is left alone, with
//! an error instead of a deletion. (The list lives beside them, not inside:
//! a marker in `logs/` would show up among the logs.)

use std::path::Path;

use anyhow::{bail, Context};

/// In the out directory: one line per subdirectory the runner created.
pub const MARKER: &str = ".runner-out";
const OURS: [&str; 3] = ["logs", "artifacts", "reports"];

/// Clears and recreates `<out>/logs`, `<out>/artifacts` and `<out>/reports`, refusing (before
/// removing anything) if either exists but is not listed in the marker, or
/// is not a real directory.
pub fn prepare(out: &Path) -> anyhow::Result<()> {
    let marker = out.join(MARKER);
    let listed = std::fs::read_to_string(&marker).unwrap_or_default();
    let created = |sub: &str| listed.lines().any(|line| line == sub);
    for sub in OURS {
        let dir = out.join(sub);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || !created(sub) {
            bail!(
                "--out {}: {} exists and was not created by runner (it is not listed in {}); \
                 choose another --out, or move it away",
                out.display(),
                dir.display(),
                marker.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Listed before they are created: a crash in between must not leave a
    // directory of ours that a later run would refuse to clear.
    std::fs::write(&marker, OURS.join("\n") + "\n")
        .with_context(|| format!("writing {}", marker.display()))?;
    for sub in OURS {
        let dir = out.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
        // logs/ is ours, artifacts/ the user's.
        std::fs::write(out.path().join(MARKER), "logs\n").unwrap();
        std::fs::create_dir(out.path().join("logs")).unwrap();
        std::fs::write(out.path().join("logs/old.log"), "old").unwrap();
        std::fs::create_dir(out.path().join("artifacts")).unwrap();
        assert!(prepare(out.path()).is_err());
        assert!(out.path().join("logs/old.log").exists());
    }

    #[test]
    fn the_runner_s_own_directories_are_cleared() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("notes.txt"), "mine").unwrap();
        prepare(out.path()).unwrap();
        std::fs::write(out.path().join("logs/old.log"), "old").unwrap();
        prepare(out.path()).unwrap();
        assert!(!out.path().join("logs/old.log").exists());
        assert_eq!(
            std::fs::read_to_string(out.path().join(MARKER)).unwrap(),
            "logs\nartifacts\nreports\n"
        );
        // Nothing of ours among the logs.
        assert_eq!(out.path().join("logs").read_dir().unwrap().count(), 0);
        assert!(out.path().join("notes.txt").exists());
    }

    #[test]
    fn a_symlink_in_place_of_logs_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("keep.txt"), "").unwrap();
        prepare(out.path()).unwrap();
        std::fs::remove_dir(out.path().join("logs")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("logs")).unwrap();
        assert!(prepare(out.path()).is_err());
        assert!(elsewhere.path().join("keep.txt").exists());
    }
}
