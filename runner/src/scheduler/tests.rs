//! Jobs against a fake backend whose "guest" is a fake agent on a socket
//! pair: the host's own limits and reports, with no VM and no dependence on
//! how fast the machine is.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_protocol::{read_frame, write_frame, Frame, Message, Stream, PROTOCOL_VERSION};

use super::{run, Options, ResolvedImages};
use crate::pipeline::Pipeline;
use crate::plan::Plan;
use crate::report::{Reporter, RunEvent};
use crate::results::{JobOutcome, PhaseKind, RunResults, StepStatus, TimeLimit};
use crate::session::HOST_GRACE;
use runner_machine::{Backend, BootError, Vm, VmSpec};

/// What the fake agent does after the handshake.
type Behaviour = fn(UnixStream);

struct FakeBackend {
    behaviour: Behaviour,
    /// What `Vm::exited` says once the agent has hung up.
    exit: Option<&'static str>,
}

struct FakeVm {
    behaviour: Behaviour,
    exit: Option<&'static str>,
    agent_gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn start(&self, _spec: &VmSpec) -> Result<Box<dyn Vm>, BootError> {
        Ok(Box::new(FakeVm {
            behaviour: self.behaviour,
            exit: self.exit,
            agent_gone: Default::default(),
        }))
    }
}

impl Vm for FakeVm {
    fn connect(&self, _port: u32) -> std::io::Result<UnixStream> {
        let (host, mut guest) = UnixStream::pair()?;
        let behaviour = self.behaviour;
        let gone = self.agent_gone.clone();
        std::thread::spawn(move || {
            let Ok(Some(Frame::Control(Message::Hello { .. }))) = read_frame(&mut guest) else {
                return;
            };
            let hello = Message::Hello {
                version: PROTOCOL_VERSION,
                capabilities: Vec::new(),
                who: "fake agent".into(),
            };
            if write_frame(&mut guest, &Frame::Control(hello)).is_ok() {
                behaviour(guest);
            }
            gone.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(host)
    }

    fn exited(&mut self) -> Option<String> {
        let gone = self.agent_gone.load(std::sync::atomic::Ordering::SeqCst);
        self.exit.filter(|_| gone).map(str::to_string)
    }

    fn serial_tail(&self, _n: usize) -> Vec<String> {
        vec!["[    1.234] fake console: the end".to_string()]
    }

    fn wait_exit(&mut self, _limit: Duration) -> bool {
        true
    }
}

/// Writes down the events it is sent, one line each.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn report(&self, event: &RunEvent<'_>) {
        let line = match event {
            RunEvent::RunStarted { plan } => format!("run started: {} jobs", plan.jobs.len()),
            RunEvent::JobStarted { job } => format!("{}: started", job.name),
            RunEvent::JobProgress { job, activity } => format!("{}: {activity}", job.name),
            RunEvent::StepStarted { job, step } => format!("{}: {} started", job.name, step.name),
            RunEvent::StepOutput { job, step, .. } => format!("{}: {} output", job.name, step.name),
            RunEvent::StepFinished { job, step, result } => {
                format!("{}: {} {}", job.name, step.name, result.status.describe())
            }
            RunEvent::JobFinished { job, result } => {
                format!("{}: finished, {:?}", job.name, result.outcome)
            }
            RunEvent::TerminalLent { lent } => format!("terminal lent: {lent}"),
            RunEvent::RunFinished { results } => {
                format!("run finished: {}", results.summary_line())
            }
        };
        self.events.lock().unwrap().push(line);
    }
}

fn run_fake(yaml: &str, backend: FakeBackend, out: &Path) -> RunResults {
    run_recorded(yaml, backend, out).0
}

/// The run's results, and the events its reporter was sent.
fn run_recorded(yaml: &str, backend: FakeBackend, out: &Path) -> (RunResults, Vec<String>) {
    let pipeline = Pipeline::parse(yaml, Path::new("fake.yml"), out).unwrap();
    let plan = Plan::new(&pipeline);
    let mut images: ResolvedImages = HashMap::new();
    for job in &plan.jobs {
        images.insert(
            job.image.clone(),
            (PathBuf::from("vmlinux"), PathBuf::from("rootfs")),
        );
    }
    let options = Options {
        jobs: 1,
        fail_fast: false,
        boot_timeout: Duration::from_secs(60),
        output_limit: 4096,
        out_dir: out.to_path_buf(),
        log_limit: None,
        artifact_limits: Default::default(),
        grants: Default::default(),
        debug_on_failure: false,
        caches: None,
    };
    let recorder = Recorder::default();
    let results = run(&plan, &backend, &images, &recorder, &options);
    (results, recorder.events.into_inner().unwrap())
}

