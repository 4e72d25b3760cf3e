//! Opt-in networking (`network:` in the pipeline), end to end through
//! `runner test`: a job with it fetches a file from an HTTP server this
//! test runs on the host's loopback (granted by name, as the operator
//! must), a job without it has no NIC and cannot, and an `allow` policy
//! lets through exactly the destinations it lists. Without the operator
//! naming it, the host's loopback is out of reach even of an open network,
//! and passt never runs as root. The server itself records which requests
//! reached it, so "cannot reach" is checked on the host, not only by the
//! guest's word.
//!
//! Runs on the backend `RUNNER_BACKEND` names (the nested tier runs it with
//! the kvm backend).

use std::path::Path;
use std::process::Output;

use e2e_tests::{
    job_log, processes_mentioning, require_tool, runner_test, vm_dirs, DnsServer, HttpServer,
};

const BODY: &str = "hello from the host, 7f3a9c";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The logs of `jobs`, one after the other, for a failure's message.
fn logs(dir: &Path, jobs: &[&str]) -> String {
    (jobs.iter())
        .map(|job| format!("--- {job}:\n{}\n", job_log(dir, job)))
        .collect()
}

fn run(dir: &Path, yaml: &str, grant: &str) -> Output {
    runner_test(dir, yaml)
        .args(["--jobs", "2", grant])
        .output()
        .unwrap()
}

