//! While a debug shell has the terminal (`runner test --debug-on-failure`),
//! the console keeps quiet: its spinners are hidden and its lines held,
//! then printed when the terminal comes back. The other jobs run on
//! meanwhile; only what they show waits.

use std::sync::Mutex;

/// Most lines held while the terminal is lent; later ones are counted, not
/// kept (plain mode prints step output, and a shell may stay open long).
const MAX_HELD_LINES: usize = 10_000;

#[derive(Default)]
pub(super) struct Lending {
    /// `Some` while the terminal is lent: the lines to print afterwards.
    held: Mutex<Option<Held>>,
}

#[derive(Default)]
struct Held {
    lines: Vec<String>,
    left_out: usize,
    /// Whether the spinners were drawn before (they are hidden meanwhile).
    was_drawing: bool,
}

impl Lending {
    /// Keeps `lines` for later if the terminal is lent; false means print now.
    pub(super) fn hold(&self, lines: &[String]) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = held.as_mut() else {
            return false;
        };
        let room = MAX_HELD_LINES.saturating_sub(held.lines.len());
        held.lines.extend(lines.iter().take(room).cloned());
        held.left_out += lines.len().saturating_sub(room);
        true
    }

    /// The terminal is lent: lines are held from now on. `was_drawing`
    /// (whether spinners were drawn) is handed back by [`Lending::end`].
    pub(super) fn begin(&self, was_drawing: bool) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held {
            was_drawing,
            ..Held::default()
        });
    }

    /// The terminal is back: the lines held (and a note on those left
    /// out) and whether spinners were drawn before; `None` if it was not
    /// lent.
    pub(super) fn end(&self) -> Option<(Vec<String>, bool)> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        if held.left_out > 0 {
            held.lines.push(format!(
                "runner: {} more lines from the time of the debug shell are in the job logs",
                held.left_out
            ));
        }
        Some((held.lines, held.was_drawing))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::plain;
    use super::MAX_HELD_LINES;
    use crate::report::stream::Feed;

    #[test]
    fn lines_wait_while_the_terminal_is_lent_and_are_bounded() {
        let (console, buf) = plain(false, false);
        console.emit(&["before".to_string()]);
        console.on_terminal_lent(true);
        let many: Vec<String> = (0..MAX_HELD_LINES + 5)
            .map(|i| format!("meanwhile {i}"))
            .collect();
        console.emit(&many);
        assert_eq!(buf.text(), "before\n");
        console.on_terminal_lent(false);
        let text = buf.text();
        assert!(text.contains("meanwhile 0\n"), "{text}");
        assert!(!text.contains(&format!("meanwhile {MAX_HELD_LINES}")));
        assert!(
            text.ends_with("5 more lines from the time of the debug shell are in the job logs\n")
        );
        console.emit(&["after".to_string()]);
        assert!(buf.text().ends_with("after\n"));
    }
}
