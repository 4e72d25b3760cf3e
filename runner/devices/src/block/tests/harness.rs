//! A hand-played driver: real split virtqueues in guest memory (virtio-queue's
//! `MockSplitQueue` layout) in front of a real [`BlockDevice`] over a real
//! image file.

use std::cell::Cell;
use std::io::{self, Write};
use std::rc::Rc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::{BlockConfig, BlockDevice, DiskMode, REQUEST_QUEUE};
use crate::virtio::{DeviceContext, Interrupt, VirtioDevice};

pub const QSIZE: u16 = 256;
pub const USED_RING: u64 = 0x4000;
pub const INDIRECT: u64 = 0x8000;
pub const HDR: u64 = 0x1_0000;
pub const STATUS: u64 = 0x1_0100;
pub const DATA: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 0x80_0000;
/// 2 MiB of image.
pub const IMAGE_SECTORS: u64 = 4096;
pub const NOT_WRITTEN: u8 = 0xEE;

pub type Mem = GuestMemoryMmap;

pub fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test memory")
}

#[derive(Default)]
pub struct CountingInterrupt {
    pub used: Cell<u32>,
    pub config_changes: Cell<u32>,
}

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        assert_eq!(queue_index, REQUEST_QUEUE);
        self.used.set(self.used.get() + 1);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        self.config_changes.set(self.config_changes.get() + 1);
        Ok(())
    }
}

/// A descriptor before linking: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct D(pub u64, pub u32, pub bool);

pub fn r(addr: u64, len: u32) -> D {
    D(addr, len, false)
}

pub fn w(addr: u64, len: u32) -> D {
    D(addr, len, true)
}

/// Links `descs` into a chain whose descriptors are numbered from `first`.
pub fn link(descs: &[D], first: u16) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut flags = if d.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(Descriptor::new(d.0, d.1, flags, next))
        })
        .collect()
}

/// The image contents: every 512-byte sector is distinguishable.
pub fn image_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(31) ^ (i % 512) as u8)
        .collect()
}

pub struct Harness<'a> {
    pub mem: &'a Mem,
    pub mq: MockSplitQueue<'a, Mem>,
    pub used: UsedRing<'a, Mem>,
    pub queues: Vec<Queue>,
    pub device: BlockDevice,
    pub irq: CountingInterrupt,
    pub next_desc: u16,
    pub used_seen: u16,
    /// Shared with the devices restored from this one's state.
    pub image: Rc<tempfile::NamedTempFile>,
    pub image_data: Vec<u8>,
    pub overlay_dir: tempfile::TempDir,
}

impl<'a> Harness<'a> {
    pub fn new(mem: &'a Mem) -> Harness<'a> {
        Harness::with(mem, (IMAGE_SECTORS * 512) as usize, |c| c)
    }

    pub fn with(
        mem: &'a Mem,
        image_len: usize,
        config: impl FnOnce(BlockConfig) -> BlockConfig,
    ) -> Harness<'a> {
        let image_data = image_bytes(image_len);
        let mut image = tempfile::NamedTempFile::new().expect("image");
        image.write_all(&image_data).expect("write image");
        let overlay_dir = tempfile::tempdir().expect("overlay dir");
        let base = BlockConfig {
            image: image.path().to_path_buf(),
            mode: DiskMode::Overlay {
                dir: Some(overlay_dir.path().to_path_buf()),
            },
            serial: "test-serial".into(),
        };
        let mut device = BlockDevice::new(config(base)).expect("device");
        let features = VirtioDevice::<Mem>::features(&device);
        VirtioDevice::<Mem>::ack_features(&mut device, features);
        VirtioDevice::<Mem>::activate(&mut device).expect("activate");
        Harness::around(mem, device, Rc::new(image), image_data, overlay_dir)
    }