#[test]
fn network_is_opt_in_and_allow_is_enforced_on_the_host() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|_| BODY.to_string());
    let port = server.port;
    let url = |path: &str| format!("http://10.0.2.2:{port}/{path}");
    // The same wget for every job, so the jobs that must fail differ from
    // the ones that must succeed only in their network. `timeout` bounds a
    // connection whose SYN is dropped (busybox wget's own -T crashes): a
    // generous one where the fetch must work, a short one where it cannot.
    let wget = |path: &str, secs: u32| format!("timeout {secs} wget -q -O - {}", url(path));
    let fetch = |path: &str| {
        format!(
            "body=$({}) && test \"$body\" = '{BODY}' && echo fetched-ok",
            wget(path, 300)
        )
    };
    let cannot_fetch = |path: &str| {
        format!(
            "if {}; then exit 1; fi; echo fetch-failed-as-expected",
            wget(path, 10)
        )
    };
    // Another port on the host: allowed, but not the server's.
    let other_port = if port == 65535 { 1 } else { port + 1 };
    let yaml = format!(
        r#"
name: net
defaults:
  files: none
jobs:
  open:
    network: true
    steps:
      - run: cat /etc/resolv.conf
      - run: ip addr show eth0
      - run: "{open}"
  none:
    steps:
      - run: ls /sys/class/net
      - run: test "$(ls /sys/class/net)" = lo
      - run: "{none}"
  allowed:
    network:
      allow: ["127.0.0.1:{port}"]
    steps:
      - run: "{allowed}"
  denied:
    network:
      allow: ["127.0.0.1:{other_port}"]
    steps:
      - run: "{denied}"
"#,
        open = fetch("open").replace('"', "\\\""),
        none = cannot_fetch("none").replace('"', "\\\""),
        allowed = fetch("allowed").replace('"', "\\\""),
        denied = cannot_fetch("denied").replace('"', "\\\""),
    );
    let dir = tempfile::tempdir().unwrap();
    // The operator names both host ports: the `allow` lists decide.
    let grant = format!("--allow-network=public,127.0.0.1:{port},127.0.0.1:{other_port}");
    let out = run(dir.path(), &yaml, &grant);
    let logs = logs(dir.path(), &["open", "none", "allowed", "denied"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}\n{logs}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let open = job_log(dir.path(), "open");
    assert!(open.contains("nameserver 10.0.2.3"), "{open}");
    assert!(open.contains("10.0.2.15"), "{open}");
    assert!(open.contains("fetched-ok"), "{open}");
    assert!(
        job_log(dir.path(), "allowed").contains("fetched-ok"),
        "{logs}"
    );
    let none = job_log(dir.path(), "none");
    assert!(none.contains("fetch-failed-as-expected"), "{none}");
    assert!(none.contains("Network is unreachable"), "{none}");
    assert!(
        job_log(dir.path(), "denied").contains("fetch-failed-as-expected"),
        "{logs}"
    );
    // The host dropped the denied job's connection, and said so.
    let stderr = text(&out.stderr);
    let dropped = format!("network policy of `denied`: dropped TCP to 10.0.2.2:{port}");
    assert!(stderr.contains(&dropped), "{stderr}");
    assert!(!stderr.contains("policy of `allowed`"), "{stderr}");
    // The host's own view: only the two jobs allowed to reach it did.
    assert_eq!(server.paths(), vec!["/allowed", "/open"], "{logs}");

    // Nothing left behind: no passt, no VM process, no VM directory.
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new());
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn an_open_network_never_reaches_the_host_unless_named_and_passt_is_not_root() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|_| BODY.to_string());
    let port = server.port;
    let yaml = format!(
        "name: net\ndefaults: {{ files: none }}\njobs:\n  open:\n    network: true\n    steps:\n      - run: \"if timeout 10 wget -q -O - http://10.0.2.2:{port}/host; then exit 1; fi; echo no-host-as-expected; sleep 5\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut runner = runner_test(dir.path(), &yaml)
        .arg("--allow-network")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // passt's ids while the job runs (its socket is in the VM directory).
    let needle = dir.path().to_string_lossy().into_owned();
    let mut passt_uids = Vec::new();
    while runner.try_wait().unwrap().is_none() {
        for line in processes_mentioning(&needle) {
            let pid = line.split(':').next().unwrap_or("");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("passt") {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(uid) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
                passt_uids.push(uid.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = runner.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(job_log(dir.path(), "open").contains("no-host-as-expected"));
    assert_eq!(
        server.paths(),
        Vec::<String>::new(),
        "the host's server was reached"
    );
    assert!(!passt_uids.is_empty(), "passt was never seen running");
    if nix::unistd::geteuid().is_root() {
        assert!(
            passt_uids.iter().all(|uid| uid != "0"),
            "passt ran as root: {passt_uids:?}"
        );
    }
}

/// Names in `allow`, enforced by the VM's egress process when the guest
/// resolves them, against a test resolver on the host (the operator's
/// `RUNNER_DNS_SERVER`): a listed name and a name under a listed wildcard
/// resolve and reach the host's server; a name not listed gets NXDOMAIN
/// and its query never reaches the resolver; the address a listed name
/// resolves to, hard-coded by a job that never asked for the name, is
/// dropped. The names resolve to the host's loopback, which the operator
/// named (so the guest is told the gateway).
#[test]
fn names_in_allow_are_enforced_when_the_guest_resolves_them() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|_| BODY.to_string());
    let resolver = DnsServer::start(
        |name| match name {
            "web.test" | "a.cdn.test" | "evil.test" => Some([127, 0, 0, 1]),
            _ => None,
        },
        60,
    );
    let port = server.port;
    let fetch = |host: &str, path: &str| {
        format!(
            "body=$(timeout 300 wget -q -O - http://{host}:{port}/{path}) && test \"$body\" = '{BODY}' && echo fetched-ok-{path}"
        )
    };
    let cannot = |host: &str, path: &str| {
        format!("if timeout 10 wget -q -O - http://{host}:{port}/{path}; then exit 1; fi; echo refused-{path}")
    };
    let yaml = format!(
        r#"
name: egress
defaults:
  files: none
  network:
    allow: ["web.test:{port}", "*.cdn.test:{port}"]
jobs:
  named:
    steps:
      - run: "{named}"
      - run: "{wild}"
      - run: "{evil}"
  hardcoded:
    steps:
      - run: "{hard}"
"#,
        named = fetch("web.test", "named").replace('"', "\\\""),
        wild = fetch("a.cdn.test", "wild").replace('"', "\\\""),
        evil = cannot("evil.test", "evil").replace('"', "\\\""),
        hard = cannot("10.0.2.2", "hardcoded").replace('"', "\\\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), &yaml)
        .args([
            "--jobs",
            "2",
            &format!("--allow-network=web.test:{port},*.cdn.test:{port}"),
        ])
        .env("RUNNER_DNS_SERVER", format!("127.0.0.1:{}", resolver.port))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("error:"),
        "{stderr}\n{}",
        text(&out.stdout)
    );
    let logs = logs(dir.path(), &["named", "hardcoded"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{stderr}\n{logs}",
        text(&out.stdout),
    );
    let named = job_log(dir.path(), "named");
    for done in ["fetched-ok-named", "fetched-ok-wild", "refused-evil"] {
        assert!(named.contains(done), "{done}: {logs}");
    }
    assert!(
        job_log(dir.path(), "hardcoded").contains("refused-hardcoded"),
        "{logs}"
    );
    // The host's own view: only the names reached it, and the resolver
    // never heard of the name the job may not resolve.
    assert_eq!(server.paths(), vec!["/named", "/wild"], "{logs}");
    let asked = resolver.asked();
    assert!(asked.iter().any(|n| n == "web.test"), "{asked:?}");
    assert!(asked.iter().any(|n| n == "a.cdn.test"), "{asked:?}");
    assert!(!asked.iter().any(|n| n.contains("evil")), "{asked:?}");
    assert!(
        stderr.contains("network policy of `named`: dropped the DNS query for `evil.test`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "network policy of `hardcoded`: dropped TCP to 10.0.2.2:{port}"
        )),
        "{stderr}"
    );
    // The run's report says what was refused, job by job.
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("==== named: network refused ====\nrefused  DNS  evil.test (NXDOMAIN)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "==== hardcoded: network refused ====\ndenied   TCP  -  10.0.2.2:{port}\n"
        )),
        "{stdout}"
    );
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new());
}

