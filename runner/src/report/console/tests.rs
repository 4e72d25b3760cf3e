use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::TermLike;

use super::*;
use crate::pipeline::Pipeline;
use crate::report::stream::Feed;
use crate::results::tests::{failed, job, job_with_services, run, step};
use crate::results::Output;

/// A writer the test can read back (the report's other tests use it too).
#[derive(Clone, Default)]
pub(in crate::report) struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    pub(in crate::report) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

pub(in crate::report) fn plain(gitlab: bool, color: bool) -> (ConsoleReporter, Buffer) {
    let buffer = Buffer::default();
    let options = ConsoleOptions {
        mode: ConsoleMode::Plain,
        gitlab_sections: gitlab,
        color,
        failure_tail_lines: 2,
        suggest_allow: false,
    };
    (
        ConsoleReporter::new(options, Box::new(buffer.clone())),
        buffer,
    )
}

pub(in crate::report) fn plan() -> Plan {
    let src = "jobs:\n  build:\n    steps: [make, make test]\n  lint:\n    allow_failure: true\n    steps: [clippy]\n";
    Plan::new(&Pipeline::parse(src, Path::new("pipelines/demo.yml"), Path::new("/repo")).unwrap())
}

/// Plays a run: `build` fails its second step, `lint` (allowed) fails.
fn play(reporter: &ConsoleReporter) -> RunResults {
    let plan = plan();
    reporter.on_run_started(&plan);
    let (build, lint) = (&plan.jobs[0], &plan.jobs[1]);
    reporter.on_job_started(build);
    reporter.on_step_started(build, &build.steps[0]);
    reporter.on_step_output(build, &build.steps[0], OutputStream::Stdout, b"cc main.c\n");
    let s1 = step("make", StepStatus::Passed);
    reporter.on_step_finished(build, &build.steps[0], &s1);
    let mut s2 = step("make test", failed(2));
    s2.stderr = Output::from_bytes(b"one\ntwo\n\x1b[31mthree\x1b[0m\n");
    reporter.on_step_finished(build, &build.steps[1], &s2);
    let build_result = job("build", JobOutcome::Failed, vec![s1, s2]);
    reporter.on_job_started(lint);
    let mut lint_result = job("lint", JobOutcome::Failed, vec![step("clippy", failed(1))]);
    lint_result.allow_failure = true;
    reporter.on_step_finished(lint, &lint.steps[0], &lint_result.steps[0]);
    reporter.on_job_finished(lint, &lint_result);
    reporter.on_job_finished(build, &build_result);
    let results = run(vec![build_result, lint_result]);
    reporter.finish(&results);
    results
}

#[test]
fn plain_lines_then_failures_then_summary() {
    let (reporter, buffer) = plain(false, false);
    play(&reporter);
    let expected = "\
runner: demo (pipelines/demo.yml): 2 jobs
[build] started (minimal, 1 vCPU, 512M)
[build] cc main.c
[build] make ... ok (1.2s)
[build] make test ... FAILED (exit code 2, 1.2s)
[lint] started (minimal, 1 vCPU, 512M)
[lint] clippy ... FAILED (exit code 1, 1.2s)
[lint] FAILED (allowed to fail) in 3s
[build] FAILED in 3s

==== build › make test: exit code 2 ====
--- stdout (all) ---
out
--- stderr (last 2 lines) ---
two
three
full log: out/01-a/job.log

==== lint › clippy: exit code 1 (allowed to fail) ====
--- stdout (all) ---
out
full log: out/01-a/job.log

1 passed, 1 failed, 1 allowed failure in 34.5s
";
    assert_eq!(buffer.text(), expected);
}

#[test]
fn colours_never_touch_the_summary_line() {
    let (reporter, buffer) = plain(false, true);
    play(&reporter);
    let text = buffer.text();
    assert!(text.contains("[build] make ... \x1b[32mok\x1b[0m (1.2s)"));
    assert!(text.contains("\x1b[1;31mFAILED\x1b[0m"));
    assert!(text.ends_with("\n1 passed, 1 failed, 1 allowed failure in 34.5s\n"));
}

/// Section timestamps replaced by `T`, escapes made visible.
fn normalized_sections(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let line = line.replace("\x1b[0K", "<K>").replace('\r', "<CR>");
            for tag in ["section_start:", "section_end:"] {
                if let Some(at) = line.find(tag) {
                    let rest = &line[at + tag.len()..];
                    let colon = rest.find(':').unwrap();
                    let ts: u64 = rest[..colon].parse().unwrap();
                    assert!(ts > 1_700_000_000);
                    return format!("{}{tag}T{}", &line[..at], &rest[colon..]);
                }
            }
            line
        })
        .collect()
}

