//! The layer file of a cache volume: what a guest wrote to the disk, kept
//! after its VM is gone, so the runner can merge it into a new version of
//! the cache's image.
//!
//! A layer for a disk of `size` bytes (a multiple of 512), with chunks of
//! `C = `[`OVERLAY_CHUNK_SIZE`] bytes, is one file:
//!
//! - bytes `[0, size)`: chunk data, each chunk at its own offset (sparse:
//!   unwritten chunks are holes);
//! - at offset `size`, the bitmap: `ceil(ceil(size / C) / 64)`
//!   little-endian u64 words; bit `i % 64` of word `i / 64` set means chunk
//!   `i` lives in the layer, whole (a partial write first copied the rest
//!   of the chunk up from the base).
//!
//! The device ([`DiskMode::Layer`](super::DiskMode::Layer), a persistent
//! [`Overlay`](super::Overlay)) writes a chunk's data first and its bitmap
//! word after, so no bit is ever set for data not written yet.
//!
//! [`written_ranges`] reads it back. The file's content is the guest's
//! doing only in its data part (the device range-checks every write), but
//! it is read as hostile all the same: its length is checked against the
//! disk's before anything is read, and nothing is allocated beyond the
//! bitmap the disk's size calls for.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::config::{OVERLAY_CHUNK_SIZE, SECTOR_SIZE};
use super::overlay::{bitmap_words, for_each_run};

/// The length of a complete layer of a disk of `disk_size` bytes: the
/// chunk data, then the bitmap.
pub fn layer_len(disk_size: u64) -> io::Result<u64> {
    let words = bitmap_words(disk_size, OVERLAY_CHUNK_SIZE)?;
    Ok(disk_size + words * 8)
}

/// The byte ranges of the disk that `layer` holds (the chunks the guest
/// wrote): sorted, adjacent chunks coalesced, each clamped to `disk_size`.
///
/// - An empty file holds nothing: the device never opened it (its VM did
///   not start).
/// - Any other length than a complete layer's ([`layer_len`]) is an
///   `InvalidData` error: the file is not the layer of a disk this size
///   (a short file, a layer of another disk, a huge file), and its bitmap
///   cannot be found. Nothing is read then.
/// - Bits past the disk's last chunk (the device never sets them) are
///   ignored: they name no part of the disk.
///
/// `disk_size` must be a multiple of 512 (`InvalidInput` otherwise); at
/// most 64 MiB of bitmap is read (a 2 TiB disk), larger disks are refused.
pub fn written_ranges(layer: &File, disk_size: u64) -> io::Result<Vec<Range<u64>>> {
    if !disk_size.is_multiple_of(SECTOR_SIZE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a disk of {disk_size} bytes is not whole {SECTOR_SIZE}-byte sectors"),
        ));
    }
    let words = bitmap_words(disk_size, OVERLAY_CHUNK_SIZE)?;
    let expected = disk_size + words * 8;
    let len = layer.metadata()?.len();
    if len == 0 {
        return Ok(Vec::new());
    }
    if len != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the layer file is {len} bytes; the layer of a {disk_size}-byte disk is \
                 {expected}"
            ),
        ));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(words as usize * 8)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
    bytes.resize(words as usize * 8, 0);
    layer.read_exact_at(&mut bytes, disk_size)?;
    let bitmap: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect();
    let chunks = disk_size.div_ceil(OVERLAY_CHUNK_SIZE);
    let mut ranges = Vec::new();
    let _ = for_each_run(&bitmap, chunks, |start, end| -> Result<(), ()> {
        let from = start * OVERLAY_CHUNK_SIZE;
        let to = end.saturating_mul(OVERLAY_CHUNK_SIZE).min(disk_size);
        ranges.push(from..to);
        Ok(())
    });
    Ok(ranges)
}

#[cfg(test)]
mod tests;
