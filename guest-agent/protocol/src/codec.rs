//! Frame encoding: a 5-byte header (`u32` LE payload length, `u8` kind) and the payload.

use std::io::{self, Read, Write};

use crate::{Frame, Message, Stream, KIND_CONTROL, MAX_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed control message: {0}")]
    BadMessage(#[from] serde_json::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

impl ProtocolError {
    /// True when the peer simply went away, as opposed to sending garbage.
    pub fn is_disconnect(&self) -> bool {
        match self {
            ProtocolError::Truncated => true,
            ProtocolError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// Writes one frame. Payloads over [`MAX_FRAME`] are refused before anything is sent.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), ProtocolError> {
    let json;
    let (kind, payload): (u8, &[u8]) = match frame {
        Frame::Control(msg) => {
            json = serde_json::to_vec(msg)?;
            (KIND_CONTROL, &json)
        }
        Frame::Data(stream, bytes) => (*stream as u8, bytes),
    };
    if payload.len() > MAX_FRAME {
        return Err(ProtocolError::Oversized(payload.len()));
    }
    // One write per frame: over vsock each write becomes a packet, and a
    // frame split in two can be cut in half by a guest that powers off.
    let mut wire = Vec::with_capacity(5 + payload.len());
    wire.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    wire.push(kind);
    wire.extend_from_slice(payload);
    w.write_all(&wire)?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer closed cleanly between frames.
///
/// The length is checked before any allocation, so a forged header cannot
/// make the reader reserve more than [`MAX_FRAME`] bytes.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut header = [0u8; 5];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::Oversized(len));
    }
    let kind = header[4];
    let stream = match kind {
        KIND_CONTROL => None,
        k => Some(Stream::from_kind(k).ok_or(ProtocolError::UnknownKind(k))?),
    };
    let mut payload = vec![0u8; len];
    if !read_full(r, &mut payload)? && len > 0 {
        return Err(ProtocolError::Truncated);
    }
    Ok(Some(match stream {
        None => Frame::Control(serde_json::from_slice::<Message>(&payload)?),
        Some(s) => Frame::Data(s, payload),
    }))
}

/// Fills `buf`. Returns false on EOF before the first byte, and
/// [`ProtocolError::Truncated`] on EOF part-way through.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheMount, CacheMounted, Command, ExecRequest};
    use std::io::Cursor;

    fn round_trip(frame: Frame) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &frame).unwrap();
        let mut cur = Cursor::new(buf);
        assert_eq!(read_frame(&mut cur).unwrap(), Some(frame));
        assert_eq!(
            read_frame(&mut cur).unwrap(),
            None,
            "clean EOF after the frame"
        );
    }

    #[test]
    fn control_and_data_frames_round_trip() {
        round_trip(Frame::Control(Message::Exec(ExecRequest {
            command: Command::Script {
                script: "echo hi; exit 3".into(),
                shell: String::new(),
            },
            env: vec![("A".into(), "b c".into())],
            cwd: Some("/tmp".into()),
            timeout_ms: Some(5000),
            stdin: true,
        })));
        round_trip(Frame::Control(Message::Restored {
            generation: u64::MAX,
            entropy: (0..=255).collect(),
            unix_time_ns: 1_700_000_000_123_456_789,
            clone_id: "0123456789abcdef0123456789abcdef".into(),
        }));
        round_trip(Frame::Control(Message::RestoreApplied { generation: 7 }));
        round_trip(Frame::Control(Message::MountCaches {
            caches: vec![CacheMount {
                serial: "cache0".into(),
                paths: vec!["/usr/local/cargo".into(), "/w/target".into()],
            }],
        }));
        round_trip(Frame::Control(Message::CachesMounted {
            outcomes: vec![CacheMounted {
                serial: "cache0".into(),
                error: Some("mounting /dev/vdb (ext4): EINVAL".into()),
            }],
        }));
        round_trip(Frame::Control(Message::UnmountCaches));
        round_trip(Frame::Control(Message::CachesUnmounted {
            clean: vec!["cache0".into()],
            failed: vec!["cache 1: busy".into()],
        }));
        round_trip(Frame::Data(Stream::Stdout, b"hello\0\xff".to_vec()));
        round_trip(Frame::Data(Stream::Tar, Vec::new()));
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        buf.push(1);
        let err = read_frame(&mut Cursor::new(buf)).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversized(n) if n == MAX_FRAME + 1));
        let huge = Frame::Data(Stream::Stdout, vec![0; MAX_FRAME + 1]);
        assert!(matches!(
            write_frame(&mut Vec::new(), &huge),
            Err(ProtocolError::Oversized(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let unknown_kind = [1, 0, 0, 0, 77, 0];
        assert!(matches!(
            read_frame(&mut Cursor::new(unknown_kind)),
            Err(ProtocolError::UnknownKind(77))
        ));
        let bad_json = [3, 0, 0, 0, KIND_CONTROL, b'{', b'x', b'}'];
        assert!(matches!(
            read_frame(&mut Cursor::new(bad_json)),
            Err(ProtocolError::BadMessage(_))
        ));
        let truncated = [10, 0, 0, 0, 1, b'a'];
        let err = read_frame(&mut Cursor::new(truncated)).unwrap_err();
        assert!(err.is_disconnect());
        let half_header = [10, 0];
        assert!(matches!(
            read_frame(&mut Cursor::new(half_header)),
            Err(ProtocolError::Truncated)
        ));
    }
}
