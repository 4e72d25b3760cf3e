use std::path::Path;
use std::time::Duration;

use agent_protocol::Command;

use super::*;
use crate::pipeline::ImageRef;

fn plan(source: &str) -> Plan {
    let pipeline = Pipeline::parse(source, Path::new("p.yml"), Path::new("/repo")).unwrap();
    Plan::new(&pipeline)
}

const PRECEDENCE: &str = r#"
vcpus: 2
defaults:
  timeout: 10m
  step_timeout: 1m
  shell: /bin/bash
  env: { A: defaults, B: defaults, C: defaults, D: defaults, E: defaults }
jobs:
  job:
    env: { B: job, C: job, D: job }
    matrix:
      C: [matrix]
      D: [matrix]
    steps:
      - name: step
        run: env
        env: { D: step }
        timeout: 5s
        workdir: /tmp
      - argv: [env]
  other:
    timeout: 3m
    step_timeout: 20s
    vcpus: 4
    memory: 2G
    image: debian
    shell: /bin/dash
    files: none
    artifacts: [report.xml]
    steps: [true]
"#;

#[test]
fn env_precedence_is_defaults_job_matrix_step() {
    let p = plan(PRECEDENCE);
    let job = &p.jobs[0];
    assert_eq!(job.name, "job (C=matrix, D=matrix)");
    assert_eq!(job.env["A"], "defaults");
    assert_eq!(job.env["B"], "job");
    assert_eq!(job.env["C"], "matrix");
    assert_eq!(job.env["D"], "matrix");
    assert_eq!(job.env["RUNNER_JOB"], "job (C=matrix, D=matrix)");
    let step = &job.steps[0];
    assert_eq!(step.env["D"], "step");
    assert_eq!(step.env["C"], "matrix");
    assert_eq!(step.env["E"], "defaults");
    assert_eq!(job.steps[1].env["D"], "matrix");
}

#[test]
fn timeouts_shell_workdir_and_machine_resolve() {
    let p = plan(PRECEDENCE);
    let (job, other) = (&p.jobs[0], &p.jobs[1]);
    assert_eq!(job.timeout, Duration::from_secs(600));
    assert_eq!(job.steps[0].timeout, Some(Duration::from_secs(5)));
    assert_eq!(job.steps[1].timeout, Some(Duration::from_secs(60)));
    assert_eq!(job.steps[0].shell.as_deref(), Some("/bin/bash"));
    assert_eq!(job.steps[0].workdir, "/tmp");
    assert_eq!(job.steps[1].workdir, "/workspace");
    assert_eq!(job.vcpus, 2);
    assert_eq!(job.memory_mib, 512);
    assert_eq!(job.files, vec![FileEntry::workspace(Path::new("/repo"))]);
    assert!(job.artifacts.is_empty());

    assert_eq!(other.timeout, Duration::from_secs(180));
    assert_eq!(other.steps[0].timeout, Some(Duration::from_secs(20)));
    assert_eq!(other.steps[0].shell.as_deref(), Some("/bin/dash"));
    assert_eq!(other.vcpus, 4);
    assert_eq!(other.memory_mib, 2048);
    assert_eq!(other.image.rootfs, ImageRef::Named("debian".into()));
    assert!(other.files.is_empty());
    // Nothing is copied to /workspace, so steps run in `/`.
    assert_eq!(other.workdir, "/");
    assert_eq!(other.artifacts, ["report.xml"]);

    let bare = plan("jobs:\n  a:\n    steps: [x]\n");
    assert_eq!(bare.jobs[0].timeout, DEFAULT_JOB_TIMEOUT);
    assert_eq!(bare.jobs[0].steps[0].timeout, None);
    assert_eq!(bare.jobs[0].steps[0].shell, None);
}

#[test]
fn exec_request_takes_the_smaller_timeout() {
    let p = plan(PRECEDENCE);
    let step = &p.jobs[0].steps[0];
    let req = step.exec_request(Some(Duration::from_secs(2)));
    assert_eq!(req.timeout_ms, Some(2000));
    assert_eq!(step.exec_request(None).timeout_ms, Some(5000));
    assert_eq!(
        req.command,
        Command::Script {
            script: "env".into(),
            shell: "/bin/bash".into()
        }
    );
    assert_eq!(req.cwd.as_deref(), Some("/tmp"));
    assert!(req.env.contains(&("D".to_string(), "step".to_string())));
    assert!(!req.stdin);
    let argv = p.jobs[0].steps[1].exec_request(None);
    assert_eq!(argv.command, Command::Argv(vec!["env".into()]));
    let bare = plan("jobs:\n  a:\n    steps: [x]\n");
    assert_eq!(bare.jobs[0].steps[0].exec_request(None).timeout_ms, None);
}

const MATRIX: &str = r#"
jobs:
  lint:
    steps: [x]
  test:
    matrix:
      os: [alpine, debian]
      mode: [debug, release]
    steps: [x]
  docs:
    steps: [x]
"#;

fn names(p: &Plan) -> Vec<&str> {
    p.jobs.iter().map(|j| j.name.as_str()).collect()
}

#[test]
fn order_is_file_order_then_matrix_order_with_unique_slugs() {
    let p = plan(MATRIX);
    assert_eq!(
        names(&p),
        [
            "lint",
            "test (os=alpine, mode=debug)",
            "test (os=alpine, mode=release)",
            "test (os=debian, mode=debug)",
            "test (os=debian, mode=release)",
            "docs",
        ]
    );
    let slugs: Vec<&str> = p.jobs.iter().map(|j| j.slug.as_str()).collect();
    assert_eq!(
        slugs,
        [
            "01-lint",
            "02-test-os-alpine-mode-debug",
            "03-test-os-alpine-mode-release",
            "04-test-os-debian-mode-debug",
            "05-test-os-debian-mode-release",
            "06-docs",
        ]
    );
    assert_eq!(p.jobs[3].env["os"], "debian");
    assert_eq!(p.jobs[3].env["mode"], "debug");
    assert_eq!(p.jobs[3].job_name, "test");
    assert_eq!(slugify("../../etc (a=/b)"), "etc-a-b");
    assert_eq!(slugify("ünïcode"), "n-code");
    assert_eq!(slugify("()"), "job");
}

#[test]
fn filters_are_substrings_or_globs_and_or_together() {
    let only = |filters: &[&str]| {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        plan(MATRIX).filter(&filters)
    };
    assert_eq!(names(&only(&[]).unwrap()).len(), 6);
    assert_eq!(
        names(&only(&["release"]).unwrap()),
        [
            "test (os=alpine, mode=release)",
            "test (os=debian, mode=release)"
        ]
    );
    assert_eq!(
        names(&only(&["lint", "test (os=debian*"]).unwrap()),
        [
            "lint",
            "test (os=debian, mode=debug)",
            "test (os=debian, mode=release)"
        ]
    );
    // A glob must match the whole name.
    assert_eq!(names(&only(&["d*s"]).unwrap()), ["docs"]);
    let filtered = only(&["docs"]).unwrap();
    assert_eq!(filtered.jobs[0].index, 5);
    assert_eq!(filtered.jobs[0].slug, "06-docs");

    let err = only(&["lint", "nope"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "filter `nope` matches no job; the jobs are: lint, test (os=alpine, mode=debug), \
         test (os=alpine, mode=release), test (os=debian, mode=debug), \
         test (os=debian, mode=release), docs"
    );
    assert!(matches!(
        only(&["[unclosed"]).unwrap_err(),
        FilterError::BadPattern { .. }
    ));
}
