//! The queue helpers against a driver played by hand: virtio-queue's mock
//! split queue in real guest memory, and a guest memory that lets the
//! driver add a chain at one exact moment of the device's work.

use std::cell::{Cell, RefCell};
use std::io;

use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryResult, Permissions,
};

use super::*;
use crate::virtio::{DeviceContext, Interrupt};

const QSIZE: u16 = 16;
const DATA: u64 = 0x10_0000;

#[derive(Default)]
struct Irq(Cell<u32>);

impl Interrupt for Irq {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("memory")
}

/// Makes chain `n` (one 16-byte descriptor, table entry `n`) available.
fn offer(mq: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16) {
    let desc = Descriptor::new(DATA + u64::from(n) * 0x100, 16, 0, 0);
    mq.add_desc_chains(&[RawDescriptor::from(desc)], n)
        .expect("add chain");
}

fn used_idx(mem: &GuestMemoryMmap, mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    mem.read_obj(mq.used_addr().unchecked_add(2))
        .expect("used idx")
}

fn used_flags(mem: &GuestMemoryMmap, mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    mem.read_obj(mq.used_addr()).expect("used flags")
}

/// Guest memory through which the driver races the device: when the
/// device reads the avail index for the `at`-th time, the driver has just
/// run `race` (made a chain available) before the read lands.
struct Racing<'a> {
    inner: &'a GuestMemoryMmap,
    avail_idx: GuestAddress,
    reads: Cell<u32>,
    at: u32,
    race: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl GuestMemory for Racing<'_> {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        GuestMemory::check_range(self.inner, addr, count, access)
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'b, BS<'b, ()>>> {
        if addr == self.avail_idx && access == Permissions::Read {
            self.reads.set(self.reads.get() + 1);
            if self.reads.get() == self.at {
                if let Some(race) = self.race.borrow_mut().take() {
                    race();
                }
            }
        }
        GuestMemory::get_slices(self.inner, addr, count, access)
    }
}

#[test]
fn every_available_chain_is_served_in_order_and_returned_with_its_length() {
    let mem = memory();
    let mq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let mut queues = vec![mq.create_queue::<Queue>().expect("queue")];
    for n in 0..5 {
        offer(&mq, n);
    }
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    let mut seen = Vec::new();
    drain_queue(&mut ctx, 0, |_, chain| {
        seen.push(chain.head_index());
        Served::Next(u32::from(chain.head_index()) * 10)
    })
    .expect("drain");
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    assert_eq!(used_idx(&mem, &mq), 5);
    for n in 0..5u16 {
        let elem = mq
            .used()
            .ring()
            .ref_at(usize::from(n))
            .expect("used elem")
            .load();
        assert_eq!((elem.id(), elem.len()), (u32::from(n), u32::from(n) * 10));
    }
    // One interrupt for the whole batch, and notifications back on.
    assert_eq!(irq.0.get(), 1);
    assert_eq!(used_flags(&mem, &mq), 0);

    // Nothing new: nothing served, no interrupt.
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    drain_queue(&mut ctx, 0, |_, _| panic!("no chain was offered")).expect("drain");
    assert_eq!(irq.0.get(), 1);
}

