//! The block device served to QEMU's `vhost-user-blk`.
//!
//! QEMU side (microvm, whose virtio-mmio bus takes the plain
//! `vhost-user-blk` device):
//! ```text
//! -object memory-backend-memfd,id=mem,size=256M,share=on
//! -M microvm,acpi=off,memory-backend=mem
//! -chardev socket,id=blk0,path=<socket_path>
//! -device vhost-user-blk,chardev=blk0
//! ```
//! The guest sees `/dev/vda`. The image is only ever read; in overlay mode
//! the guest's writes go to a private, unlinked overlay file that disappears
//! with the server (see `runner_devices::block`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runner_devices::block::{BlockConfig, BlockDevice, BlockError, BlockStats};
pub use runner_devices::block::{DiskMode, IoCounts};

use crate::server::{ServerError, VhostUserServer};

/// What a [`BlockServer`] serves and where.
#[derive(Clone, Debug)]
pub struct BlockServerConfig {
    /// The vhost-user socket QEMU connects to.
    pub socket_path: PathBuf,
    /// The disk image, opened read-only.
    pub image: PathBuf,
    /// Read-only disk, or writable through a throwaway overlay.
    pub mode: DiskMode,
    /// Serial number the guest reads with `GET_ID` (at most 20 bytes).
    pub serial: String,
}

impl BlockServerConfig {
    /// `image` behind `socket_path`, writable through an overlay in the
    /// system temp dir, with no serial.
    pub fn overlay(socket_path: impl Into<PathBuf>, image: impl Into<PathBuf>) -> Self {
        BlockServerConfig {
            socket_path: socket_path.into(),
            image: image.into(),
            mode: DiskMode::Overlay { dir: None },
            serial: String::new(),
        }
    }

    /// `image` behind `socket_path`, read-only, with no serial.
    pub fn read_only(socket_path: impl Into<PathBuf>, image: impl Into<PathBuf>) -> Self {
        BlockServerConfig {
            mode: DiskMode::ReadOnly,
            ..BlockServerConfig::overlay(socket_path, image)
        }
    }
}

/// Why a block server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlockServerError {
    #[error(transparent)]
    Device(#[from] BlockError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A block device served over vhost-user to one QEMU, in background threads.
/// Dropping it (or [`BlockServer::stop`]) disconnects QEMU, ends the threads,
/// removes the socket file and discards the overlay.
pub struct BlockServer {
    server: VhostUserServer,
    capacity: u64,
    read_only: bool,
    stats: Arc<BlockStats>,
}

impl BlockServer {
    /// Opens the image (creating the overlay) and binds `socket_path`. QEMU
    /// may be started as soon as this returns.
    pub fn start(config: BlockServerConfig) -> Result<BlockServer, BlockServerError> {
        let device = BlockDevice::new(BlockConfig {
            image: config.image,
            mode: config.mode,
            serial: config.serial,
        })?;
        let capacity = device.capacity();
        let read_only = device.is_read_only();
        let stats = device.stats();
        let server = VhostUserServer::start("blk", &config.socket_path, device)?;
        Ok(BlockServer {
            server,
            capacity,
            read_only,
            stats,
        })
    }

    /// The vhost-user socket for QEMU's `-chardev socket,path=`.
    pub fn socket_path(&self) -> &Path {
        self.server.socket_path()
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What the guest has done with the disk so far.
    pub fn io_counts(&self) -> IoCounts {
        self.stats.counts()
    }

    /// Counts the bytes the guest writes in `mirror` too (a word the host
    /// shares with this process).
    pub fn mirror_written(&self, mirror: &'static std::sync::atomic::AtomicU64) {
        self.stats.mirror_written(mirror);
    }

    /// True once QEMU disconnected (or the server was stopped).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// Stops serving and cleans up; see [`VhostUserServer::stop`].
    pub fn stop(&mut self) -> Result<(), ServerError> {
        self.server.stop()
    }
}
