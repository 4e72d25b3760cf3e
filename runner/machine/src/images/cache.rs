//! Images built from a spec in the pipeline, cached by the hash of
//! everything that goes into them.
//!
//! The cache lives in `${RUNNER_CACHE:-~/.cache/runner}/images/` (see
//! `crate::trusted_cache` for why it must be this user's alone). An entry
//! is `<key>.ext4` (the image), `<key>.json` (its manifest: what it was built
//! from, its size and sha256), `<key>.seal` (the image is the one that was
//! built: `crate::trusted_cache`) and `<key>.used` (its mtime is the last use).
//! Builders take an exclusive `flock` on `<key>.lock`, build under a temp
//! name and rename into place, so concurrent runners build a spec once and
//! nobody ever boots a half-written image. An entry whose image does not
//! match its manifest is rebuilt.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::build_inputs::BuildInputs;
use super::build_user;
use super::error::{build_error, ImageError};
use super::key::{self, spec_key};
use super::oci;
use super::spec::{ImageSpec, SpecBase};
use crate::digest::sha256_file;
use crate::file_lock::{FileLock, LockMode};
use crate::trusted_cache::{open_no_follow, TrustedCache};

/// Manifest format version; a different one is treated as corrupt.
const MANIFEST_VERSION: u32 = 1;

/// What the cache knows about one built image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    /// The full sha256 hex key; file names use its first 16 digits.
    pub key: String,
    pub summary: String,
    /// Apparent size of the image file, checked on every use.
    pub size_bytes: u64,
    /// sha256 of the image file, checked by `runner image build`.
    pub sha256: String,
    /// Seconds since the epoch.
    pub built_at: u64,
    /// The hashed inputs, one per line, shown by `runner image list -v`:
    /// they tell why two keys differ.
    pub inputs: Vec<String>,
}

/// The image cache in the runner's cache, checked (`crate::trusted_cache`).
pub fn cache() -> Result<(TrustedCache, PathBuf), String> {
    let cache = TrustedCache::open()?;
    let dir = cache.subdir("images")?;
    Ok((cache, dir))
}

/// The files of one cache entry.
pub struct Entry {
    pub short: String,
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub used: PathBuf,
    pub lock: PathBuf,
    pub seal: PathBuf,
}

impl Entry {
    pub fn new(dir: &Path, short: &str) -> Entry {
        Entry {
            short: short.to_string(),
            image: dir.join(format!("{short}.ext4")),
            manifest: dir.join(format!("{short}.json")),
            used: dir.join(format!("{short}.used")),
            lock: dir.join(format!("{short}.lock")),
            seal: dir.join(format!("{short}.seal")),
        }
    }

