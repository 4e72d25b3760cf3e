//! Applying one untrusted layer: its tar stream (decompressed by gzip or
//! zstd), the OCI whiteouts, and the checks that keep it inside the root
//! and within the image's `size`.

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

/// Bytes of file contents still allowed; `None` for no limit.
pub(super) struct Budget {
    pub(super) left: Option<u64>,
}

impl Budget {
    fn take(&mut self, bytes: u64) -> Result<()> {
        if let Some(left) = &mut self.left {
            *left = left
                .checked_sub(bytes)
                .ok_or("the layers unpack to more than the image's `size`")?;
        }
        Ok(())
    }
}

pub(super) fn apply_layer(
    layer: &Path,
    root: &Path,
    dirs: &mut HashMap<PathBuf, SystemTime>,
    budget: &mut Budget,
) -> Result<()> {
    let as_root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    // Paths this layer made: an opaque marker hides only the lower layers.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
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
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let hidden = parent.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&root.join(hidden)).map_err(|e| e.to_string())?;
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
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if kind != tar::EntryType::Fifo && !as_root {
                    return Err(format!("{shown}: device node refused (only root may build images with device nodes)"));
                }
                let node_kind = match kind {
                    tar::EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    tar::EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                nix::sys::stat::mknod(
                    &target,
                    node_kind,
                    nix::sys::stat::Mode::from_bits_truncate(mode & 0o777),
                    nix::sys::stat::makedev(major, minor),
                )
                .map_err(|e| format!("{shown}: {e}"))?;
            }
            // PAX/GNU metadata entries are consumed by `tar` itself.
            _ => continue,
        }
        if as_root {
            let uid = header.uid().map_err(|e| e.to_string())? as u32;
            let gid = header.gid().map_err(|e| e.to_string())? as u32;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| format!("{shown}: {e}"))?;
        }
        if kind != tar::EntryType::Symlink && kind != tar::EntryType::Link {
            // Set after chown: chown clears setuid bits.
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{shown}: {e}"))?;
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

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
