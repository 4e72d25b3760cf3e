//! Guest test reports (`reports:`) end to end: real guests write them, the
//! runner reads them back, and their testcases land in the JUnit file one
//! by one.
//!
//! * `pipelines/rust-crate.yml` as it is, on this workspace's
//!   `agent-protocol` crate built static on the host: every test of the
//!   crate appears as its own testcase, matched against the test binary's
//!   own `--list`.
//! * JUnit files of several tools written in a matrix job, with a broken
//!   one and a glob that matches nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e_tests::{images, runner_bin};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn run_runner(dir: &Path, pipeline: &Path) -> Output {
    let images = images();
    Command::new(runner_bin())
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .arg("test")
        .arg(pipeline)
        .args(["--out", "out"])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds agent-protocol's test binaries statically, as the pipeline's
/// comment says, in a target directory of their own (the outer `cargo
/// test` holds the workspace's). Returns the binaries.
fn static_test_binaries() -> Vec<PathBuf> {
    let target_dir = repo().join("target/e2e-rust-crate");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(repo())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["test", "-p", "agent-protocol", "--no-run"])
        .args([
            "--target",
            "x86_64-unknown-linux-gnu",
            "--message-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    // cargo's JSON names every test executable it built.
    let binaries: Vec<PathBuf> = text(&built.stdout)
        .lines()
        .filter(|line| line.contains("\"executable\":\"") && line.contains("agent_protocol-"))
        .filter_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .collect();
    assert!(!binaries.is_empty(), "no test binary built");
    binaries
}

/// The test pipelines/rust-crate.yml skips (it reads the host checkout).
const SKIPPED: &str = "fuzzing::tests::replay_fuzz_regressions_and_seeds";

/// `name: test` lines of `<binary> --list`: the crate's tests the pipeline
/// runs.
fn listed_tests(binary: &Path) -> Vec<String> {
    let listed = Command::new(binary)
        .args(["--list", "--skip", SKIPPED])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let mut names: Vec<String> = text(&listed.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn a_rust_crate_s_tests_show_up_one_by_one() {
    let binaries = static_test_binaries();
    let dir = tempfile::tempdir().unwrap();
    // The example pipeline, unchanged, in a workspace holding the binaries
    // where its `files:` expects them.
    let deps = dir
        .path()
        .join("target/x86_64-unknown-linux-gnu/debug/deps");
    std::fs::create_dir_all(&deps).unwrap();
    let mut expected = Vec::new();
    for binary in &binaries {
        std::fs::copy(binary, deps.join(binary.file_name().unwrap())).unwrap();
        expected.extend(listed_tests(binary));
    }
    expected.sort();
    let pipeline = dir.path().join("rust-crate.yml");
    std::fs::copy(repo().join("pipelines/rust-crate.yml"), &pipeline).unwrap();

    let out = run_runner(dir.path(), &pipeline);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );

    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let steps: Vec<_> = cases
        .iter()
        .filter(|c| c.attribute("classname") == Some("agent-protocol"))
        .map(|c| c.attribute("name").unwrap())
        .collect();
    // The steps are still there, the crate's tests right after theirs.
    assert_eq!(steps, ["test binaries", "unit tests"]);
    let mut imported: Vec<String> = cases
        .iter()
        .filter(|c| c.attribute("classname") == Some("agent-protocol.agent_protocol"))
        .map(|c| c.attribute("name").unwrap().to_string())
        .collect();
    imported.sort();
    assert_eq!(imported, expected);
    assert!(imported.len() >= 9, "{imported:?}");
    let root = doc.root_element();
    assert_eq!(
        root.attribute("tests"),
        Some((expected.len() + 2).to_string().as_str())
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("{} passed, 0 failed", expected.len() + 2)),
        "{summary}"
    );
    println!(
        "rust-crate.yml: crate agent-protocol, {} testcases from {} test binar{} (+2 steps)",
        imported.len(),
        binaries.len(),
        if binaries.len() == 1 { "y" } else { "ies" }
    );
}

const JUNIT_PIPELINE: &str = r#"
name: guest-junit
image: minimal
defaults:
  timeout: 2m
jobs:
  tools:
    matrix:
      N: [1, 2]
    files:
      - from: fixtures
        to: /src/
    workdir: /src
    reports:
      junit: [reports/*.xml, nothing-here/*.xml]
    steps:
      - name: writes reports
        run: mkdir -p reports && cp /src/*.xml reports/ && echo '<testsuites><testcase' > reports/zz-broken.xml
      - name: crashes before its report
        run: exit 3
        reports:
          junit: never-written.xml
          required: true
"#;

#[test]
fn junit_reports_of_real_tools_become_testcases_of_each_matrix_job() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    let source = repo().join("runner/src/test_reports/fixtures");
    for name in ["pytest.xml", "surefire.xml", "go-junit-report.xml"] {
        std::fs::copy(source.join(name), fixtures.join(name)).unwrap();
    }
    let pipeline = dir.path().join("pipeline.yml");
    std::fs::write(&pipeline, JUNIT_PIPELINE).unwrap();
    let out = run_runner(dir.path(), &pipeline);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );

    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    let root_attributes: Vec<&str> = root.attributes().map(|a| a.name()).collect();
    assert_eq!(
        root_attributes,
        ["name", "tests", "failures", "errors", "time"]
    );
    let suites: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 2);
    let mut all = std::collections::HashSet::new();
    for (suite, job) in suites.iter().zip(["tools (N=1)", "tools (N=2)"]) {
        let cases: Vec<(&str, &str)> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|c| {
                (
                    c.attribute("classname").unwrap(),
                    c.attribute("name").unwrap(),
                )
            })
            .collect();
        for case in &cases {
            assert!(all.insert(*case), "{case:?} twice across matrix jobs");
        }
        let class = |inner: &str| format!("{job}.{inner}");
        // 2 steps, the required report that was never written, then the
        // job's reports: 5 pytest + 3 go + 3 Surefire cases and the broken file.
        assert_eq!(cases.len(), 2 + 1 + 11 + 1, "{cases:?}");
        assert_eq!(cases[0], (job, "writes reports"));
        assert_eq!(cases[1], (job, "crashes before its report"));
        assert_eq!(cases[2], (job, "(report) never-written.xml"));
        let missing = suite
            .descendants()
            .find(|n| n.attribute("name") == Some("(report) never-written.xml"))
            .and_then(|n| n.children().find(|c| c.has_tag_name("error")))
            .and_then(|e| e.attribute("message"))
            .unwrap();
        assert!(
            missing.starts_with("required test report `never-written.xml` not found: "),
            "{missing}"
        );
        assert!(cases.contains(&(class("tests.test_math").as_str(), "test_div")));
        assert!(cases.contains(&(class("example.com/calc").as_str(), "TestSub")));
        assert!(cases.contains(&(class("com.example.AppTest").as_str(), "testErrs")));
        assert_eq!(
            cases.last().unwrap(),
            &(job, "(report) reports/zz-broken.xml")
        );
        let notes = suite
            .children()
            .find(|n| n.has_tag_name("system-err"))
            .and_then(|n| n.text())
            .unwrap_or_default();
        assert!(
            notes.contains("test report `nothing-here/*.xml` not found"),
            "{notes}"
        );
    }
    // The console says the same.
    assert!(
        stdout.contains("test report `nothing-here/*.xml` not found"),
        "{stdout}"
    );
    assert!(stdout.contains("failing tests in test reports"), "{stdout}");
    assert!(
        stdout.contains("tests.test_math::test_div: ZeroDivisionError"),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(summary.contains(" failed"), "{summary}");
    // The reports stay on the host for people to read.
    assert!(dir
        .path()
        .join("out/reports/01-tools-N-1/job/junit/reports/pytest.xml")
        .is_file());
}
