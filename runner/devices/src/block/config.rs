//! How a block device is configured, and the sizes and limits every part
//! of it shares.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// The unit of virtio-blk addresses (`sector` fields, `capacity`), whatever
/// the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum size of the request queue. QEMU's virtio-mmio always reports
/// 1024 as the maximum, Linux takes it, and vhost-user passes it on, so a
/// backend must accept that much.
pub const QUEUE_SIZE: u16 = 1024;
/// Most data segments per request, advertised through `seg_max`. 126 fits a
/// whole request (header + 126 segments + status) in a 128-entry ring even
/// without indirect descriptors, so it holds for any queue size a driver
/// picks from 128 up.
pub const SEG_MAX: u32 = 126;
/// The block size advertised to the driver (`blk_size`). 512 keeps every
/// file system mountable, whatever its own block size.
pub const BLOCK_SIZE: u32 = 512;
/// Length of the serial number returned by `GET_ID` (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_LEN: usize = 20;
/// Copy-on-write granularity of the overlay. It matches the 4 KiB blocks of
/// ext4, so nearly every guest write covers whole chunks and needs no copy-up.
pub const OVERLAY_CHUNK_SIZE: u64 = 4096;

/// What happens to guest writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// The device is read-only (`VIRTIO_BLK_F_RO`); writes fail with IOERR.
    ReadOnly,
    /// Writes land in a private copy-on-write overlay: an unlinked temporary
    /// file in `dir` (the system temp dir when `None`), gone with the device.
    Overlay { dir: Option<PathBuf> },
    /// A cache volume: the base image and the persistent copy-on-write
    /// layer come as open files (see [`super::layer`] for the layer's
    /// format), so a process that could not open them by path (a jailed
    /// one) can still be given them. `BlockConfig::image` then only names
    /// the disk in messages. The layer file must be empty: it becomes the
    /// layer, and outlives the device.
    Layer { base: OpenFile, layer: OpenFile },
}

/// A file opened elsewhere, shared by the configs that name it. Equal
/// when it is the same open file.
#[derive(Clone, Debug)]
pub struct OpenFile(Arc<File>);

impl OpenFile {
    pub fn new(file: File) -> OpenFile {
        OpenFile(Arc::new(file))
    }

    /// A descriptor of its own for the same open file.
    pub fn try_clone(&self) -> std::io::Result<File> {
        self.0.try_clone()
    }
}

impl PartialEq for OpenFile {
    fn eq(&self, other: &OpenFile) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OpenFile {}

/// Configuration of one block device.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// The disk image; opened read-only and never written, in every mode
    /// (in [`DiskMode::Layer`] it is already open and this only names it).
    pub image: PathBuf,
    pub mode: DiskMode,
    /// Returned by `GET_ID` (at most [`SERIAL_LEN`] bytes); Linux shows it in
    /// `/sys/block/vda/serial`.
    pub serial: String,
}

impl BlockConfig {
    /// A device over `image` whose writes go to a throwaway overlay in the
    /// system temp dir.
    pub fn overlay(image: impl Into<PathBuf>) -> BlockConfig {
        BlockConfig {
            image: image.into(),
            mode: DiskMode::Overlay { dir: None },
            serial: String::new(),
        }
    }

    /// A read-only device over `image`.
    pub fn read_only(image: impl Into<PathBuf>) -> BlockConfig {
        BlockConfig {
            image: image.into(),
            mode: DiskMode::ReadOnly,
            serial: String::new(),
        }
    }

    /// A cache volume named `name` over the open `base`, its writes kept
    /// in the open, empty `layer` (see [`DiskMode::Layer`]).
    pub fn layer(name: impl Into<PathBuf>, base: File, layer: File) -> BlockConfig {
        BlockConfig {
            image: name.into(),
            mode: DiskMode::Layer {
                base: OpenFile::new(base),
                layer: OpenFile::new(layer),
            },
            serial: String::new(),
        }
    }

    /// Sets the serial number.
    pub fn with_serial(mut self, serial: impl Into<String>) -> BlockConfig {
        self.serial = serial.into();
        self
    }
}
