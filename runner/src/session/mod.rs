//! A connection to the guest agent: handshake, then one request at a time.
//!
//! Writes go through a shared handle so that a stdin pump thread can send
//! frames while the caller blocks reading output.
//!
//! Nothing here waits on the guest without a limit: every write gives up
//! when the guest takes no data for [`WRITE_TIMEOUT`], a command's output is
//! read until its own timeout plus [`HOST_GRACE`] at most, and
//! [`AgentSession::set_deadline`] bounds everything (file copies included)
//! by the job's deadline.

mod boot;
mod deadline;
mod files;
mod restore;
mod shell;
// pub(crate) for the fuzz entry point in `crate::fuzzing`.
pub(crate) mod unpack;

pub use boot::{wait_for_agent, SessionProbe};
pub use files::FileEntry;
pub use restore::{new_clone_id, RESTORE_ENTROPY_BYTES};
pub use shell::ShellControl;
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
    read_frame, write_frame, CacheMount, CacheMounted, ExecRequest, ExitStatus, Frame, Message,
    NetworkConfig, ProtocolError, Stream, CACHE_DISK_WAIT_MS, CHUNK_SIZE, MAX_CACHES,
    PROTOCOL_VERSION,
};

use deadline::{DeadlineIo, Expiry};

/// How long the agent may take to answer a control request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A cache mount may wait for each disk to appear (after a restore).
const MOUNT_CACHES_TIMEOUT: Duration =
    Duration::from_millis(30_000 + CACHE_DISK_WAIT_MS * MAX_CACHES as u64);
/// An unmount first syncs what the job wrote to its caches, which can be
/// gigabytes on an emulated disk; the job's own deadline still applies.
const UNMOUNT_CACHES_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one write may block because the guest takes no data (stops
/// granting vsock credit) before the session is given up.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a command's timeout the agent has to report it before
/// the host gives up on the guest. The agent kills the process group at the
/// timeout and answers at once, so a few seconds are plenty; more would
/// only let a hostile guest run longer.
pub const HOST_GRACE: Duration = Duration::from_secs(5);

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
    /// The caller asked for something the protocol cannot carry; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent did not answer within {0:?}")]
    Unresponsive(Duration),
    #[error("the guest took no data for {0:?}")]
    Stalled(Duration),
    /// The agent neither reported the command's end nor its timeout.
    #[error("host deadline: guest did not stop the step within {grace:?} of its {} timeout",
        crate::pipeline::format_duration(*.timeout))]
    ExecDeadline { timeout: Duration, grace: Duration },
    /// The deadline set with [`AgentSession::set_deadline`] passed.
    #[error("host deadline: the job's time ran out while waiting for the guest")]
    Deadline,
}

impl SessionError {
    /// Whether a host-side time limit (not the guest) ended the operation.
    pub fn is_host_deadline(&self) -> bool {
        matches!(
            self,
            SessionError::ExecDeadline { .. } | SessionError::Deadline
        )
    }
}

