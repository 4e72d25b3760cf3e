//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
//!
//! They live here, not in the fuzz crate, so that this crate's own tests can
//! replay the inputs kept in `fuzz/regressions/` through exactly the code the
//! fuzzer ran, without a fuzzer or a nightly toolchain.

use std::io::{self, Read};

use crate::{read_frame, write_frame, DataReader, Message, Stream};

/// Hands out at most `step` bytes per `read`, as a socket may, so that the
/// reader's handling of short reads is exercised too.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Decodes `data` as the frames a guest could send: first frame by frame
/// with [`read_frame`], then as a tar stream through [`DataReader`], the
/// two ways the host reads a connection. The first byte sets the size of
/// each read. Bad input must give errors, never a panic, and every frame
/// that decodes must encode back to itself. Returns whether any frame
/// decoded.
pub fn frames(data: &[u8]) -> bool {
    let Some((&step, wire)) = data.split_first() else {
        return false;
    };
    let step = usize::from(step % 16) + 1;

    let mut input = Trickle { data: wire, step };
    let mut decoded = false;
    while let Ok(Some(frame)) = read_frame(&mut input) {
        decoded = true;
        let mut again = Vec::new();
        // A decoded control message may re-encode larger than it came
        // (escapes), so only a frame that fits is checked for the round trip.
        if write_frame(&mut again, &frame).is_ok() {
            let back = read_frame(&mut again.as_slice());
            assert_eq!(back.ok().flatten().as_ref(), Some(&frame), "round trip");
        }
    }

    let mut input = Trickle { data: wire, step };
    let mut reader = DataReader::new(&mut input, Stream::Tar, Message::TarEnd);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = reader.read(&mut sink) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total <= wire.len(), "read more payload than the wire held");
    let _ = reader.drain();
    if reader.ended() {
        assert!(reader.peer_error().is_none());
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;
    use std::path::Path;

    /// Replays every input kept under `fuzz/regressions/frame` (crashes the
    /// fuzzer once found) and `fuzz/seeds/frame`, so they stay fixed
    /// without running a fuzzer. Seeds are valid, so each must decode.
    #[test]
    fn replay_fuzz_regressions_and_seeds() {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"));
        let mut replayed = 0;
        for dir in ["regressions/frame", "seeds/frame"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let accepted = frames(&std::fs::read(&path).unwrap());
                assert!(
                    accepted || !dir.starts_with("seeds"),
                    "seed {} rejected",
                    path.display()
                );
                replayed += 1;
            }
        }
        assert!(
            replayed > 0,
            "no fuzz inputs found under {}",
            root.display()
        );
    }

    #[test]
    fn short_reads_and_round_trips() {
        let mut wire = vec![1u8];
        write_frame(&mut wire, &Frame::Data(Stream::Tar, b"abc".to_vec())).unwrap();
        write_frame(&mut wire, &Frame::Control(Message::TarEnd)).unwrap();
        assert!(frames(&wire));
    }
}
