//! The runner's own cache: `RUNNER_CACHE`, else `$XDG_CACHE_HOME/runner`,
//! else `~/.cache/runner`. What it holds (kernels, images, snapshots)
//! becomes what VMs run, so a local user who could plant a file there would
//! control every later job. Hence:
//! - the cache and every directory in it belong to this user and are
//!   writable by nobody else, and no directory on the way to it lets
//!   another user swap it ([`TrustedCache::open`]); there is no fallback to
//!   a shared place like `/tmp`;
//! - lock and stamp files are opened without following symlinks and
//!   without truncating ([`open_no_follow`]);
//! - a file the runner built is *sealed* ([`TrustedCache::seal`]): a record
//!   of its identity (device, inode, size, modification and change times)
//!   and of the sha256 of its content, authenticated with a per-host key
//!   that only this user can read. No user can set a change time, and any
//!   write moves it, so a file that still matches its seal holds the bytes
//!   that were hashed, without hashing them again: a cache hit stays fast.
//!   [`TrustedCache::content_digest`] caches the sha256 of any file so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The per-host key's file, in the cache root.
const HOST_KEY: &str = "host.key";
const KEY_BYTES: usize = 32;

/// The runner's cache directory, checked (see the module docs).
#[derive(Clone, Debug)]
pub struct TrustedCache {
    root: PathBuf,
}

