//! Step output made fit for the HTML report: cleaned (no ANSI sequences, no
//! control characters, valid UTF-8) and cut to a share of one budget for
//! the whole report, so that a thousand failing jobs or one step printing
//! 10 MB still make a file a browser opens at once. The cut keeps the head
//! (what was being run) and a larger tail (where the error is), with a
//! marker saying how much is not shown and where the full log is.

use std::path::Path;

use crate::report::text::clean_text;
use crate::results::Output;

/// Bytes of embedded text (output, serial lines, messages) in one report.
/// The rest of the 5 MB a report of 1,000 jobs may take is for the jobs,
/// steps and timeline.
pub const TOTAL_BUDGET: usize = 2 << 20;
/// Most bytes of one text, when the budget is not the limit.
pub const MAX_EACH: usize = 32 << 10;
/// Bytes of the marker that says how much was cut, without the log's path.
const MARKER_ROOM: usize = 64;
/// Below this a text is not worth quoting; it is replaced by a note.
const MIN_EACH: usize = 512;

/// Shares [`TOTAL_BUDGET`] among the texts of a report.
pub struct Budget {
    remaining: usize,
    each: usize,
    /// Texts left out because the budget was used up.
    pub left_out: usize,
}

impl Budget {
    /// A budget for `texts` texts: each gets an equal share, at most
    /// [`MAX_EACH`] and at least [`MIN_EACH`] while the total lasts.
    pub fn new(total: usize, texts: usize) -> Budget {
        Budget {
            remaining: total,
            each: (total / texts.max(1)).clamp(MIN_EACH, MAX_EACH),
            left_out: 0,
        }
    }

    /// `output` cleaned and cut to this text's share.
    pub fn output(&mut self, output: &Output) -> String {
        let log = output.log_path.as_deref();
        self.take(|limit| excerpt(output, limit, log))
    }

    /// Guest text that is not step output (a message, serial lines).
    pub fn text(&mut self, text: &str) -> String {
        self.output(&Output::from_bytes(text.as_bytes()))
    }

    /// Runs `cut` with this text's limit, shrinking it when the text's
    /// JSON form (where `<` takes six bytes) comes out larger.
    fn take(&mut self, cut: impl Fn(usize) -> String) -> String {
        let mut limit = self.each.min(self.remaining);
        if limit < MIN_EACH {
            self.left_out += 1;
            return "[output not shown: this report's space for output is used up; \
                    see the job log]"
                .to_string();
        }
        let share = limit;
        let mut text = cut(limit);
        for _ in 0..3 {
            let cost = json_cost(&text);
            if cost <= share {
                break;
            }
            // Scale by how much this text grows in JSON (up to 6 times,
            // for `<`), aiming at the share again.
            limit = (limit as u128 * share as u128 / cost as u128) as usize;
            text = cut(limit.max(MIN_EACH / 8));
        }
        self.remaining = self.remaining.saturating_sub(json_cost(&text));
        text
    }
}

/// Bytes `text` takes in the embedded JSON.
pub fn json_cost(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'<' => 5,
                b'"' | b'\\' | b'\n' | b'\t' => 1,
                _ => 0,
            })
            .sum::<usize>()
}

/// The shown text of `output` in about `limit` bytes: all of it if it fits,
/// else its first quarter and last three quarters around a marker.
pub fn excerpt(output: &Output, limit: usize, log: Option<&Path>) -> String {
    let kept = output.head.len() + output.tail.len();
    if kept <= limit {
        return clean_text(&output.text());
    }
    // The marker takes some of the limit too.
    let limit = limit.saturating_sub(MARKER_ROOM + log.map_or(0, |p| p.as_os_str().len()));
    let head_len = char_start(&output.head, (limit / 4).min(output.head.len()));
    let head = &output.head[..head_len];
    // The end: from the tail when the capture kept one, else from the head.
    let end: &[u8] = if output.truncated {
        &output.tail
    } else {
        &output.head[head_len..]
    };
    let want = (limit - head_len).min(end.len());
    let from = char_start_forward(end, end.len() - want);
    let tail = &end[from..];
    let shown = (head.len() + tail.len()) as u64;
    let omitted = output.total_bytes.saturating_sub(shown);
    let mut text = clean_text(&String::from_utf8_lossy(head));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&match log {
        Some(log) => format!(
            "[... {omitted} bytes not shown here; full output in {} ...]\n",
            log.display()
        ),
        None => format!("[... {omitted} bytes not shown here ...]\n"),
    });
    text.push_str(&clean_text(&String::from_utf8_lossy(tail)));
    text
}

/// `at`, moved back to the start of the UTF-8 character it falls in.
fn char_start(bytes: &[u8], mut at: usize) -> usize {
    while at > 0 && at < bytes.len() && is_continuation(bytes[at]) {
        at -= 1;
    }
    at
}

/// `at`, moved forward past a partial UTF-8 character.
fn char_start_forward(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && is_continuation(bytes[at]) {
        at += 1;
    }
    at
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}
