//! Saving a device model's own state for a VM snapshot, and loading it into
//! a freshly created device in another process.
//!
//! The transport saves its own registers and queue positions; a device only
//! saves what the transport cannot know (its offered and acked features,
//! whether it was activated, and for block the guest's writes). See
//! [`crate::virtio::VirtioDevice::save_state`].
//!
//! - [`state`]: [`state::DeviceState`], what a device saves: a serde
//!   value, one variant per device model that can be saved;
//! - [`codec`]: the one encoding of a snapshot's state, this and the
//!   VMM's alike;
//! - [`error`]: why saving or restoring failed.
//!
//! A state comes from a snapshot file on the host, which something else may
//! have written: decoding it is bounded ([`codec`]), and a device checks a
//! decoded state against its own configuration before it changes anything.

pub mod codec;
pub mod error;
pub mod state;
