//! `runner test` features for CI systems, with the real binary and real
//! guests: sharding (and `report merge`), retries, live output in CI mode
//! (plain and GitLab) and JSON events. Checks that need no VM (`--list`,
//! bad `--shard` / `--timings`) boot nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use e2e_tests::{images, runner_bin};

fn runner(dir: &Path, args: &[&str]) -> Command {
    let images = images();
    let mut cmd = Command::new(runner_bin());
    cmd.env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env_remove("GITLAB_CI")
        .env_remove("CI_NODE_INDEX")
        .env_remove("CI_NODE_TOTAL")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .args(args);
    cmd
}

fn write_pipeline(dir: &Path, yaml: &str) -> String {
    let file = dir.join("pipeline.yml");
    std::fs::write(&file, yaml).unwrap();
    file.display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Suite name → (tests, failures) of a JUnit file, which must parse alone.
fn suites(path: &Path) -> BTreeMap<String, (String, String)> {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .map(|n| {
            let attr = |a| n.attribute(a).unwrap().to_string();
            (attr("name"), (attr("tests"), attr("failures")))
        })
        .collect()
}

const SHARDED: &str = r#"
defaults:
  files: none
jobs:
  unit:
    matrix:
      N: [1, 2, 3, 4]
    steps:
      - echo "unit $N"
  lint:
    steps:
      - "true"
"#;

#[test]
fn three_shards_run_every_job_once_and_merge_into_one_report() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), SHARDED);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut reports = Vec::new();
    for k in 1..=3 {
        let junit = format!("shard{k}.xml");
        let shard = format!("{k}/3");
        let out = runner(
            dir.path(),
            &[
                "test", &pipeline, "--jobs", "2", "--shard", &shard, "--out", "out", "--junit",
                &junit,
            ],
        )
        .output()
        .unwrap();
        assert_ok(&out);
        let suites = suites(&dir.path().join(&junit));
        assert!(!suites.is_empty(), "shard {shard} ran nothing");
        for (name, (tests, failures)) in suites {
            assert_eq!((tests.as_str(), failures.as_str()), ("1", "0"));
            *seen.entry(name).or_default() += 1;
        }
        reports.push(junit);
    }
    let all: Vec<&str> = vec![
        "lint",
        "unit (N=1)",
        "unit (N=2)",
        "unit (N=3)",
        "unit (N=4)",
    ];
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), all);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");

    let mut merge = vec!["report", "merge"];
    merge.extend(reports.iter().map(String::as_str));
    merge.extend(["-o", "all.xml"]);
    let out = runner(dir.path(), &merge).output().unwrap();
    assert_ok(&out);
    let merged = suites(&dir.path().join("all.xml"));
    assert_eq!(merged.keys().map(String::as_str).collect::<Vec<_>>(), all);

    // The same shard twice is refused: it would count its jobs twice.
    let out = runner(
        dir.path(),
        &["report", "merge", "shard1.xml", "shard1.xml", "-o", "x.xml"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    // Timings of that run balance a new split; it still covers every job once.
    let mut listed = Vec::new();
    for k in 1..=3 {
        let shard = format!("{k}/3");
        let out = runner(
            dir.path(),
            &[
                "test",
                &pipeline,
                "--list",
                "--shard",
                &shard,
                "--timings",
                "all.xml",
            ],
        )
        .output()
        .unwrap();
        assert_ok(&out);
        listed.extend(
            text(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with(' '))
                .map(String::from),
        );
    }
    listed.sort();
    assert_eq!(listed, all);
}

#[test]
fn bad_shards_and_timings_are_one_line_and_exit_2_without_booting() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), SHARDED);
    let check = |args: &[&str], env: &[(&str, &str)], wants: &str| {
        let mut cmd = runner(dir.path(), &["test", &pipeline]);
        cmd.args(args).env("RUNNER_KERNEL", "/nonexistent/vmlinux");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("runner: ") && stderr.contains(wants),
            "{stderr}"
        );
    };
    for bad in ["0/3", "4/3", "1/0", "x/3", "3"] {
        check(&["--shard", bad], &[], "invalid shard");
    }
    check(
        &[],
        &[("CI_NODE_INDEX", "0"), ("CI_NODE_TOTAL", "2")],
        "CI_NODE_INDEX",
    );
    check(&["--timings", &pipeline], &[], "not a JUnit report");

    // An explicit --shard wins over GitLab's variables; --list boots nothing
    // (the kernel path above does not exist).
    let mut cmd = runner(dir.path(), &["test", &pipeline, "--list", "--shard", "1/5"]);
    let out = cmd
        .env("RUNNER_KERNEL", "/nonexistent/vmlinux")
        .env("CI_NODE_INDEX", "2")
        .env("CI_NODE_TOTAL", "5")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(text(&out.stdout), "unit (N=1)\n    1. echo \"unit $N\"\n");
}

const RETRIED: &str = r#"
defaults:
  files: none
