//! Interactive shells on a pty, driven through the real agent code over a
//! socket pair with this host's /bin/sh.

mod common;

use agent_protocol::{Frame, Message, ShellRequest, Stream, WindowSize};
use common::{connect, Client};

fn open_shell(c: &mut Client, size: WindowSize) {
    c.send(Message::Shell(ShellRequest {
        argv: Vec::new(),
        env: vec![
            ("TERM".into(), "xterm".into()),
            ("GREETING".into(), "from-the-step".into()),
            // A fixed prompt, whatever this host's shell prints by default.
            ("PS1".into(), "agent-test$ ".into()),
        ],
        cwd: Some("/tmp".into()),
        size,
    }));
}

/// Reads terminal output until it contains `needle`; panics on `Exited`
/// or anything else. The socket's read timeout (30 s) bounds each wait.
fn read_until(c: &mut Client, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        read_more(c, seen);
    }
}

/// Reads one chunk of terminal output into `seen`.
fn read_more(c: &mut Client, seen: &mut String) {
    match c.recv() {
        Some(Frame::Data(Stream::Stdout, bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
        other => panic!("expected terminal output, got {other:?}; output so far:\n{seen}"),
    }
}

fn type_line(c: &mut Client, line: &str) {
    c.send_data(Stream::Stdin, format!("{line}\n").as_bytes());
}

#[test]
fn a_shell_gets_a_terminal_env_cwd_resizes_and_its_exit_code() {
    let (mut c, _) = connect();
    open_shell(&mut c, WindowSize { rows: 24, cols: 80 });
    let mut seen = String::new();
    // The typed text is echoed with `$((6*7))` in it; only the shell's
    // answer has the 42.
    type_line(&mut c, "echo answer=$((6*7)) $GREETING; pwd; tty");
    read_until(&mut c, &mut seen, "answer=42 from-the-step");
    read_until(&mut c, &mut seen, "/tmp");
    read_until(&mut c, &mut seen, "/dev/pts/");

    c.send(Message::Resize(WindowSize {
        rows: 40,
        cols: 100,
    }));
    type_line(&mut c, "stty size");
    read_until(&mut c, &mut seen, "40 100");

    // Ctrl-C is a byte; the terminal's line discipline makes it SIGINT
    // for the foreground job, and the shell carries on.
    type_line(&mut c, "sleep 1000");
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.send_data(Stream::Stdin, b"\x03");
    type_line(&mut c, "echo after=$((1+1))");
    read_until(&mut c, &mut seen, "after=2");

    type_line(&mut c, "exit 3");
    let status = c.collect_exec(|_, _| {});
    assert_eq!(status.code, Some(3), "{status:?}\n{seen}");
    assert_eq!(status.error, None);

    // The connection serves further requests.
    assert!(matches!(c.ping(7), Message::Pong { nonce: 7, .. }));
}

#[test]
fn ctrl_d_ends_the_shell() {
    let (mut c, _) = connect();
    open_shell(&mut c, WindowSize { rows: 24, cols: 80 });
    let mut seen = String::new();
    type_line(&mut c, "echo ready=$((2+3))");
    read_until(&mut c, &mut seen, "ready=5");
    c.send_data(Stream::Stdin, b"\x04");
    let status = c.collect_exec(|_, _| {});
    assert_eq!(status.code, Some(0), "{status:?}\n{seen}");
}

#[test]
fn a_missing_shell_or_workdir_is_reported() {
    let (mut c, _) = connect();
    c.send(Message::Shell(ShellRequest {
        cwd: Some("/no/such/dir".into()),
        ..Default::default()
    }));
    let status = c.collect_exec(|_, _| {});
    let error = status.error.expect("an error");
    assert!(error.contains("/no/such/dir"), "{error}");
    c.send(Message::Shell(ShellRequest {
        argv: vec!["/no/such/shell".into()],
        ..Default::default()
    }));
    let status = c.collect_exec(|_, _| {});
    assert_eq!(status.code, Some(127), "{status:?}");
}

#[test]
fn a_host_that_goes_away_takes_the_shell_and_its_jobs_along() {
    let (mut c, server) = connect();
    open_shell(&mut c, WindowSize { rows: 24, cols: 80 });
    let mut seen = String::new();
    // A background job sits in a process group of its own: killing the
    // shell's group alone would miss it.
    // `pid$(echo :)` is not in the echoed input, only in the answer.
    type_line(&mut c, "sleep 1000 & echo pid$(echo :)$!");
    read_until(&mut c, &mut seen, "pid:");
    let start = seen.find("pid:").unwrap() + 4;
    while !seen[start..].contains('\n') {
        read_more(&mut c, &mut seen);
    }
    let pid: i32 = seen[start..]
        .lines()
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {seen:?}"));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(c);
    server.join().unwrap();
    // Killed, and reaped by the agent's reaper (we are its subreaper).
    let gone = (0..600).any(|_| {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        if alive {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        !alive
    });
    assert!(gone, "the background job {pid} outlived the shell");
}
