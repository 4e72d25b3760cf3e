//! The block device's state for VM snapshots.
//!
//! Requests are served synchronously, so a paused device has nothing in
//! flight: its state is the driver's acked features and the guest's writes.
//!
//! Body format version 1, after the header of [`crate::snapshot`]
//! (little-endian):
//!
//! | bytes | field                                                        |
//! |-------|--------------------------------------------------------------|
//! | 8     | features the device offered (must equal the new device's)    |
//! | 8     | features the driver acked                                    |
//! | 1     | 1 if the driver had activated the device, else 0             |
//! | 8     | capacity in 512-byte sectors                                 |
//! | 20    | serial number, zero-padded                                   |
//! | 1     | 1 if the copy-on-write overlay section follows, 0 for a read-only disk |
//! | ...   | the overlay section, see [`SavedChunks`]                     |

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::config::{SECTOR_SIZE, SERIAL_LEN};
use super::device::BlockDevice;
use super::overlay::SavedChunks;
use crate::snapshot::{SnapshotError, StateReader, StateWriter};

/// Version of the body format above.
pub const STATE_VERSION: u8 = 1;

/// What a device must match for a state to be restored into it.
pub(crate) struct Expected {
    pub features: u64,
    pub capacity: u64,
    pub serial: [u8; SERIAL_LEN],
    pub read_only: bool,
}

/// A saved state, decoded and checked against [`Expected`].
pub(crate) struct Decoded<'a> {
    pub acked_features: u64,
    pub activated: bool,
    pub chunks: Option<SavedChunks<'a>>,
}

fn show_serial(serial: &[u8]) -> String {
    let end = serial.iter().position(|&b| b == 0).unwrap_or(serial.len());
    String::from_utf8_lossy(&serial[..end]).into_owned()
}

/// Decodes `state` and checks it fits a device like `expect`, without
/// touching any device: a refused state changes nothing.
pub(crate) fn decode<'a>(state: &'a [u8], expect: &Expected) -> Result<Decoded<'a>, SnapshotError> {
    let mut r = StateReader::open(state, VIRTIO_ID_BLOCK, STATE_VERSION)?;
    let features = r.u64("the offered features")?;
    let acked_features = r.u64("the acked features")?;
    let activated = r.bool("the activated flag")?;
    let capacity = r.u64("the capacity")?;
    let serial = r.take(SERIAL_LEN, "the serial number")?;
    let writable = r.bool("the overlay flag")?;
    if capacity != expect.capacity {
        return Err(r.invalid(format!(
            "the saved disk has {capacity} sectors, this one {}: a snapshot only restores \
             over a disk of the same size",
            expect.capacity
        )));
    }
    let size = capacity * SECTOR_SIZE;
    let chunks = if writable {
        let chunks = SavedChunks::decode(&mut r, size)?;
        if expect.read_only {
            return Err(r.invalid(match chunks.count() {
                0 => "the saved disk was writable (copy-on-write) but this device is read-only"
                    .to_string(),
                n => format!(
                    "the saved state holds {n} chunks the guest wrote but this device is \
                     read-only"
                ),
            }));
        }
        Some(chunks)
    } else {
        if !expect.read_only {
            return Err(r.invalid(
                "the saved disk was read-only but this device is writable (copy-on-write)",
            ));
        }
        None
    };
    if features != expect.features {
        return Err(r.invalid(format!(
            "the saved device offered features {features:#x}, this one offers {:#x}",
            expect.features
        )));
    }
    if acked_features & !features != 0 {
        return Err(r.invalid(format!(
            "the acked features {acked_features:#x} include some never offered ({features:#x})"
        )));
    }
    if serial != expect.serial {
        return Err(r.invalid(format!(
            "the saved serial is {:?}, this device's is {:?}",
            show_serial(serial),
            show_serial(&expect.serial)
        )));
    }
    r.finish()?;
    Ok(Decoded {
        acked_features,
        activated,
        chunks,
    })
}

impl BlockDevice {
    pub(super) fn save(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut w = StateWriter::new(VIRTIO_ID_BLOCK, STATE_VERSION);
        w.put_u64(self.virtio.features());
        w.put_u64(self.virtio.acked_features());
        w.put_bool(self.virtio.is_activated());
        w.put_u64(self.disk.size() / SECTOR_SIZE);
        w.put_bytes(&self.serial);
        match self.disk.overlay() {
            Some(overlay) => {
                w.put_bool(true);
                overlay.save_into(&mut w)?;
            }
            None => w.put_bool(false),
        }
        Ok(w.finish())
    }

    pub(super) fn restore(&mut self, state: &[u8]) -> Result<(), SnapshotError> {
        let written = self.disk.overlay().map_or(0, |o| o.written_chunks());
        if !self.virtio.is_fresh() || written != 0 {
            return Err(SnapshotError::Invalid {
                device: "block",
                reason: "a restore needs a freshly created device, and this one was \
                         already set up or written"
                    .into(),
            });
        }
        let expect = Expected {
            features: self.virtio.features(),
            capacity: self.disk.size() / SECTOR_SIZE,
            serial: self.serial,
            read_only: self.disk.is_read_only(),
        };
        let decoded = decode(state, &expect)?;
        if let (Some(chunks), Some(overlay)) = (decoded.chunks, self.disk.overlay_mut()) {
            overlay.restore(chunks)?;
        }
        self.virtio.ack_features(decoded.acked_features);
        if decoded.activated {
            self.virtio.activate();
        }
        Ok(())
    }
}
