//! Step output cut into lines for the plain console (CI logs), with
//! bounded memory: the guest is not trusted, and a line that never ends
//! must not grow a buffer without limit.
//!
//! Bytes are held until a newline. A line longer than [`MAX_LINE_BYTES`] is
//! cut there and marked with [`CUT_MARKER`]; the rest follows as its own
//! line. What is left when the step ends is flushed by [`LineSplitter::finish`].

use crate::report::text::clean_text;

/// Longest line shown in one piece.
pub const MAX_LINE_BYTES: usize = 4096;
/// Ends a line that was cut at [`MAX_LINE_BYTES`].
pub const CUT_MARKER: &str = " [runner: line cut here, continued below]";

/// Most bytes of output lines one job attempt shows live.
pub const LIVE_OUTPUT_LIMIT: usize = 1 << 20;

/// How much of a job's output has been shown live.
#[derive(Default)]
pub struct LiveBudget {
    shown: usize,
    exhausted: bool,
}

impl LiveBudget {
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// The lines that fit; past the limit, one note instead, then nothing.
    pub fn admit(&mut self, lines: Vec<String>) -> Vec<String> {
        let mut shown = Vec::new();
        for line in lines {
            if self.exhausted {
                break;
            }
            if self.shown + line.len() > LIVE_OUTPUT_LIMIT {
                self.exhausted = true;
                shown.push(format!(
                    "[runner: live output stops here, after {} KiB; the job log has the rest]",
                    LIVE_OUTPUT_LIMIT >> 10
                ));
                break;
            }
            self.shown += line.len();
            shown.push(line);
        }
        shown
    }
}

#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds a chunk; returns the lines it completed, cleaned for a log.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !chunk.is_empty() {
            let room = MAX_LINE_BYTES - self.partial.len();
            match chunk.iter().take(room).position(|&b| b == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&chunk[..end]);
                    lines.push(self.take(self.partial.len()));
                    chunk = &chunk[end + 1..];
                }
                None if chunk.len() < room => {
                    self.partial.extend_from_slice(chunk);
                    chunk = &[];
                }
                None => {
                    self.partial.extend_from_slice(&chunk[..room]);
                    chunk = &chunk[room..];
                    let cut = char_boundary(&self.partial);
                    let mut line = self.take(cut);
                    line.push_str(CUT_MARKER);
                    lines.push(line);
                }
            }
        }
        lines
    }

    /// The unfinished last line, if any; the splitter is empty afterwards.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take(self.partial.len()))
    }

    /// The first `n` bytes of the buffer as a line; the rest stays.
    fn take(&mut self, n: usize) -> String {
        let rest = self.partial.split_off(n);
        let line = std::mem::replace(&mut self.partial, rest);
        clean_text(&String::from_utf8_lossy(&line))
    }
}

/// Where to cut a full buffer without splitting a UTF-8 character: before
/// an incomplete one at its end (anything else is shown lossily anyway).
fn char_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        _ => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_joined_across_chunks_and_the_rest_is_flushed() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.push(b"hel"), Vec::<String>::new());
        assert_eq!(splitter.push(b"lo\nwor"), ["hello"]);
        assert_eq!(splitter.push(b"ld\n\nx\x1b[31my"), ["world", ""]);
        assert_eq!(splitter.finish().as_deref(), Some("xy"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn an_endless_line_is_cut_and_memory_stays_bounded() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            lines.extend(splitter.push(&[b'x'; 1000]));
            assert!(splitter.partial.len() < MAX_LINE_BYTES);
        }
        assert_eq!(lines.len(), 1_000_000 / MAX_LINE_BYTES);
        assert!(lines
            .iter()
            .all(|l| l.len() == MAX_LINE_BYTES + CUT_MARKER.len() && l.ends_with(CUT_MARKER)));
    }

    #[test]
    fn live_output_stops_with_a_note_at_the_budget() {
        let mut budget = LiveBudget::default();
        let line = "x".repeat(1000);
        let mut shown = Vec::new();
        for _ in 0..2000 {
            shown.extend(budget.admit(vec![line.clone()]));
        }
        assert!(budget.exhausted());
        assert_eq!(shown.len(), LIVE_OUTPUT_LIMIT / 1000 + 1);
        assert!(shown
            .last()
            .unwrap()
            .starts_with("[runner: live output stops here"));
    }

    #[test]
    fn a_cut_does_not_split_a_character() {
        let mut splitter = LineSplitter::default();
        let mut input = vec![b'a'; MAX_LINE_BYTES - 1];
        input.extend_from_slice("é\n".as_bytes());
        let lines = splitter.push(&input);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(&format!("a{CUT_MARKER}")));
        assert_eq!(lines[1], "é");
    }
}
