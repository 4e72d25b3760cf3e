//! A log file with a size cap that keeps its head and a rolling tail.
//!
//! A guest controls how much it prints to its console and a job how much
//! its steps print, so every log the runner writes for them is one of
//! these: the VMM's serial console, QEMU's serial pump, and job logs.
//!
//! Past the cap, the file holds the first half of the limit as written,
//! then a marker line `[runner: N bytes omitted here]`, then the most recent
//! output. The file is a plain, readable log at every moment (so its last
//! lines can be read while the guest runs) because the tail is kept by
//! periodic compaction rather than as a ring: once the file would exceed
//! the limit, its last quarter-limit is moved up behind the marker and the
//! file truncated. Each byte is thus copied at most once more, and the file
//! never exceeds the limit.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes a log may take on disk unless configured otherwise.
pub const DEFAULT_LOG_LIMIT: u64 = 64 * 1024 * 1024;
/// Smaller limits are raised to this, so that head, marker and tail all fit.
pub const MIN_LOG_LIMIT: u64 = 1024;

/// `[runner: 123 bytes omitted here]`, on a line of its own.
pub fn omitted_marker(omitted: u64) -> String {
    format!("\n[runner: {omitted} bytes omitted here]\n")
}

/// A file that never grows beyond its limit (see the module comment).
#[derive(Debug)]
pub struct CappedLog {
    file: File,
    /// The most the file may hold.
    limit: u64,
    /// Bytes at the start that are never dropped.
    head: u64,
    /// Bytes of recent output kept at each compaction.
    keep: u64,
    /// The file's current length; all writes go to the end.
    len: u64,
    /// Bytes dropped so far.
    omitted: u64,
    /// Where the tail starts (after head and marker) once compacted.
    tail_start: Option<u64>,
}

impl CappedLog {
    /// Creates (truncates) `path`. `None` means no limit.
    pub fn create(path: &Path, limit: Option<u64>) -> io::Result<CappedLog> {
        // Readable too: compaction reads the tail back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(CappedLog::new(file, limit))
    }

    /// Takes over an empty file opened for reading and writing.
    pub fn new(file: File, limit: Option<u64>) -> CappedLog {
        let limit = limit.unwrap_or(u64::MAX).max(MIN_LOG_LIMIT);
        CappedLog {
            file,
            limit,
            head: limit / 2,
            keep: limit / 4,
            len: 0,
            omitted: 0,
            tail_start: None,
        }
    }

    /// Bytes dropped so far.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Rewrites everything after the head as marker + the last `keep`
    /// bytes of (current tail ++ `incoming`).
    fn compact(&mut self, incoming: &[u8]) -> io::Result<()> {
        let tail_start = self.tail_start.unwrap_or(self.head);
        let old_tail = self.len - tail_start;
        let total = old_tail + incoming.len() as u64;
        let keep = self.keep.min(total);
        self.omitted += total - keep;
        let marker = omitted_marker(self.omitted);
        let dest = self.head + marker.len() as u64;
        // What survives of the old tail, and of `incoming`.
        let from_file = keep.saturating_sub(incoming.len() as u64);
        let from_incoming = &incoming[incoming.len() - (keep - from_file) as usize..];
        // Move the surviving old bytes up. The source always lies beyond
        // the destination (the file is past three quarters of the limit,
        // the destination just past half), so a forward copy is safe.
        let mut src = self.len - from_file;
        debug_assert!(from_file == 0 || src >= dest);
        let mut buf = vec![0u8; 64 * 1024];
        let mut to = dest;
        let end = self.len;
        while src < end {
            let n = buf.len().min((end - src) as usize);
            self.file.read_exact_at(&mut buf[..n], src)?;
            self.file.write_all_at(&buf[..n], to)?;
            src += n as u64;
            to += n as u64;
        }
        self.file.write_all_at(marker.as_bytes(), self.head)?;
        self.file.write_all_at(from_incoming, to)?;
        self.len = to + from_incoming.len() as u64;
        self.file.set_len(self.len)?;
        self.tail_start = Some(dest);
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        // The head is written as it comes, and never moved.
        if self.len < self.head && self.tail_start.is_none() {
            let n = rest.len().min((self.head - self.len) as usize);
            self.append(&rest[..n])?;
            rest = &rest[n..];
        }
        if rest.is_empty() {
            return Ok(buf.len());
        }
        if self.len + rest.len() as u64 <= self.limit {
            self.append(rest)?;
        } else {
            self.compact(rest)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(limit: u64) -> (tempfile::TempDir, std::path::PathBuf, CappedLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = CappedLog::create(&path, Some(limit)).unwrap();
        (dir, path, log)
    }

    #[test]
    fn below_the_limit_everything_is_kept() {
        let (_dir, path, mut log) = capped(4096);
        log.write_all(b"hello\n").unwrap();
        log.write_all(b"world\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\nworld\n");
        assert_eq!(log.omitted(), 0);
    }

    #[test]
    fn past_the_limit_the_head_and_the_latest_tail_are_kept() {
        let limit = 4096;
        let (_dir, path, mut log) = capped(limit);
        let mut all = Vec::new();
        for i in 0..5000u32 {
            let line = format!("line {i}\n");
            all.extend_from_slice(line.as_bytes());
            log.write_all(line.as_bytes()).unwrap();
            // The cap holds at every moment, not only at the end.
            assert!(std::fs::metadata(&path).unwrap().len() <= limit);
        }
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(text.starts_with(std::str::from_utf8(&all[..2048]).unwrap()));
        assert!(text.ends_with("line 4999\n"), "{text}");
        let marker = omitted_marker(log.omitted());
        assert!(text.contains(&marker), "{text}");
        // Every byte is either kept or counted as omitted.
        let kept = text.len() as u64 - marker.len() as u64;
        assert_eq!(kept + log.omitted(), all.len() as u64);
        // What follows the marker is exactly the end of the stream.
        let after = &text[text.find(&marker).unwrap() + marker.len()..];
        assert!(std::str::from_utf8(&all).unwrap().ends_with(after));
        assert!(after.len() as u64 >= limit / 4);
    }

    #[test]
    fn one_huge_write_is_cut_too() {
        let (_dir, path, mut log) = capped(1024);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        log.write_all(&big).unwrap();
        let kept = std::fs::read(&path).unwrap();
        assert!(kept.len() <= 1024);
        assert_eq!(&kept[..512], &big[..512]);
        assert_eq!(&kept[kept.len() - 256..], &big[big.len() - 256..]);
        assert_eq!(log.omitted(), 100_000 - 512 - 256);
    }

    #[test]
    fn no_limit_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = CappedLog::create(&path, None).unwrap();
        let chunk = vec![b'x'; 10_000];
        for _ in 0..10 {
            log.write_all(&chunk).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
    }
}
