//! Step output with flat memory: an [`OutputCapture`] keeps the first and
//! last bytes of a stream in memory and writes all of it to the job's log.
//!
//! A test that prints gigabytes must not take the runner's memory with it,
//! yet the failure report needs the *end* of the output (where the panic
//! is) and the beginning (what was being run). So the capture keeps a head
//! and a tail of at most half the limit each, counts what it dropped, and
//! the full stream goes to the log file on disk.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use capped_log::CappedLog;

/// Bytes of each stream of each step kept in memory, by default.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

/// What is kept of one stream of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The first bytes (all of them when not truncated).
    pub head: Vec<u8>,
    /// The last bytes; empty unless truncated.
    pub tail: Vec<u8>,
    /// Bytes the stream had in all.
    pub total_bytes: u64,
    /// Whether bytes between `head` and `tail` were dropped.
    pub truncated: bool,
    /// The job log that holds the complete stream, if it was written.
    pub log_path: Option<PathBuf>,
}

impl Output {
    /// All of `bytes`, untruncated.
    pub fn from_bytes(bytes: &[u8]) -> Output {
        Output {
            head: bytes.to_vec(),
            total_bytes: bytes.len() as u64,
            ..Output::default()
        }
    }

    /// The file at `path` as a capture with this `limit` would have kept
    /// it: all of it if it fits, else its first and last bytes. Reads at
    /// most `limit` bytes, however large the file (a service's log is
    /// only capped by `--log-limit`).
    pub fn read_file(path: &Path, limit: usize) -> io::Result<Output> {
        let mut file = File::open(path)?;
        let total_bytes = file.metadata()?.len();
        let mut head = Vec::new();
        let mut tail = Vec::new();
        let truncated = total_bytes > limit as u64;
        if truncated {
            let tail_limit = limit - limit / 2;
            (&mut file)
                .take((limit / 2) as u64)
                .read_to_end(&mut head)?;
            file.seek(SeekFrom::Start(total_bytes - tail_limit as u64))?;
            file.take(tail_limit as u64).read_to_end(&mut tail)?;
            trim_partial_utf8(&mut head, &mut tail);
        } else {
            file.take(limit as u64).read_to_end(&mut head)?;
        }
        Ok(Output {
            head,
            tail,
            total_bytes,
            truncated,
            log_path: Some(path.to_path_buf()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.total_bytes == 0
    }

    /// Bytes dropped between head and tail.
    pub fn omitted_bytes(&self) -> u64 {
        self.total_bytes
            .saturating_sub((self.head.len() + self.tail.len()) as u64)
    }

    /// The kept text, with a marker where bytes were dropped that says how
    /// many and where the full output is. Invalid UTF-8 becomes U+FFFD.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.truncated {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&omission_note(
                self.omitted_bytes(),
                self.log_path.as_deref(),
            ));
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&self.tail));
        }
        text
    }

    /// The last `n` lines (from the tail when truncated), without their
    /// line ends. A trailing newline does not make an empty last line.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let bytes: &[u8] = if self.truncated {
            // The tail starts mid-line: drop the fragment.
            match self.tail.iter().position(|b| *b == b'\n') {
                Some(newline) => &self.tail[newline + 1..],
                None => &self.tail,
            }
        } else {
            &self.head
        };
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|line| line.to_string())
            .collect()
    }
}

/// `[... 1234567 bytes omitted; full output in out/job.log ...]`
pub fn omission_note(omitted: u64, log: Option<&Path>) -> String {
    match log {
        Some(path) => format!(
            "[... {omitted} bytes omitted; full output in {} ...]",
            path.display()
        ),
        None => format!("[... {omitted} bytes omitted ...]"),
    }
}

/// A job's complete log: every step's stdout and stderr as they arrived,
/// with the runner's own notes between steps. Cheap to clone; clones write
/// to the same file. Writing is best effort: after the first error (disk
/// full) the log is marked incomplete and writing stops, the run goes on.
/// A guest can print without end, so the file may be capped: past the cap
/// it keeps its head and a rolling tail (see [`CappedLog`]).
#[derive(Clone, Debug)]
pub struct JobLog {
    path: PathBuf,
    file: Arc<Mutex<BufWriter<CappedLog>>>,
    failed: Arc<AtomicBool>,
}

impl JobLog {
    /// Creates (truncates) the log file, and its directory if needed.
    pub fn create(path: impl Into<PathBuf>) -> io::Result<JobLog> {
        JobLog::with_limit(path, None)
    }

