//! Who runs an image build. Pipelines come from pull requests, so a spec's
//! `setup` and its packages' maintainer scripts are hostile code, and they
//! must never run as the host's root: `chroot` is no boundary for root.
//!
//! A runner that is not root builds as itself: mmdebstrap's user namespace
//! (or `unshare --map-root-user`) gives the build a root that owns nothing
//! on the host. A runner that *is* root (CI) builds as the unprivileged
//! system user `runner-build` (`RUNNER_BUILD_USER` names another), which
//! `scripts/setup-host` creates with /etc/subuid and /etc/subgid ranges, so
//! the build is exactly a rootless developer's. Its inputs are copied into a
//! staging directory in that user's home, and the finished image is moved
//! into the (root-owned) cache by the runner and given to root, so nothing
//! the build ran can touch the cache afterwards.
//!
//! Without user namespaces, only a Debian spec that runs nothing of the
//! pipeline's own (no `setup`, no extra packages: only Debian's base
//! scripts, as `rootfs/build.sh debian` runs them) still builds as root;
//! any other spec is refused with one line.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::ImageError;
use super::spec::{ImageSpec, SpecBase};

/// The build user `scripts/setup-host` creates.
pub const DEFAULT_BUILD_USER: &str = "runner-build";

/// The unprivileged account root builds as.
pub struct BuildUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// How a spec is built.
pub enum Builder {
    /// As the runner's own (non-root) user.
    Caller,
    /// As root without user namespaces: only for specs that run no
    /// pipeline code (see the module comment).
    RootWithoutNamespaces,
    /// As the build user, from a staging directory in its home.
    BuildUser(BuildUser),
}

impl Builder {
    /// Picks who builds `spec`, or says in one line what the host lacks.
    pub fn choose(spec: &ImageSpec) -> Result<Builder, ImageError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Builder::Caller);
        }
        let name =
            std::env::var("RUNNER_BUILD_USER").unwrap_or_else(|_| DEFAULT_BUILD_USER.to_string());
        let user = match nix::unistd::User::from_name(&name) {
            Ok(Some(user)) if !user.uid.is_root() => user,
            Ok(Some(_)) => {
                return Err(refused(format!(
                    "RUNNER_BUILD_USER={name} is root; image builds never run as root"
                )))
            }
            _ => {
                return Err(refused(format!(
                    "image builds run as the unprivileged user `{name}`, which does not exist: \
                     run scripts/setup-host (or: useradd --system --user-group --create-home \
                     --home-dir /var/lib/{name} --shell /usr/sbin/nologin {name})"
                )))
            }
        };
        if fs::metadata(&user.dir).map_or(true, |meta| meta.mode() & 0o001 == 0) {
            return Err(refused(format!(
                "image builds run as `{name}` from its home {0}, which must exist and be \
                 searchable by its namespace's ids: run scripts/setup-host (or: install -d -m 0711 \
                 -o {name} -g {name} {0})",
                user.dir.display()
            )));
        }
        let user = BuildUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        };
        // Only runs a pipeline's code when it has setup or packages; an OCI
        // image's owners are given in the build's user namespace.
        let runs_pipeline_code = spec.setup.is_some() || !spec.packages.is_empty();
        let oci = matches!(spec.base, SpecBase::Oci(_));
        let debian = spec.base == SpecBase::Debian;
        if !runs_pipeline_code && !debian && !oci {
            // Copies, debugfs and mke2fs: no namespace needed.
            return Ok(Builder::BuildUser(user));
        }
        // mmdebstrap's namespace (debian), and setup's in any tree, map
        // the user's subordinate ids.
        for file in ["/etc/subuid", "/etc/subgid"] {
            if !has_subordinate_range(Path::new(file), &user) {
                return Err(refused(format!(
                    "image builds run as `{0}` in a user namespace, and {0} has no range in \
                     {file}: run scripts/setup-host (or: usermod --add-subuids 100000-165535 \
                     --add-subgids 100000-165535 {0})",
                    user.name
                )));
            }
        }
        if user_namespaces_work(&user) {
            return Ok(Builder::BuildUser(user));
        }
        if runs_pipeline_code || oci {
            return Err(refused(format!(
                "this image spec runs `setup` or packages' scripts, which never run as the host's \
                 root, and user namespaces are unavailable to `{}`: enable them (sysctl -w \
                 kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000)",
                user.name
            )));
        }
        eprintln!(
            "runner: user namespaces are unavailable to `{}`: building this spec (no setup, no \
             extra packages, so only Debian's own scripts run) as root with mmdebstrap --mode=root",
            user.name
        );
        Ok(Builder::RootWithoutNamespaces)
    }

    /// The uid and gid a build runs as, when it is not the caller's.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        match self {
            Builder::BuildUser(user) => Some((user.uid, user.gid)),
            _ => None,
        }
    }

    /// Gives `cmd` the build user's environment and directory, if that is
    /// who builds; [`Builder::run_as`] says as whom it runs.
    pub fn apply(&self, cmd: &mut Command, staging: &Path) {
        if let Builder::BuildUser(user) = self {
            cmd.current_dir(staging)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name)
                .env("TMPDIR", staging.join("tmp"));
        }
    }

    /// Where the build's inputs and work go: the cache dir for the caller,
    /// a fresh directory in the build user's home (only it and root can
    /// enter it) otherwise.
    pub fn staging(&self, cache: &Path, prefix: &str) -> Result<tempfile::TempDir, String> {
        let parent = match self {
            Builder::BuildUser(user) => user.home.as_path(),
            _ => cache,
        };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| format!("staging directory in {}: {e}", parent.display()))?;
        if let Builder::BuildUser(user) = self {
            fs::create_dir(dir.path().join("tmp")).map_err(|e| e.to_string())?;
            chown_tree(dir.path(), user)
                .map_err(|e| format!("giving {} to {}: {e}", dir.path().display(), user.name))?;
            // Searchable, not listable: mmdebstrap's namespace root (a
            // subordinate id) must reach the tree it builds in here.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))
                .map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }

    /// Hands an input file to the build: the path itself for the caller,
    /// a copy in `staging` (which `seal` gives to the build user) otherwise.
    pub fn stage_input(
        &self,
        source: &Path,
        staging: &Path,
        name: &str,
    ) -> Result<PathBuf, String> {
        if !matches!(self, Builder::BuildUser(_)) {
            return Ok(source.to_path_buf());
        }
        let target = staging.join(name);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        // -H: a file named on the command line is followed, as the build
        // script's own `cp` did; links inside a directory stay links.
        let status = Command::new("cp")
            .args(["-R", "-H", "--preserve=mode,timestamps", "--"])
            .arg(source)
            .arg(&target)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            return Err(format!(
                "copying {} for the build: cp {status}",
                source.display()
            ));
        }
        Ok(target)
    }

    /// Gives everything staged so far to the build user.
    pub fn seal(&self, staging: &Path) -> Result<(), String> {
        match self {
            Builder::BuildUser(user) => chown_tree(staging, user).map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// Moves the build's image to `dest` (in the cache) and, when the build
    /// user made it, makes it root's: a regular file, not a link, mode 0644.
    pub fn claim(&self, built: &Path, dest: &Path) -> Result<(), String> {
        if !matches!(self, Builder::BuildUser(_)) {
            return fs::rename(built, dest).map_err(|e| e.to_string());
        }
        if let Err(e) = fs::rename(built, dest) {
            if e.raw_os_error() != Some(libc::EXDEV) {
                return Err(e.to_string());
            }
            let status = Command::new("cp")
                .args(["--sparse=always", "--no-dereference", "--"])
                .arg(built)
                .arg(dest)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("cp: {e}"))?;
            if !status.success() {
                return Err(format!("copying the image into the cache: cp {status}"));
            }
        }
        // `dest` is in the runner's own directory now, out of the build
        // user's reach: checking it here cannot race with the build.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .map_err(|e| format!("the build's image: {e}"))?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err("the build's image is not a plain file".to_string());
        }
        std::os::unix::fs::fchown(&file, Some(0), Some(0)).map_err(|e| e.to_string())?;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())
    }
}

