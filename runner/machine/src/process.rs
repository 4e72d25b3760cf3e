//! Child processes that cannot outlive us.
//!
//! Every helper process (QEMU, a vhost-user backend) is started through
//! [`spawn_guarded`]: it gets its own process group, so a Ctrl-C in the
//! terminal reaches only the runner, which then tears VMs down in order; and it
//! gets `PR_SET_PDEATHSIG`, so even a `kill -9` of the runner takes it along.
//! The returned [`ChildGuard`] kills and reaps the child when dropped.
//!
//! The kernel sends the parent-death signal when the *thread* that forked
//! the child ends, not the process: so every guarded child is forked by
//! one thread that lives as long as the runner ([`spawner`]), whichever
//! thread asked for it.
//!
//! A child that starts a tree of processes of its own (an image build:
//! mmdebstrap, a pipeline's `setup` in namespaces) is run under a *keeper*
//! ([`keep_tree`], `runner __keeper`): a small process that adopts every
//! orphan of that tree (`PR_SET_CHILD_SUBREAPER`) and kills all of them when
//! the tree's first process ends, when its time is up, or when the runner
//! dies, so that nothing of it outlives the runner.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct ChildGuard {
    child: Child,
    what: String,
}

/// Lets the program `cmd` starts inherit the open descriptors `fds`, under
/// their numbers, and no others (everything the runner opens is
/// close-on-exec).
pub fn inherit_fds(cmd: &mut Command, fds: &[std::os::fd::RawFd]) {
    if fds.is_empty() {
        return;
    }
    let fds = fds.to_vec();
    // SAFETY: fcntl is async-signal-safe; clearing FD_CLOEXEC in the
    // forked child alone leaks the files to no other program.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

pub fn spawn_guarded(cmd: &mut Command, what: &str) -> io::Result<ChildGuard> {
    cmd.process_group(0);
    // Read before the fork: in the child, `std::process::id()` is the child.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe, touch no memory of the
    // parent, and a raw-errno `io::Error` does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the runner died between fork and prctl, no signal will ever
            // come: we have been reparented already. Do not exec.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = spawn_from_lasting_thread(cmd)?;
    Ok(ChildGuard {
        child,
        what: what.to_string(),
    })
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<(Child, Command)>>);

/// The thread that forks every guarded child (see the module docs).
fn spawner() -> io::Result<&'static Mutex<mpsc::Sender<SpawnRequest>>> {
    static SPAWNER: OnceLock<Result<Mutex<mpsc::Sender<SpawnRequest>>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let result = cmd.spawn().map(|child| (child, cmd));
                        let _ = reply.send(result);
                    }
                })
                .map(|_| Mutex::new(tx))
                .map_err(|e| format!("starting the spawner thread: {e}"))
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

