//! The vsock device's state for VM snapshots.
//!
//! As in Firecracker, a snapshot holds no connection: a stream's other end is
//! a host socket of the process that took the snapshot, which a clone in a
//! fresh process cannot have. So saving is refused while any connection (or
//! anything else for the guest) exists, and the state is only the acked
//! features, the activation and the guest CID.
//! Buffers the driver queued on the tx queue that the device had not
//! processed yet are not device state: they are guest memory and queue
//! positions, which the transport restores, and the restored device
//! processes them like any others (a packet for a connection that no longer
//! exists gets an RST). A restored device first owes the guest a transport
//! reset (`super::reset_event`).
//!

use serde::{Deserialize, Serialize};

use crate::common::{CommonState, VirtioCommon};
use crate::snapshot::error::SnapshotError;

/// A saved vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub virtio: CommonState,
    /// The guest's CID, which the restoring device must have too.
    pub guest_cid: u64,
}

fn invalid(reason: String) -> SnapshotError {
    SnapshotError::Invalid {
        device: "vsock",
        reason,
    }
}

/// Checks that `state` fits a device like `virtio` with guest CID
/// `guest_cid`, changing nothing.
pub(crate) fn check(
    state: &VsockState,
    virtio: &VirtioCommon,
    guest_cid: u64,
) -> Result<(), SnapshotError> {
    if state.guest_cid != guest_cid {
        return Err(invalid(format!(
            "the saved device has guest CID {}, this one {guest_cid}: the guest's \
             driver would keep addressing packets from the old one",
            state.guest_cid
        )));
    }
    virtio.check(&state.virtio).map_err(invalid)
}
