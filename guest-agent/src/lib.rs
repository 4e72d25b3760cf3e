//! The in-guest agent of the runner.
//!
//! It serves the [`agent_protocol`] on every accepted connection: runs
//! commands with streamed output, gives interactive shells a pty, unpacks
//! and packs tar streams, answers pings, makes a guest restored from a
//! snapshot a new clone (fresh RNG seed, clock and machine id) and powers
//! the guest off. When it is PID 1 it also does the little an init must do
//! (mounts, hostname, loopback, reaping orphans).
//!
//! The connection handler, [`serve_connection`], works over any connected
//! stream socket, so the tests drive the real agent code over
//! `UnixStream::pair()` without a VM.

/// Writes one line to stderr, which is the guest console when the agent is PID 1.
///
/// The console is the agent's only log sink, so a plain prefixed line is all
/// that is needed; a tracing subscriber would only make the static binary bigger.
#[macro_export]
macro_rules! console {
    ($($arg:tt)*) => {
        {
            use ::std::io::Write as _;
            // Not eprintln!: that panics when stderr is gone, and a panic
            // in PID 1 would take the whole guest down.
            let _ = ::std::writeln!(::std::io::stderr(), "runner-agent: {}", format_args!($($arg)*));
        }
    };
}

mod caches;
mod conn;
mod exec;
mod get_files;
pub mod listener;
pub mod network;
pub mod pid1;
mod put_files;
pub mod reaper;
mod restore;
mod server;
mod shell;
mod spawn;
mod usage;

pub use server::{serve_connection, ConnectionEnd};

/// `"runner-agent 0.1.0 (Linux 6.1.0)"`: the `who` of the agent's Hello.
pub fn describe_agent() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".to_string());
    format!(
        "runner-agent {} (Linux {release})",
        env!("CARGO_PKG_VERSION")
    )
}
