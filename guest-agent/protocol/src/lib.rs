//! Wire protocol shared by the runner host and the in-guest agent.
//!
//! A connection carries *frames*. Each frame is a 5-byte header, a little-endian
//! `u32` payload length and a one-byte kind, then the payload:
//!
//! * kind [`KIND_CONTROL`]: a JSON-encoded [`Message`]. Control traffic is rare
//!   and small, and JSON keeps it readable in a packet dump.
//! * the data kinds ([`Stream`]): raw bytes of stdout, stderr, stdin or a tar
//!   stream. Bulk data is never JSON-encoded or buffered whole; it moves in
//!   chunks of at most [`CHUNK_SIZE`].
//!
//! Every payload is bounded by [`MAX_FRAME`], so a reader never allocates more
//! than that for one frame, whatever the peer claims.
//!
//! A session starts with both sides sending [`Message::Hello`]; after that the
//! host sends one request at a time on a connection (several connections may
//! be open at once). The comment on each [`Message`] says what exchange it starts.

mod codec;
/// Fuzz entry points; built for `fuzz/` and for this crate's tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod stream;

pub use codec::{read_frame, write_frame, ProtocolError};
pub use stream::{DataReader, DataWriter};

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to frames or messages.
///
/// 2: [`Message::Restored`] and [`Message::RestoreApplied`].
/// 3: [`Message::MountCaches`] and [`Message::UnmountCaches`].
/// 4: [`NetworkConfig`] names its interface by MAC, may have no gateway,
///    and carries host names (a job's private segment with its services).
pub const PROTOCOL_VERSION: u32 = 4;
/// AF_VSOCK port the agent listens on inside the guest.
pub const AGENT_PORT: u32 = 10_000;
/// Largest payload a frame may carry. Larger frames are a protocol error.
pub const MAX_FRAME: usize = 1 << 20;
/// Size in which the agent and host cut bulk data into data frames.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Header kind of a control frame.
pub const KIND_CONTROL: u8 = 0;

/// Features an agent may offer in its [`Message::Hello`].
pub const CAPABILITIES: &[&str] = &[
    "exec",
    "stdin",
    "cancel",
    "put-files",
    "get-files",
    "ping",
    "shutdown",
    "shell",
    "network",
    "restore",
    "caches",
    "usage",
];

/// Most cache disks one job may mount.
pub const MAX_CACHES: usize = 4;
/// Most paths one cache may bind.
pub const MAX_CACHE_PATHS: usize = 16;
/// How long the agent waits for a cache disk to appear with a capacity
/// (after a restore the host attaches it to an empty slot).
pub const CACHE_DISK_WAIT_MS: u64 = 10_000;

/// Fewest bytes of host entropy a [`Message::Restored`] may carry: 256 bits,
/// what the kernel needs to consider its RNG seeded.
pub const RESTORE_ENTROPY_MIN: usize = 32;
/// Most bytes of host entropy a [`Message::Restored`] may carry. The kernel
/// hashes its input pool down to 256 bits, so more would add nothing but
/// work for the guest.
pub const RESTORE_ENTROPY_MAX: usize = 512;

/// Whether `id` is a clone identity as [`Message::Restored`] carries it and
/// `/etc/machine-id` holds it: 32 lowercase hexadecimal digits (128 bits).
pub fn is_valid_clone_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The byte streams that travel in data frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
    Stdin = 3,
    Tar = 4,
}

impl Stream {
    pub fn from_kind(kind: u8) -> Option<Stream> {
        match kind {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::Stdin),
            4 => Some(Stream::Tar),
            _ => None,
        }
    }
}

/// One unit on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Control(Message),
    Data(Stream, Vec<u8>),
}

