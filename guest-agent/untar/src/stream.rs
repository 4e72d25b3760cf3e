//! Guards on the raw stream, below the tar crate.
//!
//! [`ExtensionCap`]: the tar crate reads a GNU long name or link name
//! ('L', 'K') and a PAX extension header ('x', 'g') whole into memory,
//! however large its header says it is, before we see the entry it belongs
//! to; a hostile stream could make us allocate a whole budget that way.
//! The cap follows the stream's 512-byte framing as it passes through and
//! fails the read that would deliver an extension header larger than
//! [`MAX_EXTENSION`]; ordinary file data passes through untouched and
//! uncopied.
//!
//! [`Meter`]: entries are charged from their headers, but a stream can
//! also be long without them (padding, data of entries that are skipped,
//! whatever follows the end of the archive, a decompressor's output for
//! ever). The meter allows what the rest of the budget can justify.

use std::io::{self, Read};

/// Largest extension header accepted. PATH_MAX is 4096; PAX records for
/// one entry (path, linkpath, times, xattrs) stay far below this.
pub const MAX_EXTENSION: u64 = 64 * 1024;

const BLOCK: u64 = 512;

/// A reader that checks every tar header passing through it.
pub(crate) struct ExtensionCap<R> {
    inner: R,
    /// Stream offset of the next byte read.
    offset: u64,
    /// Stream offset of the next header block.
    next_header: u64,
    header: [u8; BLOCK as usize],
}

impl<R: Read> ExtensionCap<R> {
    pub(crate) fn new(inner: R) -> Self {
        ExtensionCap {
            inner,
            offset: 0,
            next_header: 0,
            header: [0; BLOCK as usize],
        }
    }

    /// Takes in `bytes`, read at the current offset: copies what falls in
    /// the next header block and, once that block is whole, checks it and
    /// moves on to the one after its data.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // Saturating: a garbage size puts the next header out of reach
            // (the tar crate then fails the stream on its own checks).
            let header_end = self.next_header.saturating_add(BLOCK);
            if self.offset < self.next_header {
                // File data: skip to the next header.
                let skip = (self.next_header - self.offset).min(bytes.len() as u64);
                self.offset += skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            let at = (self.offset - self.next_header) as usize;
            let take = ((header_end - self.offset) as usize).min(bytes.len());
            self.header[at..at + take].copy_from_slice(&bytes[..take]);
            self.offset += take as u64;
            bytes = &bytes[take..];
            if self.offset == header_end {
                let data = checked_data_size(&self.header)?;
                let padded = data.div_ceil(BLOCK).saturating_mul(BLOCK);
                self.next_header = header_end.saturating_add(padded);
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for ExtensionCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

/// Counts the raw bytes read and fails once more than `left` are asked for.
pub(crate) struct Meter<R> {
    inner: R,
    left: u64,
    tripped: bool,
}

impl<R: Read> Meter<R> {
    pub(crate) fn new(inner: R, allowance: u64) -> Self {
        Meter {
            inner,
            left: allowance,
            tripped: false,
        }
    }

    /// Whether a read failed for want of allowance.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped
    }
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
                    Err(io::Error::other("the stream exceeds the limits"))
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

/// The size of the data after `header`, refusing an oversized extension.
/// An all-zero block (the end-of-archive marker) has none.
fn checked_data_size(header: &[u8; BLOCK as usize]) -> io::Result<u64> {
    let size = size_field(&header[124..136]);
    let kind = header[156];
    if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a tar extension header ('{}') of {size} bytes; at most {MAX_EXTENSION} are accepted",
                kind as char
            ),
        ));
    }
    // An old GNU sparse header whose map goes on in extension blocks would
    // put our framing out of step. Our agent never sends one, and image
    // layers are written by tools that use PAX for sparse files.
    if kind == b'S' && header[482] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a GNU sparse file with an extended sparse map; not accepted",
        ));
    }
    Ok(size)
}

/// A header's size field: octal text, or GNU base-256 when the top bit of
/// the first byte is set. Unparsable sizes count as huge, so that they
/// cannot be used to slip an extension past the check.
fn size_field(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .try_fold(u64::from(field[0] & 0x7f), |acc, &b| {
                acc.checked_mul(256).map(|v| v | u64::from(b))
            })
            .unwrap_or(u64::MAX);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return 0;
    }
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| u64::from_str_radix(t, 8).ok())
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&[u8; 1], u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, size) in entries {
            let mut header = [0u8; 512];
            header[..4].copy_from_slice(b"name");
            header[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            header[156] = kind[0];
            out.extend_from_slice(&header);
            out.resize(out.len() + size.div_ceil(512) as usize * 512, b'z');
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// Reads everything through the cap, `chunk` bytes at a time.
    fn drain(bytes: &[u8], chunk: usize) -> io::Result<usize> {
        let mut cap = ExtensionCap::new(bytes);
        let mut buf = vec![0u8; chunk];
        let mut total = 0;
        loop {
            match cap.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    #[test]
    fn ordinary_archives_pass_whatever_the_read_sizes() {
        let bytes = archive(&[(b"0", 5_000_000), (b"L", 300), (b"0", 1), (b"x", 600)]);
        for chunk in [1, 7, 512, 513, 65536] {
            assert_eq!(drain(&bytes, chunk).unwrap(), bytes.len(), "chunk {chunk}");
        }
    }

    #[test]
    fn an_oversized_long_name_or_pax_header_is_refused() {
        for kind in [b"L", b"K", b"x", b"g"] {
            let bytes = archive(&[(b"0", 10), (kind, MAX_EXTENSION + 1), (b"0", 1)]);
            let err = drain(&bytes, 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("at most 65536"), "{err}");
        }
    }

    /// Found by the agent's test of a garbage stream: an unparsable size
    /// of an ordinary entry overflowed the offset of the next header.
    #[test]
    fn a_garbage_size_is_passed_on_without_overflow() {
        let bytes = [0x55u8; 3000];
        for chunk in [1, 512, 4096] {
            assert_eq!(drain(&bytes, chunk).unwrap(), bytes.len());
        }
    }

    #[test]
    fn base256_and_garbage_sizes_cannot_hide_an_extension() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 0x10;
        assert_eq!(size_field(&field), 16);
        assert_eq!(size_field(b"0000000001\0\0"), 1);
        assert_eq!(size_field(b"99999999999\0"), u64::MAX);
        let mut header = [0u8; 512];
        header[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
        header[156] = b'x';
        assert!(checked_data_size(&header).is_err());
    }
}