    /// The manifest, if the entry is complete and its image matches it
    /// (size, ext4 magic); otherwise why not.
    pub fn check(&self, key: Option<&str>) -> Result<Manifest, String> {
        let text = fs::read_to_string(&self.manifest).map_err(|e| format!("manifest: {e}"))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("manifest: {e}"))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(format!("manifest version {}", manifest.version));
        }
        if key.is_some_and(|key| key != manifest.key) {
            return Err("manifest is for another key".to_string());
        }
        let file = File::open(&self.image).map_err(|e| format!("image: {e}"))?;
        let len = file.metadata().map_err(|e| format!("image: {e}"))?.len();
        if len != manifest.size_bytes {
            return Err(format!(
                "image is {len} bytes, its manifest says {}",
                manifest.size_bytes
            ));
        }
        let mut magic = [0u8; 2];
        file.read_exact_at(&mut magic, 1080)
            .map_err(|e| format!("image: {e}"))?;
        if magic != [0x53, 0xef] {
            return Err("image has no ext4 superblock".to_string());
        }
        Ok(manifest)
    }

    /// Whether the image is the file this runner built for `key`.
    pub fn check_seal(&self, cache: &TrustedCache, key: &str) -> Result<(), String> {
        cache
            .check_seal(&self.image, &self.seal, &seal_purpose(key))
            .map(drop)
    }

    /// As [`Self::check_seal`], and an image whose cache was copied or
    /// restored (new inodes) is trusted again if its content still has the
    /// sealed hash, instead of being rebuilt.
    fn check_seal_or_content(
        &self,
        cache: &TrustedCache,
        key: &str,
        label: &str,
    ) -> Result<(), String> {
        let announce = || {
            eprintln!("runner: {label}: the cached file was moved or copied; checking its content against its seal")
        };
        cache
            .check_seal_or_content(&self.image, &self.seal, &seal_purpose(key), announce)
            .map(drop)
    }

    fn touch_used(&self) {
        let stamp = open_no_follow(&self.used);
        if let Ok(file) = stamp {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    pub(super) fn remove(&self) {
        for path in [&self.manifest, &self.image, &self.used, &self.seal] {
            let _ = fs::remove_file(path);
        }
    }
}

/// What an image's seal vouches for.
fn seal_purpose(key: &str) -> String {
    format!("image {key}")
}

/// Resolves an image spec to a built image, building it on first use.
/// `verify` also checks the image's sha256 against the manifest.
pub fn resolve(
    images: &dyn BuildInputs,
    spec: &ImageSpec,
    verify: bool,
) -> Result<PathBuf, ImageError> {
    let (key, inputs) = spec_key(images, spec)?;
    let (cache, dir) = cache().map_err(ImageError::Spec)?;
    let entry = Entry::new(&dir, &key[..16]);
    let summary = spec.summary();
    let label = format!("image {} ({summary})", entry.short);
    let usable = |entry: &Entry| -> Result<Manifest, String> {
        let manifest = entry.check(Some(&key))?;
        entry.check_seal_or_content(&cache, &key, &label)?;
        if verify {
            let sum = sha256_file(&entry.image).map_err(|e| format!("image: {e}"))?;
            if sum != manifest.sha256 {
                return Err("image's sha256 differs from its manifest".to_string());
            }
        }
        Ok(manifest)
    };
    if usable(&entry).is_ok() {
        entry.touch_used();
        eprintln!("runner: {label}: cached, {}", entry.image.display());
        return Ok(entry.image);
    }
    let lock = match FileLock::acquire(&entry.lock, LockMode::Exclusive, false) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            eprintln!("runner: {label}: another runner is building it; waiting");
            FileLock::acquire(&entry.lock, LockMode::Exclusive, true)
                .map_err(|e| build_error(&label, format!("locking: {e}")))?
                .expect("a blocking flock returns a lock")
        }
        Err(e) => {
            return Err(build_error(
                &label,
                format!("locking {}: {e}", entry.lock.display()),
            ))
        }
    };
    match usable(&entry) {
        Ok(_) => {
            entry.touch_used();
            eprintln!(
                "runner: {label}: built by another runner, {}",
                entry.image.display()
            );
            return Ok(entry.image);
        }
        Err(why) if entry.manifest.exists() || entry.image.exists() => {
            eprintln!("runner: {label}: cache entry is corrupt ({why}); rebuilding");
            entry.remove();
        }
        Err(_) => {}
    }
    eprintln!("runner: {label}: building");
    let started = Instant::now();
    let temp = dir.join(format!(".{}.ext4.tmp-{}", entry.short, std::process::id()));
    let phases = build(images, spec, &key, &temp).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })?;
    let publish = || -> std::io::Result<()> {
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            key: key.clone(),
            summary: summary.clone(),
            size_bytes: fs::metadata(&temp)?.len(),
            sha256: sha256_file(&temp)?,
            built_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            inputs,
        };
        let manifest_temp = dir.join(format!(".{}.json.tmp-{}", entry.short, std::process::id()));
        fs::write(&manifest_temp, serde_json::to_vec_pretty(&manifest)?)?;
        // The image first: a manifest never points at a missing image.
        fs::rename(&temp, &entry.image)?;
        fs::rename(&manifest_temp, &entry.manifest)?;
        cache
            .seal(
                &entry.image,
                &entry.seal,
                &seal_purpose(&key),
                &manifest.sha256,
            )
            .map_err(std::io::Error::other)
    };
    publish().map_err(|e| {
        let _ = fs::remove_file(&temp);
        build_error(&label, format!("writing the cache entry: {e}"))
    })?;
    entry.touch_used();
    drop(lock);
    let phases: Vec<String> = phases
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.1}s"))
        .collect();
    eprintln!(
        "runner: {label}: built in {:.1}s ({}), {}",
        started.elapsed().as_secs_f64(),
        phases.join(", "),
        entry.image.display()
    );
    Ok(entry.image)
}

