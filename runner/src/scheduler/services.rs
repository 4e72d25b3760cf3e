//! A job's services (`services:` in the pipeline): each is a VM of its own,
//! booted beside the job's, on a private segment that only the job and its
//! services share (`runner_machine::network::segment`), where each reaches
//! the others by name.
//!
//! Each service has a thread (scoped to the job) that boots its VM, starts
//! `run` on one agent connection and polls `ready` on another, then keeps
//! watch until the job lets it go. The job's first step waits until every
//! `ready` has passed. A service that does not boot, whose `run` fails, or
//! that is not ready in time fails the job as an error naming it, with the
//! tail of its log; so does one whose VM dies or whose `run` fails while
//! the job runs. Every service VM, and the switch, is a guarded child: they
//! end with the job, and with the runner however it ends.
//!
//! With warm start (kvm), a service's VM is a clone of a snapshot taken
//! once its `ready` first passed ([`prepare`]): its `run` is not run
//! again, and one `ready` confirms it before the job's first step.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::Scope;
use std::time::{Duration, Instant};

use runner_machine::network::segment::{SegmentNic, Switch};
use runner_machine::{Vm, VmSpec};

mod guest;
mod prepare;

use self::guest::{open_session, poll_ready, request};
use super::context::RunContext;
use crate::plan::{PlannedJob, PlannedService};
use crate::results::{JobLog, Phase, PhaseKind, ServiceResult};
use crate::session::{wait_for_agent, AgentSession, Canceller};

/// Lines of a failed service's log quoted in the job's error.
const LOG_TAIL_LINES: usize = 15;
/// How often a ready service's VM is checked while the job runs.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The running services of one job, and their segment.
pub(super) struct JobServices {
    /// The job's own NIC on the segment.
    pub(super) job_nic: Arc<SegmentNic>,
    /// Every member's name and address, for `/etc/hosts`.
    table: Vec<(String, Ipv4Addr)>,
    services: Vec<ServiceHandle>,
    /// Cancels the job's running step when a service fails.
    on_failure: OnFailure,
    /// Set when the job lets its services go, however it ended.
    shutdown: Arc<Shutdown>,
    /// Dropped last (field order is drop order): the services are told to
    /// stop first. Their VMs may outlive it by a moment, seeing their
    /// NIC's connection close, which is harmless.
    _switch: Switch,
}

/// What became of each service, kept by its thread and read by the job
/// once every thread has ended (whatever way the job ended).
#[derive(Default)]
pub(super) struct ServiceRecords(Mutex<Vec<Record>>);

type Record = Arc<Mutex<ServiceResult>>;

impl ServiceRecords {
    fn add(&self, record: Record) {
        lock(&self.0).push(record);
    }

    pub(super) fn results(&self) -> Vec<ServiceResult> {
        let records = lock(&self.0);
        records.iter().map(|r| lock(r).clone()).collect()
    }
}

/// The job letting its services go: a service still booting or waiting
/// for `ready` stops there rather than making the job's end wait for it.
#[derive(Default)]
struct Shutdown {
    now: AtomicBool,
    /// The connections on which `ready` runs, to cut a long one short.
    ready_runs: Mutex<Vec<Canceller>>,
}

impl Shutdown {
    fn is_on(&self) -> bool {
        self.now.load(Ordering::SeqCst)
    }
}

/// What a service's thread does when the service fails during the job.
type OnFailure = Arc<Mutex<Option<Canceller>>>;

/// The job's side of one service's thread.
struct ServiceHandle {
    name: String,
    log: JobLog,
    ready: mpsc::Receiver<Result<Duration, String>>,
    /// What became of it, its failure included, as its thread keeps it.
    record: Record,
    /// Dropping it tells the thread to stop its VM.
    _stop: mpsc::Sender<()>,
}

