//! A connection to the guest agent: handshake, then one request at a time.
//!
//! Writes go through a shared handle so that a stdin pump thread and a
//! [`Canceller`] can send frames while the caller blocks reading output.

mod files;
// pub(crate) for the fuzz entry point in `crate::fuzzing`.
pub(crate) mod unpack;

pub use files::FileEntry;
pub use unpack::{
    ArtifactBudget, ArtifactLimits, Refusal, UnpackError, Unpacked, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
};

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::{
    read_frame, write_frame, ExecRequest, ExitStatus, Frame, Message, ProtocolError, Stream,
    CHUNK_SIZE, PROTOCOL_VERSION,
};

/// How long the agent may take to answer a control request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of a command's own timeout before we call the agent dead.
const EXEC_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("agent protocol mismatch: {0}")]
    Incompatible(String),
    #[error("the agent reported: {0}")]
    Agent(String),
    #[error("unexpected message from the agent: {0}")]
    Unexpected(String),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent did not answer within {0:?}")]
    Unresponsive(Duration),
}

impl From<io::Error> for SessionError {
    fn from(e: io::Error) -> Self {
        SessionError::Protocol(ProtocolError::Io(e))
    }
}

type SharedWriter = Arc<Mutex<UnixStream>>;

pub struct AgentSession {
    reader: UnixStream,
    writer: SharedWriter,
    agent: String,
}

/// Sends `Cancel` for the command running on a session, from any thread.
#[derive(Clone)]
pub struct Canceller(SharedWriter);

impl Canceller {
    pub fn cancel(&self) {
        if let Ok(mut w) = self.0.lock() {
            let _ = write_frame(&mut *w, &Frame::Control(Message::Cancel));
        }
    }
}

impl AgentSession {
    /// Exchanges `Hello` on a fresh connection.
    pub fn handshake(stream: UnixStream) -> Result<AgentSession, SessionError> {
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let mut session = AgentSession {
            reader: stream,
            writer,
            agent: String::new(),
        };
        session.send(Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: Vec::new(),
            who: format!("runner {}", env!("CARGO_PKG_VERSION")),
        })?;
        match session.reply(REPLY_TIMEOUT)? {
            Message::Hello {
                version: PROTOCOL_VERSION,
                who,
                ..
            } => session.agent = who,
            Message::Hello { version, .. } => {
                return Err(SessionError::Incompatible(format!(
                    "agent speaks version {version}, runner speaks {PROTOCOL_VERSION}; rebuild the rootfs"
                )))
            }
            Message::Error { message } => return Err(SessionError::Incompatible(message)),
            other => return Err(SessionError::Unexpected(format!("{other:?}"))),
        }
        Ok(session)
    }

    /// What the agent said about itself in its `Hello`.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.writer.clone())
    }

    /// Runs a command, feeding `stdin` to it if given and passing every chunk
    /// of output to `on_output` as it arrives.
    pub fn exec(
        &mut self,
        mut request: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus, SessionError> {
        request.stdin = stdin.is_some();
        let patience = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + EXEC_GRACE);
        self.send(Message::Exec(request))?;
        let finished = Arc::new(AtomicBool::new(false));
        if let Some(input) = stdin {
            pump_stdin(input, self.writer.clone(), finished.clone());
        }
        self.reader.set_read_timeout(patience)?;
        let result = loop {
            match self.next_frame(patience) {
                Ok(Frame::Data(stream @ (Stream::Stdout | Stream::Stderr), bytes)) => {
                    on_output(stream, &bytes)
                }
                Ok(Frame::Control(Message::Exited(status))) => break Ok(status),
                Ok(Frame::Control(Message::Error { message })) => {
                    break Err(SessionError::Agent(message))
                }
                Ok(other) => break Err(SessionError::Unexpected(format!("{other:?}"))),
                Err(e) => break Err(e),
            }
        };
        // Taking the lock orders this after any frame the pump is sending, so
        // no stdin frame can follow the command's end on the wire.
        if let Ok(_guard) = self.writer.lock() {
            finished.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Answers with the round-trip time.
    pub fn ping(&mut self) -> Result<Duration, SessionError> {
        let start = Instant::now();
        let nonce = start.elapsed().as_nanos() as u64 ^ 0x5eed;
        self.send(Message::Ping { nonce })?;
        match self.reply(REPLY_TIMEOUT)? {
            Message::Pong { nonce: n, .. } if n == nonce => Ok(start.elapsed()),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the guest to sync and power off.
    pub fn shutdown(mut self) -> Result<(), SessionError> {
        self.send(Message::Shutdown)?;
        let reply = self.reply(REPLY_TIMEOUT)?;
        // The agent powers off as soon as it sees us hang up (it waits a
        // little for that, so that its reply is not lost). Other handles to
        // this socket may live on (a `Canceller` someone kept), so dropping
        // ours is not enough: shut the socket itself.
        let _ = self.reader.shutdown(std::net::Shutdown::Both);
        match reply {
            Message::ShuttingDown => Ok(()),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    fn send(&self, msg: Message) -> Result<(), SessionError> {
        let mut w = self.writer.lock().map_err(|_| SessionError::Closed)?;
        write_frame(&mut *w, &Frame::Control(msg))?;
        Ok(())
    }

    fn next_frame(&mut self, patience: Option<Duration>) -> Result<Frame, SessionError> {
        match read_frame(&mut self.reader) {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(SessionError::Closed),
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(SessionError::Unresponsive(patience.unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one control reply within `limit`.
    fn reply(&mut self, limit: Duration) -> Result<Message, SessionError> {
        self.reader.set_read_timeout(Some(limit))?;
        let frame = self.next_frame(Some(limit));
        self.reader.set_read_timeout(None)?;
        match frame? {
            Frame::Control(msg) => Ok(msg),
            Frame::Data(stream, _) => Err(SessionError::Unexpected(format!(
                "{stream:?} data where a reply was expected"
            ))),
        }
    }
}

/// Copies `input` to the agent as stdin frames until EOF or until the
/// command has finished. It runs detached: a terminal's stdin may never
/// reach EOF, and must not hold the run up.
fn pump_stdin(mut input: Box<dyn Read + Send>, writer: SharedWriter, finished: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK_SIZE];
            loop {
                let frame = match input.read(&mut buf) {
                    Ok(0) | Err(_) => Frame::Control(Message::StdinEof),
                    Ok(n) => Frame::Data(Stream::Stdin, buf[..n].to_vec()),
                };
                let Ok(mut w) = writer.lock() else { return };
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                let last = matches!(frame, Frame::Control(_));
                if write_frame(&mut *w, &frame).is_err() || last {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the stdin thread: {e}");
    }
}