/// Runs the builder; returns its phases and their durations in seconds.
fn build(
    images: &dyn BuildInputs,
    spec: &ImageSpec,
    key: &str,
    out: &Path,
) -> Result<Vec<(String, f64)>, ImageError> {
    let label = format!("image {}", &key[..16]);
    let builder = build_user::Builder::choose(spec)?;
    let sources = images.source_dir(&label)?;
    let agent = images.agent_binary()?;
    let cache = out.parent().unwrap_or(Path::new("/tmp"));
    let work = builder
        .staging(cache, &format!(".inputs-{}.", &key[..16]))
        .map_err(|e| build_error(&label, e))?;
    let staging = work.path();
    let stage = |source: &Path, name: &str| {
        builder
            .stage_input(source, staging, name)
            .map_err(|e| build_error(&label, e))
    };
    // The script finds its helpers next to itself; it is staged last.
    let mut script = PathBuf::new();
    for name in [
        "runner-init",
        "mke2fs.conf",
        "used-inodes.awk",
        "build-spec.sh",
    ] {
        script = stage(
            &sources.join("rootfs").join(name),
            &format!("rootfs/{name}"),
        )?;
    }
    let built = match builder {
        build_user::Builder::BuildUser(_) => staging.join("out/image.ext4"),
        _ => out.to_path_buf(),
    };
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(["--out".as_ref(), built.as_os_str()])
        .args([
            "--agent".as_ref(),
            stage(&agent, "runner-agent")?.as_os_str(),
        ])
        .args(["--key", key]);
    match &spec.base {
        SpecBase::Debian => {
            cmd.args(["--base", "debian", "--mirror", &key::debian_mirror()]);
            // The build user keeps its own .deb cache: it cannot reach ours.
            let debs = match &builder {
                build_user::Builder::BuildUser(user) => user.home.join("debs"),
                _ => cache.join("debs"),
            };
            cmd.arg("--debs").arg(debs);
            if !spec.packages.is_empty() {
                cmd.args(["--packages", &spec.packages.join(",")]);
            }
        }
        SpecBase::Minimal => {
            let minimal = images.minimal_rootfs()?;
            cmd.args(["--base", "minimal", "--from-image"])
                .arg(stage(&minimal, "minimal.ext4")?);
        }
        SpecBase::Oci(path) => {
            let tree = staging.join("tree");
            let owners = staging.join("owners.list");
            let limit = spec
                .size_mib
                .map_or(images.limits().max_bytes, |mib| mib << 20);
            let runner = crate::programs::runner_exe().map_err(|e| build_error(&label, e))?;
            let mut unpack = Command::new(stage(&runner, "runner")?);
            unpack
                .arg("__unpack-oci")
                .arg(stage(path, "oci")?)
                .arg(&tree)
                .arg(&owners)
                .arg(limit.to_string());
            builder.seal(staging).map_err(|e| build_error(&label, e))?;
            builder.apply(&mut unpack, staging);
            if let Some((uid, gid)) = builder.run_as() {
                // std drops the supplementary groups when root sets a uid.
                unpack.uid(uid).gid(gid);
            }
            run_unpacker(unpack, &label)
                .map_err(|e| e.in_image(&format!("oci image {}", path.display())))?;
            cmd.args(["--base", "tree", "--tree"])
                .arg(&tree)
                .arg("--owners")
                .arg(&owners);
        }
    }
    let mut list = String::new();
    for (index, file) in spec.files.iter().enumerate() {
        // The list below is tab- and line-separated, and mmdebstrap's
        // `upload` hooks split their arguments on whitespace.
        let from = file.from.to_string_lossy();
        let space = |text: &str| text.chars().any(char::is_whitespace);
        if space(&from) || space(&file.to) {
            return Err(ImageError::Spec(format!(
                "image file `{from}` -> `{}`: paths with spaces are not supported in image `files`",
                file.to
            )));
        }
        // Keeps the base name: a `to` ending in `/` uses it.
        let base = file.from.file_name().unwrap_or_default().to_string_lossy();
        let staged = stage(&file.from, &format!("files/{index}/{base}"))?;
        list.push_str(&format!("{}\t{}\n", staged.display(), file.to));
    }
    if !spec.files.is_empty() {
        let path = staging.join("files.list");
        fs::write(&path, list).map_err(|e| build_error(&label, e.to_string()))?;
        cmd.arg("--files").arg(path);
    }
    if let Some(setup) = &spec.setup {
        let path = staging.join("setup.sh");
        fs::write(&path, setup).map_err(|e| build_error(&label, e.to_string()))?;
        cmd.arg("--setup").arg(path);
    }
    if let Some(mib) = spec.size_mib {
        cmd.args(["--size-mib", &mib.to_string()]);
    }
    if let build_user::Builder::BuildUser(_) = builder {
        fs::create_dir_all(staging.join("out")).map_err(|e| build_error(&label, e.to_string()))?;
    }
    let limits = images.limits();
    cmd.args([
        "--setup-timeout",
        &limits.setup_timeout.as_secs().to_string(),
    ]);
    if limits.setup_network {
        cmd.arg("--setup-network");
    }
    builder.seal(staging).map_err(|e| build_error(&label, e))?;
    builder.apply(&mut cmd, staging);
    // The whole build, downloads included, under a keeper: nothing of it
    // (a setup's background process neither) outlives it or the runner.
    let limit = limits.setup_timeout + BUILD_TIME_BEYOND_SETUP;
    let keeper = crate::process::keep_tree(&cmd, limit, builder.run_as())
        .map_err(|e| build_error(&label, format!("preparing the build: {e}")))?;
    let phases = run_builder(keeper, &label)?;
    builder
        .claim(&built, out)
        .map_err(|e| build_error(&label, e))?;
    Ok(phases)
}

