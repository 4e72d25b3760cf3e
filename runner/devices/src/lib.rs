//! Virtio device models. They speak virtio queues and guest memory only: the
//! transports (virtio-mmio in `runner-vmm`, vhost-user in `runner-vhost`) adapt them
//! through the interface in [`virtio`].

pub mod block;
pub mod bounded;
pub mod common;
/// Fuzz entry points; built for `fuzz/` and for this crate's tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod net;
pub mod queue;
pub mod snapshot;
pub mod virtio;
pub mod vsock;

pub use snapshot::error::SnapshotError;
pub use snapshot::state::DeviceState;
