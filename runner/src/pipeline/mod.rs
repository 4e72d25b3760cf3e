//! The pipeline file: what to run, in which VM, with which files.
//!
//! [`Pipeline::load`] reads and validates a YAML file (format described in
//! `docs/pipeline-format.md`). Every error, syntactic or semantic, comes back
//! as a [`PipelineError`] whose `Display` is one line `file:line:col: message`.
//! The result is then turned into a [`crate::plan::Plan`], which expands
//! matrices and resolves every default.

pub mod cache;
pub mod cache_key;
mod de;
mod error;
pub mod files;
pub mod host_scope;
pub mod image_spec;
mod imported;
mod model;
pub mod network;
mod scalars;
pub mod service;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::PipelineError;
pub use files::{FileEntry, GUEST_WORKSPACE};
pub use image_spec::{ImageSpec, SpecBase, SpecFile};
pub use imported::ReportFiles;
pub use model::*;
pub use network::{AllowEntry, Network};
pub use runner_machine::images::{KERNEL_NAMES, ROOTFS_NAMES};
pub use scalars::{
    format_duration, parse_byte_size, parse_duration, parse_image_ref, parse_memory,
    parse_unbounded_duration, ImageKind, ImageRef, MIN_MEMORY_MIB,
};

impl Pipeline {
    /// Reads and validates a pipeline file. The workspace is the git work
    /// tree containing the file, or the file's directory.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let shown = path.display().to_string();
        let read_error = |cause| PipelineError::Read {
            path: shown.clone(),
            cause,
        };
        let source = std::fs::read_to_string(path).map_err(read_error)?;
        let absolute = path.canonicalize().map_err(read_error)?;
        let dir = absolute.parent().unwrap_or(Path::new("/"));
        let workspace = find_workspace(dir);
        Pipeline::parse(&source, path, &workspace)
    }

    /// Parses pipeline text. `path` is used for messages and the default
    /// name; relative host paths are resolved against `workspace`.
    pub fn parse(source: &str, path: &Path, workspace: &Path) -> Result<Pipeline, PipelineError> {
        let shown = path.display().to_string();
        let default_name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".to_string());
        let read = |targets: &de::CacheTargets| {
            let parsed = de::parse(source, workspace, targets)
                .map_err(|err| PipelineError::from_yaml(&shown, source, &err))?;
            Ok(Pipeline {
                name: parsed.name.unwrap_or_else(|| default_name.clone()),
                path: path.to_path_buf(),
                workspace: workspace.to_path_buf(),
                image: parsed.image.unwrap_or_default(),
                vcpus: parsed.vcpus.unwrap_or(DEFAULT_VCPUS),
                memory_mib: parsed.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
                defaults: parsed.defaults,
                jobs: parsed.jobs,
            })
        };
        let pipeline = read(&de::CacheTargets::default())?;
        // Relative cache paths and overlaps depend on each job's workdir,
        // known only now: read again, checking each cache in the jobs that
        // use it, so that an error still points into the file.
        match pipeline.cache_targets() {
            Some(targets) => read(&targets),
            None => Ok(pipeline),
        }
    }

    /// The jobs each cache list applies to; `None` without any cache.
    fn cache_targets(&self) -> Option<de::CacheTargets> {
        let any_cache = self.defaults.cache.as_ref().is_some_and(|c| !c.is_empty())
            || self
                .jobs
                .iter()
                .any(|job| job.cache.as_ref().is_some_and(|c| !c.is_empty()));
        if !any_cache {
            return None;
        }
        let mut targets = de::CacheTargets::default();
        for job in &self.jobs {
            let files = self.job_files(job);
            let target = de::CacheTarget {
                job: job.name.clone(),
                workdir: self.job_workdir(job, &files),
                file_destinations: files.into_iter().map(|entry| entry.to).collect(),
            };
            if job.cache.is_some() {
                targets.jobs.insert(job.name.clone(), target);
            } else {
                targets.defaults.push(target);
            }
        }
        Some(targets)
    }
}

/// The nearest ancestor holding `.git` (a directory, or a file in a linked
/// work tree); `dir` itself when there is none.
pub fn find_workspace(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|candidate| candidate.join(".git").exists())
        .unwrap_or(dir)
        .to_path_buf()
}
