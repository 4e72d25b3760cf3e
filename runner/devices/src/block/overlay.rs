//! A copy-on-write layer over a read-only base image.
//!
//! The disk is cut into fixed-size chunks. A bitmap records which chunks the
//! guest has written; those are read from the overlay file, all others from
//! the base image. A write covering a chunk only partly first copies the rest
//! of that chunk up from the base, so a chunk is always wholly in one place.
//!
//! The overlay file is as large as the disk and keeps each chunk at its own
//! offset, so no mapping table is needed; it is sparse, so it only costs the
//! space of what was written. Its file is one of two kinds:
//!
//! - **throwaway** (the root disk): created unlinked (`O_TMPFILE`, or create
//!   and unlink where the file system lacks it), so nothing is left on disk
//!   when the device goes away, even if the process is killed;
//! - **persistent** (a cache volume's layer): a file the caller gives,
//!   which outlives the device; the bitmap is kept in it too, after the
//!   chunk data, so whoever reads the file later knows which chunks it
//!   holds (the format is [`super::layer`]'s).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::base::{check_range, BaseImage};
use crate::snapshot::error::SnapshotError;

/// The largest bitmap an overlay may allocate (1 bit per chunk): 64 MiB, or
/// a 2 TiB disk at 4 KiB chunks.
pub(crate) const MAX_BITMAP_BYTES: u64 = 64 << 20;

/// Where the guest's writes go, and whether the bitmap goes with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upper {
    /// An unlinked file; the bitmap lives in memory only.
    Throwaway,
    /// A layer file: the bitmap is also written at `bitmap_at`, after
    /// each write's data.
    Persistent { bitmap_at: u64 },
}

/// A base image plus the guest's writes.
pub struct Overlay {
    base: BaseImage,
    upper: File,
    kind: Upper,
    size: u64,
    chunk_size: u64,
    /// One bit per chunk: set once the chunk lives in `upper`.
    written: Vec<u64>,
    written_count: u64,
}

/// The bitmap's length in 64-bit words for a disk of `size` bytes, if an
/// overlay may allocate it; `chunk_size` must be a power of two of at least
/// 512 bytes.
pub(crate) fn bitmap_words(size: u64, chunk_size: u64) -> io::Result<u64> {
    if !chunk_size.is_power_of_two() || chunk_size < 512 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("overlay chunk size {chunk_size} is not a power of two of at least 512"),
        ));
    }
    let words = size.div_ceil(chunk_size).div_ceil(64);
    if words * 8 > MAX_BITMAP_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {size}-byte disk needs too many {chunk_size}-byte overlay chunks"),
        ));
    }
    Ok(words)
}

/// The bitmap's length in words for an overlay of `size` bytes, which may
/// not be empty.
fn check_geometry(size: u64, chunk_size: u64) -> io::Result<u64> {
    if size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an overlay cannot be empty",
        ));
    }
    bitmap_words(size, chunk_size)
}

impl Overlay {
    /// An overlay of `size` bytes over `base`, with its throwaway file in
    /// `dir`. `chunk_size` must be a power of two of at least 512 bytes.
    pub fn new(base: BaseImage, size: u64, dir: &Path, chunk_size: u64) -> io::Result<Overlay> {
        let words = check_geometry(size, chunk_size)?;
        let upper = tempfile::tempfile_in(dir)?;
        upper.set_len(size)?;
        Overlay::build(base, upper, Upper::Throwaway, size, chunk_size, words)
    }

