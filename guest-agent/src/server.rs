//! One connection: the Hello handshake, then requests one at a time.
//!
//! A malformed or oversized frame is answered with an `Error` and the
//! connection is closed (its framing can no longer be trusted); other
//! connections are unaffected. A well-formed but out-of-place request only
//! fails that request.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use agent_protocol::{
    DataReader, DataWriter, Frame, Message, ProtocolError, Stream, CAPABILITIES, PROTOCOL_VERSION,
};

use crate::conn::Conn;
use crate::exec::{self, describe, ExecAbort};
use crate::{get_files, pid1, put_files, restore, shell};

/// How long `ShuttingDown` may take to reach the host before the guest
/// powers off. Without this wait a reset can overtake the frame while it is
/// still in the vsock queues, and the host never learns the shutdown was clean.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The host closed it, or it was closed after a protocol error.
    Closed,
    /// The host asked for a shutdown and got `ShuttingDown`; the caller
    /// syncs and powers off (or exits, when not PID 1).
    Shutdown,
}

/// Serves the agent protocol on a connected stream until it closes.
/// Never panics on anything the peer sends.
pub fn serve_connection<S: Read + Write + AsFd>(stream: S) -> ConnectionEnd {
    let mut conn = Conn::new(stream);
    match serve(&mut conn) {
        Ok(end) => end,
        Err(Abort::Disconnected) => ConnectionEnd::Closed,
        Err(Abort::Protocol(message)) => {
            crate::console!("closing a connection: {message}");
            // Best effort: the peer may already be gone.
            let _ = send_error(&mut conn, message);
            ConnectionEnd::Closed
        }
    }
}

enum Abort {
    Disconnected,
    Protocol(String),
}

impl From<ProtocolError> for Abort {
    fn from(e: ProtocolError) -> Self {
        if e.is_disconnect() {
            Abort::Disconnected
        } else {
            Abort::Protocol(format!("bad frame: {e}"))
        }
    }
}

impl From<ExecAbort> for Abort {
    fn from(e: ExecAbort) -> Self {
        match e {
            ExecAbort::Disconnected => Abort::Disconnected,
            ExecAbort::Protocol(message) => Abort::Protocol(message),
        }
    }
}

fn send<S: Read + Write + AsFd>(conn: &mut Conn<S>, msg: Message) -> Result<(), Abort> {
    conn.send(&Frame::Control(msg)).map_err(Abort::from)
}

fn send_error<S: Read + Write + AsFd>(conn: &mut Conn<S>, message: String) -> Result<(), Abort> {
    send(conn, Message::Error { message })
}

