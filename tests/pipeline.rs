//! `runner test` on a real pipeline: passing, failing, timing-out and matrix
//! jobs in parallel VMs, checked through the JUnit file (parsed back), the
//! console and the exit code.

use std::path::Path;
use std::process::Output;

use e2e_tests::runner_test;

const PIPELINE: &str = r#"
name: e2e
image: minimal
defaults:
  files: none
  timeout: 2m
jobs:
  writer:
    steps:
      - name: writes into the root file system
        run: echo secret > /root/leak && echo wrote
      - name: stays up a while
        run: sleep 4
  reader:
    steps:
      - name: sees nothing of other jobs
        run: test ! -e /root/leak && sleep 4
      - name: deliberate failure
        run: echo boom >&2; exit 4
      - name: never runs
        run: "true"
  slow:
    steps:
      - name: sleeps too long
        run: sleep 1000
        timeout: 2s
  matrix:
    matrix:
      N: [1, 2]
    steps:
      - name: square
        run: echo "N*N=$((N * N))"
  loud:
    steps:
      - name: prints three megabytes
        run: head -c 3000000 /dev/zero | tr '\0' x
"#;

fn run_pipeline(dir: &Path, yaml: &str, extra: &[&str]) -> Output {
    runner_test(dir, yaml).args(extra).output().unwrap()
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(tag))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (start, end) of a testsuite in seconds since the epoch, from its
/// `timestamp` and `time` attributes.
fn interval(suite: roxmltree::Node) -> (f64, f64) {
    let stamp = suite.attribute("timestamp").expect("timestamp");
    let start = chrono_like_seconds(stamp);
    let time: f64 = suite.attribute("time").unwrap().parse().unwrap();
    (start, start + time)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff][Z|+00:00]` (UTC) → seconds since the epoch,
/// date included: two suites may straddle midnight.
fn chrono_like_seconds(stamp: &str) -> f64 {
    let (date, time) = stamp.split_once('T').unwrap();
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (y, m, d) = (
        ymd.next().unwrap(),
        ymd.next().unwrap(),
        ymd.next().unwrap(),
    );
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let time = time.trim_end_matches('Z');
    let time = time.split('+').next().unwrap();
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    days as f64 * 86_400.0 + h * 3600.0 + m * 60.0 + s
}

#[test]
fn timestamps_count_from_the_epoch_across_midnight() {
    assert_eq!(chrono_like_seconds("1970-01-01T00:00:00Z"), 0.0);
    assert_eq!(
        chrono_like_seconds("2026-12-07T23:59:59Z") + 2.0,
        chrono_like_seconds("2026-12-08T00:00:01Z")
    );
    assert_eq!(
        chrono_like_seconds("2000-03-01T00:00:00+00:00"),
        951_868_800.0
    );
}

#[test]
fn a_pipeline_runs_in_parallel_vms_and_reports_junit() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(
        dir.path(),
        PIPELINE,
        &["--jobs", "2", "--output-limit", "10000"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );

    // Console: every failure with its output, then one summary line.
    assert!(stdout.contains("boom"), "{stdout}");
    assert!(stdout.contains("exit code 4"), "{stdout}");
    assert!(stdout.contains("timed out"), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("6 passed, 2 failed, 1 skipped in "),
        "{summary}"
    );

    // JUnit: one suite per job, one case per step.
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let suites: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    let names: Vec<_> = suites
        .iter()
        .map(|s| s.attribute("name").unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "writer",
            "reader",
            "slow",
            "matrix (N=1)",
            "matrix (N=2)",
            "loud"
        ]
    );
    let case = |suite: &str, name: &str| {
        doc.descendants()
            .find(|n| {
                n.has_tag_name("testcase")
                    && n.attribute("classname") == Some(suite)
                    && n.attribute("name") == Some(name)
            })
            .unwrap_or_else(|| panic!("no testcase {suite} / {name}"))
    };

    let failed = case("reader", "deliberate failure");
    let failure = child(failed, "failure").expect("a failure element");
    assert!(failure
        .attribute("message")
        .unwrap()
        .contains("exit code 4"));
    let err = child(failed, "system-err").expect("system-err");
    assert!(err.text().unwrap().contains("boom"));
    let skipped = case("reader", "never runs");
    assert!(child(skipped, "skipped").is_some());
    let timed_out = case("slow", "sleeps too long");
    let failure = child(timed_out, "failure").expect("a failure for the timeout");
    assert!(failure.attribute("message").unwrap().contains("timed out"));
    let square = case("matrix (N=2)", "square");
    assert!(child(square, "system-out")
        .unwrap()
        .text()
        .unwrap()
        .contains("N*N=4"));
    // The file job `writer` wrote is not visible to job `reader`.
    assert!(child(case("reader", "sees nothing of other jobs"), "failure").is_none());

    // --jobs 2: the first two jobs ran at the same time.
    let (a_start, a_end) = interval(suites[0]);
    let (b_start, b_end) = interval(suites[1]);
    assert!(
        a_start < b_end && b_start < a_end,
        "writer {a_start}..{a_end} and reader {b_start}..{b_end} did not overlap"
    );
    // Output over the limit: trimmed in the report with a note, whole in
    // the job's log file.
    let loud = child(case("loud", "prints three megabytes"), "system-out").unwrap();
    let kept = loud.text().unwrap();
    assert!(kept.len() < 20_000, "{} bytes kept", kept.len());
    assert!(kept.contains("omitted"), "no trimming note");
    let log = std::fs::read(dir.path().join("out/logs/06-loud.log")).unwrap();
    assert!(log.iter().filter(|&&b| b == b'x').count() == 3_000_000);

    // Full logs per job, VM directories gone.
    assert_eq!(dir.path().join("out/logs").read_dir().unwrap().count(), 6);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("runner-vm-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_pipelines_get_a_located_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let typo = "name: t\njobs:\n  a:\n    stpes:\n      - run: true\n";
    let out = run_pipeline(dir.path(), typo, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pipeline.yml:4:5"), "{stderr}");
    assert!(stderr.contains("did you mean `steps`"), "{stderr}");

    let missing_image =
        "name: t\nimage:\n  rootfs: ./nope.ext4\njobs:\n  a:\n    steps: [\"true\"]\n";
    let out = run_pipeline(dir.path(), missing_image, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("rootfs/build.sh"), "{stderr}");
    assert!(
        !dir.path().join("out/junit.xml").exists(),
        "no report for a run that never started"
    );
}

#[test]
fn a_bad_cache_gets_a_located_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let one_line = |out: &Output| {
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let overlapping = "name: t\njobs:\n  a:\n    cache:\n      - { key: a, paths: [/root/.cache] }\n      - { key: b, paths: [/root/.cache/pip] }\n    steps: [\"true\"]\n";
    let stderr = one_line(&run_pipeline(dir.path(), overlapping, &[]));
    assert!(
        stderr.contains("pipeline.yml:6:27: cache path `/root/.cache/pip` overlaps `/root/.cache`"),
        "{stderr}"
    );
    let outside =
        "name: t\njobs:\n  a:\n    cache: { key: k, paths: [/proc/x] }\n    steps: [\"true\"]\n";
    let stderr = one_line(&run_pipeline(dir.path(), outside, &[]));
    assert!(
        stderr.contains(
            "pipeline.yml:4:30: cache path `/proc/x` is outside the guest's writable tree"
        ),
        "{stderr}"
    );
    // Beyond the operator's grant: refused before anything boots.
    let big = "name: t\njobs:\n  a:\n    cache: { key: k, paths: [/root/.cache], size: 8G }\n    steps: [\"true\"]\n";
    let stderr = one_line(&run_pipeline(dir.path(), big, &["--max-cache-size", "4G"]));
    assert!(
        stderr.contains("job `a`: cache `k` has `size: 8G`, more than the 4G allowed; pass --max-cache-size to grant it"),
        "{stderr}"
    );
    assert!(!dir.path().join("out/junit.xml").exists());
}

/// A root file system whose init prints a line and then sleeps for ever: the
/// kernel boots, but the agent never answers, however fast the machine is.
fn never_ready_rootfs(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("never-ready");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("sbin")).unwrap();
    let busybox = e2e_tests::require_tool("/bin/busybox", "busybox-static");
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    let init = tree.join("sbin/runner-init");
    std::fs::write(
        &init,
        "#!/bin/busybox sh\necho 'init: this guest never starts an agent'\nexec /bin/busybox sleep 2147483647\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.join("never-ready.ext4");
    let mkfs = e2e_tests::require_tool("mkfs.ext4", "e2fsprogs");
    let status = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("8M")
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    image
}

#[test]
fn a_guest_that_is_never_ready_is_a_boot_error_with_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let image = never_ready_rootfs(dir.path());
    let yaml = format!(
        "name: t\nimage: {{ rootfs: {} }}\ndefaults: {{ files: none }}\njobs:\n  a:\n    steps: [\"true\"]\n",
        image.display()
    );
    // Long enough for any machine to reach init; the guest never answers, so
    // the timeout trips whatever the speed.
    let out = run_pipeline(dir.path(), &yaml, &["--boot-timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let boot = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("(boot)"))
        .expect("a (boot) testcase");
    let error = child(boot, "error").expect("an error element");
    assert!(
        error
            .attribute("message")
            .unwrap()
            .contains("did not answer"),
        "{xml}"
    );
    // The console's last lines travel with the error: kernel messages and
    // the init's own line.
    let body = error.text().unwrap_or_default();
    assert!(body.contains("serial console"), "{xml}");
    assert!(body.lines().any(|l| l.starts_with("[ ")), "{xml}");
    assert!(body.contains("never starts an agent"), "{xml}");
}

#[test]
fn a_guest_that_powers_off_mid_step_is_an_error_with_the_console() {
    let dir = tempfile::tempdir().unwrap();
    // `poweroff -f` skips init: the kernel halts at once, under the agent's
    // feet. The step's own timeout is far away, so only noticing the lost
    // agent can end the step in time.
    let yaml = r#"
name: t
defaults: { files: none }
jobs:
  dies:
    steps:
      - name: powers off
        run: echo going down; poweroff -f; sleep 1000
        timeout: 30m
      - name: never runs
        run: "true"
"#;
    let started = std::time::Instant::now();
    let out = run_pipeline(dir.path(), yaml, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Far below the step's timeout: the loss was noticed, not waited out.
    assert!(started.elapsed() < std::time::Duration::from_secs(600));
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("powers off"))
        .expect("a testcase for the step");
    let error = child(case, "error").expect("an error element");
    let message = error.attribute("message").unwrap();
    assert!(message.contains("closed the connection"), "{xml}");
    // The body names the VM's state and carries the console: the kernel's
    // own last words (`reboot: System halted` or `reboot: Power down`).
    let body = error.text().unwrap_or_default();
    assert!(body.contains("the VM"), "{xml}");
    assert!(body.contains("last console lines"), "{xml}");
    assert!(body.contains("reboot: "), "{xml}");
    assert!(body.contains("going down"), "{xml}");
}