impl From<Expiry> for SessionError {
    fn from(why: Expiry) -> Self {
        match why {
            Expiry::Deadline => SessionError::Deadline,
            Expiry::Stalled(limit) => SessionError::Stalled(limit),
        }
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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
    /// What the agent offered in its `Hello`.
    capabilities: Vec<String>,
    /// Nothing on this session may go on past this (see [`Self::set_deadline`]).
    deadline: Option<Instant>,
}

impl AgentSession {
    /// Exchanges `Hello` on a fresh connection.
    pub fn handshake(stream: UnixStream) -> Result<AgentSession, SessionError> {
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let mut session = AgentSession {
            reader: stream,
            writer,
            agent: String::new(),
            capabilities: Vec::new(),
            deadline: None,
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
                capabilities,
            } => {
                session.agent = who;
                session.capabilities = capabilities;
            }
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

    /// Bounds everything done on this session from now on: once `deadline`
    /// passes, waiting for the guest (output, replies, file copies) ends
    /// with [`SessionError::Deadline`]. `None` lifts the bound.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The bound set with [`Self::set_deadline`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
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
        // The agent enforces the timeout; the host only steps in when the
        // agent has not reported it `HOST_GRACE` later. The deadline covers
        // the whole command, not each read: a guest that keeps printing and
        // never reports an exit must not keep us here.
        let timeout = request.timeout_ms.map(Duration::from_millis);
        let own = timeout.and_then(|t| Instant::now().checked_add(t + HOST_GRACE));
        let deadline = earliest(own, self.deadline);
        self.send(Message::Exec(request))?;
        let finished = Arc::new(AtomicBool::new(false));
        if let Some(input) = stdin {
            pump_stdin(input, self.writer.clone(), finished.clone());
        }
        let result = loop {
            match self.next_frame(deadline, None) {
                Ok(Frame::Data(stream @ (Stream::Stdout | Stream::Stderr), bytes)) => {
                    on_output(stream, &bytes)
                }
                Ok(Frame::Control(Message::Exited(status))) => break Ok(status),
                Ok(Frame::Control(Message::Error { message })) => {
                    break Err(SessionError::Agent(message))
                }
                Ok(other) => break Err(SessionError::Unexpected(format!("{other:?}"))),
                Err(SessionError::Deadline) if own.is_some() && deadline == own => {
                    break Err(SessionError::ExecDeadline {
                        timeout: timeout.unwrap_or_default(),
                        grace: HOST_GRACE,
                    })
                }
                Err(e) => break Err(e),
            }
        };
        // No stdin frame may start after this; one the pump is sending is
        // finished (or, if the guest takes no more, abandoned) before the
        // lock is ours, so nothing of this command follows on the wire.
        finished.store(true, Ordering::SeqCst);
        drop(self.writer.lock());
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

    /// The guest's use: its memory (`MemTotal` and the most in use since
    /// the last call; the first starts the agent's sampling) and its
    /// disks; `None` from an agent that does not sample.
    pub fn usage(&mut self) -> Result<Option<GuestUsage>, SessionError> {
        if !self.capabilities.iter().any(|c| c == "usage") {
            return Ok(None);
        }
        self.send(Message::Usage)?;
        match self.reply(REPLY_TIMEOUT)? {
            Message::UsageReport {
                memory_total_kib,
                memory_peak_kib,
                disk,
            } => Ok(Some(GuestUsage {
                memory_total_bytes: memory_total_kib.saturating_mul(1024),
                memory_peak_bytes: memory_peak_kib.saturating_mul(1024),
                disk,
            })),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Has the agent configure the guest's NIC and resolv.conf; returns the
    /// interface's name.
    pub fn configure_network(&mut self, config: &NetworkConfig) -> Result<String, SessionError> {
        self.require("network", "configure a network")?;
        self.send(Message::ConfigureNetwork(config.clone()))?;
        match self.reply(REPLY_TIMEOUT)? {
            Message::NetworkConfigured { interface } => Ok(interface),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Has the agent mount each cache disk and bind its paths; one outcome
    /// per cache, in order (a cache that failed leaves its paths on the
    /// guest's own root, and the job goes on without it).
    pub fn mount_caches(
        &mut self,
        caches: &[CacheMount],
    ) -> Result<Vec<CacheMounted>, SessionError> {
        self.require("caches", "mount caches")?;
        self.send(Message::MountCaches {
            caches: caches.to_vec(),
        })?;
        match self.reply(MOUNT_CACHES_TIMEOUT)? {
            Message::CachesMounted { outcomes } if outcomes.len() == caches.len() => Ok(outcomes),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Has the agent sync and unmount every cache it mounted: the serials
    /// now on a clean file system, and one line for each that is not.
    pub fn unmount_caches(&mut self) -> Result<(Vec<String>, Vec<String>), SessionError> {
        self.require("caches", "unmount caches")?;
        self.send(Message::UnmountCaches)?;
        match self.reply(UNMOUNT_CACHES_TIMEOUT)? {
            Message::CachesUnmounted { clean, failed } => Ok((clean, failed)),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Fails unless the agent offered `capability`.
    fn require(&self, capability: &str, what: &str) -> Result<(), SessionError> {
        if self.capabilities.iter().any(|c| c == capability) {
            return Ok(());
        }
        Err(SessionError::Incompatible(format!(
            "the agent in this rootfs ({}) cannot {what}; rebuild the rootfs",
            self.agent
        )))
    }

    /// Asks the guest to sync and power off.
    pub fn shutdown(mut self) -> Result<(), SessionError> {
        self.send(Message::Shutdown)?;
        let reply = self.reply(REPLY_TIMEOUT)?;
        // The agent powers off as soon as it sees us hang up (it waits a
        // little for that, so that its reply is not lost). Other handles to
        // this socket may live on (a stdin pump's writer), so dropping ours
        // is not enough: shut the socket itself.
        let _ = self.reader.shutdown(std::net::Shutdown::Both);
        match reply {
            Message::ShuttingDown => Ok(()),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }

    /// A handle that cancels whatever command this session is running
    /// (from another thread): the agent kills its process group, and the
    /// command ends as cancelled. Nothing happens when none runs.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            writer: self.writer.clone(),
        }
    }

    fn send(&self, msg: Message) -> Result<(), SessionError> {
        let w = self.writer.lock().map_err(|_| SessionError::Closed)?;
        write_locked(&w, &Frame::Control(msg), self.deadline)
    }

    /// Reads one frame, giving up at `deadline` or after `stall` without a
    /// byte.
    fn next_frame(
        &mut self,
        deadline: Option<Instant>,
        stall: Option<Duration>,
    ) -> Result<Frame, SessionError> {
        let mut io = DeadlineIo::new(&self.reader, deadline, stall);
        let frame = read_frame(&mut io);
        match (frame, io.expired()) {
            (Ok(Some(frame)), _) => Ok(frame),
            (Ok(None), _) => Err(SessionError::Closed),
            (Err(_), Some(why)) => Err(why.into()),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Reads one control reply within `limit` (and the session deadline).
    fn reply(&mut self, limit: Duration) -> Result<Message, SessionError> {
        let own = Instant::now().checked_add(limit);
        let deadline = earliest(own, self.deadline);
        let frame = match self.next_frame(deadline, None) {
            Err(SessionError::Deadline) if deadline == own => {
                Err(SessionError::Unresponsive(limit))
            }
            other => other,
        };
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
                let Ok(w) = writer.lock() else { return };
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                let last = matches!(frame, Frame::Control(_));
                if write_stdin(&w, &frame, &finished).is_err() || last {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the stdin thread: {e}");
    }
}

/// How often a stdin write blocked by the guest checks whether the command
/// has ended.
const STDIN_RECHECK: Duration = Duration::from_secs(1);

/// Writes one stdin frame on the (locked) shared socket. A command may
/// leave its stdin unread for as long as it likes (the agent then stops
/// taking frames), so there is no stall limit while it runs. Once it has
/// ended, a frame the guest will not take is abandoned and the socket shut:
/// half a frame on the wire would corrupt anything that followed.
fn write_stdin(stream: &UnixStream, frame: &Frame, finished: &AtomicBool) -> io::Result<()> {
    let mut wire = Vec::new();
    write_frame(&mut wire, frame).map_err(io::Error::other)?;
    let mut sent = 0;
    while sent < wire.len() {
        let mut io = DeadlineIo::new(stream, None, Some(STDIN_RECHECK));
        match std::io::Write::write(&mut io, &wire[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if io.expired().is_some() && !finished.load(Ordering::SeqCst) => {}
            Err(e) => {
                if sent > 0 {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// See [`AgentSession::canceller`].
#[derive(Clone)]
pub struct Canceller {
    writer: SharedWriter,
}

impl Canceller {
    pub fn cancel(&self) {
        if let Ok(w) = self.writer.lock() {
            // A session already gone has nothing left to cancel.
            let _ = write_locked(&w, &Frame::Control(Message::Cancel), None);
        }
    }
}

/// Writes one frame on the (locked) shared socket. A guest that takes no
/// data for [`WRITE_TIMEOUT`] fails the write rather than blocking the
/// caller (and every other writer waiting for the lock) for ever.
fn write_locked(
    stream: &UnixStream,
    frame: &Frame,
    deadline: Option<Instant>,
) -> Result<(), SessionError> {
    let mut io = DeadlineIo::new(stream, deadline, Some(WRITE_TIMEOUT));
    match (write_frame(&mut io, frame), io.expired()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(why)) => Err(why.into()),
        (Err(e), None) => Err(e.into()),
    }
}

/// What the agent said of the guest's use ([`AgentSession::usage`]). The
/// guest says it: a hostile one misreports only its own job's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestUsage {
    pub memory_total_bytes: u64,
    pub memory_peak_bytes: u64,
    pub disk: Option<agent_protocol::DiskReport>,
}

#[cfg(test)]
mod tests;
