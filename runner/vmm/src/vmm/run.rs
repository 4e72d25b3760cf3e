//! Running a built VM: vCPU threads plus the controller/device event loop
//! in the calling thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::take_snapshot::Attempt;
use super::{BootTimings, ExitReason, VmExit, Vmm, HALT_PROBE_INTERVAL};
use crate::error::{Error, Result};
use crate::vcpu::{self, VcpuControl, VcpuEvent, VcpuRunner, VcpuThread, PROBE_PARKED};
use crate::virtio_mmio::MmioTransport;

const VCPU_EVENT: u64 = 0;
const RESET_EVENT: u64 = 1;
const STOP_EVENT: u64 = 2;
/// Tokens from here on index `DeviceEvent`s.
const FIRST_DEVICE_EVENT: u64 = 16;
/// How long devices that cannot be saved yet get to settle before a
/// snapshot is attempted anyway (and fails, saying why).
const SNAPSHOT_SETTLE_TIME: Duration = Duration::from_secs(10);
/// How often a pending snapshot checks the devices again.
const SNAPSHOT_RETRY: Duration = Duration::from_millis(10);
/// How long kicked vCPUs get to answer a halt probe before we look.
const PROBE_ANSWER_TIME: Duration = Duration::from_millis(5);

/// Device work the event loop dispatches.
enum DeviceEvent {
    QueueNotify {
        transport: Arc<Mutex<MmioTransport>>,
        evt: EventFd,
        queue: u16,
    },
    Backend {
        transport: Arc<Mutex<MmioTransport>>,
    },
}

