//! `exec` against the real agent code: output streams, exit statuses,
//! signals, timeouts, cancel, stdin and large output.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use agent_protocol::{Frame, Message, Stream};
use common::{argv, connect, script};

#[test]
fn stdout_and_stderr_arrive_separately() {
    let (mut c, _) = connect();
    let out = c.exec(script("echo to-out; echo to-err >&2; echo more-out"));
    assert_eq!(out.stdout_str(), "to-out\nmore-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    assert_eq!(out.status.code, Some(0));
    assert!(out.status.success());
}

#[test]
fn exit_codes_and_environment() {
    let (mut c, _) = connect();
    assert_eq!(c.exec(argv(&["true"])).status.code, Some(0));
    assert_eq!(c.exec(argv(&["false"])).status.code, Some(1));
    assert_eq!(c.exec(script("exit 42")).status.code, Some(42));
    let mut huge_timeout = argv(&["true"]);
    huge_timeout.timeout_ms = Some(u64::MAX);
    assert_eq!(c.exec(huge_timeout).status.code, Some(0));

    let mut req = script("echo \"$HOME|$LANG|$TERM|$FOO|$PATH\"; pwd");
    req.env = vec![
        ("FOO".into(), "bar baz".into()),
        ("TERM".into(), "xterm".into()),
    ];
    req.cwd = Some("/usr".into());
    let out = c.exec(req);
    assert_eq!(
        out.stdout_str(),
        "/root|C.UTF-8|xterm|bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/usr\n"
    );
    // The shell of a script can be chosen.
    let mut req = script("echo $0");
    if let agent_protocol::Command::Script { shell, .. } = &mut req.command {
        *shell = "/bin/bash".into();
    }
    assert_eq!(c.exec(req).stdout_str(), "/bin/bash\n");
}

#[test]
fn missing_and_unexecutable_programs_say_why() {
    let (mut c, _) = connect();
    let out = c.exec(argv(&["no-such-program-xyz", "arg"]));
    assert_eq!(out.status.code, Some(127));
    assert_eq!(
        out.status.error.as_deref(),
        Some("cannot execute \"no-such-program-xyz\": No such file or directory")
    );
    let out = c.exec(argv(&["/no/such/path"]));
    assert_eq!(out.status.code, Some(127));
    assert!(out
        .status
        .error
        .unwrap()
        .contains("No such file or directory"));

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    let out = c.exec(argv(&[plain.to_str().unwrap()]));
    assert_eq!(out.status.code, Some(126));
    assert!(out.status.error.unwrap().contains("Permission denied"));

    let mut req = argv(&["true"]);
    req.cwd = Some("/no/such/dir".into());
    let out = c.exec(req);
    assert_eq!(out.status.code, Some(127));
    assert!(out
        .status
        .error
        .unwrap()
        .contains("cannot change directory to \"/no/such/dir\""));

    // The connection is still fine afterwards.
    assert_eq!(c.exec(argv(&["true"])).status.code, Some(0));
}

#[test]
fn death_by_signal_is_reported() {
    let (mut c, _) = connect();
    let out = c.exec(script("echo before; kill -9 $$; echo after"));
    assert_eq!(out.stdout_str(), "before\n");
    assert_eq!(out.status.code, None);
    assert_eq!(out.status.signal, Some(9));
    assert!(!out.status.timed_out && !out.status.cancelled);
    assert!(out.status.max_rss_kib > 0);
}

fn process_gone(pid: i32) -> bool {
    // Gone, or a zombie about to be reaped: either way no longer running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn timeout_kills_the_whole_group_quickly() {
    let (mut c, _) = connect();
    let mut req = script("sleep 1000 & echo $!; sleep 1000");
    req.timeout_ms = Some(300);
    let started = Instant::now();
    let out = c.exec(req);
    let took = started.elapsed();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert_eq!(out.status.signal, Some(9));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(out.status.duration_ms >= 300);
    let background: i32 = out.stdout_str().trim().parse().unwrap();
    assert!(
        wait_gone(background),
        "background sleep {background} survived"
    );
}

#[test]
fn cancel_kills_a_running_command() {
    let (mut c, _) = connect();
    c.send(Message::Exec(script(
        "echo started; sleep 1000 & echo $!; exec sleep 1000",
    )));
    let mut seen = String::new();
    while seen.lines().count() < 2 {
        match c.recv() {
            Some(Frame::Data(Stream::Stdout, bytes)) => {
                seen.push_str(&String::from_utf8_lossy(&bytes))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let started = Instant::now();
    c.send(Message::Cancel);
    let status = c.collect_exec(|_, _| {});
    assert!(status.cancelled && !status.timed_out, "{status:?}");
    assert_eq!(status.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(2));
    let background: i32 = seen.lines().nth(1).unwrap().parse().unwrap();
    assert!(wait_gone(background));
    // A late Cancel after Exited is ignored, and the connection goes on.
    c.send(Message::Cancel);
    assert_eq!(c.exec(argv(&["true"])).status.code, Some(0));
}

#[test]
fn dropped_connection_kills_the_command() {
    let (mut c, server) = connect();
    c.send(Message::Exec(script("echo $$; exec sleep 1000")));
    let pid: i32 = match c.recv() {
        Some(Frame::Data(Stream::Stdout, bytes)) => {
            String::from_utf8_lossy(&bytes).trim().parse().unwrap()
        }
        other => panic!("unexpected {other:?}"),
    };
    drop(c);
    server.join().unwrap();
    assert!(wait_gone(pid), "command {pid} survived its connection");
}

#[test]
fn stdin_round_trip() {
    let (mut c, _) = connect();
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = argv(&["cat"]);
    req.stdin = true;
    c.send(Message::Exec(req));
    // Feed stdin from another thread while this one reads the output, as a
    // real host does: cat's output must flow while its input is still coming.
    let mut writer = c.stream.try_clone().unwrap();
    let sent = data.clone();
    let feeder = std::thread::spawn(move || {
        for chunk in sent.chunks(50_000) {
            agent_protocol::write_frame(&mut writer, &Frame::Data(Stream::Stdin, chunk.to_vec()))
                .unwrap();
        }
        agent_protocol::write_frame(&mut writer, &Frame::Control(Message::StdinEof)).unwrap();
        writer.flush().unwrap();
    });
    let mut echoed = Vec::new();
    let status = c.collect_exec(|s, bytes| {
        assert_eq!(s, Stream::Stdout);
        echoed.extend_from_slice(bytes)
    });
    feeder.join().unwrap();
    assert_eq!(status.code, Some(0));
    assert!(
        echoed == data,
        "stdin came back altered ({} bytes)",
        echoed.len()
    );

    // Without stdin the command reads /dev/null.
    assert_eq!(c.exec(script("wc -c")).stdout_str().trim(), "0");
}

#[test]
fn twenty_megabytes_of_output_arrive_intact() {
    let (mut c, _) = connect();
    // Deterministic content the test can recompute: line numbers.
    let lines = 2_000_000u32;
    let out = {
        c.send(Message::Exec(script(&format!(
            "seq 1 {lines}; seq 1 1000 >&2"
        ))));
        let mut expected = (1..=lines).flat_map(|i| format!("{i}\n").into_bytes());
        let (mut got, mut mismatch, mut frames) = (0usize, false, 0u32);
        let mut stderr = Vec::new();
        let status = c.collect_exec(|s, bytes| match s {
            Stream::Stdout => {
                frames += 1;
                got += bytes.len();
                mismatch |= !bytes.iter().all(|b| expected.next() == Some(*b));
            }
            _ => stderr.extend_from_slice(bytes),
        });
        assert!(
            expected.next().is_none(),
            "output ended early after {got} bytes"
        );
        assert!(!mismatch, "output differs from seq's");
        assert!(
            frames > 100,
            "output came in {frames} frames: not streamed in chunks"
        );
        assert_eq!(stderr.iter().filter(|b| **b == b'\n').count(), 1000);
        (got, status)
    };
    assert!(out.0 > 14_000_000, "only {} bytes", out.0);
    assert_eq!(out.1.code, Some(0));
}

#[test]
fn background_writer_does_not_hang_the_exec() {
    let (mut c, _) = connect();
    let started = Instant::now();
    // The leader exits at once; a background child keeps stdout open.
    let out = c.exec(script("echo leader; (sleep 30; echo late) & echo $!"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code, Some(0));
    let mut lines = out
        .stdout_str()
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let background: i32 = lines.pop().unwrap().parse().unwrap();
    assert_eq!(lines, ["leader"]);
    // Leftovers are not killed on a normal exit; clean up after the test.
    // SAFETY: kill takes no pointers; the pid is the test's own leftover.
    unsafe { libc::kill(background, libc::SIGKILL) };
}

#[test]
fn concurrent_execs_on_several_connections() {
    // Each command waits until all four have started: served one after
    // another, the first would wait alone until its own backstop (a minute,
    // far beyond any machine's need) and print nothing.
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let dir = dir.path().display().to_string();
            std::thread::spawn(move || {
                let (mut c, _) = connect();
                let all_started = format!("[ $(ls {dir} | wc -l) -ge 4 ]");
                let out = c.exec(script(&format!(
                    "touch {dir}/started-{i}; for n in $(seq 3000); do {all_started} && break; \
                     sleep 0.02; done; {all_started} && echo {i}; exit {i}"
                )));
                assert_eq!(
                    out.stdout_str(),
                    format!("{i}\n"),
                    "connections were served one after another"
                );
                assert_eq!(out.status.code, Some(i));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn unread_stdin_neither_hangs_nor_piles_up() {
    let (mut c, _) = connect();
    let mut req = script("exec sleep 1000");
    req.stdin = true;
    req.timeout_ms = Some(400);
    c.send(Message::Exec(req));
    // 4 MB of stdin for a command that never reads it: the agent holds one
    // frame, the rest waits in the socket, and the timeout still fires.
    let mut writer = c.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..64 {
            agent_protocol::write_frame(&mut writer, &Frame::Data(Stream::Stdin, chunk.clone()))
                .unwrap();
        }
        agent_protocol::write_frame(&mut writer, &Frame::Control(Message::StdinEof)).unwrap();
    });
    let status = c.collect_exec(|_, _| {});
    assert!(status.timed_out, "{status:?}");
    // The leftover stdin frames are skipped; the connection carries on.
    feeder.join().unwrap();
    assert_eq!(c.exec(script("echo ok")).stdout_str(), "ok\n");
}