impl JobServices {
    /// Starts the segment and every service's VM, in parallel; returns at
    /// once. `log_path` names a service's log file; `clock` is the job's;
    /// each service's result goes to `records`.
    pub(super) fn start<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        job: &'env PlannedJob,
        ctx: &'env RunContext<'env>,
        clock: Instant,
        log_path: impl Fn(&str) -> std::path::PathBuf,
        records: &ServiceRecords,
    ) -> Result<JobServices, String> {
        let mut names = vec![job.name.clone()];
        names.extend(job.services.iter().map(|s| s.name.clone()));
        let (switch, nics) =
            Switch::start(&names).map_err(|e| format!("starting the services' network: {e}"))?;
        let table: Vec<(String, Ipv4Addr)> = nics
            .iter()
            .map(|nic| (nic.name.clone(), nic.address))
            .collect();
        let mut nics = nics.into_iter().map(Arc::new);
        let job_nic = nics.next().expect("the job is the segment's first member");
        let mut services = Vec::new();
        let on_failure = OnFailure::default();
        let shutdown = Arc::new(Shutdown::default());
        for (service, nic) in job.services.iter().zip(nics) {
            let path = log_path(&service.name);
            let log = crate::results::JobLog::with_limit(&path, ctx.options.log_limit)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            let (ready_tx, ready) = mpsc::channel();
            let (stop, stopped) = mpsc::channel();
            let record = Arc::new(Mutex::new(ServiceResult {
                name: service.name.clone(),
                ready_at: None,
                failure: None,
                log_path: path.clone(),
                timeline: Vec::new(),
            }));
            records.add(record.clone());
            let watch = Watch {
                clock,
                record: record.clone(),
                service,
                job,
                ctx,
                nic,
                table: table.clone(),
                log: log.clone(),
                on_failure: on_failure.clone(),
                shutdown: shutdown.clone(),
            };
            scope.spawn(move || watch.run(scope, ready_tx, stopped));
            services.push(ServiceHandle {
                name: service.name.clone(),
                log,
                ready,
                record,
                _stop: stop,
            });
        }
        Ok(JobServices {
            job_nic,
            table,
            services,
            on_failure,
            shutdown,
            _switch: switch,
        })
    }

    /// From now on, a service that fails cancels the job's running step
    /// (through `canceller`): a step waiting on a dead service would
    /// otherwise wait until its timeout.
    pub(super) fn cancel_steps_with(&self, canceller: Canceller) {
        *lock(&self.on_failure) = Some(canceller);
    }

    /// What the job's agent is asked to configure on its segment NIC.
    pub(super) fn job_network(&self) -> agent_protocol::NetworkConfig {
        self.job_nic.guest_config(&self.table)
    }

    /// Waits until every service is ready; the first that is not fails the
    /// job with this error.
    pub(super) fn wait_ready(&self, job_log: &JobLog) -> Result<(), String> {
        for service in &self.services {
            let outcome = service
                .ready
                .recv()
                .unwrap_or_else(|_| Err("stopped before it was ready".into()));
            match outcome {
                Ok(took) => job_log.note(&format!(
                    "==> service {} is ready ({:.1} s after the job started it)",
                    service.name,
                    took.as_secs_f64()
                )),
                Err(why) => return Err(service.error(&why)),
            }
        }
        Ok(())
    }

    /// The first service that failed, as the job's error. Once
    /// [`Self::wait_ready`] passed, that is a failure during the job.
    pub(super) fn failure(&self) -> Option<String> {
        self.services.iter().find_map(|service| {
            let failure = lock(&service.record).failure.clone();
            failure.map(|why| service.error(&why))
        })
    }
}

impl Drop for JobServices {
    fn drop(&mut self) {
        self.shutdown.now.store(true, Ordering::SeqCst);
        let runs = lock(&self.shutdown.ready_runs);
        for run in runs.iter() {
            run.cancel();
        }
    }
}

impl ServiceHandle {
    /// The job's error for this service: what happened on the first line,
    /// then the end of the service's log.
    fn error(&self, why: &str) -> String {
        self.log.flush();
        let path = self.log.path();
        let first = why.lines().next().unwrap_or_default();
        let mut message = format!(
            "{} (its log: {})",
            crate::results::service_error(&self.name, first),
            path.display()
        );
        for line in runner_machine::tail_lines(path, LOG_TAIL_LINES) {
            message.push_str("\n  ");
            message.push_str(&line);
        }
        message
    }
}

