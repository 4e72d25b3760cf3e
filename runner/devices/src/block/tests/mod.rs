//! The block device driven through real split virtqueues, as a driver would.

mod harness;
mod io;
mod malformed;
mod snapshot;
