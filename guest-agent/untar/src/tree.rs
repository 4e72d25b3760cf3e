//! The destination directory, and every path taken inside it.
//!
//! Paths are walked one component at a time from the (canonical) root with
//! `lstat`, so a symlink on the way is seen, and then refused or resolved
//! as [`Traverse`] says; files are created with `O_EXCL|O_NOFOLLOW` once
//! whatever was in their way is gone. The unpacker is the only writer of
//! the destination while it runs (a job's artifact directory on the host,
//! a build user's staging tree, a directory in a guest whose only user is
//! root already), so a check is not raced by another writer.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Fail, Refusal, Refused};
use crate::path::{relative_parts, shown};
use crate::policy::{AbsoluteNames, Policy, Replace, Traverse};

pub struct Tree {
    root: PathBuf,
    policy: Policy,
    /// Paths (below the root) removed to make room since the last
    /// [`Tree::take_removed`], for the caller's bookkeeping.
    removed: Vec<PathBuf>,
}

impl Tree {
    /// `dest` must be an existing directory.
    pub(crate) fn open(dest: &Path, policy: Policy) -> Result<Tree, Error> {
        let root = dest.canonicalize().map_err(|e| Error::write(dest, e))?;
        if !root.is_dir() {
            return Err(Error::write(
                dest,
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Ok(Tree {
            root,
            policy,
            removed: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn parts<'a>(&self, name: &'a Path) -> Result<Vec<&'a OsStr>, Refusal> {
        relative_parts(name, self.policy.absolute_names)
    }

    pub(crate) fn take_removed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.removed)
    }

    /// `path` (below the root) relative to the root, for the caller.
    pub(crate) fn below_root<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// Walks `parts` below the root, creating missing directories if
    /// `create` (else `None` when one is missing). Every component must be
    /// a directory, or a symlink that [`Traverse`] lets us follow; with
    /// [`Replace::Anything`] a non-directory in the way is replaced.
    /// Returns the real location.
    pub(crate) fn dir(&mut self, parts: &[&OsStr], create: bool) -> Result<Option<PathBuf>, Fail> {
        let mut current = self.root.clone();
        for (i, name) in parts.iter().enumerate() {
            let next = current.join(name);
            current = match fs::symlink_metadata(&next) {
                Ok(meta) if meta.is_dir() => next,
                Ok(meta) if meta.file_type().is_symlink() => {
                    self.through_symlink(&next, &parts[..=i])?
                }
                Ok(_) if create && self.policy.replace == Replace::Anything => {
                    self.remove_file(&next)?;
                    new_dir(&next)?;
                    next
                }
                Ok(_) if create => return Err(Refusal::NotADirectory(shown(&parts[..=i])).into()),
                // Nothing of that name can be below a file.
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    new_dir(&next)?;
                    next
                }
                Err(e) => return Err(Error::write(&next, e).into()),
            };
        }
        Ok(Some(current))
    }

    /// The directory entry `leaf` in `parents` (so not the root): like
    /// [`Tree::dir`], but under [`Replace::Anything`] the entry replaces a
    /// symlink at its own name instead of following it.
    pub(crate) fn dir_entry(&mut self, parents: &[&OsStr], leaf: &OsStr) -> Result<PathBuf, Fail> {
        let parent = self.made_dir(parents)?;
        let mut parts = parents.to_vec();
        parts.push(leaf);
        let parts = parts.as_slice();
        let path = parent.join(leaf);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(path),
            Ok(_) if self.policy.replace == Replace::Anything => {
                self.remove_file(&path)?;
                new_dir(&path)?;
                Ok(path)
            }
            Ok(meta) if meta.file_type().is_symlink() => self.through_symlink(&path, parts),
            Ok(_) => Err(Refusal::NotADirectory(shown(parts)).into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                new_dir(&path)?;
                Ok(path)
            }
            Err(e) => Err(Error::write(&path, e).into()),
        }
    }

    /// [`Tree::dir`] that creates what is missing.
    pub(crate) fn made_dir(&mut self, parts: &[&OsStr]) -> Result<PathBuf, Fail> {
        // `dir` only answers `None` when it may not create.
        self.dir(parts, true)?.ok_or_else(|| {
            Error::write(&self.root, io::Error::from(io::ErrorKind::NotFound)).into()
        })
    }

