//! Parsing tests: valid files, and errors with their exact `file:line:col`.

use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(source: &str) -> Result<Pipeline, PipelineError> {
    Pipeline::parse(source, Path::new("pipelines/x.yml"), Path::new("/repo"))
}

/// Parses `source`, expecting an error; returns its one-line Display.
fn error(source: &str) -> String {
    match parse(source) {
        Ok(p) => panic!("expected an error, parsed {p:#?}"),
        Err(err) => {
            let text = err.to_string();
            assert!(!text.contains('\n'), "error is not one line: {text:?}");
            text
        }
    }
}

const FULL: &str = r#"
name: full
image:
  kernel: default
  rootfs: debian
vcpus: 2
memory: 1G
defaults:
  timeout: 10m
  step_timeout: 2m
  env:
    RUST_LOG: debug
    LEVEL: 1
  shell: /bin/bash
jobs:
  build:
    env: { MODE: fast }
    steps:
      - uname -a
      - name: with argv
        argv: [ls, -l, /]
        timeout: 5s
        env:
          X: "y"
      - |
        echo one
        echo two
  test:
    matrix:
      os: [alpine, debian]
      n: [1, 2, 3]
    allow_failure: true
    vcpus: 4
    memory: 256M
    image: ./img/rootfs.ext4
    workdir: sub/dir
    files:
      - src
      - crates/*/Cargo.toml
      - { from: target/debug/deps/foo-*, to: /opt/tests/ }
      - from: /etc/hostname
        to: /etc/host-name
        gitignore: false
    artifacts: [out/*.xml]
    steps:
      - true
"#;

#[test]
fn parses_a_full_pipeline() {
    let p = parse(FULL).unwrap();
    assert_eq!(p.name, "full");
    assert_eq!(p.vcpus, 2);
    assert_eq!(p.memory_mib, 1024);
    assert_eq!(p.image.rootfs, ImageRef::Named("debian".into()));
    assert_eq!(p.defaults.timeout, Some(Duration::from_secs(600)));
    assert_eq!(p.defaults.step_timeout, Some(Duration::from_secs(120)));
    assert_eq!(p.defaults.env["LEVEL"], "1");
    assert_eq!(p.defaults.shell.as_deref(), Some("/bin/bash"));
    assert_eq!(
        p.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["build", "test"]
    );

    let build = &p.jobs[0];
    assert_eq!(build.env["MODE"], "fast");
    assert_eq!(build.steps.len(), 3);
    assert_eq!(build.steps[0].name, "uname -a");
    assert_eq!(
        build.steps[0].command,
        StepCommand::Script("uname -a".into())
    );
    assert_eq!(build.steps[1].name, "with argv");
    assert_eq!(
        build.steps[1].command,
        StepCommand::Argv(vec!["ls".into(), "-l".into(), "/".into()])
    );
    assert_eq!(build.steps[1].timeout, Some(Duration::from_secs(5)));
    assert_eq!(build.steps[1].env["X"], "y");
    assert_eq!(build.steps[2].name, "echo one");
    assert_eq!(
        build.steps[2].command,
        StepCommand::Script("echo one\necho two\n".into())
    );
    assert!(!build.allow_failure);

    let test = &p.jobs[1];
    assert!(test.allow_failure);
    assert_eq!(test.vcpus, Some(4));
    assert_eq!(test.memory_mib, Some(256));
    assert_eq!(
        test.image.as_ref().unwrap().rootfs,
        ImageRef::Path("/repo/./img/rootfs.ext4".into())
    );
    assert_eq!(test.workdir.as_deref(), Some("/workspace/sub/dir"));
    assert_eq!(test.steps[0].command, StepCommand::Script("true".into()));
    assert_eq!(test.artifacts, Some(vec!["out/*.xml".to_string()]));
    let Some(Files::Entries(files)) = &test.files else {
        panic!("files: {:?}", test.files)
    };
    let pairs: Vec<(String, &str, bool)> = files
        .iter()
        .map(|f| (f.from.display().to_string(), f.to.as_str(), f.gitignore))
        .collect();
    assert_eq!(
        pairs,
        [
            ("/repo/src".to_string(), "/workspace/src", true),
            (
                "/repo/crates/*/Cargo.toml".to_string(),
                "/workspace/crates",
                true
            ),
            (
                "/repo/target/debug/deps/foo-*".to_string(),
                "/opt/tests/",
                true
            ),
            ("/etc/hostname".to_string(), "/etc/host-name", false),
        ]
    );
}

