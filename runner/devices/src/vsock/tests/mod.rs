//! Tests that drive the real device model through real split virtqueues laid
//! out in guest memory by `virtio_queue::mock::MockSplitQueue`, playing the
//! guest driver's part by hand, with real Unix sockets on the host side.

mod credit;
mod driver;
mod forged;
mod limits;
mod snapshot;
mod streams;
