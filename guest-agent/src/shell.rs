//! One `shell` exchange: an interactive shell on a pseudo-terminal.
//!
//! The agent opens a pty pair, starts the shell as a session leader with
//! the slave as its controlling terminal, and then a single `poll` loop
//! moves the user's keystrokes (`Stdin` frames) into the master, the
//! terminal's output back to the host (`Stdout` frames), applies
//! `Resize` with `TIOCSWINSZ` (the kernel then sends SIGWINCH to the
//! foreground job) and learns of the shell's exit from the reaper.
//!
//! Ctrl-C, Ctrl-Z and Ctrl-D need nothing special: the host's terminal is
//! in raw mode, so they arrive here as bytes, and this terminal's line
//! discipline turns them into SIGINT, SIGTSTP or end-of-file for the shell.
//!
//! Memory stays bounded as in `exec`: one chunk of output and at most one
//! stdin frame are held at a time; while the terminal takes no input, the
//! host's frames wait in the socket. When the shell ends (or the host goes
//! away), whatever else still runs in its session is killed: jobs left in
//! the background must not outlive the shell they were started from.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Instant;

use agent_protocol::{
    Command, ExecRequest, ExitStatus, Frame, Message, ShellRequest, Stream, WindowSize, CHUNK_SIZE,
};
use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::conn::Conn;
use crate::exec::{
    describe, elapsed_ms, poll_retrying, report_spawn_failure, ExecAbort, DRAIN_GRACE,
};
use crate::reaper::{ChildExit, Registration};
use crate::spawn::{spawn, ChildStdio, Prepared, SpawnError, NOT_EXECUTABLE};

/// The shell when the request names none: busybox ash in the minimal image.
const DEFAULT_SHELL: &str = "/bin/sh";

/// Runs the shell of `req` until it exits and sends its `Exited`.
pub fn run<S: Read + Write + AsFd>(
    conn: &mut Conn<S>,
    req: &ShellRequest,
) -> Result<(), ExecAbort> {
    let started = Instant::now();
    match start(req) {
        Ok(mut terminal) => {
            let result = terminal.relay(conn, started);
            // Whatever the shell started must not outlive it, nor a host
            // that went away.
            terminal.end_session();
            result
        }
        Err(e) => report_spawn_failure(conn, e, started),
    }
}

/// A running shell and the master side of its terminal.
struct Terminal {
    child: Registration,
    /// `None` once the terminal reported end-of-file (no slave left open).
    master: Option<File>,
}

fn start(req: &ShellRequest) -> Result<Terminal, SpawnError> {
    let argv = match req.argv.is_empty() {
        true => vec![DEFAULT_SHELL.to_string()],
        false => req.argv.clone(),
    };
    let prepared = Prepared::new(&ExecRequest {
        command: Command::Argv(argv),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        timeout_ms: None,
        stdin: true,
    })?;
    let setup_err = |e: io::Error| SpawnError {
        code: NOT_EXECUTABLE,
        message: format!("cannot open a terminal for the shell: {e}"),
    };
    let (master, slave) = open_pty().map_err(setup_err)?;
    set_window_size(&master, req.size).map_err(setup_err)?;
    let stdio = ChildStdio {
        stdin: slave.try_clone().map_err(setup_err)?,
        stdout: slave.try_clone().map_err(setup_err)?,
        stderr: slave,
        controlling_terminal: true,
    };
    let child = spawn(&prepared, stdio)?;
    // Non-blocking: a terminal whose input queue is full must not stall the
    // loop that forwards its output.
    fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| setup_err(e.into()))?;
    Ok(Terminal {
        child,
        master: Some(File::from(master)),
    })
}