#[test]
fn matrix_expands_to_the_cartesian_product_in_order() {
    let p = parse(FULL).unwrap();
    let names: Vec<String> = p.jobs[1].expand().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "test (os=alpine, n=1)",
            "test (os=alpine, n=2)",
            "test (os=alpine, n=3)",
            "test (os=debian, n=1)",
            "test (os=debian, n=2)",
            "test (os=debian, n=3)",
        ]
    );
    let (_, combo) = &p.jobs[1].expand()[4];
    assert_eq!(
        combo,
        &vec![("os".into(), "debian".into()), ("n".into(), "2".into())]
    );
}

#[test]
fn defaults_apply_when_absent() {
    let p = parse("jobs:\n  a:\n    steps: [echo hi]\n").unwrap();
    assert_eq!(p.name, "x");
    assert_eq!(p.vcpus, DEFAULT_VCPUS);
    assert_eq!(p.memory_mib, DEFAULT_MEMORY_MIB);
    assert_eq!(p.image, Image::default());
    assert_eq!(p.jobs[0].files, None);
    let p = parse("image: debian\njobs:\n  a:\n    files: none\n    steps: [echo hi]\n").unwrap();
    assert_eq!(p.image.rootfs, ImageRef::Named("debian".into()));
    assert_eq!(p.image.kernel, ImageRef::Named("default".into()));
    assert_eq!(p.jobs[0].files, Some(Files::Nothing));
    let p = parse("jobs:\n  a:\n    files: []\n    steps: [echo hi]\n").unwrap();
    assert_eq!(p.jobs[0].files, Some(Files::Nothing));
}

#[test]
fn unknown_keys_have_a_hint_and_point_at_the_key() {
    let src = "jobs:\n  build:\n    stpes:\n      - make\n";
    assert_eq!(
        error(src),
        "pipelines/x.yml:3:5: unknown key `stpes` in job `build` (did you mean `steps`?)"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps: [x]\n    enviroment: {}\n"),
        "pipelines/x.yml:4:5: unknown key `enviroment` in job `a` (did you mean `env`?)"
    );
    assert_eq!(
        error("job:\n  a:\n    steps: [x]\n"),
        "pipelines/x.yml:1:1: unknown key `job` at the top level (did you mean `jobs`?)"
    );
    assert_eq!(
        error("defaults:\n  timout: 5m\njobs: {}\n"),
        "pipelines/x.yml:2:3: unknown key `timout` in `defaults` (did you mean `timeout`?)"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - run: x\n        nmae: y\n"),
        "pipelines/x.yml:5:9: unknown key `nmae` in step 1 of job `a` (did you mean `name`?)"
    );
    let no_hint = error("jobs:\n  a:\n    steps: [x]\n    banana: 1\n");
    assert!(
        no_hint.starts_with(
            "pipelines/x.yml:4:5: unknown key `banana` in job `a` (valid keys: steps, matrix,"
        ),
        "{no_hint}"
    );
    assert_eq!(
        error("image:\n  kernal: default\njobs: {}\n"),
        "pipelines/x.yml:2:3: unknown key `kernal` in `image` (did you mean `kernel`?)"
    );
    assert_eq!(
        error("jobs:\n  a:\n    files:\n      - {from: a, too: /b}\n    steps: [x]\n"),
        "pipelines/x.yml:4:19: unknown key `too` in a `files` entry in job `a` (did you mean `to`?)"
    );
}

