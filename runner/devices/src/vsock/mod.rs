//! virtio-vsock (device id 19) with a host side made of Unix sockets.
//!
//! - [`packet`]: the wire header and moving packets in and out of guest memory;
//! - `connection`: one stream's state machine and credit accounting;
//! - `muxer`: the Unix sockets, the hybrid `CONNECT` protocol, the epoll set;
//! - [`device`]: the virtqueues and the [`crate::virtio::VirtioDevice`] glue;
//! - `state`: the device's state for VM snapshots;
//! - `reset_event`: the transport reset a restored device sends the guest.

mod config;
mod connection;
mod device;
mod muxer;
pub mod packet;
mod reset_event;
mod socket;
// pub(crate) for the fuzz entry points in `crate::fuzzing`.
pub(crate) mod state;
#[cfg(test)]
mod tests;

pub use config::{VsockConfig, VsockTimeouts, DEFAULT_REQUEST_TIMEOUT};
pub use device::{VsockDevice, VsockError, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use state::VsockState;
