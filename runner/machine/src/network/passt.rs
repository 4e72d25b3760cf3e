//! One passt per VM with a NIC: the user-mode network stack between the
//! guest's Ethernet frames and the host's sockets.
//!
//! passt never runs as root: a runner that is root starts it as the VM's
//! own unprivileged ids (`vm_process::confinement`), and `--runas` names
//! those same ids, so passt changes nothing itself. That matters beyond
//! "no root features": passt started as root switches to `nobody` on its
//! own, and a change of ids clears the parent-death signal, so a `kill -9`
//! of the runner would leave it running. It runs in the foreground, as a
//! guarded child (own process group, SIGKILL when the runner dies, killed
//! and reaped with the VM). It listens on a Unix socket in the VM's
//! directory, quits after its one client (`--one-off`), forwards no host
//! ports into the guest, and logs to a size-capped file next to the socket.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{DNS_ADDRESS, GATEWAY, GUEST_ADDRESS, GUEST_MTU, GUEST_PREFIX_LEN};
use crate::process::{spawn_guarded, ChildGuard};
use crate::programs::program_from_env;
use crate::vm_process::confinement::VmIds;
use crate::BootError;

/// Names the passt binary to use instead of the one on PATH.
pub const ENV: &str = "RUNNER_PASST";
/// What to install when passt is missing.
pub const PACKAGE: &str = "passt";
/// How long passt may take to create its socket (it is up in well under a
/// second; the margin is for a loaded machine).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// Most bytes passt's own log may take (`--log-size`).
const LOG_LIMIT: u64 = 256 * 1024;

/// The passt binary: `RUNNER_PASST`, else `passt` on PATH; the error is
/// one line naming the package.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(named) = program_from_env(ENV) {
        return named.map_err(|path| {
            format!(
                "`network` needs passt, but {ENV}={} is not a file; install it with `apt-get install {PACKAGE}`",
                path.display()
            )
        });
    }
    which::which_global("passt").map_err(|_| {
        format!(
            "`network` needs passt, which is not installed; install it with `apt-get install {PACKAGE}`"
        )
    })
}

/// A running passt; dropping it kills and reaps it.
pub struct Passt {
    child: ChildGuard,
    log: PathBuf,
}

impl Passt {
    /// Starts passt with its socket and log in `dir`, and returns it with
    /// its one connection (for the NIC's egress process).
    /// passt maps the guest's gateway to the host's loopback only with
    /// `map_host` (the operator named a port there).
    pub fn start(
        program: &Path,
        dir: &Path,
        ids: Option<&VmIds>,
        map_host: bool,
    ) -> Result<(Passt, UnixStream), BootError> {
        let socket = dir.join("passt.sock");
        let log = dir.join("passt.log");
        let mut cmd = Command::new(program);
        let (uid, gid) = match ids {
            Some(ids) => {
                // std drops the supplementary groups when root sets a uid.
                cmd.uid(ids.uid).gid(ids.gid);
                (ids.uid, ids.gid)
            }
            // SAFETY: plain syscalls without arguments.
            None => unsafe { (libc::geteuid(), libc::getegid()) },
        };
        cmd.args(["--foreground", "--one-off"])
            .arg("--runas")
            .arg(format!("{uid}:{gid}"))
            .arg("--socket")
            .arg(&socket)
            .arg("--log-file")
            .arg(&log)
            .args(["--log-size", &LOG_LIMIT.to_string()])
            .arg("--ipv4-only")
            .args(["--address", &GUEST_ADDRESS.to_string()])
            .args(["--netmask", &GUEST_PREFIX_LEN.to_string()])
            .args(["--gateway", &GATEWAY.to_string()])
            .args(["--mtu", &GUEST_MTU.to_string()])
            // The egress process answers the guest's DNS itself, so no
            // query reaches passt there; passt still owns the address on
            // the guest's link (it answers its ARP).
            .args(["--dns-forward", &DNS_ADDRESS.to_string()])
            .args(["--tcp-ports", "none", "--udp-ports", "none"])
            .args((!map_host).then_some("--no-map-gw"))
            // passt's own MAC; by default it copies the host interface's.
            .args(["--mac-addr", PASST_MAC]);
        // passt takes defaults from the interface with the default route
        // and refuses to start without one, even though every value it
        // would take is given above. A host without a route (a sandbox, the
        // nested test tier) can still reach its own loopback through the
        // gateway: name lo as the template.
        if !has_default_ipv4_route() {
            cmd.args(["--interface", "lo"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tracing::debug!("starting {cmd:?}");
        let mut child = spawn_guarded(&mut cmd, "passt")
            .map_err(|e| BootError::Setup(format!("starting {}: {e}", program.display())))?;
        // passt creates its socket before it listens on it, and takes one
        // client (`--one-off`): the first connection that is not refused
        // is the NIC's.
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        let connection = loop {
            match UnixStream::connect(&socket) {
                Ok(connection) => break connection,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => {
                    return Err(BootError::Setup(format!(
                        "connecting to passt at {}: {e}",
                        socket.display()
                    )))
                }
            }
            if let Some(status) = child.try_wait() {
                return Err(BootError::Setup(format!(
                    "passt exited at start ({status}): {}",
                    last_log_line(&log)
                )));
            }
            if Instant::now() > deadline {
                return Err(BootError::Setup(format!(
                    "passt did not take a connection within {SOCKET_TIMEOUT:?}: {}",
                    last_log_line(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok((Passt { child, log }, connection))
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `Some(description)` once passt has exited by itself.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait()?;
        Some(format!("passt {status}: {}", last_log_line(&self.log)))
    }
}

/// passt's side of the guest's link.
const PASST_MAC: &str = "52:54:00:12:34:02";

/// Whether `/proc/net/route` has a default route (destination and mask 0).
fn has_default_ipv4_route() -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000")
    })
}

fn last_log_line(log: &Path) -> String {
    crate::tail_lines(log, 1)
        .pop()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| format!("(nothing in {})", log.display()))
}
