//! Unpacking an artifact tar stream from the guest on the host.
//!
//! The guest is not trusted (pipelines come from pull requests), so what it
//! sends is data, never privileges. We iterate the entries ourselves rather
//! than call `tar::Archive::unpack`, because that one restores setuid bits,
//! creates device nodes and symlinks to anywhere, and writes whatever size a
//! header claims. Here:
//!
//! * only directories, regular files and symlinks that point downward inside
//!   the same tree are created; device nodes, fifos and anything else are
//!   refused;
//! * modes are masked with `0o755` (no setuid, setgid, sticky bit, nor
//!   group/other write) and owners are never applied;
//! * entry names with `..` or a leading `/` are refused;
//! * nothing is written through a symlink: every parent directory is checked
//!   to be a real directory, and files are created with `O_EXCL|O_NOFOLLOW`;
//! * a symlink is kept only if its target is relative and has no `..`, so it
//!   (and any chain of such links) can only point further down its own
//!   directory; a hard link is copied from a file already unpacked;
//! * each job has a budget of bytes and entries, charged from the headers'
//!   sizes *before* anything is written, so a sparse 50 GB file is refused
//!   without writing a byte. When the budget runs out the transfer stops and
//!   the caller must hang up rather than drain the rest.
//!
//! A refused entry does not stop the transfer: it is recorded as a
//! [`Refusal`] so reports can show it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Default cap on the bytes of artifacts one job may copy out.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default cap on the number of artifact entries (files, directories, links).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Raw stream bytes allowed per entry on top of its content: header, padding
/// and a GNU long name (extension headers are capped on their own, in
/// tar_framing.rs).
const FRAMING_PER_ENTRY: u64 = 4096;
/// Mode bits an unpacked file or directory may keep.
const MODE_MASK: u32 = 0o755;

/// Per-job caps on what artifacts may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What one job has used of its [`ArtifactLimits`], across all of its
/// artifact transfers.
#[derive(Clone, Debug)]
pub struct ArtifactBudget {
    limits: ArtifactLimits,
    bytes: u64,
    entries: u64,
}

impl ArtifactBudget {
    pub fn new(limits: ArtifactLimits) -> ArtifactBudget {
        ArtifactBudget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    /// Bytes and entries charged so far.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes, self.entries)
    }

    fn charge(&mut self, name: &str, entries: u64, bytes: u64) -> Result<(), UnpackError> {
        let max = self.limits;
        if self.entries + entries > max.max_entries {
            return Err(UnpackError::Limit(format!(
                "{name}: more than {} entries",
                max.max_entries
            )));
        }
        if self.bytes.saturating_add(bytes) > max.max_bytes {
            return Err(UnpackError::Limit(format!(
                "{name}: its {bytes} bytes would take the job past its {} byte limit",
                max.max_bytes
            )));
        }
        self.entries += entries;
        self.bytes += bytes;
        Ok(())
    }

    /// Raw stream bytes the rest of the budget can justify.
    fn stream_allowance(&self) -> u64 {
        let entries_left = self.limits.max_entries.saturating_sub(self.entries) + 2;
        self.limits
            .max_bytes
            .saturating_sub(self.bytes)
            .saturating_add(entries_left.saturating_mul(FRAMING_PER_ENTRY))
    }
}

/// An entry that was not unpacked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}: {}", self.path, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The job's budget ran out. The rest of the stream was not read.
    #[error("artifact limit reached: {0}")]
    Limit(String),
    /// The stream is not a valid tar archive, or it broke off.
    #[error("bad tar stream: {0}")]
    Stream(io::Error),
    /// The host could not write (disk full, permissions).
    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        // Not `source`: the message says it (anyhow would print it twice).
        cause: io::Error,
    },
}

/// What an unpacking did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Entries created (refused ones not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    pub refused: Vec<Refusal>,
    /// Why unpacking stopped early, if it did.
    pub error: Option<UnpackError>,
}

impl Unpacked {
    /// True if the transfer stopped before the end of the stream, so the
    /// connection it came over is no longer in step.
    pub fn hung_up(&self) -> bool {
        matches!(self.error, Some(UnpackError::Limit(_)))
    }
}

