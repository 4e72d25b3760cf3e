//! Shared pieces of the end-to-end tests: the guest images, booting a VM,
//! and running commands in it.
//!
//! Images come from RUNNER_KERNEL / RUNNER_ROOTFS when set (`scripts/test`
//! sets them); otherwise the named defaults are built on first use, exactly
//! as `runner` itself would.

pub mod chromium;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use agent_protocol::{Command, ExecRequest, ExitStatus, Stream};
use runner::session::wait_for_agent;
use runner::session::AgentSession;
use runner_machine::images::{ImageRef, Images};
use runner_machine::{select, Vm, VmSpec};

/// The repository's root (tests/ is one of its crates).
pub fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
}

pub struct GuestImages {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

pub fn images() -> &'static GuestImages {
    static IMAGES: OnceLock<GuestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        // The named defaults honour RUNNER_KERNEL / RUNNER_ROOTFS.
        let images = Images::from_env();
        let kernel = images.kernel(&ImageRef::Named("default".into()));
        let rootfs = images.rootfs(&ImageRef::Named("minimal".into()));
        match (kernel, rootfs) {
            (Ok(kernel), Ok(rootfs)) => GuestImages { kernel, rootfs },
            (k, r) => panic!(
                "guest images unavailable (kernel: {:?}, rootfs: {:?}); run scripts/test",
                k.err().map(|e| e.to_string()),
                r.err().map(|e| e.to_string())
            ),
        }
    })
}

pub fn spec(name: &str) -> VmSpec {
    let images = images();
    VmSpec {
        name: name.to_string(),
        kernel: images.kernel.clone(),
        rootfs: images.rootfs.clone(),
        vcpus: 1,
        memory_mib: 256,
        // Generous: on a loaded 2-core CI machine TCG boots slow down.
        boot_timeout: Duration::from_secs(120),
        serial_log_limit: Some(runner_machine::DEFAULT_SERIAL_LOG_LIMIT),
        network: Default::default(),
        segment: None,
        prepare: None,
        caches: Vec::new(),
    }
}

/// A booted VM and a first session with its agent.
pub struct TestVm {
    pub vm: Box<dyn Vm>,
    pub session: AgentSession,
}

pub fn boot(name: &str) -> TestVm {
    boot_spec(&spec(name))
}

/// Boots `spec` on the backend the environment selects.
pub fn boot_spec(spec: &VmSpec) -> TestVm {
    let backend = select::from_env().expect("a backend");
    let mut vm = backend.start(spec).expect("VM starts");
    let session = wait_for_agent(vm.as_mut(), spec.boot_timeout)
        .unwrap_or_else(|e| panic!("{}: guest did not become ready: {e}", spec.name));
    TestVm { vm, session }
}

impl TestVm {
    /// Another connection to the same agent.
    pub fn session(&self) -> AgentSession {
        let stream = self
            .vm
            .connect(agent_protocol::AGENT_PORT)
            .expect("connect");
        AgentSession::handshake(stream).expect("handshake")
    }
}

/// What a command did, with its output collected.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

pub fn sh(session: &mut AgentSession, script: &str) -> Ran {
    run(session, script_request(script, None))
}

pub fn script_request(script: &str, timeout: Option<Duration>) -> ExecRequest {
    ExecRequest {
        command: Command::Script {
            script: script.to_string(),
            shell: String::new(),
        },
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        ..Default::default()
    }
}

pub fn run(session: &mut AgentSession, request: ExecRequest) -> Ran {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = session
        .exec(request, None, &mut |stream, bytes| match stream {
            Stream::Stderr => stderr.extend_from_slice(bytes),
            _ => stdout.extend_from_slice(bytes),
        })
        .expect("exec");
    Ran {
        status,
        stdout,
        stderr,
    }
}

/// `runner test <dir>/pipeline.yml --out out` (with `yaml` written there),
/// run in `dir` with the test images, as CI runs it; VM directories go to
/// `dir` too. Add arguments and environment, then run it.
pub fn runner_test(dir: &std::path::Path, yaml: &str) -> std::process::Command {
    let file = dir.join("pipeline.yml");
    std::fs::write(&file, yaml).unwrap();
    let images = images();
    let mut cmd = std::process::Command::new(runner_bin());
    cmd.env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("CI", "true")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .arg("test")
        .arg(&file)
        .args(["--out", "out"]);
    cmd
}

