//! One job in one fresh VM: boot, copy the files in, run the steps in order,
//! copy the artifacts out, power off. The VM is destroyed whatever happens
//! (it is dropped at the end of [`run`]).

use std::time::{Duration, Instant, SystemTime};

use agent_protocol::Stream;

use super::artifacts::collect_artifacts;
use super::caches::JobCaches;
use super::context::RunContext;
use super::imported::{Importer, Scope};
use super::retry;
use super::services::{JobServices, ServiceRecords};
use crate::pipeline::{files, host_scope, Network};
use crate::plan::{PlannedJob, PlannedStep};
use crate::report::{OutputStream, RunEvent};
use crate::results::{
    Attempt, DiskUse, JobLog, JobOutcome, JobResult, MemoryUse, NetworkUse, Phase, PhaseKind,
    StepResult, StepStatus, TimeLimit,
};
use crate::session::wait_for_agent;
use crate::session::{AgentSession, SessionError, HOST_GRACE};
use runner_machine::{Vm, VmSpec};

/// Time the artifacts always get, even when the job's own time is up:
/// after a timeout is when they matter most.
const ARTIFACT_TIME: Duration = Duration::from_secs(60);

pub(super) fn run(job: &PlannedJob, ctx: &RunContext, attempt: Attempt) -> JobResult {
    let clock = Instant::now();
    let mut result = JobResult::for_job(job, SystemTime::now());
    result.attempt = attempt;
    ctx.reporter.report(&RunEvent::JobStarted { job });
    // Scoped: a job's services each have a thread, which end with it.
    let services = ServiceRecords::default();
    let ran =
        std::thread::scope(|scope| run_in_vm(job, ctx, clock, &mut result, (scope, &services)));
    result.services = services.results();
    result.outcome = match ran {
        Ok(()) => JobResult::outcome_from_steps(&result.steps),
        Err(outcome) => outcome,
    };
    result.duration = clock.elapsed();
    ctx.reporter.report(&RunEvent::JobFinished {
        job,
        result: &result,
    });
    result
}

