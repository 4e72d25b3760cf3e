//! virtio-blk (device id 2) over a disk image that the guest can never change.
//!
//! - [`disk`]: the storage: the base image opened read-only, and either no
//!   writes at all ([`DiskMode::ReadOnly`]), a throwaway copy-on-write
//!   [`overlay`] ([`DiskMode::Overlay`]), or a cache volume's persistent
//!   one ([`DiskMode::Layer`], in the file format of [`layer`]); or an
//!   empty slot a disk is attached to after a snapshot's restore
//!   ([`BlockDevice::slot`]);
//! - `request`: turning a descriptor chain into a validated request;
//! - `device`: the request queue and the [`crate::virtio::VirtioDevice`] glue;
//! - `state`: the device's state for VM snapshots (features, the disk's
//!   identity and the overlay's written chunks).
//!
//! Every VM gets its own device and so its own overlay: what one guest writes
//! is invisible to every other guest and, but for a cache volume's layer,
//! gone when the device is dropped.

mod base;
mod config;
mod device;
pub mod disk;
pub mod layer;
pub mod overlay;
// pub(crate) for the fuzz entry points in `crate::fuzzing`.
pub(crate) mod request;
pub(crate) mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use base::DiskError;
pub use config::{
    BlockConfig, DiskMode, OpenFile, BLOCK_SIZE, OVERLAY_CHUNK_SIZE, QUEUE_SIZE, SECTOR_SIZE,
    SEG_MAX, SERIAL_LEN,
};
pub use device::{BlockDevice, BlockError, REQUEST_QUEUE};
pub use disk::Disk;
pub use overlay::{Overlay, SavedChunks, SavedOverlay};
pub use state::BlockState;
pub use stats::{BlockStats, IoCounts};
