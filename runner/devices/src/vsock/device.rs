//! The vsock device: three virtqueues, an 8-byte config space holding the
//! guest CID, and the muxer behind them.

use crate::bounded::RateLimiter;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::config::VsockConfig;
use super::muxer::Muxer;
use super::packet::{RxBuffer, TxPacket};
use super::reset_event::ResetEvent;
use super::state::{self, VsockState};
use crate::common::VirtioCommon;
use crate::queue::{drain_queue, pop_or_arm, Served};
use crate::snapshot::error::SnapshotError;
use crate::snapshot::state::DeviceState;
use crate::virtio::{DeviceContext, DeviceError, VirtioDevice};

/// Index of the queue the device fills with packets for the guest.
pub const RX_QUEUE: u16 = 0;
/// Index of the queue the guest puts its packets on.
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue (the transport reset after a snapshot restore).
pub const EVENT_QUEUE: u16 = 2;
/// Maximum size of each queue. QEMU's vhost-user-vsock-device asks for 1024.
pub const QUEUE_SIZE: u16 = 1024;

const FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is invalid: it must be between 3 and 4294967294")]
    InvalidCid(u64),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-vsock device whose host side is Unix sockets (see the module docs
/// of `muxer` for the protocol).
pub struct VsockDevice {
    virtio: VirtioCommon,
    config: VsockConfig,
    muxer: Muxer,
    /// The transport reset a restored device owes the guest.
    reset_event: ResetEvent,
}

impl VsockDevice {
    /// Creates the device and starts listening on `config.uds_path`.
    pub fn new(config: VsockConfig) -> Result<VsockDevice, VsockError> {
        if config.guest_cid < 3 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let muxer = Muxer::new(&config).map_err(|source| VsockError::Listen {
            path: config.uds_path.clone(),
            source,
        })?;
        Ok(VsockDevice {
            virtio: VirtioCommon::new(VIRTIO_ID_VSOCK, FEATURES, &[QUEUE_SIZE; 3]),
            config,
            muxer,
            reset_event: ResetEvent::None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.config.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.config.uds_path
    }

    /// Whether the driver has activated the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.virtio.is_activated()
    }

    /// Whether the transport reset is still owed or not yet handled by the
    /// driver (packets for the guest wait meanwhile).
    #[cfg(test)]
    pub(crate) fn transport_reset_outstanding(&self) -> bool {
        self.reset_event != ResetEvent::None
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    fn process_tx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        drain_queue(ctx, TX_QUEUE, |mem, chain| {
            match TxPacket::parse(mem, chain) {
                Ok(pkt) => self.muxer.handle_guest_packet(mem, &pkt),
                Err(e) => {
                    crate::warn_limited!(self.muxer.warnings(), "vsock: dropping tx buffer: {e}")
                }
            }
            Served::Next(0)
        })
    }

    fn process_rx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        // After a restore nothing goes to the guest before the transport reset.
        let warnings = self.muxer.warnings();
        if !self.reset_event.advance(ctx, EVENT_QUEUE, warnings)? {
            return Ok(());
        }
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.queue_mut(RX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            // Out of buffers: a kick comes when the driver adds some.
            let Some(chain) = pop_or_arm(queue, mem, false)? else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::parse(mem, chain) {
                Ok(buf) => match self.muxer.fill_rx(mem, &buf) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all: give the buffer back unused.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    crate::warn_limited!(
                        self.muxer.warnings(),
                        "vsock: returning unusable rx buffer: {e}"
                    );
                    0
                }
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if used {
            ctx.notify_used(RX_QUEUE)?;
        }
        Ok(())
    }

    /// What keeps the device from being saved now (see the muxer's).
    fn blocker(&self) -> Option<SnapshotError> {
        self.muxer
            .snapshot_blocker()
            .map(|why| SnapshotError::Busy {
                device: "vsock",
                reason: format!("{why}; a snapshot needs none"),
            })
    }
}

impl<M: GuestMemory> VirtioDevice<M> for VsockDevice {
    fn virtio(&self) -> &VirtioCommon {
        &self.virtio
    }

    fn virtio_mut(&mut self) -> &mut VirtioCommon {
        &mut self.virtio
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config.guest_cid.to_le_bytes();
        crate::virtio::read_config_space(&config, offset, data);
    }

    fn warnings(&self) -> &RateLimiter {
        self.muxer.warnings()
    }

    fn process_queue(
        &mut self,
        queue_index: u16,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        match queue_index {
            RX_QUEUE => self.process_rx(ctx),
            TX_QUEUE => {
                self.process_tx(ctx)?;
                // Replies (RESPONSE, RST, credit updates) and data unblocked by
                // new credit go out right away.
                self.process_rx(ctx)
            }
            // The driver keeps buffers here; the only event is the transport
            // reset after a restore, and its refill lets the rx queue go on.
            EVENT_QUEUE => self.process_rx(ctx),
            other => Err(DeviceError::NoSuchQueue(other)),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self, ctx: &mut DeviceContext<'_, M>) -> Result<(), DeviceError> {
        self.muxer
            .process_host_events()
            .map_err(DeviceError::Backend)?;
        self.process_rx(ctx)
    }

    fn reset(&mut self) {
        self.muxer.reset();
        self.virtio.reset();
        self.reset_event = ResetEvent::None;
    }

    fn save_state(&self) -> Result<DeviceState, SnapshotError> {
        if let Some(busy) = self.blocker() {
            return Err(busy);
        }
        Ok(DeviceState::Vsock(VsockState {
            virtio: self.virtio.save(),
            guest_cid: self.config.guest_cid,
        }))
    }

    fn snapshot_blocker(&self) -> Option<SnapshotError> {
        self.blocker()
    }

    fn restore_state(&mut self, saved: &DeviceState) -> Result<(), SnapshotError> {
        let DeviceState::Vsock(saved) = saved else {
            return Err(saved.not_for(VIRTIO_ID_VSOCK));
        };
        if !self.virtio.is_fresh() || self.muxer.snapshot_blocker().is_some() {
            return Err(SnapshotError::Invalid {
                device: "vsock",
                reason: "a restore needs a freshly created device, and this one was already \
                         set up or used"
                    .into(),
            });
        }
        state::check(saved, &self.virtio, self.config.guest_cid)?;
        self.virtio.restore(&saved.virtio);
        if self.virtio.is_activated() {
            self.reset_event = ResetEvent::Pending;
            // The transport may have nothing else to call us for soon.
            self.muxer.wake().map_err(|source| SnapshotError::Io {
                device: "vsock",
                what: "cannot wake the device to send the transport reset".into(),
                source,
            })?;
        }
        Ok(())
    }
}
