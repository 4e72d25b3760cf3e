//! QEMU's serial console, written through a [`CappedLog`].
//!
//! `-serial file:` would let QEMU write the log itself, without limit, and
//! capping that file behind QEMU's back does not work: QEMU opens it
//! without `O_APPEND` and keeps its own offset, so truncating it would only
//! leave a sparse hole the size of everything written. Instead QEMU
//! connects (as a client, at start-up, before the guest runs) to a Unix
//! socket of ours, and a thread copies what arrives into the capped log.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use capped_log::CappedLog;

/// The thread behind one VM's serial socket; dropping it (after QEMU has
/// ended) waits for the last bytes to be written.
pub struct SerialPump {
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl SerialPump {
    /// Listens on `socket` and writes the console to `log`, capped at
    /// `limit` bytes.
    pub fn start(socket: &Path, log: &Path, limit: Option<u64>) -> io::Result<SerialPump> {
        let listener = UnixListener::bind(socket)?;
        let mut out = CappedLog::create(log, limit)?;
        let thread = std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let mut writable = true;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            // After a write error (disk full) keep draining:
                            // a full socket would stall the guest's console.
                            if writable {
                                if let Err(e) = out.write_all(&buf[..n]) {
                                    tracing::warn!("serial log incomplete: {e}");
                                    writable = false;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(SerialPump {
            socket: socket.to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl Drop for SerialPump {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // If QEMU never connected (it failed to start), the thread still
            // waits in accept: a connection of our own, closed at once,
            // ends it. Otherwise QEMU's end is closed and this is a no-op.
            if !thread.is_finished() {
                let _ = UnixStream::connect(&self.socket);
            }
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_copied_into_a_capped_log() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, log) = (
            dir.path().join("serial.sock"),
            dir.path().join("serial.log"),
        );
        let pump = SerialPump::start(&socket, &log, Some(4096)).unwrap();
        let mut guest = UnixStream::connect(&socket).unwrap();
        for i in 0..10_000 {
            guest
                .write_all(format!("console line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guest);
        drop(pump);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.len() <= 4096);
        assert!(text.starts_with("console line 0\n"));
        assert!(text.ends_with("console line 9999\n"));
        assert!(text.contains(" bytes omitted here]"));
        assert_eq!(crate::tail_lines(&log, 1), vec!["console line 9999"]);
    }

    #[test]
    fn dropping_a_pump_nobody_connected_to_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("serial.sock");
        let pump = SerialPump::start(&socket, &dir.path().join("serial.log"), None).unwrap();
        drop(pump);
        // Its thread is gone, and with it the listener: nobody accepts.
        let err = UnixStream::connect(&socket).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert_eq!(std::fs::read(dir.path().join("serial.log")).unwrap(), b"");
    }
}
