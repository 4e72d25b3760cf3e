//! Starting a command: argv/env/cwd preparation, `PATH` search, and the
//! fork/exec itself.
//!
//! `std::process::Command` cannot be used: when `exec` fails it waits for the
//! child itself, and the central reaper (which owns every `wait`) may already
//! have reaped it, which std treats as a fatal error. So the agent forks by
//! hand, and the child reports a failed `chdir`/`exec` through a close-on-exec
//! pipe, which gives precise 126/127 results with a readable message.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agent_protocol::{Command, ExecRequest};
use nix::fcntl::OFlag;

use crate::reaper::{self, Registration};

/// The environment every command starts from; the request's env is added on top.
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
];

/// Exit code for "command not found", as shells use it.
pub const NOT_FOUND: i32 = 127;
/// Exit code for "found but cannot be executed".
pub const NOT_EXECUTABLE: i32 = 126;

/// Why a command could not be started; becomes an `Exited` with `error`.
#[derive(Debug)]
pub struct SpawnError {
    pub code: i32,
    pub message: String,
}

impl SpawnError {
    fn from_errno(what: String, errno: i32) -> SpawnError {
        let code = if errno == libc::ENOENT || errno == libc::ENOTDIR {
            NOT_FOUND
        } else {
            NOT_EXECUTABLE
        };
        SpawnError {
            code,
            message: format!("{what}: {}", nix::errno::Errno::from_raw(errno).desc()),
        }
    }

    fn invalid(message: String) -> SpawnError {
        SpawnError {
            code: NOT_FOUND,
            message,
        }
    }
}

/// Everything `execve` needs, built before the fork so that the child
/// only makes async-signal-safe calls (the agent is multi-threaded).
pub struct Prepared {
    program: String,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

fn cstring(what: &str, s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::invalid(format!("{what} contains a NUL byte: {s:?}")))
}

impl Prepared {
    pub fn new(req: &ExecRequest) -> Result<Prepared, SpawnError> {
        let argv: Vec<String> = match &req.command {
            Command::Argv(argv) => argv.clone(),
            Command::Script { script, shell } => {
                let shell = if shell.is_empty() { "/bin/sh" } else { shell };
                vec![shell.to_string(), "-c".to_string(), script.clone()]
            }
        };
        let Some(program) = argv.first().cloned() else {
            return Err(SpawnError::invalid("empty command line".to_string()));
        };
        let mut env: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (key, value) in &req.env {
            if key.is_empty() || key.contains('=') {
                return Err(SpawnError::invalid(format!(
                    "invalid environment variable name {key:?}"
                )));
            }
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
        let search_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let resolved = resolve_program(&program, search_path)?;
        Ok(Prepared {
            path: cstring("program path", &resolved)?,
            argv: argv
                .iter()
                .map(|a| cstring("argument", a))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstring("environment", &format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            cwd: cstring("working directory", req.cwd.as_deref().unwrap_or("/"))?,
            program,
        })
    }
}

/// Finds `program` like a shell does: names with a slash are used as they
/// are, others are looked up in `search_path` (the command's own PATH).
fn resolve_program(program: &str, search_path: &str) -> Result<String, SpawnError> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    let mut found_not_executable = false;
    for dir in search_path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() {
                if meta.permissions().mode() & 0o111 != 0 {
                    return Ok(candidate.to_string_lossy().into_owned());
                }
                found_not_executable = true;
            }
        }
    }
    let errno = if found_not_executable {
        libc::EACCES
    } else {
        libc::ENOENT
    };
    Err(SpawnError::from_errno(
        format!("cannot execute {program:?}"),
        errno,
    ))
}

/// The child's ends of its standard streams.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Make stdin (a pty slave) the child's controlling terminal, so that
    /// its line discipline sends it SIGINT, SIGTSTP and SIGWINCH and job
    /// control works.
    pub controlling_terminal: bool,
}

const STAGE_SETUP: u8 = 0;
const STAGE_CHDIR: u8 = 1;
const STAGE_EXEC: u8 = 2;

