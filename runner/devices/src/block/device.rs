//! The block device: one request queue, a read-only config space, and the
//! [`Disk`] behind them. Requests are served synchronously, in queue order,
//! on whatever thread the transport calls from.

use crate::bounded::RateLimiter;
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::base::DiskError;
use super::config::{BlockConfig, BLOCK_SIZE, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SERIAL_LEN};
use super::disk::Disk;
use super::request::{self, total_len, Cursor, Rejected, Request, RequestType};
use super::state::{self, BlockState, Expected};
use super::stats::BlockStats;
use crate::common::VirtioCommon;
use crate::queue::{drain_queue, Served};
use crate::snapshot::error::SnapshotError;
use crate::snapshot::state::DeviceState;
use crate::virtio::{DeviceContext, DeviceError, VirtioDevice};

/// Index of the request queue (the only queue).
pub const REQUEST_QUEUE: u16 = 0;

/// Size of `struct virtio_blk_config` up to and including the
/// write-zeroes fields; everything past `blk_size` reads as zero except
/// `num_queues`.
const CONFIG_SIZE: usize = 60;

/// Largest host buffer data passes through between the disk and guest
/// memory; bigger requests are moved a window at a time, so a request's size
/// never decides how much the host allocates.
const MAX_WINDOW: usize = 512 * 1024;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("block device serial {serial:?} is {len} bytes long; at most {SERIAL_LEN} fit")]
    SerialTooLong { serial: String, len: usize },
    #[error("cannot make the event that announces a disk attached to slot {serial:?}: {source}")]
    Event {
        serial: String,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-blk device over a [`Disk`].
pub struct BlockDevice {
    virtio: VirtioCommon,
    disk: Disk,
    serial: [u8; SERIAL_LEN],
    config: [u8; CONFIG_SIZE],
    window: Vec<u8>,
    stats: Arc<BlockStats>,
    /// The guest decides how often requests are malformed: bound the logging.
    warnings: RateLimiter,
    /// An empty slot's disk, attached once a snapshot was restored into
    /// the slot (see [`BlockDevice::slot`]).
    attach_after_restore: Option<Disk>,
    /// Readable once a disk was attached to a live slot: the transport's
    /// next backend call tells the driver the capacity changed. Slots only.
    attached: Option<EventFd>,
}

/// What a request came to: the status byte and how many bytes of data the
/// device wrote into guest memory.
struct Outcome {
    status: u32,
    written: u64,
}

impl Outcome {
    fn status(status: u32) -> Outcome {
        Outcome { status, written: 0 }
    }
}

impl BlockDevice {
    /// Replaces the warning budget (10 a second by default).
    #[cfg(test)]
    pub(crate) fn set_warnings(&mut self, limiter: RateLimiter) {
        self.warnings = limiter;
    }

    /// Opens the image (and creates the overlay) as `config` says.
    pub fn new(config: BlockConfig) -> Result<BlockDevice, BlockError> {
        let serial = serial_bytes(&config.serial)?;
        let disk = Disk::open(&config.image, &config.mode)?;
        Ok(BlockDevice::with_disk(disk, serial))
    }

    /// An empty slot named `serial`: a writable disk of capacity 0, which
    /// a snapshot can carry without carrying any disk. A VM built for a
    /// snapshot gets slots; a clone restored from it gets `disk` (a cache
    /// volume, of [`DiskMode::Layer`](super::DiskMode::Layer)) attached in
    /// its slot right after the restore, and the driver is told that the
    /// capacity changed (a config-change interrupt; Linux then reads the
    /// new capacity). A slot stays empty with `None`, or when no snapshot
    /// is restored into it.
    pub fn slot(serial: &str, disk: Option<Disk>) -> Result<BlockDevice, BlockError> {
        let bytes = serial_bytes(serial)?;
        let attached = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BlockError::Event {
            serial: serial.to_string(),
            source,
        })?;
        let mut device = BlockDevice::with_disk(Disk::vacant(), bytes);
        device.attach_after_restore = disk;
        device.attached = Some(attached);
        Ok(device)
    }

    fn with_disk(disk: Disk, serial: [u8; SERIAL_LEN]) -> BlockDevice {
        let mut features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if disk.is_read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut cfg = [0u8; CONFIG_SIZE];
        cfg[0..8].copy_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        cfg[20..24].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        // num_queues: only read by drivers that negotiated MQ, but QEMU's
        // vhost-user-blk fills it in too.
        cfg[34..36].copy_from_slice(&1u16.to_le_bytes());

        BlockDevice {
            virtio: VirtioCommon::new(VIRTIO_ID_BLOCK, features, &[QUEUE_SIZE]),
            disk,
            serial,
            config: cfg,
            window: Vec::new(),
            stats: Arc::default(),
            warnings: RateLimiter::default(),
            attach_after_restore: None,
            attached: None,
        }
    }

    /// Puts `disk` into this empty slot and announces it (see
    /// [`BlockDevice::slot`]). Its features stay what the driver
    /// negotiated with the empty slot: a slot is writable, and so is every
    /// disk attached to it.
    fn attach(&mut self, disk: Disk) {
        self.config[0..8].copy_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes());
        self.disk = disk;
        tracing::debug!(
            serial = %state::show_serial(&self.serial),
            sectors = self.capacity(),
            "virtio-blk: disk attached to its slot"
        );
        if let Some(event) = &self.attached {
            if let Err(e) = event.write(1) {
                tracing::error!("virtio-blk: cannot announce the attached disk: {e}");
            }
        }
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    pub fn is_read_only(&self) -> bool {
        self.disk.is_read_only()
    }

    /// The storage, for inspection (e.g. how much the guest has written).
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Whether the driver has activated the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.virtio.is_activated()
    }

    /// The device's request counters; the handle stays valid (and live)
    /// after the device has been handed to a transport.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    fn process_requests<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        drain_queue(ctx, REQUEST_QUEUE, |mem, chain| {
            Served::Next(self.handle_chain(mem, chain))
        })
    }

    /// Serves one chain; returns the used length (bytes written to the
    /// device-writable part, status byte included).
    fn handle_chain<M, T>(&mut self, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory,
        T: Deref,
        T::Target: GuestMemory,
    {
        let head = chain.head_index();
        let (status_addr, outcome) = match request::parse(mem, chain) {
            Ok(req) => {
                let outcome = self.execute(mem, &req);
                (req.status, outcome)
            }
            Err(Rejected::NoStatus) => {
                crate::warn_limited!(
                    self.warnings,
                    head,
                    "virtio-blk: dropping a request with no writable status byte"
                );
                self.stats.failed();
                return 0;
            }
            Err(Rejected::Malformed { status, reason }) => {
                crate::warn_limited!(
                    self.warnings,
                    head,
                    "virtio-blk: malformed request: {reason}"
                );
                (status, Outcome::status(VIRTIO_BLK_S_IOERR))
            }
        };
        if outcome.status != VIRTIO_BLK_S_OK {
            self.stats.failed();
        }
        // The status fits a byte: the VIRTIO_BLK_S_* values are 0..=6.
        if let Err(e) = mem.write_obj(outcome.status as u8, status_addr) {
            crate::warn_limited!(
                self.warnings,
                head,
                "virtio-blk: cannot write the status byte: {e}"
            );
            return 0;
        }
        u32::try_from(outcome.written + 1).unwrap_or(u32::MAX)
    }

    fn execute<M: GuestMemory>(&mut self, mem: &M, req: &Request) -> Outcome {
        let wrong_shape = |what: &str| {
            crate::warn_limited!(self.warnings, kind = ?req.kind, "virtio-blk: malformed request: {what}");
            Outcome::status(VIRTIO_BLK_S_IOERR)
        };
        match req.kind {
            RequestType::In => {
                if !req.readable.is_empty() {
                    return wrong_shape("read request with device-readable data");
                }
                self.transfer(mem, req, Direction::Read)
            }
            RequestType::Out => {
                if !req.writable.is_empty() {
                    return wrong_shape("write request with device-writable data");
                }
                if self.disk.is_read_only() {
                    tracing::debug!("virtio-blk: write to a read-only disk refused");
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                self.transfer(mem, req, Direction::Write)
            }
            RequestType::Flush => {
                if !req.readable.is_empty() || !req.writable.is_empty() {
                    return wrong_shape("flush request with data");
                }
                match self.disk.flush() {
                    Ok(()) => {
                        self.stats.flushed();
                        Outcome::status(VIRTIO_BLK_S_OK)
                    }
                    Err(e) => {
                        tracing::error!("virtio-blk: flush failed: {e}");
                        Outcome::status(VIRTIO_BLK_S_IOERR)
                    }
                }
            }
            RequestType::GetId => {
                if !req.readable.is_empty() || req.writable.is_empty() {
                    return wrong_shape("GET_ID request without a writable id buffer");
                }
                let len = total_len(&req.writable).min(SERIAL_LEN as u64) as usize;
                match Cursor::new(&req.writable).scatter(mem, &self.serial[..len]) {
                    Ok(()) => Outcome {
                        status: VIRTIO_BLK_S_OK,
                        written: len as u64,
                    },
                    Err(e) => {
                        crate::warn_limited!(self.warnings, "virtio-blk: cannot write the id: {e}");
                        Outcome::status(VIRTIO_BLK_S_IOERR)
                    }
                }
            }
            RequestType::Other(kind) => {
                tracing::debug!(kind, "virtio-blk: unsupported request type");
                Outcome::status(VIRTIO_BLK_S_UNSUPP)
            }
        }
    }

    /// The disk offset of a `len`-byte transfer at `sector`, if it is whole
    /// sectors and fits the disk.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (len.is_multiple_of(SECTOR_SIZE) && end <= self.disk.size()).then_some(offset)
    }

    /// Makes the bounce window at least `len` bytes (`len` <= MAX_WINDOW).
    fn grow_window(&mut self, len: usize) {
        if self.window.len() < len {
            self.window.resize(len, 0);
        }
    }

    /// Moves a read's or a write's data between the disk and the request's
    /// data descriptors, a bounce window at a time. Both directions share
    /// this walk: the range check, the cursor over the descriptors, and
    /// what a failure half way reports.
    fn transfer<M: GuestMemory>(&mut self, mem: &M, req: &Request, dir: Direction) -> Outcome {
        let segments = match dir {
            Direction::Read => &req.writable,
            Direction::Write => &req.readable,
        };
        let len = total_len(segments);
        let Some(offset) = self.disk_range(req.sector, len) else {
            crate::warn_limited!(
                self.warnings,
                sector = req.sector,
                len,
                capacity = self.capacity(),
                "virtio-blk: {} outside the disk or not whole sectors",
                dir.name()
            );
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        };
        let mut cursor = Cursor::new(segments);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_WINDOW as u64) as usize;
            self.grow_window(n);
            let window = &mut self.window[..n];
            let at = offset + done;
            let moved = match dir {
                Direction::Read => self
                    .disk
                    .read_at(window, at)
                    .map_err(Fault::Disk)
                    .and_then(|()| cursor.scatter(mem, window).map_err(Fault::Guest)),
                Direction::Write => cursor
                    .gather(mem, window)
                    .map_err(Fault::Guest)
                    .and_then(|()| self.disk.write_at(window, at).map_err(Fault::Disk)),
            };
            match moved {
                Ok(()) => done += n as u64,
                Err(Fault::Disk(e)) => {
                    tracing::error!(offset = at, "virtio-blk: disk {} failed: {e}", dir.name());
                    return dir.outcome(VIRTIO_BLK_S_IOERR, done);
                }
                Err(Fault::Guest(e)) => {
                    crate::warn_limited!(
                        self.warnings,
                        "virtio-blk: cannot copy {} data {} the guest: {e}",
                        dir.name(),
                        dir.guest_side()
                    );
                    return dir.outcome(VIRTIO_BLK_S_IOERR, done);
                }
            }
        }
        match dir {
            Direction::Read => self.stats.read(done),
            Direction::Write => self.stats.wrote(done),
        }
        dir.outcome(VIRTIO_BLK_S_OK, done)
    }
}