/// Control messages. The comment on each says who sends it and what follows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Both sides, first frame of a connection. A peer with another `version`
    /// answers [`Message::Error`] and closes.
    Hello {
        version: u32,
        capabilities: Vec<String>,
        /// Free-form description of the sender (agent version, kernel).
        #[serde(default)]
        who: String,
    },
    /// Host → agent. If `stdin` is set, the host then sends `Stdin` data
    /// frames and [`Message::StdinEof`]. The agent streams `Stdout`/`Stderr`
    /// data frames and ends with [`Message::Exited`]. [`Message::Cancel`] may
    /// be sent at any time before that.
    Exec(ExecRequest),
    /// Host → agent: no more stdin for the running command.
    StdinEof,
    /// Host → agent: kill the running command's whole process group.
    Cancel,
    /// Agent → host: the command has finished (or could not start).
    Exited(ExitStatus),
    /// Host → agent: a tar stream follows as `Tar` data frames, ended by
    /// [`Message::TarEnd`]; it is unpacked under `target`, which is created.
    /// The agent answers [`Message::FilesDone`] or [`Message::Error`].
    PutFiles {
        target: String,
    },
    /// Host → agent: send back as a tar stream the paths under `base` that
    /// match any of `patterns` (plain paths or globs, relative to `base`).
    /// The agent answers `Tar` data frames, [`Message::TarEnd`], then
    /// [`Message::FilesDone`]; or [`Message::Error`].
    GetFiles {
        base: String,
        patterns: Vec<String>,
    },
    /// Either side: the tar stream is complete.
    TarEnd,
    /// Agent → host: a file transfer finished.
    FilesDone {
        entries: u64,
        bytes: u64,
    },
    /// Host → agent; answered by [`Message::Pong`] with the same nonce.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
        uptime_ms: u64,
    },
    /// Host → agent: sync file systems and power the guest off. The agent
    /// answers [`Message::ShuttingDown`] first.
    Shutdown,
    ShuttingDown,
    /// Either side: the last request failed. After a protocol error (bad
    /// frame) the sender closes the connection.
    Error {
        message: String,
    },
    /// Host → agent: start an interactive shell on a new pseudo-terminal.
    /// The host sends what the user types as `Stdin` data frames and
    /// [`Message::Resize`] when its window changes; the agent streams the
    /// terminal's output as `Stdout` data frames (a terminal has one output
    /// stream) and ends with [`Message::Exited`]. [`Message::StdinEof`]
    /// hangs the terminal up (the user's terminal went away).
    Shell(ShellRequest),
    /// Host → agent: the user's window is now this size. Sets the shell's
    /// terminal size, so its foreground programs get SIGWINCH.
    Resize(WindowSize),
    /// Host → agent, before anything else in a job whose VM has a NIC:
    /// configure it statically and write `/etc/resolv.conf`. The agent
    /// answers [`Message::NetworkConfigured`] or [`Message::Error`].
    ConfigureNetwork(NetworkConfig),
    /// Agent → host: the interface is up with the requested configuration.
    NetworkConfigured {
        /// The interface that was configured (`eth0`).
        interface: String,
    },
    /// Host → agent, first thing after the VM was restored from a snapshot,
    /// before any job command: this guest is a new clone. Clones of one
    /// snapshot share the kernel's RNG state, clock and identity, so the
    /// agent mixes `entropy` into the kernel RNG and forces a reseed, sets
    /// the real-time clock to `unix_time_ns` and writes `clone_id` to
    /// `/etc/machine-id`. It answers [`Message::RestoreApplied`] only once
    /// all of that is done, or [`Message::Error`] naming the step that
    /// failed. `generation` must be greater than that of the last restore
    /// applied (the cold-booted guest is generation 0); `entropy` holds
    /// [`RESTORE_ENTROPY_MIN`] to [`RESTORE_ENTROPY_MAX`] bytes and
    /// `clone_id` passes [`is_valid_clone_id`].
    Restored {
        generation: u64,
        entropy: Vec<u8>,
        /// Host CLOCK_REALTIME, nanoseconds since the Unix epoch.
        unix_time_ns: u64,
        clone_id: String,
    },
    /// Agent → host: the restore announced with this generation is applied.
    RestoreApplied {
        generation: u64,
    },
    /// Host → agent, before the job's first command: mount each cache disk
    /// (found by its virtio-blk serial) and bind its paths onto it. At most
    /// [`MAX_CACHES`] caches of at most [`MAX_CACHE_PATHS`] absolute paths.
    /// The agent answers [`Message::CachesMounted`] with one outcome per
    /// cache (a disk that cannot be mounted does not stop the others), or
    /// [`Message::Error`] for a request it refuses as a whole.
    MountCaches {
        caches: Vec<CacheMount>,
    },
    /// Agent → host: what became of each requested cache, in order.
    CachesMounted {
        outcomes: Vec<CacheMounted>,
    },
    /// Host → agent, after the job's last command: sync, then unmount every
    /// cache this connection's guest mounted, so that its disk holds a
    /// whole, clean file system. Answered by [`Message::CachesUnmounted`].
    UnmountCaches,
    /// Agent → host: the serials of the caches that are now cleanly
    /// unmounted, and one line for each that could not be.
    CachesUnmounted {
        clean: Vec<String>,
        failed: Vec<String>,
    },
    /// Host → agent: how much memory the guest has used at most since the
    /// last `Usage` (on any connection; the first starts the sampling),
    /// answered by [`Message::UsageReport`]. The agent samples
    /// `/proc/meminfo` itself, so a short peak between two requests counts.
    Usage,
    /// Agent → host: memory the kernel offers (`MemTotal`), and the most of
    /// it in use (`MemTotal - MemAvailable`: page cache it can drop is not
    /// use) at one time since the last `Usage`, in KiB.
    ///
    /// And the root file system's size and use (`statvfs("/")`); `None`
    /// from an agent that does not say. (What the guest writes to its
    /// disk is counted by the host's block device, not asked of it.)
    UsageReport {
        memory_total_kib: u64,
        memory_peak_kib: u64,
        #[serde(default)]
        disk: Option<DiskReport>,
    },
}

