//! The `--out` directory: `logs/`, `artifacts/` and `reports/` of an earlier run there
//! would mix with this run's, so they are cleared first. But `--out` may be
//! any directory (`--out .`), so only what the runner provably created is
//! ever removed: `<out>/.runner-out` lists the subdirectories the runner
//! created, and one that exists without being listed is left alone, with
//! an error instead of a deletion. (The list lives beside them, not inside:
//! a marker in `logs/` would show up among the logs.)
//!
//! The out directory usually sits in the checkout, which a pull request
//! writes: nothing is written through a symlink there. An `--out` reached
//! through a symlink below the current directory is refused, and so is a
//! marker that is one; the reports are renamed into place, which replaces
//! a symlink instead of writing through it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

/// In the out directory: one line per subdirectory the runner created.
pub const MARKER: &str = ".runner-out";
const OURS: [&str; 3] = ["logs", "artifacts", "reports"];

/// Clears and recreates `<out>/logs`, `<out>/artifacts` and `<out>/reports`, refusing (before
/// removing anything) if either exists but is not listed in the marker, or
/// is not a real directory.
pub fn prepare(out: &Path) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("the current directory")?;
    refuse_symlinks(out, &cwd)?;
    let marker = out.join(MARKER);
    let listed = read_marker(&marker)?;
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
    write_marker(&marker).with_context(|| format!("writing {}", marker.display()))?;
    for sub in OURS {
        let dir = out.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Refuses `out` if it, or a directory on the way to it below `cwd`, is a
/// symlink (above `cwd` the path is the machine's, not the checkout's).
fn refuse_symlinks(out: &Path, cwd: &Path) -> anyhow::Result<()> {
    let absolute = cwd.join(out);
    let mut at = PathBuf::new();
    let mut components = absolute.components().peekable();
    while let Some(component) = components.next() {
        match component {
            // Each directory was checked as it was entered, so `..` goes
            // where the kernel would take it.
            Component::ParentDir => {
                at.pop();
            }
            Component::CurDir => {}
            other => at.push(other),
        }
        let last = components.peek().is_none();
        let in_checkout = at.starts_with(cwd) && at != cwd;
        if (last || in_checkout)
            && std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
        {
            bail!(
                "--out {}: {} is a symlink; the runner writes no report through one (choose another --out)",
                out.display(),
                at.display()
            );
        }
    }
    Ok(())
}

fn read_marker(marker: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(marker)
    {
        Ok(file) => {
            // A marker is a few short lines; more is not ours.
            file.take(4096)
                .read_to_string(&mut text)
                .with_context(|| format!("reading {}", marker.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symlink; the runner writes nothing through one (remove it)",
            marker.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    }
    Ok(text)
}

fn write_marker(marker: &Path) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(marker)?;
    file.write_all((OURS.join("\n") + "\n").as_bytes())
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
    fn a_marker_or_out_directory_that_is_a_symlink_is_refused_and_its_target_untouched() {
        let checkout = tempfile::tempdir().unwrap();
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(victim.path(), "root:x:0:0\n").unwrap();
        let out = checkout.path().join("runner-out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(victim.path(), out.join(MARKER)).unwrap();
        let err = prepare(&out).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        assert_eq!(
            std::fs::read_to_string(victim.path()).unwrap(),
            "root:x:0:0\n"
        );

        let elsewhere = tempfile::tempdir().unwrap();
        let linked = checkout.path().join("linked-out");
        std::os::unix::fs::symlink(elsewhere.path(), &linked).unwrap();
        let cwd = checkout.path();
        for out in [
            Path::new("linked-out"),
            Path::new("linked-out/sub"),
            Path::new("./x/../linked-out"),
        ] {
            let err = refuse_symlinks(out, cwd).unwrap_err().to_string();
            assert!(err.contains("is a symlink"), "{}: {err}", out.display());
        }
        assert!(refuse_symlinks(Path::new("runner-out"), cwd).is_ok());
        // Above the current directory the path is the machine's own.
        let inner = checkout.path().join("linked-out").join("deeper");
        std::fs::create_dir(&inner).unwrap();
        assert!(refuse_symlinks(Path::new("out"), &inner).is_ok());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 1);
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
