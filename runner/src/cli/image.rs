//! `runner image`: build guest images ahead of time, list and prune the
//! cache of images built from pipeline specs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Subcommand;

use super::failure::Failure;
use crate::grants::{GrantArgs, Grants};
use crate::pipeline::Pipeline;
use crate::pipeline::{parse_byte_size, parse_unbounded_duration};
use runner_machine::images::{self as image_cache, manage};
use runner_machine::images::{ImageError, ImageRef, Images};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build (or find in the cache) images and print their paths: `all`
    /// (kernel and minimal rootfs), `kernel`, `minimal`, `debian`, or a
    /// pipeline file: every image it uses, image specs included.
    Build {
        #[arg(default_value = "all", value_name = "WHICH|PIPELINE")]
        which: String,
        /// Also check each cached spec image's sha256 against its manifest
        /// (runs only check its size and superblock).
        #[arg(long)]
        verify: bool,
        /// What the pipeline's images may reach beyond its workspace, as
        /// for `runner test` (host files, `size`, setup's network).
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// The images built from pipeline specs: key, size, last use, spec.
    List {
        /// Also print what each key was hashed from.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove cached spec images, least recently used first. Default:
    /// those unused for 30 days.
    Prune {
        /// Remove entries last used longer ago than this (`7d`, `12h`, `0s`
        /// for all).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Then remove more, least recently used first, until the images
        /// take at most this on disk (`20G`).
        #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
        max_size: Option<u64>,
        /// Keep the images these pipelines use; without --older-than,
        /// remove every other one.
        #[arg(long = "keep", value_name = "PIPELINE")]
        keep: Vec<PathBuf>,
    },
}

/// A cache age: `30d`, `12h`, `0s` for all. Unlike a timeout it may be zero
/// and longer than 7 days.
pub(super) fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    parse_unbounded_duration(text)
        .map_err(|_| format!("invalid age `{text}`: expected like `30d`, `12h` or `0s`"))
}

/// Unused for this long, an entry goes with a plain `runner image prune`
/// (`runner snapshot prune` and `runner cache prune` too).
pub(super) const DEFAULT_PRUNE_AGE: std::time::Duration =
    std::time::Duration::from_secs(30 * 86400);

pub fn run(cmd: ImageCommand) -> Result<i32, Failure> {
    match cmd {
        ImageCommand::Build {
            which,
            verify,
            grants,
        } => build(&which, verify, &grants),
        ImageCommand::List { verbose } => {
            let listed = manage::list().map_err(|e| Failure::new(1, anyhow::Error::new(e)))?;
            print!("{}", manage::render(&listed, SystemTime::now(), verbose));
            Ok(0)
        }
        ImageCommand::Prune {
            older_than,
            max_size,
            keep,
        } => prune(older_than, max_size, &keep),
    }
}

fn build(which: &str, verify: bool, grants: &GrantArgs) -> Result<i32, Failure> {
    let images = Images::from_env();
    let named = |n: &str| ImageRef::Named(n.to_string());
    let built = match which {
        "all" => images
            .kernel(&named("default"))
            .and_then(|k| Ok(vec![k, images.rootfs(&named("minimal"))?])),
        "kernel" => images.kernel(&named("default")).map(|k| vec![k]),
        "minimal" | "debian" => images.rootfs(&named(which)).map(|r| vec![r]),
        path if Path::new(path).exists() || path.ends_with(".yml") || path.ends_with(".yaml") => {
            let grants = grants
                .resolve()
                .map_err(|e| Failure::new(2, anyhow::Error::msg(e)))?;
            let images = images.with_limits(grants.build_limits());
            return build_pipeline(&images, Path::new(path), verify, &grants);
        }
        other => {
            return Err(Failure::new(
                2,
                anyhow::anyhow!(
                "unknown image `{other}`: expected all, kernel, minimal, debian or a pipeline file"
            ),
            ))
        }
    }
    .map_err(|e| Failure::new(1, e))?;
    for path in built {
        println!("{}", path.display());
    }
    Ok(0)
}

/// Every image the pipeline uses (top level, per job and per service):
/// kernels and root file systems, named, prebuilt or built from a spec;
/// one path a line.
fn build_pipeline(
    images: &Images,
    path: &Path,
    verify: bool,
    grants: &Grants,
) -> Result<i32, Failure> {
    let pipeline = Pipeline::load(path).map_err(|e| Failure::new(2, e))?;
    let mut seen = HashSet::new();
    let fail = |e: ImageError| {
        let code = if matches!(e, ImageError::Spec(_)) {
            2
        } else {
            1
        };
        Failure::new(code, e)
    };
    for image in pipeline.images() {
        grants
            .check_image(image, &pipeline.workspace)
            .map_err(|e| Failure::new(2, anyhow::Error::msg(e)))?;
        for (is_kernel, image_ref) in [(true, &image.kernel), (false, &image.rootfs)] {
            if !seen.insert(image_ref.clone()) {
                continue;
            }
            let built = match image_ref {
                ImageRef::Spec(spec) => image_cache::resolve_spec(images, spec, verify),
                _ if is_kernel => images.kernel(image_ref),
                _ => images.rootfs(image_ref),
            }
            .map_err(fail)?;
            println!("{}", built.display());
        }
    }
    Ok(0)
}

fn pipeline_specs(pipeline: &Pipeline) -> Vec<std::sync::Arc<crate::pipeline::ImageSpec>> {
    let mut specs = Vec::new();
    for image in pipeline.images() {
        if let ImageRef::Spec(spec) = &image.rootfs {
            if !specs.contains(spec) {
                specs.push(spec.clone());
            }
        }
    }
    specs
}

fn prune(
    older_than: Option<std::time::Duration>,
    max_size: Option<u64>,
    keep: &[PathBuf],
) -> Result<i32, Failure> {
    let keep = if keep.is_empty() {
        None
    } else {
        let images = Images::from_env();
        let mut shorts = HashSet::new();
        for path in keep {
            let pipeline = Pipeline::load(path).map_err(|e| Failure::new(2, e))?;
            for spec in pipeline_specs(&pipeline) {
                let (key, _) =
                    image_cache::spec_key(&images, &spec).map_err(|e| Failure::new(2, e))?;
                shorts.insert(key[..16].to_string());
            }
        }
        Some(shorts)
    };
    let policy = manage::PrunePolicy {
        older_than: older_than.or(if keep.is_none() && max_size.is_none() {
            Some(DEFAULT_PRUNE_AGE)
        } else {
            None
        }),
        max_bytes: max_size,
        keep,
    };
    let (removed, freed) = manage::prune(&policy, SystemTime::now())
        .map_err(|e| Failure::new(1, anyhow::Error::new(e)))?;
    for short in &removed {
        println!("removed {short}");
    }
    eprintln!(
        "runner: pruned {} images, freed {}",
        removed.len(),
        manage::human_bytes(freed)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_run_from_zero_to_weeks() {
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_age("200h"), Ok(Duration::from_secs(200 * 3600)));
        // Once a debug-build panic (`days * 86400` overflowed).
        assert!(parse_age("999999999999999999d").is_err());
        assert_eq!(
            parse_age("soon").unwrap_err(),
            "invalid age `soon`: expected like `30d`, `12h` or `0s`"
        );
    }
}
