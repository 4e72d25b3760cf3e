//! The real `guest-agent` binary with `--listen-unix`: readiness line,
//! bounded memory under heavy output, and reaping of orphans.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_protocol::{Message, Stream, PROTOCOL_VERSION};
use common::{script, Client};

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guest-agent"))
            .arg("--listen-unix")
            .arg(&socket)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            format!("runner-agent: ready on unix socket {}", socket.display())
        );
        Agent {
            child,
            _dir: dir,
            socket,
        }
    }

    fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = Client { stream };
        assert!(matches!(c.hello(PROTOCOL_VERSION), Message::Hello { .. }));
        c
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn heavy_output_keeps_the_agent_small() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let idle = agent.status_kib("VmRSS:");
    c.send(Message::Exec(script(
        "head -c 20000000 /dev/zero | tr '\\0' 'x'",
    )));
    let mut total = 0usize;
    let mut all_x = true;
    let status = c.collect_exec(|s, bytes| {
        assert_eq!(s, Stream::Stdout);
        total += bytes.len();
        all_x &= bytes.iter().all(|b| *b == b'x');
        // Read slowly at first, so the agent has every reason to pile up
        // output if it were going to.
        if total < 2_000_000 {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert_eq!(status.code, Some(0));
    assert_eq!(total, 20_000_000);
    assert!(all_x);
    let peak = agent.status_kib("VmHWM:");
    eprintln!("agent RSS: idle {idle} KiB, peak during 20 MB of output {peak} KiB");
    assert!(
        peak < idle + 8 * 1024,
        "peak RSS {peak} KiB, idle {idle} KiB"
    );
}

#[test]
fn orphans_are_reaped() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // The script exits at once; its background child becomes an orphan of
    // the agent (a subreaper outside PID 1) and must not stay a zombie.
    let out = c.exec(script("(sleep 0.5; exit 3) >/dev/null 2>&1 & echo $!"));
    assert_eq!(out.status.code, Some(0));
    let orphan: u32 = out.stdout_str().trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ppid,
        agent.child.id(),
        "the orphan was not adopted by the agent"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(Instant::now() < until, "orphan {orphan} was never reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(c.ping(1), Message::Pong { nonce: 1, .. }));
}

#[test]
fn shutdown_exits_the_process_when_not_pid1() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    c.send(Message::Shutdown);
    assert_eq!(c.recv_control(), Message::ShuttingDown);
    drop(c);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < until, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
