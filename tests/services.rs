//! `services:` end to end, with the test images: each service is a VM of
//! its own on its job's private segment, reached by name; the job's first
//! step waits for every `ready`; a service that is never ready, or that
//! fails during the job, fails the job as an error naming it, with the end
//! of its log; and nothing is left behind.
//!
//! The services here are the minimal image's busybox (`nc`, `httpd`), so
//! that the tests need no package download; the last test runs
//! `pipelines/services.yml`, a real PostgreSQL from Debian's packages.

use std::path::Path;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use e2e_tests::{
    both, eventually, job_log, processes_with_tmpdir, repo, require_tool, runner_test, vm_dirs,
    HttpServer,
};

fn service_log(dir: &Path, job: &str, service: &str) -> String {
    job_log(dir, &format!("{job}.service-{service}"))
}

#[test]
fn two_jobs_each_reach_their_own_two_services_by_name_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // Two jobs at once, each with a `db` and a `web` that answer with the
    // job's name: each job must get its own.
    let job = |name: &str| {
        format!(
            r#"
  {name}:
    services:
      - name: db
        run: while true; do echo "db of {name}" | nc -l -p 5432; done
        ready: netstat -ltn | grep -q ':5432 '
      - name: web
        run: |
          ip route
          if timeout 5 wget -q -O /dev/null http://1.1.1.1/; then echo REACHED-OUTSIDE; fi
          mkdir -p /srv && echo "web of $OWNER" > /srv/index.html
          httpd -p 8080 -h /srv
        ready: wget -q -O /dev/null http://127.0.0.1:8080/
        env: {{ OWNER: {name} }}
    steps:
      - echo ping | nc -w 10 db 5432
      - wget -q -O- http://web:8080/
      - if timeout 5 wget -q -O /dev/null http://1.1.1.1/; then exit 1; fi
"#
        )
    };
    let yaml = format!("jobs:{}{}", job("first"), job("second"));
    let out = runner_test(dir.path(), &yaml)
        .args(["--jobs", "2"])
        .output()
        .unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    for name in ["first", "second"] {
        let log = job_log(dir.path(), name);
        assert!(log.contains(&format!("db of {name}")), "{log}");
        assert!(log.contains(&format!("web of {name}")), "{log}");
        assert!(log.contains("service db is ready"), "{log}");
        assert!(log.contains("service web is ready"), "{log}");
        let web = service_log(dir.path(), name, "web");
        assert!(web.contains("==> ready"), "{web}");
        // Without a network grant a service has the segment and nothing
        // else: no default route, nothing outside answers.
        assert!(web.contains("10.0.3.0/24"), "{web}");
        assert!(!web.contains("default"), "{web}");
        // (The script itself is in the log too, after `==> run:`.)
        assert!(!web.lines().any(|l| l == "REACHED-OUTSIDE"), "{web}");
    }
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn a_job_with_a_granted_network_keeps_it_beside_its_services() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|path| format!("host saw {path}"));
    let dir = tempfile::tempdir().unwrap();
    let port = server.port;
    // Its own NIC (passt, the host's port it was granted) and its segment
    // NIC (the service), side by side; the service still has no way out.
    let yaml = format!(
        r#"
defaults: {{ files: none }}
jobs:
  both:
    network: {{ allow: ["127.0.0.1:{port}"] }}
    services:
      - name: db
        run: while true; do echo pong | nc -l -p 5432; done
        ready: netstat -ltn | grep -q ':5432 '
    steps:
      - echo ping | nc -w 10 db 5432
      - timeout 30 wget -q -O - http://10.0.2.2:{port}/from-the-job
"#
    );
    let out = runner_test(dir.path(), &yaml)
        .arg(format!("--allow-network=127.0.0.1:{port}"))
        .output()
        .unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    let log = job_log(dir.path(), "both");
    assert!(log.contains("pong"), "{log}");
    assert!(log.contains("host saw /from-the-job"), "{log}");
    assert_eq!(server.paths(), ["/from-the-job"]);
}

#[test]
fn a_service_that_is_never_ready_fails_its_job_with_its_name_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
jobs:
  waits:
    services:
      - name: never
        run: echo starting never; while true; do sleep 1; done
        ready: echo not ready yet; false
        ready_timeout: 3s
    steps: [echo must-not-run]
"#;
    let out = runner_test(dir.path(), yaml).output().unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("service `never` was not ready within 3s"),
        "{text}"
    );
    // The end of its log is in the error: what `ready` said.
    assert!(text.contains("not ready yet"), "{text}");
    assert!(!job_log(dir.path(), "waits").contains("must-not-run"));
    assert!(service_log(dir.path(), "waits", "never").contains("starting never"));
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn a_service_that_fails_during_the_job_stops_its_step_and_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    // The first step makes the service's `run` exit 3; the second would
    // never end on its own: only the service's failure can stop it.
    let yaml = r#"
jobs:
  crashes:
    timeout: 20m
    services:
      - name: flaky
        run: nc -l -p 7000; echo flaky is going down; exit 3
        ready: netstat -ltn | grep -q ':7000 '
    steps:
      - echo bye | nc -w 5 flaky 7000
      - while true; do sleep 1; done
      - echo must-not-run
