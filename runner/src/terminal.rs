//! The user's terminal while it is lent to a shell in a guest
//! (`runner shell`, `runner test --debug-on-failure`).
//!
//! The terminal goes into raw mode, so that every key (Ctrl-C, Ctrl-D,
//! Ctrl-Z, arrows) reaches the guest's own terminal, whose line discipline
//! gives them their meaning there. Raw mode must never outlive the shell:
//! a guard restores the saved settings when the shell ends or fails, the
//! interrupt handler restores them at the first SIGINT, SIGTERM or SIGHUP
//! (before the VMs are torn down), and a panic hook restores them before
//! any panic message is printed. Only SIGKILL can leave the terminal raw.

use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;

use agent_protocol::{ExitStatus, ShellRequest, WindowSize};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use signal_hook::consts::SIGWINCH;
use signal_hook::iterator::{Handle, Signals};

use crate::session::{AgentSession, SessionError, ShellControl};
use runner_machine::interrupt::{self, HookGuard};

/// The size a shell starts with when the terminal does not say.
const FALLBACK_SIZE: WindowSize = WindowSize { rows: 24, cols: 80 };

/// Whether stdin is a terminal, which an interactive shell needs.
pub fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

/// The size of the terminal on stdin (or stdout), if there is one.
pub fn window_size() -> Option<WindowSize> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let found = [stdin.as_fd(), stdout.as_fd()]
        .into_iter()
        .find_map(size_of);
    found
}

fn size_of(fd: BorrowedFd) -> Option<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Runs an interactive shell on `session` with this process's terminal:
/// raw mode, the initial window size and every later one (SIGWINCH),
/// keystrokes in, output out. The terminal is back as it was when this
/// returns, whatever happened.
pub fn run_shell(
    session: &mut AgentSession,
    mut request: ShellRequest,
) -> Result<ExitStatus, SessionError> {
    request.size = window_size().unwrap_or(FALLBACK_SIZE);
    if !request.env.iter().any(|(k, _)| k == "TERM") {
        // The guest's programs should speak the user's terminal.
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        request.env.push(("TERM".into(), term));
    }
    let control = session.shell_control();
    let stdin = io::stdin();
    let raw = RawMode::enter(stdin.as_fd())?;
    let input = InputPump::start(control.clone())?;
    let resizes = ResizeWatch::start(control)?;
    let result = session.shell(request, &mut |bytes| {
        // Per chunk, not for the whole shell: other threads may print
        // (a warning) and must not block on stdout meanwhile.
        let mut out = io::stdout().lock();
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    });
    input.stop();
    resizes.stop();
    drop(raw);
    result
}

/// The terminal and the settings to restore; `Some` while a [`RawMode`]
/// is active.
static SAVED: Mutex<Option<(RawFd, Termios)>> = Mutex::new(None);

fn restore_saved() {
    // try_lock: the panic hook may run on a thread that holds the lock.
    let saved = match SAVED.try_lock() {
        Ok(mut saved) => saved.take(),
        Err(_) => None,
    };
    if let Some((fd, settings)) = saved {
        // SAFETY: the descriptor outlives the `RawMode` that saved it (it
        // is stdin, or a test's pty), and this runs before that ends.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &settings);
    }
}

/// A terminal in raw mode until dropped.
struct RawMode {
    _on_interrupt: HookGuard,
}

impl RawMode {
    /// Raw mode for `terminal`, which must stay open while this lives.
    fn enter(terminal: BorrowedFd) -> io::Result<RawMode> {
        install_panic_hook();
        let saved = termios::tcgetattr(terminal)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some((terminal.as_raw_fd(), saved));
        if let Err(e) = termios::tcsetattr(terminal, SetArg::TCSANOW, &raw) {
            SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(e.into());
        }
        Ok(RawMode {
            _on_interrupt: interrupt::on_interrupt(restore_saved),
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_saved();
    }
}

/// Restores the terminal before a panic message is printed, whichever
/// thread panics (the default hook prints; unwinding comes after).
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            previous(info);
        }));
    });
}

/// Copies what the user types to the shell, until stopped. It polls stdin
/// next to a stop pipe rather than blocking in `read`, so that stopping
/// it loses no keystroke meant for whatever reads the terminal next.
struct InputPump {
    stop: OwnedFd,
    thread: JoinHandle<()>,
}

impl InputPump {
    fn start(control: ShellControl) -> io::Result<InputPump> {
        let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("shell-input".into())
            .spawn(move || pump_input(&control, &stop_read))?;
        Ok(InputPump { stop, thread })
    }

    fn stop(self) {
        // Closing the write end wakes the poll with POLLHUP.
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn pump_input(control: &ShellControl, stop: &OwnedFd) {
    let stdin = io::stdin();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
            Ok(0) => {
                // The terminal hung up: so does the guest's.
                let _ = control.hang_up();
                return;
            }
            Ok(n) => {
                if control.input(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(_) => {
                let _ = control.hang_up();
                return;
            }
        }
    }
}

/// Sends the window size to the shell on every SIGWINCH, until stopped.
struct ResizeWatch {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl ResizeWatch {
    fn start(control: ShellControl) -> io::Result<ResizeWatch> {
        let mut signals = Signals::new([SIGWINCH])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("shell-resize".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if let Some(size) = window_size() {
                        if control.resize(size).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(ResizeWatch { handle, thread })
    }

    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::pty::openpty;
    use nix::sys::termios::{tcgetattr, LocalFlags};

    use super::RawMode;

    /// One raw terminal at a time, as in the runner: the saved settings
    /// are process-wide.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        TURN.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn raw_mode_is_undone_by_a_panic_before_its_guard_drops() {
        let _turn = one_at_a_time();
        let pty = openpty(None, None).unwrap();
        let cooked = tcgetattr(pty.slave.as_fd()).unwrap();
        assert!(cooked.local_flags.contains(LocalFlags::ICANON));
        let raw = RawMode::enter(pty.slave.as_fd()).unwrap();
        let now = tcgetattr(pty.slave.as_fd()).unwrap();
        assert!(!now
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO));
        // The hook runs at the panic, before any unwinding.
        let panicked = std::panic::catch_unwind(|| panic!("on purpose"));
        assert!(panicked.is_err());
        let after = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(after.local_flags, cooked.local_flags);
        assert_eq!(after.input_flags, cooked.input_flags);
        assert_eq!(after.output_flags, cooked.output_flags);
        drop(raw);
        // The guard has nothing left to undo, and the terminal stays cooked.
        let after = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(after.local_flags, cooked.local_flags);
    }

    #[test]
    fn dropping_the_guard_restores_the_terminal() {
        let _turn = one_at_a_time();
        let pty = openpty(None, None).unwrap();
        let cooked = tcgetattr(pty.slave.as_fd()).unwrap();
        drop(RawMode::enter(pty.slave.as_fd()).unwrap());
        let after = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(after.local_flags, cooked.local_flags);
        assert_eq!(after.output_flags, cooked.output_flags);
    }
}
