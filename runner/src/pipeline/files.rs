//! Files copied into the guest: which host files a job's `files` entries
//! select, and the tar stream that carries them (`PutFiles { target: "/" }`).
//!
//! Rules (also in docs/pipeline-format.md):
//! * a plain path copies that file, or that directory's tree, to `to`;
//! * a glob copies each match to `to`, keeping its path relative to the
//!   glob's literal directory prefix (`crates/*/Cargo.toml` → `to/a/Cargo.toml`);
//! * a file copied to a `to` ending in `/` lands inside that directory;
//! * walking a directory honours `.gitignore` (unless `gitignore: false`)
//!   and never copies `.git`; a path named explicitly is always copied, even
//!   if ignored, so build outputs under `target/` can be shipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Where the workspace is copied to in the guest, and where steps run by default.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// One `files` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute host path, possibly a glob pattern.
    pub from: PathBuf,
    /// Absolute guest path; a trailing `/` means "into this directory".
    pub to: String,
    /// Skip what `.gitignore` files exclude when walking directories.
    pub gitignore: bool,
}

/// A host file, directory or symlink and where it goes in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectedFile {
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    pub kind: FileKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

/// What went into a tar stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TarSummary {
    pub entries: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("files: `{0}` does not exist")]
    NotFound(String),
    #[error("files: pattern `{0}` matches nothing")]
    NoMatch(String),
    #[error("files: bad pattern `{pattern}`: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("files: cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("files: writing the tar stream failed at `{path}`: {cause}")]
    Tar {
        path: String,
        // Not `source`: the message says it (anyhow would print it twice).
        cause: std::io::Error,
    },
}

impl FileEntry {
    /// The entry for a workspace-relative path written as a plain string
    /// (`.`, `src`, `crates/*/Cargo.toml`): copied to the same place under
    /// the guest workspace.
    pub fn workspace_path(text: &str, workspace: &Path) -> Result<FileEntry, String> {
        let text = text.trim();
        let relative = Path::new(text);
        if text.is_empty() {
            return Err("a `files` path must not be empty".to_string());
        }
        if relative.is_absolute()
            || text.starts_with('~')
            || relative.components().any(|c| c == Component::ParentDir)
        {
            return Err(format!(
                "`{text}` is not inside the workspace: use `{{from: {text}, to: /guest/path}}` to copy other host paths"
            ));
        }
        let destination = literal_prefix(relative);
        let mut to = GUEST_WORKSPACE.to_string();
        for part in destination.components() {
            if let Component::Normal(name) = part {
                to.push('/');
                to.push_str(&name.to_string_lossy());
            }
        }
        Ok(FileEntry {
            from: workspace.join(relative),
            to,
            gitignore: true,
        })
    }

