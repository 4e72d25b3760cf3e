//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! the virtio-mmio register machine under a driver that writes anything
//! ([`mmio_transport`]), and a snapshot file with the state it carries
//! ([`snapshot`]).
//!
//! They live here, not in the fuzz crate, so that this crate's own tests can
//! replay the inputs kept in `fuzz/regressions/` through exactly the code the
//! fuzzer ran.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use runner_devices::block::{BlockConfig, BlockDevice};
use runner_devices::virtio::VirtioDevice;
use runner_devices::vsock::{VsockConfig, VsockDevice};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::{SerialConsole, SerialOutput};
use crate::devices::BusDevice;
use crate::memory::GuestMemoryMmap;
use crate::snapshot::{file, SnapshotState};
use crate::virtio_mmio::{reg, MmioTransport, MMIO_MAGIC, MMIO_VERSION};

/// Guest RAM the transports of [`mmio_transport`] work over: 64 KiB the
/// input fills from address 0, a hole, then 32 KiB more, so that a queue
/// can be placed across the hole or past the end.
pub const MMIO_RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x8000)];
/// The guest CID of the vsock devices.
pub const VSOCK_CID: u64 = 3;
/// Size of the block devices' disk image: 128 sectors, 16 overlay chunks.
pub const BLOCK_IMAGE_BYTES: usize = 64 * 1024;
/// The block devices' serial.
pub const BLOCK_SERIAL: &str = "fuzz-serial";

/// Control byte bit of [`mmio_transport`]: wrap a block device (else vsock).
pub const MMIO_BLOCK: u8 = 1;
/// Size of one operation of [`mmio_transport`].
pub const MMIO_OP_BYTES: usize = 6;
/// Operation kinds of [`mmio_transport`] (bits 0-1 of the op byte).
pub const OP_WRITE: u8 = 0;
pub const OP_READ: u8 = 1;
pub const OP_NOTIFY: u8 = 2;
pub const OP_END: u8 = 3;
/// With [`OP_NOTIFY`]: the device's backend fd fired instead.
pub const OP_BACKEND: u8 = 1 << 2;

/// A temp dir for the whole process: socket files and the disk image.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The block devices' image, written once: every sector holds its number.
fn block_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let path = scratch().join("disk.img");
        let mut file = File::create(&path).expect("create disk image");
        for sector in 0..BLOCK_IMAGE_BYTES / 512 {
            file.write_all(&[sector as u8; 512])
                .expect("write disk image");
        }
        path
    })
}

