//! What a device model saves for a snapshot, as one serde value: the
//! transport stores it with its own state, and the whole is encoded once
//! ([`super::codec`]).

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_ID_VSOCK};

use super::error::{device_name, SnapshotError};
use crate::block::state::BlockState;
use crate::net::state::NetState;
use crate::vsock::state::VsockState;

/// A device's saved state, one variant per device model that can be
/// saved. The encoding numbers the variants in this order: a new one goes
/// at the end, and any other change is a new snapshot format version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Vsock(VsockState),
    Net(NetState),
}

impl DeviceState {
    /// The virtio device id (`VIRTIO_ID_*`) of the device that saved it.
    pub fn device_type(&self) -> u32 {
        match self {
            DeviceState::Block(_) => VIRTIO_ID_BLOCK,
            DeviceState::Vsock(_) => VIRTIO_ID_VSOCK,
            DeviceState::Net(_) => VIRTIO_ID_NET,
        }
    }

    /// Why a device of type `device_type` refuses this state, which is
    /// another device's.
    pub fn not_for(&self, device_type: u32) -> SnapshotError {
        let saved = self.device_type();
        SnapshotError::Invalid {
            device: device_name(device_type),
            reason: format!(
                "the saved state belongs to a {} device (virtio id {saved}), not to a {} \
                 device (id {device_type})",
                device_name(saved),
                device_name(device_type)
            ),
        }
    }
}
