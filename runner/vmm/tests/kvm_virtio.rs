//! A virtio device end to end under KVM: a hand-assembled guest performs
//! the virtio-mmio driver handshake (status, features, queue set-up,
//! DRIVER_OK) with MMIO writes, notifies the queue (KVM turns that write
//! into an ioeventfd), waits until the device has used its buffer, prints
//! "OK" and halts. The device is a small entropy source (virtio id 4).

mod common;

use std::io::Write;
use std::time::Duration;

use common::{elf_image, require_kvm};
use runner_devices::virtio::{DeviceContext, DeviceError, VirtioDevice};
use runner_vmm::virtio_mmio::reg;
use runner_vmm::{ExitReason, Vmm, VmmConfig};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const TABLE: u64 = 0x3_0000;
const DESC: u64 = 0x4_0000;
const AVAIL: u64 = 0x4_1000;
const USED: u64 = 0x4_2000;
const BUFFER: u64 = 0x5_0000;
/// A page directory for 3-4 GiB so the guest can reach the MMIO gap; our
/// boot page tables only identity-map the first GiB.
const PD_HIGH: u64 = 0xc000;

/// Writes (offset, value) pairs from TABLE to the device at 0xd0000000,
/// spins until used->idx == 1, prints "OK\n", halts.
const GUEST: &[u8] = &[
    0xbe, 0x00, 0x00, 0x03, 0x00, // mov esi, 0x30000
    0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
    0x8b, 0x06, // 1: mov eax, [rsi]
    0x83, 0xf8, 0xff, // cmp eax, -1
    0x74, 0x0c, // je 2f
    0x8b, 0x56, 0x04, // mov edx, [rsi+4]
    0x89, 0x14, 0x03, // mov [rbx+rax], edx
    0x48, 0x83, 0xc6, 0x08, // add rsi, 8
    0xeb, 0xed, // jmp 1b
    0x0f, 0xb7, 0x04, 0x25, 0x02, 0x20, 0x04, 0x00, // 2: movzx eax, word [0x42002]
    0x83, 0xf8, 0x01, // cmp eax, 1
    0x75, 0xf3, // jne 2b
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, 0x4f, 0xee, // 'O'
    0xb0, 0x4b, 0xee, // 'K'
    0xb0, 0x0a, 0xee, // '\n'
    0xfa, 0xf4, 0xeb, 0xfd, // cli; 1: hlt; jmp 1b
];

struct Entropy {
    acked: u64,
}

impl<M: GuestMemory> VirtioDevice<M> for Entropy {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        1 << 32
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features & (1 << 32);
    }
    fn acked_features(&self) -> u64 {
        self.acked
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self) -> Result<(), DeviceError> {
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
        let mut used = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            let mut len = 0;
            for d in chain.clone().filter(|d| d.is_write_only()) {
                let bytes: Vec<u8> = (0..d.len()).map(|i| i as u8 ^ 0x5a).collect();
                ctx.mem
                    .write_slice(&bytes, d.addr())
                    .map_err(|e| DeviceError::Backend(std::io::Error::other(e.to_string())))?;
                len += d.len();
            }
            used.push((head, len));
        }
        for (head, len) in used {
            queue.add_used(ctx.mem, head, len)?;
        }
        ctx.notify_used(index)
    }
    fn reset(&mut self) {
        self.acked = 0;
    }
}

#[test]
fn guest_driver_handshake_notify_and_used_buffer() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::File::create(&kernel)
        .unwrap()
        .write_all(&elf_image(0x20_0000, GUEST))
        .unwrap();
    let log = dir.path().join("serial.log");
    let mut config = VmmConfig::new(&kernel, "console=ttyS0");
    config.memory.size_mib = 32;
    config.serial.log_path = Some(log.clone());
    config.timeout = Some(Duration::from_secs(60));
    let mut vmm = Vmm::new(config).unwrap();
    let slot = vmm
        .add_virtio_device(Box::new(Entropy { acked: 0 }))
        .unwrap();
    assert_eq!((slot.base, slot.size, slot.irq), (0xd000_0000, 0x1000, 5));
    assert_eq!(
        vmm.cmdline(),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
    );

    let mem = vmm.guest_memory();
    // PDPT[3] -> PD_HIGH; PD_HIGH[0x80] maps 0xd0000000 (2 MiB page).
    mem.write_obj(PD_HIGH | 3, GuestAddress(0xa000 + 3 * 8))
        .unwrap();
    mem.write_obj(0xd000_0083u64, GuestAddress(PD_HIGH + 0x80 * 8))
        .unwrap();
    // One writable 64-byte descriptor, offered in the avail ring.
    mem.write_obj(BUFFER, GuestAddress(DESC)).unwrap();
    mem.write_obj(64u32, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // VRING_DESC_F_WRITE
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // avail->idx
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0] = desc 0
    let status = |s: u32| (reg::STATUS as u32, s);
    let writes: Vec<(u32, u32)> = vec![
        status(0),
        status(1),
        status(1 | 2),
        (reg::DRIVER_FEATURES_SEL as u32, 1),
        (reg::DRIVER_FEATURES as u32, 1), // VERSION_1
        status(1 | 2 | 8),
        (reg::QUEUE_SEL as u32, 0),
        (reg::QUEUE_NUM as u32, 16),
        (reg::QUEUE_DESC_LOW as u32, DESC as u32),
        (reg::QUEUE_DESC_HIGH as u32, 0),
        (reg::QUEUE_DRIVER_LOW as u32, AVAIL as u32),
        (reg::QUEUE_DRIVER_HIGH as u32, 0),
        (reg::QUEUE_DEVICE_LOW as u32, USED as u32),
        (reg::QUEUE_DEVICE_HIGH as u32, 0),
        (reg::QUEUE_READY as u32, 1),
        status(1 | 2 | 8 | 4),
        (reg::QUEUE_NOTIFY as u32, 0),
        (u32::MAX, 0),
    ];
    for (i, (off, val)) in writes.iter().enumerate() {
        mem.write_obj(*off, GuestAddress(TABLE + i as u64 * 8))
            .unwrap();
        mem.write_obj(*val, GuestAddress(TABLE + i as u64 * 8 + 4))
            .unwrap();
    }
    let mem = mem.clone();

    let exit = vmm.run().unwrap();
    assert_eq!(exit.reason, ExitReason::Halted, "{exit:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "OK\n");
    let mut buf = [0u8; 64];
    mem.read_slice(&mut buf, GuestAddress(BUFFER)).unwrap();
    let want: Vec<u8> = (0..64u32).map(|i| i as u8 ^ 0x5a).collect();
    assert_eq!(buf.to_vec(), want, "the device filled the guest's buffer");
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, 64);
}