#[test]
fn bad_values_point_at_the_value() {
    assert_eq!(
        error("jobs:\n  a:\n    timeout: 5x\n    steps: [x]\n"),
        "pipelines/x.yml:3:14: invalid duration `5x`: expected a number with a unit, like `30s`, `5m`, `1h30m` or `500ms`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - run: x\n        timeout: 0s\n"),
        "pipelines/x.yml:5:18: invalid duration `0s`: must be greater than zero"
    );
    assert_eq!(
        error("memory: 1T\njobs: {}\n"),
        "pipelines/x.yml:1:9: invalid memory size `1T`: expected a size like `512M`, `1G` or `2GiB`"
    );
    assert_eq!(
        error("vcpus: 0\njobs: {}\n"),
        "pipelines/x.yml:1:8: invalid vcpus `0`: expected a number from 1 to 64"
    );
    let image = error("image:\n  rootfs: debain\njobs: {}\n");
    assert!(
        image.starts_with(
            "pipelines/x.yml:2:11: unknown rootfs image `debain` (did you mean `debian`?)"
        ),
        "{image}"
    );
    assert_eq!(
        error("jobs:\n  a:\n    allow_failure: maybe\n    steps: [x]\n"),
        "pipelines/x.yml:3:20: expected `true` or `false`, not `maybe`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    env:\n      1X: y\n    steps: [x]\n"),
        "pipelines/x.yml:4:7: invalid environment variable name `1X`: use letters, digits and `_`, not starting with a digit"
    );
    assert_eq!(
        error("jobs:\n  a:\n    files: src\n    steps: [x]\n"),
        "pipelines/x.yml:3:12: `files` in job `a` must be `none` or a list, not `src` (write `files: [src]` for one path)"
    );
    let outside = error("jobs:\n  a:\n    files: [../secret]\n    steps: [x]\n");
    assert!(
        outside.starts_with("pipelines/x.yml:3:13: `../secret` is not inside the workspace"),
        "{outside}"
    );
}

#[test]
fn type_errors_keep_serde_context() {
    assert_eq!(
        error("jobs:\n  a:\n    steps: echo hi\n"),
        "pipelines/x.yml:3:12: jobs.a.steps: invalid type: string \"echo hi\", expected a list of steps"
    );
    assert_eq!(
        error("jobs:\n  a:\n    env: [A]\n    steps: [x]\n"),
        "pipelines/x.yml:3:10: jobs.a.env: invalid type: sequence, expected a mapping of variable names to values (in job `a`)"
    );
}

#[test]
fn structural_mistakes() {
    assert_eq!(
        error("jobs:\n  a:\n    steps: []\n"),
        "pipelines/x.yml:3:12: job `a` has no steps"
    );
    assert_eq!(
        error("jobs:\n  a:\n    env: {}\n"),
        "pipelines/x.yml:3:5: job `a` has no `steps`"
    );
    assert_eq!(
        error("jobs:\n  a:\n"),
        "pipelines/x.yml:2:5: job `a` has no `steps`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - run: x\n        argv: [y]\n"),
        "pipelines/x.yml:5:9: `argv` and `run` cannot both be set in step 1 of job `a`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - ok\n      - name: nothing\n"),
        "pipelines/x.yml:5:9: missing `run` or `argv` in step 2 of job `a`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - run: ''\n"),
        "pipelines/x.yml:4:14: `run` in step 1 of job `a` must not be empty"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      - argv: []\n"),
        "pipelines/x.yml:4:15: `argv` in step 1 of job `a` must not be empty"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps:\n      -\n      - x\n"),
        "pipelines/x.yml:4:8: empty step in step 1 of job `a`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps: [x]\n    steps: [y]\n"),
        "pipelines/x.yml:4:5: duplicate key `steps` in job `a`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    steps: [x]\n  a:\n    steps: [y]\n"),
        "pipelines/x.yml:4:3: duplicate job `a`"
    );
    assert_eq!(
        error("jobs: {}\n"),
        "pipelines/x.yml:1:7: `jobs` is empty: define at least one job"
    );
    assert_eq!(
        error("name: x\n"),
        "pipelines/x.yml:1:1: the pipeline has no `jobs` mapping"
    );
    assert_eq!(
        error("# nothing\n\n"),
        "pipelines/x.yml:1:1: the pipeline file is empty: it needs at least a `jobs` mapping"
    );
}