/// `lchown -R`: links themselves, never what they point at.
fn chown_tree(path: &Path, user: &BuildUser) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    // chown clears setuid and setgid bits; an image keeps them.
    if meta.mode() & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// Whether /etc/subuid (or subgid) gives `user` at least 65536 ids, which
/// mmdebstrap's unshare mode maps (by name or by number, as newuidmap reads it).
fn has_subordinate_range(file: &Path, user: &BuildUser) -> bool {
    let Ok(text) = fs::read_to_string(file) else {
        return false;
    };
    let id = if file.ends_with("subgid") {
        user.gid
    } else {
        user.uid
    };
    text.lines().any(|line| {
        let mut fields = line.split(':');
        let (Some(who), Some(_start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (who == user.name || who == id.to_string())
            && count.trim().parse::<u64>().is_ok_and(|n| n >= 65536)
    })
}

/// Whether the build user may create a user namespace.
fn user_namespaces_work(user: &BuildUser) -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .uid(user.uid)
        .gid(user.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn refused(detail: String) -> ImageError {
    ImageError::Build {
        what: "an image spec".to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> BuildUser {
        BuildUser {
            name: "runner-build".into(),
            uid: 999,
            gid: 995,
            home: PathBuf::from("/var/lib/runner-build"),
        }
    }

    #[test]
    fn a_subordinate_range_is_found_by_name_or_id_and_must_hold_65536_ids() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            has_subordinate_range(&path, &user())
        };
        assert!(check(
            "subuid",
            "alice:100000:65536\nrunner-build:165536:65536\n"
        ));
        assert!(check("subuid", "999:100000:65536\n"));
        assert!(check("subgid", "995:100000:65536\n"));
        assert!(
            !check("subgid", "999:100000:65536\n"),
            "subgid goes by the gid"
        );
        assert!(
            !check("subuid", "runner-build:100000:1000\n"),
            "too few ids"
        );
        assert!(!check("subuid", "runner-builder:100000:65536\n"));
        assert!(!check("subuid", ""));
    }
}
