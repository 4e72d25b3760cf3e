//! Guest test reports (`reports:`) end to end: real guests write them, the
//! runner reads them back, and their testcases land in the JUnit file one
//! by one.
//!
//! * `pipelines/rust-crate.yml` as it is, on this workspace's
//!   `agent-protocol` crate built static on the host: every test of the
//!   crate appears as its own testcase, matched against the test binary's
//!   own `--list`.
//! * a crates.io crate, strsim (a dependency of the runner, so its source
//!   is in cargo's registry), built the same way and run by a pipeline
//!   written here: its tests, one testcase each.
//! * JUnit files of several tools written in a matrix job, with a broken
//!   one and a glob that matches nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e_tests::{images, repo, runner_bin};

/// `runner test <pipeline> --out out` in `dir`, which must exit with
/// `code`; returns its stdout.
fn run_runner(dir: &Path, pipeline: &Path, code: i32) -> String {
    let images = images();
    let out: Output = Command::new(runner_bin())
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .arg("test")
        .arg(pipeline)
        .args(["--out", "out"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    stdout
}

/// Copies the test binaries into `dir` and returns the names of the tests
/// they will run (sorted), `--list`ed with `filters`.
fn stage(binaries: &[PathBuf], dir: &Path, filters: &[&str]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut expected = Vec::new();
    for binary in binaries {
        std::fs::copy(binary, dir.join(binary.file_name().unwrap())).unwrap();
        expected.extend(listed_tests(binary, filters));
    }
    expected.sort();
    expected
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds a crate's test binaries statically, as pipelines/rust-crate.yml
/// says, in a target directory of their own (the outer `cargo test` holds
/// the workspace's). `which` selects the crate (`-p …` or
/// `--manifest-path …`); returns the binaries named `<binary>-<hash>`.
fn static_test_binaries(which: &[&str], target: &str, binary: &str) -> Vec<PathBuf> {
    let target_dir = repo().join("target").join(target);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(repo())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["test", "--no-run", "--offline"])
        .args(which)
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args(["--message-format", "json"])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    // cargo's JSON names every test executable it built.
    let key = "\"executable\":\"";
    let named = format!("/{binary}-");
    let binaries: Vec<PathBuf> = text(&built.stdout)
        .lines()
        .filter(|line| line.contains(key) && line.contains(&named))
        .filter_map(|line| {
            let start = line.find(key)? + key.len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .collect();
    assert!(!binaries.is_empty(), "no test binary built");
    binaries
}

/// The test pipelines/rust-crate.yml skips (it reads the host checkout).
const SKIPPED: &str = "fuzzing::tests::replay_fuzz_regressions_and_seeds";

/// `name: test` lines of `<binary> --list` (with `extra` filters): the
/// crate's tests that a pipeline runs.
fn listed_tests(binary: &Path, extra: &[&str]) -> Vec<String> {
    let listed = Command::new(binary)
        .arg("--list")
        .args(extra)
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

/// The testcases of `classname`, sorted, and the JUnit document's root
/// `tests` count.
fn junit_cases(out: &Path, classname: &str) -> (Vec<String>, usize) {
    let xml = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let mut names: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter(|c| c.attribute("classname") == Some(classname))
        .map(|c| c.attribute("name").unwrap().to_string())
        .collect();
    names.sort();
    let tests = doc
        .root_element()
        .attribute("tests")
        .unwrap()
        .parse()
        .unwrap();
    (names, tests)
}

/// Like pipelines/rust-crate.yml, for the binaries put in `bin/`.
const STRSIM_PIPELINE: &str = r#"
image: minimal
jobs:
  strsim:
    files:
      - from: bin
        to: /opt/tests
    workdir: /opt/tests
    steps:
      - name: tests
        run: for t in /opt/tests/strsim-*; do "$t" > "$t.txt" 2>&1 || exit 1; done
        reports: { libtest: "/opt/tests/*.txt", required: true }
"#;

#[test]
fn a_crates_io_crate_s_tests_show_up_one_by_one() {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    // The runner depends on strsim, so building it unpacked the source.
    let source = std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flat_map(|index| std::fs::read_dir(index.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("strsim-0.11")
        })
        .max()
        .expect("strsim 0.11 in cargo's registry (a dependency of runner)");
    let version = source.file_name().unwrap().to_string_lossy().into_owned();
    // Built from a copy: the registry's sources are not ours to write a
    // lock file into.
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("strsim");
    copy_tree(&source, &krate);
    let manifest = krate.join("Cargo.toml").display().to_string();
    let binaries = static_test_binaries(&["--manifest-path", &manifest], "e2e-strsim", "strsim");
    let expected = stage(&binaries, &dir.path().join("bin"), &[]);
    let pipeline = dir.path().join("strsim.yml");
    std::fs::write(&pipeline, STRSIM_PIPELINE).unwrap();
    run_runner(dir.path(), &pipeline, 0);
    let (imported, tests) = junit_cases(&dir.path().join("out"), "strsim.strsim");
    assert_eq!(imported, expected);
    assert!(imported.len() >= 50, "{imported:?}");
    assert_eq!(tests, imported.len() + 1);
    println!(
        "crates.io {version}: {} testcases from {} test binar{}",
        imported.len(),
        binaries.len(),
        if binaries.len() == 1 { "y" } else { "ies" }
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_rust_crate_s_tests_show_up_one_by_one() {
    let binaries = static_test_binaries(
        &["-p", "agent-protocol"],
        "e2e-rust-crate",
        "agent_protocol",
    );
    let dir = tempfile::tempdir().unwrap();
    // The example pipeline, unchanged, in a workspace holding the binaries
    // where its `files:` expects them.
    let deps = dir
        .path()
        .join("target/x86_64-unknown-linux-gnu/debug/deps");
    let expected = stage(&binaries, &deps, &["--skip", SKIPPED]);
    let pipeline = dir.path().join("rust-crate.yml");
    std::fs::copy(repo().join("pipelines/rust-crate.yml"), &pipeline).unwrap();
    let stdout = run_runner(dir.path(), &pipeline, 0);

    let out_dir = dir.path().join("out");
    // The steps are still there…
    let (steps, tests) = junit_cases(&out_dir, "agent-protocol");
    assert_eq!(steps, ["test binaries", "unit tests"]);
    // …and every test of the crate is a testcase of its own.
    let (imported, _) = junit_cases(&out_dir, "agent-protocol.agent_protocol");
    assert_eq!(imported, expected);
    assert!(imported.len() >= 9, "{imported:?}");
    assert_eq!(tests, expected.len() + 2);
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
    let source = repo().join("runner/src/imported/fixtures");
    for name in ["pytest.xml", "surefire.xml", "go-junit-report.xml"] {
        std::fs::copy(source.join(name), fixtures.join(name)).unwrap();
    }
    let pipeline = dir.path().join("pipeline.yml");
    std::fs::write(&pipeline, JUNIT_PIPELINE).unwrap();
    let stdout = run_runner(dir.path(), &pipeline, 1);

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
