//! The output of Rust test binaries (libtest), so that a crate's tests
//! show up one by one with no tool installed in the guest.
//!
//! Two formats, told apart line by line, so a file may mix them with other
//! output (cargo's own lines, `2>&1`):
//!
//! * human, the default and the only one on stable Rust:
//!   `test tests::a ... ok` (`FAILED`, `ignored`, `ignored, reason`, a
//!   trailing `<0.01s>` from `--report-time`), then a failures section
//!   where `---- tests::a stdout ----` introduces each failing test's
//!   captured output;
//! * JSON (`--format json -Z unstable-options`): one object a line,
//!   `{"type":"test","event":"failed","name":…,"stdout":…,"exec_time":…}`.
//!
//! Cargo's `Running unittests src/lib.rs (target/debug/deps/foo-…)` and
//! `Doc-tests foo` lines name the binary, which becomes the classname;
//! without them the report file's name does.

use std::collections::HashMap;

use super::file::Imported;
use super::limits::{seconds, TextLimit};
use crate::results::{ImportedCase, ImportedResult, Problem};

pub fn parse(text: &str, file_stem: &str, texts: &TextLimit) -> Imported {
    let mut reader = Reader {
        texts,
        binary: texts.message(without_hash(file_stem)),
        out: Imported::default(),
        section: Section::default(),
        captured: None,
    };
    for line in text.lines() {
        reader.line(line);
    }
    reader.end_capture();
    reader.end_section();
    reader.out
}

/// One `running N tests` … `test result:` block: one binary's run.
#[derive(Default)]
struct Section {
    expected: Option<usize>,
    /// Index in `out.cases` of each test of this section, by name.
    by_name: HashMap<String, usize>,
    reported: usize,
}

struct Reader<'a> {
    texts: &'a TextLimit<'a>,
    /// The classname of the tests read now.
    binary: String,
    out: Imported,
    section: Section,
    /// The failing test whose `---- name stdout ----` is being read.
    captured: Option<(String, String)>,
}

impl Reader<'_> {
    fn line(&mut self, raw: &str) {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.starts_with('{') {
            if let Ok(serde_json::Value::Object(event)) = serde_json::from_str(trimmed) {
                self.json_event(&event);
                return;
            }
        }
        if let Some(header) = trimmed
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.end_capture();
            self.captured = Some((header.to_string(), String::new()));
            return;
        }
        if trimmed == "failures:" || trimmed == "successes:" || trimmed.starts_with("test result:")
        {
            self.end_capture();
            if trimmed.starts_with("test result:") {
                self.end_section();
            }
            return;
        }
        if let Some((_, output)) = &mut self.captured {
            output.push_str(line);
            output.push('\n');
            return;
        }
        if let Some(count) = trimmed
            .strip_prefix("running ")
            .and_then(|rest| rest.strip_suffix(" tests").or(rest.strip_suffix(" test")))
            .and_then(|n| n.parse().ok())
        {
            self.end_section();
            self.section.expected = Some(count);
        } else if let Some(binary) = binary_name(trimmed) {
            self.end_section();
            // Every test after it is named after it: cut like any text.
            self.binary = self.texts.message(&binary);
        } else if let Some(rest) = line.strip_prefix("test ") {
            self.human_result(rest);
        }
    }

    /// `tests::a ... ok`, `… FAILED`, `… ignored, needs a network`.
    fn human_result(&mut self, rest: &str) {
        let Some((name, verdict)) = rest.rsplit_once(" ... ") else {
            return;
        };
        let mut verdict = verdict.trim();
        let mut time = None;
        // `--report-time` adds `<0.012s>`.
        if let Some((head, stamp)) = verdict.rsplit_once(" <") {
            if let Some(secs) = stamp.strip_suffix("s>").and_then(|s| s.parse::<f64>().ok()) {
                time = seconds(secs);
                verdict = head.trim();
            }
        }
        let result = match verdict {
            "ok" => ImportedResult::Passed,
            "FAILED" => failed(),
            v if v.starts_with("bench:") => ImportedResult::Passed,
            v if v == "ignored" || v.starts_with("ignored, ") => ImportedResult::Skipped {
                message: self
                    .texts
                    .message(v.strip_prefix("ignored, ").unwrap_or("ignored")),
            },
            // Not a verdict: output printed after `test x ... ` under
            // `--nocapture`. The test is left out rather than guessed.
            _ => return,
        };
        // `#[should_panic]` tests are listed as `name - should panic`.
        let name = name.strip_suffix(" - should panic").unwrap_or(name);
        let mut case = ImportedCase::new(self.texts.message(name));
        case.time = time;
        case.result = result;
        self.add(case);
    }

    fn json_event(&mut self, event: &serde_json::Map<String, serde_json::Value>) {
        let text = |key: &str| event.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        match (text("type"), text("event")) {
            ("suite", "started") => {
                self.end_section();
                self.section.expected = event
                    .get("test_count")
                    .and_then(|n| n.as_u64())
                    .map(|n| n as usize);
            }
            ("suite", "ok" | "failed") => self.end_section(),
            ("test", verdict @ ("ok" | "failed" | "ignored" | "timeout")) => {
                let mut case = ImportedCase::new(self.texts.message(text("name")));
                case.time = event
                    .get("exec_time")
                    .and_then(|t| t.as_f64())
                    .and_then(seconds);
                case.result = match verdict {
                    "ok" => ImportedResult::Passed,
                    "ignored" => ImportedResult::Skipped {
                        message: self.texts.message(match text("message") {
                            "" => "ignored",
                            reason => reason,
                        }),
                    },
                    _ => failed(),
                };
                let output = format!("{}{}", text("stdout"), text("message"));
                let index = self.add(case);
                if verdict != "ok" && verdict != "ignored" {
                    self.attach_output(index, &output);
                }
            }
            _ => {} // `started` events, benches, cargo's JSON
        }
    }

    fn add(&mut self, mut case: ImportedCase) -> usize {
        case.classname = Some(self.binary.clone());
        let index = self.out.cases.len();
        self.section.by_name.insert(case.name.clone(), index);
        self.section.reported += 1;
        self.out.cases.push(case);
        index
    }

    fn end_capture(&mut self) {
        let Some((name, output)) = self.captured.take() else {
            return;
        };
        if let Some(&index) = self.section.by_name.get(&name) {
            self.attach_output(index, &output);
        }
    }

    /// A failing test's captured output becomes the failure's body, its
    /// panic the message and location; other tests keep it as stdout.
    fn attach_output(&mut self, index: usize, output: &str) {
        let texts = self.texts;
        let case = &mut self.out.cases[index];
        let output = output.trim_end_matches('\n');
        if let ImportedResult::Failed(problem) = &mut case.result {
            let panic = find_panic(output);
            problem.kind = "panic".to_string();
            problem.message = texts.message(panic.message.unwrap_or("test failed"));
            problem.body = texts.output(output);
            if let Some((file, line)) = panic.location {
                case.file = Some(texts.message(file));
                case.line = Some(line);
            }
        } else if !output.is_empty() {
            case.system_out = texts.output(output);
        }
    }

    fn end_section(&mut self) {
        if let Some(expected) = self.section.expected {
            if self.section.reported < expected {
                self.out.notes.push(format!(
                    "libtest output of `{}`: {} of {expected} tests reported no result (did the test binary crash?)",
                    self.binary,
                    expected - self.section.reported,
                ));
            }
        }
        self.section = Section::default();
    }
}

