//! What building a spec image takes: the operator's limits, and the pieces
//! the resolver ([`super::Images`]) finds or builds. The resolver in turn
//! builds spec images, so the builder sees it only through [`BuildInputs`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ImageError;

/// Largest image `size` without a grant: room for a toolchain and a
/// project's build, not a way to fill the host's disk.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 16 << 30;

/// How long an image's `setup` may run: it runs once per image, and a
/// script that never ends must not hold the machine.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What an image build may do: the operator's grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildLimits {
    /// Most bytes a spec without `size` may unpack or hold.
    pub max_bytes: u64,
    /// Whether `setup` gets the network.
    pub setup_network: bool,
    /// How long `setup` may run.
    pub setup_timeout: Duration,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            max_bytes: DEFAULT_MAX_IMAGE_SIZE,
            setup_network: false,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
        }
    }
}

/// The inputs of a spec build that come from outside the spec.
pub trait BuildInputs {
    /// The checkout holding `rootfs/`, whose scripts build the image.
    fn source_dir(&self, what: &str) -> Result<&Path, ImageError>;
    /// The static guest agent every image gets.
    fn agent_binary(&self) -> Result<PathBuf, ImageError>;
    /// The named `minimal` rootfs, which `base: minimal` starts from.
    fn minimal_rootfs(&self) -> Result<PathBuf, ImageError>;
    fn limits(&self) -> &BuildLimits;
}
