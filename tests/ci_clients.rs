//! The CI examples in docs/ under real clients.
//!
//! * docs/gitlab-ci.yml runs under gitlab-ci-local's shell executor, as
//!   GitLab would run it: `parallel: 3` gives three jobs, each runs the real
//!   `runner` on real guests, and the three JUnit files they keep as
//!   artifacts must together hold every job of the pipeline exactly once.
//! * docs/Jenkinsfile is parsed as Groovy by npm-groovy-lint (CodeNarc and
//!   Groovy's own parser). That is Groovy syntax only: no tool that checks
//!   declarative-pipeline semantics can be installed here (docs/ci.md).
//!
//! Both tools are pinned by tests/ci-clients/package-lock.json and installed
//! by scripts/setup-host under ~/.cache/runner/ci-clients. A missing one
//! fails its test with one line: a test that cannot run never passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e_tests::{images, repo, require_tool, runner_bin};

/// An npm tool from tests/ci-clients, as scripts/setup-host installs it.
fn ci_client(name: &str) -> PathBuf {
    let cache = std::env::var_os("RUNNER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/runner")))
        .unwrap_or_default();
    let tool = cache.join("ci-clients/node_modules/.bin").join(name);
    assert!(
        tool.is_file(),
        "{name} is missing from {}: run scripts/setup-host (it installs tests/ci-clients with npm, Node.js 20 or later)",
        tool.display()
    );
    require_tool("node", "nodejs");
    tool
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=runner",
            "-c",
            "user.email=runner@localhost",
        ])
        .args(args)
        .output()
        .unwrap();
    assert_ok(&format!("git {args:?}"), &out);
}

/// The jobs `runner test --list` plans for a pipeline, by name.
fn planned_jobs(dir: &Path, pipeline: &str) -> Vec<String> {
    let out = Command::new(runner_bin())
        .current_dir(dir)
        .args(["test", pipeline, "--list", "--message-format", "json"])
        .env_remove("CI_NODE_INDEX")
        .env_remove("CI_NODE_TOTAL")
        .output()
        .unwrap();
    assert_ok("runner test --list", &out);
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["type"] == "planned-job")
        .map(|event| event["job"].as_str().unwrap().to_string())
        .collect()
}

/// Suite (job) name → failures + errors, of one JUnit file.
fn junit_suites(path: &Path) -> BTreeMap<String, u64> {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml)
        .unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()));
    let count =
        |n: roxmltree::Node, a: &str| -> u64 { n.attribute(a).map_or(0, |v| v.parse().unwrap()) };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .map(|n| {
            let name = n.attribute("name").unwrap().to_string();
            (name, count(n, "failures") + count(n, "errors"))
        })
        .collect()
}

/// A project as a user would have it: `ci_file` as .gitlab-ci.yml and the
/// pipeline it names, committed (gitlab-ci-local reads git).
fn gitlab_project(dir: &Path, ci_file: &str, pipeline: &str) -> PathBuf {
    require_tool("rsync", "rsync");
    require_tool("git", "git");
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("pipelines")).unwrap();
    std::fs::copy(repo().join(ci_file), project.join(".gitlab-ci.yml")).unwrap();
    std::fs::copy(repo().join(pipeline), project.join(pipeline)).unwrap();
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "-A"]);
    // No remote: gitlab-ci-local says so and falls back to made-up
    // project data, and nothing can reach for the network.
    git(&project, &["commit", "-q", "-m", "example"]);
    project
}