    /// The symlink `link` (at `parts`) met on the way: where it leads, if
    /// we may follow it.
    fn through_symlink(&self, link: &Path, parts: &[&OsStr]) -> Result<PathBuf, Fail> {
        match self.policy.traverse {
            Traverse::Never => Err(Refusal::ThroughSymlink(shown(parts)).into()),
            Traverse::InsideRoot => match link.canonicalize() {
                Ok(real) if self.contains(&real) && real.is_dir() => Ok(real),
                Ok(real) if self.contains(&real) => {
                    Err(Refusal::NotADirectory(shown(parts)).into())
                }
                // Outside, or dangling (nowhere to write to).
                _ => Err(Refusal::ThroughOutsideSymlink(shown(parts)).into()),
            },
        }
    }

    pub(crate) fn contains(&self, real: &Path) -> bool {
        real.starts_with(&self.root)
    }

    /// Where a new non-directory named `name` goes in `dir` (a real
    /// directory from [`Tree::dir`]): whatever is there is removed first,
    /// so that nothing is written through it. A directory in the way
    /// refuses the entry unless [`Replace::Anything`].
    pub(crate) fn slot(&mut self, dir: &Path, name: &OsStr) -> Result<PathBuf, Fail> {
        let slot = dir.join(name);
        match fs::symlink_metadata(&slot) {
            Ok(meta) if meta.is_dir() => match self.policy.replace {
                Replace::Anything => {
                    // Does not follow symlinks inside the tree it removes.
                    fs::remove_dir_all(&slot).map_err(|e| Error::write(&slot, e))?;
                    self.note_removed(&slot);
                }
                Replace::NonDirectories => return Err(Refusal::DirectoryInTheWay.into()),
            },
            Ok(_) => self.remove_file(&slot)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::write(&slot, e).into()),
        }
        Ok(slot)
    }

    fn remove_file(&mut self, path: &Path) -> Result<(), Error> {
        fs::remove_file(path).map_err(|e| Error::write(path, e))?;
        self.note_removed(path);
        Ok(())
    }

    fn note_removed(&mut self, path: &Path) {
        let below = self.below_root(path).to_path_buf();
        self.removed.push(below);
    }

    /// Removes `path` (below the root, of normal components only) with
    /// whatever is below it; false if there was nothing. Never follows a
    /// symlink: an OCI whiteout deletes what the layers below made.
    pub fn remove(&mut self, path: &Path) -> Result<bool, Error> {
        let refused = |why| {
            Error::Refused(Refused {
                entry: path.display().to_string(),
                why,
            })
        };
        let parts = relative_parts(path, AbsoluteNames::Refuse).map_err(refused)?;
        let Some((leaf, parents)) = parts.split_last() else {
            return Err(refused(Refusal::BadName(
                "the target directory itself cannot be removed".into(),
            )));
        };
        let Some(dir) = self.dir(parents, false).map_err(|f| fail_error(f, path))? else {
            return Ok(false);
        };
        let target = dir.join(leaf);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(&target).map_err(|e| Error::write(&target, e))?
            }
            Ok(_) => fs::remove_file(&target).map_err(|e| Error::write(&target, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::write(&target, e)),
        }
        self.note_removed(&target);
        Ok(true)
    }

    /// The names in the directory `path` (below the root), none if it is
    /// missing.
    pub fn children(&mut self, path: &Path) -> Result<Vec<OsString>, Error> {
        let parts = relative_parts(path, AbsoluteNames::Refuse).map_err(|why| {
            Error::Refused(Refused {
                entry: path.display().to_string(),
                why,
            })
        })?;
        let Some(dir) = self.dir(&parts, false).map_err(|f| fail_error(f, path))? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for child in fs::read_dir(&dir).map_err(|e| Error::write(&dir, e))? {
            names.push(child.map_err(|e| Error::write(&dir, e))?.file_name());
        }
        Ok(names)
    }
}

/// Creates the directory `path`, at most 0755 whatever the umask: a directory
/// made for an entry's parents keeps this mode (one with an entry of its
/// own gets that entry's mode at the end), and must never let others write.
fn new_dir(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| Error::write(path, e))
}

fn fail_error(fail: Fail, path: &Path) -> Error {
    match fail {
        Fail::Refused(why) => Error::Refused(Refused {
            entry: path.display().to_string(),
            why,
        }),
        Fail::Fatal(e) => e,
    }
}
