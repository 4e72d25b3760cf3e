//! An empty cache slot in a snapshot, and the disk a restored clone gets
//! in it: the transport restores the slot, the device swaps its disk in,
//! and the guest's driver is told (a config-change interrupt, a new config
//! generation, the capacity in the config space), before any vCPU runs.

use runner_devices::block::{BlockConfig, BlockDevice, Disk};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;

const RING: u64 = 0x1_0000;
const QUEUE_LEN: u16 = 16;

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn slot(mem: &GuestMemoryMmap, disk: Option<Disk>) -> (MmioTransport, EventFd) {
    let device = BlockDevice::slot("cache0", disk).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(Box::new(device), mem.clone(), irq.try_clone().unwrap()).unwrap();
    (t, irq)
}

/// What Linux's virtio_blk does to a disk it finds, up to DRIVER_OK.
fn bring_up(t: &mut MmioTransport, mem: &GuestMemoryMmap) {
    wr(t, reg::STATUS, ACK);
    wr(t, reg::STATUS, ACK | DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    wr(t, reg::STATUS, ACK | DRIVER | FEATURES_OK);
    let q = MockSplitQueue::create(mem, GuestAddress(RING), QUEUE_LEN);
    wr(t, reg::QUEUE_SEL, 0);
    wr(t, reg::QUEUE_NUM, u32::from(QUEUE_LEN));
    for (low, at) in [
        (reg::QUEUE_DESC_LOW, q.desc_table_addr().0),
        (reg::QUEUE_DRIVER_LOW, q.avail_addr().0),
        (reg::QUEUE_DEVICE_LOW, q.used_addr().0),
    ] {
        wr(t, low, at as u32);
        wr(t, low + 4, (at >> 32) as u32);
    }
    wr(t, reg::QUEUE_READY, 1);
    wr(t, reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated());
}

#[test]
fn a_restored_slot_announces_the_disk_it_was_given() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut original, _irq) = slot(&mem, None);
    bring_up(&mut original, &mem);
    assert_eq!(rd(&mut original, reg::CONFIG), 0, "an empty slot");
    let saved = original.save_state().unwrap();
    drop(original);

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cache.ext4");
    std::fs::write(&image, vec![0u8; 64 << 10]).unwrap();
    let layer = std::fs::File::create(dir.path().join("layer")).unwrap();
    let config = BlockConfig::layer(&image, std::fs::File::open(&image).unwrap(), layer);
    let disk = Disk::open(&config.image, &config.mode).unwrap();
    let (mut clone, irq) = slot(&mem, Some(disk));
    clone.restore_state(&saved).unwrap();

    assert_eq!(rd(&mut clone, reg::CONFIG), 128, "64 KiB in sectors");
    assert_eq!(rd(&mut clone, reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(rd(&mut clone, reg::CONFIG_GENERATION), 1);
    // Raised (and, as after any restore with a latched status, once more).
    assert!(irq.read().unwrap() >= 1, "the interrupt was raised");
    // The event loop finds the device's backend fd readable no more.
    clone.process_backend();
    assert!(irq.read().is_err(), "announced once");
}

#[test]
fn a_slot_restored_without_a_disk_stays_empty_and_quiet() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut original, _irq) = slot(&mem, None);
    bring_up(&mut original, &mem);
    let saved = original.save_state().unwrap();
    let (mut clone, irq) = slot(&mem, None);
    clone.restore_state(&saved).unwrap();
    assert_eq!(rd(&mut clone, reg::CONFIG), 0);
    assert_eq!(rd(&mut clone, reg::INTERRUPT_STATUS), 0);
    assert!(irq.read().is_err());
}
