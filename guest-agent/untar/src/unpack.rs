//! The engine: entries one by one, each placed by the policy or refused.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

use crate::budget::Budget;
use crate::error::{Error, Fail, OverBudget, Refusal, Refused};
use crate::path::{check_downward, shown, stays_inside};
use crate::policy::{HardLinks, OnRefusal, Policy, Symlinks};
use crate::stream::{ExtensionCap, Meter};
use crate::tree::Tree;

/// One entry, as the caller's [`Visitor`] sees it.
pub struct Entry<'a> {
    /// Its name in the archive, for messages.
    pub name: &'a str,
    /// Where it goes, below the destination (normal components only).
    pub path: &'a Path,
    pub header: &'a tar::Header,
}

/// What a caller adds to the policy: its own kinds of entries and its own
/// bookkeeping. Every method has a default that does nothing.
pub trait Visitor {
    /// Called before an entry is placed; `true` if the caller dealt with
    /// it (an OCI whiteout), so that nothing is placed.
    fn intercept(&mut self, _tree: &mut Tree, _entry: &Entry<'_>) -> Result<bool, Error> {
        Ok(false)
    }

    /// The entry was placed. An error refuses it, and stops the unpacking.
    fn placed(&mut self, _entry: &Entry<'_>) -> Result<(), String> {
        Ok(())
    }

    /// `path` (below the destination), with everything below it, was
    /// removed: to make room for an entry, or by [`Tree::remove`].
    fn removed(&mut self, _path: &Path) {}
}

/// The visitor of a caller that adds nothing.
pub struct NoVisitor;

impl Visitor for NoVisitor {}

/// What one stream did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Entries placed (the archive's root and refused ones not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries refused under [`OnRefusal::Note`].
    pub refused: Vec<Refused>,
    /// Why unpacking stopped early, if it did.
    pub error: Option<Error>,
}

impl Unpacked {
    /// True if the budget stopped the stream before its end, so whatever
    /// carries it is no longer in step with the sender.
    pub fn over_budget(&self) -> bool {
        matches!(self.error, Some(Error::OverBudget(_)))
    }
}

/// Unpacks `input` into `dest` (an existing directory) under `policy`,
/// charging `budget`, and then applies the directories' modes and times:
/// [`Unpacker`] for one stream.
pub fn unpack<R: Read>(input: R, dest: &Path, policy: Policy, budget: &mut Budget) -> Unpacked {
    let mut unpacker = match Unpacker::new(dest, policy) {
        Ok(unpacker) => unpacker,
        Err(e) => {
            return Unpacked {
                error: Some(e),
                ..Unpacked::default()
            }
        }
    };
    let mut done = unpacker.unpack(input, budget, &mut NoVisitor);
    let finished = unpacker.finish();
    if done.error.is_none() {
        done.error = finished.err();
    }
    done
}

/// A destination that receives one or more streams (an image's layers),
/// then [`Unpacker::finish`].
pub struct Unpacker {
    tree: Tree,
    /// Directory modes and times, applied last (deepest first): a
    /// read-only directory must not stop the entries that go inside it,
    /// and adding them moves its mtime.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Symlinks made under [`Symlinks::InsideRoot`], checked again at the
    /// end, when whatever they resolve through exists.
    symlinks: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Option<SystemTime>,
}

impl Unpacker {
    pub fn new(dest: &Path, policy: Policy) -> Result<Unpacker, Error> {
        Ok(Unpacker {
            tree: Tree::open(dest, policy)?,
            dirs: BTreeMap::new(),
            symlinks: Vec::new(),
        })
    }

    /// Unpacks one tar stream. Unless the budget ran out, the stream is
    /// read to its end (still metered), so that whatever frames it stays
    /// in step with the sender.
    pub fn unpack<R: Read>(
        &mut self,
        input: R,
        budget: &mut Budget,
        visitor: &mut dyn Visitor,
    ) -> Unpacked {
        let mut meter = Meter::new(input, budget.stream_allowance());
        let mut done = Unpacked::default();
        let mut result = self.entries(&mut meter, budget, visitor, &mut done);
        if !matches!(result, Err(Error::OverBudget(_))) {
            // The end-of-archive blocks, or the tail after an error.
            let drained = io::copy(&mut meter, &mut io::sink()).map_err(Error::Stream);
            result = result.and(drained.map(|_| ()));
        }
        if meter.tripped() && matches!(result, Err(Error::Stream(_))) {
            result = Err(Error::OverBudget(OverBudget::Stream));
        }
        done.error = result.err();
        done
    }

