//! Guest text made fit for reports, and the small wording helpers every
//! reporter shares.

use std::collections::HashMap;

/// Text from a guest, made fit for a log or an XML file: what a terminal
/// would show of `\r`-overwritten lines, no ANSI escape sequences, no
/// control characters but `\t` and `\n`, no U+FFFE/U+FFFF (not XML).
pub fn clean_text(text: &str) -> String {
    // Most text (test names, messages, traces) has nothing to clean; the
    // full pass below costs more than the rest of the JUnit writing.
    let needs_cleaning = |c: char| {
        matches!(c, '\r' | '\u{fffe}' | '\u{ffff}') || (c.is_control() && !matches!(c, '\t' | '\n'))
    };
    if !text.chars().any(needs_cleaning) {
        return text.to_string();
    }
    let shown: Vec<&str> = text
        .split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            // After a carriage return the terminal overwrote the line.
            line.rsplit('\r')
                .find(|part| !part.is_empty())
                .unwrap_or("")
        })
        .collect();
    let joined = shown.join("\n");
    // strip_ansi_escapes also drops tabs; keep them by stripping per piece.
    let stripped: Vec<String> = joined
        .split('\t')
        .map(strip_ansi_escapes::strip_str)
        .collect();
    stripped
        .join("\t")
        .chars()
        .filter(|c| {
            !matches!(c, '\u{fffe}' | '\u{ffff}') && (!c.is_control() || matches!(c, '\t' | '\n'))
        })
        .collect()
}

/// `last line` or `last 12 lines`.
pub fn last_lines(n: usize) -> String {
    if n == 1 {
        "last line".to_string()
    } else {
        format!("last {n} lines")
    }
}

/// Gives repeated names a ` #2`, ` #3` suffix so that every name is unique.
#[derive(Default)]
pub struct UniqueNames {
    used: HashMap<String, usize>,
}

impl UniqueNames {
    pub fn unique(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut n = *self.used.get(name).unwrap_or(&0);
        while self.used.contains_key(&candidate) {
            n += 1;
            candidate = format!("{name} #{}", n + 1);
        }
        self.used.insert(name.to_string(), n);
        self.used.entry(candidate.clone()).or_insert(0);
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_strips_escapes_and_controls_but_keeps_tabs() {
        let raw = "\x1b[1;31mred\x1b[0m\tcol\x00\x07\x08\n\x1b]0;title\x07ok\u{ffff}\n";
        assert_eq!(clean_text(raw), "red\tcol\nok\n");
        assert_eq!(clean_text("10%\r20%\r30%\r\ndone\r\n"), "30%\ndone\n");
        assert_eq!(clean_text("é ü ✓"), "é ü ✓");
    }

    #[test]
    fn unique_names_get_suffixes() {
        let mut names = UniqueNames::default();
        assert_eq!(names.unique("make"), "make");
        assert_eq!(names.unique("make"), "make #2");
        assert_eq!(names.unique("make #3"), "make #3");
        assert_eq!(names.unique("make"), "make #4");
        assert_eq!(names.unique("test"), "test");
    }
}