#[test]
fn matrix_mistakes() {
    assert_eq!(
        error("jobs:\n  a:\n    matrix:\n      os: []\n    steps: [x]\n"),
        "pipelines/x.yml:4:11: matrix variable `os` of job `a` has no values"
    );
    assert_eq!(
        error("jobs:\n  a:\n    matrix:\n      os: [x, y, x]\n    steps: [x]\n"),
        "pipelines/x.yml:4:18: duplicate value `x` for matrix variable `os` in job `a`"
    );
    assert_eq!(
        error("jobs:\n  a:\n    matrix:\n      my-var: [1]\n    steps: [x]\n"),
        "pipelines/x.yml:4:7: invalid environment variable name `my-var`: use letters, digits and `_`, not starting with a digit"
    );
    assert_eq!(
        error("jobs:\n  a:\n    matrix: {}\n    steps: [x]\n"),
        "pipelines/x.yml:3:13: `matrix` of job `a` has no variables"
    );
    // `a (v=1)` written out collides with the expansion of `a`.
    let src = "jobs:\n  a (v=1):\n    steps: [x]\n  a:\n    matrix: {v: [1, 2]}\n    steps: [x]\n";
    assert_eq!(
        error(src),
        "pipelines/x.yml:5:5: job `a` expands to `a (v=1)`, a name another job already has"
    );
    let big = "jobs:\n  a:\n    matrix:\n      x: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n      y: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n    steps: [x]\n";
    assert_eq!(
        error(big),
        "pipelines/x.yml:3:5: the matrix of job `a` expands to 289 jobs, more than the limit of 256"
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_eq!(
        error("jobs:\n  a:\n    steps: [x\n"),
        "pipelines/x.yml:4:1: did not find expected ',' or ']', while parsing a flow sequence at line 3 column 12"
    );
    assert_eq!(
        error("jobs:\n  a:\n\tsteps: [x]\n"),
        "pipelines/x.yml:3:1: found character that cannot start any token, while scanning for the next token (YAML indentation must use spaces, not tabs)"
    );
    assert_eq!(
        error("jobs: *nope\n"),
        "pipelines/x.yml:1:7: unknown anchor"
    );
}

#[test]
fn anchors_and_aliases_work() {
    // `x-…` keys at the top level exist to hold anchors.
    let src = "x-steps: &common\n  - echo shared\njobs:\n  a:\n    steps: *common\n";
    let p = parse(src).unwrap();
    assert_eq!(p.jobs[0].steps[0].name, "echo shared");
    let src =
        "jobs:\n  a:\n    env: &e {A: '1'}\n    steps: [x]\n  b:\n    env: *e\n    steps: [y]\n";
    let p = parse(src).unwrap();
    assert_eq!(p.jobs[1].env["A"], "1");
    // Only at the top level.
    assert!(error("jobs:\n  a:\n    x-foo: 1\n    steps: [x]\n")
        .contains("unknown key `x-foo` in job `a`"));
}

#[test]
fn load_finds_the_workspace_and_reports_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::create_dir_all(dir.path().join("ci/pipelines")).unwrap();
    let file = dir.path().join("ci/pipelines/hello.yml");
    std::fs::write(&file, "jobs:\n  a:\n    steps: [x]\n").unwrap();
    let p = Pipeline::load(&file).unwrap();
    assert_eq!(p.name, "hello");
    assert_eq!(p.workspace, dir.path().canonicalize().unwrap());

    let missing = dir.path().join("nope.yml");
    let err = Pipeline::load(&missing).unwrap_err();
    assert!(err.to_string().starts_with(&format!(
        "{}: cannot read pipeline file: No such file or directory",
        missing.display()
    )));
    assert_eq!(err.location(), None);
}

