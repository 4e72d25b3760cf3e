//! How a vsock device is configured: its guest CID, its host socket, and
//! the limits and timeouts of its connections.

use std::path::PathBuf;
use std::time::Duration;

/// How long the device waits for the other side before giving up. The
/// defaults (10 s each) are generous because TCG guests are slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockTimeouts {
    /// A host program's `CONNECT <port>` line must arrive within this.
    pub handshake: Duration,
    /// A host-initiated connection waits this long for the guest's RESPONSE
    /// once the REQUEST reached the guest; then the host socket is closed.
    pub request: Duration,
    /// A connection whose both directions are shut waits this long for the
    /// last bytes to drain or for the guest's RST; then it is reset.
    pub close: Duration,
}

/// [`VsockTimeouts::request`] by default. Host programs that connect
/// (the runner's `hybrid_vsock`) wait less than this for the guest's
/// answer, so they give up first and say why.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for VsockTimeouts {
    fn default() -> Self {
        VsockTimeouts {
            handshake: Duration::from_secs(10),
            request: DEFAULT_REQUEST_TIMEOUT,
            close: Duration::from_secs(10),
        }
    }
}

/// Configuration of one vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host-side Unix socket: host programs connect here; guest connections to
    /// host port `P` go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Bytes of guest data each connection may hold while the host program is
    /// slow to read (the `buf_alloc` advertised to the guest).
    pub conn_buffer_size: u32,
    /// Most simultaneous connections; further ones are refused.
    pub max_connections: usize,
    pub timeouts: VsockTimeouts,
}

impl VsockConfig {
    /// A configuration with the default buffer size (256 KiB), connection
    /// limit (256) and timeouts.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> VsockConfig {
        VsockConfig {
            guest_cid,
            uds_path: uds_path.into(),
            conn_buffer_size: 256 * 1024,
            max_connections: 256,
            timeouts: VsockTimeouts::default(),
        }
    }
}