/// Everything one service's thread needs.
struct Watch<'env> {
    /// The job's clock, which the record's times are on.
    clock: Instant,
    record: Record,
    service: &'env PlannedService,
    job: &'env PlannedJob,
    ctx: &'env RunContext<'env>,
    nic: Arc<SegmentNic>,
    table: Vec<(String, Ipv4Addr)>,
    log: JobLog,
    on_failure: OnFailure,
    shutdown: Arc<Shutdown>,
}

impl<'env> Watch<'env> {
    fn run<'scope>(
        self,
        scope: &'scope Scope<'scope, 'env>,
        ready: mpsc::Sender<Result<Duration, String>>,
        stop: mpsc::Receiver<()>,
    ) {
        let started = Instant::now();
        let Some((mut vm, mut session)) = self.boot(&ready) else {
            return;
        };
        if self.shutdown.is_on() {
            self.log
                .note("==> stopped with the job before it was ready");
            return;
        }
        let waiting = Instant::now();
        // Set before the VM is killed: `run` ending then is no failure.
        let stopping = Arc::new(AtomicBool::new(false));
        if vm.restore_generation().is_some() {
            self.log.note(
                "==> restored from a snapshot taken once `ready` passed: `run` is not run again",
            );
        } else if let Err(why) = self.start_run(vm.as_ref(), scope, &stopping) {
            self.failed(&why);
            let _ = ready.send(Err(why));
            return;
        }
        let polled = self.poll_ready(&mut session);
        self.phase(PhaseKind::Services, waiting);
        match polled {
            Ok(()) => {
                self.log.note(&format!(
                    "==> ready, {:.1} s after the job started it",
                    self.clock.elapsed().as_secs_f64()
                ));
                self.with_record(|r| r.ready_at = Some(self.clock.elapsed()));
                let _ = ready.send(Ok(started.elapsed()));
            }
            Err(why) => {
                self.log.note(&format!("==> {why}"));
                // Let go by its job, it did not fail.
                if !self.shutdown.is_on() {
                    self.failed(&why);
                }
                let _ = ready.send(Err(why));
                stopping.store(true, Ordering::SeqCst);
                return;
            }
        }
        // Keep watch until the job lets the service go.
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WATCH_EVERY) {
            if let Some(how) = vm.exited() {
                let why = format!("stopped during the job: its VM ended ({how})");
                self.log.note(&format!("==> {why}"));
                self.failed(&why);
            }
            // Its VM's end, or its `run`'s failure (from `run`'s thread).
            if lock(&self.record).failure.is_some() {
                if let Some(canceller) = lock(&self.on_failure).as_ref() {
                    canceller.cancel();
                }
                break;
            }
        }
        stopping.store(true, Ordering::SeqCst);
        self.log.note("==> stopped with the job");
        self.log.flush();
        // Dropping the VM kills it; its `run` connection then ends.
    }

    fn with_record(&self, f: impl FnOnce(&mut ServiceResult)) {
        f(&mut lock(&self.record));
    }

    fn phase(&self, kind: PhaseKind, began: Instant) {
        let phase = Phase::until_now(kind, self.clock, began);
        self.with_record(|r| r.timeline.push(phase));
    }

    fn failed(&self, why: &str) {
        mark_failed(&self.record, why);
    }

    /// Boots the service's VM and configures its NIC; on failure, says why
    /// on `ready`.
    fn boot(
        &self,
        ready: &mpsc::Sender<Result<Duration, String>>,
    ) -> Option<(Box<dyn Vm>, AgentSession)> {
        let fail = |why: String| {
            self.log.note(&format!("==> {why}"));
            self.failed(&why);
            let _ = ready.send(Err(why));
            None
        };
        let Some((kernel, rootfs)) = self.ctx.images.get(&self.service.image).cloned() else {
            return fail("has no resolved image".into());
        };
        let spec = VmSpec {
            name: format!("{} service {}", self.job.name, self.service.name),
            kernel,
            rootfs,
            vcpus: self.service.vcpus,
            memory_mib: self.service.memory_mib.try_into().unwrap_or(u32::MAX),
            boot_timeout: self.ctx.options.boot_timeout,
            serial_log_limit: self.ctx.options.log_limit,
            network: Default::default(),
            segment: Some(self.nic.clone()),
            prepare: Some(Arc::new(prepare::ServicePreparation::new(
                self.service,
                &self.nic,
                self.log.clone(),
            ))),
            caches: Vec::new(),
        };
        self.log.note(&format!(
            "==> booting service {} ({})",
            self.service.name,
            self.ctx.backend.name()
        ));
        let booting = Instant::now();
        let booted = self.ctx.backend.start(&spec).and_then(|mut vm| {
            let session = wait_for_agent(vm.as_mut(), spec.boot_timeout)?;
            Ok((vm, session))
        });
        self.phase(PhaseKind::Boot, booting);
        let (vm, mut session) = match booted {
            Ok(booted) => booted,
            Err(e) => {
                let tail = e.serial_tail().join("\n  ");
                return fail(format!("did not boot: {e}; last console lines:\n  {tail}"));
            }
        };
        let how = match vm.restore_generation() {
            Some(_) => "restored",
            None => "booted",
        };
        self.log.note(&format!(
            "==> {how}: its agent answered {:.1} s after the job started it",
            self.clock.elapsed().as_secs_f64()
        ));
        if let Err(e) = session.configure_network(&self.nic.guest_config(&self.table)) {
            return fail(format!("could not configure its network: {e}"));
        }
        Some((vm, session))
    }

    /// Starts `run` on a connection of its own, streaming its output into
    /// the service's log; when it ends with a failure (or its VM goes
    /// away) before `stopping`, the service's record says how.
    fn start_run<'scope>(
        &self,
        vm: &dyn Vm,
        scope: &'scope Scope<'scope, 'env>,
        stopping: &Arc<AtomicBool>,
    ) -> Result<(), String> {
        let mut session = open_session(vm).map_err(|e| format!("could not start `run`: {e}"))?;
        let request = request(self.service, &self.service.run, None);
        let (log, stopping, record) = (self.log.clone(), stopping.clone(), self.record.clone());
        self.log.note(&format!("==> run: {}", self.service.run));
        scope.spawn(move || {
            let exit = session.exec(request, None, &mut |_, bytes| log.write(bytes));
            let why = match exit {
                // A `run` that starts a daemon and returns is fine: what it
                // started goes on.
                Ok(exit) if exit.success() => {
                    log.note("==> run: exited 0");
                    None
                }
                Ok(exit) => Some(format!("`run` failed: {}", exit.describe())),
                Err(e) => Some(format!("lost its agent while `run` ran: {e}")),
            };
            if let Some(why) = why.filter(|_| !stopping.load(Ordering::SeqCst)) {
                log.note(&format!("==> {why}"));
                mark_failed(&record, &why);
            }
        });
        Ok(())
    }

    /// Tries `ready` (see [`poll_ready`]) until the service fails or the
    /// job lets it go.
    fn poll_ready(&self, session: &mut AgentSession) -> Result<(), String> {
        lock(&self.shutdown.ready_runs).push(session.canceller());
        poll_ready(session, self.service, &self.log, || {
            if let Some(why) = lock(&self.record).failure.clone() {
                return Some(why);
            }
            self.shutdown
                .is_on()
                .then(|| "stopped with the job before it was ready".to_string())
        })
    }
}

/// Records why a service failed, on one line. The first cause stays: a
/// VM that ended also loses `run`'s connection, which says less.
fn mark_failed(record: &Record, why: &str) {
    let line = why.lines().next().unwrap_or_default();
    lock(record).failure.get_or_insert_with(|| line.to_string());
}

/// A lock whose holder cannot have left it half-changed: every writer
/// here sets whole fields.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
