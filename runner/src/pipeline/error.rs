//! Pipeline errors: every problem in a pipeline file is reported as ONE line
//! `file:line:column: message`, so editors and CI logs can jump to it.
//!
//! Locations come from serde_norway. Its deserializer attaches the position of
//! the YAML node being deserialized to any error a visitor raises, so all
//! semantic checks (durations, image names, empty steps, duplicate names, …)
//! are done *inside* the visitors in `de.rs`, never after parsing, where the
//! position would be lost. Our own messages are tagged with [`MESSAGE_TAG`]
//! so that the conversion below can drop serde_norway's `path: ` prefix and
//! `at line L column C` suffix and keep just our text.

use std::fmt::Display;

use serde::de;

/// Marks the start of a message written by our visitors.
const MESSAGE_TAG: char = '\u{1f}';

/// An invalid or unreadable pipeline file.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: cannot read pipeline file: {cause}")]
    Read {
        path: String,
        // Not `source`: the message already says it, and anyhow would print
        // it twice.
        cause: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl PipelineError {
    /// `(line, column)`, both 1-based, when the error points into the file.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            PipelineError::Invalid { line, column, .. } => Some((*line, *column)),
            PipelineError::Read { .. } => None,
        }
    }

    /// The message without the `file:line:column: ` prefix.
    pub fn message(&self) -> String {
        match self {
            PipelineError::Invalid { message, .. } => message.clone(),
            PipelineError::Read { cause, .. } => cause.to_string(),
        }
    }

    /// Converts a serde_norway error (syntax error, or one of our visitors'
    /// errors) into a located one-line error.
    pub(crate) fn from_yaml(file: &str, source: &str, err: &serde_norway::Error) -> PipelineError {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut text = err.to_string();
        // serde_norway and libyaml append the position we report up front.
        let suffix = format!(" at line {line} column {column}");
        if let Some(at) = text.find(&suffix) {
            text.replace_range(at..at + suffix.len(), "");
        }
        let mut message = match text.find(MESSAGE_TAG) {
            Some(at) => text[at + MESSAGE_TAG.len_utf8()..].to_string(),
            None => text,
        };
        // libyaml's word for a tab in the indentation is cryptic.
        let indent_has_tab = source
            .lines()
            .nth(line.saturating_sub(1))
            .is_some_and(|l| l[..l.len() - l.trim_start().len()].contains('\t'));
        if indent_has_tab && message.contains("cannot start any token") {
            message.push_str(" (YAML indentation must use spaces, not tabs)");
        }
        PipelineError::Invalid {
            file: file.to_string(),
            line,
            column,
            message: one_line(&message),
        }
    }
}

/// An error raised from inside a visitor: serde_norway gives it the position
/// of the node being visited.
pub(crate) fn located<E: de::Error>(message: impl Display) -> E {
    E::custom(format!("{MESSAGE_TAG}{message}"))
}

/// Error for a key that is not valid at this place, with a hint.
pub(crate) fn unknown_key<E: de::Error>(key: &str, context: &str, valid: &[&str]) -> E {
    match suggest(key, valid) {
        Some(hint) => located(format!(
            "unknown key `{key}` {context} (did you mean `{hint}`?)"
        )),
        None => located(format!(
            "unknown key `{key}` {context} (valid keys: {})",
            valid.join(", ")
        )),
    }
}

/// Words people bring from other CI systems, mapped to ours.
const ALIASES: &[(&str, &str)] = &[
    ("environment", "env"),
    ("variables", "env"),
    ("script", "run"),
    ("command", "run"),
    ("cmd", "run"),
    ("cwd", "workdir"),
    ("working_directory", "workdir"),
    ("working_dir", "workdir"),
    ("cpus", "vcpus"),
    ("mem", "memory"),
    ("artefacts", "artifacts"),
    ("allow_failures", "allow_failure"),
];

/// The valid word closest to `word`, if one is close enough to be a typo.
pub(crate) fn suggest<'a>(word: &str, valid: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase().replace('-', "_");
    if let Some(found) = valid.iter().find(|v| **v == lower) {
        return Some(found);
    }
    if let Some((_, target)) = ALIASES.iter().find(|(alias, _)| *alias == lower) {
        if let Some(found) = valid.iter().find(|v| *v == target) {
            return Some(found);
        }
    }
    // A truncated or misspelled long form: `enviroment` → `env`.
    if let Some(found) = valid
        .iter()
        .find(|v| v.len() >= 3 && lower.starts_with(**v))
    {
        return Some(found);
    }
    // A typo is a small edit relative to the word: one edit in a short word,
    // up to a third of a long one. Transpositions count as one edit.
    let budget = (lower.chars().count() / 3).max(1);
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(&lower, v), *v))
        .filter(|(distance, _)| *distance <= budget)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, v)| v)
}

/// Error messages must stay on one line; YAML values may not.
pub(crate) fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB_KEYS: &[&str] = &["steps", "env", "workdir", "timeout", "matrix", "artifacts"];

    #[test]
    fn suggests_typos_transpositions_case_and_aliases() {
        assert_eq!(suggest("stpes", JOB_KEYS), Some("steps"));
        assert_eq!(suggest("step", JOB_KEYS), Some("steps"));
        assert_eq!(suggest("Steps", JOB_KEYS), Some("steps"));
        assert_eq!(suggest("timout", JOB_KEYS), Some("timeout"));
        assert_eq!(suggest("environment", JOB_KEYS), Some("env"));
        assert_eq!(suggest("artefacts", JOB_KEYS), Some("artifacts"));
        assert_eq!(suggest("banana", JOB_KEYS), None);
        assert_eq!(suggest("x", JOB_KEYS), None);
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\r\nc\n"), "a b c");
    }
}
