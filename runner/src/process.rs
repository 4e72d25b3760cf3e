//! Child processes that cannot outlive us.
//!
//! Every helper process (QEMU, a vhost-user backend) is started through
//! [`spawn_guarded`]: it gets its own process group, so a Ctrl-C in the
//! terminal reaches only the runner, which then tears VMs down in order; and it
//! gets `PR_SET_PDEATHSIG`, so even a `kill -9` of the runner takes it along.
//! The returned [`ChildGuard`] kills and reaps the child when dropped.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct ChildGuard {
    child: Child,
    what: String,
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
    let child = cmd.spawn()?;
    Ok(ChildGuard {
        child,
        what: what.to_string(),
    })
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
