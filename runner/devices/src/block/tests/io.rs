//! Well-formed requests: geometry, reads, writes, flush, GET_ID, framing.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use super::harness::*;
use crate::block::{BlockConfig, BlockDevice, DiskMode, SEG_MAX};
use crate::virtio::VirtioDevice;

#[test]
fn presents_a_block_device_with_its_geometry() {
    let mem = memory();
    let h = Harness::new(&mem);
    let dev = &h.device;
    assert_eq!(VirtioDevice::<Mem>::device_type(dev), VIRTIO_ID_BLOCK);
    assert_eq!(VirtioDevice::<Mem>::queue_max_sizes(dev), &[1024]);
    let features = VirtioDevice::<Mem>::features(dev);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let mut capacity = [0u8; 8];
    VirtioDevice::<Mem>::read_config(dev, 0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), IMAGE_SECTORS);
    assert_eq!(dev.capacity(), IMAGE_SECTORS);
    assert_eq!(config_u32(dev, 12), SEG_MAX);
    assert_eq!(config_u32(dev, 20), 512);
    assert_eq!(config_u32(dev, 60), 0, "past the config space");
    assert_eq!(config_u32(dev, u64::MAX - 1), 0);

    // A trailing partial sector still counts; read-only mode says so.
    let h = Harness::with(&mem, 1000, |c| BlockConfig {
        mode: DiskMode::ReadOnly,
        ..c
    });
    assert_eq!(h.device.capacity(), 2);
    let features = VirtioDevice::<Mem>::features(&h.device);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn reads_return_the_image() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.read(8, 4096), (OK, 4097));
    assert_eq!(h.guest(DATA, 4096), h.image_at(8, 4096));
    assert_eq!(h.irq.used.get(), 1);

    // Several data segments of different sizes.
    h.header(VIRTIO_BLK_T_IN, 3);
    h.fill(DATA, 0x4000, NOT_WRITTEN);
    let used = h.submit(&[
        r(HDR, 16),
        w(DATA, 512),
        w(DATA + 0x1000, 3584),
        w(DATA + 0x2000, 8192),
        w(STATUS, 1),
    ]);
    assert_eq!((h.status(), used), (OK, 12_289));
    assert_eq!(h.guest(DATA, 512), h.image_at(3, 512));
    assert_eq!(h.guest(DATA + 0x1000, 3584), h.image_at(4, 3584));
    assert_eq!(h.guest(DATA + 0x2000, 8192), h.image_at(11, 8192));

    // Larger than the device's bounce window: moved in pieces.
    h.header(VIRTIO_BLK_T_IN, 100);
    let used = h.submit(&[
        r(HDR, 16),
        w(DATA, 700 * 1024),
        w(DATA + 0x20_0000, 324 * 1024),
        w(STATUS, 1),
    ]);
    assert_eq!((h.status(), used), (OK, 1024 * 1024 + 1));
    assert_eq!(h.guest(DATA, 700 * 1024), h.image_at(100, 700 * 1024));
    assert_eq!(
        h.guest(DATA + 0x20_0000, 324 * 1024),
        h.image_at(100 + 1400, 324 * 1024)
    );
    // The last sector of the disk.
    assert_eq!(h.read(IMAGE_SECTORS - 1, 512), (OK, 513));
    assert_eq!(h.guest(DATA, 512), h.image_at(IMAGE_SECTORS - 1, 512));
}

#[test]
fn writes_read_back_and_never_reach_the_image() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(h.write(100, &payload), (OK, 1));
    // A sub-chunk write next to it.
    assert_eq!(h.write(117, &[0x42; 512]), (OK, 1));
    // Sectors 96..124: image, payload (100..116), image, 0x42 (117), image.
    assert_eq!(h.read(96, 28 * 512), (OK, 28 * 512 + 1));
    let mut want = h.image_at(96, 28 * 512).to_vec();
    want[4 * 512..20 * 512].copy_from_slice(&payload);
    want[21 * 512..22 * 512].fill(0x42);
    assert_eq!(h.guest(DATA, 28 * 512), want);

    let counts = h.device.stats().counts();
    assert_eq!((counts.writes, counts.written_bytes), (2, 8192 + 512));
    assert_eq!((counts.reads, counts.read_bytes), (1, 28 * 512));
    assert_eq!(counts.failed, 0);
    let overlay = h.device.disk().overlay().expect("overlay mode");
    assert_eq!(overlay.written_chunks(), 3);
    assert_eq!(overlay.link_count().expect("stat"), 0);
    assert!(h.base_unchanged());
    let left = std::fs::read_dir(h.overlay_dir.path())
        .expect("list")
        .count();
    assert_eq!(left, 0, "the overlay has no name in its directory");
}