/// A fresh transport over `mem` wrapping a block device (writes go to an
/// overlay) or a vsock device listening in [`scratch`].
fn transport(block: bool, mem: GuestMemoryMmap) -> MmioTransport {
    let device: Box<dyn VirtioDevice<GuestMemoryMmap>> = if block {
        let config = BlockConfig::overlay(block_image()).with_serial(BLOCK_SERIAL);
        Box::new(BlockDevice::new(config).expect("block device"))
    } else {
        // One socket per device: replay tests run side by side.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = scratch().join(format!("vsock-{n}.sock"));
        Box::new(VsockDevice::new(VsockConfig::new(VSOCK_CID, path)).expect("vsock device"))
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    MmioTransport::new(device, mem, irq).expect("transport")
}

/// A driver doing anything to a virtio-mmio transport. Input layout:
///
/// | bytes   | meaning                                                   |
/// |---------|-----------------------------------------------------------|
/// | 0       | bit 0 ([`MMIO_BLOCK`]): a block device, else vsock        |
/// | 1..     | operations of [`MMIO_OP_BYTES`]: op, register, value (LE) |
/// | after [`OP_END`] | guest memory from address 0                      |
///
/// The op byte: bits 0-1 the kind ([`OP_WRITE`], [`OP_READ`],
/// [`OP_NOTIFY`] of queue `value` as the ioeventfd does it, or with
/// [`OP_BACKEND`] the device's backend fd, [`OP_END`]); for reads and
/// writes bits 2-3 pick the width (4, 1, 2 or 8 bytes) and bits 4-5 are
/// added to the offset `register * 4`, for unaligned accesses.
///
/// After every operation the transport's invariants must hold (see
/// [`MmioTransport::check_invariants`]), and the identification registers
/// read what the spec says. Returns whether the device was activated.
pub fn mmio_transport(data: &[u8]) -> bool {
    let Some((&control, mut rest)) = data.split_first() else {
        return false;
    };
    let mut ops = Vec::new();
    // Without an end operation memory stays zero (a partial op is dropped).
    let mut memory: &[u8] = &[];
    while let Some((op, after)) = rest.split_first_chunk::<MMIO_OP_BYTES>() {
        rest = after;
        if op[0] & 3 == OP_END {
            memory = rest;
            break;
        }
        ops.push(*op);
    }
    let ranges: Vec<_> = MMIO_RAM
        .iter()
        .map(|&(at, len)| (GuestAddress(at), len))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    let memory = &memory[..memory.len().min(MMIO_RAM[0].1)];
    mem.write_slice(memory, GuestAddress(MMIO_RAM[0].0))
        .expect("the input fits the first region");

    let mut t = transport(control & MMIO_BLOCK != 0, mem);
    let mut activated = false;
    for op in ops {
        let value = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        let width = [4, 1, 2, 8][usize::from((op[0] >> 2) & 3)];
        let offset = u64::from(op[1]) * 4 + u64::from((op[0] >> 4) & 3);
        match op[0] & 3 {
            OP_WRITE => {
                let bytes = u64::from(value).to_le_bytes();
                t.write(offset, &bytes[..width]);
            }
            OP_READ => {
                let mut bytes = [0u8; 8];
                t.read(offset, &mut bytes[..width]);
                if width == 4 {
                    check_read(
                        &t,
                        offset,
                        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                    );
                }
            }
            _ if op[0] & OP_BACKEND != 0 => t.process_backend(),
            _ => t.process_queue(value as u16),
        }
        if let Err(broken) = t.check_invariants() {
            panic!("after op {op:02x?}: {broken}");
        }
        activated |= t.is_activated();
    }
    activated
}

/// The registers whose value is fixed, or mirrors the transport's state.
fn check_read(t: &MmioTransport, offset: u64, value: u32) {
    let expected = match offset {
        reg::MAGIC_VALUE => MMIO_MAGIC,
        reg::VERSION => MMIO_VERSION,
        reg::DEVICE_ID => t.device_type(),
        reg::STATUS => t.status(),
        _ => return,
    };
    assert_eq!(value, expected, "register {offset:#x}");
}

/// The identity [`snapshot`] expects a snapshot to be made for.
pub const SNAPSHOT_IDENTITY: &str = "fuzz-identity";
/// The guest RAM [`snapshot`] expects a snapshot to hold, in MiB.
pub const SNAPSHOT_MEMORY_MIB: u32 = 1;
/// Control byte bits of [`snapshot`].
pub const SNAP_HEADER_CRC_AS_GIVEN: u8 = 1;
pub const SNAP_STATE_AS_GIVEN: u8 = 1 << 1;
pub const SNAP_SHORT_FILE: u8 = 1 << 2;
/// Header bytes the input gives; the rest of the header is zero but for
/// its CRC.
pub const SNAP_HEADER_BYTES: usize = 124;
/// Longest file [`snapshot`] extends to: enough for any state the input
/// can hold and the guest memory.
const SNAP_MAX_FILE: u64 = 16 << 20;

/// A snapshot file as [`crate::Vmm::restore`] reads it: opened and checked
/// by [`file::open`], its state decoded, the serial port and every virtio
/// transport restored (a fresh vsock device, or a block device for block
/// states) over the file's guest memory. Input layout:
///
/// | bytes    | meaning                                                  |
/// |----------|----------------------------------------------------------|
/// | 0        | control bits, below                                      |
/// | 1..=124  | header bytes 0..124: magic, version, lengths, identity   |
/// | 125..=128| the header CRC (file bytes 4092..4096)                   |
/// | 129..    | the state, written at `HEADER_SIZE`                      |
///
/// The checksums would stop the fuzzer at the header, so by default the
/// entry point writes correct ones: the header's unless
/// [`SNAP_HEADER_CRC_AS_GIVEN`], the state's length and CRC unless
/// [`SNAP_STATE_AS_GIVEN`]. Unless [`SNAP_SHORT_FILE`], the file is
/// extended (sparse) to the end its header promises. Every refusal must be
/// an error; a restored transport must satisfy its invariants. Returns
/// whether the whole snapshot was restored.
pub fn snapshot(data: &[u8]) -> bool {
    let Some((&control, rest)) = data.split_first() else {
        return false;
    };
    let mut header = vec![0u8; file::HEADER_SIZE as usize];
    let given = &rest[..rest.len().min(SNAP_HEADER_BYTES + 4)];
    let (fields, crc) = given.split_at(given.len().min(SNAP_HEADER_BYTES));
    header[..fields.len()].copy_from_slice(fields);
    header[4092..4092 + crc.len()].copy_from_slice(crc);
    let state = rest.get(SNAP_HEADER_BYTES + 4..).unwrap_or_default();
    if control & SNAP_STATE_AS_GIVEN == 0 {
        header[16..24].copy_from_slice(&(state.len() as u64).to_le_bytes());
        header[24..28].copy_from_slice(&crc32fast::hash(state).to_le_bytes());
    }
    if control & SNAP_HEADER_CRC_AS_GIVEN == 0 {
        let crc = crc32fast::hash(&header[..4092]);
        header[4092..].copy_from_slice(&crc.to_le_bytes());
    }
    let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    // Memory offset plus memory length.
    let promised_end = field(32).saturating_add(field(40));
    let path = scratch_file();
    let mut contents = header;
    contents.extend_from_slice(state);
    std::fs::write(&path, &contents).expect("write the snapshot file");
    let extend = control & SNAP_SHORT_FILE == 0
        && promised_end > contents.len() as u64
        && promised_end <= SNAP_MAX_FILE;
    if extend {
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(promised_end))
            .expect("extend the snapshot file");
    }
    let restored = restore(&path);
    let _ = std::fs::remove_file(&path);
    restored
}