    /// Like [`JobLog::create`], never growing past `limit` bytes.
    pub fn with_limit(path: impl Into<PathBuf>, limit: Option<u64>) -> io::Result<JobLog> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = CappedLog::create(&path, limit)?;
        Ok(JobLog {
            path,
            file: Arc::new(Mutex::new(BufWriter::new(file))),
            failed: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every write so far succeeded.
    pub fn complete(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    /// Appends raw bytes.
    pub fn write(&self, bytes: &[u8]) {
        self.with_file(|file| file.write_all(bytes));
    }

    /// Appends a line of the runner's own, like `==> step 2: make test`.
    pub fn note(&self, line: &str) {
        self.with_file(|file| writeln!(file, "{line}"));
    }

    pub fn flush(&self) {
        self.with_file(|file| file.flush());
    }

    fn with_file(&self, op: impl FnOnce(&mut BufWriter<CappedLog>) -> io::Result<()>) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        // A poisoned lock only means another writer panicked mid-write; the
        // file itself is still usable.
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Err(err) = op(&mut file) {
            tracing::warn!(log = %self.path.display(), %err, "job log incomplete");
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// A capture for one stream of one step that also writes to this log.
    pub fn capture(&self, limit: usize) -> OutputCapture {
        OutputCapture {
            log: Some(self.clone()),
            ..OutputCapture::new(limit)
        }
    }
}

/// Streaming sink for one stream of one step: feed chunks with
/// [`OutputCapture::push`] as they arrive, then [`OutputCapture::finish`].
/// Memory stays at most `limit` bytes whatever the stream's size.
#[derive(Debug)]
pub struct OutputCapture {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
    log: Option<JobLog>,
}

impl OutputCapture {
    /// Memory only: keeps at most `limit` bytes (half head, half tail).
    pub fn new(limit: usize) -> OutputCapture {
        let head_limit = limit / 2;
        OutputCapture {
            head_limit,
            tail_limit: limit - head_limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            log: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if let Some(log) = &self.log {
            log.write(chunk);
        }
        self.total += chunk.len() as u64;
        let room = self.head_limit.saturating_sub(self.head.len());
        let (to_head, rest) = chunk.split_at(room.min(chunk.len()));
        self.head.extend_from_slice(to_head);
        if rest.is_empty() {
            return;
        }
        // Only the last `tail_limit` bytes of `rest` can survive.
        let rest = &rest[rest.len().saturating_sub(self.tail_limit)..];
        let overflow = (self.tail.len() + rest.len()).saturating_sub(self.tail_limit);
        self.tail.drain(..overflow);
        self.tail.extend(rest);
    }

    /// Bytes pushed so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Flushes the log and returns what was kept.
    pub fn finish(self) -> Output {
        let log_path = self.log.as_ref().and_then(|log| {
            log.flush();
            log.complete().then(|| log.path().to_path_buf())
        });
        let mut head = self.head;
        let mut tail: Vec<u8> = self.tail.into();
        let truncated = self.total > (head.len() + tail.len()) as u64;
        if !truncated {
            // Everything fits: one contiguous buffer is simpler for readers.
            head.append(&mut tail);
        } else {
            trim_partial_utf8(&mut head, &mut tail);
        }
        Output {
            head,
            tail,
            total_bytes: self.total,
            truncated,
            log_path,
        }
    }
}

/// The cuts may split a UTF-8 character; drop the pieces so the text does
/// not start or end with a replacement character.
fn trim_partial_utf8(head: &mut Vec<u8>, tail: &mut Vec<u8>) {
    if let Err(err) = std::str::from_utf8(head) {
        if err.error_len().is_none() {
            head.truncate(err.valid_up_to());
        }
    }
    // A continuation byte is 0b10xx_xxxx; a character has at most 3 of them.
    let skip = tail
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    tail.drain(..skip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut capture = OutputCapture::new(16);
        capture.push(b"hello ");
        capture.push(b"world\n");
        let out = capture.finish();
        assert_eq!(out.head, b"hello world\n");
        assert!(out.tail.is_empty());
        assert!(!out.truncated);
        assert_eq!(out.total_bytes, 12);
        assert_eq!(out.text(), "hello world\n");
    }

    #[test]
    fn large_output_keeps_head_and_tail_in_flat_memory() {
        let mut capture = OutputCapture::new(10);
        // 1000 chunks of various sizes: memory must stay at the limit.
        let mut all = Vec::new();
        for i in 0..1000u32 {
            let chunk = format!("{i},").repeat((i % 7) as usize);
            all.extend_from_slice(chunk.as_bytes());
            capture.push(chunk.as_bytes());
            assert!(capture.head.len() <= 5 && capture.tail.len() <= 5);
        }
        let out = capture.finish();
        assert!(out.truncated);
        assert_eq!(out.total_bytes, all.len() as u64);
        assert_eq!(out.head, all[..5]);
        assert_eq!(out.tail, all[all.len() - 5..]);
        assert_eq!(out.omitted_bytes(), all.len() as u64 - 10);
        let text = out.text();
        assert!(text.contains(&format!("[... {} bytes omitted ...]", all.len() - 10)));
    }

    #[test]
    fn one_huge_chunk_is_cut_too() {
        let mut capture = OutputCapture::new(8);
        let chunk: Vec<u8> = (0..100u8).collect();
        capture.push(&chunk);
        let out = capture.finish();
        assert_eq!(out.head, [0, 1, 2, 3]);
        assert_eq!(out.tail, [96, 97, 98, 99]);
    }

    #[test]
    fn cuts_do_not_split_characters() {
        let mut capture = OutputCapture::new(6);
        capture.push("ééééééé".as_bytes()); // 14 bytes of 2-byte characters
        capture.push("éé".as_bytes()); // the tail's 3 bytes start mid-character
        let out = capture.finish();
        assert_eq!(String::from_utf8(out.head.clone()).unwrap(), "é");
        assert_eq!(String::from_utf8(out.tail.clone()).unwrap(), "é");
        assert!(!out.text().contains('\u{fffd}'), "{:?}", out.text());
    }

    #[test]
    fn job_log_gets_every_byte_of_every_stream() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::create(dir.path().join("jobs/01-a/job.log")).unwrap();
        log.note("==> step 1: build");
        let mut out = log.capture(4);
        let mut err = log.capture(4);
        out.push(b"out-1\n");
        err.push(b"err-1\n");
        out.push(b"out-2\n");
        let (out, err) = (out.finish(), err.finish());
        assert!(out.truncated);
        assert_eq!(out.log_path.as_deref(), Some(log.path()));
        assert_eq!(err.total_bytes, 6);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text, "==> step 1: build\nout-1\nerr-1\nout-2\n");
        assert!(out.text().contains("full output in"));
    }

    #[test]
    fn a_capped_job_log_keeps_head_and_tail_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::with_limit(dir.path().join("job.log"), Some(4096)).unwrap();
        log.note("==> step 1: spam");
        let mut out = log.capture(64);
        for i in 0..10_000 {
            out.push(format!("spam {i}\n").as_bytes());
        }
        out.finish();
        log.note("==> step 1: ok");
        log.flush();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.len() <= 4096, "{} bytes", text.len());
        assert!(text.starts_with("==> step 1: spam\nspam 0\n"));
        assert!(text.ends_with("spam 9999\n==> step 1: ok\n"), "{text}");
        assert!(text.contains(" bytes omitted here]\n"), "{text}");
    }

    #[test]
    fn a_file_is_read_as_a_capture_would_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.log");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let out = Output::read_file(&path, 20).unwrap();
        assert!(out.truncated);
        assert_eq!((out.head.len(), out.tail.len()), (10, 10));
        assert_eq!(out.total_bytes, text.len() as u64);
        assert!(
            out.text().starts_with("line 0\nlin\n[... "),
            "{}",
            out.text()
        );
        assert!(out.text().ends_with("\nline 999\n"), "{}", out.text());
        assert!(out.text().contains("full output in"));
        assert_eq!(out.last_lines(1), ["line 999"]);
        let whole = Output::read_file(&path, 1 << 20).unwrap();
        assert!(!whole.truncated);
        assert_eq!(whole.text(), text);
        assert!(Output::read_file(&dir.path().join("missing"), 20).is_err());
    }

    #[test]
    fn last_lines_come_from_the_tail() {
        let out = Output::from_bytes(b"a\nb\nc\n");
        assert_eq!(out.last_lines(2), ["b", "c"]);
        assert_eq!(out.last_lines(10), ["a", "b", "c"]);
        let mut capture = OutputCapture::new(16);
        capture.push(b"first\nxxxxxxxxxxxxxxxx\nlast1\nl2\n");
        // The tail is `ast1\nl2\n`; the partial first line is dropped.
        assert_eq!(capture.finish().last_lines(5), ["l2"]);
    }
}
