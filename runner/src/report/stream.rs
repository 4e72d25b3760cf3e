//! The run as one stream of events, which every reporter is fed, as
//! nextest's are: the console and the JSON lines draw as it goes, the JUnit
//! file and the HTML page are written when it ends.
//!
//! The scheduler sends each event to one [`Reporter`] (a [`Reporters`] for
//! the run's whole set) from its worker threads: in order within a job,
//! interleaved across jobs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::plan::{Plan, PlannedJob, PlannedStep};
use crate::results::{JobResult, RunResults, StepResult};

/// Which stream a chunk of step output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One thing that happened in a run.
#[derive(Clone, Copy, Debug)]
pub enum RunEvent<'a> {
    RunStarted {
        plan: &'a Plan,
    },
    /// An attempt of the job starts: its VM is being started.
    JobStarted {
        job: &'a PlannedJob,
    },
    /// A phase of the job outside any step: `booting`, `copying files`,
    /// `collecting artifacts`.
    JobProgress {
        job: &'a PlannedJob,
        activity: &'a str,
    },
    StepStarted {
        job: &'a PlannedJob,
        step: &'a PlannedStep,
    },
    StepOutput {
        job: &'a PlannedJob,
        step: &'a PlannedStep,
        stream: OutputStream,
        chunk: &'a [u8],
    },
    /// An attempt of the step ended.
    StepFinished {
        job: &'a PlannedJob,
        step: &'a PlannedStep,
        result: &'a StepResult,
    },
    /// An attempt of the job ended, or the job was skipped or cancelled
    /// before it started.
    JobFinished {
        job: &'a PlannedJob,
        result: &'a JobResult,
    },
    /// A debug shell takes the terminal over (`lent`) or gives it back
    /// (`runner test --debug-on-failure`): a console stops drawing
    /// meanwhile, the other jobs run on.
    TerminalLent {
        lent: bool,
    },
    /// The run is over; every job's final result.
    RunFinished {
        results: &'a RunResults,
    },
}

/// Something that turns a run's events into a report.
pub trait Reporter: Send + Sync {
    fn report(&self, event: &RunEvent<'_>);

    /// After [`RunEvent::RunFinished`]: the file this reporter wrote, if it
    /// writes one, or why it could not.
    fn written(&self) -> Result<Option<Written>, ReportError> {
        Ok(None)
    }
}

/// A report file a reporter wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// `JUnit report`, `HTML report`.
    pub what: &'static str,
    pub path: PathBuf,
}

