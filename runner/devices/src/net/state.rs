//! The virtio-net device's state for VM snapshots, when its other end
//! keeps nothing of the guest (a segment's switch, not passt).
//!
//! Like vsock's, the state is only what the driver negotiated and the MAC:
//! frames half way through the socket are not saved (a network may drop
//! them), and the restored device is connected to a new socket. The MAC
//! must match, or the guest would keep sending from an address the switch
//! does not give its port.

use serde::{Deserialize, Serialize};

use crate::common::{CommonState, VirtioCommon};
use crate::snapshot::error::SnapshotError;

/// A saved virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub virtio: CommonState,
    pub mac: [u8; 6],
}

fn invalid(reason: String) -> SnapshotError {
    SnapshotError::Invalid {
        device: "net",
        reason,
    }
}

/// Checks that `state` fits a device like `virtio` with MAC `mac`,
/// changing nothing.
pub(crate) fn check(
    state: &NetState,
    virtio: &VirtioCommon,
    mac: [u8; 6],
) -> Result<(), SnapshotError> {
    if state.mac != mac {
        return Err(invalid(format!(
            "the saved NIC has MAC {}, this one {}: the guest would keep sending from an \
             address its port does not own",
            show_mac(state.mac),
            show_mac(mac)
        )));
    }
    virtio.check(&state.virtio).map_err(invalid)
}

fn show_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}
