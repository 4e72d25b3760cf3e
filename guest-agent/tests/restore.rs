//! Restore announcements that must be refused, over the real connection
//! code. Only refusals: everything is checked before anything is changed,
//! so these never touch this machine's RNG, clock or /etc/machine-id (a
//! valid announcement would, since the tests may run as root). Applying a
//! restore is tested in a real guest by tests/agent.rs.

mod common;

use agent_protocol::Message;
use common::connect;

const ID: &str = "0123456789abcdef0123456789abcdef";

fn restored(generation: u64, entropy_len: usize, clone_id: &str) -> Message {
    Message::Restored {
        generation,
        entropy: vec![0x5a; entropy_len],
        unix_time_ns: 1_700_000_000_000_000_000,
        clone_id: clone_id.into(),
    }
}

fn refusal(c: &mut common::Client, request: Message) -> String {
    c.send(request);
    match c.recv_control() {
        Message::Error { message } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_announcements_are_refused_and_the_connection_stays_usable() {
    let (mut c, _) = connect();
    for len in [0, 31, 513, 100_000] {
        let message = refusal(&mut c, restored(1, len, ID));
        assert!(
            message.starts_with("applying the restore: ")
                && message.contains(&format!("{len} bytes of entropy: expected 32 to 512")),
            "{message}"
        );
    }
    let message = refusal(&mut c, restored(1, 64, "not-a-machine-id"));
    assert!(message.contains("invalid clone id"), "{message}");
    let message = refusal(&mut c, restored(1, 64, &ID.to_uppercase()));
    assert!(message.contains("invalid clone id"), "{message}");
    // The cold-booted guest is generation 0: announcing it again is a bug.
    let message = refusal(&mut c, restored(0, 64, ID));
    assert!(message.contains("generation 0 is not newer"), "{message}");

    assert!(matches!(c.ping(9), Message::Pong { nonce: 9, .. }));
}
