//! Telling a guest restored from a snapshot that it is a new clone.
//!
//! Clones of one snapshot share the guest kernel's RNG state, its clock and
//! its identity. Before any job command runs in a clone, the host sends it
//! fresh entropy from its own RNG, its own real-time clock and a new clone
//! id ([`AgentSession::announce_restore`]); the agent applies all of it
//! (see `guest-agent/src/restore.rs`) before it answers.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_protocol::{is_valid_clone_id, Message};

use super::{AgentSession, SessionError, REPLY_TIMEOUT};

/// Bytes of host entropy sent with every announcement: twice the 256 bits
/// the kernel's input pool holds, within the protocol's 32..=512.
pub const RESTORE_ENTROPY_BYTES: usize = 64;

impl AgentSession {
    /// Announces to the agent that its VM was restored as clone `clone_id`
    /// (32 lowercase hex digits, see [`new_clone_id`]), restore number
    /// `generation` (greater than any announced to this guest before).
    /// Returns once the agent has reseeded the kernel RNG, set the clock and
    /// written the machine id, so no command started afterwards sees the
    /// snapshot's state. Bounded by the session's deadline.
    pub fn announce_restore(
        &mut self,
        generation: u64,
        clone_id: &str,
    ) -> Result<(), SessionError> {
        if !is_valid_clone_id(clone_id) {
            return Err(SessionError::InvalidRequest(format!(
                "clone id {clone_id:?} is not 32 lowercase hexadecimal digits"
            )));
        }
        if !self.capabilities.iter().any(|c| c == "restore") {
            return Err(SessionError::Incompatible(format!(
                "the agent in this rootfs ({}) cannot be told of a restore; rebuild the rootfs",
                self.agent
            )));
        }
        let mut entropy = vec![0u8; RESTORE_ENTROPY_BYTES];
        host_random(&mut entropy)?;
        // Taken last, just before sending, so the guest's clock is off by
        // no more than the time the message takes to arrive.
        let unix_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|since| u64::try_from(since.as_nanos()).ok())
            .ok_or_else(|| {
                SessionError::InvalidRequest(
                    "the host's clock is not between 1970 and 2554".to_string(),
                )
            })?;
        self.send(Message::Restored {
            generation,
            entropy,
            unix_time_ns,
            clone_id: clone_id.to_string(),
        })?;
        // The answer comes from the guest: only the one expected will do.
        match self.reply(REPLY_TIMEOUT)? {
            Message::RestoreApplied { generation: g } if g == generation => Ok(()),
            Message::RestoreApplied { generation: g } => Err(SessionError::Unexpected(format!(
                "the agent applied restore generation {g}, not the {generation} announced"
            ))),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A fresh clone id: 128 bits of host randomness as 32 lowercase hex
/// digits, the format of `/etc/machine-id`.
pub fn new_clone_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    host_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Fills `buf` from the host kernel's RNG (getrandom(2), which blocks only
/// until the host's own RNG is seeded at boot).
fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("getrandom: {e}")));
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use agent_protocol::{read_frame, write_frame, Frame, Message};

    use super::*;
    use crate::session::tests::fake_agent_with;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    /// A fake agent offering "restore" that answers the announcement it
    /// receives with `answer(generation)`, after checking what the host sent.
    fn agent_answering(
        answer: impl FnOnce(u64) -> Message + Send + 'static,
    ) -> (AgentSession, std::thread::JoinHandle<()>) {
        fake_agent_with(&["restore"], move |mut guest| {
            let Ok(Some(Frame::Control(Message::Restored {
                generation,
                entropy,
                unix_time_ns,
                clone_id,
            }))) = read_frame(&mut guest)
            else {
                panic!("no Restored from the host");
            };
            assert_eq!(entropy.len(), RESTORE_ENTROPY_BYTES);
            assert!(entropy.iter().any(|&b| b != 0), "entropy of zeros");
            assert_eq!(clone_id, ID);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let sent = Duration::from_nanos(unix_time_ns);
            assert!(now >= sent && now - sent < Duration::from_secs(60));
            write_frame(&mut guest, &Frame::Control(answer(generation))).unwrap();
        })
    }

    #[test]
    fn the_expected_answer_completes_the_announcement() {
        let (mut session, agent) =
            agent_answering(|generation| Message::RestoreApplied { generation });
        let announced = session.announce_restore(3, ID);
        assert!(announced.is_ok(), "{announced:?}");
        // The agent saw generation 3, the entropy, the time and the id.
        assert!(agent.join().is_ok());
    }

    #[test]
    fn an_answer_for_another_generation_is_refused() {
        let (mut session, agent) = agent_answering(|generation| Message::RestoreApplied {
            generation: generation + 1,
        });
        let err = session.announce_restore(3, ID).unwrap_err();
        assert!(matches!(err, SessionError::Unexpected(_)), "{err}");
        assert!(err.to_string().contains("generation 4, not the 3"), "{err}");
        agent.join().unwrap();
    }

    #[test]
    fn the_agents_refusal_is_reported() {
        let (mut session, agent) = agent_answering(|_| Message::Error {
            message: "applying the restore: RNDRESEEDCRNG: Operation not permitted".into(),
        });
        let err = session.announce_restore(1, ID).unwrap_err();
        assert!(matches!(err, SessionError::Agent(_)), "{err}");
        assert!(err.to_string().contains("RNDRESEEDCRNG"), "{err}");
        agent.join().unwrap();
    }

    #[test]
    fn other_answers_are_unexpected() {
        let (mut session, agent) = agent_answering(|_| Message::Pong {
            nonce: 1,
            uptime_ms: 1,
        });
        let err = session.announce_restore(1, ID).unwrap_err();
        assert!(matches!(err, SessionError::Unexpected(_)), "{err}");
        agent.join().unwrap();
    }

    #[test]
    fn a_silent_agent_is_given_up_at_the_session_deadline() {
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (mut session, agent) = fake_agent_with(&["restore"], move |mut guest| {
            let _ = read_frame(&mut guest);
            // Never answers; keeps the socket open until the host is done.
            let _ = held.recv();
        });
        session.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
        let err = session.announce_restore(1, ID).unwrap_err();
        assert!(matches!(err, SessionError::Deadline), "{err:?}");
        drop(hold);
        agent.join().unwrap();
    }

    #[test]
    fn bad_ids_and_old_agents_are_refused_before_sending() {
        for (capabilities, id) in [
            (&["restore"][..], "ABCDEF0123456789abcdef0123456789"),
            (&["restore"][..], "short"),
            (&[][..], ID),
        ] {
            let (mut session, agent) = fake_agent_with(capabilities, |mut guest| {
                // The host must hang up without sending anything.
                assert!(matches!(read_frame(&mut guest), Ok(None)));
            });
            let err = session.announce_restore(1, id).unwrap_err();
            if capabilities.is_empty() {
                assert!(matches!(err, SessionError::Incompatible(_)), "{err}");
            } else {
                assert!(matches!(err, SessionError::InvalidRequest(_)), "{err}");
            }
            drop(session);
            agent.join().unwrap();
        }
    }

    #[test]
    fn clone_ids_are_fresh_machine_ids() {
        let a = new_clone_id().unwrap();
        let b = new_clone_id().unwrap();
        assert!(is_valid_clone_id(&a), "{a}");
        assert!(is_valid_clone_id(&b), "{b}");
        assert_ne!(a, b);
    }
}
