//! The block device's state for VM snapshots.
//!
//! Requests are served synchronously, so a paused device has nothing in
//! flight: its state is what every virtio device saves (offered and acked
//! features, activation), the disk's identity (size and serial, which the
//! restoring device must share) and the guest's writes.

use serde::{Deserialize, Serialize};

use super::config::{SECTOR_SIZE, SERIAL_LEN};
use super::overlay::{SavedChunks, SavedOverlay};
use crate::common::{CommonState, VirtioCommon};
use crate::snapshot::error::SnapshotError;

/// A saved block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub virtio: CommonState,
    /// The disk's size in 512-byte sectors.
    pub capacity: u64,
    /// The serial number, zero-padded.
    pub serial: [u8; SERIAL_LEN],
    /// The copy-on-write overlay's written chunks; `None` for a read-only
    /// disk.
    pub overlay: Option<SavedOverlay>,
}

/// What a device must match for a state to be restored into it.
pub(crate) struct Expected<'a> {
    pub virtio: &'a VirtioCommon,
    pub capacity: u64,
    pub serial: [u8; SERIAL_LEN],
    pub read_only: bool,
}

pub(crate) fn show_serial(serial: &[u8]) -> String {
    let end = serial.iter().position(|&b| b == 0).unwrap_or(serial.len());
    String::from_utf8_lossy(&serial[..end]).into_owned()
}

fn invalid(reason: String) -> SnapshotError {
    SnapshotError::Invalid {
        device: "block",
        reason,
    }
}

/// Checks that `state` fits a device like `expect`, without touching any
/// device: a refused state changes nothing. Returns the overlay's chunks,
/// ready to apply (`None` for a read-only disk).
pub(crate) fn check<'s>(
    state: &'s BlockState,
    expect: &Expected<'_>,
) -> Result<Option<SavedChunks<'s>>, SnapshotError> {
    if state.capacity != expect.capacity {
        return Err(invalid(format!(
            "the saved disk has {} sectors, this one {}: a snapshot only restores \
             over a disk of the same size",
            state.capacity, expect.capacity
        )));
    }
    let size = state.capacity.saturating_mul(SECTOR_SIZE);
    let chunks = match &state.overlay {
        // An empty slot (no image is empty): nothing to write to, nothing
        // written, read-only or not.
        None if state.capacity == 0 => None,
        Some(_) if state.capacity == 0 => {
            return Err(invalid(
                "the saved disk is an empty slot but carries an overlay".into(),
            ))
        }
        Some(overlay) => {
            let chunks = overlay.check(size)?;
            if expect.read_only {
                return Err(invalid(match chunks.count() {
                    0 => "the saved disk was writable (copy-on-write) but this device is \
                          read-only"
                        .to_string(),
                    n => format!(
                        "the saved state holds {n} chunks the guest wrote but this device is \
                         read-only"
                    ),
                }));
            }
            Some(chunks)
        }
        None if !expect.read_only => {
            return Err(invalid(
                "the saved disk was read-only but this device is writable (copy-on-write)".into(),
            ))
        }
        None => None,
    };
    expect.virtio.check(&state.virtio).map_err(invalid)?;
    if state.serial != expect.serial {
        return Err(invalid(format!(
            "the saved serial is {:?}, this device's is {:?}",
            show_serial(&state.serial),
            show_serial(&expect.serial)
        )));
    }
    Ok(chunks)
}
