//! busybox `wget` in the minimal image, end to end through `runner test`: a
//! job granted the host's loopback (by name, as the operator must) fetches
//! pages from an HTTP server this test runs there, with a plain
//! `wget -O - http://IP:PORT/` and with `wget -T N`. Debian 12's
//! busybox-static has no wget timeouts and used to die on `-T` with
//! "Segmentation fault" (rootfs/build.sh says why and how it is fixed).
//! The server records which requests reached it, so a fetch is proven on
//! the host, not only by the guest's word.

use e2e_tests::{job_log, processes_mentioning, require_tool, runner_test, vm_dirs, HttpServer};

/// What the server answers for `path`: a body that names the path, so each
/// fetch shows up in the job log on its own.
fn body(path: &str) -> String {
    format!("served {path} from the host, 4b1d")
}

#[test]
fn busybox_wget_fetches_from_a_granted_host_port_with_and_without_t() {
    require_tool("passt", "passt");
    let server = HttpServer::start(|path| format!("{}\n", body(path)));
    let port = server.port;
    // 10.0.2.2 is the host as passt maps it, reachable only where granted.
    let yaml = format!(
        r#"
name: wget
defaults:
  files: none
jobs:
  fetch:
    network:
      allow: ["127.0.0.1:{port}"]
    steps:
      - run: wget -O - http://10.0.2.2:{port}/
      - run: wget -T 30 -O - http://10.0.2.2:{port}/with-timeout
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), &yaml)
        .arg(format!("--allow-network=127.0.0.1:{port}"))
        .output()
        .unwrap();
    let log = job_log(dir.path(), "fetch");
    let context = format!(
        "stdout:\n{}\nstderr:\n{}\njob log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(!log.contains("SIGSEGV"), "{context}");
    // wget -O - writes the body alone on its line of stdout.
    for path in ["/", "/with-timeout"] {
        assert!(
            log.lines().any(|l| l == body(path)),
            "no body for {path}\n{context}"
        );
    }
    assert_eq!(server.paths(), vec!["/", "/with-timeout"], "{context}");

    // Nothing left behind: no passt, no VM process, no VM directory.
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new());
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