"#;
    let out = runner_test(dir.path(), yaml).output().unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("service `flaky` `run` failed"), "{text}");
    assert!(text.contains("flaky is going down"), "{text}");
    let log = job_log(dir.path(), "crashes");
    assert!(!log.contains("must-not-run"), "{log}");
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn a_flooding_service_is_capped_and_one_too_big_for_the_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB of output against a 1 MiB log cap; then a service asking for
    // more memory than this host (24 GiB) has.
    let yaml = r#"
jobs:
  floods:
    services:
      - name: chatty
        run: head -c 8388608 /dev/zero | tr '\0' x; echo; echo done flooding
        ready: "true"
    steps: ["true"]
  huge:
    services:
      - { name: big, run: "true", memory: 1000G }
    steps: [echo must-not-run]
"#;
    let out = runner_test(dir.path(), yaml)
        .args(["--log-limit", "1M"])
        .output()
        .unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let chatty = dir.path().join("out/logs/01-floods.service-chatty.log");
    let size = std::fs::metadata(&chatty).unwrap().len();
    assert!(size <= 1 << 20, "{size} bytes");
    // The cap keeps the head and a rolling tail: the end is there.
    let tail = String::from_utf8_lossy(&std::fs::read(&chatty).unwrap()).into_owned();
    assert!(
        tail.contains("done flooding"),
        "{}",
        &tail[tail.len().saturating_sub(300)..]
    );
    assert!(job_log(dir.path(), "floods").contains("service chatty is ready"));
    assert!(
        text.contains("with its service's VM) but the host can give VMs only"),
        "{text}"
    );
    assert!(!text.contains("must-not-run"), "{text}");
}

#[test]
fn a_job_that_fails_before_its_services_are_ready_does_not_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    // The job's VM cannot boot; its service would never be ready, and may
    // wait 30 minutes: the job ends with its boot error all the same, and
    // says the service was not ready.
    std::fs::write(dir.path().join("bogus-kernel"), "not a kernel").unwrap();
    let yaml = r#"
jobs:
  early:
    image: { kernel: ./bogus-kernel, rootfs: minimal }
    services:
      - { name: slow, run: "true", ready: "false", ready_timeout: 30m }
    steps: ["true"]
"#;
    let out = runner_test(dir.path(), yaml).output().unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("VM failed to boot"), "{text}");
    assert!(
        text.contains("slow: not ready before the job ended"),
        "{text}"
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn a_killed_runner_leaves_no_service_nor_switch_behind() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
defaults: { files: none }
jobs:
  forever:
    services:
      - name: idle
        run: while true; do sleep 1; done
    steps: [echo step-running; sleep 3600]
"#;
    let mut runner = runner_test(dir.path(), yaml)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the step runs, the job's VM, the service's and the switch are
    // all up (the console prints the step's output as it comes); then
    // SIGKILL, which lets no cleanup run.
    let stdout = BufReader::new(runner.stdout.take().unwrap());
    let mut lines = stdout.lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("step-running"))),
        "the step never ran"
    );
    assert!(processes_with_tmpdir(dir.path()).len() > 3);
    runner.kill().unwrap();
    runner.wait().unwrap();
    eventually("every VM process and the switch to die", || {
        processes_with_tmpdir(dir.path()).is_empty()
    });
    // The job's, the service's and the switch's directories, which the
    // next run sweeps.
    assert_eq!(vm_dirs(dir.path()).len(), 3, "{:?}", vm_dirs(dir.path()));
    let out = runner_test(dir.path(), "jobs:\n  a:\n    steps: [\"true\"]\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

/// `pipelines/services.yml`: the job creates a table in PostgreSQL running
/// as its service, and reads its rows back. On kvm (the nested tier) with
/// warm start, it runs twice: the first run snapshots the service once
/// `ready` passed, and the second restores a clone of it that answers
/// without `run` running again. On QEMU, which keeps cold boots, it runs
/// once and no snapshot is made.
#[test]
fn the_example_pipeline_queries_postgres_running_as_its_service() {
    let yaml = std::fs::read_to_string(repo().join("pipelines/services.yml")).unwrap();
    let on_kvm = std::env::var("RUNNER_BACKEND").as_deref() == Ok("kvm");
    let runs = if on_kvm { 2 } else { 1 };
    for run in 1..=runs {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = runner_test(dir.path(), &yaml);
        if on_kvm {
            // The default runner cache, where the image is.
            cmd.env("RUNNER_COLD", "0");
        }
        let out = cmd.output().unwrap();
        let text = both(&out);
        assert!(out.status.success(), "run {run}: {text}");
        let log = job_log(dir.path(), "queries");
        assert!(log.contains("service db is ready"), "{log}");
        // The job's own rows, read back from the service.
        assert!(log.contains("(2 rows)"), "{log}");
        assert!(log.contains("| queries"), "{log}");
        let db = service_log(dir.path(), "queries", "db");
        let restored = db.contains("restored from a snapshot taken once `ready` passed");
        if !on_kvm {
            assert!(db.contains("ALTER ROLE") && !restored, "{db}");
            assert!(!text.contains("snapshot"), "{text}");
        } else if run == 2 {
            // A clone, ready at once: `run` never ran in it.
            assert!(restored && !db.contains("ALTER ROLE"), "{db}");
            assert!(!text.contains("boots cold"), "{text}");
        } else if text.contains("prepared,") {
            // This run built the service's snapshot (an earlier one may
            // have): `run` ran in the snapshot VM, and the job got a clone.
            assert!(text.contains("built and checked"), "{text}");
            assert!(db.contains("ALTER ROLE") && restored, "{db}");
        }
        assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
    }
}
