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
//! Body format version 1, after the header of [`crate::snapshot`]
//! (little-endian):
//!
//! | bytes | field                                            |
//! |-------|--------------------------------------------------|
//! | 8     | features the driver acked                        |
//! | 1     | 1 if the driver had activated the device, else 0 |
//! | 8     | the guest CID (must equal the new device's)      |

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

use crate::snapshot::{SnapshotError, StateReader, StateWriter};

/// Version of the body format above.
pub const STATE_VERSION: u8 = 1;

/// A saved state, decoded and checked.
pub(crate) struct Decoded {
    pub acked_features: u64,
    pub activated: bool,
}

/// Encodes the state of a device with these acked features, activation
/// and guest CID.
pub(crate) fn encode(acked_features: u64, activated: bool, guest_cid: u64) -> Vec<u8> {
    let mut w = StateWriter::new(VIRTIO_ID_VSOCK, STATE_VERSION);
    w.put_u64(acked_features);
    w.put_bool(activated);
    w.put_u64(guest_cid);
    w.finish()
}

/// Decodes `state` for a device offering `features` with guest CID
/// `guest_cid`, changing nothing.
pub(crate) fn decode(
    state: &[u8],
    features: u64,
    guest_cid: u64,
) -> Result<Decoded, SnapshotError> {
    let mut r = StateReader::open(state, VIRTIO_ID_VSOCK, STATE_VERSION)?;
    let acked_features = r.u64("the acked features")?;
    let activated = r.bool("the activated flag")?;
    let saved_cid = r.u64("the guest CID")?;
    if saved_cid != guest_cid {
        return Err(r.invalid(format!(
            "the saved device has guest CID {saved_cid}, this one {guest_cid}: the guest's \
             driver would keep addressing packets from the old one"
        )));
    }
    if acked_features & !features != 0 {
        return Err(r.invalid(format!(
            "the acked features {acked_features:#x} include some never offered ({features:#x})"
        )));
    }
    r.finish()?;
    Ok(Decoded {
        acked_features,
        activated,
    })
}
