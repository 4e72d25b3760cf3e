//! Networking for jobs that opt in (`network:` in the pipeline): the
//! framing of passt's socket ([`stream`]); the host-side egress policy
//! ([`egress`]: `allow` by address and by name, with its DNS forwarder
//! ([`dns`])), which reads the guest's frames ([`filter`]) and never lets
//! through unasked what [`addresses`] keeps for the operator; our own
//! virtio-net device model ([`device`]) for the built-in VMM; and the
//! switch of a job's private segment with its service VMs ([`segment`]).

pub mod addresses;
pub mod device;
pub mod dns;
pub mod egress;
pub mod filter;
pub mod segment;
pub mod state;
pub mod stream;

pub use device::{NetConfig, NetDevice, NET_HDR_SIZE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod segment_tests;
