//! Ctrl-C, SIGTERM and SIGHUP (the terminal closed): stop everything that
//! is running, then let the normal error path unwind so that every `Drop`
//! (VM teardown, temp directories, report files, a terminal in raw mode)
//! runs.
//!
//! Blocking calls (reading from a guest, waiting for a boot) cannot be woken
//! by a flag alone, so running VMs register a closure that breaks them out:
//! it kills their processes and shuts their sockets down.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

type Hook = Box<dyn Fn() + Send + Sync>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn hooks() -> &'static Mutex<HashMap<u64, Hook>> {
    static HOOKS: OnceLock<Mutex<HashMap<u64, Hook>>> = OnceLock::new();
    HOOKS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Starts the thread that turns SIGINT/SIGTERM/SIGHUP into [`trigger`].
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    // A second Ctrl-C while tearing down: the user means it.
                    std::process::exit(128 + sig);
                }
                // Not eprintln!: after SIGHUP the terminal may be gone, and
                // a failed write must not panic this thread.
                let _ = writeln!(std::io::stderr(), "runner: interrupted, stopping VMs...");
                trigger();
            }
        })?;
    Ok(())
}

/// Marks the run as interrupted and runs every registered hook.
pub fn trigger() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if let Ok(hooks) = hooks().lock() {
        for hook in hooks.values() {
            hook();
        }
    }
}

pub fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Keeps a hook registered until dropped. A hook registered after an
/// interrupt runs at once, so a VM that was booting when Ctrl-C came is
/// stopped too.
pub struct HookGuard(u64);

pub fn on_interrupt(hook: impl Fn() + Send + Sync + 'static) -> HookGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    if is_interrupted() {
        hook();
    }
    if let Ok(mut hooks) = hooks().lock() {
        hooks.insert(id, Box::new(hook));
    }
    HookGuard(id)
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        if let Ok(mut hooks) = hooks().lock() {
            hooks.remove(&self.0);
        }
    }
}