/// Spawns `cmd` on the spawner thread; `cmd` comes back as it was.
fn spawn_from_lasting_thread(cmd: &mut Command) -> io::Result<Child> {
    let (reply, result) = mpsc::channel();
    let taken = std::mem::replace(cmd, Command::new(""));
    let sent = spawner()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((taken, reply));
    if sent.is_err() {
        return Err(io::Error::other("the spawner thread is gone"));
    }
    match result.recv() {
        Ok(Ok((child, back))) => {
            *cmd = back;
            Ok(child)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the spawner thread is gone")),
    }
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin pipe, if it was piped and not taken yet.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The child's stdout pipe, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status, if the child has already ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the child to end by itself.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child (if still running) and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Err(e) = self.child.kill() {
            tracing::debug!("killing {}: {e}", self.what);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a kept tree's first process gets, after SIGTERM, to clean up
/// (an image build removes its work directory) before the keeper kills
/// everything left.
const KEEPER_GRACE: Duration = Duration::from_secs(10);
/// Exit code of a keeper whose tree ran out of time (as `timeout(1)`).
pub const KEEPER_TIMED_OUT: i32 = 124;

/// A keeper command for `cmd` (see the module docs): `cmd`'s program,
/// arguments, environment and directory, run as `run_as` (uid, gid) if
/// given, for at most `limit`. Set its stdio, then [`spawn_kept`] it.
pub fn keep_tree(
    cmd: &Command,
    limit: Duration,
    run_as: Option<(u32, u32)>,
) -> io::Result<Command> {
    let exe = crate::programs::runner_exe().map_err(io::Error::other)?;
    let mut keeper = Command::new(exe);
    keeper
        .arg("__keeper")
        .args(["--limit", &limit.as_secs().max(1).to_string()]);
    if let Some((uid, gid)) = run_as {
        keeper.args(["--uid", &uid.to_string(), "--gid", &gid.to_string()]);
    }
    keeper.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => keeper.env(key, value),
            None => keeper.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        keeper.current_dir(dir);
    }
    Ok(keeper)
}

/// Spawns a keeper from [`keep_tree`]. It stays in our process group, so a
/// Ctrl-C reaches its tree too (which cleans up after itself); it gets
/// SIGTERM, not SIGKILL, when the runner dies, so that it can end its tree.
pub fn spawn_kept(keeper: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: as in `spawn_guarded`: prctl and getppid only.
    unsafe {
        keeper.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    spawn_from_lasting_thread(keeper)
}

/// `runner __keeper --limit SECS [--uid U --gid G] -- PROGRAM ARGS...`:
/// runs the program and ends every process it started (module docs).
/// Returns the program's exit code, [`KEEPER_TIMED_OUT`] past the limit,
/// 143 when the runner died.
pub fn keeper_main(
    limit: Duration,
    run_as: Option<(u32, u32)>,
    argv: &[std::ffi::OsString],
) -> i32 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some((program, args)) = argv.split_first() else {
        eprintln!("runner __keeper: no program");
        return 2;
    };
    // SAFETY: a plain prctl on ourselves.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        eprintln!(
            "runner __keeper: PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        );
        return 1;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    // Ctrl-C is for the tree, which cleans up and ends; we stay to see it.
    let _ = signal_hook::flag::register(libc::SIGINT, Arc::new(AtomicBool::new(false)));
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let main = match cmd.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            eprintln!("runner __keeper: {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    let deadline = Instant::now() + limit;
    let mut main_status = None;
    let ended_by = loop {
        reap(main, &mut main_status);
        if let Some(status) = main_status {
            break exit_code(status);
        }
        if stop.load(Ordering::SeqCst) {
            break 143;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "error: it did not finish within {}s, the limit for image builds; stopped it",
                limit.as_secs()
            );
            break KEEPER_TIMED_OUT;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if main_status.is_none() {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(main, libc::SIGTERM) };
        let grace = Instant::now() + KEEPER_GRACE;
        while main_status.is_none() && Instant::now() < grace {
            reap(main, &mut main_status);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    kill_descendants(main, &mut main_status);
    ended_by
}

/// Reaps every child that ended (orphans of the tree included); notes the
/// main one's status.
fn reap(main: libc::pid_t, main_status: &mut Option<libc::c_int>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if pid == main {
            *main_status = Some(status);
        }
    }
}

/// SIGKILLs our children until there are none: each round's dead orphan
/// their own children, who come to us (we are their subreaper).
fn kill_descendants(main: libc::pid_t, main_status: &mut Option<libc::c_int>) {
    let me = std::process::id() as libc::pid_t;
    loop {
        let children = children_of(me);
        if children.is_empty() {
            return;
        }
        for pid in children {
            // SAFETY: a signal to a child of ours, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
        reap(main, main_status);
    }
}

/// The processes whose parent is `parent` (from /proc/PID/stat).
pub fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_in_stat(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent pid in a /proc/PID/stat line: after `(comm)`, which may hold
/// spaces and parentheses, come the state and the parent pid.
fn parent_in_stat(stat: &str) -> Option<libc::pid_t> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Sends SIGKILL to a process we still hold a guard for. Safe against pid
/// reuse because an un-reaped child keeps its pid until the guard waits.
pub fn kill_pid(pid: u32) {
    // SAFETY: plain syscall with no memory arguments.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_of_a_process_is_read_past_a_strange_name() {
        assert_eq!(parent_in_stat("12 (a) b (c)) S 345 12 12 0"), Some(345));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    /// The parent check in `pre_exec` compares against our pid, not a
    /// thread's: a spawn from any thread must still go through.
    #[test]
    fn guarded_children_start_from_any_thread() {
        let status = std::thread::spawn(|| {
            let mut child = spawn_guarded(&mut Command::new("true"), "true").expect("spawn");
            child.wait_timeout(Duration::from_secs(600))
        })
        .join()
        .unwrap();
        assert!(status.expect("`true` exited").success());
    }
}
