//! `runner cache export` and `import`: one key's newest version as one
//! sparse-aware file, for a CI system's own distributed cache to carry
//! between machines.
//!
//! The format (integers little-endian):
//!
//! ```text
//! magic "RUNCACHE" | format u32 (1) | key length u32 | size u64 | key
//! records, by increasing offset, within [0, size), never overlapping:
//!     offset u64 | length u64 (> 0) | length bytes of the image from offset
//! end: offset u64::MAX | length 0
//! crc32 u32 of every byte before it
//! ```
//!
//! Where no record says otherwise the image reads as zeros (a hole). An
//! imported file is hostile: every field is checked before it is used, and
//! no length it gives decides an allocation (data moves through a fixed
//! buffer).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::blocks;
use super::empty::check_size;
use super::error::CacheError;
use super::layout::{self, check_name, KeyDir, Scope};
use super::meta;
use super::store::CacheStore;
use crate::file_lock::LockMode;

const MAGIC: &[u8; 8] = b"RUNCACHE";
const FORMAT: u32 = 1;
const END: u64 = u64::MAX;
const BUFFER: usize = 1 << 20;
const MAX_KEY: u32 = 128;

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub scope: Scope,
    pub version: u64,
    /// The image's data bytes in the file.
    pub data_bytes: u64,
}

/// What an import made.
#[derive(Debug)]
pub struct Imported {
    pub key: String,
    pub version: u64,
    pub size: u64,
}

/// Counts a CRC over what passes through.
struct Crc<T> {
    inner: T,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl CacheStore {
    /// Writes the newest version of `key` to `out` (in the one scope that
    /// has it, or in `scope`), under a temporary name renamed into place;
    /// an existing `out` only with `force`.
    pub fn export(
        &self,
        key: &str,
        scope: Option<&str>,
        out: &Path,
        force: bool,
    ) -> Result<Exported, CacheError> {
        check_name("key", key)?;
        if !force && out.symlink_metadata().is_ok() {
            return Err(CacheError::Exists {
                path: out.to_path_buf(),
            });
        }
        let mut holders = Vec::new();
        for candidate in layout::scopes(&self.root)? {
            let dir = KeyDir::new(&self.root, &candidate, key);
            if scope.is_none_or(|name| name == candidate.name) && !dir.versions()?.is_empty() {
                holders.push(candidate);
            }
        }
        let scope = match holders.len() {
            0 => {
                return Err(CacheError::NotFound {
                    key: key.into(),
                    scope: scope.map(str::to_string),
                })
            }
            1 => holders.remove(0),
            _ => {
                let names: Vec<String> = holders.iter().map(|s| s.to_string()).collect();
                return Err(CacheError::Ambiguous {
                    key: key.into(),
                    scopes: names.join(", "),
                });
            }
        };
        let dir = KeyDir::new(&self.root, &scope, key);
        let (version, size, image) = {
            let _lock = dir.lock(LockMode::Shared)?;
            let newest = dir.versions()?.last().copied();
            let size = newest
                .and_then(|v| meta::read(&dir.meta(v)).ok())
                .map(|m| m.size)
                .ok_or_else(|| CacheError::NotFound {
                    key: key.into(),
                    scope: Some(scope.name.clone()),
                })?;
            self.newest_usable(&dir, size, false)?
                .map(|(version, _, lock)| (version, size, lock))
                .ok_or_else(|| CacheError::NotFound {
                    key: key.into(),
                    scope: Some(scope.name.clone()),
                })?
        };
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = out.file_name().unwrap_or_default().to_string_lossy();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(parent)
            .map_err(CacheError::io("creating", out))?;
        let data_bytes = write_export(image.file(), size, key, temp.as_file())
            .map_err(CacheError::io("writing", out))?;
        let persisted = if force {
            temp.persist(out).map(drop)
        } else {
            temp.persist_noclobber(out).map(drop)
        };
        persisted.map_err(|e| match e.error.kind() {
            std::io::ErrorKind::AlreadyExists => CacheError::Exists {
                path: out.to_path_buf(),
            },
            _ => CacheError::io("writing", out)(e.error),
        })?;
        Ok(Exported {
            scope,
            version,
            data_bytes,
        })
    }

    /// Makes the image in export file `file` a new version of its key in
    /// `scope`: the file names the key and the size, never the scope.
    pub fn import(&self, file: &Path, scope: &Scope) -> Result<Imported, CacheError> {
        check_name("scope", &scope.name)?;
        let bad = |why: String| CacheError::BadExport {
            path: file.to_path_buf(),
            why,
        };
        let source = File::open(file).map_err(CacheError::io("reading", file))?;
        let mut reader = Crc {
            inner: BufReader::new(source),
            hasher: crc32fast::Hasher::new(),
        };
        let ends_early = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("it ends early".into())
            } else {
                CacheError::io("reading", file)(e)
            }
        };
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).map_err(ends_early)?;
        if &magic != MAGIC {
            return Err(bad("it does not start like one".into()));
        }
        let format = read_u32(&mut reader).map_err(ends_early)?;
        if format != FORMAT {
            return Err(bad(format!("format {format}, this runner reads {FORMAT}")));
        }
        let key_len = read_u32(&mut reader).map_err(ends_early)?;
        let size = read_u64(&mut reader).map_err(ends_early)?;
        if key_len == 0 || key_len > MAX_KEY {
            return Err(bad(format!("its key is {key_len} bytes long")));
        }
        let mut key = vec![0u8; key_len as usize];
        reader.read_exact(&mut key).map_err(ends_early)?;
        let key = String::from_utf8(key).map_err(|_| bad("its key is not UTF-8".into()))?;
        check_name("key", &key).map_err(|e| bad(e.to_string()))?;
        check_size(size).map_err(|e| bad(e.to_string()))?;

        let dir = KeyDir::new(&self.root, scope, &key);
        dir.create()?;
        // Its number is known only when it is published.
        let (temp, _temp_lock) = dir.temp_version(0)?;
        let image = temp.as_file();
        image
            .set_len(size)
            .map_err(CacheError::io("writing", temp.path()))?;
        let mut buffer = vec![0u8; BUFFER];
        let mut next_free = 0u64;
        loop {
            let offset = read_u64(&mut reader).map_err(ends_early)?;
            let length = read_u64(&mut reader).map_err(ends_early)?;
            if offset == END && length == 0 {
                break;
            }
            let end = offset.checked_add(length).filter(|&end| end <= size);
            let Some(end) = end.filter(|_| length > 0 && offset >= next_free) else {
                return Err(bad(format!(
                    "a record ({length} bytes at {offset}) is empty, overlaps another or lies \
                     outside the {size}-byte image"
                )));
            };
            let mut at = offset;
            while at < end {
                let n = usize::try_from(end - at).unwrap_or(BUFFER).min(BUFFER);
                reader.read_exact(&mut buffer[..n]).map_err(ends_early)?;
                blocks::write_sparse(image, &buffer[..n], at)
                    .map_err(CacheError::io("writing", temp.path()))?;
                at += n as u64;
            }
            next_free = end;
        }
        let computed = reader.hasher.clone().finalize();
        let mut trailer = [0u8; 4];
        reader.inner.read_exact(&mut trailer).map_err(ends_early)?;
        if u32::from_le_bytes(trailer) != computed {
            return Err(bad(
                "its checksum does not match (damaged in transit?)".into()
            ));
        }
        let mut extra = [0u8; 1];
        if reader
            .inner
            .read(&mut extra)
            .map_err(CacheError::io("reading", file))?
            != 0
        {
            return Err(bad("there are bytes after its end".into()));
        }
        image
            .sync_all()
            .map_err(CacheError::io("writing", temp.path()))?;
        let version = self.publish(&dir, temp, size)?;
        Ok(Imported { key, version, size })
    }
}

