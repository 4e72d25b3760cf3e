//! The vsock device served to QEMU's `vhost-user-vsock-device`.
//!
//! QEMU side:
//! ```text
//! -object memory-backend-memfd,id=mem,size=256M,share=on
//! -M microvm,acpi=off,memory-backend=mem
//! -chardev socket,id=vs,path=<socket_path>
//! -device vhost-user-vsock-device,chardev=vs
//! ```
//! Host programs then reach the guest through `uds_path` (see
//! `runner_devices::vsock` for the `CONNECT <port>` protocol).

use std::path::{Path, PathBuf};

use runner_devices::vsock::{VsockConfig, VsockDevice, VsockError};

use crate::server::{ServerError, VhostUserServer};

/// Where a [`VsockServer`] listens and which guest it serves.
#[derive(Clone, Debug)]
pub struct VsockServerConfig {
    /// The vhost-user socket QEMU connects to.
    pub socket_path: PathBuf,
    /// The hybrid-vsock socket host programs connect to.
    pub uds_path: PathBuf,
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
}

/// Why a vsock server could not start.
#[derive(Debug, thiserror::Error)]
pub enum VsockServerError {
    #[error(transparent)]
    Device(#[from] VsockError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A vsock device served over vhost-user to one QEMU, in background threads.
/// Dropping it (or [`VsockServer::stop`]) disconnects QEMU, ends the threads
/// and removes both socket files.
pub struct VsockServer {
    server: VhostUserServer,
    uds_path: PathBuf,
    guest_cid: u64,
}

impl VsockServer {
    /// Creates the device (listening on `uds_path`) and binds `socket_path`.
    /// QEMU may be started as soon as this returns.
    pub fn start(config: VsockServerConfig) -> Result<VsockServer, VsockServerError> {
        let device = VsockDevice::new(VsockConfig::new(config.guest_cid, &config.uds_path))?;
        let server = VhostUserServer::start("vsock", &config.socket_path, device)?;
        Ok(VsockServer {
            server,
            uds_path: config.uds_path,
            guest_cid: config.guest_cid,
        })
    }

    /// The vhost-user socket for QEMU's `-chardev socket,path=`.
    pub fn socket_path(&self) -> &Path {
        self.server.socket_path()
    }

    /// The socket host programs connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
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
