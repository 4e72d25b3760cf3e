//! busybox `wget` in the minimal image, end to end through `runner test`: a
//! job granted the host's loopback (by name, as the operator must) fetches
//! pages from an HTTP server this test runs there, with a plain
//! `wget -O - http://IP:PORT/` and with `wget -T N`. Debian 12's
//! busybox-static has no wget timeouts and used to die on `-T` with
//! "Segmentation fault" (rootfs/build.sh says why and how it is fixed).
//! The server records which requests reached it, so a fetch is proven on
//! the host, not only by the guest's word.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use e2e_tests::{job_log, processes_mentioning, require_tool, runner_test, vm_dirs};

/// What the server answers for `path`: a body that names the path, so each
/// fetch shows up in the job log on its own.
fn body(path: &str) -> String {
    format!("served {path} from the host, 4b1d")
}

/// A tiny HTTP/1.0 server on the host's loopback that answers every GET
/// with [`body`] and records the paths it was asked for.
struct Server {
    port: u16,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test server");
        let port = listener.local_addr().unwrap().port();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = paths.clone();
        // Lives until the test process ends; it only ever answers.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(&conn);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Read the headers up to the blank line.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let body = body(&path);
                seen.lock().unwrap().push(path);
                let mut conn = &conn;
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}\n",
                    body.len() + 1
                );
            }
        });
        Server { port, paths }
    }

    fn paths(&self) -> Vec<String> {
        let mut paths = self.paths.lock().unwrap().clone();
        paths.sort();
        paths
    }
}

#[test]
fn busybox_wget_fetches_from_a_granted_host_port_with_and_without_t() {
    require_tool("passt", "passt");
    let server = Server::start();
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
