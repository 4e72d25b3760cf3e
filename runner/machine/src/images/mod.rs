//! Finding guest images, and building the named ones on first use.
//!
//! A kernel or rootfs is named by a path, or by a name that the scripts under
//! `kernels/` and `rootfs/` know how to build (`default`; `minimal`,
//! `debian`). `RUNNER_KERNEL` and `RUNNER_ROOTFS` stand in for `default`
//! and `minimal` (CI and the tests build those once and pass them on). The
//! scripts cache their results under `~/.cache/runner`, keyed
//! by their inputs, so resolving a name that was built before costs a hash.

mod build_inputs;
mod build_user;
mod cache;
mod error;
mod key;
pub mod manage;
pub mod oci;
mod spec;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use build_inputs::{BuildInputs, BuildLimits, DEFAULT_MAX_IMAGE_SIZE, DEFAULT_SETUP_TIMEOUT};
pub use cache::{cache, resolve as resolve_spec, Manifest};
use error::build_error;
pub use error::ImageError;
pub use key::spec_key;
pub use spec::{ImageKind, ImageRef, ImageSpec, SpecBase, SpecFile, KERNEL_NAMES, ROOTFS_NAMES};

/// Resolves image references to files.
pub struct Images {
    sources: Option<PathBuf>,
    /// `RUNNER_KERNEL`: stands in for the `default` kernel.
    default_kernel: Option<PathBuf>,
    /// `RUNNER_ROOTFS`: stands in for the `minimal` rootfs.
    minimal_rootfs: Option<PathBuf>,
    /// `RUNNER_AGENT`: a prebuilt static guest agent, instead of building
    /// one with cargo (image specs hash it on every run).
    agent: Option<PathBuf>,
    limits: BuildLimits,
}

impl Images {
    /// Uses `RUNNER_SOURCE_DIR`, else the checkout this binary was built from
    /// if it is still there.
    pub fn from_env() -> Images {
        let candidates = [
            std::env::var_os("RUNNER_SOURCE_DIR").map(PathBuf::from),
            // This crate is `runner/machine` in the checkout.
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .map(Path::to_path_buf),
        ];
        let sources = candidates
            .into_iter()
            .flatten()
            .find(|dir| dir.join("kernels/build.sh").is_file());
        Images {
            sources,
            default_kernel: std::env::var_os("RUNNER_KERNEL").map(PathBuf::from),
            minimal_rootfs: std::env::var_os("RUNNER_ROOTFS").map(PathBuf::from),
            agent: std::env::var_os("RUNNER_AGENT").map(PathBuf::from),
            limits: BuildLimits::default(),
        }
    }