/// Prints for ever and never reports the command's end or its timeout.
fn never_stops(mut guest: UnixStream) {
    let Ok(Some(Frame::Control(Message::Exec(_)))) = read_frame(&mut guest) else {
        return;
    };
    while write_frame(&mut guest, &Frame::Data(Stream::Stdout, b"spam\n".to_vec())).is_ok() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hangs up in the middle of the step, as a guest that powers off does.
fn dies_mid_step(mut guest: UnixStream) {
    let _ = read_frame(&mut guest);
    let _ = write_frame(&mut guest, &Frame::Data(Stream::Stdout, b"bye\n".to_vec()));
}

const STEP_TIMEOUT_PIPELINE: &str = r#"
name: fake
defaults: { files: none }
jobs:
  spam:
    steps:
      - name: prints for ever
        run: yes spam
        timeout: 1s
      - name: never runs
        run: "true"
"#;

#[test]
fn a_guest_that_ignores_the_step_timeout_is_killed_at_the_host_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let backend = FakeBackend {
        behaviour: never_stops,
        exit: None,
    };
    let results = run_fake(STEP_TIMEOUT_PIPELINE, backend, dir.path());
    let job = &results.jobs[0];
    assert_eq!(job.outcome, JobOutcome::Failed);
    let StepStatus::TimedOut {
        by, host_deadline, ..
    } = &job.steps[0].status
    else {
        panic!("{:?}", job.steps[0].status);
    };
    assert_eq!(*by, TimeLimit::Step(Duration::from_secs(1)));
    assert!(host_deadline);
    assert!(job.steps[0].stdout.text().contains("spam"));
    let describe = job.steps[0].status.describe();
    assert!(describe.contains("step timeout 1s"), "{describe}");
    assert!(
        describe.contains("host deadline: guest did not stop the step"),
        "{describe}"
    );
    assert!(
        matches!(&job.steps[1].status, StepStatus::Skipped { reason } if reason.contains("host deadline")),
        "{:?}",
        job.steps[1].status
    );
    // Generous: only a host that never stepped in would break it.
    assert!(started.elapsed() < Duration::from_secs(1) + HOST_GRACE + Duration::from_secs(60));

    let junit = dir.path().join("junit.xml");
    crate::report::junit::write(&results, &junit, &Default::default()).unwrap();
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(xml.contains(r#"type="timeout""#), "{xml}");
    assert!(
        xml.contains("step timeout 1s; host deadline: guest did not stop the step"),
        "{xml}"
    );
}

#[test]
fn the_job_timeout_is_named_when_it_is_the_tighter_limit() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: fake\ndefaults: { files: none }\njobs:\n  spam:\n    timeout: 1s\n    steps:\n      - name: prints for ever\n        run: yes spam\n        timeout: 1h\n";
    let backend = FakeBackend {
        behaviour: never_stops,
        exit: None,
    };
    let results = run_fake(yaml, backend, dir.path());
    let status = &results.jobs[0].steps[0].status;
    assert!(
        matches!(
            status,
            StepStatus::TimedOut {
                by: TimeLimit::Job(t),
                host_deadline: true,
                ..
            } if *t == Duration::from_secs(1)
        ),
        "{status:?}"
    );
    assert!(status.describe().contains("job timeout 1s"));
}

#[test]
fn a_guest_that_dies_mid_step_is_an_error_with_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend {
        behaviour: dies_mid_step,
        exit: Some("qemu exit status: 0"),
    };
    let (results, events) = run_recorded(STEP_TIMEOUT_PIPELINE, backend, dir.path());
    let job = &results.jobs[0];
    // The reporters heard the whole story, in order, the lost step's
    // output and the job's end included.
    let events: Vec<&str> = events
        .iter()
        .map(|e| e.split([',', ';']).next().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "run started: 1 jobs",
            "spam: started",
            "spam: booting",
            "spam: prints for ever started",
            "spam: prints for ever output",
            "spam: prints for ever error: the agent closed the connection",
            "spam: finished",
            "run finished: 0 passed",
        ],
        "{events:#?}"
    );
    let StepStatus::Error { message } = &job.steps[0].status else {
        panic!("{:?}", job.steps[0].status);
    };
    assert!(message.contains("closed the connection"), "{message}");
    assert!(
        message.contains("the VM stopped (qemu exit status: 0)"),
        "{message}"
    );
    assert!(message.contains("fake console: the end"), "{message}");
    assert!(matches!(job.outcome, JobOutcome::Error { .. }));
    // The timeline has the boot and the step that was lost, in order,
    // within the job's time.
    let kinds: Vec<PhaseKind> = job.timeline.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            PhaseKind::Boot,
            PhaseKind::Step {
                index: 0,
                attempt: 1
            }
        ]
    );
    let (boot, step) = (&job.timeline[0], &job.timeline[1]);
    assert!(boot.start + boot.duration <= step.start);
    assert!(step.start + step.duration <= job.duration);
}
