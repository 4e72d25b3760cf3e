//! Which executables the runner starts that are not found on PATH: the
//! `runner` binary itself (for VM processes, keepers and image builds,
//! started as `runner __vm-process` and the like), and any program an
//! environment variable names in place of the one the runner would find.
//!
//! In the `runner` command that is simply this executable, whatever its
//! file is called (its `main` says so with [`this_is_the_runner`]). The
//! backends are also called from test and bench binaries
//! (`target/<profile>/deps/...`), which cannot act as a VM process; for
//! them the `runner` binary that Cargo builds next to them
//! (`target/<profile>/runner`) is used. `RUNNER_EXE` overrides both.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static THIS_IS_THE_RUNNER: AtomicBool = AtomicBool::new(false);

/// Called by the `runner` binary's `main`: this executable can run VM
/// processes itself.
pub fn this_is_the_runner() {
    THIS_IS_THE_RUNNER.store(true, Ordering::SeqCst);
}

/// Overrides the executable that runs VM processes.
pub const ENV: &str = "RUNNER_EXE";
/// The binary's name.
const RUNNER: &str = "runner";

/// The program the environment variable `var` names in place of the one
/// the runner would find itself: `None` when it is unset or empty, the path
/// as the error when it is not a file (the caller says what it needed).
pub fn program_from_env(var: &str) -> Option<Result<PathBuf, PathBuf>> {
    let path = PathBuf::from(std::env::var_os(var).filter(|p| !p.is_empty())?);
    Some(if path.is_file() { Ok(path) } else { Err(path) })
}

/// A host program on PATH, or in /usr/sbin or /sbin, which a normal user's
/// PATH may lack (e2fsprogs' `mke2fs` lives there).
pub fn host_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    let dirs = std::env::join_paths(dirs).ok()?;
    which::which_in_global(program, Some(dirs)).ok()?.next()
}

/// The `runner` executable for VM processes, or one line saying why there
/// is none.
pub fn runner_exe() -> Result<PathBuf, String> {
    if let Some(named) = program_from_env(ENV) {
        return named.map_err(|path| {
            format!(
                "{ENV}={} is not a file (it must name the runner binary)",
                path.display()
            )
        });
    }
    let current = std::env::current_exe()
        .map_err(|e| format!("cannot tell which executable this is ({e}); set {ENV}"))?;
    if THIS_IS_THE_RUNNER.load(Ordering::SeqCst) {
        return Ok(current);
    }
    find_from(&current).ok_or_else(|| {
        format!(
            "cannot find the runner binary to start VM processes with (looked at {} and beside \
             it); build it with `cargo build -p runner` or set {ENV}",
            current.display()
        )
    })
}

/// The runner binary for `current`: itself if it is `runner`, else a
/// `runner` beside it or one directory up (test binaries live in `deps/`).
fn find_from(current: &Path) -> Option<PathBuf> {
    if current.file_name().is_some_and(|n| n == RUNNER) {
        return Some(current.to_path_buf());
    }
    let dir = current.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(RUNNER))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_binary_is_found_from_itself_and_from_deps() {
        let target = tempfile::tempdir().unwrap();
        let deps = target.path().join("deps");
        std::fs::create_dir(&deps).unwrap();
        let test_bin = deps.join("agent-0123abcd");
        std::fs::write(&test_bin, "").unwrap();
        assert_eq!(find_from(&test_bin), None);
        let runner = target.path().join("runner");
        std::fs::write(&runner, "").unwrap();
        assert_eq!(find_from(&test_bin), Some(runner.clone()));
        assert_eq!(find_from(&runner), Some(runner));
    }
}
