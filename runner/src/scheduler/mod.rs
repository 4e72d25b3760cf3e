//! The scheduler: every planned job gets a brand-new VM, at most `jobs` at a
//! time and never more than host memory allows; jobs beyond that wait in a
//! queue. Results come back in plan order whatever order jobs finish in.

mod artifacts;
mod budget;
mod caches;
mod context;
mod debug;
mod imported;
mod job;
mod retry;
mod services;

pub use budget::{Budget, VM_OVERHEAD_MIB};
pub use context::{Options, ResolvedImages};

use context::RunContext;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::plan::Plan;
use crate::report::{Reporter, RunEvent};
use crate::results::{JobOutcome, JobResult, RunResults};
use runner_machine::Backend;

pub fn run(
    plan: &Plan,
    backend: &dyn Backend,
    images: &ResolvedImages,
    reporter: &dyn Reporter,
    options: &Options,
) -> RunResults {
    let started = SystemTime::now();
    let clock = Instant::now();
    reporter.report(&RunEvent::RunStarted { plan });
    let memory = Budget::host_memory_mib();
    let vms = Budget::new(options.jobs.max(1) as u64);
    let ctx = RunContext {
        backend,
        images,
        reporter,
        options,
        workspace: &plan.workspace,
        memory: &memory,
        vms: &vms,
        stop: AtomicBool::new(false),
        first_failure: Mutex::new(None),
    };
    let slots: Vec<Mutex<Option<JobResult>>> = plan.jobs.iter().map(|_| Mutex::new(None)).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs.max(1))
        .thread_name(|i| format!("job-{i}"))
        .build();
    let run_all = || {
        // FIFO so that jobs start in plan order.
        rayon::scope_fifo(|scope| {
            for (job, slot) in plan.jobs.iter().zip(&slots) {
                let ctx = &ctx;
                scope.spawn_fifo(move |_| {
                    let result = run_or_skip(job, ctx);
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                });
            }
        })
    };
    match pool {
        Ok(pool) => pool.install(run_all),
        // Without a pool of our own, rayon's global one still runs the jobs.
        Err(e) => {
            tracing::warn!("cannot create the job pool: {e}");
            run_all()
        }
    }
    let jobs = slots
        .into_iter()
        .map(|slot| slot.into_inner().unwrap_or_else(|p| p.into_inner()))
        .map(|result| result.expect("every job slot is filled"))
        .collect();
    let results = RunResults {
        pipeline_name: plan.pipeline_name.clone(),
        pipeline_path: plan.pipeline_path.clone(),
        started,
        wall: clock.elapsed(),
        jobs,
    };
    reporter.report(&RunEvent::RunFinished { results: &results });
    results
}

fn run_or_skip(job: &crate::plan::PlannedJob, ctx: &RunContext) -> JobResult {
    let cancelled = |reason: String| {
        let mut result = JobResult::for_job(job, SystemTime::now());
        result.outcome = JobOutcome::Cancelled { reason };
        ctx.reporter.report(&RunEvent::JobFinished {
            job,
            result: &result,
        });
        result
    };
    if runner_machine::interrupt::is_interrupted() {
        return cancelled("interrupted".into());
    }
    if ctx.stop.load(Ordering::SeqCst) {
        let first = ctx.first_failure.lock().map(|f| f.clone()).ok().flatten();
        return cancelled(format!(
            "--fail-fast: job `{}` failed",
            first.unwrap_or_default()
        ));
    }
    // The job's VM and each of its services' VMs.
    let memory = job.memory_mib
        + VM_OVERHEAD_MIB
        + job
            .services
            .iter()
            .map(|s| s.memory_mib + VM_OVERHEAD_MIB)
            .sum::<u64>();
    // `--jobs` counts VMs: a job with services waits for a slot for each
    // of its VMs. One that needs more than `--jobs` runs alone.
    let vms = (1 + job.services.len() as u64).min(ctx.vms.total());
    let _slots = ctx.vms.acquire(vms);
    let Some(_reservation) = ctx.memory.acquire(memory) else {
        let mut result = JobResult::for_job(job, SystemTime::now());
        let with_services = match job.services.len() {
            0 => String::new(),
            1 => " (with its service's VM)".to_string(),
            n => format!(" (with its {n} services' VMs)"),
        };
        result.outcome = JobOutcome::Error {
            message: format!(
                "the job needs {memory} MiB{with_services} but the host can give VMs only {} MiB",
                ctx.memory.total()
            ),
        };
        ctx.reporter.report(&RunEvent::JobFinished {
            job,
            result: &result,
        });
        return result;
    };
    let result = retry::run_job(job, ctx, |attempt| job::run(job, ctx, attempt));
    if ctx.options.fail_fast && result.fails_run() && !ctx.stop.swap(true, Ordering::SeqCst) {
        if let Ok(mut first) = ctx.first_failure.lock() {
            *first = Some(job.name.clone());
        }
    }
    result
}

#[cfg(test)]
mod tests;
