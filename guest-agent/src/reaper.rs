//! The one place that waits for child processes.
//!
//! As PID 1 (and, in normal mode, as a child subreaper) the agent inherits
//! every orphan in the guest and must reap them, which means calling
//! `wait4(-1, ..)`. That call would also steal the exit status of the
//! commands the agent runs itself, so nothing else ever waits: one thread
//! blocks in `wait4(-1)` and hands each (status, rusage) to the exec that
//! registered the pid. Statuses of unregistered pids (orphans) are dropped.
//!
//! Registration happens under the same lock as the fork (see
//! [`Reaper::spawn`]), and the reaper takes that lock before looking a pid
//! up, so even a child that exits before `fork` returns in the parent is
//! dispatched to its exec rather than dropped as an orphan.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::fcntl::OFlag;

/// How a child ended, as `wait4` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// `ru_maxrss`, KiB.
    pub max_rss_kib: u64,
}

/// Where the reaper leaves one child's status, plus a pipe it writes a byte
/// to, so the waiting exec can `poll` for the exit alongside its other fds.
struct Slot {
    exit: Mutex<Option<ChildExit>>,
    notify: File,
}

#[derive(Default)]
struct State {
    waiting: HashMap<i32, Arc<Slot>>,
    /// Set by every spawn, cleared by the reaper before each `wait4`; lets
    /// the reaper sleep when it has no children without missing a new one.
    spawned: bool,
}

pub struct Reaper {
    state: Mutex<State>,
    wake: Condvar,
}

/// A registered child. Dropping it unregisters the pid, so a child that is
/// abandoned (say, its connection broke) is reaped as an orphan later.
pub struct Registration {
    reaper: &'static Reaper,
    pid: i32,
    slot: Arc<Slot>,
    ready: File,
}

impl Registration {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Becomes readable once the child has been reaped.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    pub fn try_exit(&self) -> Option<ChildExit> {
        *lock(&self.slot.exit)
    }

    /// Blocks until the child has been reaped.
    pub fn wait(&mut self) -> ChildExit {
        loop {
            if let Some(exit) = self.try_exit() {
                return exit;
            }
            let mut byte = [0u8; 1];
            // Blocking read: returns when the reaper has written its byte.
            if let Err(e) = self.ready.read(&mut byte) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Cannot happen with a pipe we own; avoid spinning anyway.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.reaper.locked();
        if let Some(slot) = state.waiting.get(&self.pid) {
            if Arc::ptr_eq(slot, &self.slot) {
                state.waiting.remove(&self.pid);
            }
        }
    }
}

/// The process-wide reaper, started on first use.
pub fn global() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| Reaper {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    });
    STARTED.get_or_init(|| {
        // Outside PID 1, become the subreaper of our commands' orphans so
        // that both modes see the same process tree shape. Harmless if it fails.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || reaper.run());
        if let Err(e) = spawned {
            crate::console!("cannot start the reaper thread: {e}");
        }
    });
    reaper
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reaper {
    fn locked(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Runs `fork_child` (which returns the new pid) with the registry
    /// locked, and registers the pid before the lock is released.
    pub fn spawn<F>(&'static self, fork_child: F) -> io::Result<Registration>
    where
        F: FnOnce() -> io::Result<i32>,
    {
        let (ready, notify) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let slot = Arc::new(Slot {
            exit: Mutex::new(None),
            notify: File::from(notify),
        });
        let mut state = self.locked();
        let pid = fork_child()?;
        state.waiting.insert(pid, slot.clone());
        state.spawned = true;
        drop(state);
        self.wake.notify_one();
        Ok(Registration {
            reaper: self,
            pid,
            slot,
            ready: File::from(ready),
        })
    }

    fn run(&self) {
        loop {
            self.locked().spawned = false;
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero rusage is a valid value of this plain C struct.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: both out-pointers are valid for the duration of the call.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::__WALL, &mut usage) };
            if pid > 0 {
                self.dispatch(pid, status, &usage);
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    // No children: sleep until a spawn. Orphans cannot appear
                    // meanwhile, since an orphan needs a dying child of ours.
                    let mut state = self.locked();
                    while !state.spawned {
                        state = self
                            .wake
                            .wait(state)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn dispatch(&self, pid: i32, status: libc::c_int, usage: &libc::rusage) {
        let exit = ChildExit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        };
        // Taking the lock here is what makes registration race-free: a pid
        // reaped while its spawn still holds the lock is looked up afterwards.
        let slot = self.locked().waiting.remove(&pid);
        if let Some(slot) = slot {
            *lock(&slot.exit) = Some(exit);
            // A full pipe or a gone reader is fine: the status is already stored.
            let _ = (&slot.notify).write(&[1]);
        }
    }
}