impl TrustedCache {
    /// The cache the environment names, created if missing.
    pub fn open() -> Result<TrustedCache, String> {
        let root = std::env::var_os("RUNNER_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|x| PathBuf::from(x).join("runner"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache/runner"))
            })
            .ok_or(
                "the runner's cache has no place: set HOME, XDG_CACHE_HOME or RUNNER_CACHE \
                 (it never falls back to a directory other users share)",
            )?;
        TrustedCache::at(root)
    }

    /// The cache at `root`, created if missing.
    pub fn at(root: PathBuf) -> Result<TrustedCache, String> {
        if !root.is_absolute() {
            return Err(format!(
                "the runner's cache {} is not an absolute path",
                root.display()
            ));
        }
        make_private_dir(&root, true)?;
        Ok(TrustedCache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name`, created and checked like the root; never a symlink.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.root.join(name);
        make_private_dir(&dir, false)?;
        Ok(dir)
    }
}

/// Creates `dir` (mode 0700) if it is missing, then checks it: ours, not
/// writable by group or others, and (unless `may_be_symlink`, for the root
/// a user may have moved elsewhere) not a symlink; and its ancestors:
/// owned by us or root, and writable by others only with the sticky bit.
/// Every directory of the runner's caches is made and checked so.
pub fn make_private_dir(dir: &Path, may_be_symlink: bool) -> Result<(), String> {
    check_ancestors(dir)?;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(format!("creating the cache {}: {e}", dir.display())),
    }
    let meta = if may_be_symlink {
        std::fs::metadata(dir)
    } else {
        std::fs::symlink_metadata(dir)
    }
    .map_err(|e| format!("the cache {}: {e}", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| {
        Err(format!(
            "the cache {} {why}: another user could plant images or snapshots there; \
             fix it, or set RUNNER_CACHE to a directory of your own",
            dir.display()
        ))
    };
    if !meta.is_dir() {
        return refuse("is not a directory (a symlink?)".into());
    }
    if meta.uid() != euid {
        return refuse(format!(
            "belongs to uid {}, not to this user ({euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "is writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// No directory above `dir` lets another user replace what is below it.
fn check_ancestors(dir: &Path) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue; // created below, by us
        };
        let owner_ok = meta.uid() == euid || meta.uid() == 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "the cache {} is inside {}, which another user may change (uid {}, mode {:o}); \
                 set RUNNER_CACHE to a directory of your own",
                dir.display(),
                ancestor.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Opens (creating, mode 0600) a lock or stamp file for writing: never
/// through a symlink, never truncating what is there.
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes `bytes` to `path` whole or not at all: under a temporary name in
/// the same directory (mode 0600), flushed to disk, then renamed over
/// `path`. A reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // tempfile: a fresh random name, created exclusively, removed if we fail.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What identifies a file's bytes without reading them (module docs).
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "dev={} ino={} size={} mtime={}.{} ctime={}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// The per-host key, created on first use (readable by this user only).
fn host_key(root: &Path) -> Result<Vec<u8>, String> {
    let path = root.join(HOST_KEY);
    let fail = |e: std::io::Error| format!("the cache's host key {}: {e}", path.display());
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut file) => {
            let meta = file.metadata().map_err(fail)?;
            let euid = nix::unistd::geteuid().as_raw();
            if meta.uid() != euid || meta.mode() & 0o077 != 0 {
                return Err(format!(
                    "the cache's host key {} must belong to this user and be readable by nobody else",
                    path.display()
                ));
            }
            let mut key = Vec::new();
            file.read_to_end(&mut key).map_err(fail)?;
            if key.len() != KEY_BYTES {
                return Err(format!(
                    "the cache's host key {} is damaged",
                    path.display()
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; KEY_BYTES];
            File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut key))
                .map_err(fail)?;
            // Written under a temporary name and linked into place, so a
            // concurrent runner never reads half a key; the first one wins.
            let temp = path.with_extension(format!("tmp-{}", std::process::id()));
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(fail)?;
            file.write_all(&key).map_err(fail)?;
            let linked = std::fs::hard_link(&temp, &path);
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => host_key(root),
                Err(e) => Err(fail(e)),
            }
        }
        Err(e) => Err(fail(e)),
    }
}

fn mac(key: &[u8], text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What a seal file says: what it is for, the identity of the file it was
/// made for, and that file's digest (a content hash, or a snapshot's
/// identity).
struct Seal {
    purpose: String,
    identity: String,
    digest: String,
}

/// Why a seal does not vouch for its file.
enum SealFault {
    /// The seal is authentic and for this purpose, but the file is not the
    /// one it was made for (another inode, size or time stamps).
    Moved {
        digest: String,
    },
    Untrusted(String),
}

impl SealFault {
    const CHANGED: &'static str = "it changed after it was sealed";
}

impl std::fmt::Display for SealFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Moved { .. } => f.write_str(Self::CHANGED),
            Self::Untrusted(why) => f.write_str(why),
        }
    }
}

/// A seal's digest is a sha256 of the content (an image's), not an
/// identity string (a snapshot's).
fn is_content_hash(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TrustedCache {
    /// Records that `file` holds content with sha256 `digest`, for `purpose`
    /// (what it is for: a snapshot's identity, an image's key), in `seal_path`.
    pub fn seal(
        &self,
        file: &Path,
        seal_path: &Path,
        purpose: &str,
        digest: &str,
    ) -> Result<(), String> {
        let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let body = format!("{purpose}\n{}\n{digest}\n", identity(&meta));
        let text = format!("{body}{}\n", mac(&host_key(&self.root)?, &body));
        let written = write_atomically(seal_path, text.as_bytes());
        written.map_err(|e| format!("sealing {}: {e}", file.display()))
    }

    /// The sealed digest of `file` if it is still the file that was sealed
    /// for `purpose`; otherwise why it may not be trusted.
    pub fn check_seal(
        &self,
        file: &Path,
        seal_path: &Path,
        purpose: &str,
    ) -> Result<String, String> {
        self.read_seal(file, seal_path, purpose)
            .map_err(|fault| fault.to_string())
    }

    /// As [`Self::check_seal`], but a file whose seal is authentic and only
    /// its identity changed (the cache was copied or restored, or is seen
    /// through another mount, as the nested tier's L1 sees this machine's)
    /// is hashed: if its content is still the sealed digest, it is sealed
    /// again and trusted. Only seals that carry a content hash qualify.
    /// `before_hashing` is called first (hashing a large file takes time).
    pub fn check_seal_or_content(
        &self,
        file: &Path,
        seal_path: &Path,
        purpose: &str,
        before_hashing: impl FnOnce(),
    ) -> Result<String, String> {
        match self.read_seal(file, seal_path, purpose) {
            Ok(digest) => Ok(digest),
            Err(SealFault::Moved { digest }) if is_content_hash(&digest) => {
                before_hashing();
                // content_digest seals its result too, so a snapshot key
                // made of this file next does not hash it again.
                if self.content_digest(file)? != digest {
                    return Err(SealFault::CHANGED.to_string());
                }
                self.seal(file, seal_path, purpose, &digest)?;
                Ok(digest)
            }
            Err(fault) => Err(fault.to_string()),
        }
    }

    fn read_seal(&self, file: &Path, seal_path: &Path, purpose: &str) -> Result<String, SealFault> {
        let meta = std::fs::metadata(file)
            .map_err(|e| SealFault::Untrusted(format!("{}: {e}", file.display())))?;
        let seal = self.open_seal(seal_path).map_err(SealFault::Untrusted)?;
        if seal.purpose != purpose {
            return Err(SealFault::Untrusted(
                "its seal is for something else".into(),
            ));
        }
        if seal.identity != identity(&meta) {
            return Err(SealFault::Moved {
                digest: seal.digest,
            });
        }
        Ok(seal.digest)
    }

    /// The seal at `seal_path`, if this host's key made it.
    fn open_seal(&self, seal_path: &Path) -> Result<Seal, String> {
        let mut text = String::new();
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(seal_path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|e| format!("it has no seal ({e})"))?;
        let lines: Vec<&str> = text.lines().collect();
        let [purpose, identity, digest, sealed_mac] = lines[..] else {
            return Err("its seal is damaged".into());
        };
        let body = format!("{purpose}\n{identity}\n{digest}\n");
        if mac(&host_key(&self.root)?, &body) != sealed_mac {
            return Err("its seal was not made on this host".into());
        }
        Ok(Seal {
            purpose: purpose.to_string(),
            identity: identity.to_string(),
            digest: digest.to_string(),
        })
    }

    /// Seals `file` again, for what its current (authentic) seal says,
    /// after a deliberate change: tests that damage a snapshot in one
    /// precise way, or an operator who repaired a file by hand.
    pub fn reseal(&self, file: &Path, seal_path: &Path) -> Result<(), String> {
        let seal = self.open_seal(seal_path)?;
        // A seal without a content hash (a snapshot's) stays without one.
        let digest = if is_content_hash(&seal.digest) {
            crate::digest::sha256_file(file)
                .map_err(|e| format!("hashing {}: {e}", file.display()))?
        } else {
            seal.digest
        };
        self.seal(file, seal_path, &seal.purpose, &digest)
    }

    /// The sha256 of `path`'s content, hashed once per version of the file
    /// (its seal in the cache's `digests/` says which).
    pub fn content_digest(&self, path: &Path) -> Result<String, String> {
        let canonical = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let name = crate::digest::sha256_bytes(canonical.as_os_str().as_encoded_bytes());
        let seal_path = self.subdir("digests")?.join(&name[..32]);
        let purpose = format!("content of {}", canonical.display());
        if let Ok(digest) = self.check_seal(&canonical, &seal_path, &purpose) {
            return Ok(digest);
        }
        let before =
            std::fs::metadata(&canonical).map_err(|e| format!("{}: {e}", path.display()))?;
        let digest = crate::digest::sha256_file(&canonical)
            .map_err(|e| format!("hashing {}: {e}", path.display()))?;
        // Sealed only if nothing wrote the file while it was hashed.
        let after =
            std::fs::metadata(&canonical).map_err(|e| format!("{}: {e}", path.display()))?;
        if identity(&before) == identity(&after) {
            self.seal(&canonical, &seal_path, &purpose, &digest)?;
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests;
