//! A virtio device end to end under KVM: a hand-assembled guest performs
//! the virtio-mmio driver handshake (status, features, queue set-up,
//! DRIVER_OK) with MMIO writes, notifies the queue (KVM turns that write
//! into an ioeventfd), waits until the device has used its buffer, prints
//! "OK" and halts. The device is a small entropy source (virtio id 4).

mod common;

use std::io::Write;
use std::time::Duration;

use common::{elf_image, require_kvm};
use runner_devices::common::VirtioCommon;
use runner_devices::virtio::{DeviceContext, DeviceError, VirtioDevice};
use runner_vmm::virtio_mmio::reg;
use runner_vmm::{ExitReason, Vmm, VmmConfig};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

type Mem = runner_vmm::memory::GuestMemoryMmap;

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
    virtio: VirtioCommon,
}

impl<M: GuestMemory> VirtioDevice<M> for Entropy {
    fn virtio(&self) -> &VirtioCommon {
        &self.virtio
    }
    fn virtio_mut(&mut self) -> &mut VirtioCommon {
        &mut self.virtio
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
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
        .add_virtio_device(Box::new(Entropy {
            virtio: VirtioCommon::new(4, 1 << 32, &[16]),
        }))
        .unwrap();
    assert_eq!((slot.base, slot.size, slot.irq), (0xd000_0000, 0x1000, 5));
    assert_eq!(
        vmm.cmdline(),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
    );

    let mem = vmm.guest_memory();
    map_mmio_gap(mem);
    offer_buffer(mem, DESC, AVAIL, BUFFER, 64);
    let mut writes = driver_handshake();
    writes.extend(queue_setup(0, DESC, AVAIL, USED));
    writes.extend(driver_ok_and_notify(0));
    write_table(mem, &writes);
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

/// PDPT[3] -> PD_HIGH; PD_HIGH[0x80] maps 0xd0000000 (one 2 MiB page).
fn map_mmio_gap(mem: &Mem) {
    mem.write_obj(PD_HIGH | 3, GuestAddress(0xa000 + 3 * 8))
        .unwrap();
    mem.write_obj(0xd000_0083u64, GuestAddress(PD_HIGH + 0x80 * 8))
        .unwrap();
}

/// One device-writable buffer as descriptor 0, offered in the avail ring.
fn offer_buffer(mem: &Mem, desc: u64, avail: u64, buffer: u64, len: u32) {
    mem.write_obj(buffer, GuestAddress(desc)).unwrap();
    mem.write_obj(len, GuestAddress(desc + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // VRING_DESC_F_WRITE
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap(); // avail->idx
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap(); // ring[0] = desc 0
}

fn status(s: u32) -> (u32, u32) {
    (reg::STATUS as u32, s)
}

/// Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 only, FEATURES_OK.
fn driver_handshake() -> Vec<(u32, u32)> {
    vec![
        status(0),
        status(1),
        status(1 | 2),
        (reg::DRIVER_FEATURES_SEL as u32, 1),
        (reg::DRIVER_FEATURES as u32, 1), // VERSION_1 (bit 32)
        status(1 | 2 | 8),
    ]
}

/// Sets up queue `index` with 16 entries at the given ring addresses.
fn queue_setup(index: u32, desc: u64, avail: u64, used: u64) -> Vec<(u32, u32)> {
    vec![
        (reg::QUEUE_SEL as u32, index),
        (reg::QUEUE_NUM as u32, 16),
        (reg::QUEUE_DESC_LOW as u32, desc as u32),
        (reg::QUEUE_DESC_HIGH as u32, 0),
        (reg::QUEUE_DRIVER_LOW as u32, avail as u32),
        (reg::QUEUE_DRIVER_HIGH as u32, 0),
        (reg::QUEUE_DEVICE_LOW as u32, used as u32),
        (reg::QUEUE_DEVICE_HIGH as u32, 0),
        (reg::QUEUE_READY as u32, 1),
    ]
}

/// DRIVER_OK, then a notification of `queue`, then the table terminator.
fn driver_ok_and_notify(queue: u32) -> Vec<(u32, u32)> {
    vec![
        status(1 | 2 | 8 | 4),
        (reg::QUEUE_NOTIFY as u32, queue),
        (u32::MAX, 0),
    ]
}

/// The (register offset, value) table the guest replays.
fn write_table(mem: &Mem, writes: &[(u32, u32)]) {
    for (i, (off, val)) in writes.iter().enumerate() {
        mem.write_obj(*off, GuestAddress(TABLE + i as u64 * 8))
            .unwrap();
        mem.write_obj(*val, GuestAddress(TABLE + i as u64 * 8 + 4))
            .unwrap();
    }
}

fn write_guest(dir: &std::path::Path) -> std::path::PathBuf {
    let kernel = dir.join("guest.elf");
    std::fs::File::create(&kernel)
        .unwrap()
        .write_all(&elf_image(0x20_0000, GUEST))
        .unwrap();
    kernel
}

/// The real vsock device behind our virtio-mmio transport: a host program
/// connects to the device's Unix socket and asks for guest port 1234; the
/// device must put a REQUEST packet into the buffer the guest driver
/// posted on the rx queue (the guest waits for it, then halts).
#[test]
fn vsock_device_delivers_a_host_connect_to_the_guest_rx_queue() {
    use runner_devices::vsock::{VsockConfig, VsockDevice};
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path());
    let log = dir.path().join("serial.log");
    let uds = dir.path().join("vsock.sock");
    let mut config = VmmConfig::new(&kernel, "console=ttyS0");
    config.memory.size_mib = 32;
    config.serial.log_path = Some(log.clone());
    config.timeout = Some(Duration::from_secs(60));
    let mut vmm = Vmm::new(config).unwrap();
    let device = VsockDevice::new(VsockConfig::new(3, &uds)).unwrap();
    vmm.add_virtio_device(Box::new(device)).unwrap();

    // rx (queue 0) gets a 4 KiB buffer; tx and event queues start empty.
    let mem = vmm.guest_memory();
    map_mmio_gap(mem);
    offer_buffer(mem, DESC, AVAIL, BUFFER, 4096);
    let mut writes = driver_handshake();
    writes.extend(queue_setup(0, DESC, AVAIL, USED));
    writes.extend(queue_setup(1, 0x4_3000, 0x4_4000, 0x4_5000));
    writes.extend(queue_setup(2, 0x4_6000, 0x4_7000, 0x4_8000));
    writes.extend(driver_ok_and_notify(0));
    write_table(mem, &writes);
    let mem = mem.clone();

    let vm = std::thread::spawn(move || vmm.run());
    // The driver resets the device first, which (correctly) drops host
    // connections made before that; reconnect until one survives.
    let mut _host = None;
    while !vm.is_finished() {
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&uds) else {
            break;
        };
        stream.write_all(b"CONNECT 1234\n").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(0) => continue, // dropped by the reset: try again
            _ => {
                _host = Some(stream);
                break;
            }
        }
    }
    let exit = vm.join().unwrap().unwrap();
    assert_eq!(exit.reason, ExitReason::Halted, "{exit:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "OK\n");

    // struct virtio_vsock_hdr in the guest's rx buffer.
    let hdr = |off: u64| GuestAddress(BUFFER + off);
    assert_eq!(mem.read_obj::<u64>(hdr(0)).unwrap(), 2, "src_cid: host");
    assert_eq!(mem.read_obj::<u64>(hdr(8)).unwrap(), 3, "dst_cid: guest");
    assert_eq!(mem.read_obj::<u32>(hdr(20)).unwrap(), 1234, "dst_port");
    assert_eq!(mem.read_obj::<u16>(hdr(28)).unwrap(), 1, "type: stream");
    assert_eq!(mem.read_obj::<u16>(hdr(30)).unwrap(), 1, "op: REQUEST");
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, 44, "header only");
}
