//! GitLab's collapsible sections with parallel jobs.
//!
//! A section is a run of consecutive log lines, so two jobs' sections
//! cannot interleave. One job at a time is in the **foreground**: its
//! section is open and its lines go out as they arrive. The others' lines
//! are held (bounded: past [`HELD_BYTES_LIMIT`] only step verdicts are
//! kept, and a note says how many output lines were left out) and go out
//! as a whole section when their turn comes, in the order the jobs
//! started. The job's outcome line is printed after its section ends, so
//! it stays visible when the section is collapsed.
//!
//! A section opens collapsed unless its job is already known to have
//! failed; a live section cannot know yet, and opens collapsed. Failing
//! steps' output is repeated at the end of the run in any case.

use std::collections::{HashMap, VecDeque};

/// Most bytes of output lines held back for one job that is waiting for
/// its turn.
pub const HELD_BYTES_LIMIT: usize = 1 << 20;

/// How a job's section begins.
pub struct Opening {
    /// Section id: letters, digits, `_`, `.` and `-` only.
    pub id: String,
    pub unix_time: u64,
    pub header: String,
}

#[derive(Default)]
struct Held {
    opening: Option<Opening>,
    lines: Vec<String>,
    bytes: usize,
    omitted: usize,
    /// Set when the job finished while waiting: failed?, end time, outcome.
    finished: Option<(bool, u64, String)>,
}

#[derive(Default)]
pub struct Sections {
    /// The job whose section is open, and the section's id.
    foreground: Option<(String, String)>,
    waiting: VecDeque<String>,
    held: HashMap<String, Held>,
}

impl Sections {
    /// A job started: the lines to print now.
    pub fn start(&mut self, job: &str, opening: Opening) -> Vec<String> {
        if self.foreground.is_none() {
            self.foreground = Some((job.to_string(), opening.id.clone()));
            return vec![start_line(&opening, true)];
        }
        self.waiting.push_back(job.to_string());
        self.held.insert(
            job.to_string(),
            Held {
                opening: Some(opening),
                ..Held::default()
            },
        );
        Vec::new()
    }

    /// A line of a job: printed now if it is in the foreground, else
    /// held. Output lines (`verdict` false) are held only up to the limit.
    pub fn line(&mut self, job: &str, line: String, verdict: bool) -> Vec<String> {
        let Some(held) = self.held.get_mut(job) else {
            return vec![line];
        };
        if !verdict && held.bytes + line.len() > HELD_BYTES_LIMIT {
            held.omitted += 1;
        } else {
            held.bytes += line.len();
            held.lines.push(line);
        }
        Vec::new()
    }

    /// A job ended with `outcome` (its summary line): the lines to print
    /// now, which may include the held sections of jobs waiting behind it.
    pub fn finish(
        &mut self,
        job: &str,
        failed: bool,
        unix_time: u64,
        outcome: String,
    ) -> Vec<String> {
        let id = match self.foreground.take() {
            Some((foreground, id)) if foreground == job => id,
            other => {
                self.foreground = other;
                match self.held.get_mut(job) {
                    Some(held) => held.finished = Some((failed, unix_time, outcome)),
                    None => return vec![outcome],
                }
                return Vec::new();
            }
        };
        let mut lines = vec![end_line(&id, unix_time), outcome];
        while let Some(next) = self.waiting.pop_front() {
            let held = self.held.remove(&next).unwrap_or_default();
            let opening = held.opening.unwrap_or(Opening {
                id: String::new(),
                unix_time,
                header: String::new(),
            });
            let collapsed = !held.finished.as_ref().is_some_and(|(failed, ..)| *failed);
            lines.push(start_line(&opening, collapsed));
            lines.extend(held.lines);
            if held.omitted > 0 {
                lines.push(format!(
                    "[runner: {} output lines not shown here while other jobs ran; see the job log]",
                    held.omitted
                ));
            }
            match held.finished {
                Some((_, end, outcome)) => {
                    lines.push(end_line(&opening.id, end));
                    lines.push(outcome);
                }
                None => {
                    self.foreground = Some((next, opening.id));
                    break;
                }
            }
        }
        lines
    }
}

fn start_line(opening: &Opening, collapsed: bool) -> String {
    let collapsed = if collapsed { "[collapsed=true]" } else { "" };
    format!(
        "\x1b[0Ksection_start:{}:{}{collapsed}\r\x1b[0K{}",
        opening.unix_time, opening.id, opening.header
    )
}

fn end_line(id: &str, unix_time: u64) -> String {
    format!("\x1b[0Ksection_end:{unix_time}:{id}\r\x1b[0K")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening(id: &str) -> Opening {
        Opening {
            id: id.to_string(),
            unix_time: 1_800_000_000,
            header: format!("[{id}] started"),
        }
    }

    #[test]
    fn the_next_job_waiting_becomes_live_when_the_foreground_ends() {
        let mut sections = Sections::default();
        assert_eq!(sections.start("a", opening("a")).len(), 1);
        assert!(sections.start("b", opening("b")).is_empty());
        assert!(sections.line("b", "[b] early".into(), false).is_empty());
        assert_eq!(sections.line("a", "[a] x".into(), false), ["[a] x"]);
        let lines = sections.finish("a", false, 1_800_000_001, "[a] passed".into());
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].contains("section_end:1800000001:a"));
        assert_eq!(lines[1], "[a] passed");
        assert!(lines[2].contains("section_start:1800000000:b[collapsed=true]"));
        assert_eq!(lines[3], "[b] early");
        // `b` is live now.
        assert_eq!(sections.line("b", "[b] late".into(), false), ["[b] late"]);
        let lines = sections.finish("b", true, 1_800_000_002, "[b] FAILED".into());
        assert_eq!(lines[1], "[b] FAILED");
    }

    #[test]
    fn held_output_is_bounded_but_verdicts_are_kept() {
        let mut sections = Sections::default();
        sections.start("a", opening("a"));
        sections.start("b", opening("b"));
        let long = "x".repeat(1000);
        for _ in 0..2000 {
            sections.line("b", long.clone(), false);
        }
        sections.line("b", "[b] step ... ok".into(), true);
        let held = &sections.held["b"];
        assert!(held.bytes <= HELD_BYTES_LIMIT);
        sections.finish("b", false, 1_800_000_001, "[b] passed".into());
        let lines = sections.finish("a", false, 1_800_000_002, "[a] passed".into());
        assert!(lines.iter().any(|l| l == "[b] step ... ok"));
        let omitted = 2000 - HELD_BYTES_LIMIT / 1000;
        assert!(lines
            .iter()
            .any(|l| l.starts_with(&format!("[runner: {omitted} output lines not shown"))));
        assert_eq!(lines.last().unwrap(), "[b] passed");
    }
}
