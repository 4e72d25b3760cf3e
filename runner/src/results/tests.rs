use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

pub(crate) fn step(name: &str, status: StepStatus) -> StepResult {
    StepResult {
        name: name.to_string(),
        status,
        duration: Duration::from_millis(1200),
        stdout: Output::from_bytes(b"out\n"),
        stderr: Output::default(),
        attempt: Attempt::first(0),
        earlier_attempts: Vec::new(),
    }
}

pub(crate) fn failed(code: i32) -> StepStatus {
    StepStatus::Failed {
        exit: ExitStatus {
            code: Some(code),
            ..ExitStatus::default()
        },
    }
}

pub(crate) fn job(name: &str, outcome: JobOutcome, steps: Vec<StepResult>) -> JobResult {
    JobResult {
        name: name.to_string(),
        classname: name.to_string(),
        allow_failure: false,
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_secs(3),
        boot: Some(Duration::from_millis(1400)),
        outcome,
        steps,
        log_path: Some(PathBuf::from("out/01-a/job.log")),
        artifacts: Vec::new(),
        artifact_notes: Vec::new(),
        cache_notes: Vec::new(),
        imported: ImportedTests::default(),
        attempt: Attempt::first(0),
        earlier_attempts: Vec::new(),
        timeline: Vec::new(),
        services: Vec::new(),
        metering: Default::default(),
    }
}

/// Job `queries` with two services, their logs written under `dir`: `db`
/// was ready at 3.2s; `cache` was never ready, which failed the job before
/// its step ran (the job's error as the scheduler words it).
/// A passed job of one step whose VM used `cpu_ms` of CPU and `peak_mib`
/// of `total_mib` MiB of memory.
pub(crate) fn metered(name: &str, cpu_ms: u64, peak_mib: u64, total_mib: u64) -> JobResult {
    let mut metered = job(
        name,
        JobOutcome::Passed,
        vec![step("make", StepStatus::Passed)],
    );
    metered.metering = super::Metering {
        cpu: Some(Duration::from_millis(cpu_ms)),
        memory: Some(super::MemoryUse {
            total_bytes: total_mib << 20,
            peak_bytes: peak_mib << 20,
        }),
        disk: None,
        network: None,
    };
    metered
}

/// A passed job whose NIC reached crates.io, was refused 10.0.0.5:5432
/// and the name `evil.example`; `audit` as the job asked.
pub(crate) fn networked(name: &str, audit: bool) -> JobResult {
    use runner_machine::network::{EgressReport, Touched};
    let touched = |name: Option<&str>, address: [u8; 4], port, allowed| Touched {
        protocol: "TCP".into(),
        address: address.into(),
        port,
        names: name.map(str::to_string).into_iter().collect(),
        allowed,
        bytes_out: if allowed { 1300 } else { 0 },
        bytes_in: if allowed { 35_000 } else { 0 },
        first_ms: 10,
        last_ms: 900,
    };
    let mut networked = metered(name, 1000, 100, 500);
    networked.metering.network = Some(super::NetworkUse {
        audit,
        report: EgressReport {
            destinations: vec![
                touched(Some("crates.io"), [151, 101, 0, 1], 443, true),
                touched(None, [10, 0, 0, 5], 5432, false),
            ],
            more_destinations: 0,
            refused_names: vec!["evil.example".into()],
            more_refused_names: 0,
            bytes_out: 1300,
            bytes_in: 35_000,
        },
    });
    networked
}

