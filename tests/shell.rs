//! `runner shell` and `runner test --debug-on-failure`, driven through a
//! real pseudo-terminal as a person's terminal would drive them: the
//! runner is the session leader of a pty whose master this test holds,
//! so window changes reach it as real SIGWINCH and its raw mode is the
//! pty's own. The backend is RUNNER_BACKEND's (`auto` unset: QEMU on
//! hosts without hardware virtualization).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{images, processes_mentioning, runner_bin, vm_dirs};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, LocalFlags, Termios};
use nix::unistd::Pid;

/// How long any expected output or exit may take: generous, because TCG
/// boots on a loaded 2-core machine are slow. Nothing is asserted on time.
const PATIENCE: Duration = Duration::from_secs(300);
/// The runner's own boot limit, within PATIENCE.
const BOOT_TIMEOUT: &str = "240s";

/// The tests that boot VMs take turns: several TCG guests booting at once
/// on a small machine would only make each boot slower.
fn one_vm_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// A runner on a pty.
struct Terminal {
    child: Child,
    master: std::fs::File,
    /// Kept open, so that the test can read the terminal's settings after
    /// the runner is gone (and reads of the master never hit EIO).
    slave: OwnedFd,
    /// The settings before the runner started: cooked.
    cooked: Termios,
    seen: Vec<u8>,
}

impl Terminal {
    /// Starts `runner ARGS` in `dir` (also its TMPDIR, where VM
    /// directories go) as the session leader of a new 24x80 pty.
    fn start(dir: &Path, args: &[&str]) -> Terminal {
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("openpty");
        let cooked = tcgetattr(pty.slave.as_fd()).unwrap();
        let stdio = || Stdio::from(pty.slave.try_clone().unwrap());
        let images = images();
        let mut cmd = Command::new(runner_bin());
        cmd.args(args)
            .args(["--boot-timeout", BOOT_TIMEOUT])
            .current_dir(dir)
            .env("RUNNER_KERNEL", &images.kernel)
            .env("RUNNER_ROOTFS", &images.rootfs)
            .env("TMPDIR", dir)
            .env("TERM", "xterm")
            .env_remove("CI")
            .env_remove("GITLAB_CI")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A new session, with the pty as its controlling terminal,
                // as a login shell gets its terminal.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("runner starts");
        Terminal {
            child,
            master: std::fs::File::from(pty.master),
            slave: pty.slave,
            cooked,
            seen: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until the output after `from` contains `needle`; returns the
    /// offset just past it. Fails with everything seen after PATIENCE.
    fn expect_after(&mut self, from: usize, needle: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = &self.seen[from.min(self.seen.len())..];
            if let Some(at) = find(text, needle.as_bytes()) {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} within {PATIENCE:?}; the terminal showed:\n{}",
                self.text()
            );
            if let Some(status) = self.child.try_wait().unwrap() {
                // Take what it printed last, then give up: nothing more comes.
                self.read_some(Duration::from_millis(500));
                if find(&self.seen[from.min(self.seen.len())..], needle.as_bytes()).is_none() {
                    panic!(
                        "the runner exited ({status}) before printing {needle:?}:\n{}",
                        self.text()
                    );
                }
                continue;
            }
            self.read_some(left);
        }
    }