/// How long an image build may take beyond its `setup`: the base, the
/// packages' downloads and installs, the file system.
const BUILD_TIME_BEYOND_SETUP: std::time::Duration = std::time::Duration::from_secs(60 * 60);

fn run_builder(mut keeper: Command, label: &str) -> Result<Vec<(String, f64)>, ImageError> {
    // A keeper, not `spawn_guarded`: the builder stays in our process group
    // so that a Ctrl-C reaches it too and its traps remove its temp files
    // and stop mmdebstrap; the keeper ends whatever is left.
    keeper
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = crate::process::spawn_kept(&mut keeper)
        .map_err(|e| build_error(label, format!("running rootfs/build-spec.sh: {e}")))?;
    let mut phases = Vec::new();
    let mut last_error = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("runner-image-phase ") {
                if let Some((name, secs)) = rest.split_once(' ') {
                    phases.push((name.to_string(), secs.parse().unwrap_or(0.0)));
                }
                continue;
            }
            if let Some(message) = line.strip_prefix("error: ") {
                last_error = Some(message.to_string());
                continue;
            }
            eprintln!("  {line}");
        }
    }
    let status = child
        .wait()
        .map_err(|e| build_error(label, format!("waiting for rootfs/build-spec.sh: {e}")))?;
    match status.code() {
        Some(0) => Ok(phases),
        Some(65 | crate::process::KEEPER_TIMED_OUT) => Err(ImageError::Spec(format!(
            "{label}: {}",
            last_error.unwrap_or_else(|| "the image spec was refused".into())
        ))),
        _ => Err(build_error(
            label,
            format!("rootfs/build-spec.sh {status} (see its messages above)"),
        )),
    }
}

/// Runs `runner __unpack-oci` (see `oci::unpack_main`): as the build
/// user, never as the host's root.
fn run_unpacker(mut cmd: Command, label: &str) -> Result<(), ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| build_error(label, format!("unpacking the layers: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("").trim().to_string();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(oci::REFUSED) => Err(ImageError::Spec(last)),
        _ => Err(build_error(
            label,
            format!("unpacking the layers: {} {last}", out.status),
        )),
    }
}