// The cause is not the `source`: the CLI's error chain would print it
// twice. It is boxed so that this trait's module need not know each
// reporter's error type.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing a report file failed; `what` names it ("JUnit report").
    #[error("writing the {what}: {cause}")]
    Failed {
        what: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the {0} was not written: the run did not finish")]
    NotWritten(&'static str),
}

/// The file a reporter writes once the run finished, and how writing it
/// went: what such a reporter answers to [`Reporter::written`].
pub struct ReportFile {
    what: &'static str,
    path: PathBuf,
    /// `None` until the run finished.
    outcome: Mutex<Option<Result<(), Box<dyn std::error::Error + Send + Sync>>>>,
}

impl ReportFile {
    /// `what` names the report in messages ("JUnit report").
    pub fn new(what: &'static str, path: PathBuf) -> ReportFile {
        ReportFile {
            what,
            path,
            outcome: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How writing the file went.
    pub fn record<E: std::error::Error + Send + Sync + 'static>(&self, outcome: Result<(), E>) {
        let outcome = outcome.map_err(|e| Box::new(e) as Box<_>);
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }

    /// The file, or why it was not written.
    pub fn written(&self) -> Result<Option<Written>, ReportError> {
        match self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(Ok(())) => Ok(Some(Written {
                what: self.what,
                path: self.path.clone(),
            })),
            Some(Err(cause)) => Err(ReportError::Failed {
                what: self.what,
                cause,
            }),
            None => Err(ReportError::NotWritten(self.what)),
        }
    }
}

/// The run's reporters, fed the same events in the order they were added.
#[derive(Default)]
pub struct Reporters {
    all: Vec<Box<dyn Reporter>>,
}

impl Reporters {
    pub fn new() -> Reporters {
        Reporters::default()
    }

    pub fn add(&mut self, reporter: impl Reporter + 'static) -> &mut Reporters {
        self.all.push(Box::new(reporter));
        self
    }

    /// Every file written, in the order of the reporters; the first error
    /// if any could not be.
    pub fn written(&self) -> Result<Vec<Written>, ReportError> {
        let mut files = Vec::new();
        for reporter in &self.all {
            files.extend(reporter.written()?);
        }
        Ok(files)
    }
}

impl Reporter for Reporters {
    fn report(&self, event: &RunEvent<'_>) {
        for reporter in &self.all {
            reporter.report(event);
        }
    }
}

/// Tests feed a reporter one event per call.
#[cfg(test)]
pub(crate) trait Feed {
    fn on_run_started(&self, plan: &Plan);
    fn on_job_started(&self, job: &PlannedJob);
    fn on_job_progress(&self, job: &PlannedJob, activity: &str);
    fn on_step_started(&self, job: &PlannedJob, step: &PlannedStep);
    fn on_step_output(
        &self,
        job: &PlannedJob,
        step: &PlannedStep,
        stream: OutputStream,
        chunk: &[u8],
    );
    fn on_step_finished(&self, job: &PlannedJob, step: &PlannedStep, result: &StepResult);
    fn on_job_finished(&self, job: &PlannedJob, result: &JobResult);
    fn on_terminal_lent(&self, lent: bool);
    fn finish(&self, results: &RunResults);
}

#[cfg(test)]
impl<R: Reporter + ?Sized> Feed for R {
    fn on_run_started(&self, plan: &Plan) {
        self.report(&RunEvent::RunStarted { plan });
    }
    fn on_job_started(&self, job: &PlannedJob) {
        self.report(&RunEvent::JobStarted { job });
    }
    fn on_job_progress(&self, job: &PlannedJob, activity: &str) {
        self.report(&RunEvent::JobProgress { job, activity });
    }
    fn on_step_started(&self, job: &PlannedJob, step: &PlannedStep) {
        self.report(&RunEvent::StepStarted { job, step });
    }
    fn on_step_output(
        &self,
        job: &PlannedJob,
        step: &PlannedStep,
        stream: OutputStream,
        chunk: &[u8],
    ) {
        self.report(&RunEvent::StepOutput {
            job,
            step,
            stream,
            chunk,
        });
    }
    fn on_step_finished(&self, job: &PlannedJob, step: &PlannedStep, result: &StepResult) {
        self.report(&RunEvent::StepFinished { job, step, result });
    }
    fn on_job_finished(&self, job: &PlannedJob, result: &JobResult) {
        self.report(&RunEvent::JobFinished { job, result });
    }
    fn on_terminal_lent(&self, lent: bool) {
        self.report(&RunEvent::TerminalLent { lent });
    }
    fn finish(&self, results: &RunResults) {
        self.report(&RunEvent::RunFinished { results });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_file_says_whether_it_was_written_and_why_not() {
        let file = ReportFile::new("JUnit report", PathBuf::from("out/junit.xml"));
        let err = file.written().unwrap_err().to_string();
        assert_eq!(
            err,
            "the JUnit report was not written: the run did not finish"
        );

        file.record(Err(std::io::Error::other("disk full")));
        let err = file.written().unwrap_err().to_string();
        assert_eq!(err, "writing the JUnit report: disk full");

        file.record(Ok::<(), std::io::Error>(()));
        assert_eq!(
            file.written().unwrap(),
            Some(Written {
                what: "JUnit report",
                path: PathBuf::from("out/junit.xml"),
            })
        );
    }
}