/// A file name no other call uses at the same time.
fn scratch_file() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    scratch().join(format!("snapshot-{n}"))
}

/// Opens the snapshot at `path` and restores what it holds; whether all
/// of it was restored.
fn restore(path: &Path) -> bool {
    let memory_len = u64::from(SNAPSHOT_MEMORY_MIB) << 20;
    let Ok(opened) = file::open(path, SNAPSHOT_IDENTITY, memory_len) else {
        return false;
    };
    let header = &opened.header;
    assert_eq!(opened.state.len() as u64, header.state_len);
    assert_eq!(header.memory_len, memory_len);
    assert_eq!(header.memory_offset % 4096, 0);
    let file_len = opened.file.metadata().expect("stat the snapshot").len();
    assert!(header.memory_offset + header.memory_len <= file_len);

    let Ok(state) = SnapshotState::decode(&opened.state) else {
        return false;
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let serial =
        SerialConsole::from_state(irq, SerialOutput::new(None, false), &(&state.serial).into());
    let mut restored = serial.is_ok();
    let mem =
        crate::memory::map_snapshot_memory(&opened.file, header.memory_offset, SNAPSHOT_MEMORY_MIB)
            .expect("map the snapshot's memory");
    for saved in &state.devices {
        let mut t = transport(saved.device_type == VIRTIO_ID_BLOCK, mem.clone());
        match t.restore_state(saved) {
            Ok(()) => {
                if let Err(broken) = t.check_invariants() {
                    panic!("restored transport: {broken}");
                }
                let mut status = [0u8; 4];
                t.read(reg::STATUS, &mut status);
                assert_eq!(u32::from_le_bytes(status), t.status());
            }
            Err(_) => restored = false,
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_devices::block::{BlockState, SavedOverlay};
    use runner_devices::common::CommonState;
    use runner_devices::fuzzing::{keep_seeds, replay};
    use runner_devices::vsock::VsockState;
    use runner_devices::DeviceState;

    use crate::snapshot::vm_state::VmState;
    use crate::snapshot::SavedSerial;
    use crate::virtio_mmio::state::{SavedQueue, TransportState};

    /// Features the mmio seeds' drivers take: VERSION_1, EVENT_IDX and
    /// INDIRECT_DESC, and for block SEG_MAX, BLK_SIZE and FLUSH too.
    const VSOCK_FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 28);
    const BLOCK_FEATURES: u64 = VSOCK_FEATURES | 0x244;
    /// ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
    const DRIVER_OK_STATUS: u32 = 1 | 2 | 8 | 4;

    fn transport_state(queues: usize, driver_features: u64, device: DeviceState) -> TransportState {
        TransportState {
            device_type: device.device_type(),
            device_features_sel: 1,
            driver_features_sel: 1,
            driver_features,
            queue_sel: 0,
            status: DRIVER_OK_STATUS,
            activated: true,
            interrupt_status: 0,
            config_generation: 0,
            queues: (0..queues as u64)
                .map(|index| {
                    let base = 0x1_0000 * (index + 1);
                    SavedQueue {
                        max_size: 1024,
                        next_avail: 0,
                        next_used: 0,
                        event_idx_enabled: true,
                        size: 16,
                        ready: true,
                        desc_table: base,
                        avail_ring: base + 0x1000,
                        used_ring: base + 0x2000,
                    }
                })
                .collect(),
            device,
        }
    }

    fn vsock_transport(driver_features: u64) -> TransportState {
        let device = DeviceState::Vsock(VsockState {
            virtio: CommonState {
                features: VSOCK_FEATURES,
                acked_features: VSOCK_FEATURES,
                activated: true,
            },
            guest_cid: VSOCK_CID,
        });
        transport_state(3, driver_features, device)
    }

    /// A block device whose guest wrote chunk 3 of the 64 KiB disk.
    fn block_transport() -> TransportState {
        let mut serial = [0u8; 20];
        serial[..BLOCK_SERIAL.len()].copy_from_slice(BLOCK_SERIAL.as_bytes());
        let device = DeviceState::Block(BlockState {
            virtio: CommonState {
                features: BLOCK_FEATURES,
                acked_features: BLOCK_FEATURES,
                activated: true,
            },
            capacity: (BLOCK_IMAGE_BYTES / 512) as u64,
            serial,
            overlay: Some(SavedOverlay {
                chunk_size: 4096,
                bitmap: (1u64 << 3).to_le_bytes().to_vec(),
                data: vec![0x33; 4096],
            }),
        });
        transport_state(1, BLOCK_FEATURES, device)
    }

    fn state(devices: Vec<TransportState>) -> SnapshotState {
        SnapshotState {
            memory_mib: SNAPSHOT_MEMORY_MIB,
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: Vec::new(),
            serial: SavedSerial {
                baud_divisor_low: 12,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                in_buffer: b"AB".to_vec(),
            },
            devices,
        }
    }

    /// A [`snapshot`] input: the header [`file::write`] writes for
    /// `state` (its first bytes and its CRC), then the state.
    fn snapshot_input(control: u8, state: &SnapshotState) -> Vec<u8> {
        let encoded = state.encode().expect("encode");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot");
        let out = file::create(&path).expect("create");
        let memory_len = u64::from(SNAPSHOT_MEMORY_MIB) << 20;
        file::write(&out, SNAPSHOT_IDENTITY, &encoded, memory_len, |_, _| Ok(())).expect("write");
        let written = std::fs::read(&path).expect("read");
        let mut input = vec![control];
        input.extend_from_slice(&written[..SNAP_HEADER_BYTES]);
        input.extend_from_slice(&written[4092..4096]);
        input.extend_from_slice(&encoded);
        input
    }

    fn snapshot_seeds() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (
                "vsock",
                snapshot_input(0, &state(vec![vsock_transport(VSOCK_FEATURES)])),
            ),
            (
                "block-and-vsock",
                snapshot_input(
                    0,
                    &state(vec![block_transport(), vsock_transport(VSOCK_FEATURES)]),
                ),
            ),
            // Checksums and the state's length as written, not filled in.
            (
                "no-devices-as-given",
                snapshot_input(
                    SNAP_HEADER_CRC_AS_GIVEN | SNAP_STATE_AS_GIVEN,
                    &state(vec![]),
                ),
            ),
        ]
    }

    #[test]
    fn snapshot_seeds_are_the_current_encoding() {
        keep_seeds("snapshot", &snapshot_seeds());
    }

    /// The snapshot target once restored a transport whose driver features
    /// held bits its device never offered (the value is the fuzzer's):
    /// kept in the current encoding as `fuzz/regressions/snapshot/`.
    #[test]
    fn unoffered_driver_features_are_refused() {
        let input = snapshot_input(0, &state(vec![vsock_transport(0x596c_5c00)]));
        assert!(!snapshot(&input), "restored");
        let kept = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/regressions/snapshot/unoffered-driver-features-restored"
        );
        if std::env::var_os("RUNNER_WRITE_SEEDS").is_some_and(|v| v == "1") {
            std::fs::write(kept, &input).expect("write the regression input");
        }
        assert!(std::fs::read(kept).expect("the regression input") == input);
    }

    #[test]
    fn replay_mmio_transport_inputs() {
        replay("mmio_transport", mmio_transport);
    }

    #[test]
    fn replay_snapshot_inputs() {
        replay("snapshot", snapshot);
    }
}
