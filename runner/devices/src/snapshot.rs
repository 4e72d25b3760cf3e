//! Saving a device model's own state for a VM snapshot, and loading it into
//! a freshly created device in another process.
//!
//! The transport saves its own registers and queue positions; a device only
//! saves what the transport cannot know (acked features, whether it was
//! activated, and for block the guest's writes). See
//! [`crate::virtio::VirtioDevice::save_state`].
//!
//! # Encoding
//!
//! A small little-endian binary format, so that a block device's written
//! chunks are stored as they are instead of being escaped:
//!
//! | bytes | field                                                        |
//! |-------|--------------------------------------------------------------|
//! | 4     | magic `RVDS` ("runner virtio device state")                  |
//! | 1     | the version of the device's body format                      |
//! | 4     | virtio device id (`VIRTIO_ID_*`) the state belongs to        |
//! | ...   | the body, as documented by the device (`block::snapshot`, `vsock::snapshot`) |
//!
//! The bytes come from a snapshot file on the host, which something else may
//! have written or truncated: every read is bounds-checked, no length read
//! from the state decides an allocation, and bytes left over after the body
//! are an error.

use std::io;

/// First bytes of every saved device state.
pub const MAGIC: [u8; 4] = *b"RVDS";
/// Bytes before the body: magic, version, device id.
pub const HEADER_LEN: usize = 9;

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The device model has no snapshot support at all.
    #[error("{device}: cannot be snapshotted: {reason}")]
    Unsupported {
        device: &'static str,
        reason: &'static str,
    },
    /// The device is in a state that cannot be saved right now (for
    /// example a vsock connection is open); saving later may work.
    #[error("{device}: {reason}")]
    Busy {
        device: &'static str,
        reason: String,
    },
    /// The saved state is corrupt, of another device or version, or does
    /// not match this device's configuration; or the device is not fresh.
    #[error("{device}: cannot restore: {reason}")]
    Invalid {
        device: &'static str,
        reason: String,
    },
    /// Reading or writing the device's host-side storage failed.
    #[error("{device}: {what}: {source}")]
    Io {
        device: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A short name for a virtio device id, for messages.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "net",
        2 => "block",
        19 => "vsock",
        _ => "virtio device",
    }
}

/// Builds a state: the header, then the body through the `put_*` methods.
pub struct StateWriter {
    bytes: Vec<u8>,
}

impl StateWriter {
    /// A state for device `device_type`, body format `version`.
    pub fn new(device_type: u32, version: u8) -> StateWriter {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(version);
        bytes.extend_from_slice(&device_type.to_le_bytes());
        StateWriter { bytes }
    }

    pub fn put_u8(&mut self, v: u8) {
        self.bytes.push(v);
    }

    pub fn put_bool(&mut self, v: bool) {
        self.bytes.push(u8::from(v));
    }

    pub fn put_u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn put_bytes(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
    }

    /// The buffer, for bodies that fill large parts in place (block's
    /// chunks are read from the overlay file straight into it).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a state from untrusted bytes; every read fails cleanly (with
/// [`SnapshotError::Invalid`]) rather than reading past the end.
pub struct StateReader<'a> {
    device: &'static str,
    rest: &'a [u8],
}

impl<'a> StateReader<'a> {
    /// Checks the header (magic, device id, then version, so that a state of
    /// another device says so rather than "unknown version") and returns a
    /// reader over the body.
    pub fn open(
        state: &'a [u8],
        device_type: u32,
        version: u8,
    ) -> Result<StateReader<'a>, SnapshotError> {
        let device = device_name(device_type);
        let invalid = |reason: String| SnapshotError::Invalid { device, reason };
        if state.len() < HEADER_LEN {
            return Err(invalid(format!(
                "the saved state is {} bytes long, shorter than its {HEADER_LEN}-byte header",
                state.len()
            )));
        }
        if state[..4] != MAGIC {
            return Err(invalid(
                "the saved state does not start with the device state magic \"RVDS\"".into(),
            ));
        }
        let saved_type = u32::from_le_bytes([state[5], state[6], state[7], state[8]]);
        if saved_type != device_type {
            return Err(invalid(format!(
                "the saved state belongs to a {} device (virtio id {saved_type}), not to a {device} device (id {device_type})",
                device_name(saved_type)
            )));
        }
        if state[4] != version {
            return Err(invalid(format!(
                "the saved state has format version {}; this build reads version {version} only",
                state[4]
            )));
        }
        Ok(StateReader {
            device,
            rest: &state[HEADER_LEN..],
        })
    }

    /// The error for a state this reader's device refuses.
    pub fn invalid(&self, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            device: self.device,
            reason: reason.into(),
        }
    }

    /// The next `len` bytes; `what` names them in the error.
    pub fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < len {
            return Err(self.invalid(format!(
                "the saved state is truncated: {what} needs {len} bytes, {} are left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn bool(&mut self, what: &str) -> Result<bool, SnapshotError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(format!("{what} is {other}, neither 0 nor 1"))),
        }
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        let b = self.take(8, what)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless the whole state was read: trailing bytes mean it was
    /// not written by this format.
    pub fn finish(self) -> Result<(), SnapshotError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(format!(
                "{} unexpected bytes follow the saved state",
                self.rest.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<StateReader<'_>, SnapshotError>) -> String {
        r.err().expect("refused").to_string()
    }

    #[test]
    fn header_round_trips_and_each_mismatch_is_named() {
        let mut w = StateWriter::new(2, 1);
        w.put_u64(0x0102_0304_0506_0708);
        w.put_bool(true);
        let bytes = w.finish();
        let mut r = StateReader::open(&bytes, 2, 1).expect("header");
        assert_eq!(r.u64("word").expect("word"), 0x0102_0304_0506_0708);
        assert!(r.bool("flag").expect("flag"));
        r.finish().expect("all read");

        let m = message(StateReader::open(&bytes, 19, 1));
        assert!(m.contains("belongs to a block device"), "{m}");
        assert!(m.starts_with("vsock: cannot restore"), "{m}");
        let m = message(StateReader::open(&bytes, 2, 2));
        assert!(m.contains("format version 1"), "{m}");
        let m = message(StateReader::open(&bytes[..5], 2, 1));
        assert!(m.contains("shorter than its 9-byte header"), "{m}");
        let mut bad = bytes.clone();
        bad[0] = b'X';
        let m = message(StateReader::open(&bad, 2, 1));
        assert!(m.contains("magic"), "{m}");
    }

    #[test]
    fn reads_past_the_end_and_leftovers_are_refused() {
        let mut w = StateWriter::new(19, 1);
        w.put_u8(7);
        let bytes = w.finish();
        let mut r = StateReader::open(&bytes, 19, 1).expect("header");
        let e = r.bool("flag").expect_err("7 is no bool");
        assert!(e.to_string().contains("neither 0 nor 1"), "{e}");
        let e = r.u64("word").expect_err("nothing left");
        assert!(
            e.to_string().contains("truncated: word needs 8 bytes, 0"),
            "{e}"
        );
        let r = StateReader::open(&bytes, 19, 1).expect("header");
        let e = r.finish().expect_err("a byte is left");
        assert!(e.to_string().contains("1 unexpected bytes"), "{e}");
        let mut r = StateReader::open(&bytes, 19, 1).expect("header");
        assert!(r.take(usize::MAX, "huge").is_err());
        assert_eq!(r.remaining(), 1);
    }
}