/// Unpacks the tar stream `input` into `dest` (which must exist), charging
/// `budget`. Unless the budget ran out, the stream is read to its end.
pub fn unpack<R: Read>(input: R, dest: &Path, budget: &mut ArtifactBudget) -> Unpacked {
    let mut meter = Meter {
        inner: input,
        left: budget.stream_allowance(),
        tripped: false,
    };
    let mut done = Unpacked::default();
    let mut result = unpack_entries(&mut meter, dest, budget, &mut done);
    if !matches!(result, Err(UnpackError::Limit(_))) {
        // Stay in step with the sender: read what is left (the end-of-archive
        // blocks, or the tail after a write error), still metered.
        let drained = io::copy(&mut meter, &mut io::sink()).map_err(UnpackError::Stream);
        result = result.and(drained.map(|_| ()));
    }
    if meter.tripped && matches!(result, Err(UnpackError::Stream(_))) {
        result = Err(UnpackError::Limit(
            "the stream is larger than its entries' sizes and the job's limits allow".into(),
        ));
    }
    done.error = result.err();
    done
}

fn unpack_entries<R: Read>(
    input: R,
    dest: &Path,
    budget: &mut ArtifactBudget,
    done: &mut Unpacked,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(super::tar_framing::ExtensionCap::new(input));
    for entry in archive.entries().map_err(UnpackError::Stream)? {
        let mut entry = entry.map_err(UnpackError::Stream)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        // The apparent size, charged before anything is read or written.
        let size = entry.size().max(entry.header().size().unwrap_or(0));
        budget.charge(&name, 1, size)?;
        match place(&mut entry, dest, budget) {
            Ok(Placed::Created(bytes)) => {
                done.entries += 1;
                done.bytes += bytes;
            }
            Ok(Placed::Nothing) => {}
            Err(Failure::Refused(reason)) => done.refused.push(Refusal { path: name, reason }),
            Err(Failure::Fatal(error)) => return Err(error),
        }
    }
    Ok(())
}

enum Placed {
    /// Created, with this many bytes of content.
    Created(u64),
    /// The archive's root entry (`./`): `dest` exists already.
    Nothing,
}

enum Failure {
    Refused(String),
    Fatal(UnpackError),
}

impl From<UnpackError> for Failure {
    fn from(e: UnpackError) -> Self {
        Failure::Fatal(e)
    }
}

fn refuse<T>(reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Refused(reason.into()))
}

fn place<R: Read>(
    entry: &mut tar::Entry<R>,
    dest: &Path,
    budget: &mut ArtifactBudget,
) -> Result<Placed, Failure> {
    let path = entry.path().map_err(|e| Failure::Refused(e.to_string()))?;
    let parts = relative_parts(&path).map_err(Failure::Refused)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(Placed::Nothing);
    };
    let mode = entry.header().mode().unwrap_or(0o644) & MODE_MASK;
    match entry.header().entry_type() {
        EntryType::Directory => {
            let dir = directory(dest, &parts)?;
            let mode = mode | 0o700; // we must be able to fill and remove it
            set_mode(&dir, mode)?;
            Ok(Placed::Created(0))
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let slot = free_slot(&directory(dest, parents)?, last)?;
            let bytes = write_file(entry, &slot, mode)?;
            Ok(Placed::Created(bytes))
        }
        EntryType::Symlink => {
            let target = link_target(entry)?;
            if !target
                .components()
                .any(|c| matches!(c, Component::Normal(_)))
            {
                return refuse(format!(
                    "symlink to {} is its own directory: a loop",
                    target.display()
                ));
            }
            if !points_downward(&target) {
                return refuse(format!(
                    "symlink to {} leads out of its directory (only relative targets without `..` are kept)",
                    target.display()
                ));
            }
            let slot = free_slot(&directory(dest, parents)?, last)?;
            std::os::unix::fs::symlink(&target, &slot).map_err(|e| write_error(&slot, e))?;
            Ok(Placed::Created(0))
        }
        EntryType::Link => {
            // A copy, not a link: a hard link's target is an archive path,
            // which we resolve ourselves, inside `dest` only.
            let target = link_target(entry)?;
            let source_parts = relative_parts(&target)
                .map_err(|reason| Failure::Refused(format!("hard link target: {reason}")))?;
            let mut source = open_inside(dest, &source_parts)?;
            let len = source.metadata().map_err(|e| write_error(dest, e))?.len();
            budget
                .charge(&path.to_string_lossy(), 0, len)
                .map_err(Failure::Fatal)?;
            let slot = free_slot(&directory(dest, parents)?, last)?;
            let bytes = write_file(&mut source, &slot, mode)?;
            Ok(Placed::Created(bytes))
        }
        EntryType::Char | EntryType::Block => refuse("device nodes are not copied out"),
        EntryType::Fifo => refuse("fifos are not copied out"),
        other => refuse(format!("unsupported tar entry type {other:?}")),
    }
}

