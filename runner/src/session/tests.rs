//! Sessions against fake agents on a socket pair: hostile behaviour that a
//! real guest would need luck or a slow machine to show, made certain.

use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::{
    read_frame, write_frame, Command, ExecRequest, Frame, Message, Stream, PROTOCOL_VERSION,
};

use super::{AgentSession, SessionError, HOST_GRACE};

/// Answers the handshake, then hands the socket to `behave`.
fn fake_agent(behave: impl FnOnce(UnixStream) + Send + 'static) -> (AgentSession, JoinHandle<()>) {
    fake_agent_with(&[], behave)
}

/// [`fake_agent`] offering `capabilities` in its Hello.
pub(super) fn fake_agent_with(
    capabilities: &[&str],
    behave: impl FnOnce(UnixStream) + Send + 'static,
) -> (AgentSession, JoinHandle<()>) {
    let capabilities: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
    let (host, mut guest) = UnixStream::pair().unwrap();
    let agent = std::thread::spawn(move || {
        let Ok(Some(Frame::Control(Message::Hello { .. }))) = read_frame(&mut guest) else {
            panic!("no Hello from the host");
        };
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities,
            who: "fake agent".into(),
        };
        write_frame(&mut guest, &Frame::Control(hello)).unwrap();
        behave(guest);
    });
    let session = AgentSession::handshake(host).unwrap();
    (session, agent)
}

fn request(timeout: Duration) -> ExecRequest {
    ExecRequest {
        command: Command::Argv(vec!["yes".into()]),
        timeout_ms: Some(timeout.as_millis() as u64),
        ..ExecRequest::default()
    }
}

/// Streams output until the host hangs up and never reports an exit, so
/// only the host's deadline can end the command.
fn chatty_agent_that_never_exits(mut guest: UnixStream) {
    let Ok(Some(Frame::Control(Message::Exec(_)))) = read_frame(&mut guest) else {
        panic!("no Exec from the host");
    };
    while write_frame(&mut guest, &Frame::Data(Stream::Stdout, b"y\n".to_vec())).is_ok() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_guest_that_keeps_talking_is_stopped_at_the_host_deadline() {
    let (mut session, agent) = fake_agent(chatty_agent_that_never_exits);
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let mut received = 0usize;
    let result = session.exec(request(timeout), None, &mut |_, bytes| {
        received += bytes.len()
    });
    let err = result.expect_err("the command cannot end by itself");
    assert!(
        matches!(err, SessionError::ExecDeadline { timeout: t, grace } if t == timeout && grace == HOST_GRACE),
        "{err:?}"
    );
    assert!(err.is_host_deadline());
    assert!(
        err.to_string()
            .starts_with("host deadline: guest did not stop the step"),
        "{err}"
    );
    assert!(received > 0, "the output was passed on until then");
    // Generous: only a hang would break this.
    assert!(started.elapsed() < timeout + HOST_GRACE + Duration::from_secs(60));
    drop(session);
    agent.join().unwrap();
}

#[test]
fn the_session_deadline_bounds_a_command_without_a_timeout() {
    let (mut session, agent) = fake_agent(chatty_agent_that_never_exits);
    session.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
    let mut req = request(Duration::ZERO);
    req.timeout_ms = None;
    let err = session.exec(req, None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SessionError::Deadline), "{err:?}");
    drop(session);
    agent.join().unwrap();
}

#[test]
fn a_guest_that_stops_taking_files_is_stopped_at_the_deadline() {
    // Reads the request, then nothing more until the test is over: the
    // socket buffer fills and every further write would block for ever.
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let (mut session, agent) = fake_agent(move |mut guest| {
        let _ = read_frame(&mut guest);
        let _ = wait.recv();
    });
    session.set_deadline(Some(Instant::now() + Duration::from_millis(500)));
    let err = session
        .put_tar("/", |out| {
            let block = vec![0u8; 64 * 1024];
            loop {
                out.write_all(&block)?;
            }
        })
        .unwrap_err();
    assert!(matches!(err, SessionError::Deadline), "{err:?}");
    done.send(()).unwrap();
    drop(session);
    agent.join().unwrap();
}