    /// Like [`Self::expect_after`], but `None` after `limit`.
    /// Types `keys` every 2 s until `needle` shows after `from` (within
    /// [`PATIENCE`]); returns where it ends. For keys whose effect depends
    /// on what the guest is doing when they arrive.
    fn type_until(&mut self, from: usize, keys: &str, needle: &str, what: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.type_text(keys);
            if let Some(next) = self.expect_within(from, needle, Duration::from_secs(2)) {
                return next;
            }
            assert!(Instant::now() < deadline, "{what}:\n{}", self.text());
        }
    }

    fn expect_within(&mut self, from: usize, needle: &str, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = find(&self.seen[from.min(self.seen.len())..], needle.as_bytes()) {
                return Some(from + at + needle.len());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read_some(left);
        }
    }

    fn expect(&mut self, needle: &str) -> usize {
        self.expect_after(0, needle)
    }

    /// Waits up to `limit` for output and appends what came.
    fn read_some(&mut self, limit: Duration) {
        let timeout = PollTimeout::try_from(limit.min(Duration::from_secs(1))).unwrap();
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.master.read(&mut buf) {
            self.seen.extend_from_slice(&buf[..n]);
        }
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Changes the window size as a terminal emulator does: the kernel
    /// sends SIGWINCH to the runner, the pty's foreground process.
    fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ");
    }

    fn is_raw(&self) -> bool {
        let now = tcgetattr(self.slave.as_fd()).unwrap();
        !now.local_flags.contains(LocalFlags::ICANON)
    }

    /// The runner's exit status, draining its output meanwhile.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Whatever it printed last.
                self.read_some(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the runner did not exit within {PATIENCE:?}; the terminal showed:\n{}",
                self.text()
            );
            self.read_some(Duration::from_millis(200));
        }
    }

    /// The terminal is back in the settings it had before the runner.
    fn assert_restored(&self) {
        let now = tcgetattr(self.slave.as_fd()).unwrap();
        assert_eq!(now.local_flags, self.cooked.local_flags, "{}", self.text());
        assert_eq!(now.input_flags, self.cooked.input_flags);
        assert_eq!(now.output_flags, self.cooked.output_flags);
        assert!(now
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO));
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed assertion must not leave a runner (and its VM) behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits until no process mentions `dir` (every VM process names its
/// sockets there).
fn no_vm_processes(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + PATIENCE;
    while !processes_mentioning(&needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "VM processes outlived the runner: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shell's prompt in the minimal image: busybox ash, `/dir # `.
const PROMPT: &str = " # ";

#[test]
fn the_shell_computes_follows_the_window_does_job_control_and_exits_with_its_code() {
    let _turn = one_vm_test_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut term = Terminal::start(dir.path(), &["shell", "-e", "GREETING=hi"]);
    let at = term.expect(PROMPT);
    assert!(term.is_raw(), "the runner's terminal is not in raw mode");

    // The typed text echoes `$((6*7))`; only the answer has the 42.
    term.type_text("echo $((6*7)) $GREETING\r");
    let at = term.expect_after(at, "42 hi");

    term.resize(33, 91);
    // The runner sends the new size from its SIGWINCH thread, which may
    // come after these keystrokes: the guest waits for it itself.
    term.type_text(
        "until [ \"$(stty size)\" = '33 91' ]; do sleep 0.1; done; echo size=$(stty size)\r",
    );
    let at = term.expect_after(at, "size=33 91");

    // Ctrl-C is a byte for the guest's terminal: it interrupts the
    // guest's foreground job, not the runner. A Ctrl-C (or Ctrl-Z) that
    // comes before `sleep` runs goes to the shell, which ignores it, so
    // it is sent until it has its effect.
    term.type_text("sleep 1000\r");
    let at = term.expect_after(at, "sleep 1000\r\n");
    let at = term.type_until(at, "\x03", PROMPT, "Ctrl-C did not stop sleep");
    // Job control: Ctrl-Z stops the foreground job and the shell says so.
    term.type_text("sleep 1000\r");
    let at = term.expect_after(at, "sleep 1000\r\n");
    let at = term.type_until(at, "\x1a", "Stopped", "Ctrl-Z did not stop sleep");
    // The shell learns of the kill only when it next reaps children; an
    // `exit` before that meets "You have stopped jobs" and is refused. So
    // `jobs` (which reaps) is asked until it reports the job killed.
    term.type_text("kill -9 %1\r");
    let at = term.type_until(at, "jobs\r", "Killed", "the killed job was never reported");
    term.type_text("echo after=$((1+1))\r");
    term.expect_after(at, "after=2");

    term.type_text("exit 3\r");
    let status = term.wait();
    assert_eq!(status.code(), Some(3), "{}", term.text());
    term.assert_restored();
    no_vm_processes(dir.path());
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn a_killed_shell_leaves_no_vm_and_a_cooked_terminal() {
    let _turn = one_vm_test_at_a_time();
    let dir = tempfile::tempdir().unwrap();

    // SIGKILL: nothing of the runner runs; its VM processes die with it
    // (PR_SET_PDEATHSIG) and its VM directory waits for the next runner.
    let mut term = Terminal::start(dir.path(), &["shell"]);
    term.expect(PROMPT);
    term.signal(Signal::SIGKILL);
    term.wait();
    no_vm_processes(dir.path());
    assert_eq!(vm_dirs(dir.path()).len(), 1, "the killed runner's VM dir");
    drop(term);

    // SIGTERM and SIGHUP: the runner tears the VM down, restores the
    // terminal and says so. The first of them also sweeps the directory
    // the SIGKILLed one left.
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let mut term = Terminal::start(dir.path(), &["shell"]);
        term.expect(PROMPT);
        assert!(term.is_raw());
        term.signal(signal);
        let status = term.wait();
        assert_eq!(status.code(), Some(130), "{signal}: {}", term.text());
        term.assert_restored();
        no_vm_processes(dir.path());
        assert_eq!(vm_dirs(dir.path()), Vec::<String>::new(), "{signal}");
    }
}

const FAILING: &str = r#"
name: debug
defaults: { files: none }
jobs:
  broken:
    steps:
      - name: prepare
        run: mkdir -p /tmp/work
      - name: fails here
        run: echo about to fail; exit 4
        workdir: /tmp/work
        env: { PROBE: from-the-step }
      - name: never runs
        run: echo never
"#;

#[test]
fn debug_on_failure_opens_a_shell_at_the_failing_step() {
    let _turn = one_vm_test_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yml"), FAILING).unwrap();
    let mut term = Terminal::start(
        dir.path(),
        &["test", "pipeline.yml", "--out", "out", "--debug-on-failure"],
    );
    let at = term.expect("job `broken`: step 2 `fails here` failed (exit code 4)");
    let at = term.expect_after(at, "Ctrl-D leaves it");
    let at = term.expect_after(at, PROMPT);
    term.type_text("echo cwd=$(pwd) probe=$PROBE\r");
    let at = term.expect_after(at, "cwd=/tmp/work probe=from-the-step");
    term.type_text("exit\r");
    term.expect_after(at, "left the debug shell");
    let status = term.wait();
    assert_eq!(status.code(), Some(1), "{}", term.text());
    let text = term.text();
    assert!(text.contains("1 passed, 1 failed, 1 skipped"), "{text}");
    assert!(!text.contains("never\r\n"), "{text}");
    term.assert_restored();

    let junit = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    assert!(junit.contains("exit code 4"), "{junit}");
    no_vm_processes(dir.path());
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn two_failing_jobs_get_their_debug_shells_one_after_the_other() {
    let _turn = one_vm_test_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "name: two\ndefaults: { files: none }\njobs:\n  \
                    left:\n    steps: [\"exit 5\"]\n  right:\n    steps: [\"exit 6\"]\n";
    std::fs::write(dir.path().join("pipeline.yml"), pipeline).unwrap();
    let args = [
        "test",
        "pipeline.yml",
        "--out",
        "out",
        "--jobs",
        "2",
        "--debug-on-failure",
    ];
    let mut term = Terminal::start(dir.path(), &args);
    let mut jobs = Vec::new();
    let mut at = 0;
    for _ in 0..2 {
        at = term.expect_after(at, "Ctrl-D leaves it");
        let banner = at;
        at = term.expect_after(at, PROMPT);
        // `in-$(echo job)=` is not in the echoed input, only in the answer.
        term.type_text("echo in-$(echo job)=$RUNNER_JOB.\r");
        let answer = term.expect_after(at, "in-job=");
        at = term.expect_after(answer, ".");
        jobs.push(String::from_utf8_lossy(&term.seen[answer..at - 1]).into_owned());
        // While this shell is open, no other job's shell has started.
        let since = String::from_utf8_lossy(&term.seen[banner..]).into_owned();
        assert!(!since.contains("Ctrl-D leaves it"), "{}", term.text());
        term.type_text("exit\r");
    }
    jobs.sort();
    assert_eq!(jobs, ["left", "right"], "{}", term.text());
    let status = term.wait();
    assert_eq!(status.code(), Some(1), "{}", term.text());
    assert!(term.text().contains("2 failed"), "{}", term.text());
    term.assert_restored();
}

/// One line on stderr, exit 2, nothing booted.
fn assert_refused(cmd: &mut Command, what: &str) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr
}

#[test]
fn without_a_terminal_both_are_refused_in_one_line_as_is_a_missing_job() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yml"), FAILING).unwrap();
    let runner = || {
        let mut cmd = Command::new(runner_bin());
        cmd.current_dir(dir.path())
            .env("TMPDIR", dir.path())
            .env_remove("CI")
            .env_remove("GITLAB_CI");
        cmd
    };
    let err = assert_refused(runner().arg("shell"), "shell without a tty");
    assert!(err.contains("needs a terminal"), "{err}");

    let err = assert_refused(
        runner().args(["shell", "pipeline.yml"]),
        "shell without a job",
    );
    assert!(err.contains("name the job; the jobs are: broken"), "{err}");
    let err = assert_refused(
        runner().args(["shell", "pipeline.yml", "nope"]),
        "unknown job",
    );
    assert!(err.contains("no job `nope`; the jobs are: broken"), "{err}");

    let debug = ["test", "pipeline.yml", "--out", "out", "--debug-on-failure"];
    let err = assert_refused(runner().args(debug), "--debug-on-failure without a tty");
    assert!(err.contains("--debug-on-failure"), "{err}");
    let err = assert_refused(
        runner().args(debug).env("CI", "true"),
        "--debug-on-failure in CI",
    );
    assert!(err.contains("CI"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing ran");
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