/// A new pty pair: (master, slave), both close-on-exec, so that no other
/// command the agent starts inherits them.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    // SAFETY: `into_raw_fd` hands over sole ownership of the descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    // glibc passes the flags through, but do not rely on it.
    fcntl(master.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` returned a fresh descriptor that nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// `TIOCSWINSZ` on the master: the kernel sends SIGWINCH to the terminal's
/// foreground process group when the size changes.
fn set_window_size(master: &impl AsRawFd, size: WindowSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keystrokes received from the host but not yet taken by the terminal.
#[derive(Default)]
struct PendingInput {
    data: Vec<u8>,
    offset: usize,
}

impl PendingInput {
    fn is_empty(&self) -> bool {
        self.offset >= self.data.len()
    }
}

impl Terminal {
    fn relay<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Conn<S>,
        started: Instant,
    ) -> Result<(), ExecAbort> {
        let mut pending = PendingInput::default();
        let mut exit: Option<(ChildExit, Instant)> = None;
        let mut chunk = vec![0u8; CHUNK_SIZE];
        loop {
            // Frames already buffered are invisible to poll: handle them first.
            while pending.is_empty() {
                let Some(frame) = conn.take_buffered_frame()? else {
                    break;
                };
                match frame {
                    Frame::Data(Stream::Stdin, bytes) => {
                        pending = PendingInput {
                            data: bytes,
                            offset: 0,
                        }
                    }
                    Frame::Control(Message::Resize(size)) => {
                        if let Some(master) = &self.master {
                            // A failure only leaves the old size in place.
                            let _ = set_window_size(master, size);
                        }
                    }
                    // The user's terminal went away: hang this one up.
                    Frame::Control(Message::StdinEof) => self.signal_shell(Signal::SIGHUP),
                    Frame::Control(Message::Cancel) => self.signal_shell(Signal::SIGKILL),
                    other => {
                        return Err(ExecAbort::Protocol(format!(
                            "unexpected frame while a shell runs: {}",
                            describe(&other)
                        )))
                    }
                }
            }
            if exit.is_some() {
                // Input for a shell that is gone has no reader.
                pending = PendingInput::default();
            }
            if let Some((_, exited_at)) = exit {
                if self.master.is_none() || exited_at.elapsed() >= DRAIN_GRACE {
                    break;
                }
            }
            let timeout = match exit {
                Some((_, exited_at)) => {
                    let left = DRAIN_GRACE.saturating_sub(exited_at.elapsed());
                    PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let ready = self.wait_ready(conn, &pending, exit.is_none(), timeout)?;
            if ready.exited {
                if let Some(status) = self.child.try_exit() {
                    exit = Some((status, Instant::now()));
                }
            }
            if ready.output {
                self.forward_output(&mut chunk, conn)?;
            }
            if ready.input {
                self.feed_input(&mut pending);
            }
            if ready.conn && conn.fill_once().unwrap_or(0) == 0 {
                return Err(ExecAbort::Disconnected);
            }
        }
        let (status, exited_at) = exit.ok_or(ExecAbort::Disconnected)?;
        let result = ExitStatus {
            code: status.code,
            signal: status.signal,
            duration_ms: elapsed_ms(started, exited_at),
            max_rss_kib: status.max_rss_kib,
            ..Default::default()
        };
        conn.send(&Frame::Control(Message::Exited(result)))?;
        Ok(())
    }

    fn signal_shell(&self, signal: Signal) {
        if self.child.try_exit().is_none() {
            let _ = kill(Pid::from_raw(self.child.pid()), signal);
        }
    }

    /// Polls everything the loop may act on next.
    fn wait_ready<S: Read + Write + AsFd>(
        &self,
        conn: &Conn<S>,
        pending: &PendingInput,
        running: bool,
        timeout: PollTimeout,
    ) -> Result<Ready, ExecAbort> {
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        if let Some(master) = &self.master {
            let mut flags = PollFlags::POLLIN;
            if !pending.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            slots[0] = Some(fds.len());
            fds.push(PollFd::new(master.as_fd(), flags));
        }
        if running {
            slots[1] = Some(fds.len());
            fds.push(PollFd::new(self.child.fd(), PollFlags::POLLIN));
        }
        // While the terminal takes no input the host's frames wait in the
        // socket: the backpressure that keeps our buffer at one frame.
        if pending.is_empty() {
            slots[2] = Some(fds.len());
            fds.push(PollFd::new(conn.fd(), PollFlags::POLLIN));
        }
        poll_retrying(&mut fds, timeout)?;
        let revents = |slot: usize| {
            slots[slot]
                .and_then(|i| fds[i].revents())
                .unwrap_or(PollFlags::empty())
        };
        let master = revents(0);
        Ok(Ready {
            // A hang-up (no slave open any more) is read as end-of-file.
            output: master.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR),
            input: master.contains(PollFlags::POLLOUT),
            exited: !revents(1).is_empty(),
            conn: !revents(2).is_empty(),
        })
    }

    /// Moves one chunk of terminal output to the host.
    fn forward_output<S: Read + Write + AsFd>(
        &mut self,
        chunk: &mut [u8],
        conn: &mut Conn<S>,
    ) -> Result<(), ExecAbort> {
        let Some(master) = &mut self.master else {
            return Ok(());
        };
        match master.read(chunk) {
            Ok(0) => self.master = None,
            Ok(n) => conn.send(&Frame::Data(Stream::Stdout, chunk[..n].to_vec()))?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // EIO: the last slave descriptor was closed.
            Err(_) => self.master = None,
        }
        Ok(())
    }

    fn feed_input(&mut self, pending: &mut PendingInput) {
        let Some(master) = &mut self.master else {
            *pending = PendingInput::default();
            return;
        };
        match master.write(&pending.data[pending.offset..]) {
            Ok(n) => pending.offset += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => *pending = PendingInput::default(),
        }
        if pending.is_empty() {
            *pending = PendingInput::default();
        }
    }

    /// Kills the shell and everything still in its session (background
    /// jobs sit in process groups of their own, so the shell's group is
    /// not enough), then hangs the terminal up.
    fn end_session(&mut self) {
        let sid = self.child.pid();
        let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
        for pid in session_members(sid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        self.master = None;
    }
}

struct Ready {
    output: bool,
    input: bool,
    exited: bool,
    conn: bool,
}

/// The pids whose session id is `sid`, from /proc.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| session_of(&stat))
                == Some(sid)
        })
        .collect()
}

/// The session field of a `/proc/PID/stat` line. The command name in
/// parentheses may itself hold spaces and parentheses, so fields are
/// counted from the last `)`: state, ppid, pgrp, session.
fn session_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::session_of;

    #[test]
    fn the_session_is_read_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 40 0 -1 4194560";
        assert_eq!(session_of(stat), Some(40));
        assert_eq!(session_of("42 (sh"), None);
    }
}