jobs:
  flaky-step:
    steps:
      - name: fails once
        run: test -f /tmp/m || { touch /tmp/m; echo first; exit 1; }
        retry: 2
  flaky-job:
    retry: 2
    steps:
      - name: fails in the first VM
        run: echo "attempt $RUNNER_ATTEMPT"; test "$RUNNER_ATTEMPT" -ge 2
  broken:
    retry: 1
    steps:
      - name: always fails
        run: printf 'no newline at the end'; exit 3
"#;

#[test]
fn retries_keep_earlier_attempts_in_junit_and_say_so_on_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), RETRIED);
    let out = runner(
        dir.path(),
        &["test", &pipeline, "--jobs", "2", "--out", "out"],
    )
    .output()
    .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for wanted in [
        "[flaky-step] first",
        "[flaky-step] fails once ... FAILED (exit code 1",
        "will retry (attempt 1/3)",
        "[flaky-step] fails once ... ok",
        "passed on attempt 2/3",
        "[flaky-job] attempt 1",
        "will retry in a fresh VM (attempt 1/3)",
        "[flaky-job] attempt 2",
        "[flaky-job] passed on attempt 2/3",
        // A partial line is shown when its step ends.
        "[broken] no newline at the end",
    ] {
        assert!(stdout.contains(wanted), "missing {wanted:?} in:\n{stdout}");
    }

    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let children = |job: &str| -> Vec<String> {
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase") && n.attribute("classname") == Some(job))
            .unwrap();
        case.children()
            .filter(|n| n.is_element())
            .map(|n| {
                let message = n.attribute("message").unwrap_or_default();
                format!("{} {message}", n.tag_name().name())
                    .trim()
                    .to_string()
            })
            .collect()
    };
    // The passing attempt printed nothing: no system-out.
    assert_eq!(
        children("flaky-step"),
        ["flakyFailure attempt 1/3: exit code 1"]
    );
    assert_eq!(
        children("flaky-job"),
        ["flakyFailure attempt 1/3: exit code 1", "system-out"]
    );
    assert_eq!(
        children("broken"),
        [
            "failure exit code 3",
            "rerunFailure attempt 1/2: exit code 3",
            "system-out"
        ]
    );
    // Each attempt of a job has its own log.
    let logs: Vec<String> = std::fs::read_dir(dir.path().join("out/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().any(|l| l.ends_with("flaky-job.attempt-2.log")),
        "{logs:?}"
    );
}

const TWO_TALKERS: &str = r#"
defaults:
  files: none
jobs:
  a:
    steps:
      - for i in 1 2 3; do echo "a-line $i"; sleep 0.3; done
  b:
    steps:
      - for i in 1 2 3; do echo "b-line $i"; sleep 0.3; done
"#;

/// With GITLAB_CI, each job's lines sit inside its own section, and
/// sections never interleave even though the jobs ran side by side.
#[test]
fn gitlab_sections_hold_each_jobs_live_lines_without_interleaving() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), TWO_TALKERS);
    let out = runner(
        dir.path(),
        &["test", &pipeline, "--jobs", "2", "--out", "out"],
    )
    .env("GITLAB_CI", "true")
    .output()
    .unwrap();
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let mut open: Option<String> = None;
    let mut lines_in = BTreeMap::<String, usize>::new();
    for line in stdout.lines() {
        if let Some(at) = line.find("section_start:") {
            assert!(open.is_none(), "nested section: {line:?}\n{stdout}");
            let id = line[at..].split(':').nth(2).unwrap();
            open = Some(id.split(['[', '\r']).next().unwrap().to_string());
        } else if let Some(at) = line.find("section_end:") {
            let id = line[at..]
                .split(':')
                .nth(2)
                .unwrap()
                .trim_end_matches(['\r', '\x1b', '[', '0', 'K']);
            assert_eq!(open.take().as_deref(), Some(id), "{stdout}");
        } else if let Some(job) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            if line.starts_with(&format!("[{job}] {job}-line ")) {
                let section = open
                    .as_deref()
                    .unwrap_or_else(|| panic!("outside a section: {line}"));
                assert!(section.ends_with(&format!("-{job}")), "{line} in {section}");
                *lines_in.entry(job.to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(lines_in.get("a"), Some(&3), "{stdout}");
    assert_eq!(lines_in.get("b"), Some(&3), "{stdout}");
}

#[test]
fn json_events_are_one_object_a_line_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        "defaults:\n  files: none\njobs:\n  j:\n    steps:\n      - echo hello\n      - exit 2\n",
    );
    let out = runner(
        dir.path(),
        &[
            "test",
            &pipeline,
            "--out",
            "out",
            "--message-format",
            "json",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run-started"));
    assert_eq!(kinds.last(), Some(&"summary"));
    assert!(events.iter().all(|e| e["v"] == 1));
    let output: String = events
        .iter()
        .filter(|e| e["type"] == "step-output")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(output, "hello\n");
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "step-finished")
        .collect();
    assert_eq!(finished[1]["exit_code"], 2);
    assert_eq!(events.last().unwrap()["failed"], 1);
}