/// The normal components of an entry name; `.` is dropped, `..` and
/// absolute names are refused.
fn relative_parts(path: &Path) -> Result<Vec<&std::ffi::OsStr>, String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("the name contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute names are not allowed".into())
            }
        }
    }
    Ok(parts)
}

fn link_target<R: Read>(entry: &tar::Entry<R>) -> Result<PathBuf, Failure> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => refuse("link without a target"),
        Err(e) => refuse(format!("bad link target: {e}")),
    }
}

/// True for a relative target made only of normal components, at least
/// one: whatever symlinks it passes through, all such links only ever
/// descend. (`.` alone would be the link's own directory: a cycle that
/// loops a CI server's archive step.)
fn points_downward(target: &Path) -> bool {
    target
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && target
            .components()
            .any(|c| matches!(c, Component::Normal(_)))
}

/// Walks `parts` below `dest`, creating missing directories. Every existing
/// component must be a real directory, not a symlink to one.
fn directory(dest: &Path, parts: &[&std::ffi::OsStr]) -> Result<PathBuf, Failure> {
    let mut current = dest.to_path_buf();
    for (i, name) in parts.iter().enumerate() {
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return refuse(format!(
                    "{} is a symlink, and nothing is written through one",
                    shown(&parts[..=i])
                ))
            }
            Ok(_) => return refuse(format!("{} is not a directory", shown(&parts[..=i]))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|e| write_error(&current, e))?;
            }
            Err(e) => return Err(write_error(&current, e).into()),
        }
    }
    Ok(current)
}

/// Where a new file or link named `name` goes in `dir`: a file or symlink
/// already there (from an earlier overlapping pattern) is removed first, so
/// that the new one is created fresh instead of written through it.
fn free_slot(dir: &Path, name: &std::ffi::OsStr) -> Result<PathBuf, Failure> {
    let slot = dir.join(name);
    match fs::symlink_metadata(&slot) {
        Ok(meta) if meta.is_dir() => refuse("a directory of that name was unpacked already"),
        Ok(_) => {
            fs::remove_file(&slot).map_err(|e| write_error(&slot, e))?;
            Ok(slot)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(slot),
        Err(e) => Err(write_error(&slot, e).into()),
    }
}

/// Opens an already unpacked regular file inside `dest`, not following
/// symlinks anywhere on the way.
fn open_inside(dest: &Path, parts: &[&std::ffi::OsStr]) -> Result<File, Failure> {
    let mut path = dest.to_path_buf();
    for (i, name) in parts.iter().enumerate() {
        path.push(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => {
                return refuse(format!(
                    "hard link to {}, which was not unpacked",
                    shown(parts)
                ))
            }
        };
        let last = i + 1 == parts.len();
        let fine = if last { meta.is_file() } else { meta.is_dir() };
        if !fine {
            return refuse(format!(
                "hard link to {}, which is not a file inside the artifacts",
                shown(parts)
            ));
        }
    }
    if parts.is_empty() {
        return refuse("hard link to the artifact directory itself");
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| write_error(&path, e).into())
}

/// Creates `path` (which must not exist) with the content of `from`.
fn write_file(from: &mut impl Read, path: &Path, mode: u32) -> Result<u64, Failure> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| write_error(path, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        // Tell reading (a broken stream) from writing (a full disk) apart.
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Stream(e).into()),
        };
        file.write_all(&buf[..n])
            .map_err(|e| write_error(path, e))?;
        total += n as u64;
    }
    file.set_permissions(fs::Permissions::from_mode(mode | 0o600))
        .map_err(|e| write_error(path, e))?;
    Ok(total)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Failure> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| write_error(path, e).into())
}

fn write_error(path: &Path, cause: io::Error) -> UnpackError {
    UnpackError::Write {
        path: path.to_path_buf(),
        cause,
    }
}

fn shown(parts: &[&std::ffi::OsStr]) -> String {
    parts.iter().collect::<PathBuf>().display().to_string()
}

/// Counts the raw bytes read and fails once more than `left` are asked for.
struct Meter<R> {
    inner: R,
    left: u64,
    tripped: bool,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte would tell a stream that ends exactly here from
            // one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped = true;
                    Err(io::Error::other("stream exceeds the artifact limits"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
