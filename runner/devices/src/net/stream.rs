//! QEMU's "stream" netdev framing, which passt speaks on its Unix socket:
//! each Ethernet frame is preceded by its length as a 4-byte big-endian
//! number.

use std::io::{self, Read, Write};

/// Largest frame accepted in either direction: a 64 KiB IP packet plus the
/// Ethernet header. passt sends no larger frames; a length beyond this is
/// a broken or hostile peer, and the stream is abandoned.
pub const MAX_FRAME: usize = 65535 + 14;
/// Smallest frame that can hold an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Reads one frame into `buf` (which it resizes); `Ok(false)` on a clean
/// end of stream between frames.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} outside {MIN_FRAME}..={MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    reader.read_exact(buf)?;
    Ok(true)
}

/// Writes one frame with its length prefix, in one `write` where possible.
pub fn write_frame(writer: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    if frame.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME}", frame.len()),
        ));
    }
    let mut wire = Vec::with_capacity(4 + frame.len());
    wire.extend((frame.len() as u32).to_be_bytes());
    wire.extend(frame);
    writer.write_all(&wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[7; 60]).unwrap();
        write_frame(&mut wire, &[8; MAX_FRAME]).unwrap();
        assert_eq!(&wire[..4], &60u32.to_be_bytes());
        let mut reader = &wire[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf).unwrap());
        assert_eq!(buf, vec![7; 60]);
        assert!(read_frame(&mut reader, &mut buf).unwrap());
        assert_eq!(buf.len(), MAX_FRAME);
        assert!(!read_frame(&mut reader, &mut buf).unwrap());

        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME + 1]).is_err());
        for len in [0u32, 13, MAX_FRAME as u32 + 1, u32::MAX] {
            let wire = len.to_be_bytes();
            let err = read_frame(&mut &wire[..], &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{len}");
        }
        // A frame cut short is an error, not a clean end.
        let mut cut = Vec::new();
        write_frame(&mut cut, &[1; 100]).unwrap();
        cut.truncate(50);
        assert!(read_frame(&mut &cut[..], &mut buf).is_err());
    }
}
