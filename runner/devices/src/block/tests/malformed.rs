//! Requests the device must refuse without harm.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};

use super::harness::*;

#[test]
fn requests_beyond_the_disk_fail_without_touching_the_buffer() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    for (sector, len) in [
        (IMAGE_SECTORS, 512),
        (IMAGE_SECTORS - 1, 1024),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX, 512),
        (0, 4 * 1024 * 1024),
    ] {
        assert_eq!(h.read(sector, len), (IOERR, 1), "read {len} at {sector}");
        assert!(
            h.guest(DATA, len as usize)
                .iter()
                .all(|&b| b == NOT_WRITTEN),
            "read {len} at {sector} left the buffer alone"
        );
        let data = vec![1u8; len as usize];
        assert_eq!(
            h.write(sector, &data),
            (IOERR, 1),
            "write {len} at {sector}"
        );
    }
    assert_eq!(
        h.device.disk().overlay().map(|o| o.written_chunks()),
        Some(0)
    );
    assert!(h.base_unchanged());
}

#[test]
fn malformed_chains_get_ioerr_or_are_dropped() {
    let mem = memory();
    let mut h = Harness::new(&mem);

    // Nothing writable: no status can be given, the chain comes back unused.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 512), r(STATUS, 1)]), 0);
    assert_eq!(h.status(), NOT_WRITTEN);
    // The status byte outside guest memory: the same.
    assert_eq!(
        h.submit(&[r(HDR, 16), w(DATA, 512), w(0x1_0000_0000, 1)]),
        0
    );
    // A chain longer than 4 GiB in total: virtio-queue stops following it
    // before the status byte.
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, u32::MAX), w(STATUS, 1)]), 0);
    assert_eq!(h.status(), NOT_WRITTEN);

    let ioerr_cases: Vec<(&str, u32, Vec<D>)> = vec![
        (
            "header too short",
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 8), w(STATUS, 1)],
        ),
        (
            "no header at all",
            VIRTIO_BLK_T_IN,
            vec![w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "read with readable data",
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "write with writable data",
            VIRTIO_BLK_T_OUT,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "readable after writable",
            VIRTIO_BLK_T_OUT,
            vec![
                r(HDR, 16),
                w(DATA, 512),
                r(DATA + 0x1000, 512),
                w(STATUS, 1),
            ],
        ),
        (
            "not whole sectors",
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 16), w(DATA, 100), w(STATUS, 1)],
        ),
        (
            "data outside guest memory",
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 16), w(0xFFFF_0000_0000, 4096), w(STATUS, 1)],
        ),
        (
            "data running off the end of guest memory",
            VIRTIO_BLK_T_OUT,
            vec![r(HDR, 16), r(MEM_SIZE as u64 - 512, 4096), w(STATUS, 1)],
        ),
        (
            "huge length",
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 16), w(DATA, u32::MAX - 4096), w(STATUS, 1)],
        ),
        (
            "flush with data",
            VIRTIO_BLK_T_FLUSH,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "get-id without a buffer",
            VIRTIO_BLK_T_GET_ID,
            vec![r(HDR, 16), w(STATUS, 1)],
        ),
    ];
    for (what, kind, descs) in ioerr_cases {
        h.header(kind, 0);
        h.fill(DATA, 512, NOT_WRITTEN);
        assert_eq!(h.submit(&descs), 1, "{what}: used length");
        assert_eq!(h.status(), IOERR, "{what}: status");
    }
    assert_eq!(
        h.device.disk().overlay().map(|o| o.written_chunks()),
        Some(0)
    );

    // Unknown request types are answered, not failed.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), UNSUPP);

    // A descriptor chain that loops on itself ends where virtio-queue stops
    // following it; no status byte was reached.
    let head = h.next_desc;
    h.publish(&[r(HDR, 16), r(DATA, 512)]);
    let looping = Descriptor::new(DATA, 512, VRING_DESC_F_NEXT as u16, head);
    h.mq.desc_table()
        .store(head + 1, RawDescriptor::from(looping))
        .expect("store");
    h.kick();
    assert_eq!(h.next_used(), Some((u32::from(head), 0)));

    // The device still works.
    assert_eq!(h.read(1, 512), (OK, 513));
    assert_eq!(h.guest(DATA, 512), h.image_at(1, 512));
    assert!(h.base_unchanged());

    // 3 dropped + 11 IOERR + 1 UNSUPP + 1 dropped loop; 1 good read.
    let counts = h.device.stats().counts();
    assert_eq!(counts.failed, 16);
    assert_eq!((counts.reads, counts.read_bytes), (1, 512));
    assert_eq!(counts.writes, 0);
}

#[test]
fn a_flood_of_malformed_requests_spends_only_the_device_warning_budget() {
    use crate::bounded::Verdict;
    use crate::virtio::VirtioDevice;
    let mem = memory();
    let mut h = Harness::new(&mem);
    let mut other = Harness::new(&mem);
    // An hour-long window, so that how fast this runs does not matter.
    let budget = || crate::bounded::RateLimiter::new(10, std::time::Duration::from_secs(3600));
    h.device.set_warnings(budget());
    other.device.set_warnings(budget());
    for _ in 0..100 {
        h.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(h.submit(&[r(HDR, 8), w(STATUS, 1)]), 1);
        assert_eq!(h.status(), IOERR);
    }
    // Every warning went through this device's limiter, which is spent...
    let warnings = VirtioDevice::<Mem>::warnings(&h.device);
    assert_eq!(warnings.check(), Verdict::Suppress);
    // ...while another device (another VM) still has all of its own.
    let theirs = VirtioDevice::<Mem>::warnings(&other.device);
    assert_eq!(theirs.check(), Verdict::Log { suppressed: 0 });
}

/// Found by the `mmio_transport` fuzz target (there with vsock): a
/// driver's avail index more than a queue's length ahead made the device
/// spin for ever. The queue is unusable: an error, so the transport asks
/// for a reset.
#[test]
fn an_avail_index_out_of_reach_is_an_error_not_a_spin() {
    use crate::block::REQUEST_QUEUE;
    use crate::virtio::{DeviceContext, DeviceError, VirtioDevice};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    let mem = memory();
    let mut h = Harness::new(&mem);
    let avail = h.queues[usize::from(REQUEST_QUEUE)].avail_ring();
    mem.write_obj(QSIZE + 1, GuestAddress(avail + 2))
        .expect("avail idx");
    let mut ctx = DeviceContext::new(h.mem, &mut h.queues, &h.irq);
    let result = h.device.process_queue(REQUEST_QUEUE, &mut ctx);
    assert!(
        matches!(
            result,
            Err(DeviceError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ),
        "{result:?}"
    );
}
