//! One `exec` exchange: start the command, then a single `poll` loop moves
//! its stdout/stderr to the host as they arrive, feeds it stdin, takes
//! `Cancel` from the host, enforces the timeout and learns of the exit from
//! the reaper. Memory stays bounded: one chunk of output and at most one
//! stdin frame are held at a time.
//!
//! After the command's leader exits, background processes it left behind
//! may still hold the output pipes open (`daemon &`). The agent then keeps
//! forwarding output for at most [`DRAIN_GRACE`] and finishes: a command is
//! over when its leader is, and a leftover writer must not hang the job.
//! Such leftovers are not killed (a step may start a service on purpose);
//! once the agent closes the pipes, their further writes fail with EPIPE.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use agent_protocol::{ExecRequest, ExitStatus, Frame, Message, ProtocolError, Stream, CHUNK_SIZE};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::conn::Conn;
use crate::reaper::{ChildExit, Registration};
use crate::spawn::{spawn, ChildStdio, Prepared, SpawnError};

/// How long output is still forwarded after the command's leader exited.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Why an exec ended without a normal `Exited` exchange.
#[derive(Debug)]
pub enum ExecAbort {
    /// The host went away; the command's process group has been killed.
    Disconnected,
    /// The host broke the protocol; the caller reports it and closes.
    Protocol(String),
}

impl From<ProtocolError> for ExecAbort {
    fn from(e: ProtocolError) -> Self {
        if e.is_disconnect() {
            ExecAbort::Disconnected
        } else {
            ExecAbort::Protocol(e.to_string())
        }
    }
}

/// Runs `req` to completion and sends its `Exited`.
pub fn run<S: Read + Write + AsFd>(conn: &mut Conn<S>, req: &ExecRequest) -> Result<(), ExecAbort> {
    let started = Instant::now();
    let watch = crate::usage::CommandWatch::start(req.cwd.as_deref());
    match start(req) {
        Ok(running) => running.supervise(conn, req, started, &watch),
        Err(e) => report_spawn_failure(conn, e, started),
    }
}

/// Ends an exchange whose command could not be started: its `Exited`
/// carries the reason (shared with `shell`).
pub(crate) fn report_spawn_failure<S: Read + Write + AsFd>(
    conn: &mut Conn<S>,
    e: SpawnError,
    started: Instant,
) -> Result<(), ExecAbort> {
    let status = ExitStatus {
        code: Some(e.code),
        duration_ms: elapsed_ms(started, Instant::now()),
        error: Some(e.message),
        ..Default::default()
    };
    conn.send(&Frame::Control(Message::Exited(status)))?;
    Ok(())
}

/// `poll`, retried when a signal interrupts it (shared with `shell`).
pub(crate) fn poll_retrying(fds: &mut [PollFd], timeout: PollTimeout) -> Result<(), ExecAbort> {
    loop {
        match poll(fds, timeout) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ExecAbort::Protocol(format!("poll failed: {e}"))),
        }
    }
}

struct Running {
    child: Registration,
    stdout: Option<File>,
    stderr: Option<File>,
    stdin: Option<File>,
}

