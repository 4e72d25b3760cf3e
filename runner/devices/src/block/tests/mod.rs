//! The block device driven through real split virtqueues, as a driver would.

pub(crate) mod harness;
mod io;
mod malformed;
mod slot;
mod snapshot;