/// Writes the export of the `size`-byte `image` of `key` to `out`;
/// returns the data bytes written.
fn write_export(image: &File, size: u64, key: &str, out: &File) -> std::io::Result<u64> {
    let mut writer = Crc {
        inner: BufWriter::new(out),
        hasher: crc32fast::Hasher::new(),
    };
    writer.write_all(MAGIC)?;
    writer.write_all(&FORMAT.to_le_bytes())?;
    let key_len = u32::try_from(key.len()).map_err(std::io::Error::other)?;
    writer.write_all(&key_len.to_le_bytes())?;
    writer.write_all(&size.to_le_bytes())?;
    writer.write_all(key.as_bytes())?;
    let mut buffer = vec![0u8; BUFFER];
    let mut data_bytes = 0;
    for extent in blocks::data_extents(image, size) {
        let extent = extent?;
        writer.write_all(&extent.start.to_le_bytes())?;
        writer.write_all(&(extent.end - extent.start).to_le_bytes())?;
        let mut at = extent.start;
        while at < extent.end {
            let n = usize::try_from(extent.end - at)
                .unwrap_or(BUFFER)
                .min(BUFFER);
            image.read_exact_at(&mut buffer[..n], at)?;
            writer.write_all(&buffer[..n])?;
            at += n as u64;
        }
        data_bytes += extent.end - extent.start;
    }
    writer.write_all(&END.to_le_bytes())?;
    writer.write_all(&0u64.to_le_bytes())?;
    let crc = writer.hasher.clone().finalize();
    let mut inner = writer.inner;
    inner.write_all(&crc.to_le_bytes())?;
    inner.flush()?;
    out.sync_all()?;
    Ok(data_bytes)
}

fn read_u32(reader: &mut impl Read) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(reader: &mut impl Read) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}
