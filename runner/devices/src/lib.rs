//! Virtio device models. They speak virtio queues and guest memory only: the
//! transports (virtio-mmio in `runner-vmm`, vhost-user in `runner-vhost`) adapt them
//! through the interface in [`virtio`].

pub mod block;
pub mod bounded;
pub mod virtio;
pub mod vsock;