fn run_in_vm<'scope, 'env>(
    job: &'env PlannedJob,
    ctx: &'env RunContext<'env>,
    clock: Instant,
    result: &mut JobResult,
    (scope, records): (&'scope std::thread::Scope<'scope, 'env>, &ServiceRecords),
) -> Result<(), JobOutcome> {
    let log_path = ctx
        .options
        .out_dir
        .join("logs")
        .join(retry::log_name(&job.slug, result.attempt));
    let log =
        JobLog::with_limit(&log_path, ctx.options.log_limit).map_err(|e| JobOutcome::Error {
            message: format!("creating {}: {e}", log_path.display()),
        })?;
    result.log_path = Some(log_path);
    // Collect the files before booting: a typo in `files` should not cost a boot.
    let collected = if ctx.options.grants.host_files {
        files::collect(&job.files).map_err(|e| e.to_string())
    } else {
        host_scope::collect_within(&job.files, ctx.workspace).map_err(|e| e.to_string())
    }
    .map_err(|message| JobOutcome::Error { message })?;

    let (kernel, rootfs) =
        ctx.images
            .get(&job.image)
            .cloned()
            .ok_or_else(|| JobOutcome::Error {
                message: "no image was resolved for this job".into(),
            })?;
    let cache_scope = runner_machine::caches::Scope::new(
        &ctx.options.grants.cache.scope,
        ctx.options.grants.cache.protected,
    );
    let mut caches =
        JobCaches::checkout(job, ctx.options.caches.as_ref(), &cache_scope, &log, result);
    // Booting beside the job's VM from here on.
    let services = start_services(job, ctx, (clock, result.attempt), &log, (scope, records))?;
    let spec = VmSpec {
        name: job.name.clone(),
        kernel,
        rootfs,
        vcpus: job.vcpus,
        memory_mib: job.memory_mib.try_into().unwrap_or(u32::MAX),
        boot_timeout: ctx.options.boot_timeout,
        serial_log_limit: ctx.options.log_limit,
        network: ctx.options.grants.nic(&job.network),
        segment: services.as_ref().map(|s| s.job_nic.clone()),
        prepare: None,
        caches: caches.disks(),
    };
    ctx.reporter.report(&RunEvent::JobProgress {
        job,
        activity: "booting",
    });
    log.note(&format!(
        "==> booting {} ({})",
        job.name,
        ctx.backend.name()
    ));
    let boot_error = |e: runner_machine::BootError| JobOutcome::BootError {
        message: e.to_string(),
        serial_tail: e.serial_tail().to_vec(),
    };
    let booting = Instant::now();
    let booted = ctx.backend.start(&spec).and_then(|mut vm| {
        let session = wait_for_agent(vm.as_mut(), spec.boot_timeout)?;
        Ok((vm, session))
    });
    // A failed boot is on the timeline too: it is where the time went.
    result
        .timeline
        .push(Phase::until_now(PhaseKind::Boot, clock, booting));
    let (mut vm, mut session) = booted.map_err(boot_error)?;
    result.boot = Some(clock.elapsed());
    if spec.network.is_on() {
        // Before anything of the job's runs: its first step may need it.
        let interface = session
            .configure_network(&runner_machine::network::guest_config())
            .map_err(|e| JobOutcome::Error {
                message: format!("configuring the guest's network: {e}"),
            })?;
        log.note(&format!("==> network: {interface} is up"));
    }
    if let Some(services) = &services {
        let interface = session
            .configure_network(&services.job_network())
            .map_err(|e| JobOutcome::Error {
                message: format!("configuring the guest's network with its services: {e}"),
            })?;
        log.note(&format!("==> services' network: {interface} is up"));
        ctx.reporter.report(&RunEvent::JobProgress {
            job,
            activity: "waiting for services",
        });
        let waiting = Instant::now();
        let ready = services.wait_ready(&log);
        result
            .timeline
            .push(Phase::until_now(PhaseKind::Services, clock, waiting));
        ready.map_err(|message| JobOutcome::Error { message })?;
        services.cancel_steps_with(session.canceller());
    }
    // Before the files: a cache path may lie under where they go.
    caches.mount(&mut session, &log, result);
    // The job's memory use and disk writes are counted from here (boot
    // and set-up are not its doing); an agent that cannot tell leaves them
    // unmeasured.
    let metered = session.usage().ok().flatten().is_some();
    let written_before_steps = vm.disk_written();
    // The agent enforces the job's timeout on each step; this is the
    // host's own bound on everything else (file copies, a guest that never
    // reports), with the same grace as a step.
    let job_deadline = clock + job.timeout + HOST_GRACE;
    session.set_deadline(Some(job_deadline));

    if !collected.is_empty() {
        ctx.reporter.report(&RunEvent::JobProgress {
            job,
            activity: "copying files",
        });
        log.note(&format!("==> copying {} files in", collected.len()));
        let copying = Instant::now();
        let copied = session
            .put_tar("/", |out| {
                files::write_tar(&collected, out)
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            })
            .map_err(|e| JobOutcome::Error {
                message: match e.is_host_deadline() {
                    true => format!(
                        "copying files into the guest: {e} ({})",
                        TimeLimit::Job(job.timeout)
                    ),
                    false => format!("copying files into the guest: {e}"),
                },
            });
        result
            .timeline
            .push(Phase::until_now(PhaseKind::CopyFiles, clock, copying));
        copied?;
    }

    let mut reports = Importer::new(job, ctx.options);
    let mut broken = None;
    for step in &job.steps {
        if let Some(reason) = &broken {
            result.steps.push(StepResult::skipped(&step.name, reason));
            continue;
        }
        if let Some(message) = services.as_ref().and_then(JobServices::failure) {
            // A service the steps rely on is gone: what follows would only
            // fail for that reason, less clearly.
            let reason = message.lines().next().unwrap_or_default().to_string();
            for rest in &job.steps[step.index..] {
                result.steps.push(StepResult::skipped(&rest.name, &reason));
            }
            log.note(&format!("==> {message}"));
            log.flush();
            meter_vm(job, vm.as_mut(), result);
            return Err(JobOutcome::Error { message });
        }
        let time_left = || clock.elapsed() < job.timeout;
        let job_attempt = result.attempt;
        let mut phases = Vec::new();
        let step_result = retry::run_step(step.retry, time_left, |attempt| {
            let remaining = job.timeout.saturating_sub(clock.elapsed());
            let mut step_run = StepRun {
                session: &mut session,
                vm: vm.as_mut(),
                log: &log,
                job_attempt,
                attempt,
            };
            let began = Instant::now();
            let step_result = run_step(job, step, &mut step_run, remaining, ctx);
            let kind = PhaseKind::Step {
                index: step.index,
                attempt: attempt.number,
            };
            phases.push(Phase::until_now(kind, clock, began));
            step_result
        });
        result.timeline.extend(phases);
        if step_result.status != StepStatus::Passed {
            broken = Some(format!("an earlier step failed: `{}`", step.name));
        }
        if let StepStatus::TimedOut {
            host_deadline: true,
            ..
        } = step_result.status
        {
            // The guest ignored its own deadline: nothing more is asked of
            // it, not even the artifacts. Returning drops (kills) the VM.
            result.steps.push(step_result);
            let reason = format!("the VM was killed at the host deadline in `{}`", step.name);
            for rest in &job.steps[step.index + 1..] {
                result.steps.push(StepResult::skipped(&rest.name, &reason));
            }
            log.note(&format!("==> {reason}"));
            log.flush();
            meter_vm(job, vm.as_mut(), result);
            return Ok(());
        }
        let session_lost = matches!(step_result.status, StepStatus::Error { .. });
        result.steps.push(step_result);
        if !session_lost && !step.reports.is_empty() {
            // Read now, failed or not: a later step may overwrite them,
            // and a failing step's report is the one that matters.
            ctx.reporter.report(&RunEvent::JobProgress {
                job,
                activity: "reading test reports",
            });
            let (files, workdir) = (&step.reports, &step.workdir);
            let reading = Instant::now();
            reports.collect(
                Scope::Step(step.index),
                files,
                workdir,
                &mut session,
                &log,
                result,
            );
            result
                .timeline
                .push(Phase::until_now(PhaseKind::ImportedTests, clock, reading));
        }
        if !session_lost {
            if let Some(failed) = result.steps.last() {
                let attempt = result.attempt;
                super::debug::after_step(job, step, failed, attempt, &mut session, &log, ctx);
            }
        }
        if session_lost {
            // Without an agent nothing else can run or be collected.
            let message = format!("lost the guest agent during `{}`", step.name);
            log.flush();
            meter_vm(job, vm.as_mut(), result);
            return Err(JobOutcome::Error { message });
        }
    }

    if metered {
        // What the steps wrote, as our block device counted it.
        let written = written_before_steps
            .zip(vm.disk_written())
            .map(|(before, after)| after.saturating_sub(before));
        meter_guest(&mut session, written, &log, result);
    }
    session.set_deadline(Some(job_deadline.max(Instant::now() + ARTIFACT_TIME)));
    if !job.reports.is_empty() {
        ctx.reporter.report(&RunEvent::JobProgress {
            job,
            activity: "reading test reports",
        });
        let (files, workdir) = (&job.reports, &job.workdir);
        let reading = Instant::now();
        reports.collect(Scope::Job, files, workdir, &mut session, &log, result);
        result
            .timeline
            .push(Phase::until_now(PhaseKind::ImportedTests, clock, reading));
    }
    if !job.artifacts.is_empty() {
        let collecting = Instant::now();
        collect_artifacts(job, ctx, &mut session, &log, result);
        result
            .timeline
            .push(Phase::until_now(PhaseKind::Artifacts, clock, collecting));
    }
    let service_failed = services.as_ref().and_then(JobServices::failure);
    // After the artifacts and reports, which may lie on a cache.
    let succeeded = JobResult::outcome_from_steps(&result.steps) == JobOutcome::Passed
        && service_failed.is_none();
    let pending = caches.finish(&mut session, succeeded, &log, result);
    log.flush();
    // No clean power-off: the root is read-only, the overlay is thrown away,
    // the artifacts are out and the caches to keep are unmounted, so the
    // guest has nothing worth flushing. Dropping the VM kills it at once,
    // which is what makes it disposable.
    drop(session);
    meter_vm(job, vm.as_mut(), result);
    drop(vm);
    drop(services);
    if !pending.is_empty() {
        ctx.reporter.report(&RunEvent::JobProgress {
            job,
            activity: "committing caches",
        });
        let committing = Instant::now();
        pending.commit(&log, result);
        log.flush();
        result
            .timeline
            .push(Phase::until_now(PhaseKind::Caches, clock, committing));
    }
    match service_failed {
        Some(message) => {
            log.note(&format!("==> {message}"));
            log.flush();
            Err(JobOutcome::Error { message })
        }
        None => Ok(()),
    }
}

/// The job's services, started (their VMs boot in the background), or
/// `None` without services.
fn start_services<'scope, 'env>(
    job: &'env PlannedJob,
    ctx: &'env RunContext<'env>,
    (clock, attempt): (Instant, Attempt),
    log: &JobLog,
    (scope, records): (&'scope std::thread::Scope<'scope, 'env>, &ServiceRecords),
) -> Result<Option<JobServices>, JobOutcome> {
    if job.services.is_empty() {
        return Ok(None);
    }
    ctx.reporter.report(&RunEvent::JobProgress {
        job,
        activity: "starting services",
    });
    let logs = ctx.options.out_dir.join("logs");
    let log_path = |service: &str| {
        let slug = format!("{}.service-{service}", job.slug);
        logs.join(retry::log_name(&slug, attempt))
    };
    let services = JobServices::start(scope, job, ctx, clock, log_path, records)
        .map_err(|message| JobOutcome::Error { message })?;
    for service in &job.services {
        log.note(&format!(
            "==> service {}: booting, its log is {}",
            service.name,
            log_path(&service.name).display()
        ));
    }
    Ok(Some(services))
}

/// What one attempt of a step runs with.
struct StepRun<'a> {
    session: &'a mut AgentSession,
    vm: &'a mut dyn Vm,
    log: &'a JobLog,
    job_attempt: Attempt,
    attempt: Attempt,
}

fn run_step(
    job: &PlannedJob,
    step: &PlannedStep,
    run: &mut StepRun,
    remaining: Duration,
    ctx: &RunContext,
) -> StepResult {
    let (session, vm, log) = (&mut *run.session, &mut *run.vm, run.log);
    ctx.reporter.report(&RunEvent::StepStarted { job, step });
    let of = match run.attempt.of {
        1 => String::new(),
        _ => format!(" ({})", run.attempt),
    };
    log.note(&format!("==> step {}: {}{of}", step.index + 1, step.name));
    let clock = Instant::now();
    let mut request = step.exec_request(Some(remaining));
    // Which attempt this is, for scripts that want to know (and for
    // deterministic tests of retries).
    request.env.extend([
        (
            "RUNNER_ATTEMPT".to_string(),
            run.job_attempt.number.to_string(),
        ),
        (
            "RUNNER_STEP_ATTEMPT".to_string(),
            run.attempt.number.to_string(),
        ),
    ]);
    let limit = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(remaining);
    // Which configured limit the request's timeout came from, for the report.
    let by = match step.timeout {
        Some(own) if own <= remaining => TimeLimit::Step(own),
        _ => TimeLimit::Job(job.timeout),
    };
    let mut stdout = log.capture(ctx.options.output_limit);
    let mut stderr = log.capture(ctx.options.output_limit);
    let exec = session.exec(request, None, &mut |stream, bytes| {
        let which = match stream {
            Stream::Stderr => {
                stderr.push(bytes);
                OutputStream::Stderr
            }
            _ => {
                stdout.push(bytes);
                OutputStream::Stdout
            }
        };
        ctx.reporter.report(&RunEvent::StepOutput {
            job,
            step,
            stream: which,
            chunk: bytes,
        });
    });
    let status = match exec {
        Ok(exit) if exit.timed_out => StepStatus::TimedOut {
            limit,
            by,
            exit: Some(exit),
            host_deadline: false,
        },
        Ok(exit) if exit.success() => StepStatus::Passed,
        Ok(exit) => StepStatus::Failed { exit },
        Err(SessionError::ExecDeadline { .. } | SessionError::Deadline) => StepStatus::TimedOut {
            limit,
            by,
            exit: None,
            host_deadline: true,
        },
        Err(e) => StepStatus::Error {
            message: format!("{e}; {}", runner_machine::vm_state_report(vm)),
        },
    };
    log.note(&format!(
        "==> step {}: {}",
        step.index + 1,
        status.describe()
    ));
    let result = StepResult {
        name: step.name.clone(),
        status,
        duration: clock.elapsed(),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
        attempt: run.attempt,
        earlier_attempts: Vec::new(),
    };
    ctx.reporter.report(&RunEvent::StepFinished {
        job,
        step,
        result: &result,
    });
    result
}

/// What the host measured of the VM, read while it still runs: its
/// vCPUs' time, and what its NIC touched.
fn meter_vm(job: &PlannedJob, vm: &mut dyn Vm, result: &mut JobResult) {
    result.metering.cpu = vm.cpu_time();
    result.metering.network = vm.network_use().map(|report| NetworkUse {
        audit: matches!(job.network, Network::Audit),
        report,
    });
}

/// The most guest memory in use during the steps and how full its root
/// file system is, into `result` with what the steps wrote (`written`, as
/// the host counted it), and a warning in the job's log when it came close
/// to its `memory` or its root file system's size.
fn meter_guest(
    session: &mut AgentSession,
    written: Option<u64>,
    log: &JobLog,
    result: &mut JobResult,
) {
    let Ok(Some(after)) = session.usage() else {
        return;
    };
    result.metering.memory = Some(MemoryUse {
        total_bytes: after.memory_total_bytes,
        peak_bytes: after.memory_peak_bytes,
    });
    result.metering.disk = after.disk.map(|disk| DiskUse {
        written_bytes: written,
        used_bytes: disk.root_used_kib.saturating_mul(1024),
        total_bytes: disk.root_total_kib.saturating_mul(1024),
    });
    for line in result.metering.warnings() {
        log.note(&format!("==> warning: {line}"));
    }
}