/// What the event loop waits on.
struct Events<'a> {
    epoll: &'a Epoll,
    vcpus: &'a mpsc::Receiver<(usize, VcpuEvent)>,
    /// Written by a vCPU thread after each message on `vcpus`.
    vcpus_ready: &'a EventFd,
    devices: &'a [DeviceEvent],
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vmm {
    /// Runs the VM until it ends; every vCPU thread is joined before this
    /// returns, and all KVM fds are closed when it returns.
    pub fn run(mut self) -> Result<VmExit> {
        self.restore_devices()?;
        // Read once here, for every vCPU: only a VM that may be
        // snapshotted needs it.
        let msr_list = Arc::new(match self.config.snapshot {
            Some(_) => crate::snapshot::vcpu_state::msr_list(&self._kvm)?,
            None => Vec::new(),
        });
        let epoll = Epoll::new().map_err(Error::io("epoll_create"))?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(Error::io("epoll_ctl"))
        };
        let events_ready =
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?);
        add(events_ready.as_raw_fd(), VCPU_EVENT)?;
        add(self.reset_evt.as_raw_fd(), RESET_EVENT)?;
        add(self.handle.evt.as_raw_fd(), STOP_EVENT)?;

        let mut device_events = Vec::new();
        for slot in &self.virtio {
            for (queue, evt) in slot.queue_evts.iter().enumerate() {
                let evt = evt.try_clone().map_err(Error::io("eventfd clone"))?;
                add(
                    evt.as_raw_fd(),
                    FIRST_DEVICE_EVENT + device_events.len() as u64,
                )?;
                device_events.push(DeviceEvent::QueueNotify {
                    transport: slot.transport.clone(),
                    evt,
                    queue: queue as u16,
                });
            }
            if let Some(fd) = lock(&slot.transport).backend_fd() {
                add(fd, FIRST_DEVICE_EVENT + device_events.len() as u64)?;
                device_events.push(DeviceEvent::Backend {
                    transport: slot.transport.clone(),
                });
            }
        }

        let (tx, rx) = mpsc::channel();
        let first_exit = Arc::new(OnceLock::new());
        let run_start = Instant::now();
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let mmio = Arc::new(std::mem::take(&mut self.mmio));
        let mut threads: Vec<VcpuThread> = Vec::new();
        let mut spawn_error = None;
        for (index, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let runner = VcpuRunner {
                index,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: Arc::new(VcpuControl::default()),
                events: tx.clone(),
                events_ready: events_ready.clone(),
                first_exit: first_exit.clone(),
                hook: self.hooks.vcpu.clone(),
                msr_list: msr_list.clone(),
            };
            match vcpu::spawn(runner) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(Error::io("spawning vCPU thread")(e));
                    break;
                }
            }
        }

        let hook = match (spawn_error, &self.hooks.event_loop) {
            (Some(e), _) => Err(e),
            (None, Some(hook)) => hook().map_err(Error::ThreadHook),
            (None, None) => Ok(()),
        };
        let reason = hook.and_then(|()| {
            let events = Events {
                epoll: &epoll,
                vcpus: &rx,
                vcpus_ready: &events_ready,
                devices: &device_events,
            };
            self.control_loop(&events, &threads, run_start)
        });
        for t in &threads {
            t.control.request_stop();
            t.kick();
        }
        for t in threads {
            t.join();
        }
        let reason = reason?;
        let since = |t: Option<&Instant>| t.map(|t| t.saturating_duration_since(self.created));
        let timings = BootTimings {
            build: self.build_time,
            first_exit: since(first_exit.get()),
            first_serial_byte: since(self.first_serial_byte.get()),
            total: self.created.elapsed(),
        };
        tracing::debug!(%reason, ?timings, "microVM ended");
        Ok(VmExit { reason, timings })
    }

    fn control_loop(
        &self,
        sources: &Events<'_>,
        threads: &[VcpuThread],
        run_start: Instant,
    ) -> Result<ExitReason> {
        let (epoll, rx, device_events) = (sources.epoll, sources.vcpus, sources.devices);
        let deadline = self.config.timeout.map(|t| run_start + t);
        let mut next_probe = run_start + HALT_PROBE_INTERVAL;
        let mut probe_check: Option<Instant> = None;
        // When a snapshot was asked for: devices still busy (a vsock
        // connection closing) are given time to settle first.
        let mut snapshot_asked: Option<Instant> = None;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let now = Instant::now();
            if let Some(asked) = snapshot_asked {
                // The cheap check first: no pausing the guest while a
                // connection is still closing.
                let last_chance = now >= asked + SNAPSHOT_SETTLE_TIME;
                if last_chance || self.snapshot_blocker().is_none() {
                    match self.try_snapshot(rx, threads, last_chance) {
                        Attempt::Ended(reason) => return Ok(reason),
                        Attempt::Busy(why) => tracing::debug!(
                            %why,
                            "snapshot: a device was busy once the vCPUs stopped; they run on"
                        ),
                    }
                }
            }
            if let (Some(d), Some(t)) = (deadline, self.config.timeout) {
                if now >= d {
                    return Ok(ExitReason::Timeout(t));
                }
            }
            // A vCPU halted with interrupts off stays halted (nothing in
            // this VM sends NMI/INIT), so one probe where every vCPU is
            // parked is final.
            if probe_check.is_some_and(|c| now >= c) {
                probe_check = None;
                if threads
                    .iter()
                    .all(|t| t.control.probe_result() == PROBE_PARKED)
                {
                    return Ok(ExitReason::Halted);
                }
            }
            if now >= next_probe {
                for t in threads {
                    t.control.request_probe();
                    t.kick();
                }
                probe_check = Some(now + PROBE_ANSWER_TIME);
                next_probe = now + HALT_PROBE_INTERVAL;
            }
            let mut wake = next_probe;
            if let Some(c) = probe_check {
                wake = wake.min(c);
            }
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if snapshot_asked.is_some() {
                wake = wake.min(now + SNAPSHOT_RETRY);
            }
            let wait = wake.saturating_duration_since(now);
            let n = match epoll.wait(wait.as_millis().max(1) as i32, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    VCPU_EVENT => {
                        // Level-triggered: drain it, or the loop spins
                        // after a vCPU paused and ran on.
                        let _ = sources.vcpus_ready.read();
                        while let Ok((index, event)) = rx.try_recv() {
                            if let Some(reason) = event.exit_reason(index) {
                                return Ok(reason);
                            }
                        }
                    }
                    RESET_EVENT => return Ok(ExitReason::Reset),
                    STOP_EVENT if self.handle.snapshot.load(Ordering::SeqCst) => {
                        // Level-triggered: drain it, or the loop spins.
                        let _ = self.handle.evt.read();
                        snapshot_asked.get_or_insert(now);
                    }
                    STOP_EVENT => return Ok(ExitReason::Stopped),
                    token => {
                        let index = token.saturating_sub(FIRST_DEVICE_EVENT) as usize;
                        match device_events.get(index) {
                            Some(DeviceEvent::QueueNotify {
                                transport,
                                evt,
                                queue,
                            }) => {
                                let _ = evt.read();
                                tracing::trace!(queue, "virtio queue notify");
                                lock(transport).process_queue(*queue);
                            }
                            Some(DeviceEvent::Backend { transport }) => {
                                tracing::trace!("virtio device backend event");
                                lock(transport).process_backend();
                            }
                            None => tracing::warn!(token, "event for an unknown token"),
                        }
                    }
                }
            }
        }
    }
}
