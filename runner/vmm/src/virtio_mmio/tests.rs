//! The virtio-mmio register state machine, driven register access by
//! register access the way Linux's virtio_mmio driver does it, over a small
//! but real device: an entropy source (virtio id 4) that fills every
//! writable buffer the driver posts with a byte pattern.

use super::*;
use runner_devices::common::VirtioCommon;
use runner_devices::virtio::DeviceError;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const VIRTIO_ID_RNG: u32 = 4;
const FEATURE_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const FEATURE_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const VRING_DESC_F_WRITE: u16 = 2;

struct Entropy {
    virtio: VirtioCommon,
    activations: u32,
    config: [u8; 8],
}

impl<M: GuestMemory> VirtioDevice<M> for Entropy {
    fn virtio(&self) -> &VirtioCommon {
        &self.virtio
    }
    fn virtio_mut(&mut self) -> &mut VirtioCommon {
        &mut self.virtio
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self) -> Result<(), DeviceError> {
        self.virtio.activate();
        self.activations += 1;
        Ok(())
    }
    fn process_queue(
        &mut self,
        index: u16,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        let queue = ctx
            .queues
            .queue_mut(index)
            .ok_or(DeviceError::NoSuchQueue(index))?;
        let mut used = vec![];
        while let Some(chain) = queue.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.clone() {
                if desc.is_write_only() {
                    let fill = vec![0xa5u8; desc.len() as usize];
                    ctx.mem
                        .write_slice(&fill, desc.addr())
                        .map_err(|e| DeviceError::Backend(std::io::Error::other(e.to_string())))?;
                    written += desc.len();
                }
            }
            used.push((head, written));
        }
        for (head, len) in used {
            queue.add_used(ctx.mem, head, len)?;
        }
        ctx.notify_used(index)
    }
}

fn transport() -> (MmioTransport, GuestMemoryMmap, EventFd) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = Entropy {
        virtio: VirtioCommon::new(VIRTIO_ID_RNG, FEATURE_VERSION_1 | FEATURE_EVENT_IDX, &[16]),
        activations: 0,
        config: *b"RUNNER01",
    };
    let t = MmioTransport::new(Box::new(dev), mem.clone(), irq.try_clone().unwrap()).unwrap();
    (t, mem, irq)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Status handshake up to and including a feature write.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, ACK);
    wr(t, reg::STATUS, ACK | DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, features as u32);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, reg::STATUS, ACK | DRIVER | FEATURES_OK);
    rd(t, reg::STATUS)
}

#[test]
fn identification_registers() {
    let (mut t, _, _) = transport();
    assert_eq!(rd(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, reg::VERSION), 2);
    assert_eq!(rd(&mut t, reg::DEVICE_ID), VIRTIO_ID_RNG);
    assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    // Sub-word register access is not allowed and reads as zero.
    let mut two = [0xffu8; 2];
    t.read(reg::MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
}

#[test]
fn device_features_are_paged_by_select() {
    let (mut t, _, _) = transport();
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), FEATURE_EVENT_IDX as u32);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn feature_negotiation_accepts_a_subset() {
    let (mut t, _, _) = transport();
    let status = negotiate(&mut t, FEATURE_VERSION_1);
    assert_eq!(status, ACK | DRIVER | FEATURES_OK);
    assert_eq!(t.device.acked_features(), FEATURE_VERSION_1);
}

#[test]
fn feature_negotiation_refuses_unoffered_bits_and_legacy_drivers() {
    let (mut t, _, _) = transport();
    // Bit 0 was never offered: FEATURES_OK must not stick.
    assert_eq!(negotiate(&mut t, FEATURE_VERSION_1 | 1), ACK | DRIVER);
    assert_eq!(t.device.acked_features(), 0);
    // A driver without VERSION_1 is a legacy driver: refused on v2.
    assert_eq!(negotiate(&mut t, FEATURE_EVENT_IDX), ACK | DRIVER);
    // Features written before DRIVER are ignored.
    wr(&mut t, reg::STATUS, 0);
    wr(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.driver_features, 0);
}

#[test]
fn out_of_order_status_is_ignored_and_failed_sticks() {
    let (mut t, _, _) = transport();
    wr(&mut t, reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    wr(&mut t, reg::STATUS, ACK);
    wr(&mut t, reg::STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, reg::STATUS), ACK, "skipping DRIVER is refused");
    wr(&mut t, reg::STATUS, ACK | FAILED);
    assert_eq!(rd(&mut t, reg::STATUS), ACK | FAILED);
}