#[test]
fn flush_and_get_id() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);
    assert_eq!(h.device.stats().counts().flushes, 1);

    h.header(VIRTIO_BLK_T_GET_ID, 0);
    h.fill(DATA, 20, NOT_WRITTEN);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]), 21);
    assert_eq!(h.status(), OK);
    let mut want = b"test-serial".to_vec();
    want.resize(20, 0);
    assert_eq!(h.guest(DATA, 20), want);

    // A serial that does not fit is refused up front.
    let image = tempfile::NamedTempFile::new().expect("image");
    std::fs::write(image.path(), [0u8; 512]).expect("write image");
    let err = BlockDevice::new(
        BlockConfig::read_only(image.path()).with_serial("a-serial-longer-than-20"),
    )
    .err()
    .expect("too long");
    assert!(err.to_string().contains("at most 20"), "{err}");
}

#[test]
fn any_framing_of_the_request_is_accepted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 5);
    h.fill(DATA, 1024 + 1, NOT_WRITTEN);
    // Header split over two descriptors; data and status in one.
    let used = h.submit(&[r(HDR, 10), r(HDR + 10, 6), w(DATA, 1025)]);
    assert_eq!(used, 1025);
    assert_eq!(h.guest(DATA, 1024), h.image_at(5, 1024));
    assert_eq!(h.guest(DATA + 1024, 1), [OK]);

    // A write whose header and data share a descriptor.
    let mut req = vec![0u8; 16 + 512];
    req[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    req[8..16].copy_from_slice(&9u64.to_le_bytes());
    req[16..].fill(0x77);
    mem.write_slice(&req, GuestAddress(DATA)).expect("request");
    assert_eq!(h.submit(&[r(DATA, 16 + 512), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);
    assert_eq!(h.read(9, 512), (OK, 513));
    assert_eq!(h.guest(DATA, 512), vec![0x77; 512]);
}

#[test]
fn indirect_chains_like_linux_builds_them() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 40);
    let table = link(
        &[
            r(HDR, 16),
            w(DATA, 4096),
            w(DATA + 0x3000, 4096),
            w(STATUS, 1),
        ],
        0,
    );
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .expect("indirect table");
    }
    let head = h.publish(&[r(INDIRECT, 16 * table.len() as u32)]);
    let flags = VRING_DESC_F_INDIRECT as u16;
    let desc = Descriptor::new(INDIRECT, 16 * table.len() as u32, flags, 0);
    h.mq.desc_table()
        .store(head, RawDescriptor::from(desc))
        .expect("store");
    h.kick();
    assert_eq!(h.next_used(), Some((u32::from(head), 8193)));
    assert_eq!(h.status(), OK);
    assert_eq!(h.guest(DATA, 4096), h.image_at(40, 4096));
    assert_eq!(h.guest(DATA + 0x3000, 4096), h.image_at(48, 4096));
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let mem = memory();
    let mut h = Harness::with(&mem, 64 * 1024, |c| BlockConfig {
        mode: DiskMode::ReadOnly,
        ..c
    });
    assert!(h.device.is_read_only());
    assert!(h.device.disk().overlay().is_none());
    assert_eq!(h.write(0, &[0; 4096]), (IOERR, 1));
    assert_eq!(h.read(0, 4096), (OK, 4097));
    assert_eq!(h.guest(DATA, 4096), h.image_at(0, 4096));
    assert!(h.base_unchanged());
}

#[test]
fn a_batch_of_requests_raises_one_interrupt() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 0);
    let heads: Vec<u16> = (0..3)
        .map(|i| h.publish(&[r(HDR, 16), w(DATA + i * 0x1000, 512), w(STATUS + 1 + i, 1)]))
        .collect();
    h.kick();
    assert_eq!(h.irq.used.get(), 1);
    for head in heads {
        assert_eq!(h.next_used(), Some((u32::from(head), 513)));
    }
    // Nothing new: no interrupt.
    h.kick();
    assert_eq!(h.irq.used.get(), 1);
}

#[test]
fn reset_forgets_features_but_not_the_data() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.write(2, &[0x99; 512]), (OK, 1));
    VirtioDevice::<Mem>::reset(&mut h.device);
    assert_eq!(VirtioDevice::<Mem>::acked_features(&h.device), 0);
    assert!(!h.device.is_activated());
    VirtioDevice::<Mem>::ack_features(&mut h.device, u64::MAX);
    assert_eq!(
        VirtioDevice::<Mem>::acked_features(&h.device),
        VirtioDevice::<Mem>::features(&h.device),
        "bits that were not offered are dropped"
    );
    assert_eq!(h.read(2, 512), (OK, 513));
    assert_eq!(h.guest(DATA, 512), vec![0x99; 512]);
}

#[test]
fn the_device_can_move_to_a_transport_thread() {
    fn send<T: Send + 'static>() {}
    send::<BlockDevice>();
}
