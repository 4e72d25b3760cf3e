//! Handshake, ping, shutdown and bad input on a connection.

mod common;

use std::io::{Read, Write};

use agent_protocol::{Message, Stream, CAPABILITIES, MAX_FRAME, PROTOCOL_VERSION};
use common::{connect, connect_raw};
use guest_agent::ConnectionEnd;

#[test]
fn hello_is_answered_with_version_and_capabilities() {
    let (mut c, _) = connect_raw();
    match c.hello(PROTOCOL_VERSION) {
        Message::Hello {
            version,
            capabilities,
            who,
        } => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(capabilities, CAPABILITIES);
            assert!(who.starts_with("runner-agent "), "{who}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn version_mismatch_is_an_error_and_closes() {
    let (mut c, server) = connect_raw();
    match c.hello(PROTOCOL_VERSION + 1) {
        Message::Error { message } => {
            assert!(message.contains("version mismatch"), "{message}");
            assert!(message.contains(&format!("version {}", PROTOCOL_VERSION + 1)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv(), None, "connection must close");
    assert_eq!(server.join().unwrap(), ConnectionEnd::Closed);
}

#[test]
fn a_request_before_hello_is_refused() {
    let (mut c, _) = connect_raw();
    c.send(Message::Ping { nonce: 1 });
    assert!(matches!(c.recv_control(), Message::Error { message } if message.contains("hello")));
    assert_eq!(c.recv(), None);
}

#[test]
fn ping_answers_pong_with_the_nonce() {
    let (mut c, _) = connect();
    match c.ping(0xdead_beef) {
        Message::Pong { nonce, uptime_ms } => {
            assert_eq!(nonce, 0xdead_beef);
            assert!(uptime_ms > 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let (mut good, _) = connect();
    // A command running on the good connection while the others misbehave.
    good.send(Message::Exec(common::script("sleep 0.3; echo still-here")));

    // Bad JSON in a control frame.
    let (mut bad, server) = connect();
    bad.stream
        .write_all(&[5, 0, 0, 0, 0, b'{', b'x', b'y', b'z', b'}'])
        .unwrap();
    match bad.recv_control() {
        Message::Error { message } => assert!(message.contains("malformed"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(bad.recv(), None);
    assert_eq!(server.join().unwrap(), ConnectionEnd::Closed);

    // An oversized frame header: refused before reading (or allocating) it.
    let (mut big, server) = connect();
    let mut header = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    header.push(1);
    big.stream.write_all(&header).unwrap();
    match big.recv_control() {
        Message::Error { message } => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.join().unwrap(), ConnectionEnd::Closed);

    // Unknown frame kind, and a data frame outside any transfer.
    let (mut odd, _) = connect();
    odd.stream.write_all(&[1, 0, 0, 0, 99, 0]).unwrap();
    assert!(
        matches!(odd.recv_control(), Message::Error { message } if message.contains("kind 99"))
    );
    let (mut stray, _) = connect();
    stray.send_data(Stream::Tar, b"junk");
    assert!(matches!(stray.recv_control(), Message::Error { .. }));
    let mut rest = Vec::new();
    stray.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // A malformed frame in the middle of a running command also gets an
    // Error; the command is killed with its connection.
    let (mut mid, server) = connect();
    mid.send(Message::Exec(common::script("exec sleep 1000")));
    mid.stream.write_all(&[2, 0, 0, 0, 0, b'!', b'!']).unwrap();
    assert!(matches!(mid.recv_control(), Message::Error { .. }));
    assert_eq!(server.join().unwrap(), ConnectionEnd::Closed);

    let status = good.collect_exec(|s, bytes| {
        assert_eq!((s, bytes), (Stream::Stdout, &b"still-here\n"[..]));
    });
    assert_eq!(status.code, Some(0));
    assert!(matches!(good.ping(9), Message::Pong { nonce: 9, .. }));
}

#[test]
fn unexpected_but_well_formed_requests_fail_alone() {
    let (mut c, _) = connect();
    c.send(Message::FilesDone {
        entries: 1,
        bytes: 2,
    });
    assert!(
        matches!(c.recv_control(), Message::Error { message } if message.contains("FilesDone"))
    );
    assert!(matches!(c.ping(3), Message::Pong { nonce: 3, .. }));
}

#[test]
fn shutdown_is_acknowledged_and_ends_the_connection() {
    let (mut c, server) = connect();
    c.send(Message::Shutdown);
    assert_eq!(c.recv_control(), Message::ShuttingDown);
    // The agent ends its side, so the host reads EOF right after the answer...
    assert_eq!(c.recv(), None, "the agent closes after ShuttingDown");
    // ...and it hands over to the power-off once the host has closed, not
    // before (the host must read the answer first).
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !server.is_finished(),
        "the agent did not wait for the host to close"
    );
    drop(c);
    assert_eq!(server.join().unwrap(), ConnectionEnd::Shutdown);
}