#[test]
fn queue_registers_only_during_setup() {
    let (mut t, _, _) = transport();
    wr(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
    wr(&mut t, reg::QUEUE_NUM, 8);
    assert_eq!(
        t.queues[0].size(),
        16,
        "QueueNum before FEATURES_OK ignored"
    );
    negotiate(&mut t, FEATURE_VERSION_1);
    wr(&mut t, reg::QUEUE_NUM, 8);
    wr(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
    wr(&mut t, reg::QUEUE_DESC_HIGH, 0);
    wr(&mut t, reg::QUEUE_DRIVER_LOW, 0x2000);
    wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x3000);
    wr(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
    let q = &t.queues[0];
    assert_eq!(
        (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()),
        (8, 0x1000, 0x2000, 0x3000)
    );
    // A queue that does not exist reads as absent.
    wr(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
}

#[test]
fn config_space_reads_and_writes_reach_the_device() {
    let (mut t, _, _) = transport();
    let mut b = [0u8; 8];
    t.read(reg::CONFIG, &mut b);
    assert_eq!(&b, b"RUNNER01");
    let mut one = [0u8; 1];
    t.read(reg::CONFIG + 6, &mut one);
    assert_eq!(one, [b'0']);
    t.write(reg::CONFIG + 7, b"9");
    t.read(reg::CONFIG, &mut b);
    assert_eq!(&b, b"RUNNER09");
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 0);
}

/// The whole life of a device: negotiate, set up a queue laid out in guest
/// memory, DRIVER_OK, notify, used buffer + interrupt, ack, reset.
#[test]
fn full_driver_lifecycle_moves_buffers_and_interrupts() {
    let (mut t, mem, irq) = transport();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    negotiate(&mut t, FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_NUM, 16);
    let (d, a, u) = (
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    );
    wr(&mut t, reg::QUEUE_DESC_LOW, d as u32);
    wr(&mut t, reg::QUEUE_DESC_HIGH, (d >> 32) as u32);
    wr(&mut t, reg::QUEUE_DRIVER_LOW, a as u32);
    wr(&mut t, reg::QUEUE_DRIVER_HIGH, (a >> 32) as u32);
    wr(&mut t, reg::QUEUE_DEVICE_LOW, u as u32);
    wr(&mut t, reg::QUEUE_DEVICE_HIGH, (u >> 32) as u32);
    wr(&mut t, reg::QUEUE_READY, 1);
    // Notify before DRIVER_OK does nothing.
    t.process_queue(0);
    assert!(!t.is_activated());
    wr(&mut t, reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated());
    assert_eq!(
        rd(&mut t, reg::STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );

    // The driver posts one 64-byte writable buffer and notifies.
    let buf = GuestAddress(0x8_0000);
    let desc = RawDescriptor::from(SplitDescriptor::new(buf.0, 64, VRING_DESC_F_WRITE, 0));
    mock.add_desc_chains(&[desc], 0).unwrap();
    wr(&mut t, reg::QUEUE_NOTIFY, 0);

    let mut data = [0u8; 64];
    mem.read_slice(&mut data, buf).unwrap();
    assert_eq!(data, [0xa5; 64], "device filled the buffer");
    let used_idx: u16 = mem.read_obj(GuestAddress(u + 2)).unwrap();
    assert_eq!(used_idx, 1);
    let used_len: u32 = mem.read_obj(GuestAddress(u + 4 + 4)).unwrap();
    assert_eq!(used_len, 64);
    assert_eq!(irq.read().unwrap(), 1, "irqfd kicked");
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_USED_RING);
    wr(&mut t, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);

    // Queue set-up is frozen after DRIVER_OK.
    wr(&mut t, reg::QUEUE_NUM, 4);
    assert_eq!(t.queues[0].size(), 16);

    // Reset: everything back to square one.
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.device.acked_features(), 0);
}

#[test]
fn invalid_queue_at_driver_ok_sets_needs_reset() {
    let (mut t, _mem, irq) = transport();
    negotiate(&mut t, FEATURE_VERSION_1);
    wr(&mut t, reg::QUEUE_SEL, 0);
    // Rings far outside the 1 MiB of guest memory.
    wr(&mut t, reg::QUEUE_DESC_LOW, 0x4000_0000);
    wr(&mut t, reg::QUEUE_DRIVER_LOW, 0x4001_0000);
    wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x4002_0000);
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, reg::STATUS) & NEEDS_RESET, 0);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 1);
    assert!(irq.read().is_ok());
}