#[test]
fn gitlab_sections_wrap_each_jobs_lines() {
    let (reporter, buffer) = plain(true, false);
    play(&reporter);
    let lines = normalized_sections(&buffer.text());
    // `build` started first: its section is live. `lint` ran meanwhile;
    // its lines follow in a section of its own, not collapsed as it failed.
    assert_eq!(
        lines[..12],
        [
            "runner: demo (pipelines/demo.yml): 2 jobs",
            "<K>section_start:T:runner_job_01-build[collapsed=true]<CR><K>[build] started (minimal, 1 vCPU, 512M)",
            "[build] cc main.c",
            "[build] make ... ok (1.2s)",
            "[build] make test ... FAILED (exit code 2, 1.2s)",
            "<K>section_end:T:runner_job_01-build<CR><K>",
            "[build] FAILED in 3s",
            "<K>section_start:T:runner_job_02-lint<CR><K>[lint] started (minimal, 1 vCPU, 512M)",
            "[lint] clippy ... FAILED (exit code 1, 1.2s)",
            "<K>section_end:T:runner_job_02-lint<CR><K>",
            "[lint] FAILED (allowed to fail) in 3s",
            "",
        ]
    );
}

#[test]
fn boot_errors_show_the_serial_tail() {
    let (reporter, buffer) = plain(false, false);
    let boot = job(
        "b",
        JobOutcome::BootError {
            message: "agent silent".into(),
            serial_tail: vec!["panic\x1b[0m".into()],
        },
        vec![],
    );
    reporter.on_job_finished(&plan().jobs[0], &boot);
    reporter.finish(&run(vec![boot]));
    assert_eq!(
        buffer.text(),
        "[b] VM FAILED TO BOOT: agent silent\n\n==== b: VM failed to boot: agent silent ====\n\
         --- serial console, last line ---\npanic\n\n0 passed, 1 failed in 34.5s\n"
    );
}

#[test]
fn services_get_a_line_each_and_a_failed_one_its_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (reporter, buffer) = plain(false, false);
    let queries = job_with_services(dir.path());
    let log = queries.services[1].log_path.display().to_string();
    reporter.on_job_finished(&plan().jobs[0], &queries);
    reporter.finish(&run(vec![queries]));
    let why = "was not ready within 2s (`ready` failed 3 times: redis-cli ping)";
    assert_eq!(
        buffer.text(),
        format!(
            "[queries] ERROR: service `cache` {why} (its log: {log})\n\
             \n==== queries › service cache: {why} ====\n\
             --- log (last 2 lines) ---\nCould not connect\n==> {why}\nfull log: {log}\n\
             \n==== queries: services ====\ndb: ready after 3.2s\ncache: failed: {why}\n\
             \n1 passed, 1 failed in 34.5s\n"
        )
    );
}

#[test]
fn options_follow_terminal_and_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let tty = ConsoleOptions::from_env(true, env(&[]));
    assert_eq!(
        (tty.mode, tty.gitlab_sections, tty.color),
        (ConsoleMode::Live, false, true)
    );
    let ci = ConsoleOptions::from_env(true, env(&[("CI", "true")]));
    assert_eq!(ci.mode, ConsoleMode::Plain);
    let not_ci = ConsoleOptions::from_env(true, env(&[("CI", "false")]));
    assert_eq!(not_ci.mode, ConsoleMode::Live);
    let pipe = ConsoleOptions::from_env(false, env(&[]));
    assert_eq!((pipe.mode, pipe.color), (ConsoleMode::Plain, false));
    let gitlab = ConsoleOptions::from_env(false, env(&[("CI", "true"), ("GITLAB_CI", "true")]));
    assert_eq!(
        (gitlab.mode, gitlab.gitlab_sections, gitlab.color),
        (ConsoleMode::Plain, true, true)
    );
    let no_color = ConsoleOptions::from_env(true, env(&[("NO_COLOR", "1")]));
    assert!(!no_color.color);
    let dumb = ConsoleOptions::from_env(true, env(&[("TERM", "dumb")]));
    assert_eq!(dumb.mode, ConsoleMode::Plain);
}

#[test]
fn parallel_jobs_never_mix_inside_a_line() {
    let (reporter, buffer) = plain(false, false);
    let reporter = Arc::new(reporter);
    let src = (0..8)
        .map(|i| format!("  j{i}:\n    steps: [a, b, c]\n"))
        .collect::<String>();
    let plan = Plan::new(
        &Pipeline::parse(&format!("jobs:\n{src}"), Path::new("p.yml"), Path::new("/")).unwrap(),
    );
    std::thread::scope(|scope| {
        for planned in &plan.jobs {
            let reporter = Arc::clone(&reporter);
            scope.spawn(move || {
                reporter.on_job_started(planned);
                for _ in 0..50 {
                    for s in &planned.steps {
                        reporter.on_step_finished(planned, s, &step(&s.name, StepStatus::Passed));
                    }
                }
            });
        }
    });
    let text = buffer.text();
    assert_eq!(text.lines().count(), 8 * (1 + 150));
    for line in text.lines() {
        let ok =
            (line.starts_with("[j") && line.ends_with(" ... ok (1.2s)")) || line.ends_with("512M)");
        assert!(ok, "mangled line {line:?}");
    }
}