/// Found by the `mmio_transport` fuzz target: a driver's avail index more
/// than a queue's length ahead of the device made the drain loop spin for
/// ever (pop said "nothing", re-enabling notifications said "more").
#[test]
fn an_avail_index_out_of_reach_is_an_error_and_serves_nothing() {
    let mem = memory();
    let mq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let mut queues = vec![mq.create_queue::<Queue>().expect("queue")];
    mq.avail().idx().store(QSIZE + 1);
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    let result = drain_queue(&mut ctx, 0, |_, _| panic!("nothing can be popped"));
    assert!(
        matches!(
            result,
            Err(DeviceError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ),
        "{result:?}"
    );
    assert_eq!(used_idx(&mem, &mq), 0);
    assert_eq!(irq.0.get(), 0);
}

/// The driver adds a chain after the device's last pop found none, but
/// before it turned notifications back on: the driver saw them off and
/// did not kick. The look after enabling must find and serve it.
#[test]
fn a_chain_added_before_notifications_are_back_on_is_served_too() {
    let inner = memory();
    let mq = MockSplitQueue::create(&inner, GuestAddress(0), QSIZE);
    let mut queues = vec![mq.create_queue::<Queue>().expect("queue")];
    offer(&mq, 0);
    offer(&mq, 1);
    // The device reads the avail index once per pop: pops 1 and 2 find the
    // two chains, pop 3 finds none, and read 4 is the look after enabling
    // notifications. The driver's chain lands just before it.
    let mem = Racing {
        inner: &inner,
        avail_idx: mq.avail_addr().unchecked_add(2),
        reads: Cell::new(0),
        at: 4,
        race: RefCell::new(Some(Box::new(|| offer(&mq, 2)))),
    };
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    let mut seen = Vec::new();
    let mut flags_while_serving = Vec::new();
    drain_queue(&mut ctx, 0, |_, chain| {
        seen.push(chain.head_index());
        flags_while_serving.push(used_flags(&inner, &mq));
        Served::Next(0)
    })
    .expect("drain");
    assert!(mem.race.borrow().is_none(), "the driver never raced");
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(used_idx(&inner, &mq), 3);
    // Off while serving, the late chain included; on again at the end.
    let off = VRING_USED_F_NO_NOTIFY as u16;
    assert_eq!(flags_while_serving, [off, off, off]);
    assert_eq!(used_flags(&inner, &mq), 0);
    assert_eq!(irq.0.get(), 1);
}

/// A ring whose index shows a chain whose entry cannot be read (the ring
/// runs off guest memory): after enabling notifications it still shows
/// one, and popping still finds none. Looping would never end.
#[test]
fn a_chain_that_cannot_be_popped_after_the_second_look_is_an_error() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("memory");
    let mut queue = Queue::new(QSIZE).expect("queue");
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(0), Some(0));
    // The avail ring's header fits, its entries do not.
    queue.set_avail_ring_address(Some(0xffc), Some(0));
    queue.set_used_ring_address(Some(0x800), Some(0));
    queue.set_ready(true);
    mem.write_obj(1u16, GuestAddress(0xffe)).expect("avail idx");
    let mut queues = vec![queue];
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    let result = drain_queue(&mut ctx, 0, |_, _| panic!("nothing can be popped"));
    assert!(
        matches!(result, Err(DeviceError::UnreadableAvailRing)),
        "{result:?}"
    );
    let result = pop_or_arm(&mut queues[0], &mem, false);
    assert!(
        matches!(result, Err(DeviceError::UnreadableAvailRing)),
        "{:?}",
        result.map(|c| c.map(|c| c.head_index()))
    );
}

#[test]
fn a_pause_leaves_the_rest_on_the_queue_with_notifications_off() {
    let mem = memory();
    let mq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let mut queues = vec![mq.create_queue::<Queue>().expect("queue")];
    for n in 0..3 {
        offer(&mq, n);
    }
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    let mut seen = Vec::new();
    drain_queue(&mut ctx, 0, |_, chain| {
        seen.push(chain.head_index());
        Served::Pause(7)
    })
    .expect("drain");
    assert_eq!(seen, [0]);
    assert_eq!(used_idx(&mem, &mq), 1);
    assert_eq!(used_flags(&mem, &mq), VRING_USED_F_NO_NOTIFY as u16);
    assert_eq!(irq.0.get(), 1, "the served chain is reported");

    // The device drains again by itself once it can: the rest follow.
    let mut ctx = DeviceContext::new(&mem, &mut queues, &irq);
    drain_queue(&mut ctx, 0, |_, chain| {
        seen.push(chain.head_index());
        Served::Next(0)
    })
    .expect("drain");
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(used_flags(&mem, &mq), 0);
}

#[test]
fn pop_or_arm_arms_notifications_only_when_the_queue_is_empty() {
    let mem = memory();
    let mq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let mut queue = mq.create_queue::<Queue>().expect("queue");
    queue.disable_notification(&mem).expect("off");
    offer(&mq, 0);
    let chain = pop_or_arm(&mut queue, &mem, false).expect("pop");
    assert_eq!(chain.map(|c| c.head_index()), Some(0));
    assert_eq!(used_flags(&mem, &mq), VRING_USED_F_NO_NOTIFY as u16);
    assert!(pop_or_arm(&mut queue, &mem, false).expect("pop").is_none());
    assert_eq!(used_flags(&mem, &mq), 0, "armed for the next buffer");

    // A queue the driver has not made ready is not usable: the
    // DeviceContext gives none, and a drain leaves it alone.
    let mut not_ready = vec![Queue::new(QSIZE).expect("queue")];
    let irq = Irq::default();
    let mut ctx = DeviceContext::new(&mem, &mut not_ready, &irq);
    drain_queue(&mut ctx, 0, |_, _| panic!("not ready")).expect("drain");
}