    fn entries<R: Read>(
        &mut self,
        input: R,
        budget: &mut Budget,
        visitor: &mut dyn Visitor,
        done: &mut Unpacked,
    ) -> Result<(), Error> {
        let mut archive = tar::Archive::new(ExtensionCap::new(input));
        for entry in archive.entries().map_err(Error::Stream)? {
            let mut entry = entry.map_err(Error::Stream)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            // The apparent size, charged before anything is read or written.
            let size = entry.size().max(entry.header().size().unwrap_or(0));
            budget.charge(&name, 1, size)?;
            let placed = self.entry(&mut entry, &name, budget, visitor);
            for path in self.tree.take_removed() {
                visitor.removed(&path);
            }
            match placed {
                Ok(Some(bytes)) => {
                    done.entries += 1;
                    done.bytes += bytes;
                }
                Ok(None) => {}
                Err(Fail::Refused(why)) => {
                    let refused = Refused { entry: name, why };
                    match self.tree.policy().on_refusal {
                        OnRefusal::Note => done.refused.push(refused),
                        OnRefusal::Stop => return Err(Error::Refused(refused)),
                    }
                }
                Err(Fail::Fatal(error)) => return Err(error),
            }
        }
        Ok(())
    }

    /// Places one entry: `Some(bytes written)`, or `None` for what is not
    /// a file system object (the root, metadata, what the visitor took).
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &str,
        budget: &mut Budget,
        visitor: &mut dyn Visitor,
    ) -> Result<Option<u64>, Fail> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            EntryType::XHeader
                | EntryType::XGlobalHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            // Metadata for the entries that follow (the tar crate applies
            // per-entry extensions itself).
            return Ok(None);
        }
        let name_path = entry
            .path()
            .map_err(|e| Refusal::BadName(e.to_string()))?
            .into_owned();
        let parts = self.tree.parts(&name_path)?;
        let policy = *self.tree.policy();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header
            .mtime()
            .ok()
            .filter(|_| policy.mtimes)
            .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        let Some((&leaf, parents)) = parts.split_last() else {
            // The archive's root: the destination, which exists.
            if kind.is_dir() && policy.root_mode {
                let mode = policy.dir_mode(mode);
                self.dirs.insert(PathBuf::new(), DirMeta { mode, mtime });
            }
            return Ok(None);
        };
        let path: PathBuf = parts.iter().collect();
        let seen = Entry {
            name,
            path: &path,
            header: &header,
        };
        if visitor.intercept(&mut self.tree, &seen)? {
            return Ok(None);
        }
        let bytes = match kind {
            EntryType::Directory => {
                self.tree.dir_entry(parents, leaf)?;
                let mode = policy.dir_mode(mode);
                self.dirs.insert(path.clone(), DirMeta { mode, mtime });
                0
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let dir = self.tree.made_dir(parents)?;
                let slot = self.tree.slot(&dir, leaf)?;
                write_file(entry, &slot, policy.file_mode(mode), mtime)?
            }
            EntryType::Symlink => {
                let target = link_target(entry)?;
                match policy.symlinks {
                    Symlinks::Downward => check_downward(&target)?,
                    Symlinks::InsideRoot | Symlinks::Anywhere => {}
                }
                let dir = self.tree.made_dir(parents)?;
                if policy.symlinks == Symlinks::InsideRoot
                    && !stays_inside(self.tree.below_root(&dir), &target)
                {
                    return Err(Refusal::SymlinkLeadsOut(target.display().to_string()).into());
                }
                let slot = self.tree.slot(&dir, leaf)?;
                std::os::unix::fs::symlink(&target, &slot).map_err(|e| Error::write(&slot, e))?;
                if policy.symlinks == Symlinks::InsideRoot {
                    self.check_resolved(&slot)?;
                    self.symlinks.push(slot);
                }
                0
            }
            EntryType::Link => self.hard_link(entry, parents, leaf, mode, budget)?,
            EntryType::Fifo if policy.fifos => {
                let dir = self.tree.made_dir(parents)?;
                let slot = self.tree.slot(&dir, leaf)?;
                nix::unistd::mkfifo(&slot, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| Error::write(&slot, e.into()))?;
                fs::set_permissions(&slot, fs::Permissions::from_mode(policy.file_mode(mode)))
                    .map_err(|e| Error::write(&slot, e))?;
                0
            }
            EntryType::Fifo => return Err(Refusal::Fifo.into()),
            EntryType::Char | EntryType::Block => return Err(Refusal::DeviceNode.into()),
            other => return Err(Refusal::Unsupported(format!("{other:?}")).into()),
        };
        for removed in self.tree.take_removed() {
            visitor.removed(&removed);
        }
        visitor.placed(&seen).map_err(|why| {
            Fail::Fatal(Error::Refused(Refused {
                entry: name.to_string(),
                why: Refusal::Caller(why),
            }))
        })?;
        Ok(Some(bytes))
    }

    /// A hard link to a regular file placed earlier: linked, or copied
    /// (and charged) as the policy says.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        parents: &[&std::ffi::OsStr],
        leaf: &std::ffi::OsStr,
        mode: u32,
        budget: &mut Budget,
    ) -> Result<u64, Fail> {
        let policy = *self.tree.policy();
        let target = link_target(entry)?;
        let source_parts = self
            .tree
            .parts(&target)
            .map_err(|why| Refusal::HardLinkTarget(Box::new(why)))?;
        let Some((&source_leaf, source_dirs)) = source_parts.split_last() else {
            return Err(Refusal::HardLinkToRoot.into());
        };
        let missing = || Refusal::HardLinkMissing(shown(&source_parts));
        let source_dir = self.tree.dir(source_dirs, false)?.ok_or_else(missing)?;
        let source = source_dir.join(source_leaf);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(Refusal::HardLinkNotFile(shown(&source_parts)).into()),
            Err(_) => return Err(missing().into()),
        }
        let dir = self.tree.made_dir(parents)?;
        if dir.join(leaf) == source {
            return Err(Refusal::HardLinkToItself.into());
        }
        match policy.hard_links {
            HardLinks::Copy => {
                let mut from = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&source)
                    .map_err(|e| Error::write(&source, e))?;
                let len = from.metadata().map_err(|e| Error::write(&source, e))?.len();
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                budget.charge(&name, 0, len).map_err(Fail::Fatal)?;
                let slot = self.tree.slot(&dir, leaf)?;
                Ok(write_file(&mut from, &slot, policy.file_mode(mode), None)?)
            }
            HardLinks::Link => {
                let slot = self.tree.slot(&dir, leaf)?;
                fs::hard_link(&source, &slot).map_err(|e| Error::write(&slot, e))?;
                Ok(0)
            }
        }
    }

    /// Removes and refuses the symlink `link` if it really resolves
    /// outside the destination; a dangling one is judged at the end.
    fn check_resolved(&self, link: &Path) -> Result<(), Fail> {
        match link.canonicalize() {
            Ok(real) if !self.tree.contains(&real) => {
                let _ = fs::remove_file(link);
                Err(Refusal::SymlinkResolvesOutside(real.display().to_string()).into())
            }
            _ => Ok(()),
        }
    }

    /// The tree the streams go into, for a caller's own checks.
    pub fn tree(&mut self) -> &mut Tree {
        &mut self.tree
    }

    /// Checks the symlinks again and applies the directories' modes and
    /// times, deepest first. A directory that is gone (or replaced) since
    /// its entry is skipped.
    pub fn finish(mut self) -> Result<(), Error> {
        // Every link is judged (and removed if it leads out) before the
        // first refusal is reported.
        let mut first = None;
        for link in std::mem::take(&mut self.symlinks) {
            if let Err(fail) = self.check_resolved(&link) {
                let entry = self.tree.below_root(&link).display().to_string();
                first.get_or_insert(match fail {
                    Fail::Refused(why) => Error::Refused(Refused { entry, why }),
                    Fail::Fatal(e) => e,
                });
            }
        }
        if let Some(error) = first {
            return Err(error);
        }
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, meta) in dirs {
            let parts: Vec<_> = path.iter().collect();
            // Refused now: a symlink or file took its place or its parent's.
            let Ok(Some(dir)) = self.tree.dir(&parts, false) else {
                continue;
            };
            let handle = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&dir)
            {
                Ok(handle) => handle,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::write(&dir, e)),
            };
            handle
                .set_permissions(fs::Permissions::from_mode(meta.mode))
                .map_err(|e| Error::write(&dir, e))?;
            if let Some(mtime) = meta.mtime {
                handle
                    .set_modified(mtime)
                    .map_err(|e| Error::write(&dir, e))?;
            }
        }
        Ok(())
    }
}

fn link_target<R: Read>(entry: &tar::Entry<R>) -> Result<PathBuf, Refusal> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => Err(Refusal::LinkWithoutTarget),
        Err(e) => Err(Refusal::BadLinkTarget(e.to_string())),
    }
}

/// Creates `path` (which must not exist) with the content of `from`.
fn write_file(
    from: &mut impl Read,
    path: &Path,
    mode: u32,
    mtime: Option<SystemTime>,
) -> Result<u64, Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::write(path, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        // Tell reading (a broken stream) from writing (a full disk) apart.
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Stream(e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| Error::write(path, e))?;
        total += n as u64;
    }
    // Set explicitly: the open mode above is filtered by the umask.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::write(path, e))?;
    if let Some(mtime) = mtime {
        File::set_modified(&file, mtime).map_err(|e| Error::write(path, e))?;
    }
    Ok(total)
}