/// The example pipelines in `pipelines/` parse and plan as documented.
#[test]
fn example_pipelines_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let plan = |name: &str| {
        let pipeline = Pipeline::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        crate::plan::Plan::new(&pipeline)
    };
    let names = |plan: &crate::plan::Plan| -> Vec<String> {
        plan.jobs.iter().map(|j| j.name.clone()).collect()
    };

    let hello = plan("hello.yml");
    assert_eq!(names(&hello), ["hello"]);
    assert_eq!(hello.jobs[0].steps.len(), 3);
    assert_eq!(hello.jobs[0].workdir, "/");
    assert!(hello.jobs[0].files.is_empty());

    let matrix = plan("matrix.yml");
    assert_eq!(matrix.jobs.len(), 6);
    assert_eq!(matrix.jobs[1].name, "arith (N=1, OP=mul)");
    assert_eq!(matrix.jobs[1].env["GREETING"], "hello");

    let failing = plan("failing.yml");
    assert_eq!(names(&failing), ["fails", "times-out", "allowed"]);
    assert_eq!(
        failing.jobs[1].steps[0].timeout,
        Some(Duration::from_secs(2))
    );
    assert!(failing.jobs[2].allow_failure);

    let rust = plan("rust-crate.yml");
    let job = &rust.jobs[0];
    assert_eq!(job.workdir, "/opt/tests");
    assert_eq!(job.files.len(), 1);
    assert!(job.files[0]
        .from
        .ends_with("target/x86_64-unknown-linux-gnu/debug/deps/agent_protocol-????????????????"));
    assert_eq!(job.files[0].to, "/opt/tests/");

    let c = plan("c-toolchain.yml");
    assert_eq!(c.jobs.len(), 2);
    let ImageRef::Spec(spec) = &c.jobs[0].image.rootfs else {
        panic!("c-toolchain.yml must use an image spec")
    };
    assert_eq!(spec.packages, ["gcc", "libc6-dev", "make"]);
    assert_eq!(
        c.jobs[0].image, c.jobs[1].image,
        "matrix jobs share one image"
    );
    assert!(spec.files[0].from.is_file(), "{:?}", spec.files[0].from);

    let caches = plan("caches.yml");
    let cache = &caches.jobs[0].caches[0];
    assert_eq!(cache.key, "deps");
    assert_eq!(cache.paths, ["/var/cache/deps"]);
    assert!(cache.commits(true) && !cache.commits(false));

    let rust = plan("cache-rust.yml");
    assert_eq!(names(&rust), ["fetch-and-test", "test-offline"]);
    let (online, offline) = (&rust.jobs[0], &rust.jobs[1]);
    assert!(online.network.is_on() && !offline.network.is_on());
    assert_eq!(online.caches, offline.caches, "both jobs share one cache");
    let cache = &online.caches[0];
    assert!(cache.key.starts_with("cargo-"), "{}", cache.key);
    assert_eq!(
        cache.paths,
        ["/var/cache/cargo", "/workspace/examples/cache-rust/target"]
    );

    let containers = plan("containers.yml");
    assert_eq!(names(&containers), ["podman", "docker"]);
    for (job, package) in containers.jobs.iter().zip(["podman", "docker.io"]) {
        let ImageRef::Spec(spec) = &job.image.rootfs else {
            panic!("containers.yml must use image specs")
        };
        assert_eq!(spec.packages[0], package);
        // Container storage needs the on-disk root a `size` gives.
        assert!(spec.size_mib.is_some(), "{}: no size", job.name);
    }

    let services = plan("services.yml");
    assert_eq!(names(&services), ["queries"]);
    let db = &services.jobs[0].services;
    assert_eq!(db.len(), 1);
    assert_eq!((db[0].name.as_str(), db[0].memory_mib), ("db", 512));
    assert!(db[0].ready.is_some());
    // The job's image is the service's: its `psql` talks to the server.
    assert_eq!(db[0].image, services.jobs[0].image);

    let count = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(count, 9, "a new example needs a check here");
}
