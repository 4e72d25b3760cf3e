//! How much of a guest's report is kept: file size, XML depth, cases per
//! job, the length of each text, and the range of a test's time.

use std::path::Path;

use crate::results::Output;

/// Largest report file parsed (16 MiB); a bigger one is an error testcase.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Deepest element nesting accepted in a JUnit file. Real reports nest
/// three or four levels (testsuites, testsuite, testcase, failure).
pub const MAX_DEPTH: usize = 64;
/// Most testcases imported for one job; the rest are left out with a note.
pub const MAX_CASES_PER_JOB: usize = 100_000;

/// A test's time from a report. Negative, infinite and absurd values (more
/// than a year) are dropped: a guest's `1e300` must not become a panic.
pub(super) fn seconds(seconds: f64) -> Option<std::time::Duration> {
    (seconds.is_finite() && (0.0..=31_536_000.0).contains(&seconds))
        .then(|| std::time::Duration::from_secs_f64(seconds))
}

/// Cuts texts from a report like the runner cuts step output: head and
/// tail of `limit / 2` bytes each, the omission note pointing at the
/// report file on the host.
pub struct TextLimit<'a> {
    pub limit: usize,
    pub source: &'a Path,
}

impl TextLimit<'_> {
    pub fn output(&self, text: &str) -> Output {
        let bytes = text.as_bytes();
        if bytes.len() <= self.limit {
            return Output::from_bytes(bytes);
        }
        let half = self.limit / 2;
        Output {
            head: bytes[..half].to_vec(),
            tail: bytes[bytes.len() - (self.limit - half)..].to_vec(),
            total_bytes: bytes.len() as u64,
            truncated: true,
            log_path: Some(self.source.to_path_buf()),
        }
    }

    /// A one-line message, at most `limit` bytes (cut on a char boundary).
    pub fn message(&self, text: &str) -> String {
        let line = text.trim();
        if line.len() <= self.limit {
            return line.to_string();
        }
        let mut end = self.limit;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    }
}