/// A failure whose story comes later, in the failures section (if at all).
fn failed() -> ImportedResult {
    ImportedResult::Failed(Problem {
        message: "test failed".to_string(),
        kind: "panic".to_string(),
        ..Problem::default()
    })
}

/// `Running unittests src/lib.rs (target/debug/deps/foo-0123456789abcdef)`
/// → `foo`; `Doc-tests foo` → `foo (doc-tests)`.
fn binary_name(line: &str) -> Option<String> {
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("{} (doc-tests)", krate.trim()));
    }
    let rest = line.strip_prefix("Running ")?;
    let path = match rest.rfind('(') {
        Some(open) if rest.ends_with(')') => &rest[open + 1..rest.len() - 1],
        _ => rest.trim_matches('`'),
    };
    let stem = without_hash(path.rsplit('/').next()?);
    (!stem.is_empty()).then(|| stem.to_string())
}

/// `foo-0123456789abcdef` (a test binary as cargo names it) → `foo`.
fn without_hash(file: &str) -> &str {
    match file.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem
        }
        _ => file,
    }
}

struct Panic<'a> {
    message: Option<&'a str>,
    location: Option<(&'a str, u64)>,
}

/// The panic in a failing test's output: Rust 1.73 and later print
/// `thread 'x' panicked at src/lib.rs:3:5:` and the message on the next
/// line; older ones `panicked at 'message', src/lib.rs:3:5`.
fn find_panic(output: &str) -> Panic<'_> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        let Some((_, rest)) = line.split_once("panicked at ") else {
            continue;
        };
        if let Some(quoted) = rest.strip_prefix('\'') {
            if let Some((message, location)) = quoted.rsplit_once("', ") {
                return Panic {
                    message: Some(message),
                    location: parse_location(location),
                };
            }
        }
        let message = lines.find(|l| !l.trim().is_empty()).map(str::trim);
        return Panic {
            message,
            location: parse_location(rest.trim_end_matches(':')),
        };
    }
    Panic {
        message: None,
        location: None,
    }
}

/// `src/lib.rs:3:5` → (`src/lib.rs`, 3).
fn parse_location(text: &str) -> Option<(&str, u64)> {
    let mut parts = text.trim().rsplitn(3, ':');
    let _column = parts.next()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    (!file.is_empty()).then_some((file, line))
}