    /// These images, built within `limits`.
    pub fn with_limits(mut self, limits: BuildLimits) -> Images {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &BuildLimits {
        &self.limits
    }

    pub fn kernel(&self, image: &ImageRef) -> Result<PathBuf, ImageError> {
        match image {
            ImageRef::Path(path) => existing(path, "kernel", "kernels/build.sh"),
            ImageRef::Named(name) if name == "default" => {
                if let Some(path) = &self.default_kernel {
                    return existing(path, "kernel", "kernels/build.sh");
                }
                let dir = self.run_script("kernel", "kernels/build.sh", &[])?;
                existing(&dir.join("vmlinux"), "kernel", "kernels/build.sh")
            }
            ImageRef::Spec(_) => Err(ImageError::Spec(
                "an image spec builds a root file system, not a kernel".into(),
            )),
            ImageRef::Named(name) => Err(ImageError::UnknownName {
                what: "kernel",
                name: name.clone(),
                known: KERNEL_NAMES,
            }),
        }
    }

    pub fn rootfs(&self, image: &ImageRef) -> Result<PathBuf, ImageError> {
        match image {
            ImageRef::Path(path) => {
                existing(path, "rootfs", "rootfs/build.sh minimal --agent PATH")
            }
            // Built rootless from a spec (mmdebstrap), like a pipeline's
            // own images; rootfs/build.sh debian (debootstrap) needs root.
            ImageRef::Named(name) if name == "debian" => {
                cache::resolve(self, &debian_spec(), false)
            }
            ImageRef::Named(name) if name == "minimal" => {
                if let (Some(path), "minimal") = (&self.minimal_rootfs, name.as_str()) {
                    return existing(path, "rootfs", "rootfs/build.sh minimal");
                }
                let agent = self.agent_binary()?;
                let agent = agent.display().to_string();
                let image = self.run_script(
                    &format!("{name} rootfs"),
                    "rootfs/build.sh",
                    &[name, "--agent", &agent],
                )?;
                existing(&image, "rootfs", &format!("rootfs/build.sh {name}"))
            }
            ImageRef::Spec(spec) => cache::resolve(self, spec, false),
            ImageRef::Named(name) => Err(ImageError::UnknownName {
                what: "rootfs",
                name: name.clone(),
                known: ROOTFS_NAMES,
            }),
        }
    }

    /// Builds the static guest agent and returns its path.
    pub fn agent_binary(&self) -> Result<PathBuf, ImageError> {
        if let Some(agent) = &self.agent {
            return existing(
                agent,
                "guest agent",
                "cargo build --profile agent -p guest-agent",
            );
        }
        let sources = self.sources("guest agent")?;
        // An explicit --target keeps RUSTFLAGS away from build scripts and
        // proc-macros, which cannot be linked statically.
        let target = "x86_64-unknown-linux-gnu";
        let status = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
            .current_dir(sources)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--quiet",
                "--profile",
                "agent",
                "-p",
                "guest-agent",
            ])
            .args(["--target", target])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| build_error("the guest agent", format!("running cargo: {e}")))?;
        if !status.success() {
            return Err(build_error("the guest agent", format!("cargo {status}")));
        }
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| sources.join("target"));
        Ok(target_dir.join(target).join("agent").join("guest-agent"))
    }

    /// The checkout holding `kernels/` and `rootfs/`.
    pub fn source_dir(&self, what: &str) -> Result<&Path, ImageError> {
        self.sources(what)
    }

    fn sources(&self, what: &str) -> Result<&Path, ImageError> {
        self.sources
            .as_deref()
            .ok_or_else(|| ImageError::NoSources(what.to_string()))
    }

    /// Runs a build script; its last line of stdout is the result's path.
    /// Progress goes to our stderr as it happens, since a cold kernel build
    /// takes minutes.
    fn run_script(&self, what: &str, script: &str, args: &[&str]) -> Result<PathBuf, ImageError> {
        let sources = self.sources(what)?;
        // The scripts cache what they build in the runner's cache, checked
        // as the runner checks it (`crate::trusted_cache`).
        let cache = crate::trusted_cache::TrustedCache::open().map_err(|e| build_error(what, e))?;
        let mut child = Command::new("bash")
            .arg(sources.join(script))
            .args(args)
            .env("RUNNER_CACHE", cache.root())
            .current_dir(sources)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| build_error(what, format!("running {script}: {e}")))?;
        // Progress goes on to our stderr as it comes, except the one line a
        // cache hit prints: that is every run, and says nothing new.
        let progress = child.stderr.take().map(|stderr| {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.contains("cache hit") {
                        eprintln!("{line}");
                    }
                }
            })
        });
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let status = child
            .wait()
            .map_err(|e| build_error(what, format!("running {script}: {e}")))?;
        if let Some(thread) = progress {
            let _ = thread.join();
        }
        if !status.success() {
            return Err(build_error(
                what,
                format!("{script} {status} (see its messages above)"),
            ));
        }
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
        last.map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| build_error(what, format!("{script} printed no result path")))
    }
}

impl BuildInputs for Images {
    fn source_dir(&self, what: &str) -> Result<&Path, ImageError> {
        self.sources(what)
    }

    fn agent_binary(&self) -> Result<PathBuf, ImageError> {
        Images::agent_binary(self)
    }

    fn minimal_rootfs(&self) -> Result<PathBuf, ImageError> {
        self.rootfs(&ImageRef::Named("minimal".into()))
    }

    fn limits(&self) -> &BuildLimits {
        &self.limits
    }
}

/// The named `debian` image: bookworm minbase with what most test suites
/// expect from a shell.
pub fn debian_spec() -> ImageSpec {
    ImageSpec {
        base: SpecBase::Debian,
        packages: [
            "bash",
            "coreutils",
            "git",
            "make",
            "python3",
            "ca-certificates",
        ]
        .map(String::from)
        .to_vec(),
        files: Vec::new(),
        setup: None,
        size_mib: None,
    }
}

fn existing(path: &Path, what: &'static str, hint: &str) -> Result<PathBuf, ImageError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ImageError::Missing {
            what,
            path: path.to_path_buf(),
            hint: hint.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_and_unknown_names_say_what_to_do() {
        let images = Images {
            sources: None,
            default_kernel: None,
            minimal_rootfs: None,
            agent: None,
            limits: BuildLimits::default(),
        };
        let err = images
            .kernel(&ImageRef::Path("/nonexistent/vmlinux".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel /nonexistent/vmlinux not found; build one with `kernels/build.sh`"
        );
        let err = images
            .rootfs(&ImageRef::Named("alpine".into()))
            .unwrap_err();
        assert!(err.to_string().contains("known: minimal, debian"), "{err}");
        let err = images
            .rootfs(&ImageRef::Named("minimal".into()))
            .unwrap_err();
        assert!(matches!(err, ImageError::NoSources(_)), "{err}");
    }
}
