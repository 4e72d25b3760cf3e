//! What a VM boots from, as the layers above name it: a kernel or rootfs by
//! name, by host path, or a rootfs built from a spec (`image: { base: …,
//! packages: … }` in a pipeline). The pipeline parses these; `super`
//! resolves them to files, building and caching spec images.

use std::path::PathBuf;

/// Kernel names the runner knows how to build or fetch from its cache.
pub const KERNEL_NAMES: &[&str] = &["default"];
/// Root file system names the runner knows how to build.
pub const ROOTFS_NAMES: &[&str] = &["minimal", "debian"];

/// A kernel or root file system: a name the runner knows, or a file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// One of [`KERNEL_NAMES`] / [`ROOTFS_NAMES`]; the backend resolves it
    /// to a file in its cache.
    Named(String),
    /// A file on the host, absolute (relative paths in the pipeline are
    /// resolved against the workspace root when parsing).
    Path(PathBuf),
    /// A root file system built from a spec in the pipeline and cached by
    /// its hash; jobs with equal specs share one build.
    Spec(std::sync::Arc<ImageSpec>),
}

/// What an [`ImageRef`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Kernel,
    Rootfs,
}

impl ImageKind {
    pub fn noun(self) -> &'static str {
        match self {
            ImageKind::Kernel => "kernel",
            ImageKind::Rootfs => "rootfs",
        }
    }

    pub fn known_names(self) -> &'static [&'static str] {
        match self {
            ImageKind::Kernel => KERNEL_NAMES,
            ImageKind::Rootfs => ROOTFS_NAMES,
        }
    }
}

/// What an image spec starts from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpecBase {
    /// busybox, like the named `minimal` image; no package manager.
    Minimal,
    /// Debian bookworm `minbase`, built rootless with mmdebstrap.
    Debian,
    /// An OCI image layout directory or a `docker save` tarball on the host.
    Oci(PathBuf),
}

/// A host file copied into the image before `setup` runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpecFile {
    /// Absolute host path (relative ones are resolved against the workspace).
    pub from: PathBuf,
    /// Absolute guest path; a trailing `/` means "into this directory".
    pub to: String,
}

/// A root file system to build from a base, packages, files and a script.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pub base: SpecBase,
    /// Debian package names, in file order (only with `base: debian`).
    pub packages: Vec<String>,
    pub files: Vec<SpecFile>,
    /// Shell script run once as root inside the image at build time.
    pub setup: Option<String>,
    /// Largest the image may be, in MiB; the file system gets this size.
    pub size_mib: Option<u64>,
}

impl ImageSpec {
    /// One short line for the console and `runner image list`:
    /// `debian + gcc, make, 1 file, setup, 2G`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.packages.is_empty() {
            parts.push(self.packages.join(" "));
        }
        match self.files.len() {
            0 => {}
            1 => parts.push("1 file".to_string()),
            n => parts.push(format!("{n} files")),
        }
        if self.setup.is_some() {
            parts.push("setup".to_string());
        }
        if let Some(mib) = self.size_mib {
            parts.push(if mib % 1024 == 0 {
                format!("{}G", mib / 1024)
            } else {
                format!("{mib}M")
            });
        }
        let base = match &self.base {
            SpecBase::Minimal => "minimal".to_string(),
            SpecBase::Debian => "debian".to_string(),
            SpecBase::Oci(path) => format!("oci {}", path.display()),
        };
        if parts.is_empty() {
            base
        } else {
            format!("{base} + {}", parts.join(", "))
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Named(name) => f.write_str(name),
            ImageRef::Path(path) => write!(f, "{}", path.display()),
            ImageRef::Spec(spec) => f.write_str(&spec.summary()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_short() {
        let spec = ImageSpec {
            base: SpecBase::Debian,
            packages: vec!["gcc".into(), "make".into()],
            files: vec![SpecFile {
                from: "/a".into(),
                to: "/b".into(),
            }],
            setup: Some("true".into()),
            size_mib: Some(2048),
        };
        assert_eq!(spec.summary(), "debian + gcc make, 1 file, setup, 2G");
    }
}