/// Records what indicatif draws.
#[derive(Debug, Default, Clone)]
struct Screen(Arc<Mutex<String>>);

impl TermLike for Screen {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.lock().unwrap().push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fn wait_for(screen: &Screen, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if screen.0.lock().unwrap().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn live_mode_shows_a_spinner_per_job_with_step_and_last_output() {
    let screen = Screen::default();
    let buffer = Buffer::default();
    let options = ConsoleOptions {
        mode: ConsoleMode::Live,
        gitlab_sections: false,
        color: false,
        failure_tail_lines: 5,
        suggest_allow: false,
    };
    let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
    let reporter = ConsoleReporter::with_draw_target(options, Box::new(buffer.clone()), target);
    let plan = plan();
    let build = &plan.jobs[0];
    reporter.on_job_started(build);
    reporter.on_job_progress(build, "booting");
    assert!(
        wait_for(&screen, "build [0s] booting"),
        "{}",
        screen.0.lock().unwrap()
    );
    reporter.on_step_started(build, &build.steps[1]);
    reporter.on_step_output(
        build,
        &build.steps[1],
        OutputStream::Stderr,
        b"running 3 tests\n\x1b[32mtest a ... ok\x1b[0m\n\n",
    );
    assert!(
        wait_for(&screen, "step 2/2: make test  test a ... ok"),
        "{}",
        screen.0.lock().unwrap()
    );
    reporter.on_step_finished(
        build,
        &build.steps[1],
        &step("make test", StepStatus::Passed),
    );
    reporter.on_job_finished(build, &job("build", JobOutcome::Passed, vec![]));
    reporter.finish(&run(vec![]));
    assert_eq!(
        buffer.text(),
        "[build] make test ... ok (1.2s)\n[build] passed in 3s, boot 1.4s\n\n0 passed, 0 failed in 34.5s\n"
    );
}

/// What the job's VM used is on its line, and a job close to its memory
/// gets a block that names the setting to raise.
#[test]
fn a_jobs_use_is_on_its_line_and_a_near_limit_is_warned() {
    let (reporter, buffer) = plain(false, false);
    let build = crate::results::tests::metered("build", 2500, 460, 480);
    reporter.on_job_finished(&plan().jobs[0], &build);
    reporter.finish(&run(vec![build]));
    let text = buffer.text();
    assert!(
        text.starts_with("[build] passed in 3s, boot 1.4s, cpu 2.5s, memory 460/480 MiB\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "\n==== build: close to its limits ====\nused 95% of its memory at peak \
             (460 of 480 MiB): raise `memory` before it runs out\n"
        ),
        "{text}"
    );
}

/// A job's network is on its line; a blocked job lists what was refused,
/// an audit every destination, and `--suggest-allow` the list to paste.
#[test]
fn a_jobs_network_is_reported_and_an_allow_list_suggested() {
    let (reporter, buffer) = plain(false, false);
    let blocked = crate::results::tests::networked("build", false);
    reporter.on_job_finished(&plan().jobs[0], &blocked);
    reporter.finish(&run(vec![blocked]));
    let text = buffer.text();
    assert!(
        text.contains("memory 100/500 MiB, net 1.3 KiB out, 34.2 KiB in\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "\n==== build: network refused ====\ndenied   TCP  -  10.0.0.5:5432\n\
             refused  DNS  evil.example (NXDOMAIN)\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("crates.io"),
        "only refusals without an audit: {text}"
    );
    assert!(!text.contains("would have sufficed"), "{text}");

    let buffer = Buffer::default();
    let options = ConsoleOptions {
        suggest_allow: true,
        ..ConsoleOptions::from_env(false, |_| None)
    };
    let reporter = ConsoleReporter::new(options, Box::new(buffer.clone()));
    reporter.finish(&run(vec![crate::results::tests::networked("build", true)]));
    let text = buffer.text();
    assert!(
        text.contains("==== build: network audit (net 1.3 KiB out, 34.2 KiB in) ====\nallowed  TCP  crates.io"),
        "{text}"
    );
    assert!(
        text.contains(
            "==== allow lists that would have sufficed (--suggest-allow) ====\nbuild:\n  network:\n    \
             allow: [\"crates.io:443\", \"10.0.0.5:5432\"]\n"
        ),
        "{text}"
    );
}
