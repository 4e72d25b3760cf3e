//! Metering end to end: what a job's VM used (its vCPUs' CPU time from the
//! host, the most guest memory in use during its steps and what they wrote
//! to its disk from the agent) is on its console line and in its JUnit
//! properties, close to what the job really used; a job near its `memory`
//! gets a warning naming the setting.

use e2e_tests::{both, job_log, runner_test, vm_dirs};

/// A JUnit property's value, as a number.
fn property(xml: &str, name: &str) -> f64 {
    let at = xml
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no property {name} in:\n{xml}"));
    let value = &xml[at + name.len() + 15..];
    value[..value.find('"').unwrap()].parse().unwrap()
}

/// Fills a tmpfs with `MIB` MiB and keeps it a second: the agent samples
/// memory ten times a second.
fn fill(mib: &str) -> String {
    format!(
        "mkdir -p /fill && mount -t tmpfs -o size=600M none /fill && \
         dd if=/dev/zero of=/fill/x bs=1M count={mib} 2>/dev/null && sleep 1 && rm /fill/x"
    )
}

#[test]
fn a_job_that_fills_300_mib_of_512_reports_it_and_one_near_its_memory_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    // `near` fills memory up to 94% of what the kernel has (MemTotal),
    // counting what is in use already.
    let near = "want=$(awk '/MemTotal/ {t = $2} /MemAvailable/ {a = $2} \
                END {print int((t * 0.94 - (t - a)) / 1024)}' /proc/meminfo)";
    let yaml = format!(
        r#"
memory: 512M
defaults: {{ files: none }}
jobs:
  fills:
    steps:
      - {}
  near:
    steps:
      - {near}; echo "filling $want MiB"; {}
  writes:
    image: {{ base: minimal, size: 1G }}
    steps:
      - dd if=/dev/urandom of=/var/written bs=1M count=100 2>/dev/null && sync
"#,
        fill("300"),
        fill("$want")
    );
    let out = runner_test(dir.path(), &yaml).output().unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    let (fills, rest) = xml.split_at(xml.find("name=\"near\"").unwrap());
    let (near_suite, writes) = rest.split_at(rest.find("name=\"writes\"").unwrap());

    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    let peak = mib(property(fills, "memory_peak_bytes"));
    let total = mib(property(fills, "memory_total_bytes"));
    assert!((270.0..=330.0).contains(&peak), "peak {peak} MiB:\n{text}");
    assert!((450.0..=512.0).contains(&total), "total {total} MiB");
    assert!(property(fills, "cpu_seconds") > 0.0, "{xml}");
    // Not near its limit: no warning.
    assert!(!text.contains("fills: close to its limits"), "{text}");
    assert!(!job_log(dir.path(), "fills").contains("warning: used"));

    let share =
        property(near_suite, "memory_peak_bytes") / property(near_suite, "memory_total_bytes");
    assert!((0.90..=0.98).contains(&share), "{share}:\n{text}");
    assert!(
        text.contains("==== near: close to its limits ===="),
        "{text}"
    );
    let warning = text
        .lines()
        .find(|l| l.starts_with("used ") && l.contains("of its memory at peak"))
        .unwrap_or_else(|| panic!("no warning line in:\n{text}"));
    assert!(
        warning.ends_with("raise `memory` before it runs out"),
        "{warning}"
    );
    assert!(job_log(dir.path(), "near").contains("==> warning: used"));
    // 100 MiB written to the disk of a `size: 1G` image, read from the
    // guest's block layer (the file system's journal adds a little).
    let written = mib(property(writes, "disk_written_bytes"));
    assert!(
        (100.0..=110.0).contains(&written),
        "written {written} MiB:\n{text}"
    );
    let disk = mib(property(writes, "disk_total_bytes"));
    assert!((900.0..=1024.0).contains(&disk), "disk {disk} MiB");
    assert!(mib(property(writes, "disk_used_bytes")) >= 100.0, "{xml}");
    // The console's line for each job says it too.
    assert!(
        text.lines().any(|l| l.starts_with("[fills] passed in")
            && l.contains(", cpu ")
            && l.contains(", memory ")),
        "{text}"
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

/// A step that failed because the guest ran out of memory, or because its
/// file system was full, says so in its failure, with the setting to raise.
#[test]
fn a_step_failed_by_the_oom_killer_or_a_full_disk_says_which() {
    let dir = tempfile::tempdir().unwrap();
    // `tail` keeps a whole line in memory, and /dev/zero has no newline:
    // it grows until the kernel kills it.
    let yaml = r#"
memory: 256M
defaults: { files: none }
jobs:
  starved:
    steps:
      - head -c 2000m /dev/zero | tail >/dev/null
  full:
    steps:
      - mkdir -p /small && mount -t tmpfs -o size=8M none /small
      - name: fill
        run: dd if=/dev/zero of=big bs=1M count=20
        workdir: /small
"#;
    let out = runner_test(dir.path(), yaml).output().unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "; the guest ran out of memory: the kernel killed 1 process (raise `memory`)"
        ),
        "{text}"
    );
    assert!(
        text.contains("exit code 1; its working directory's file system was full (give the image a larger `size`)"),
        "{text}"
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
