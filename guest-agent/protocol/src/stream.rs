//! `std::io` adapters that carry a byte stream as data frames, so the tar
//! crate (and anything else that speaks `Read`/`Write`) can stream through a
//! connection without holding the whole stream in memory.

use std::io::{self, Read, Write};

use crate::{read_frame, write_frame, Frame, Message, Stream, CHUNK_SIZE};

/// Cuts everything written into `Data(stream, ..)` frames of at most [`CHUNK_SIZE`].
pub struct DataWriter<'a, W: Write> {
    out: &'a mut W,
    stream: Stream,
    buf: Vec<u8>,
}

impl<'a, W: Write> DataWriter<'a, W> {
    pub fn new(out: &'a mut W, stream: Stream) -> Self {
        DataWriter {
            out,
            stream,
            buf: Vec::with_capacity(CHUNK_SIZE),
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        write_frame(self.out, &Frame::Data(self.stream, chunk)).map_err(io::Error::other)
    }
}

impl<W: Write> Write for DataWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.out.flush()
    }
}

/// Reads the payloads of `Data(stream, ..)` frames until the control message
/// `end` arrives, which reads as end-of-file. Any other frame is an error:
/// the peer broke the exchange.
pub struct DataReader<'a, R: Read> {
    input: &'a mut R,
    stream: Stream,
    end: Message,
    pending: Vec<u8>,
    offset: usize,
    finished: bool,
    ended: bool,
    peer_error: Option<String>,
}

impl<'a, R: Read> DataReader<'a, R> {
    pub fn new(input: &'a mut R, stream: Stream, end: Message) -> Self {
        DataReader {
            input,
            stream,
            end,
            pending: Vec::new(),
            offset: 0,
            finished: false,
            ended: false,
            peer_error: None,
        }
    }

    /// The message of the peer's `Error`, if that is what broke the stream off.
    pub fn peer_error(&self) -> Option<&str> {
        self.peer_error.as_deref()
    }

    /// True once the end marker arrived, false if the stream broke off
    /// (peer error, bad frame, disconnect). After a break nothing more of
    /// this exchange follows on the connection.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads and drops whatever is left up to the end marker, so the
    /// connection is positioned at the next message even if the consumer
    /// (say, a tar unpacker) stopped early.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.pending.len() {
            if self.finished {
                return Ok(0);
            }
            match read_frame(self.input).map_err(io::Error::other)? {
                Some(Frame::Data(s, bytes)) if s == self.stream => {
                    self.pending = bytes;
                    self.offset = 0;
                }
                Some(Frame::Control(msg)) if msg == self.end => {
                    self.finished = true;
                    self.ended = true;
                }
                Some(Frame::Control(Message::Error { message })) => {
                    self.finished = true;
                    let err = io::Error::other(format!("peer reported: {message}"));
                    self.peer_error = Some(message);
                    return Err(err);
                }
                Some(other) => {
                    self.finished = true;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected frame in {:?} stream: {other:?}", self.stream),
                    ));
                }
                None => {
                    self.finished = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed inside the {:?} stream", self.stream),
                    ));
                }
            }
        }
        let n = out.len().min(self.pending.len() - self.offset);
        out[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn large_stream_is_chunked_and_reassembled() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        {
            let mut w = DataWriter::new(&mut wire, Stream::Tar);
            w.write_all(&data).unwrap();
            w.flush().unwrap();
        }
        write_frame(&mut wire, &Frame::Control(Message::TarEnd)).unwrap();
        // 300 000 bytes at 64 KiB a chunk is 5 frames, each with a 5-byte header,
        // plus the end marker.
        let frames_overhead = wire.len() - data.len();
        assert!(frames_overhead < 5 * 5 + 32, "overhead {frames_overhead}");

        let mut cur = Cursor::new(wire);
        let mut back = Vec::new();
        DataReader::new(&mut cur, Stream::Tar, Message::TarEnd)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn wrong_frame_inside_stream_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Frame::Data(Stream::Stdout, b"x".to_vec())).unwrap();
        let mut cur = Cursor::new(wire);
        let err = DataReader::new(&mut cur, Stream::Tar, Message::TarEnd)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn peer_error_and_eof_inside_stream_are_reported() {
        let mut wire = Vec::new();
        let msg = Message::Error {
            message: "disk full".into(),
        };
        write_frame(&mut wire, &Frame::Control(msg)).unwrap();
        let mut cur = Cursor::new(wire);
        let mut reader = DataReader::new(&mut cur, Stream::Tar, Message::TarEnd);
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("disk full"));
        // Nothing of this exchange follows an error: draining must not block.
        reader.drain().unwrap();
        assert!(!reader.ended());
        assert_eq!(reader.peer_error(), Some("disk full"));

        let mut empty = Cursor::new(Vec::new());
        let err = DataReader::new(&mut empty, Stream::Tar, Message::TarEnd)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
