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

use super::muxer::Muxer;
use super::packet::{RxBuffer, TxPacket};
use super::snapshot::ResetEvent;
use super::VsockConfig;
use crate::virtio::{pop_chain, DeviceContext, DeviceError, SnapshotError, VirtioDevice};

/// Index of the queue the device fills with packets for the guest.
pub const RX_QUEUE: u16 = 0;
/// Index of the queue the guest puts its packets on.
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue (the transport reset after a snapshot restore).
pub const EVENT_QUEUE: u16 = 2;
/// Maximum size of each queue. QEMU's vhost-user-vsock-device asks for 1024.
pub const QUEUE_SIZE: u16 = 1024;

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

pub(super) const FEATURES: u64 =
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
    // pub(super): `super::snapshot` saves and restores these.
    pub(super) config: VsockConfig,
    pub(super) muxer: Muxer,
    pub(super) acked_features: u64,
    pub(super) activated: bool,
    /// The transport reset a restored device owes the guest.
    pub(super) reset_event: ResetEvent,
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
            config,
            muxer,
            acked_features: 0,
            activated: false,
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
        self.activated
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    fn process_tx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.queue_mut(TX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = pop_chain(queue, mem)? {
                let head = chain.head_index();
                match TxPacket::parse(mem, chain) {
                    Ok(pkt) => self.muxer.handle_guest_packet(mem, &pkt),
                    Err(e) => crate::warn_limited!(
                        self.muxer.warnings(),
                        "vsock: dropping tx buffer: {e}"
                    ),
                }
                queue.add_used(mem, head, 0)?;
                used = true;
            }
            // Re-enabling reports buffers added meanwhile, which must not wait
            // for a kick that will never come.
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        if used {
            ctx.notify_used(TX_QUEUE)?;
        }
        Ok(())
    }

    fn process_rx<M: GuestMemory>(
        &mut self,
        ctx: &mut DeviceContext<'_, M>,
    ) -> Result<(), DeviceError> {
        // After a restore nothing goes to the guest before the transport reset.
        if !self.advance_reset_event(ctx)? {
            return Ok(());
        }
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.queue_mut(RX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = pop_chain(queue, mem)? else {
                // Out of buffers: ask for a kick when the driver adds some,
                // unless it already did in the meantime.
                if queue.enable_notification(mem)? {
                    continue;
                }
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
}

impl<M: GuestMemory> VirtioDevice<M> for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & FEATURES;
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config.guest_cid.to_le_bytes();
        crate::virtio::read_config_space(&config, offset, data);
    }

    fn warnings(&self) -> &RateLimiter {
        self.muxer.warnings()
    }

    fn activate(&mut self) -> Result<(), DeviceError> {
        self.activated = true;
        Ok(())
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
        self.acked_features = 0;
        self.activated = false;
        self.reset_event = ResetEvent::None;
    }

    fn save_state(&self) -> Result<Vec<u8>, SnapshotError> {
        self.save()
    }

    fn snapshot_blocker(&self) -> Option<SnapshotError> {
        self.blocker()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), SnapshotError> {
        self.restore(state)
    }
}
