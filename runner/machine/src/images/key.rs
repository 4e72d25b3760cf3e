//! The cache key of an image spec: a sha256 over everything that can change
//! the built image. The spec's own contents (base, packages, the bytes and
//! modes of its files, setup, size) and the builder's inputs (its script,
//! our init and agent, mke2fs and its config, mmdebstrap, the mirror).
//!
//! Package *versions* are not in the key: the mirror moves. Pin them with
//! `RUNNER_DEBIAN_SNAPSHOT` (a snapshot.debian.org timestamp), which is.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::build_inputs::BuildInputs;
use super::error::ImageError;
use super::oci;
use super::spec::{ImageSpec, SpecBase};
use crate::digest::{sha256_bytes, sha256_file};

/// Bump when the key's layout or the build's meaning changes.
const KEY_VERSION: &str = "runner image spec v1";
/// Debian suite of `base: debian` (as rootfs/build-spec.sh).
const DEBIAN_SUITE: &str = "bookworm";

/// The mirror `base: debian` is built from: `RUNNER_DEBIAN_SNAPSHOT`
/// (e.g. `20261130T000000Z`) pins a snapshot.debian.org archive; else
/// `RUNNER_DEBIAN_MIRROR`, else deb.debian.org.
pub fn debian_mirror() -> String {
    if let Some(stamp) = std::env::var("RUNNER_DEBIAN_SNAPSHOT")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return format!("http://snapshot.debian.org/archive/debian/{stamp}/");
    }
    std::env::var("RUNNER_DEBIAN_MIRROR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// The full hex key and the lines it was hashed from.
pub fn spec_key(
    images: &dyn BuildInputs,
    spec: &ImageSpec,
) -> Result<(String, Vec<String>), ImageError> {
    let spec_error = |message: String| ImageError::Spec(message);
    let sources = images.source_dir("an image spec")?;
    let input = |what: &str, path: &Path| -> Result<String, ImageError> {
        let sum = sha256_file(path).map_err(|e| ImageError::Build {
            what: "the image key".into(),
            detail: format!("reading {}: {e}", path.display()),
        })?;
        Ok(format!("{what} {sum}"))
    };
    let mut lines = vec![KEY_VERSION.to_string()];
    match &spec.base {
        SpecBase::Debian => {
            lines.push(format!("base debian {DEBIAN_SUITE} {}", debian_mirror()));
            lines.push(input("mmdebstrap", &which("mmdebstrap")?)?);
            let mut packages = spec.packages.clone();
            packages.sort();
            packages.dedup();
            lines.extend(packages.iter().map(|p| format!("package {p}")));
        }
        SpecBase::Minimal => {
            let minimal = images.minimal_rootfs()?;
            lines.push(input("base minimal", &minimal)?);
        }
        SpecBase::Oci(path) => {
            let digest = oci::digest(path)
                .map_err(|e| spec_error(format!("oci image {}: {e}", path.display())))?;
            lines.push(format!("base oci {digest} {}", oci::UNPACKER_VERSION));
            // A tree without busybox gets the host's (runner-init needs it).
            lines.push(input("busybox", Path::new("/bin/busybox"))?);
        }
    }
    for file in &spec.files {
        let sum = hash_tree(&file.from)
            .map_err(|e| spec_error(format!("image file `{}`: {e}", file.from.display())))?;
        lines.push(format!("file {} {sum}", file.to));
    }
    if let Some(setup) = &spec.setup {
        lines.push(format!("setup {}", sha256_bytes(setup.as_bytes())));
    }
    lines.push(format!(
        "size {}",
        spec.size_mib
            .map_or("auto".to_string(), |m| format!("{m}M"))
    ));
    lines.push(input(
        "build-spec.sh",
        &sources.join("rootfs/build-spec.sh"),
    )?);
    lines.push(input("runner-init", &sources.join("rootfs/runner-init"))?);
    lines.push(input("mke2fs.conf", &sources.join("rootfs/mke2fs.conf"))?);
    lines.push(input(
        "used-inodes.awk",
        &sources.join("rootfs/used-inodes.awk"),
    )?);
    lines.push(input("mke2fs", &which("mke2fs")?)?);
    lines.push(input("agent", &images.agent_binary()?)?);
    let key = sha256_bytes(lines.join("\n").as_bytes());
    Ok((key, lines))
}

/// A file's mode and bytes, or a directory's entries (sorted) recursively,
/// hashed. Symlinks are hashed by their target, not followed.
fn hash_tree(path: &Path) -> std::io::Result<String> {
    let meta = fs::symlink_metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(e.kind(), "not found")
        } else {
            e
        }
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)?;
        return Ok(sha256_bytes(
            format!("link {}", target.display()).as_bytes(),
        ));
    }
    if meta.is_file() {
        return Ok(sha256_bytes(
            format!("file {mode:o} {}", sha256_bytes(&fs::read(path)?)).as_bytes(),
        ));
    }
    if !meta.is_dir() {
        return Err(std::io::Error::other("is neither a file nor a directory"));
    }
    let mut names: Vec<_> = fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut text = format!("dir {mode:o}\n");
    for name in names {
        let sum = hash_tree(&path.join(&name))?;
        text.push_str(&format!("{} {sum}\n", name.to_string_lossy()));
    }
    Ok(sha256_bytes(text.as_bytes()))
}

/// A host program the build needs, or which package to install.
fn which(program: &str) -> Result<PathBuf, ImageError> {
    crate::programs::host_program(program).ok_or_else(|| ImageError::Build {
        what: "an image spec".into(),
        detail: format!(
            "`{program}` not found; run scripts/setup-host (apt-get install {})",
            if program == "mmdebstrap" {
                "mmdebstrap uidmap"
            } else {
                "e2fsprogs"
            }
        ),
    })
}