    /// A driver for `device`, which is already set up (activated, or
    /// restored from a snapshot), over `image`.
    pub fn around(
        mem: &'a Mem,
        device: BlockDevice,
        image: Rc<tempfile::NamedTempFile>,
        image_data: Vec<u8>,
        overlay_dir: tempfile::TempDir,
    ) -> Harness<'a> {
        let mq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        // MockSplitQueue's own used ring overlaps its avail ring after half
        // a lap; give it a place of its own.
        let used = UsedRing::new(mem, GuestAddress(USED_RING), QSIZE);
        let mut queue: Queue = mq.create_queue().expect("queue");
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        Harness {
            mem,
            mq,
            used,
            queues: vec![queue],
            device,
            irq: CountingInterrupt::default(),
            next_desc: 0,
            used_seen: 0,
            image,
            image_data,
            overlay_dir,
        }
    }

    /// Stores a chain and makes it available; returns its head index.
    pub fn publish(&mut self, descs: &[D]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > QSIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        self.next_desc += n;
        for (i, d) in link(descs, head).into_iter().enumerate() {
            self.mq
                .desc_table()
                .store(head + i as u16, d)
                .expect("store descriptor");
        }
        let avail = self.mq.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .expect("avail slot")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
        head
    }

    pub fn kick(&mut self) {
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device
            .process_queue(REQUEST_QUEUE, &mut ctx)
            .expect("process queue");
    }

    /// What the transport does when the device's backend fd is readable.
    pub fn backend(&mut self) {
        let mut ctx = DeviceContext::new(self.mem, &mut self.queues, &self.irq);
        self.device
            .process_backend(&mut ctx)
            .expect("process backend");
    }

    /// The next used element: (head index, used length).
    pub fn next_used(&mut self) -> Option<(u32, u32)> {
        if self.used.idx().load() == self.used_seen {
            return None;
        }
        let slot = usize::from(self.used_seen % QSIZE);
        let elem = self.used.ring().ref_at(slot).expect("used elem").load();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((elem.id(), elem.len()))
    }

    /// Submits one chain; returns the used length.
    pub fn submit(&mut self, descs: &[D]) -> u32 {
        self.mem
            .write_obj(NOT_WRITTEN, GuestAddress(STATUS))
            .expect("reset status");
        let head = self.publish(descs);
        self.kick();
        let (id, len) = self.next_used().expect("the device used the chain");
        assert_eq!(id, u32::from(head));
        assert!(self.next_used().is_none(), "one chain in, one chain out");
        len
    }

    pub fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).expect("status")
    }

    pub fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HDR))
            .expect("write header");
    }

    pub fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .expect("fill");
    }

    pub fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .expect("read guest memory");
        buf
    }

    /// Reads `len` bytes at `sector` into DATA; returns (status, used len).
    pub fn read(&mut self, sector: u64, len: u32) -> (u8, u32) {
        self.header(VIRTIO_BLK_T_IN, sector);
        self.fill(DATA, len as usize, NOT_WRITTEN);
        let used = self.submit(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)]);
        (self.status(), used)
    }

    /// Writes `data` at `sector` from DATA; returns (status, used len).
    pub fn write(&mut self, sector: u64, data: &[u8]) -> (u8, u32) {
        self.header(VIRTIO_BLK_T_OUT, sector);
        self.mem
            .write_slice(data, GuestAddress(DATA))
            .expect("write data");
        let used = self.submit(&[r(HDR, 16), r(DATA, data.len() as u32), w(STATUS, 1)]);
        (self.status(), used)
    }

    pub fn image_at(&self, sector: u64, len: usize) -> &[u8] {
        let at = (sector * 512) as usize;
        &self.image_data[at..at + len]
    }

    pub fn base_unchanged(&self) -> bool {
        std::fs::read(self.image.path()).expect("reread image") == self.image_data
    }
}

pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

pub fn config_u32(dev: &BlockDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    VirtioDevice::<Mem>::read_config(dev, offset, &mut b);
    u32::from_le_bytes(b)
}