/// The guest's disks, as [`Message::UsageReport`] carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub root_total_kib: u64,
    pub root_used_kib: u64,
}

/// A cache disk and the guest paths that live on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// The disk's virtio-blk serial (`cache0`).
    pub serial: String,
    /// Absolute, normalized guest paths.
    pub paths: Vec<String>,
}

/// One cache's mount outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMounted {
    pub serial: String,
    /// `None`: mounted and bound; otherwise why not (the paths then stay
    /// on the guest's own, throwaway root).
    pub error: Option<String>,
}

/// An interactive shell, and the terminal it starts with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShellRequest {
    /// The shell and its arguments; `/bin/sh` when empty.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Added to (or overriding) the agent's base environment; `TERM`
    /// should be the user's.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The terminal's initial size.
    #[serde(default)]
    pub size: WindowSize,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// One NIC of the guest: user-mode networking (passt), or a job's private
/// segment with its services. The host knows these values because it gave
/// them to the other side (passt, the segment's switch) too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The interface's MAC (`52:54:00:…`, as in `/sys/class/net/*/address`);
    /// `None`: the first interface other than `lo`.
    pub mac: Option<String>,
    /// IPv4 address of the guest, dotted.
    pub address: String,
    /// Prefix length of its subnet (24 for a /24).
    pub prefix_len: u8,
    /// IPv4 default gateway, dotted; `None`: no default route through this
    /// interface (a segment leads nowhere else).
    pub gateway: Option<String>,
    pub mtu: u32,
    /// Name servers for `/etc/resolv.conf`, in order; empty: the file is
    /// left as it is.
    pub dns: Vec<String>,
    /// Names added to `/etc/hosts` (a service's name and its address).
    pub hosts: Vec<HostEntry>,
}

/// Longest [`HostEntry::name`]: one DNS label.
pub const MAX_HOST_LABEL: usize = 63;

