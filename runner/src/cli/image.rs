//! `runner image`: build guest images ahead of time and print their paths.

use clap::{Subcommand, ValueEnum};

use super::Failure;
use crate::images::{ImageRef, Images};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build (or find in the cache) images and print their paths.
    Build {
        #[arg(value_enum, default_value = "all")]
        which: Which,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The kernel and the minimal rootfs.
    All,
    Kernel,
    Minimal,
    /// Debian bookworm; needs root (debootstrap).
    Debian,
}

pub fn run(cmd: ImageCommand) -> Result<i32, Failure> {
    let ImageCommand::Build { which } = cmd;
    let images = Images::from_env();
    let named = |n: &str| ImageRef::Named(n.to_string());
    let built = match which {
        Which::All => images
            .kernel(&named("default"))
            .and_then(|k| Ok(vec![k, images.rootfs(&named("minimal"))?])),
        Which::Kernel => images.kernel(&named("default")).map(|k| vec![k]),
        Which::Minimal => images.rootfs(&named("minimal")).map(|r| vec![r]),
        Which::Debian => images.rootfs(&named("debian")).map(|r| vec![r]),
    }
    .map_err(|e| Failure::new(1, e))?;
    for path in built {
        println!("{}", path.display());
    }
    Ok(0)
}
