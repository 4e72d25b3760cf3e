//! The run's events, as the scheduler sends them to the reporters.

use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::results::{JobResult, RunResults, StepResult};

/// Which stream a chunk of step output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Live events of a run. The scheduler calls these from its worker
/// threads, in order per job, concurrently across jobs. Every method has
/// an empty default so an observer implements only what it needs.
pub trait RunObserver: Send + Sync {
    fn on_run_started(&self, _plan: &Plan) {}
    /// The job's VM is being started.
    fn on_job_started(&self, _job: &PlannedJob) {}
    /// A phase of the job outside any step: `booting`, `copying files`,
    /// `collecting artifacts`. Shown on the live line only.
    fn on_job_progress(&self, _job: &PlannedJob, _activity: &str) {}
    fn on_step_started(&self, _job: &PlannedJob, _step: &PlannedStep) {}
    fn on_step_output(
        &self,
        _job: &PlannedJob,
        _step: &PlannedStep,
        _stream: OutputStream,
        _chunk: &[u8],
    ) {
    }
    fn on_step_finished(&self, _job: &PlannedJob, _step: &PlannedStep, _result: &StepResult) {}
    fn on_job_finished(&self, _job: &PlannedJob, _result: &JobResult) {}
    /// A debug shell takes the terminal over (`lent`) or gives it back
    /// (`runner test --debug-on-failure`). A console stops drawing
    /// meanwhile; the other jobs run on.
    fn on_terminal_lent(&self, _lent: bool) {}
    /// The run is over; print or write the final report.
    fn finish(&self, _results: &RunResults) {}
}
