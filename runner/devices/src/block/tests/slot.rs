//! Empty slots: what a snapshot carries instead of a cache volume, and the
//! disk a restored clone gets in one.

use std::fs::File;
use std::rc::Rc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_T_GET_ID};

use super::harness::*;
use crate::block::layer::written_ranges;
use crate::block::{BlockConfig, BlockDevice, Disk, OVERLAY_CHUNK_SIZE};
use crate::snapshot::state::DeviceState;
use crate::virtio::VirtioDevice;

fn activated_slot(serial: &str) -> BlockDevice {
    let mut slot = BlockDevice::slot(serial, None).expect("slot");
    let features = VirtioDevice::<Mem>::features(&slot);
    VirtioDevice::<Mem>::ack_features(&mut slot, features);
    VirtioDevice::<Mem>::activate(&mut slot).expect("activate");
    slot
}

#[test]
fn an_empty_slot_is_a_writable_disk_of_no_sectors_with_its_serial() {
    let mem = memory();
    let slot = activated_slot("cache2");
    assert_eq!(slot.capacity(), 0);
    assert_eq!(
        VirtioDevice::<Mem>::features(&slot) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    let image = Rc::new(tempfile::NamedTempFile::new().unwrap());
    let mut h = Harness::around(&mem, slot, image, Vec::new(), tempfile::tempdir().unwrap());
    assert_eq!(h.read(0, 512).0, IOERR);
    assert_eq!(h.write(0, &[1; 512]).0, IOERR);
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]), 21);
    assert_eq!(&h.guest(DATA, 6), b"cache2");
    // Nothing was attached: nothing to announce.
    h.backend();
    assert_eq!(h.irq.config_changes.get(), 0);
}

#[test]
fn a_restored_slot_gets_its_disk_and_tells_the_driver() {
    let mem = memory();
    let state = VirtioDevice::<Mem>::save_state(&activated_slot("cache0")).expect("save");
    let DeviceState::Block(saved) = &state else {
        panic!("{state:?}")
    };
    assert_eq!((saved.capacity, saved.overlay.is_none()), (0, true));

    let size = IMAGE_SECTORS * 512;
    let data = image_bytes(size as usize);
    let image = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(image.path(), &data).unwrap();
    let layer = tempfile::tempfile().unwrap();
    let reader = layer.try_clone().unwrap();
    let config = BlockConfig::layer(image.path(), File::open(image.path()).unwrap(), layer);
    let disk = Disk::open(&config.image, &config.mode).expect("disk");
    let mut slot = BlockDevice::slot("cache0", Some(disk)).expect("slot");
    assert_eq!(slot.capacity(), 0, "empty until restored");
    VirtioDevice::<Mem>::restore_state(&mut slot, &state).expect("restore");
    assert_eq!(slot.capacity(), IMAGE_SECTORS);
    assert_eq!(config_u32(&slot, 0), IMAGE_SECTORS as u32);

    let mut h = Harness::around(
        &mem,
        slot,
        Rc::new(image),
        data,
        tempfile::tempdir().unwrap(),
    );
    h.backend();
    assert_eq!(h.irq.config_changes.get(), 1);
    // Announced once, however often the transport asks.
    h.backend();
    assert_eq!(h.irq.config_changes.get(), 1);

    assert_eq!(h.read(16, 1024).0, OK);
    assert_eq!(h.guest(DATA, 1024), h.image_at(16, 1024));
    assert_eq!(h.write(16, &[0xAB; 512]).0, OK);
    let c = OVERLAY_CHUNK_SIZE;
    assert_eq!(written_ranges(&reader, size).unwrap(), vec![2 * c..3 * c]);
    assert!(h.base_unchanged());
}

#[test]
fn a_slot_takes_only_an_empty_slot_state() {
    let mem = memory();
    let h = Harness::new(&mem);
    let disk_state = VirtioDevice::<Mem>::save_state(&h.device).expect("save");
    let mut slot = BlockDevice::slot("test-serial", None).unwrap();
    let err = VirtioDevice::<Mem>::restore_state(&mut slot, &disk_state).expect_err("a disk");
    assert!(err.to_string().contains("sectors"), "{err}");

    // And an empty slot's state with an overlay is not one.
    let mut state = VirtioDevice::<Mem>::save_state(&activated_slot("x")).unwrap();
    let DeviceState::Block(saved) = &mut state else {
        unreachable!()
    };
    let DeviceState::Block(with_overlay) = &disk_state else {
        unreachable!()
    };
    saved.overlay = with_overlay.overlay.clone();
    let mut slot = BlockDevice::slot("x", None).unwrap();
    let err = VirtioDevice::<Mem>::restore_state(&mut slot, &state).expect_err("an overlay");
    assert!(err.to_string().contains("empty slot"), "{err}");
}
