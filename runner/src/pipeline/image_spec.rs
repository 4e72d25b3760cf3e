//! An image described in the pipeline (`image: { base: debian, packages: … }`
//! or `image: { oci: … }`), built by the runner and cached by the hash of
//! its contents (see `crate::image_cache`).

use std::path::PathBuf;

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

/// Base names accepted by `base:`.
pub const SPEC_BASES: &[&str] = &["minimal", "debian"];

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

/// A Debian package name (policy 5.6.1: lower case letters, digits, `+ - .`,
/// at least two characters, starting alphanumeric), optionally with an
/// apt version (`=1.2`) or release (`/bookworm-backports`) suffix.
pub fn parse_package(text: &str) -> Result<String, String> {
    let text = text.trim();
    let name_end = text.find(['=', '/']).unwrap_or(text.len());
    let (name, suffix) = text.split_at(name_end);
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let suffix_ok = suffix
        .chars()
        .skip(1)
        .all(|c| c.is_ascii_alphanumeric() || "+-.~:".contains(c))
        && suffix.len() != 1;
    if name_ok && suffix_ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid package name `{text}`: Debian package names use lower case letters, digits and `+ - .`"
        ))
    }
}

/// The image size limit: `4G`, `800M`, `2GiB`; a bare number is MiB.
pub fn parse_image_size(text: &str) -> Result<u64, String> {
    super::parse_memory(text)
        .map_err(|_| format!("invalid image size `{text}`: expected a size like `800M` or `4G`, at least 16M and at most 1T"))
}

/// A guest path for a `files` entry of an image: absolute, no `..`.
pub fn parse_image_target(text: &str) -> Result<String, String> {
    let text = text.trim();
    if !text.starts_with('/') || text.split('/').any(|part| part == "..") {
        return Err(format!(
            "invalid image path `{text}`: `to` must be an absolute path in the image, without `..`"
        ));
    }
    if text == "/" {
        return Err("`to` must name a file or a directory below `/`".to_string());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_policy() {
        for good in [
            "gcc",
            "build-essential",
            "g++",
            "libc6-dev",
            "python3.11",
            "gcc=4:12.2.0-3",
            "nodejs/bookworm-backports",
        ] {
            assert_eq!(parse_package(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["", "a", "GCC", "-rf", "gcc;rm", "gcc=", "a b", "gcc/"] {
            assert!(parse_package(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn targets_are_absolute() {
        assert_eq!(
            parse_image_target("/usr/local/bin/x").as_deref(),
            Ok("/usr/local/bin/x")
        );
        for bad in ["usr/x", "/", "/a/../etc/passwd", ""] {
            assert!(parse_image_target(bad).is_err(), "{bad:?}");
        }
    }

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
