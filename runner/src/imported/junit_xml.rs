//! JUnit XML from the tools that write it: pytest, cargo-nextest,
//! go-junit-report, Maven Surefire, jest-junit and others.
//!
//! They agree on little beyond `<testcase name>` with a `<failure>`,
//! `<error>` or `<skipped>` child, so this reader is lenient in shape:
//! the root may be `<testsuites>` or a lone `<testsuite>` (Surefire),
//! suites may nest, `classname` may be missing (then the enclosing suite's
//! name stands in), `time` may be missing or written `1,234.5` (Surefire),
//! results may carry `message` or only text (jest). Reruns that nextest and
//! Surefire list (`rerunFailure`, `flakyFailure`, …) do not change the
//! verdict. It is strict about safety: no DTD, so no entities to expand,
//! a node cap and a depth cap.

use std::time::Duration;

use roxmltree::{Document, Node, ParsingOptions};

use super::limits::{seconds, TextLimit, MAX_DEPTH};
use crate::results::{ImportedCase, ImportedResult, Output, Problem};

/// Nodes one document may have. A 16 MiB file holds at most a few million;
/// this bounds the parser's memory whatever the guest writes.
const MAX_NODES: u32 = 4_000_000;

/// The testcases of a JUnit document, in document order. The error is one
/// line: what is wrong and where.
pub fn parse(text: &str, texts: &TextLimit) -> Result<Vec<ImportedCase>, String> {
    let options = ParsingOptions {
        // A DTD is where entities are declared: refusing it means no
        // entity is ever expanded (no billion laughs, no external files).
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    check_depth(text)?;
    let doc = Document::parse_with_options(text, options).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let root_name = root.tag_name().name();
    if root_name != "testsuites" && root_name != "testsuite" {
        return Err(format!(
            "the root element is <{root_name}>, not <testsuites> or <testsuite>"
        ));
    }
    let mut cases = Vec::new();
    // An explicit stack: (element, name of the innermost enclosing suite).
    let mut todo: Vec<(Node, Option<&str>)> = vec![(root, None)];
    while let Some((node, suite)) = todo.pop() {
        match node.tag_name().name() {
            "testsuites" | "testsuite" => {
                let name = node.attribute("name").filter(|n| !n.trim().is_empty());
                let inner = name.or(suite);
                let children = node.children().filter(Node::is_element);
                // Reversed onto the stack, so they come off in document order.
                let children: Vec<_> = children.map(|child| (child, inner)).collect();
                todo.extend(children.into_iter().rev());
            }
            "testcase" => cases.push(testcase(node, suite, texts)),
            _ => {} // properties, system-out of a suite, tool extensions
        }
    }
    Ok(cases)
}

/// Refuses documents nested deeper than [`MAX_DEPTH`] before they are
/// parsed: roxmltree recurses per level, so a guest's 200,000 nested
/// elements would overflow the stack. A scan of the bytes is enough: it
/// counts start tags (`<a …>`) up and end tags (`</a>`, `/>`) down, and
/// steps over comments, CDATA, declarations, processing instructions and
/// quoted attribute values, where a `<` or `>` means nothing.
fn check_depth(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    let skip_past = |from: usize, end: &str| {
        text[from..]
            .find(end)
            .map_or(bytes.len(), |i| from + i + end.len())
    };
    while let Some(offset) = text[at..].find('<') {
        let open = at + offset;
        let rest = &text[open..];
        if rest.starts_with("<!--") {
            at = skip_past(open, "-->");
        } else if rest.starts_with("<![CDATA[") {
            at = skip_past(open, "]]>");
        } else if rest.starts_with("<?") {
            at = skip_past(open, "?>");
        } else if rest.starts_with("<!") {
            at = skip_past(open, ">");
        } else if rest.starts_with("</") {
            depth = depth.saturating_sub(1);
            at = skip_past(open, ">");
        } else {
            // A start tag: find its end outside quoted values.
            let mut i = open + 1;
            let mut quote = None;
            while i < bytes.len() {
                match (quote, bytes[i]) {
                    (None, b'"' | b'\'') => quote = Some(bytes[i]),
                    (Some(q), b) if b == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                i += 1;
            }
            let self_closing = i > open + 1 && bytes[i - 1] == b'/';
            if !self_closing {
                depth += 1;
                if depth > MAX_DEPTH {
                    let line = text[..open].matches('\n').count() + 1;
                    return Err(format!(
                        "line {line}: elements nested deeper than {MAX_DEPTH} levels"
                    ));
                }
            }
            at = (i + 1).min(bytes.len());
        }
        if at >= bytes.len() {
            break;
        }
    }
    Ok(())
}

fn testcase(node: Node, suite: Option<&str>, texts: &TextLimit) -> ImportedCase {
    let name = node
        .attribute("name")
        .filter(|n| !n.trim().is_empty())
        .unwrap_or("(unnamed)");
    let mut case = ImportedCase::new(texts.message(name));
    case.classname = node
        .attribute("classname")
        .filter(|c| !c.trim().is_empty())
        .or(suite)
        .map(|c| texts.message(c));
    case.time = node.attribute("time").and_then(parse_seconds);
    case.file = node.attribute("file").map(|f| texts.message(f));
    case.line = node.attribute("line").and_then(|l| l.trim().parse().ok());
    let (mut failure, mut error, mut skipped) = (None, None, None);
    for child in node.children().filter(Node::is_element) {
        match child.tag_name().name() {
            "failure" => failure = failure.or(Some(child)),
            "error" => error = error.or(Some(child)),
            "skipped" => skipped = skipped.or(Some(child)),
            "system-out" => case.system_out = texts.output(&all_text(child)),
            "system-err" => case.system_err = texts.output(&all_text(child)),
            _ => {} // reruns, properties
        }
    }
    // pytest reports a failing test whose teardown errs with both; the
    // error is the more serious, and the failure's story goes with it.
    case.result = if let Some(error) = error {
        ImportedResult::Error(problem(error, failure, texts))
    } else if let Some(failure) = failure {
        ImportedResult::Failed(problem(failure, None, texts))
    } else if let Some(skipped) = skipped {
        let text = all_text(skipped);
        let message = skipped.attribute("message").unwrap_or(text.trim());
        ImportedResult::Skipped {
            message: texts.message(first_line(message)),
        }
    } else {
        ImportedResult::Passed
    };
    case
}

fn problem(node: Node, also: Option<Node>, texts: &TextLimit) -> Problem {
    let mut body = all_text(node);
    if let Some(other) = also {
        body.push_str("\n\n");
        body.push_str(&all_text(other));
    }
    let message = node
        .attribute("message")
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| first_line(&body));
    Problem {
        message: texts.message(message),
        kind: texts.message(node.attribute("type").unwrap_or_default()),
        body: if body.trim().is_empty() {
            Output::default()
        } else {
            texts.output(&body)
        },
    }
}

/// All text inside an element (text and CDATA, also inside children).
fn all_text(node: Node) -> String {
    node.descendants()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect()
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// `0.5`, `12`, Surefire's `1,234.5`; nonsense is dropped, not guessed.
fn parse_seconds(text: &str) -> Option<Duration> {
    seconds(text.trim().replace(',', "").parse().ok()?)
}