    /// A persistent overlay of `size` bytes over `base`, kept in `layer`,
    /// which must be empty: it is laid out as [`super::layer`] says (chunk
    /// data, then the bitmap at offset `size`).
    pub fn persistent(
        base: BaseImage,
        size: u64,
        layer: File,
        chunk_size: u64,
    ) -> io::Result<Overlay> {
        let words = check_geometry(size, chunk_size)?;
        let len = layer.metadata()?.len();
        if len != 0 {
            // Its bytes would pass for chunks the guest wrote.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the layer file is not empty ({len} bytes)"),
            ));
        }
        layer.set_len(size + words * 8)?;
        let kind = Upper::Persistent { bitmap_at: size };
        Overlay::build(base, layer, kind, size, chunk_size, words)
    }

    fn build(
        base: BaseImage,
        upper: File,
        kind: Upper,
        size: u64,
        chunk_size: u64,
        words: u64,
    ) -> io::Result<Overlay> {
        let mut written = Vec::new();
        written
            .try_reserve_exact(words as usize)
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
        written.resize(words as usize, 0);
        Ok(Overlay {
            base,
            upper,
            kind,
            size,
            chunk_size,
            written,
            written_count: 0,
        })
    }

    /// Makes what was written durable: a persistent overlay's file is
    /// synced (data and bitmap); a throwaway one needs nothing, as no
    /// crash can bring it back.
    pub fn sync(&self) -> io::Result<()> {
        match self.kind {
            Upper::Throwaway => Ok(()),
            Upper::Persistent { .. } => self.upper.sync_data(),
        }
    }

    /// Whether the guest's writes outlive the device (a cache volume).
    pub fn is_persistent(&self) -> bool {
        matches!(self.kind, Upper::Persistent { .. })
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// How many chunks the guest has written so far.
    pub fn written_chunks(&self) -> u64 {
        self.written_count
    }

    /// Number of names the overlay file has in the file system: 0, always.
    #[cfg(test)]
    pub(crate) fn link_count(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.upper.metadata()?.nlink())
    }

    fn is_written(&self, chunk: u64) -> bool {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        self.written.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn mark_written(&mut self, chunk: u64) {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        if let Some(w) = self.written.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                self.written_count += 1;
            }
        }
    }

    fn chunk_start(&self, chunk: u64) -> u64 {
        chunk * self.chunk_size
    }

    /// End of `chunk`; the last chunk of a disk may be short.
    fn chunk_end(&self, chunk: u64) -> u64 {
        (chunk + 1).saturating_mul(self.chunk_size).min(self.size)
    }

    /// Fills `buf` from `offset`, taking each run of chunks from wherever it
    /// lives.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let in_upper = self.is_written(pos / self.chunk_size);
            let mut run_end = self.chunk_end(pos / self.chunk_size).min(end);
            while run_end < end && self.is_written(run_end / self.chunk_size) == in_upper {
                run_end = self.chunk_end(run_end / self.chunk_size).min(end);
            }
            let part = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if in_upper {
                self.upper.read_exact_at(part, pos)?;
            } else {
                self.base.read_at(part, pos)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` into the overlay.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = offset / self.chunk_size;
        let last = (end - 1) / self.chunk_size;
        // Only the first and the last chunk can be partly covered; everything
        // between them is written straight through in one go.
        let mut direct = offset..end;
        if self.needs_copy_up(first, offset, end) {
            self.copy_up(first, buf, offset)?;
            direct.start = self.chunk_end(first).min(end);
        }
        if last != first && self.needs_copy_up(last, offset, end) {
            self.copy_up(last, buf, offset)?;
            direct.end = self.chunk_start(last);
        }
        if direct.start < direct.end {
            let part = &buf[(direct.start - offset) as usize..(direct.end - offset) as usize];
            self.upper.write_all_at(part, direct.start)?;
        }
        // Marked only now: after a failed write the chunks still read as
        // before, which is as good as any content for a failed request.
        self.persist_marks(first, last)?;
        for chunk in first..=last {
            self.mark_written(chunk);
        }
        Ok(())
    }

    /// For a persistent overlay, writes the bitmap words of chunks
    /// `first..=last` with their bits set into the file, after their data
    /// (so no bit is ever set in the file for data not written yet).
    fn persist_marks(&self, first: u64, last: u64) -> io::Result<()> {
        let Upper::Persistent { bitmap_at } = self.kind else {
            return Ok(());
        };
        let (from, to) = ((first / 64) as usize, (last / 64) as usize);
        let Some(old) = self.written.get(from..=to) else {
            return Ok(());
        };
        let mut words = old.to_vec();
        for chunk in first..=last {
            words[(chunk / 64) as usize - from] |= 1 << (chunk % 64);
        }
        if words == old {
            return Ok(());
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.upper.write_all_at(&bytes, bitmap_at + from as u64 * 8)
    }

    /// Whether writing `offset..end` leaves part of `chunk` that is still
    /// only in the base.
    fn needs_copy_up(&self, chunk: u64, offset: u64, end: u64) -> bool {
        !self.is_written(chunk) && (self.chunk_start(chunk) < offset || self.chunk_end(chunk) > end)
    }

    /// Writes `chunk` to the overlay: base content with the part of `buf`
    /// (which starts at `offset`) that falls into it laid over.
    fn copy_up(&mut self, chunk: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        let (start, end) = (self.chunk_start(chunk), self.chunk_end(chunk));
        let mut merged = vec![0u8; (end - start) as usize];
        self.base.read_at(&mut merged, start)?;
        let from = start.max(offset);
        let to = end.min(offset + buf.len() as u64);
        merged[(from - start) as usize..(to - start) as usize]
            .copy_from_slice(&buf[(from - offset) as usize..(to - offset) as usize]);
        self.upper.write_all_at(&merged, start)
    }
}

/// Calls `f` with each run `start..end` of consecutive chunks set in
/// `bitmap`, in order, looking at the first `chunks` bits only.
pub(crate) fn for_each_run<E>(
    bitmap: &[u64],
    chunks: u64,
    mut f: impl FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let bit = |c: u64| {
        bitmap
            .get((c / 64) as usize)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    };
    let mut chunk = 0;
    let mut run_start = None;
    while chunk < chunks {
        // Whole words that cannot end or start a run are skipped: a large,
        // mostly untouched disk has mostly zero words.
        if chunk % 64 == 0 {
            let word = bitmap.get((chunk / 64) as usize).copied().unwrap_or(0);
            let skip = if run_start.is_none() {
                word == 0
            } else {
                word == u64::MAX
            };
            if skip {
                chunk = (chunk + 64).min(chunks);
                continue;
            }
        }
        match (bit(chunk), run_start) {
            (true, None) => run_start = Some(chunk),
            (false, Some(start)) => {
                f(start, chunk)?;
                run_start = None;
            }
            _ => {}
        }
        chunk += 1;
    }
    if let Some(start) = run_start {
        f(start, chunks)?;
    }
    Ok(())
}

/// The overlay part of a saved block device: the written chunks, never
/// the base image (restoring needs the same image).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOverlay {
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// One bit per chunk, set when the chunk was written: bit `c % 64` of
    /// the little-endian 64-bit word `c / 64`, for
    /// `ceil(ceil(disk size / chunk size) / 64)` words.
    #[serde(with = "serde_bytes")]
    pub bitmap: Vec<u8>,
    /// The bytes of every written chunk, in chunk order (the disk's last
    /// chunk may be short).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Lengths only: the chunks are megabytes.
impl fmt::Debug for SavedOverlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SavedOverlay")
            .field("chunk_size", &self.chunk_size)
            .field("bitmap_bytes", &self.bitmap.len())
            .field("data_bytes", &self.data.len())
            .finish()
    }
}

/// A [`SavedOverlay`], checked against a disk but not yet applied (so a
/// corrupt state changes nothing).
pub struct SavedChunks<'a> {
    chunk_size: u64,
    bitmap: Vec<u64>,
    count: u64,
    data: &'a [u8],
}

impl SavedOverlay {
    /// Checks that this overlay fits a disk of `size` bytes. The chunk size
    /// comes from the state; it decides the bitmap's length, so it must be
    /// one an [`Overlay`] could have (a power of two of at least 512 bytes).
    pub fn check(&self, size: u64) -> Result<SavedChunks<'_>, SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid {
            device: "block",
            reason,
        };
        let chunk_size = self.chunk_size;
        if !chunk_size.is_power_of_two() || chunk_size < 512 {
            return Err(invalid(format!(
                "overlay chunk size {chunk_size} is not a power of two of at least 512"
            )));
        }
        let chunks = size.div_ceil(chunk_size);
        let words = chunks.div_ceil(64);
        if !self.bitmap.len().is_multiple_of(8) {
            return Err(invalid(format!(
                "the overlay bitmap is {} bytes, not whole 64-bit words",
                self.bitmap.len()
            )));
        }
        let saved_words = (self.bitmap.len() / 8) as u64;
        if saved_words != words {
            return Err(invalid(format!(
                "the overlay bitmap has {saved_words} words; a {size}-byte disk in \
                 {chunk_size}-byte chunks needs {words}"
            )));
        }
        if words * 8 > MAX_BITMAP_BYTES {
            return Err(invalid(format!(
                "a {size}-byte disk needs too many {chunk_size}-byte overlay chunks"
            )));
        }
        let mut bitmap = Vec::new();
        bitmap
            .try_reserve_exact(words as usize)
            .map_err(|e| invalid(format!("cannot hold the overlay bitmap: {e}")))?;
        bitmap.extend(self.bitmap.chunks_exact(8).map(|w| {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            u64::from_le_bytes(word)
        }));
        // Bits past the last chunk would make two encodings of one state.
        if !chunks.is_multiple_of(64) {
            let tail = bitmap.last().copied().unwrap_or(0) >> (chunks % 64);
            if tail != 0 {
                return Err(invalid(
                    "the overlay bitmap marks chunks past the end of the disk".into(),
                ));
            }
        }
        let count: u64 = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        let mut data_len = 0u64;
        let _ = for_each_run(&bitmap, chunks, |start, end| -> Result<(), ()> {
            data_len += (end * chunk_size).min(size) - start * chunk_size;
            Ok(())
        });
        if data_len != self.data.len() as u64 {
            return Err(invalid(format!(
                "the written chunks are {} bytes, the bitmap marks {data_len}",
                self.data.len()
            )));
        }
        Ok(SavedChunks {
            chunk_size,
            bitmap,
            count,
            data: &self.data,
        })
    }
}

impl SavedChunks<'_> {
    /// How many chunks the saved overlay had written.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Snapshots: the overlay's written chunks go into the state, the base
/// image never does.
impl Overlay {
    /// The written chunks (and which they are), read from the overlay file.
    pub fn save(&self) -> Result<SavedOverlay, SnapshotError> {
        let chunks = self.size.div_ceil(self.chunk_size);
        let mut data_len = 0u64;
        let _ = for_each_run(&self.written, chunks, |start, end| -> Result<(), ()> {
            data_len += self.chunk_end(end - 1) - self.chunk_start(start);
            Ok(())
        });
        let io_err = |what: String, source| SnapshotError::Io {
            device: "block",
            what,
            source,
        };
        let mut data = Vec::new();
        usize::try_from(data_len)
            .ok()
            .and_then(|n| data.try_reserve_exact(n).ok())
            .ok_or_else(|| {
                io_err(
                    format!("cannot hold the {data_len} bytes the guest wrote in memory"),
                    io::ErrorKind::OutOfMemory.into(),
                )
            })?;
        for_each_run(&self.written, chunks, |start, end| {
            let (from, to) = (self.chunk_start(start), self.chunk_end(end - 1));
            let at = data.len();
            data.resize(at + (to - from) as usize, 0);
            self.upper
                .read_exact_at(&mut data[at..], from)
                .map_err(|e| {
                    io_err(
                        format!("cannot read the overlay at {from}..{to} for the snapshot"),
                        e,
                    )
                })
        })?;
        Ok(SavedOverlay {
            chunk_size: self.chunk_size,
            bitmap: self.written.iter().flat_map(|w| w.to_le_bytes()).collect(),
            data,
        })
    }

    /// Writes saved chunks into this overlay, which must be fresh (nothing
    /// written yet) and have the chunk size of the saved one.
    pub fn restore(&mut self, saved: SavedChunks<'_>) -> Result<(), SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid {
            device: "block",
            reason,
        };
        if self.written_count != 0 {
            return Err(invalid(format!(
                "the overlay already holds {} written chunks; a restore needs a fresh device",
                self.written_count
            )));
        }
        if saved.chunk_size != self.chunk_size || saved.bitmap.len() != self.written.len() {
            return Err(invalid(format!(
                "the saved overlay uses {}-byte chunks, this one {}-byte chunks",
                saved.chunk_size, self.chunk_size
            )));
        }
        let chunks = self.size.div_ceil(self.chunk_size);
        let mut offset = 0usize;
        for_each_run(&saved.bitmap, chunks, |start, end| {
            let (from, to) = (self.chunk_start(start), self.chunk_end(end - 1));
            let len = (to - from) as usize;
            // `check` made sure the data is exactly what the runs need.
            let part = saved.data.get(offset..offset + len).ok_or_else(|| {
                invalid("the written chunks are shorter than the bitmap says".into())
            })?;
            self.upper
                .write_all_at(part, from)
                .map_err(|source| SnapshotError::Io {
                    device: "block",
                    what: format!(
                        "cannot write the restored chunks at {from}..{to} to the overlay"
                    ),
                    source,
                })?;
            offset += len;
            Ok(())
        })?;
        if let Upper::Persistent { bitmap_at } = self.kind {
            let bytes: Vec<u8> = saved.bitmap.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.upper
                .write_all_at(&bytes, bitmap_at)
                .map_err(|source| SnapshotError::Io {
                    device: "block",
                    what: "cannot write the restored bitmap to the layer".into(),
                    source,
                })?;
        }
        self.written = saved.bitmap;
        self.written_count = saved.count;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
