//! What goes wrong finding or building an image, in one line each.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path} not found; build one with `{hint}`")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("unknown {what} image `{name}` (known: {})", known.join(", "))]
    UnknownName {
        what: &'static str,
        name: String,
        known: &'static [&'static str],
    },
    #[error("image `{0}` must be built, but the runner sources (kernels/, rootfs/) were not found; set RUNNER_SOURCE_DIR to a checkout or pass an image path")]
    NoSources(String),
    #[error("building {what} failed: {detail}")]
    Build { what: String, detail: String },
    /// The image spec itself is at fault (unknown package, failing setup,
    /// too big for its `size`, a missing file): one line saying what.
    #[error("{0}")]
    Spec(String),
}

impl ImageError {
    /// A spec error said of `what` (`oci image PATH`); others unchanged.
    pub fn in_image(self, what: &str) -> ImageError {
        match self {
            ImageError::Spec(detail) => ImageError::Spec(format!("{what}: {detail}")),
            other => other,
        }
    }
}

pub(super) fn build_error(what: &str, detail: String) -> ImageError {
    ImageError::Build {
        what: what.to_string(),
        detail,
    }
}
