//! vhost-user transport: serves the `runner-devices` models to QEMU.
//!
//! - [`backend::DeviceBackend`] adapts any [`runner_devices::virtio::VirtioDevice`]
//!   to vhost-user-backend;
//! - [`server::VhostUserServer`] serves one device to one frontend in
//!   background threads;
//! - [`vsock::VsockServer`] is that for the vsock device;
//! - [`block::BlockServer`] is that for the block device.

pub mod backend;
pub mod block;
pub mod server;
pub mod vsock;

pub use block::{BlockServer, BlockServerConfig};
pub use server::{ServerError, VhostUserServer};
pub use vsock::{VsockServer, VsockServerConfig};
