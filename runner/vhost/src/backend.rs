//! Adapts any [`VirtioDevice`] to vhost-user-backend's [`VhostUserBackendMut`].
//!
//! vhost-user-backend owns the virtqueues (inside its vrings) and runs one
//! worker thread that waits on the kick eventfds and on the device's backend
//! fd. On each event this adapter locks the vrings, lends their queues and
//! call eventfds to the device through a [`DeviceContext`], and lets the device
//! do its work.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use runner_devices::virtio::{DeviceContext, Interrupt, VirtioDevice};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as vhost-user-backend shares it. No dirty-page bitmap: these
/// devices do not support live migration (`LOG_SHMFD` is not offered).
pub type VhostMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The call eventfds of the vrings, borrowed for one event.
///
/// The raw fds stay valid while the adapter holds the vrings' write locks:
/// only `SET_VRING_CALL`, which needs the same lock, closes them.
struct VringCalls(Vec<Option<RawFd>>);

impl Interrupt for VringCalls {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        let Some(Some(fd)) = self.0.get(usize::from(queue_index)) else {
            return Ok(());
        };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own to an eventfd (see above
        // for why the fd is open).
        let ret = unsafe { libc::write(*fd, (&one as *const u64).cast(), 8) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            // A saturated counter means an interrupt is pending anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    fn signal_config_change(&self) -> io::Result<()> {
        // That needs the backend request channel, which none of our devices use.
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "config change notification over vhost-user",
        ))
    }
}

/// A [`VirtioDevice`] served over vhost-user.
pub struct DeviceBackend<D> {
    /// Behind a mutex only so `D` need not be `Sync`: `&mut self` methods use
    /// `get_mut`, and the few `&self` ones (feature and config reads) lock it.
    device: Mutex<D>,
    queue_sizes: Vec<u16>,
    mem: Option<VhostMemory>,
    /// Stands in for guest memory until the frontend sends its memory table.
    no_memory: GuestMemoryMmap<()>,
    activated: bool,
}

impl<D: VirtioDevice<GuestMemoryMmap<()>>> DeviceBackend<D> {
    pub fn new(device: D) -> Self {
        let queue_sizes = device.queue_max_sizes().to_vec();
        DeviceBackend {
            device: Mutex::new(device),
            queue_sizes,
            mem: None,
            no_memory: GuestMemoryMmap::new(),
            activated: false,
        }
    }

    /// The `data` value under which the device's backend fd must be registered
    /// with the vring epoll handler: vhost-user-backend reserves
    /// `0..=num_queues` for the queues and its exit event.
    pub fn backend_event(&self) -> u16 {
        self.queue_sizes.len() as u16 + 1
    }

    fn device_mut(&mut self) -> &mut D {
        self.device
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn device_ref(&self) -> MutexGuard<'_, D> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device_mut().reset();
            self.activated = false;
        }
    }
}

impl<D> VhostUserBackendMut for DeviceBackend<D>
where
    D: VirtioDevice<GuestMemoryMmap<()>> + 'static,
{
    type Bitmap = ();
    type Vring = VringRwLock<VhostMemory>;

    fn num_queues(&self) -> usize {
        self.queue_sizes.len()
    }

    fn max_queue_size(&self) -> usize {
        self.queue_sizes
            .iter()
            .copied()
            .max()
            .map_or(0, usize::from)
    }

    fn features(&self) -> u64 {
        self.device_ref().features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.device_mut()
            .ack_features(features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.reset();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // vhost-user-backend sets it on each vring's queue, which is where the
        // device reads it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut buf = vec![0u8; size as usize];
        self.device_ref().read_config(u64::from(offset), &mut buf);
        buf
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device_mut().write_config(u64::from(offset), buf);
        Ok(())
    }

    fn update_memory(&mut self, mem: VhostMemory) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!("vhost-user: cannot create worker exit event: {e}");
                None
            }
        }
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        // The frontend stops the rings when the driver resets the device (or
        // the VM stops): in-flight connections cannot survive that.
        tracing::debug!(queue_index, "vhost-user: ring stopped, resetting device");
        self.reset();
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Before the frontend shares guest memory no queue can be touched, but
        // host-side events must still be drained: the backend fd is
        // level-triggered and would wake this thread in a loop otherwise.
        let guard = self.mem.as_ref().map(|m| m.memory());
        let have_mem = guard.is_some();
        let mem: &GuestMemoryMmap<()> = guard.as_deref().unwrap_or(&self.no_memory);
        let mut guards: Vec<_> = vrings.iter().map(|v| v.get_mut()).collect();
        let calls = VringCalls(
            guards
                .iter()
                .map(|g| g.get_call().as_ref().map(|c| c.as_raw_fd()))
                .collect(),
        );
        let mut queues: Vec<Option<&mut Queue>> = guards
            .iter_mut()
            .map(|g| {
                if have_mem && g.is_enabled() {
                    Some(g.get_queue_mut())
                } else {
                    None
                }
            })
            .collect();
        let backend_event = self.queue_sizes.len() as u16 + 1;
        let num_queues = self.queue_sizes.len();
        let device = self
            .device
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if have_mem && !self.activated {
            device.activate().map_err(io::Error::other)?;
            self.activated = true;
        }
        let mut ctx = DeviceContext::new(mem, &mut queues, &calls);
        let result = if usize::from(device_event) < num_queues {
            device.process_queue(device_event, &mut ctx)
        } else if device_event == backend_event {
            device.process_backend(&mut ctx)
        } else {
            tracing::warn!(device_event, "vhost-user: event for nothing we registered");
            Ok(())
        };
        // An error here would end the worker thread and with it the device;
        // log it and keep serving instead: the next event may well succeed.
        if let Err(e) = result {
            tracing::error!(device_event, "vhost-user: device error: {e}");
        }
        Ok(())
    }
}