/// An audit lists exactly what the job touched, by the names it resolved,
/// and the `allow` list `--suggest-allow` prints from it makes the same
/// job pass with its network locked to that list.
#[test]
fn an_audit_s_suggested_allow_list_is_enough_in_block_mode() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|_| BODY.to_string());
    let resolver = DnsServer::start(
        |name| matches!(name, "web.test" | "a.cdn.test").then_some([127, 0, 0, 1]),
        60,
    );
    let port = server.port;
    let steps = format!(
        "    steps:\n      - run: \"test \\\"$(timeout 300 wget -q -O - http://web.test:{port}/one)\\\" = '{BODY}'\"\n      - run: \"test \\\"$(timeout 300 wget -q -O - http://a.cdn.test:{port}/two)\\\" = '{BODY}'\"\n"
    );
    let run = |network: &str, grant: &str| {
        let yaml = format!(
            "name: audit\ndefaults: {{ files: none }}\njobs:\n  fetch:\n    network: {network}\n{steps}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = runner_test(dir.path(), &yaml)
            .args([grant, "--suggest-allow"])
            .env("RUNNER_DNS_SERVER", format!("127.0.0.1:{}", resolver.port))
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}\n{}",
            text(&out.stderr),
            job_log(dir.path(), "fetch")
        );
        stdout
    };
    let named = format!("web.test:{port},a.cdn.test:{port}");
    let audit = run(
        "{ audit: true }",
        &format!("--allow-network=public,{named}"),
    );
    assert!(audit.contains("==== fetch: network audit (net "), "{audit}");
    // Both names answered the host (the gateway): one destination, which
    // both named.
    let row = format!("allowed  TCP  web.test,a.cdn.test  10.0.2.2:{port}  out ");
    assert!(audit.contains(&row), "{row}: {audit}");
    let allow = audit
        .lines()
        .find_map(|l| l.trim().strip_prefix("allow: "))
        .expect("a suggested allow list")
        .to_string();
    assert_eq!(
        allow,
        format!("[\"web.test:{port}\", \"a.cdn.test:{port}\"]")
    );
    // The list, pasted: the same job passes with its network locked.
    let locked = run(
        &format!("{{ allow: {allow} }}"),
        &format!("--allow-network={named}"),
    );
    assert!(!locked.contains("==== fetch: network refused"), "{locked}");
    assert_eq!(server.paths(), vec!["/one", "/one", "/two", "/two"]);
}

#[test]
fn an_unknown_network_policy_key_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: t\njobs:\n  a:\n    network:\n      alow: [\"example.com:443\"]\n    steps: [\"true\"]\n";
    let out = run(dir.path(), yaml, "--allow-network");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pipeline.yml:5:7"), "{stderr}");
    assert!(stderr.contains("unknown key `alow`"), "{stderr}");
    assert!(stderr.contains("did you mean `allow`"), "{stderr}");
}

#[test]
fn network_without_passt_is_one_line_and_exit_2_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: t\njobs:\n  a:\n    network: true\n    steps: [\"true\"]\n";
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    // passt not on PATH, and not named by RUNNER_PASST.
    let out = runner_test(dir.path(), yaml)
        .arg("--allow-network")
        .env("PATH", &empty)
        .env_remove("RUNNER_PASST")
        .output()
        .unwrap();
    // A RUNNER_PASST that names nothing.
    let named = runner_test(dir.path(), yaml)
        .arg("--allow-network")
        .env("RUNNER_PASST", dir.path().join("no-passt"))
        .output()
        .unwrap();
    for out in [out, named] {
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("apt-get install passt"), "{stderr}");
    }
    assert!(
        !dir.path().join("out").exists(),
        "nothing may start before the check"
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
