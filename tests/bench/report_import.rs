//! What importing a 10,000-testcase JUnit file adds to a run.
//!
//! `cargo build --release -p runner && cargo bench -p e2e-tests --bench report_import`
//! (images as for the tests: RUNNER_KERNEL / RUNNER_ROOTFS).
//!
//! Target (issue 9): at most 0.5 s added to the run. Measured two ways in
//! one run, each the median of 5:
//!
//! 1. In process: reading and parsing the file into testcases, and the
//!    extra time writing the JUnit report with them (render with the
//!    cases minus render without).
//! 2. End to end: `runner test` of a one-job pipeline that copies the file
//!    into the guest, with `reports: { junit: … }` minus the same pipeline
//!    without it, so the difference also holds the copy out of the guest
//!    through the artifact unpacker. Boot times vary by a tenth of a second
//!    or so between runs, which is the noise on this figure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use e2e_tests::{images, runner_bin};
use runner::imported::{import_file, Format};
use runner::report::junit::{render, JunitOptions};
use runner::results::{
    Attempt, ImportedTests, JobOutcome, JobResult, RunResults, DEFAULT_OUTPUT_LIMIT,
};

const CASES: usize = 10_000;
const RUNS: usize = 5;
const TARGET: Duration = Duration::from_millis(500);

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.xml");
    std::fs::write(&report, generate(CASES)).unwrap();
    let size = std::fs::metadata(&report).unwrap().len();
    println!(
        "report: {CASES} testcases, {:.1} MiB (10% failing with a 20-line trace, 5% skipped, 20% with output)",
        size as f64 / (1 << 20) as f64
    );

    let in_process = in_process(&report);
    let end_to_end = end_to_end(dir.path());
    for (what, added) in [("in process", in_process), ("end to end", end_to_end)] {
        println!(
            "{what}: importing {CASES} testcases adds {:.3}s; target {:.3}s; ratio {:.2} ({})",
            added.as_secs_f64(),
            TARGET.as_secs_f64(),
            added.as_secs_f64() / TARGET.as_secs_f64(),
            if added <= TARGET { "met" } else { "NOT MET" }
        );
    }
}

/// Median of parse + (render with cases − render without).
fn in_process(report: &Path) -> Duration {
    let mut parse_times = Vec::new();
    let mut render_times = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let imported = import_file(Format::Junit, report, "report.xml", DEFAULT_OUTPUT_LIMIT);
        let parsed = start.elapsed();
        assert_eq!(imported.cases.len(), CASES);
        let without = results(ImportedTests::default());
        let with = results(ImportedTests {
            cases: imported.cases,
            notes: Vec::new(),
        });
        let options = JunitOptions::default();
        let start = Instant::now();
        render(&without, &options).unwrap();
        let base = start.elapsed();
        let start = Instant::now();
        let xml = render(&with, &options).unwrap();
        let rendered = start.elapsed().saturating_sub(base);
        assert!(xml.len() > 1_000_000);
        parse_times.push(parsed);
        render_times.push(rendered);
        totals.push(parsed + rendered);
    }
    println!(
        "in process: read and parse median {:.3}s, extra JUnit writing median {:.3}s",
        median(&mut parse_times).as_secs_f64(),
        median(&mut render_times).as_secs_f64()
    );
    median(&mut totals)
}

fn results(imported: ImportedTests) -> RunResults {
    let job = JobResult {
        name: "bench".into(),
        classname: "bench".into(),
        allow_failure: false,
        started: SystemTime::now(),
        duration: Duration::from_secs(1),
        boot: None,
        outcome: JobOutcome::Passed,
        steps: Vec::new(),
        log_path: None,
        artifacts: Vec::new(),
        artifact_notes: Vec::new(),
        cache_notes: Vec::new(),
        imported,
        attempt: Attempt::first(0),
        earlier_attempts: Vec::new(),
        timeline: Vec::new(),
        services: Vec::new(),
        metering: Default::default(),
    };
    RunResults {
        pipeline_name: "bench".into(),
        pipeline_path: PathBuf::from("bench.yml"),
        started: SystemTime::now(),
        wall: Duration::from_secs(1),
        jobs: vec![job],
    }
}

/// Median wall time of `runner test` with the report read, minus without.
fn end_to_end(dir: &Path) -> Duration {
    let pipeline = |reports: bool| {
        let extra = if reports {
            "    reports: { junit: report.xml }\n"
        } else {
            ""
        };
        format!(
            "name: bench\nimage: minimal\njobs:\n  import:\n    files: [report.xml]\n{extra}    steps: [\"true\"]\n"
        )
    };
    let images = images();
    let run = |reports: bool| {
        let file = dir.join(format!("bench-{reports}.yml"));
        std::fs::write(&file, pipeline(reports)).unwrap();
        let start = Instant::now();
        let out = Command::new(runner_bin())
            .env("RUNNER_KERNEL", &images.kernel)
            .env("RUNNER_ROOTFS", &images.rootfs)
            .env("CI", "true")
            .current_dir(dir)
            .args(["test", "--out", "out"])
            .arg(&file)
            .output()
            .unwrap();
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut summary = stdout.lines().last().unwrap_or_default().to_string();
        // The job log says how long copying out and parsing took.
        let log = std::fs::read_to_string(dir.join("out/logs/01-import.log")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("testcases from junit reports"))
        {
            summary = format!("{summary}; job log: {}", line.trim_start_matches("==> "));
        }
        // 10,000 imported cases, 10% of them failing: exit 1 with them.
        let expected = if reports { Some(1) } else { Some(0) };
        assert_eq!(out.status.code(), expected, "{stdout}");
        (took, summary)
    };
    // Alternate, so that drift in machine load hits both alike.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut summaries = Vec::new();
    for _ in 0..RUNS {
        let (took, _) = run(false);
        without.push(took);
        let (took, summary) = run(true);
        with.push(took);
        summaries.push(summary);
    }
    let (with, without) = (median(&mut with), median(&mut without));
    println!(
        "end to end: runner test median {:.3}s with the report, {:.3}s without ({})",
        with.as_secs_f64(),
        without.as_secs_f64(),
        summaries[0]
    );
    with.saturating_sub(without)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A JUnit file like a big real suite: 10 suites of 1,000 cases.
fn generate(cases: usize) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for suite in 0..10 {
        writeln!(
            xml,
            "  <testsuite name=\"pkg.suite{suite}\" tests=\"{}\">",
            cases / 10
        )
        .unwrap();
        for i in 0..cases / 10 {
            let n = suite * (cases / 10) + i;
            write!(
                xml,
                "    <testcase classname=\"pkg.suite{suite}.Class{}\" name=\"test_case_{n}\" time=\"0.{n:03}\" file=\"tests/test_{suite}.py\" line=\"{i}\">",
                i % 50
            )
            .unwrap();
            if n % 10 == 3 {
                xml.push_str("<failure message=\"assert 1 == 2\" type=\"AssertionError\">");
                for frame in 0..20 {
                    writeln!(
                        xml,
                        "  at pkg.suite{suite}.Class.method{frame}(File.java:{frame})"
                    )
                    .unwrap();
                }
                xml.push_str("</failure>");
            } else if n % 20 == 7 {
                xml.push_str("<skipped message=\"not today\"/>");
            }
            if n % 5 == 1 {
                xml.push_str("<system-out>line one\nline two &amp; three\nline four\nfive\nsix\n</system-out>");
            }
            xml.push_str("</testcase>\n");
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}