/// Forks and execs `prep` in a new session (so it leads its own process
/// group), registered with the reaper. Returns once `exec` has succeeded;
/// a failed `exec` or `chdir` is reported as a [`SpawnError`] after the
/// child has been reaped.
pub fn spawn(prep: &Prepared, stdio: ChildStdio) -> Result<Registration, SpawnError> {
    let os_err = |e: io::Error| SpawnError {
        code: NOT_EXECUTABLE,
        message: format!("cannot start {:?}: {e}", prep.program),
    };
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| os_err(e.into()))?;
    let argv = nul_terminated(&prep.argv);
    let envp = nul_terminated(&prep.envp);
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    let err_fd = err_write.as_raw_fd();
    let controlling_terminal = stdio.controlling_terminal;
    let mut registration = reaper::global()
        .spawn(|| {
            // SAFETY: the child only calls async-signal-safe functions on
            // memory prepared before the fork, then execs or _exits.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                // SAFETY: this is the child just forked; `prep`, `argv`
                // and `envp` were built before the fork and stay alive
                // until it execs or exits.
                0 => unsafe { exec_child(prep, &argv, &envp, fds, controlling_terminal, err_fd) },
                pid => Ok(pid),
            }
        })
        .map_err(os_err)?;
    // Close our copies of the child's ends, or we would never see EOF.
    drop(stdio);
    drop(err_write);
    let mut report = [0u8; 5];
    let mut filled = 0;
    let mut err_file = File::from(err_read);
    while filled < report.len() {
        match err_file.read(&mut report[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if filled < report.len() {
        // The pipe closed on exec: the command is running.
        return Ok(registration);
    }
    registration.wait();
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let what = match report[0] {
        STAGE_CHDIR => format!(
            "cannot change directory to {:?}",
            OsStr::from_bytes(prep.cwd.as_bytes())
        ),
        STAGE_EXEC => format!("cannot execute {:?}", prep.program),
        _ => format!("cannot set up the standard streams of {:?}", prep.program),
    };
    Err(SpawnError::from_errno(what, errno))
}

fn nul_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Runs in the forked child. Only async-signal-safe libc calls from here on.
///
/// # Safety
/// Only in a child just forked from this process (it execs or exits, and
/// never returns); `argv` and `envp` are NUL-terminated arrays of pointers
/// to C strings that live until it does.
unsafe fn exec_child(
    prep: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: [RawFd; 3],
    controlling_terminal: bool,
    err_fd: RawFd,
) -> ! {
    // SAFETY: every call is async-signal-safe and reads only our locals
    // and what the caller prepared before the fork (see # Safety).
    unsafe {
        libc::setsid();
        // The agent ignores SIGPIPE (Rust's runtime does) and that would be
        // inherited across exec; commands expect default dispositions.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Move sources out of 0..=2 first so the dup2s cannot clobber each other.
        let mut sources = fds;
        for fd in sources.iter_mut() {
            if *fd < 3 {
                *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                if *fd < 0 {
                    child_fail(err_fd, STAGE_SETUP);
                }
            }
        }
        for (target, fd) in sources.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                child_fail(err_fd, STAGE_SETUP);
            }
        }
        // A session leader without a controlling terminal acquires one with
        // TIOCSCTTY; setsid above made us one.
        if controlling_terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            child_fail(err_fd, STAGE_SETUP);
        }
        if libc::chdir(prep.cwd.as_ptr()) < 0 {
            child_fail(err_fd, STAGE_CHDIR);
        }
        libc::execve(prep.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        child_fail(err_fd, STAGE_EXEC)
    }
}

/// Reports the failed stage and errno on `err_fd`, then exits.
///
/// # Safety
/// Only in the forked child (see [`exec_child`]).
unsafe fn child_fail(err_fd: RawFd, stage: u8) -> ! {
    // SAFETY: errno is this thread's; write and _exit are
    // async-signal-safe, on a local buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let e = errno.to_le_bytes();
        let report = [stage, e[0], e[1], e[2], e[3]];
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(NOT_FOUND)
    }
}