fn start(req: &ExecRequest) -> Result<Running, SpawnError> {
    let prepared = Prepared::new(req)?;
    let setup_err = |e: io::Error| SpawnError {
        code: crate::spawn::NOT_EXECUTABLE,
        message: format!("cannot create the command's pipes: {e}"),
    };
    let (out_r, out_w) = pipe().map_err(setup_err)?;
    let (err_r, err_w) = pipe().map_err(setup_err)?;
    let (child_stdin, our_stdin) = if req.stdin {
        let (r, w) = pipe().map_err(setup_err)?;
        // Non-blocking, so a command that does not read its stdin cannot
        // stall the loop that forwards its output.
        fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| setup_err(e.into()))?;
        (r, Some(File::from(w)))
    } else {
        (null_stdin().map_err(setup_err)?, None)
    };
    let stdio = ChildStdio {
        stdin: child_stdin,
        stdout: out_w,
        stderr: err_w,
        controlling_terminal: false,
    };
    let child = spawn(&prepared, stdio)?;
    Ok(Running {
        child,
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
        stdin: our_stdin,
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// `/dev/null`, or an empty pipe if the guest has no /dev/null yet.
fn null_stdin() -> io::Result<OwnedFd> {
    match File::open("/dev/null") {
        Ok(f) => Ok(f.into()),
        Err(_) => Ok(pipe()?.0),
    }
}

pub(crate) fn elapsed_ms(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u64::MAX)
}

/// Stdin bytes received from the host but not yet taken by the command.
#[derive(Default)]
struct PendingStdin {
    data: Vec<u8>,
    offset: usize,
    eof: bool,
}

impl PendingStdin {
    fn is_empty(&self) -> bool {
        self.offset >= self.data.len()
    }
}

impl Running {
    fn kill_group(&self) {
        // The command leads its own session and group (setsid), so this
        // reaches everything it started that did not leave the group.
        let _ = killpg(Pid::from_raw(self.child.pid()), Signal::SIGKILL);
    }

    fn supervise<S: Read + Write + AsFd>(
        mut self,
        conn: &mut Conn<S>,
        req: &ExecRequest,
        started: Instant,
        watch: &crate::usage::CommandWatch,
    ) -> Result<(), ExecAbort> {
        let result = self.pump(conn, req, started, watch);
        if result.is_err() {
            // Host gone or misbehaving: nobody will collect this command.
            self.kill_group();
        }
        result
    }

    fn pump<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Conn<S>,
        req: &ExecRequest,
        started: Instant,
        watch: &crate::usage::CommandWatch,
    ) -> Result<(), ExecAbort> {
        // A timeout too large to represent is no timeout (and must not panic).
        let deadline = req
            .timeout_ms
            .and_then(|ms| started.checked_add(Duration::from_millis(ms)));
        let mut pending = PendingStdin::default();
        let mut exit: Option<(ChildExit, Instant)> = None;
        let (mut timed_out, mut cancelled) = (false, false);
        let mut chunk = vec![0u8; CHUNK_SIZE];
        loop {
            // Frames already buffered are invisible to poll: handle them first.
            while pending.is_empty() {
                let Some(frame) = conn.take_buffered_frame()? else {
                    break;
                };
                match frame {
                    Frame::Data(Stream::Stdin, bytes) => {
                        if self.stdin.is_some() {
                            pending.data = bytes;
                            pending.offset = 0;
                        }
                    }
                    Frame::Control(Message::StdinEof) => pending.eof = true,
                    Frame::Control(Message::Cancel) => {
                        if !cancelled && !timed_out {
                            cancelled = true;
                            self.kill_group();
                        }
                    }
                    other => {
                        return Err(ExecAbort::Protocol(format!(
                            "unexpected frame while a command runs: {}",
                            describe(&other)
                        )))
                    }
                }
            }
            if pending.is_empty() && (pending.eof || exit.is_some()) {
                self.stdin = None;
            }

            let now = Instant::now();
            if let Some((_, exited_at)) = exit {
                let drained = self.stdout.is_none() && self.stderr.is_none();
                if drained || now >= exited_at + DRAIN_GRACE {
                    break;
                }
            } else if let Some(deadline) = deadline {
                if now >= deadline && !timed_out && !cancelled {
                    timed_out = true;
                    self.kill_group();
                }
            }
            let wake_at = match exit {
                Some((_, exited_at)) => Some(exited_at + DRAIN_GRACE),
                None if timed_out || cancelled => None,
                None => deadline,
            };
            let timeout = match wake_at {
                Some(at) => {
                    let ms = at.saturating_duration_since(now).as_millis() + 1;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };

            let ready = self.wait_ready(conn, &pending, exit.is_none(), timeout)?;
            if ready.exited {
                if let Some(status) = self.child.try_exit() {
                    exit = Some((status, Instant::now()));
                }
            }
            if ready.stdout {
                forward(&mut self.stdout, &mut chunk, conn, Stream::Stdout)?;
            }
            if ready.stderr {
                forward(&mut self.stderr, &mut chunk, conn, Stream::Stderr)?;
            }
            if ready.stdin {
                self.feed_stdin(&mut pending);
            }
            if ready.conn && conn.fill_once().unwrap_or(0) == 0 {
                return Err(ExecAbort::Disconnected);
            }
        }

        let (status, exited_at) = exit.ok_or(ExecAbort::Disconnected)?;
        let failed = status.code != Some(0);
        let result = ExitStatus {
            code: status.code,
            signal: status.signal,
            duration_ms: elapsed_ms(started, exited_at),
            max_rss_kib: status.max_rss_kib,
            timed_out,
            cancelled,
            error: None,
            // What failed it: looked for only when something did.
            oom_kills: if failed { watch.oom_kills() } else { 0 },
            disk_full: failed && watch.disk_full(),
        };
        conn.send(&Frame::Control(Message::Exited(result)))?;
        Ok(())
    }

    /// Polls everything the loop may act on next.
    fn wait_ready<S: Read + Write + AsFd>(
        &self,
        conn: &Conn<S>,
        pending: &PendingStdin,
        running: bool,
        timeout: PollTimeout,
    ) -> Result<Ready, ExecAbort> {
        let input = PollFlags::POLLIN;
        let mut fds = Vec::with_capacity(5);
        let mut slots = [None; 5];
        let mut add = |slot: usize, fd, flags| {
            slots[slot] = Some(fds.len());
            fds.push(PollFd::new(fd, flags));
        };
        if let Some(f) = &self.stdout {
            add(0, f.as_fd(), input);
        }
        if let Some(f) = &self.stderr {
            add(1, f.as_fd(), input);
        }
        match &self.stdin {
            Some(f) if !pending.is_empty() => add(2, f.as_fd(), PollFlags::POLLOUT),
            _ => {}
        }
        if running {
            add(3, self.child.fd(), input);
        }
        // While stdin is backed up the host's frames wait in the socket:
        // that is the backpressure that keeps the agent's buffer at one frame.
        if pending.is_empty() {
            add(4, conn.fd(), input);
        }
        poll_retrying(&mut fds, timeout)?;
        let is_ready = |slot: usize| {
            slots[slot]
                .and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        Ok(Ready {
            stdout: is_ready(0),
            stderr: is_ready(1),
            stdin: is_ready(2),
            exited: is_ready(3),
            conn: is_ready(4),
        })
    }

    fn feed_stdin(&mut self, pending: &mut PendingStdin) {
        let Some(stdin) = &mut self.stdin else {
            return;
        };
        match stdin.write(&pending.data[pending.offset..]) {
            Ok(n) => pending.offset += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                // The command closed its stdin (EPIPE): the rest has no reader.
                self.stdin = None;
                pending.offset = pending.data.len();
            }
        }
        if pending.is_empty() {
            pending.data = Vec::new();
            pending.offset = 0;
        }
    }
}

struct Ready {
    stdout: bool,
    stderr: bool,
    stdin: bool,
    exited: bool,
    conn: bool,
}

/// Moves one chunk from a pipe to the host; closes the pipe at EOF.
fn forward<S: Read + Write + AsFd>(
    pipe: &mut Option<File>,
    chunk: &mut [u8],
    conn: &mut Conn<S>,
    stream: Stream,
) -> Result<(), ExecAbort> {
    let Some(file) = pipe else {
        return Ok(());
    };
    match file.read(chunk) {
        Ok(0) => *pipe = None,
        Ok(n) => conn.send(&Frame::Data(stream, chunk[..n].to_vec()))?,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(_) => *pipe = None,
    }
    Ok(())
}

/// A short name of a frame for error messages (never the data itself).
pub fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Data(stream, bytes) => format!("{stream:?} data ({} bytes)", bytes.len()),
        Frame::Control(msg) => {
            let json = format!("{msg:?}");
            json.split(['(', ' ', '{'])
                .next()
                .unwrap_or("message")
                .to_string()
        }
    }
}
