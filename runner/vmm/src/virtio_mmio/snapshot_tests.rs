//! A notification lost to a snapshot: the guest's vsock driver put a packet
//! on the TX queue and notified, but the VMM's event loop had not read the
//! notification when the vCPUs stopped, so the saved queue position is
//! behind the driver's. With `VIRTIO_RING_F_EVENT_IDX` the driver does not
//! notify again for a position it already notified about, so unless the
//! restored transport processes the queue by itself, that packet (and every
//! one after it) waits for ever: a dead snapshot. Driven here register by
//! register with the real vsock device, as the Linux driver would.

use std::os::unix::net::UnixListener;
use std::path::Path;

use runner_devices::vsock::packet::{VsockHeader, HDR_SIZE, HOST_CID, TYPE_STREAM};
use runner_devices::vsock::{VsockConfig, VsockDevice, TX_QUEUE};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const GUEST_CID: u64 = 3;
const QUEUE_LEN: u16 = 16;
/// Where each queue's rings live in the test's guest memory.
const RINGS: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
const PACKET: u64 = 0x8_0000;

fn vsock(mem: &GuestMemoryMmap, dir: &Path) -> (MmioTransport, EventFd) {
    let device = VsockDevice::new(VsockConfig::new(GUEST_CID, dir.join("vsock.sock"))).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(Box::new(device), mem.clone(), irq.try_clone().unwrap()).unwrap();
    (t, irq)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn wr64(t: &mut MmioTransport, low: u64, v: u64) {
    wr(t, low, v as u32);
    wr(t, low + 4, (v >> 32) as u32);
}

/// The driver's set-up, with EVENT_IDX, up to DRIVER_OK; the queues.
fn bring_up<'m>(
    t: &mut MmioTransport,
    mem: &'m GuestMemoryMmap,
) -> Vec<MockSplitQueue<'m, GuestMemoryMmap>> {
    let features = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC);
    wr(t, reg::STATUS, ACK);
    wr(t, reg::STATUS, ACK | DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, features as u32);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, reg::STATUS, ACK | DRIVER | FEATURES_OK);
    let mut queues = Vec::new();
    for (index, at) in RINGS.iter().enumerate() {
        let q = MockSplitQueue::create(mem, GuestAddress(*at), QUEUE_LEN);
        wr(t, reg::QUEUE_SEL, index as u32);
        wr(t, reg::QUEUE_NUM, u32::from(QUEUE_LEN));
        wr64(t, reg::QUEUE_DESC_LOW, q.desc_table_addr().0);
        wr64(t, reg::QUEUE_DRIVER_LOW, q.avail_addr().0);
        wr64(t, reg::QUEUE_DEVICE_LOW, q.used_addr().0);
        wr(t, reg::QUEUE_READY, 1);
        queues.push(q);
    }
    wr(t, reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated());
    queues
}

/// A guest connection request to host port `port`, made available on TX.
fn post_request(mem: &GuestMemoryMmap, tx: &MockSplitQueue<'_, GuestMemoryMmap>, port: u32) {
    let hdr = VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: port,
        type_: TYPE_STREAM,
        op: 1, // REQUEST
        buf_alloc: 64 * 1024,
        ..Default::default()
    };
    mem.write_slice(&hdr.to_bytes(), GuestAddress(PACKET))
        .unwrap();
    let desc = RawDescriptor::from(SplitDescriptor::new(PACKET, HDR_SIZE as u32, 0, 0));
    tx.add_desc_chains(&[desc], 0).unwrap();
}

