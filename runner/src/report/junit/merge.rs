//! `runner report merge`: joins the JUnit reports of several shards into
//! one, for CI systems that read a single file.
//!
//! Every `<testsuite>` of every input is kept as it is, in input order.
//! A job belongs to one shard, so a suite name found in two inputs means
//! the inputs overlap (the same shard twice, or reports of different runs):
//! that is an error naming the suite and both files, rather than a report
//! that counts a job twice.
//!
//! The merged root is named after the first input; its timestamp is the
//! earliest of the inputs and its time the longest (shards run side by
//! side, so the longest is the run's wall time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quick_junit::Report;

use super::text::TAB_PLACEHOLDER;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{}: {cause}", path.display())]
    Read {
        path: PathBuf,
        // Not named `source`: the message already says it, and anyhow
        // would print it twice.
        cause: std::io::Error,
    },
    #[error("{}: not a JUnit report ({reason})", path.display())]
    NotJunit { path: PathBuf, reason: String },
    #[error("test suite `{suite}` is in both {} and {}: the reports overlap", first.display(), second.display())]
    Duplicate {
        suite: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("nothing to merge: give at least one report")]
    NoInput,
    #[error("cannot serialise the merged report: {0}")]
    Serialize(#[from] quick_junit::SerializeError),
}

/// Reads and parses one report. Tabs survive the round trip through
/// quick-junit (which drops them) as the placeholder the writer uses.
pub fn read_report(path: &Path) -> Result<Report, MergeError> {
    let text = std::fs::read_to_string(path).map_err(|cause| MergeError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    parse_report(&text).map_err(|reason| MergeError::NotJunit {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses report text; the error is one line.
pub fn parse_report(text: &str) -> Result<Report, String> {
    let protected = text
        .replace(TAB_PLACEHOLDER, "")
        .replace("&#9;", "\t")
        .replace("&#x9;", "\t")
        .replace('\t', &TAB_PLACEHOLDER.to_string());
    let report = match Report::deserialize_from_str(&protected) {
        Ok(report) => Ok(report),
        // One `<testsuite>` as the root is JUnit too (Surefire writes a file
        // per class that way): read it as a report with one suite.
        Err(e) => match wrap_single_suite(&protected) {
            Some(wrapped) => Report::deserialize_from_str(&wrapped),
            None => Err(e),
        },
    };
    report.map_err(|e| {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// `<testsuite …>…</testsuite>` as the root, wrapped in `<testsuites>`;
/// `None` when the root is something else.
fn wrap_single_suite(xml: &str) -> Option<String> {
    let mut body = xml.trim_start_matches('\u{feff}').trim_start();
    if body.starts_with("<?xml") {
        body = body[body.find("?>")? + 2..].trim_start();
    }
    // Comments before the root.
    while body.starts_with("<!--") {
        body = body[body.find("-->")? + 3..].trim_start();
    }
    let after_name = body.strip_prefix("<testsuite")?;
    let is_suite = after_name.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/');
    is_suite.then(|| format!("<testsuites>{body}</testsuites>"))
}

/// The merged report as XML text.
pub fn merge(paths: &[PathBuf]) -> Result<String, MergeError> {
    let mut merged: Option<Report> = None;
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        let report = read_report(path)?;
        for suite in &report.test_suites {
            let name = suite.name.as_str().to_string();
            if let Some(first) = owner.insert(name.clone(), path.clone()) {
                return Err(MergeError::Duplicate {
                    suite: name.replace(TAB_PLACEHOLDER, "\t"),
                    first,
                    second: path.clone(),
                });
            }
        }
        // A fresh root: counts are summed from the suites, not trusted
        // from each input's root attributes.
        let merged = merged.get_or_insert_with(|| match &report.name {
            Some(name) => Report::new(name.clone()),
            None => Report::unnamed(),
        });
        if let Some(stamp) = report.timestamp {
            let earliest = merged.timestamp.map_or(stamp, |t| t.min(stamp));
            merged.set_timestamp(earliest);
        }
        if let Some(time) = report.time {
            merged.set_time(merged.time.map_or(time, |t| t.max(time)));
        }
        merged.add_test_suites(report.test_suites);
    }
    let merged = merged.ok_or(MergeError::NoInput)?;
    Ok(merged.to_string()?.replace(TAB_PLACEHOLDER, "\t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dir: &Path, file: &str, suites: &[(&str, &str)]) -> PathBuf {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str("<testsuites name=\"p\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"3\" timestamp=\"2026-11-30T10:00:00+00:00\">\n");
        for (name, status) in suites {
            xml.push_str(&format!(
                "\t<testsuite name=\"{name}\" tests=\"1\" failures=\"{}\" errors=\"0\" time=\"2\">\n\t\t<testcase name=\"s\" classname=\"{name}\" time=\"1\">{status}<system-out>a\tb</system-out></testcase>\n\t</testsuite>\n",
                u8::from(status.contains("<failure"))
            ));
        }
        xml.push_str("</testsuites>\n");
        let path = dir.join(file);
        std::fs::write(&path, xml).unwrap();
        path
    }

    #[test]
    fn merges_suites_in_order_and_keeps_results_and_tabs() {
        let dir = tempfile::tempdir().unwrap();
        let a = report(dir.path(), "a.xml", &[("one", ""), ("two", "")]);
        let b = report(
            dir.path(),
            "b.xml",
            &[(
                "three",
                "<failure message=\"exit code 1\" type=\"exit\">boom</failure>",
            )],
        );
        let xml = merge(&[a, b]).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("tests"), Some("3"));
        assert_eq!(root.attribute("failures"), Some("1"));
        let names: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("testsuite"))
            .map(|n| n.attribute("name").unwrap())
            .collect();
        assert_eq!(names, ["one", "two", "three"]);
        assert!(xml.contains("<system-out>a\tb</system-out>"), "{xml}");
        assert!(xml.contains("boom"));
    }

    #[test]
    fn overlapping_reports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = report(dir.path(), "a.xml", &[("one", "")]);
        let b = report(dir.path(), "b.xml", &[("one", "")]);
        let err = merge(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("`one` is in both"), "{err}");
    }

    #[test]
    fn a_single_testsuite_root_is_a_report_too() {
        let xml = "<?xml version=\"1.0\"?>\n<!-- by surefire -->\n<testsuite name=\"a\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"2.5\"><testcase name=\"x\" classname=\"a\" time=\"1\"/></testsuite>\n";
        let report = parse_report(xml).unwrap();
        assert_eq!(report.test_suites.len(), 1);
        assert_eq!(report.test_suites[0].name.as_str(), "a");
        assert!(parse_report("<testsuitesX/>").is_err());
        assert!(parse_report("<html/>").is_err());
    }

    #[test]
    fn a_file_that_is_not_junit_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.yml");
        std::fs::write(&path, "jobs:\n  a: 1\n").unwrap();
        let err = merge(&[path]).unwrap_err().to_string();
        assert!(err.contains("not a JUnit report"), "{err}");
        assert!(!err.contains('\n'));
    }
}