/// Which way [`BlockDevice::transfer`] moves data.
#[derive(Clone, Copy)]
enum Direction {
    /// From the disk into the device-writable descriptors.
    Read,
    /// From the device-readable descriptors onto the disk.
    Write,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }

    fn guest_side(self) -> &'static str {
        match self {
            Direction::Read => "to",
            Direction::Write => "from",
        }
    }

    /// A request that moved `done` bytes: a read wrote them into guest
    /// memory (the used length counts them), a write wrote none there.
    fn outcome(self, status: u32, done: u64) -> Outcome {
        let written = match self {
            Direction::Read => done,
            Direction::Write => 0,
        };
        Outcome { status, written }
    }
}

/// Where a transfer failed.
enum Fault {
    Disk(std::io::Error),
    Guest(vm_memory::GuestMemoryError),
}

impl<M: GuestMemory> VirtioDevice<M> for BlockDevice {
    fn virtio(&self) -> &VirtioCommon {
        &self.virtio
    }

    fn virtio_mut(&mut self) -> &mut VirtioCommon {
        &mut self.virtio
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config, offset, data);
    }

    // write_config: the default (read-only). The only writable field,
    // `writeback`, needs CONFIG_WCE, which is not offered.

    fn warnings(&self) -> &RateLimiter {
        &self.warnings
    }

    fn process_queue(
        &mut self,
        queue_index: u16,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        match queue_index {
            REQUEST_QUEUE => self.process_requests(ctx),
            other => Err(DeviceError::NoSuchQueue(other)),
        }
    }

    // activate and reset: the defaults. The disk keeps its content across
    // a driver reset: that is not a new disk.

    fn backend_fd(&self) -> Option<RawFd> {
        self.attached.as_ref().map(|e| e.as_raw_fd())
    }

    /// A slot's disk was attached: tell the driver the capacity changed.
    fn process_backend(&mut self, ctx: &mut DeviceContext<'_, M>) -> Result<(), DeviceError> {
        let Some(event) = &self.attached else {
            return Ok(());
        };
        // Non-blocking: Ok only when a disk was attached since the last read.
        if event.read().is_ok() {
            ctx.interrupt
                .signal_config_change()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }

    fn save_state(&self) -> Result<DeviceState, SnapshotError> {
        if self.disk.overlay().is_some_and(|o| o.is_persistent()) {
            // A cache volume belongs to its store; a snapshot would hand
            // its content to every clone. Snapshots carry empty slots.
            return Err(SnapshotError::Unsupported {
                device: "block",
                reason: "a cache volume is never part of a snapshot (snapshots carry empty slots)",
            });
        }
        let overlay = self.disk.overlay().map(|o| o.save()).transpose()?;
        Ok(DeviceState::Block(BlockState {
            virtio: self.virtio.save(),
            capacity: self.capacity(),
            serial: self.serial,
            overlay,
        }))
    }

    fn restore_state(&mut self, saved: &DeviceState) -> Result<(), SnapshotError> {
        let DeviceState::Block(saved) = saved else {
            return Err(saved.not_for(VIRTIO_ID_BLOCK));
        };
        let written = self.disk.overlay().map_or(0, |o| o.written_chunks());
        if !self.virtio.is_fresh() || written != 0 {
            return Err(SnapshotError::Invalid {
                device: "block",
                reason: "a restore needs a freshly created device, and this one was \
                         already set up or written"
                    .into(),
            });
        }
        let expect = Expected {
            virtio: &self.virtio,
            capacity: self.capacity(),
            serial: self.serial,
            read_only: self.disk.is_read_only(),
        };
        let chunks = state::check(saved, &expect)?;
        if let (Some(chunks), Some(overlay)) = (chunks, self.disk.overlay_mut()) {
            overlay.restore(chunks)?;
        }
        self.virtio.restore(&saved.virtio);
        if let Some(disk) = self.attach_after_restore.take() {
            self.attach(disk);
        }
        Ok(())
    }
}

/// `serial` as `GET_ID` returns it, zero-padded, if it fits.
fn serial_bytes(serial: &str) -> Result<[u8; SERIAL_LEN], BlockError> {
    let bytes = serial.as_bytes();
    if bytes.len() > SERIAL_LEN {
        return Err(BlockError::SerialTooLong {
            len: bytes.len(),
            serial: serial.to_string(),
        });
    }
    let mut padded = [0u8; SERIAL_LEN];
    padded[..bytes.len()].copy_from_slice(bytes);
    Ok(padded)
}
