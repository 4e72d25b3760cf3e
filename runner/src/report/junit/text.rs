//! What text goes into the XML: cleaned of what a terminal would not show,
//! tabs protected from quick-junit, output cut to the options' limits.

use crate::report::text::clean_text;
use crate::results::{omission_note, JobResult, Output};

/// Stands in for `\t` while text passes through quick-junit, which would
/// drop it. Plane-15 private use: no tool prints it, and [`xml_text`]
/// removes it from the input first.
pub const TAB_PLACEHOLDER: char = '\u{F0009}';

#[derive(Clone, Debug)]
pub struct JunitOptions {
    /// Most bytes of each `<system-out>` / `<system-err>`; beyond that the
    /// middle is cut and a note points at the full log.
    pub output_limit: usize,
    /// Lines of output quoted in a `<failure>` / `<error>` body.
    pub failure_tail_lines: usize,
}

impl Default for JunitOptions {
    fn default() -> Self {
        JunitOptions {
            output_limit: 64 * 1024,
            failure_tail_lines: 50,
        }
    }
}

/// Failures of `allow_failure` jobs stay failures, marked as allowed.
pub fn message(job: &JobResult, text: &str) -> String {
    if job.allow_failure {
        format!("allowed failure: {text}")
    } else {
        text.to_string()
    }
}

/// Output text cut to about `limit` bytes: head, a note saying how much was
/// left out and where the full log is, tail.
pub fn limited(output: &Output, limit: usize) -> String {
    let kept = output.head.len() + output.tail.len();
    if kept <= limit {
        return output.text();
    }
    let half = limit / 2;
    let head = &output.head[..half.min(output.head.len())];
    let source_tail: &[u8] = if output.truncated {
        &output.tail
    } else {
        &output.head
    };
    let tail = &source_tail[source_tail.len().saturating_sub(limit - half)..];
    let omitted = output.total_bytes - (head.len() + tail.len()) as u64;
    let mut text = String::from_utf8_lossy(head).into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&omission_note(omitted, output.log_path.as_deref()));
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(tail));
    text
}

/// Text content: cleaned, tabs protected from quick-junit.
pub fn xml_text(text: &str) -> String {
    clean_text(&text.replace(TAB_PLACEHOLDER, "")).replace('\t', &TAB_PLACEHOLDER.to_string())
}

/// Attribute values: cleaned and on one line (XML parsers turn newlines in
/// attributes into spaces anyway).
pub fn xml_attribute(text: &str) -> String {
    clean_text(text)
        .split(['\n', '\t'])
        .filter(|part| !part.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
