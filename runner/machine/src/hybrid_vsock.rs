//! The host side of "hybrid vsock": guest ports are reached through one Unix
//! socket per VM. The host connects, writes `CONNECT <port>\n` and, once the
//! guest accepted, reads `OK <host-port>\n`; after that the stream is the
//! connection. A guest that is not listening makes the device close the
//! socket, which we report as `ConnectionRefused`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the guest may take to answer the CONNECT line. Shorter than
/// the device's own wait for the guest's answer, so that the host is the
/// one that gives up and says why (the device then only cleans up after a
/// host program that went away).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const _: () = assert!(
    HANDSHAKE_TIMEOUT.as_millis() < runner_devices::vsock::DEFAULT_REQUEST_TIMEOUT.as_millis()
);

pub fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).map_err(|e| match e.kind() {
        // The device accepts only once the guest driver is up; until then
        // its listen backlog fills with our attempts.
        io::ErrorKind::WouldBlock => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "vsock device not accepting connections yet",
        ),
        _ => e,
    })?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let line = stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .and_then(|_| read_line(&mut stream))
        .map_err(refused_if_closed)
        .map_err(|e| match e.kind() {
            // The read timed out: the device took the connection and sent
            // the guest its request, and the guest never answered.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the guest did not answer the connection to vsock port {port} within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ),
            _ => e,
        })?;
    if !line.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vsock device answered {line:?} to CONNECT {port}"),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// The device closes the socket when the guest refuses; depending on timing
/// we see that as EOF, a reset or a broken pipe. All mean that nobody listens
/// on that port (yet).
fn refused_if_closed(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "guest port not listening (yet)",
        ),
        _ => e,
    }
}

/// Reads up to and including `\n`, one byte at a time: anything after the
/// newline already belongs to the guest connection and must stay unread.
fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // The device closes (or resets, if our CONNECT line is still unread) the
    // socket when the guest refuses: both mean nobody listens there yet.
    let refused = || {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "guest port not listening (yet)",
        )
    };
    while line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => return Err(refused()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(refused()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "overlong answer to CONNECT",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_guest_that_never_answers_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).unwrap();
        // A device that takes the connection and the CONNECT line, and
        // never answers: the guest's reply is lost.
        let device = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            io::BufReader::new(&s).read_line(&mut line).unwrap();
            // Held open until the host gives up.
            let mut rest = Vec::new();
            let _ = (&s).read_to_end(&mut rest);
        });
        let err = connect(&path, 10_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            err.to_string(),
            "the guest did not answer the connection to vsock port 10000 within 5s"
        );
        device.join().unwrap();
    }

    #[test]
    fn connect_speaks_the_handshake_and_leaves_payload_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).unwrap();
        let device = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 10000\n");
            (&s).write_all(b"OK 1073741824\nhello").unwrap();
            // Second connection: the guest refuses.
            let (refused, _) = listener.accept().unwrap();
            drop(refused);
        });
        let mut stream = connect(&path, 10_000).unwrap();
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
        let err = connect(&path, 10_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        device.join().unwrap();
    }
}