/// gitlab-ci-local in `project`, its jobs finding the runner built
/// alongside these tests on their PATH, and the test images.
///
/// --shell-isolation gives each job its own build directory and its own
/// artifacts under .gitlab-ci-local/artifacts/<job>/, as separate GitLab
/// machines would; --no-artifacts-to-source keeps the copies apart.
/// (gitlab-ci-local sets GITLAB_CI=false and drops what precedes a
/// carriage return in a line, so the runner's collapsible sections, which
/// tests/ci.rs checks, cannot be seen here.)
fn gitlab_ci_local(dir: &Path, project: &Path) -> Command {
    let gitlab_ci_local = ci_client("gitlab-ci-local");
    let bin = dir.join("bin");
    if !bin.exists() {
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(runner_bin(), bin.join("runner")).unwrap();
    }
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let images = images();
    let mut cmd = Command::new(&gitlab_ci_local);
    cmd.current_dir(project)
        .args([
            "--shell-isolation",
            "--no-artifacts-to-source",
            "--no-color",
        ])
        // Not the user's ~/.gitlab-ci-local (variables, settings).
        .arg("--home")
        .arg(dir.join("home"))
        .env("PATH", &path)
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("TMPDIR", dir);
    for var in ["CI", "GITLAB_CI", "CI_NODE_INDEX", "CI_NODE_TOTAL"] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn gitlab_example_under_gitlab_ci_local_runs_three_shards_holding_every_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let project = gitlab_project(dir.path(), "docs/gitlab-ci.yml", "pipelines/matrix.yml");
    let expected = planned_jobs(&project, "pipelines/matrix.yml");
    assert!(expected.len() >= 3, "too few jobs to shard: {expected:?}");

    let out = gitlab_ci_local(dir.path(), &project).output().unwrap();
    assert_ok("gitlab-ci-local", &out);

    let artifacts = project.join(".gitlab-ci-local/artifacts");
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&artifacts)
        .unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()))
        .map(|entry| entry.unwrap().path().join("runner-out/junit.xml"))
        .filter(|junit| junit.is_file())
        .collect();
    reports.sort();
    assert_eq!(
        reports.len(),
        3,
        "one JUnit report per shard expected under {}: {reports:?}",
        artifacts.display()
    );

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for junit in &reports {
        let suites = junit_suites(junit);
        assert!(!suites.is_empty(), "{} holds no job", junit.display());
        // `paths: [runner-out/]` keeps the rest too: a log for each job.
        let logs = junit.with_file_name("logs");
        let kept = std::fs::read_dir(&logs).map_or(0, |d| d.count());
        assert_eq!(kept, suites.len(), "job logs in {}", logs.display());
        for (job, failed) in suites {
            assert_eq!(failed, 0, "{job} failed, in {}", junit.display());
            *seen.entry(job).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "jobs in more than one shard: {twice:?}");
    let mut expected = expected;
    expected.sort();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        expected,
        "the shards' jobs are not the pipeline's"
    );
}

/// docs/gitlab-ci-caches.yml, two pipeline runs, each on a "machine" of its
/// own (its own runner cache store): the first fills the cache and exports
/// it into GitLab's cache; the second imports it from there and its job
/// finds what the first left.
#[test]
fn gitlab_cache_example_carries_a_runner_cache_from_one_pipeline_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let project = gitlab_project(
        dir.path(),
        "docs/gitlab-ci-caches.yml",
        "pipelines/caches.yml",
    );
    let mut outputs = Vec::new();
    for machine in ["first", "second"] {
        let out = gitlab_ci_local(dir.path(), &project)
            .env("RUNNER_CACHE_DIR", dir.path().join(machine))
            .output()
            .unwrap();
        assert_ok(&format!("gitlab-ci-local, {machine} run"), &out);
        outputs.push(format!("{}{}", text(&out.stdout), text(&out.stderr)));
    }
    let [first, second] = &outputs[..] else {
        unreachable!()
    };
    assert!(first.contains("cache miss: filling it"), "{first}");
    assert!(first.contains("exported deps version 1"), "{first}");
    assert!(second.contains("imported deps as version 1"), "{second}");
    assert!(second.contains("cache hit: filled at"), "{second}");
    assert!(!second.contains("cache miss"), "{second}");
}

/// A Jenkinsfile that is not valid Groovy: a stage's closing brace is gone.
const BROKEN_JENKINSFILE: &str = "pipeline {\n    agent any\n    stages {\n        stage('x') {\n            steps { sh 'true' }\n    }\n}\n";

#[test]
fn jenkins_example_parses_as_groovy_under_npm_groovy_lint() {
    let lint = ci_client("npm-groovy-lint");
    require_tool("java", "openjdk-17-jre-headless");

    // The example and a broken one in one run (one JVM): the broken one
    // proves the parser really ran and rejects bad syntax.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("docs/Jenkinsfile"),
        dir.path().join("Jenkinsfile"),
    )
    .unwrap();
    std::fs::write(dir.path().join("Broken.Jenkinsfile"), BROKEN_JENKINSFILE).unwrap();
    let out = Command::new(&lint)
        .current_dir(dir.path())
        .args([
            "--noserver",
            "--failon",
            "none",
            "--output",
            "json",
            "--config",
        ])
        .arg(repo().join("tests/ci-clients"))
        .args(["Jenkinsfile", "Broken.Jenkinsfile"])
        .output()
        .unwrap();
    assert_ok("npm-groovy-lint", &out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "npm-groovy-lint printed no JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let findings = |file: &str| -> Vec<(String, String)> {
        let path = dir.path().join(file);
        let linted = &report["files"][path.to_str().unwrap()];
        assert!(linted.is_object(), "{file} was not linted:\n{report}");
        linted["errors"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                        (s("severity"), format!("{}: {}", s("rule"), s("msg")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let broken = findings("Broken.Jenkinsfile");
    assert!(
        broken.iter().any(|(_, m)| m.starts_with("NglParseError")),
        "the broken Jenkinsfile was not rejected, so nothing was parsed: {broken:?}\n{report}"
    );
    // Errors and warnings fail; infos (style hints) are left to taste.
    let bad: Vec<_> = findings("Jenkinsfile")
        .into_iter()
        .filter(|(severity, _)| severity != "info")
        .collect();
    assert!(bad.is_empty(), "docs/Jenkinsfile: {bad:?}");
}