/// Waits until `done`, checking every 200 ms; a generous bound (10 min)
/// only turns a hang into a failure naming `what`.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The log of the job whose slug ends with `name`, in a [`runner_test`]
/// run's `out/logs`.
pub fn job_log(dir: &std::path::Path, name: &str) -> String {
    let logs = dir.join("out/logs");
    let entry = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .find(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.trim_end_matches(".log").ends_with(name)
        })
        .unwrap_or_else(|| panic!("no log for {name} in {}", logs.display()));
    std::fs::read_to_string(entry.path()).unwrap()
}

/// A finished command's stdout then stderr, lossily decoded, for
/// assertions and their messages.
pub fn both(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `runner` binary built alongside these tests.
pub fn runner_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("runner");
    assert!(
        bin.is_file(),
        "{} missing; `cargo test --workspace` builds it",
        bin.display()
    );
    bin
}

/// The path of a tool the test cannot do without. A missing tool fails the
/// test with one line naming it and its Debian package: a test that cannot
/// run must never pass silently.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/sbin".into(), "/usr/sbin".into()]);
    std::env::join_paths(dirs)
        .ok()
        .and_then(|dirs| which::which_in_global(name, Some(dirs)).ok()?.next())
        .unwrap_or_else(|| panic!("{name} is missing: apt-get install {package}"))
}

/// The command lines of processes that mention `needle` (a test's temp
/// dir: every VM process names its sockets there).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    processes_where(|_, cmdline| cmdline.contains(needle))
}

/// Processes started with `TMPDIR=dir` (as [`runner_test`] starts the
/// runner, so everything it spawns inherits it: VM processes whose command
/// line names nothing of `dir`, like a segment's switch, too).
pub fn processes_with_tmpdir(dir: &std::path::Path) -> Vec<String> {
    let mut wanted = b"TMPDIR=".to_vec();
    wanted.extend(dir.as_os_str().as_encoded_bytes());
    processes_where(|proc_dir, _| {
        std::fs::read(proc_dir.join("environ"))
            .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == wanted))
    })
}

/// `pid: command line` of every process for which `matches(its /proc
/// directory, its command line)`.
fn processes_where(matches: impl Fn(&std::path::Path, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if matches(&proc_dir.path(), &cmdline) {
            found.push(format!(
                "{}: {cmdline}",
                proc_dir.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// The `runner-vm-*` directories in `dir`.
pub fn vm_dirs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("runner-vm-"))
        .collect()
}

/// A DNS server on the host's loopback for the egress tests: it answers
/// `A` queries from `table` (name -> address, with `ttl`), NXDOMAIN for
/// names not in it, an empty answer for other types, and records every
/// name it was asked, so a test can show what never reached it.
pub struct DnsServer {
    pub port: u16,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DnsServer {
    pub fn start(table: fn(&str) -> Option<[u8; 4]>, ttl: u32) -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding the test resolver");
        let port = socket.local_addr().unwrap().port();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        // Lives until the test process ends; it only ever answers.
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Some((name, question_end)) = dns_question(&buf[..n]) else {
                    continue;
                };
                let qtype = u16::from_be_bytes([buf[question_end - 4], buf[question_end - 3]]);
                log.lock().unwrap().push(name.clone());
                let mut answer = buf[..question_end].to_vec();
                answer[2] = 0x81; // a response, recursion desired
                answer[3] = 0x80; // recursion available, no error
                answer[6..12].fill(0);
                match table(&name) {
                    Some(address) if qtype == 1 => {
                        answer[7] = 1;
                        answer.extend([0xc0, 12, 0, 1, 0, 1]);
                        answer.extend(ttl.to_be_bytes());
                        answer.extend([0, 4]);
                        answer.extend(address);
                    }
                    Some(_) => {}
                    None => answer[3] = 0x83, // NXDOMAIN
                }
                let _ = socket.send_to(&answer, from);
            }
        });
        DnsServer { port, asked }
    }

    /// The names asked so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// A query's question name (lower case) and where its question ends.
fn dns_question(msg: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        if len == 0 || len > 63 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at + 1..at + 1 + len)?).to_lowercase());
        at += 1 + len;
    }
    msg.get(at + 1..at + 5)?;
    Some((labels.join("."), at + 5))
}

/// A tiny HTTP/1.0 server on the host's loopback: it answers every GET with
/// `body(path)` and records the paths it was asked for, so a fetch is
/// proven on the host, not only by the guest's word.
pub struct HttpServer {
    pub port: u16,
    paths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpServer {
    pub fn start(body: fn(&str) -> String) -> HttpServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the test server");
        let port = listener.local_addr().unwrap().port();
        let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
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
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        HttpServer { port, paths }
    }

    /// The paths asked for so far, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut paths = self.paths.lock().unwrap().clone();
        paths.sort();
        paths
    }
}
