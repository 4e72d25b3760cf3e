//! `services:`: what parses, what the plan makes of it, and every mistake
//! with its `file:line:col`.

use std::path::Path;
use std::time::Duration;

use crate::pipeline::service::{
    DEFAULT_READY_TIMEOUT, DEFAULT_SERVICE_MEMORY_MIB, MAX_SERVICES, SERVICE_VCPUS,
};
use crate::pipeline::{Env, Image, ImageRef, Pipeline, SpecBase};
use crate::plan::{Plan, PlannedService};

fn parse(text: &str) -> Result<Pipeline, String> {
    Pipeline::parse(text, Path::new("p.yml"), Path::new("/repo")).map_err(|e| e.to_string())
}

fn services(text: &str) -> Vec<Vec<PlannedService>> {
    let pipeline = parse(text).unwrap_or_else(|e| panic!("{e}"));
    Plan::new(&pipeline)
        .jobs
        .into_iter()
        .map(|job| job.services)
        .collect()
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(p) => panic!("expected an error, parsed {:#?}", p.jobs),
        Err(e) => {
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

/// Job `a` with this `services:` (indented under it) → the error.
fn job_error(services: &str) -> String {
    let indented: String = services.lines().map(|l| format!("    {l}\n")).collect();
    error(&format!("jobs:\n  a:\n{indented}    steps: [true]\n"))
}

#[test]
fn a_full_service_and_the_defaults() {
    let text = r#"
jobs:
  a:
    services:
      - name: db
        image: { base: debian, packages: [postgresql] }
        run: ./start-postgres.sh
        ready: pg_isready -h 127.0.0.1
        ready_timeout: 90s
        env: { POSTGRES_PASSWORD: test, PORT: 5432 }
        memory: 1G
      - name: cache
        run: redis-server
    env: { JOB_ONLY: x }
    steps: [true]
"#;
    let all = services(text);
    let [db, cache] = &all[0][..] else {
        panic!("{all:#?}")
    };
    let ImageRef::Spec(spec) = &db.image.rootfs else {
        panic!("{:?}", db.image)
    };
    assert_eq!(spec.base, SpecBase::Debian);
    assert_eq!(spec.packages, ["postgresql"]);
    assert_eq!(db.image.kernel, Image::default().kernel);
    let env = |pairs: &[(&str, &str)]| -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        (db.name.as_str(), db.run.as_str(), db.ready.as_deref()),
        ("db", "./start-postgres.sh", Some("pg_isready -h 127.0.0.1"))
    );
    assert_eq!(db.ready_timeout, Duration::from_secs(90));
    // The service's own env only: not the job's, not RUNNER_JOB.
    assert_eq!(
        db.env,
        env(&[("POSTGRES_PASSWORD", "test"), ("PORT", "5432")])
    );
    assert_eq!((db.memory_mib, db.vcpus), (1024, SERVICE_VCPUS));

    assert_eq!(
        cache,
        &PlannedService {
            name: "cache".into(),
            image: Image::default(),
            run: "redis-server".into(),
            ready: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            env: Env::new(),
            memory_mib: DEFAULT_SERVICE_MEMORY_MIB,
            vcpus: 1,
        }
    );
    assert_eq!(DEFAULT_READY_TIMEOUT, Duration::from_secs(120));
    assert_eq!(DEFAULT_SERVICE_MEMORY_MIB, 256);
    assert!(services("jobs:\n  a: { steps: [true] }\n")[0].is_empty());
}

#[test]
fn a_jobs_services_replace_the_defaults_and_an_empty_list_turns_them_off() {
    let text = r#"
defaults:
  services:
    - { name: db, run: postgres }
    - { name: web, run: httpd }
jobs:
  inherits: { steps: [true] }
  replaces:
    services: [{ name: db, run: mysqld }]
    steps: [true]
  none:
    services: []
    steps: [true]
  matrix:
    matrix: { N: [1, 2] }
    steps: [true]
"#;
    let runs: Vec<Vec<String>> = services(text)
        .into_iter()
        .map(|list| {
            list.into_iter()
                .map(|s| format!("{}={}", s.name, s.run))
                .collect()
        })
        .collect();
    assert_eq!(
        runs,
        [
            vec!["db=postgres", "web=httpd"],
            vec!["db=mysqld"],
            vec![],
            vec!["db=postgres", "web=httpd"],
            vec!["db=postgres", "web=httpd"],
        ]
    );
}

#[test]
fn a_service_without_an_image_boots_the_pipelines_not_the_jobs() {
    let text = r#"
image: debian
jobs:
  a:
    image: { base: minimal, setup: echo job }
    services:
      - { name: plain, run: x }
      - { name: own, run: x, image: { kernel: default, rootfs: ./svc.ext4 } }
    steps: [true]
"#;
    let pipeline = parse(text).unwrap();
    let plan = Plan::new(&pipeline);
    let job = &plan.jobs[0];
    let debian = Image {
        rootfs: ImageRef::Named("debian".into()),
        ..Image::default()
    };
    let own = Image {
        rootfs: ImageRef::Path("/repo/./svc.ext4".into()),
        ..Image::default()
    };
    assert_eq!(job.services[0].image, debian);
    assert_eq!(job.services[1].image, own);
    // What `runner test` resolves before the jobs start.
    let needed: Vec<&Image> = job.images().collect();
    assert_eq!(needed, [&job.image, &debian, &own]);
    // What `runner image build` and `prune --keep` build and keep.
    let named: Vec<&Image> = pipeline.images().collect();
    assert_eq!(named, [&debian, &job.image, &own]);
}

#[test]
fn an_image_spec_of_a_service_is_in_the_pipelines_images() {
    let text = r#"
defaults:
  services: [{ name: db, run: x, image: { base: debian, packages: [postgresql] } }]
jobs:
  a: { steps: [true] }
"#;
    let pipeline = parse(text).unwrap();
    let specs: Vec<&ImageRef> = pipeline
        .images()
        .map(|image| &image.rootfs)
        .filter(|rootfs| matches!(rootfs, ImageRef::Spec(_)))
        .collect();
    assert_eq!(specs.len(), 1);
    let plan = Plan::new(&pipeline);
    assert_eq!(
        plan.jobs[0].images().nth(1).map(|i| &i.rootfs),
        Some(specs[0])
    );
}

#[test]
fn mistakes_are_located() {
    let name_rule = "it is the service's host name, so 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`";
    let cases = [
        ("services:", "3:14: `services` in job `a` is empty: write `services: []` for no service".to_string()),
        ("services: db", "3:15: `services` in job `a` must be a list of mappings with `name` and `run`, not `db`".into()),
        ("services: { name: db, run: x }", "3:15: `services` in job `a` must be a list: write `- name: …` for each service".into()),
        ("services: [db]", "3:16: a service is a mapping with `name` and `run`, not `db`".into()),
        ("services: [~]", "3:16: empty service in job `a`: give it a `name` and a `run`".into()),
        // Two services with one name: at the second name, wherever it stands.
        ("services:\n  - { name: db, run: x }\n  - { name: db, run: y }", "5:17: two services of one job have the name `db`: each needs its own, the job reaches it by that name".into()),
        ("services:\n  - { run: x, name: db }\n  - { run: y, name: db }", "5:25: two services of one job have the name `db`: each needs its own, the job reaches it by that name".into()),
        // Names that are not one lowercase host name label.
        ("services: [{ name: Db, run: x }]", format!("3:24: invalid service name `Db`: {name_rule}")),
        ("services: [{ name: db_1, run: x }]", format!("3:24: invalid service name `db_1`: {name_rule}")),
        ("services: [{ name: -db, run: x }]", format!("3:24: invalid service name `-db`: {name_rule}")),
        ("services: [{ name: db-, run: x }]", format!("3:24: invalid service name `db-`: {name_rule}")),
        ("services: [{ name: 'db.local', run: x }]", format!("3:24: invalid service name `db.local`: {name_rule}")),
        (&format!("services: [{{ name: {}, run: x }}]", "d".repeat(64)), format!("3:24: invalid service name `{}`: {name_rule}", "d".repeat(64))),
        ("services: [{ name: '', run: x }]", "3:24: a service name must not be empty: it is the host name the job reaches it by".into()),
        ("services: [{ name: localhost, run: x }]", "3:24: service name `localhost` is taken: it names each VM's own loopback; call the service something else, like `db`".into()),
        ("services: [{ name: 5432, run: x }]", "3:24: service name `5432` would be read as an IPv4 address, not a name: put a letter in it, like `db5432`".into()),
        // `run` and `name` are required, and `run` and `ready` are scripts.
        ("services: [{ name: db }]", "3:16: service `db` in job `a` has no `run`: give the command that starts it".into()),
        ("services:\n  - name: db\n    ready: pg_isready", "4:9: service `db` in job `a` has no `run`: give the command that starts it".into()),
        ("services: [{ run: x }]", "3:16: service 1 in job `a` has no `name`: it is the host name the job reaches it by".into()),
        ("services: [{ name: db, run: '' }]", "3:33: `run` in service 1 in job `a` must not be empty".into()),
        ("services: [{ name: db, run: '  ' }]", "3:33: `run` in service 1 in job `a` must not be empty".into()),
        ("services: [{ name: db, run: x, ready: '' }]", "3:43: `ready` in service 1 in job `a` must not be empty".into()),
        // Values read like the job's.
        ("services: [{ name: db, run: x, ready_timeout: 0s }]", "3:51: invalid duration `0s`: must be greater than zero".into()),
        ("services: [{ name: db, run: x, ready_timeout: 0 }]", "3:51: invalid duration `0`: must be greater than zero".into()),
        ("services: [{ name: db, run: x, ready_timeout: soon }]", "3:51: invalid duration `soon`: expected a number with a unit, like `30s`, `5m`, `1h30m` or `500ms`".into()),
        ("services: [{ name: db, run: x, memory: 8M }]", "3:44: memory size `8M` is too small: a guest needs at least 16M".into()),
        ("services: [{ name: db, run: x, memory: 1T }]", "3:44: invalid memory size `1T`: expected a size like `512M`, `1G` or `2GiB`".into()),
        ("services: [{ name: db, run: x, memory: 2048G }]", "3:44: memory size `2048G` is larger than 1 TiB".into()),
        ("services: [{ name: db, run: x, env: { 1X: y } }]", "3:43: invalid environment variable name `1X`: use letters, digits and `_`, not starting with a digit".into()),
        ("services: [{ name: db, run: x, image: debain }]", "3:43: unknown rootfs image `debain` (did you mean `debian`?): known rootfs images are minimal, debian; a file is given by path, like `./images/rootfs.img`".into()),
        ("services: [{ name: db, run: x, image: { base: debian, setpu: x } }]", "3:59: unknown key `setpu` in `image` in service 1 in job `a` (did you mean `setup`?)".into()),
        // Keys.
        ("services: [{ name: db, run: x, vcpus: 2 }]", "3:36: unknown key `vcpus` in service 1 in job `a` (valid keys: name, image, run, ready, ready_timeout, env, memory)".into()),
        ("services: [{ name: db, command: x }]", "3:28: unknown key `command` in service 1 in job `a` (did you mean `run`?)".into()),
        ("services: [{ name: db, run: x, name: db2 }]", "3:36: duplicate key `name` in service 1 in job `a`".into()),
        ("services:\n  - { name: db, run: x }\n  - { name: web, run: x, redy: x }", "5:30: unknown key `redy` in service 2 in job `a` (did you mean `ready`?)".into()),
    ];
    for (services, expected) in cases {
        let err = job_error(services);
        assert_eq!(err, format!("p.yml:{expected}"), "{services}");
    }
    assert_eq!(
        error("defaults:\n  services: [{ name: db }]\njobs:\n  a: { steps: [true] }\n"),
        "p.yml:2:14: service `db` in `defaults` has no `run`: give the command that starts it"
    );
}

#[test]
fn a_job_has_at_most_eight_services() {
    let list = |n: usize| -> String {
        let items: Vec<String> = (0..n)
            .map(|i| format!("  - {{ name: s{i}, run: x }}"))
            .collect();
        format!("services:\n{}", items.join("\n"))
    };
    // The first service too many is the one pointed at: line 3 is
    // `services:`, the ninth service is on line 12.
    assert_eq!(
        job_error(&list(MAX_SERVICES + 1)),
        "p.yml:12:9: more than 8 services in job `a`: each is a VM of its own"
    );
    let indented: String = list(MAX_SERVICES)
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let most = services(&format!("jobs:\n  a:\n{indented}    steps: [true]\n"));
    assert_eq!(most[0].len(), MAX_SERVICES);
}