#[test]
fn a_guest_that_sends_artifacts_for_ever_is_stopped_at_the_deadline() {
    let (mut session, agent) = fake_agent(|mut guest| {
        let _ = read_frame(&mut guest);
        while write_frame(&mut guest, &Frame::Data(Stream::Tar, vec![0u8; 512])).is_ok() {}
    });
    let dest = tempfile::tempdir().unwrap();
    session.set_deadline(Some(Instant::now() + Duration::from_millis(500)));
    let err = session
        .get_files(
            "/",
            &["*".to_string()],
            dest.path(),
            &mut super::ArtifactBudget::new(Default::default()),
        )
        .unwrap_err();
    assert!(matches!(err, SessionError::Deadline), "{err:?}");
    drop(session);
    agent.join().unwrap();
}

#[test]
fn a_command_that_reports_its_timeout_is_not_a_host_deadline() {
    let (mut session, agent) = fake_agent(|mut guest| {
        let _ = read_frame(&mut guest);
        let status = agent_protocol::ExitStatus {
            signal: Some(9),
            timed_out: true,
            ..Default::default()
        };
        write_frame(&mut guest, &Frame::Control(Message::Exited(status))).unwrap();
    });
    let status = session
        .exec(request(Duration::from_millis(100)), None, &mut |_, _| {})
        .unwrap();
    assert!(status.timed_out);
    drop(session);
    agent.join().unwrap();
}

#[test]
fn stdin_left_unread_for_a_while_is_not_lost() {
    const TOTAL: usize = 4 << 20;
    let (mut session, agent) = fake_agent(|mut guest| {
        let _ = read_frame(&mut guest);
        // Take nothing for longer than the pump's recheck interval, as a
        // command busy with something else would: the pump must wait.
        std::thread::sleep(super::STDIN_RECHECK + Duration::from_millis(500));
        let mut got = 0usize;
        loop {
            match read_frame(&mut guest) {
                Ok(Some(Frame::Data(Stream::Stdin, bytes))) => got += bytes.len(),
                Ok(Some(Frame::Control(Message::StdinEof))) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let count = Frame::Data(Stream::Stdout, got.to_string().into_bytes());
        write_frame(&mut guest, &count).unwrap();
        let exited = Message::Exited(agent_protocol::ExitStatus {
            code: Some(0),
            ..Default::default()
        });
        write_frame(&mut guest, &Frame::Control(exited)).unwrap();
    });
    let input = std::io::Cursor::new(vec![7u8; TOTAL]);
    let mut out = Vec::new();
    let status = session
        .exec(
            request(Duration::from_secs(600)),
            Some(Box::new(input)),
            &mut |_, bytes| out.extend_from_slice(bytes),
        )
        .unwrap();
    assert!(status.success());
    assert_eq!(String::from_utf8(out).unwrap(), TOTAL.to_string());
    drop(session);
    agent.join().unwrap();
}

#[test]
fn a_guest_that_exits_without_taking_stdin_does_not_hold_the_session() {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let (mut session, agent) = fake_agent(move |mut guest| {
        let _ = read_frame(&mut guest);
        let exited = Message::Exited(agent_protocol::ExitStatus {
            code: Some(0),
            ..Default::default()
        });
        write_frame(&mut guest, &Frame::Control(exited)).unwrap();
        // Never reads again: the host's stdin pump is left blocked.
        let _ = wait.recv();
    });
    let endless = std::io::repeat(b'y');
    let status = session
        .exec(
            request(Duration::from_secs(600)),
            Some(Box::new(endless)),
            &mut |_, _| {},
        )
        .unwrap();
    assert!(status.success());
    done.send(()).unwrap();
    drop(session);
    agent.join().unwrap();
}

#[test]
fn an_agent_without_the_network_capability_is_not_asked_to_configure_one() {
    let (mut session, agent) = fake_agent(|mut guest| {
        // The host must hang up without sending anything.
        assert!(matches!(read_frame(&mut guest), Ok(None)));
    });
    let err = session
        .configure_network(&agent_protocol::NetworkConfig::default())
        .unwrap_err();
    assert!(matches!(err, SessionError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("rebuild the rootfs"), "{err}");
    drop(session);
    agent.join().unwrap();
}
