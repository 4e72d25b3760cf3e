//! An image described in the pipeline (`image: { base: debian, packages: … }`
//! or `image: { oci: … }`): the checks on its fields. The spec itself is the
//! machine's (`runner_machine::images`), which builds and caches it.

pub use runner_machine::images::{ImageSpec, SpecBase, SpecFile};

/// Base names accepted by `base:`.
pub const SPEC_BASES: &[&str] = &["minimal", "debian"];

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
}