/// Whether `name` is one lowercase host-name label (RFC 1123): 1 to
/// [`MAX_HOST_LABEL`] letters, digits and `-`, not at either end. The
/// names the runner gives its services, and all an `/etc/hosts` line of
/// the agent's may hold.
pub fn is_host_label(name: &str) -> bool {
    (1..=MAX_HOST_LABEL).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A line of `/etc/hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    /// IPv4, dotted.
    pub address: String,
}

/// What to run, and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Command,
    /// Added to (or overriding) the agent's base environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's default (`/`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the process group after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether stdin frames follow. Without it the command reads /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

/// A program with arguments, or a script for a shell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Argv(Vec<String>),
    /// Run by `shell -c script`; the shell is `/bin/sh` when empty.
    Script {
        script: String,
        #[serde(default)]
        shell: String,
    },
}

impl Default for Command {
    fn default() -> Self {
        Command::Argv(Vec::new())
    }
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when the process exited normally.
    pub code: Option<i32>,
    /// Terminating signal number, when it was killed.
    pub signal: Option<i32>,
    pub duration_ms: u64,
    /// Peak resident set of the process group's waited-for leader, KiB.
    pub max_rss_kib: u64,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Why the command could not run at all (missing binary, bad cwd). Such
    /// a result carries exit code 127 (not found) or 126 (not executable).
    pub error: Option<String>,
    /// For a command that failed: processes the kernel's OOM killer ended
    /// in the guest while it ran (its own or not: the guest is the job's
    /// alone).
    #[serde(default)]
    pub oom_kills: u64,
    /// The file system of the command's working directory had no room
    /// left when it ended: a write likely failed with ENOSPC.
    #[serde(default)]
    pub disk_full: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A short human description: `exit code 1`, `killed by signal 9 (timed out)`.
    pub fn describe(&self) -> String {
        let base = match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
            (None, None) => "no exit status".to_string(),
        };
        let mut text = if self.timed_out {
            format!("{base}, timed out")
        } else if self.cancelled {
            format!("{base}, cancelled")
        } else {
            base
        };
        // What most likely failed it, and the setting that would not have.
        if self.oom_kills > 0 {
            let processes = if self.oom_kills == 1 {
                "process"
            } else {
                "processes"
            };
            text.push_str(&format!(
                "; the guest ran out of memory: the kernel killed {} {processes} (raise `memory`)",
                self.oom_kills
            ));
        }
        if self.disk_full {
            text.push_str(
                "; its working directory's file system was full (give the image a larger `size`)",
            );
        }
        text
    }
}

/// Names of the signals a test is likely to die of; numbers are x86_64 Linux.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_covers_codes_signals_and_timeouts() {
        let ok = ExitStatus {
            code: Some(0),
            ..Default::default()
        };
        assert!(ok.success());
        assert_eq!(ok.describe(), "exit code 0");
        let killed = ExitStatus {
            signal: Some(9),
            timed_out: true,
            ..Default::default()
        };
        assert!(!killed.success());
        assert_eq!(killed.describe(), "killed by signal 9 (SIGKILL), timed out");
        let starved = ExitStatus {
            signal: Some(9),
            oom_kills: 1,
            ..Default::default()
        };
        assert_eq!(
            starved.describe(),
            "killed by signal 9 (SIGKILL); the guest ran out of memory: the kernel killed 1 \
             process (raise `memory`)"
        );
        let full = ExitStatus {
            code: Some(1),
            disk_full: true,
            ..Default::default()
        };
        assert_eq!(
            full.describe(),
            "exit code 1; its working directory's file system was full (give the image a \
             larger `size`)"
        );
        // An agent without these fields still decodes.
        let old: ExitStatus = serde_json::from_str(
            r#"{"code":0,"signal":null,"duration_ms":1,"max_rss_kib":0,"timed_out":false,"cancelled":false,"error":null}"#,
        )
        .unwrap();
        assert_eq!((old.oom_kills, old.disk_full), (0, false));
    }

    #[test]
    fn clone_ids_are_32_lowercase_hex_digits() {
        assert!(is_valid_clone_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcde\n",
            "0123456789abcdef-123456789abcdef",
        ] {
            assert!(!is_valid_clone_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn stream_kinds_round_trip() {
        for s in [Stream::Stdout, Stream::Stderr, Stream::Stdin, Stream::Tar] {
            assert_eq!(Stream::from_kind(s as u8), Some(s));
        }
        assert_eq!(Stream::from_kind(KIND_CONTROL), None);
        assert_eq!(Stream::from_kind(99), None);
    }
}