pub(crate) fn job_with_services(dir: &Path) -> JobResult {
    let phase = |kind, start: u64, ms: u64| Phase {
        kind,
        start: Duration::from_millis(start),
        duration: Duration::from_millis(ms),
    };
    let log = |name: &str, text: &str| {
        let path = dir.join(format!("01-queries.service-{name}.log"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let db = ServiceResult {
        name: "db".into(),
        ready_at: Some(Duration::from_millis(3200)),
        failure: None,
        log_path: log(
            "db",
            "==> booting service db (qemu)\n==> run: ./start-db\nlistening on 5432\n==> ready\n",
        ),
        timeline: vec![
            phase(PhaseKind::Boot, 0, 1500),
            phase(PhaseKind::Services, 1500, 1700),
        ],
    };
    let why = "was not ready within 2s (`ready` failed 3 times: redis-cli ping)";
    let cache_log = log(
        "cache",
        &format!(
            "==> booting service cache (qemu)\n==> run: redis-server\n\
             Could not connect\n\x1b[31mCould not connect\x1b[0m\n==> {why}\n"
        ),
    );
    let cache = ServiceResult {
        name: "cache".into(),
        ready_at: None,
        failure: Some(why.into()),
        log_path: cache_log.clone(),
        timeline: vec![
            phase(PhaseKind::Boot, 0, 1400),
            phase(PhaseKind::Services, 1400, 2000),
        ],
    };
    let message = format!(
        "service `cache` {why} (its log: {})\n  Could not connect\n  ==> {why}",
        cache_log.display()
    );
    let mut queries = job("queries", JobOutcome::Error { message }, Vec::new());
    queries.duration = Duration::from_millis(3600);
    queries.timeline = vec![
        phase(PhaseKind::Boot, 0, 1200),
        phase(PhaseKind::Services, 1200, 2200),
    ];
    queries.services = vec![db, cache];
    queries
}

pub(crate) fn run(jobs: Vec<JobResult>) -> RunResults {
    RunResults {
        pipeline_name: "demo".to_string(),
        pipeline_path: PathBuf::from("pipelines/demo.yml"),
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        wall: Duration::from_millis(34_540),
        jobs,
    }
}

#[test]
fn all_passed_exits_zero() {
    let r = run(vec![job(
        "a",
        JobOutcome::Passed,
        vec![
            step("one", StepStatus::Passed),
            step("two", StepStatus::Passed),
        ],
    )]);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.summary_line(), "2 passed, 0 failed in 34.5s");
}

#[test]
fn a_failed_step_fails_the_run_and_skips_count() {
    let r = run(vec![
        job(
            "ok",
            JobOutcome::Passed,
            vec![step("s", StepStatus::Passed)],
        ),
        job(
            "bad",
            JobOutcome::Failed,
            vec![
                step("s1", failed(1)),
                step(
                    "s2",
                    StepStatus::Skipped {
                        reason: "`s1` failed".into(),
                    },
                ),
            ],
        ),
    ]);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        r.counts(),
        Counts {
            passed: 1,
            failed: 1,
            skipped: 1,
            allowed_failures: 0
        }
    );
    assert_eq!(r.summary_line(), "1 passed, 1 failed, 1 skipped in 34.5s");
}

#[test]
fn allowed_failures_do_not_fail_the_run() {
    let mut flaky = job(
        "flaky",
        JobOutcome::Failed,
        vec![step(
            "t",
            StepStatus::TimedOut {
                limit: Duration::from_secs(30),
                by: crate::results::TimeLimit::Step(Duration::from_secs(30)),
                exit: None,
                host_deadline: false,
            },
        )],
    );
    flaky.allow_failure = true;
    let mut boot = job(
        "boot",
        JobOutcome::BootError {
            message: "no agent".into(),
            serial_tail: vec![],
        },
        vec![],
    );
    boot.allow_failure = true;
    let r = run(vec![
        job(
            "ok",
            JobOutcome::Passed,
            vec![step("s", StepStatus::Passed)],
        ),
        flaky,
        boot,
    ]);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(
        r.summary_line(),
        "1 passed, 0 failed, 2 allowed failures in 34.5s"
    );
}

#[test]
fn job_level_problems_become_one_case() {
    let boot = job(
        "b",
        JobOutcome::BootError {
            message: "kernel panic".into(),
            serial_tail: vec!["Kernel panic - not syncing".into()],
        },
        vec![],
    );
    let case = boot.job_case().unwrap();
    assert_eq!(case.name, "(boot)");
    assert_eq!(case.kind, CaseKind::Error);
    assert_eq!(case.message, "VM failed to boot: kernel panic");
    assert_eq!(case.detail, ["Kernel panic - not syncing"]);
    assert!(boot.fails_run());

    // An error already carried by a step is not counted twice.
    let lost = job(
        "l",
        JobOutcome::Error {
            message: "agent lost".into(),
        },
        vec![step(
            "s",
            StepStatus::Error {
                message: "agent lost".into(),
            },
        )],
    );
    assert_eq!(lost.job_case(), None);
    assert_eq!(lost.cases(), [CaseKind::Error]);
    let copy = job(
        "c",
        JobOutcome::Error {
            message: "copy failed".into(),
        },
        vec![],
    );
    assert_eq!(copy.cases(), [CaseKind::Error]);

    let cancelled = job(
        "x",
        JobOutcome::Cancelled {
            reason: "interrupted".into(),
        },
        vec![],
    );
    assert_eq!(cancelled.cases(), [CaseKind::Skipped]);
    assert!(cancelled.fails_run());

    // An outcome that disagrees with its steps still fails the run.
    let inconsistent = job("i", JobOutcome::Passed, vec![step("s", failed(2))]);
    assert!(inconsistent.fails_run());
    assert_eq!(
        JobResult::outcome_from_steps(&inconsistent.steps),
        JobOutcome::Failed
    );
}

#[test]
fn statuses_describe_themselves() {
    assert_eq!(StepStatus::Passed.describe(), "ok");
    assert_eq!(failed(101).describe(), "exit code 101");
    let not_found = StepStatus::Failed {
        exit: ExitStatus {
            code: Some(127),
            error: Some("no such file: cargo".into()),
            ..ExitStatus::default()
        },
    };
    assert_eq!(not_found.describe(), "exit code 127 (no such file: cargo)");
    let killed = StepStatus::Failed {
        exit: ExitStatus {
            signal: Some(11),
            ..ExitStatus::default()
        },
    };
    assert_eq!(killed.describe(), "killed by signal 11 (SIGSEGV)");
    assert_eq!(
        StepStatus::TimedOut {
            limit: Duration::from_secs(30),
            by: crate::results::TimeLimit::Step(Duration::from_secs(30)),
            exit: None,
            host_deadline: false,
        }
        .describe(),
        "timed out after 30s (step timeout 30s)"
    );
    // The job's budget: the step got what was left of it.
    assert_eq!(
        StepStatus::TimedOut {
            limit: Duration::from_secs(42),
            by: crate::results::TimeLimit::Job(Duration::from_secs(600)),
            exit: None,
            host_deadline: false,
        }
        .describe(),
        "timed out after 42s (job timeout 10m)"
    );
    // The guest never reported the timeout: the host killed the VM.
    assert_eq!(
        StepStatus::TimedOut {
            limit: Duration::from_secs(2),
            by: crate::results::TimeLimit::Step(Duration::from_secs(2)),
            exit: None,
            host_deadline: true,
        }
        .describe(),
        "timed out after 2s (step timeout 2s; host deadline: guest did not stop the step, VM killed)"
    );
    assert_eq!(
        StepResult::skipped("x", "`a` failed").status.describe(),
        "skipped: `a` failed"
    );
}

#[test]
fn each_service_is_a_case_and_a_failed_one_carries_the_job_s_error() {
    let dir = tempfile::tempdir().unwrap();
    let queries = job_with_services(dir.path());
    // Counted once: on the service, not again as the job's case.
    assert_eq!(queries.job_case(), None);
    assert_eq!(queries.cases(), [CaseKind::Passed, CaseKind::Error]);
    assert!(queries.fails_run());
    let r = run(vec![queries]);
    assert_eq!(r.summary_line(), "1 passed, 1 failed in 34.5s");
    let [db, cache] = &r.jobs[0].services[..] else {
        panic!("two services")
    };
    assert_eq!(db.describe(), "ready after 3.2s");
    assert!(cache
        .describe()
        .starts_with("failed: was not ready within 2s"));
    let log = cache.log(1 << 10).text();
    assert!(
        log.ends_with("`ready` failed 3 times: redis-cli ping)\n"),
        "{log}"
    );

    // A job that ended before its service was ready skips it; the job's
    // own problem is still its case.
    let mut boot = job(
        "b",
        JobOutcome::BootError {
            message: "no agent".into(),
            serial_tail: Vec::new(),
        },
        Vec::new(),
    );
    let mut never = db.clone();
    never.ready_at = None;
    boot.services = vec![never.clone()];
    assert_eq!(boot.cases(), [CaseKind::Skipped, CaseKind::Error]);
    assert_eq!(never.describe(), "not ready before the job ended");
    // A log that is gone is a line in the report, not a failed report.
    never.log_path = dir.path().join("gone.log");
    assert!(never.log(100).text().starts_with("[cannot read "));
}
