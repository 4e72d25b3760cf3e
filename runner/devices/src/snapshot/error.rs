//! Why a device's state could not be saved or restored.

use std::io;

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The device model has no snapshot support at all.
    #[error("{device}: cannot be snapshotted: {reason}")]
    Unsupported {
        device: &'static str,
        reason: &'static str,
    },
    /// The device is in a state that cannot be saved right now (for
    /// example a vsock connection is open); saving later may work.
    #[error("{device}: {reason}")]
    Busy {
        device: &'static str,
        reason: String,
    },
    /// The saved state is corrupt, of another device or version, or does
    /// not match this device's configuration; or the device is not fresh.
    #[error("{device}: cannot restore: {reason}")]
    Invalid {
        device: &'static str,
        reason: String,
    },
    /// Reading or writing the device's host-side storage failed.
    #[error("{device}: {what}: {source}")]
    Io {
        device: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A short name for a virtio device id, for messages.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "net",
        2 => "block",
        19 => "vsock",
        _ => "virtio device",
    }
}