#[test]
fn a_packet_whose_notification_the_snapshot_lost_is_processed_by_the_restored_device() {
    let dir = tempfile::tempdir().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let host = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    host.set_nonblocking(true).unwrap();

    let (mut original, _irq) = vsock(&mem, dir.path());
    let queues = bring_up(&mut original, &mem);
    // The driver posts a packet and notifies; the notification is lost:
    // nothing calls `process_queue` before the state is saved.
    post_request(&mem, &queues[usize::from(TX_QUEUE)], 5000);
    let saved = original.save_state().unwrap();
    let position = original.queue_positions()[usize::from(TX_QUEUE)].unwrap();
    assert_eq!(position.unprocessed(), 1, "{position}");
    drop(original);

    // A clone: a fresh device in the saved state, over the same memory.
    let clone_dir = tempfile::tempdir().unwrap();
    let clone_host = UnixListener::bind(clone_dir.path().join("vsock.sock_5000")).unwrap();
    clone_host.set_nonblocking(true).unwrap();
    let (mut clone, irq) = vsock(&mem, clone_dir.path());
    clone.restore_state(&saved).unwrap();

    // No notification will come: the restored device took the packet on
    // its own, connected the host port, and told the driver.
    let position = clone.queue_positions()[usize::from(TX_QUEUE)].unwrap();
    assert_eq!(position.unprocessed(), 0, "{position}");
    assert_eq!(position.next_used, 1, "{position}");
    // And asked to be notified about the next one (EVENT_IDX re-armed).
    assert_eq!(position.avail_event, Some(1), "{position}");
    assert!(
        clone_host.accept().is_ok(),
        "the restored device did not pass the guest's connection on"
    );
    assert!(irq.read().is_ok(), "the driver was not interrupted");
    drop(host);
}

#[test]
fn a_restored_interrupt_the_driver_had_not_acknowledged_is_raised_again() {
    let dir = tempfile::tempdir().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut original, irq) = vsock(&mem, dir.path());
    let _queues = bring_up(&mut original, &mem);
    // The device interrupted; the snapshot came before the driver read
    // the status (or before KVM had delivered the interrupt at all).
    original.interrupt.raise(INT_USED_RING).unwrap();
    assert!(irq.read().is_ok());
    let saved = original.save_state().unwrap();
    drop(original);

    let clone_dir = tempfile::tempdir().unwrap();
    let (mut clone, irq) = vsock(&mem, clone_dir.path());
    clone.restore_state(&saved).unwrap();
    assert!(
        irq.read().is_ok(),
        "the pending interrupt was not raised again"
    );
    let mut status = [0u8; 4];
    clone.read(reg::INTERRUPT_STATUS, &mut status);
    assert_eq!(u32::from_le_bytes(status), INT_USED_RING);
}

/// Found by the `snapshot` fuzz target (FEATURES_OK with features never
/// offered): a saved state no driver could have brought the transport into
/// was restored as it was. The same went for DRIVER_OK without
/// FEATURES_OK, activated without DRIVER_OK, features the device does not
/// hold as acked, and queues without the negotiated EVENT_IDX.
#[test]
fn a_state_no_driver_could_reach_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut original, _irq) = vsock(&mem, dir.path());
    let _queues = bring_up(&mut original, &mem);
    let saved = original.save_state().unwrap();
    drop(original);

    // What each damage breaks (in the refusal), and the damage.
    type Damage = fn(&mut state::TransportState);
    let damaged: [(&str, Damage); 6] = [
        ("FEATURES_OK for driver features", |s| {
            s.driver_features |= 1 << 40
        }),
        ("skipped a step", |s| s.status = ACK | DRIVER | DRIVER_OK),
        ("bits the spec does not define", |s| s.status |= 0x10),
        ("activated with status", |s| {
            s.status = ACK | DRIVER | FEATURES_OK
        }),
        ("the device acked", |s| {
            s.driver_features &= !(1 << VIRTIO_RING_F_EVENT_IDX)
        }),
        ("EVENT_IDX", |s| s.queues[1].event_idx_enabled = false),
    ];
    for (why, damage) in damaged {
        let mut state = saved.clone();
        damage(&mut state);
        let clone_dir = tempfile::tempdir().unwrap();
        let (mut clone, _irq) = vsock(&mem, clone_dir.path());
        let err = clone.restore_state(&state).expect_err(why).to_string();
        assert!(err.contains(why), "{why}: {err}");
        assert!(
            !clone.is_activated(),
            "{why}: the refused state was applied"
        );
    }
    // The state as saved is taken.
    let clone_dir = tempfile::tempdir().unwrap();
    let (mut clone, _irq) = vsock(&mem, clone_dir.path());
    clone.restore_state(&saved).unwrap();
    clone.check_invariants().unwrap();
}
