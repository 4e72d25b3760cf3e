//! Applying one untrusted layer: its tar stream (decompressed by gzip or
//! zstd), the OCI whiteouts, and the checks that keep it inside the root
//! and within its budget of bytes and entries.
//!
//! Nothing here runs as the host's root (`super::unpack` refuses to), and
//! nothing takes a layer's owners or device numbers at their word: device
//! nodes are refused (a VM's `/dev` is the kernel's devtmpfs), and owners
//! are only recorded ([`Owners`]), to be given inside the image build's
//! user namespace, where they map to ids that own nothing on the host.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::{safe_relative, Result};
/// A layer's tar stream, decompressed by gzip or zstd when its magic says so.
fn layer_reader(layer: &Path) -> Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let n = File::open(layer)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| e.to_string())?;
    let tool = match &magic[..n.min(4)] {
        [0x1f, 0x8b, ..] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
        _ => {
            let file = File::open(layer).map_err(|e| e.to_string())?;
            return Ok(Box::new(BufReader::new(file)));
        }
    };
    let input = File::open(layer).map_err(|e| e.to_string())?;
    let child = Command::new(tool)
        .args(["-dc"])
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {tool} to decompress: {e}"))?;
    Ok(Box::new(Decompressed { child }))
}

/// A decompressor's output; a failed decompression is a read error.
struct Decompressed {
    child: std::process::Child,
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .child
            .stdout
            .as_mut()
            .map_or(Ok(0), |out| out.read(buf))?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "decompressing the layer: {status}"
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of file contents and entries still allowed: a layer is small on
/// disk and may unpack to terabytes, or to millions of empty files.
pub(super) struct Budget {
    pub(super) bytes: u64,
    pub(super) entries: u64,
}

impl Budget {
    fn take(&mut self, bytes: u64) -> Result<()> {
        self.bytes = self.bytes.checked_sub(bytes).ok_or(
            "the layers unpack to more bytes than the image may hold (its `size`, or the operator's --max-image-size)",
        )?;
        Ok(())
    }

    fn take_entry(&mut self) -> Result<()> {
        self.entries = self
            .entries
            .checked_sub(1)
            .ok_or("the layers hold more entries than an image may")?;
        Ok(())
    }
}

/// Owner and mode of one unpacked path, as its layer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
}

/// The owners to give the unpacked tree, by path below its root.
pub type Owners = HashMap<PathBuf, Owner>;

/// The ids a build's user namespace maps (see rootfs/build-spec.sh).
pub const NAMESPACE_IDS: u32 = 65536;

pub(super) fn apply_layer(
    layer: &Path,
    root: &Path,
    dirs: &mut HashMap<PathBuf, SystemTime>,
    budget: &mut Budget,
    owners: &mut Owners,
) -> Result<()> {
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    // Paths this layer made: an opaque marker hides only the lower layers.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        budget.take_entry()?;
        let raw = entry.path().map_err(|e| e.to_string())?.into_owned();
        let rel = safe_relative(&raw)
            .ok_or_else(|| format!("`{}` leaves the image's root", raw.display()))?;
        let Some(name) = rel.file_name().map(|n| n.as_bytes().to_vec()) else {
            continue; // the root itself
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        ensure_no_symlink(root, &parent)?;
        if name == b".wh..wh..opq" {
            let dir = root.join(&parent);
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !made.contains(&child_rel) {
                        remove_any(&child.path()).map_err(|e| e.to_string())?;
                        forget(owners, &child_rel);
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let hidden = parent.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&root.join(&hidden)).map_err(|e| e.to_string())?;
            forget(owners, &hidden);
            continue;
        }
        fs::create_dir_all(root.join(&parent)).map_err(|e| e.to_string())?;
        let target = root.join(&rel);
        let header = entry.header().clone();
        let mode = header.mode().map_err(|e| e.to_string())? & 0o7777;
        let mtime = SystemTime::UNIX_EPOCH
            + Duration::from_secs(header.mtime().map_err(|e| e.to_string())?);
        let kind = header.entry_type();
        let shown = rel.display();
        if !kind.is_dir() {
            remove_any(&target).map_err(|e| e.to_string())?;
            forget(owners, &rel);
        } else if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
            remove_any(&target).map_err(|e| e.to_string())?;
        }
        match kind {
            tar::EntryType::Directory => {
                if !target.exists() {
                    fs::create_dir(&target).map_err(|e| format!("{shown}: {e}"))?;
                }
                dirs.insert(rel.clone(), mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.take(header.size().map_err(|e| e.to_string())?)?;
                let mut out = File::create(&target).map_err(|e| format!("{shown}: {e}"))?;
                io::copy(&mut entry, &mut out).map_err(|e| format!("{shown}: {e}"))?;
                out.set_modified(mtime)
                    .map_err(|e| format!("{shown}: {e}"))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{shown}: symlink without a target"))?;
                symlink(&link, &target).map_err(|e| format!("{shown}: {e}"))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{shown}: hard link without a target"))?;
                let source = safe_relative(&link).ok_or_else(|| {
                    format!("{shown}: hard link to `{}` leaves the root", link.display())
                })?;
                ensure_no_symlink(root, source.parent().unwrap_or(Path::new("")))?;
                let source = root.join(source);
                if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(format!(
                        "{shown}: hard link to `{}`, which is no regular file",
                        link.display()
                    ));
                }
                fs::hard_link(&source, &target).map_err(|e| format!("{shown}: {e}"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(format!(
                    "{shown}: device node refused (a VM gets its /dev from the kernel; a node in an image could name a host device)"
                ));
            }
            tar::EntryType::Fifo => {
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| format!("{shown}: {e}"))?;
            }
            // PAX/GNU metadata entries are consumed by `tar` itself.
            _ => continue,
        }
        let id = |raw: io::Result<u64>, what: &str| -> Result<u32> {
            let id = raw.map_err(|e| e.to_string())?;
            u32::try_from(id)
                .ok()
                .filter(|id| *id < NAMESPACE_IDS)
                .ok_or_else(|| format!("{shown}: {what} {id} is beyond the {NAMESPACE_IDS} ids an image build maps"))
        };
        let owner = Owner {
            uid: id(header.uid(), "owner")?,
            gid: id(header.gid(), "group")?,
            mode,
        };
        if kind != tar::EntryType::Symlink && kind != tar::EntryType::Link {
            // Ours while unpacking; the owners come later (module docs).
            let ours = if kind.is_dir() { 0o700 } else { 0o600 };
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o777 | ours))
                .map_err(|e| format!("{shown}: {e}"))?;
        }
        if kind != tar::EntryType::Link {
            owners.insert(rel.clone(), owner);
        }
        made.insert(rel);
    }
    Ok(())
}

/// Every existing component of `dir` below `root` must be a real directory:
/// a lower layer's symlink must not redirect a write outside the image.
fn ensure_no_symlink(root: &Path, dir: &Path) -> Result<()> {
    let mut path = root.to_path_buf();
    for component in dir.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` is written through a symlink; refused",
                    dir.display()
                ))
            }
            Ok(meta) if !meta.is_dir() => {
                // A file where a directory is needed: a later entry replaces it.
                fs::remove_file(&path).map_err(|e| e.to_string())?;
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Forgets the owners of `rel` and of everything below it.
fn forget(owners: &mut Owners, rel: &Path) {
    owners.retain(|path, _| !path.starts_with(rel));
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