    /// The default `files`: the whole workspace, minus what git ignores.
    pub fn workspace(workspace: &Path) -> FileEntry {
        FileEntry {
            from: workspace.to_path_buf(),
            to: GUEST_WORKSPACE.to_string(),
            gitignore: true,
        }
    }
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// The leading components of `path` that contain no glob characters.
fn literal_prefix(path: &Path) -> PathBuf {
    path.components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect()
}

/// Expands `entries` into the host files to copy, sorted by guest path (so
/// parents come before children). When two entries target the same guest
/// path, the later entry wins.
pub fn collect(entries: &[FileEntry]) -> Result<Vec<CollectedFile>, FilesError> {
    let mut out: BTreeMap<String, CollectedFile> = BTreeMap::new();
    for entry in entries {
        let pattern = entry.from.to_string_lossy().into_owned();
        let into_dir = entry.to.ends_with('/');
        let to = entry.to.trim_end_matches('/');
        let to = if to.is_empty() { "/" } else { to };
        if !is_glob(&pattern) {
            let meta = std::fs::symlink_metadata(&entry.from)
                .map_err(|_| FilesError::NotFound(pattern.clone()))?;
            let destination = if meta.is_dir() || !into_dir {
                to.to_string()
            } else {
                join_guest(to, &file_name(&entry.from))
            };
            add_tree(&entry.from, &destination, entry.gitignore, &mut out)?;
            continue;
        }
        let prefix = literal_prefix(&entry.from);
        let matches = glob::glob(&pattern).map_err(|err| FilesError::BadPattern {
            pattern: pattern.clone(),
            message: err.msg.to_string(),
        })?;
        let mut any = false;
        for found in matches {
            let found = found.map_err(|err| FilesError::Read {
                path: err.path().display().to_string(),
                message: err.error().to_string(),
            })?;
            if found.components().any(|c| c.as_os_str() == ".git") {
                continue;
            }
            any = true;
            let relative = found.strip_prefix(&prefix).unwrap_or(&found);
            let destination = join_guest(to, &relative.to_string_lossy());
            add_tree(&found, &destination, entry.gitignore, &mut out)?;
        }
        if !any {
            return Err(FilesError::NoMatch(pattern));
        }
    }
    Ok(out.into_values().collect())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn join_guest(base: &str, relative: &str) -> String {
    let relative = relative.trim_start_matches('/');
    match (base, relative) {
        (base, "") => base.to_string(),
        ("/", rel) => format!("/{rel}"),
        (base, rel) => format!("{base}/{rel}"),
    }
}

/// Adds `host` (file, symlink, or directory walked recursively) at `guest`.
fn add_tree(
    host: &Path,
    guest: &str,
    gitignore: bool,
    out: &mut BTreeMap<String, CollectedFile>,
) -> Result<(), FilesError> {
    let walker = ignore::WalkBuilder::new(host)
        .hidden(false)
        .follow_links(false)
        .git_ignore(gitignore)
        .git_exclude(gitignore)
        .git_global(false)
        .ignore(false)
        .parents(gitignore)
        // Honour .gitignore in a plain directory too, not only in a git work tree.
        .require_git(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    for item in walker {
        let item = item.map_err(|err| FilesError::Read {
            path: host.display().to_string(),
            message: err.to_string(),
        })?;
        let Some(file_type) = item.file_type() else {
            continue;
        };
        let kind = if file_type.is_dir() {
            FileKind::Dir
        } else if file_type.is_symlink() {
            FileKind::Symlink
        } else if file_type.is_file() {
            FileKind::File
        } else {
            continue; // sockets, fifos, devices: nothing a test needs copied
        };
        let relative = item.path().strip_prefix(host).unwrap_or(item.path());
        let target = join_guest(guest, &relative.to_string_lossy());
        out.insert(
            target.clone(),
            CollectedFile {
                host: item.path().to_path_buf(),
                guest: target,
                kind,
            },
        );
    }
    Ok(())
}

/// Writes `files` as a tar stream whose entry names are the guest paths
/// without the leading `/`, to be unpacked at the guest's `/`.
pub fn write_tar<W: Write>(files: &[CollectedFile], out: W) -> Result<TarSummary, FilesError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    // The agent unpacks plain entries only: a sparse file (a disk image
    // fixture, say) goes as a regular one, holes as zeros.
    builder.sparse(false);
    let mut summary = TarSummary::default();
    for file in files {
        let name = file.guest.trim_start_matches('/');
        if name.is_empty() {
            continue; // the guest's `/` itself exists already
        }
        let tar_error = |cause| FilesError::Tar {
            path: file.host.display().to_string(),
            cause,
        };
        builder
            .append_path_with_name(&file.host, name)
            .map_err(tar_error)?;
        summary.entries += 1;
        if file.kind == FileKind::File {
            summary.bytes += std::fs::metadata(&file.host).map(|m| m.len()).unwrap_or(0);
        }
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|cause| FilesError::Tar {
            path: "<end of archive>".to_string(),
            cause,
        })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A workspace with ignored build output, a nested .gitignore and a .git.
    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, content) in [
            (".gitignore", "/target\n*.log\n"),
            (".git/config", "[core]\n"),
            (".cargo/config.toml", "[build]\n"),
            ("src/main.rs", "fn main() {}\n"),
            ("src/debug.log", "noise\n"),
            ("docs/.gitignore", "draft.md\n"),
            ("docs/draft.md", "wip\n"),
            ("docs/guide.md", "guide\n"),
            ("crates/a/Cargo.toml", "[package] # a\n"),
            ("crates/b/Cargo.toml", "[package] # b\n"),
            ("target/debug/deps/foo-0123456789abcdef", "ELF\n"),
            ("target/debug/deps/foo-0123456789abcdef.d", "deps\n"),
        ] {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    fn guest_files(collected: &[CollectedFile]) -> Vec<&str> {
        collected
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .map(|f| f.guest.as_str())
            .collect()
    }

    #[test]
    fn workspace_default_honours_gitignore_and_skips_git() {
        let ws = workspace();
        let collected = collect(&[FileEntry::workspace(ws.path())]).unwrap();
        assert_eq!(
            guest_files(&collected),
            [
                "/workspace/.cargo/config.toml",
                "/workspace/.gitignore",
                "/workspace/crates/a/Cargo.toml",
                "/workspace/crates/b/Cargo.toml",
                "/workspace/docs/.gitignore",
                "/workspace/docs/guide.md",
                "/workspace/src/main.rs",
            ]
        );
        // Directories come along (empty ones too), parents first.
        assert_eq!(collected[0].guest, "/workspace");
        assert_eq!(collected[0].kind, FileKind::Dir);
    }

    #[test]
    fn explicit_paths_and_globs() {
        let ws = workspace();
        let entries = [
            FileEntry::workspace_path("crates/*/Cargo.toml", ws.path()).unwrap(),
            FileEntry {
                from: ws.path().join("target/debug/deps/foo-????????????????"),
                to: "/opt/tests/".into(),
                gitignore: true,
            },
            FileEntry {
                from: ws.path().join("src/main.rs"),
                to: "/srv/app.rs".into(),
                gitignore: true,
            },
            FileEntry {
                from: ws.path().join("docs/guide.md"),
                to: "/srv/".into(),
                gitignore: true,
            },
            // Ignored by .gitignore, but named explicitly: copied.
            FileEntry::workspace_path("src/debug.log", ws.path()).unwrap(),
        ];
        assert_eq!(entries[0].to, "/workspace/crates");
        assert_eq!(
            guest_files(&collect(&entries).unwrap()),
            [
                "/opt/tests/foo-0123456789abcdef",
                "/srv/app.rs",
                "/srv/guide.md",
                "/workspace/crates/a/Cargo.toml",
                "/workspace/crates/b/Cargo.toml",
                "/workspace/src/debug.log",
            ]
        );
    }

    #[test]
    fn an_ignored_directory_named_explicitly_is_copied() {
        let ws = workspace();
        let entry = FileEntry::workspace_path("target/debug", ws.path()).unwrap();
        assert_eq!(
            guest_files(&collect(&[entry]).unwrap()),
            [
                "/workspace/target/debug/deps/foo-0123456789abcdef",
                "/workspace/target/debug/deps/foo-0123456789abcdef.d",
            ]
        );
        let everything = FileEntry {
            gitignore: false,
            ..FileEntry::workspace(ws.path())
        };
        let all = collect(&[everything]).unwrap();
        assert!(guest_files(&all).contains(&"/workspace/docs/draft.md"));
        assert!(!guest_files(&all).iter().any(|f| f.contains("/.git/")));
    }

    #[test]
    fn missing_paths_and_empty_globs_are_errors() {
        let ws = workspace();
        let missing = FileEntry::workspace_path("nope", ws.path()).unwrap();
        let err = collect(&[missing]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("files: `{}/nope` does not exist", ws.path().display())
        );
        let empty = FileEntry::workspace_path("src/*.c", ws.path()).unwrap();
        let err = collect(&[empty]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "files: pattern `{}/src/*.c` matches nothing",
                ws.path().display()
            )
        );
    }

    #[test]
    fn tar_stream_holds_guest_paths_and_contents() {
        let ws = workspace();
        let entries = [FileEntry::workspace_path("src", ws.path()).unwrap()];
        let collected = collect(&entries).unwrap();
        let mut tar = Vec::new();
        let summary = write_tar(&collected, &mut tar).unwrap();
        // src/ and main.rs: inside a walked directory, `*.log` still applies.
        assert_eq!(summary.entries, 2);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
            seen.push((name, body));
        }
        assert_eq!(seen[0].0, "workspace/src");
        assert!(seen.contains(&("workspace/src/main.rs".into(), "fn main() {}\n".into())));
        assert_eq!(seen.len(), 2);
        assert_eq!(summary.bytes, 13);
    }

    #[test]
    fn a_sparse_file_goes_as_a_regular_entry() {
        let ws = tempfile::tempdir().unwrap();
        let path = ws.path().join("disk.img");
        let file = fs::File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"end", (1 << 20) - 3).unwrap();
        let entries = [FileEntry::workspace_path("disk.img", ws.path()).unwrap()];
        let mut tar = Vec::new();
        write_tar(&collect(&entries).unwrap(), &mut tar).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut body).unwrap();
        assert_eq!(body.len(), 1 << 20);
        assert!(body.ends_with(b"end"));
    }
}