fn serve<S: Read + Write + AsFd>(conn: &mut Conn<S>) -> Result<ConnectionEnd, Abort> {
    match conn.recv()? {
        None => return Ok(ConnectionEnd::Closed),
        Some(Frame::Control(Message::Hello { version, .. })) if version == PROTOCOL_VERSION => {}
        Some(Frame::Control(Message::Hello { version, .. })) => {
            return Err(Abort::Protocol(format!(
                "protocol version mismatch: the host speaks version {version}, this agent speaks version {PROTOCOL_VERSION}"
            )))
        }
        Some(other) => {
            return Err(Abort::Protocol(format!(
                "expected hello as the first frame, got {}",
                describe(&other)
            )))
        }
    }
    send(
        conn,
        Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            who: crate::describe_agent(),
        },
    )?;
    loop {
        let Some(frame) = conn.recv()? else {
            return Ok(ConnectionEnd::Closed);
        };
        let request = match frame {
            Frame::Control(msg) => msg,
            // Stdin for a command that has already finished: harmless.
            Frame::Data(Stream::Stdin, _) => continue,
            Frame::Data(stream, _) => {
                return Err(Abort::Protocol(format!(
                    "unexpected {stream:?} data outside of a transfer"
                )))
            }
        };
        match request {
            Message::Exec(req) => exec::run(conn, &req)?,
            Message::Shell(req) => shell::run(conn, &req)?,
            Message::PutFiles { target } => put(conn, &target)?,
            Message::GetFiles { base, patterns } => get(conn, &base, &patterns)?,
            Message::Ping { nonce } => send(
                conn,
                Message::Pong {
                    nonce,
                    uptime_ms: pid1::uptime_ms(),
                },
            )?,
            Message::Usage => match crate::usage::report() {
                Some((total, peak)) => send(
                    conn,
                    Message::UsageReport {
                        memory_total_kib: total,
                        memory_peak_kib: peak,
                        disk: crate::usage::disk(),
                    },
                )?,
                None => send_error(conn, "reading /proc/meminfo".into())?,
            },
            Message::Shutdown => {
                send(conn, Message::ShuttingDown)?;
                conn.finish_sending(SHUTDOWN_LINGER);
                return Ok(ConnectionEnd::Shutdown);
            }
            Message::ConfigureNetwork(config) => match crate::network::configure(&config) {
                Ok(interface) => send(conn, Message::NetworkConfigured { interface })?,
                Err(message) => send_error(conn, format!("configuring the network: {message}"))?,
            },
            Message::Restored {
                generation,
                entropy,
                unix_time_ns,
                clone_id,
            } => {
                let announced = restore::Restore {
                    generation,
                    entropy: &entropy,
                    unix_time_ns,
                    clone_id: &clone_id,
                };
                match restore::apply(&announced) {
                    Ok(()) => {
                        crate::console!("restored as clone {clone_id} (generation {generation})");
                        send(conn, Message::RestoreApplied { generation })?
                    }
                    Err(message) => send_error(conn, format!("applying the restore: {message}"))?,
                }
            }
            Message::MountCaches { caches } => match crate::caches::check(&caches) {
                Ok(()) => send(
                    conn,
                    Message::CachesMounted {
                        outcomes: crate::caches::mount_all(&caches),
                    },
                )?,
                Err(message) => send_error(conn, format!("mounting caches: {message}"))?,
            },
            Message::UnmountCaches => {
                let (clean, failed) = crate::caches::unmount_all();
                send(conn, Message::CachesUnmounted { clean, failed })?
            }
            // Late messages for a command or shell that has already finished.
            Message::Cancel | Message::StdinEof | Message::Resize(_) => {}
            other => send_error(
                conn,
                format!("unexpected request {}", describe(&Frame::Control(other))),
            )?,
        }
    }
}

fn put<S: Read + Write + AsFd>(conn: &mut Conn<S>, target: &str) -> Result<(), Abort> {
    let mut reader = DataReader::new(conn, Stream::Tar, Message::TarEnd);
    let result = put_files::unpack(&mut reader, target);
    // Whatever happened, consume the rest of the stream so the connection
    // stays in step with the host.
    if let Err(e) = reader.drain() {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Abort::Disconnected
        } else {
            Abort::Protocol(format!("broken tar stream: {e}"))
        });
    }
    if !reader.ended() {
        // The host aborted the transfer with an Error: nothing to answer.
        return Ok(());
    }
    match result {
        Ok(done) => send(
            conn,
            Message::FilesDone {
                entries: done.entries,
                bytes: done.bytes,
            },
        ),
        Err(message) => send_error(conn, format!("put-files into {target:?}: {message}")),
    }
}

fn get<S: Read + Write + AsFd>(
    conn: &mut Conn<S>,
    base: &str,
    patterns: &[String],
) -> Result<(), Abort> {
    let names = match get_files::resolve(base, patterns) {
        Ok(names) => names,
        Err(message) => return send_error(conn, format!("get-files: {message}")),
    };
    let packed = {
        let mut writer = DataWriter::new(conn.writer(), Stream::Tar);
        let result = get_files::pack(base, &names, &mut writer);
        result.and_then(|(done, w)| w.flush().map(|()| done))
    };
    match packed {
        Ok(done) => {
            send(conn, Message::TarEnd)?;
            send(
                conn,
                Message::FilesDone {
                    entries: done.entries,
                    bytes: done.bytes,
                },
            )
        }
        // Either a file could not be read or the host went away; in the
        // second case this send fails too and the connection ends.
        Err(e) => send_error(conn, format!("get-files: {e}")),
    }
}
