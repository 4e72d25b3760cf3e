//! The guest agent, driven over vsock in a real kernel booted under the
//! default backend, with the minimal rootfs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_protocol::{Command, ExecRequest};
use e2e_tests::{boot, run, script_request, sh};
use runner::session::{new_clone_id, ArtifactBudget, ArtifactLimits, FileEntry, SessionError};

#[test]
fn commands_report_output_exit_codes_signals_and_timeouts() {
    let vm = boot("exec-semantics");
    let mut s = vm.session;

    let ran = sh(&mut s, "echo to-out; echo to-err >&2; echo more-out");
    assert_eq!(ran.stdout(), "to-out\nmore-out\n");
    assert_eq!(ran.stderr(), "to-err\n");
    assert_eq!(ran.status.code, Some(0));

    assert_eq!(sh(&mut s, "exit 1").status.code, Some(1));
    assert_eq!(sh(&mut s, "uname -s").stdout(), "Linux\n");

    let missing = run(
        &mut s,
        ExecRequest {
            command: Command::Argv(vec!["/no/such/binary".into(), "x".into()]),
            ..Default::default()
        },
    );
    assert_eq!(missing.status.code, Some(127));
    let message = missing
        .status
        .error
        .expect("a message for a missing binary");
    assert!(message.contains("/no/such/binary"), "{message}");

    let killed = sh(&mut s, "kill -9 $$");
    assert_eq!(killed.status.code, None);
    assert_eq!(killed.status.signal, Some(9));

    // The timeout kills the whole process group, background children too.
    let start = Instant::now();
    let timed = run(
        &mut s,
        script_request("sleep 1000 & sleep 1000", Some(Duration::from_secs(2))),
    );
    assert!(timed.status.timed_out, "{:?}", timed.status);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let left = sh(&mut s, "ps -o comm | grep -c '^sleep' || true");
    assert_eq!(
        left.stdout().trim(),
        "0",
        "sleep processes survived the timeout"
    );
}

#[test]
fn twenty_megabytes_of_output_arrive_intact_and_files_round_trip() {
    let vm = boot("bulk");
    let mut s = vm.session;

    // 20 MiB of pseudo-random bytes; compare a checksum computed in the guest.
    let ran = sh(
        &mut s,
        "head -c 20971520 /dev/urandom > /tmp/blob && md5sum /tmp/blob >&2 && cat /tmp/blob",
    );
    assert_eq!(ran.status.code, Some(0), "{}", ran.stderr());
    assert_eq!(ran.stdout.len(), 20 * 1024 * 1024);
    let guest_sum = ran.stderr().split_whitespace().next().unwrap().to_string();
    assert_eq!(md5_hex(&ran.stdout), guest_sum);

    // A small tree goes in and comes back byte-identical, modes included.
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(src.join("nested/data.bin"), &payload).unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    set_mode(&src.join("run.sh"), 0o755);
    let entries = [FileEntry {
        host: src.clone(),
        guest: "src".into(),
    }];
    let put = s.put_files("/work", &entries).expect("put");
    assert!(put.bytes >= payload.len() as u64, "{put:?}");
    assert_eq!(sh(&mut s, "/work/src/run.sh").stdout(), "ran\n");

    let back = host.path().join("back");
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let got = s
        .get_files("/work", &["src".into()], &back, &mut budget)
        .expect("get");
    assert!(got.refused.is_empty() && got.error.is_none(), "{got:?}");
    assert_eq!(
        std::fs::read(back.join("src/nested/data.bin")).unwrap(),
        payload
    );
    assert_eq!(mode(&back.join("src/run.sh")) & 0o777, 0o755);

    let err = s
        .get_files("/work", &["does-not-exist".into()], &back, &mut budget)
        .unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    // The session is still usable after a failed transfer.
    assert_eq!(sh(&mut s, "echo ok").stdout(), "ok\n");
}

#[test]
fn several_connections_are_served_at_once() {
    let vm = boot("connections");
    let mut a = vm.session();
    let mut b = vm.session();
    // `a` waits on a fifo that only `b`'s command writes: if the agent
    // served one connection at a time, whichever ran first would wait until
    // its (far-off) timeout, and `a` would not see `b`'s word. No timing is
    // measured, so a slow machine cannot fail this.
    let limit = Some(Duration::from_secs(300));
    let reader = std::thread::spawn(move || {
        run(
            &mut a,
            script_request("mkfifo /tmp/f; read word < /tmp/f; echo got $word", limit),
        )
    });
    let writer = run(
        &mut b,
        script_request(
            "until [ -p /tmp/f ]; do sleep 0.1; done; echo fast > /tmp/f; echo sent",
            limit,
        ),
    );
    assert_eq!(writer.stdout(), "sent\n", "{}", writer.stderr());
    let reader = reader.join().unwrap();
    assert!(
        !reader.status.timed_out,
        "blocked behind another connection"
    );
    assert_eq!(reader.stdout(), "got fast\n", "{}", reader.stderr());
    drop(vm.session);
}

#[test]
fn shutdown_powers_the_vm_off() {
    let mut vm = boot("shutdown");
    let mut s = vm.session();
    // Written data must survive until the sync, then the VM stops by itself.
    sh(&mut s, "echo bye > /tmp/x");
    vm.session.ping().expect("ping");
    let session = std::mem::replace(&mut vm.session, s);
    session.shutdown().expect("shutdown acknowledged");
    assert!(
        vm.vm.wait_exit(Duration::from_secs(30)),
        "the VM kept running after shutdown"
    );
}

/// What a clone restored from a snapshot is told first. No snapshot is
/// needed to test it: a cold-booted guest with its clock set decades back
/// stands in for a clone that wakes up with the snapshot's stale state.
#[test]
fn a_restore_announcement_sets_the_clock_and_identity_once_per_generation() {
    let vm = boot("restore");
    let mut other = vm.session();
    let mut s = vm.session;

    let stale = sh(&mut s, "date -s @1000000000 >/dev/null && date +%s");
    assert_eq!(stale.status.code, Some(0), "{}", stale.stderr());
    let stale: u64 = stale.stdout().trim().parse().expect("seconds");
    assert!(
        stale < 1_000_000_000 + 600,
        "the clock was not set back: {stale}"
    );

    let first = new_clone_id().expect("a clone id");
    let started = Instant::now();
    s.announce_restore(1, &first).expect("restore applied");
    // Informative only (no timing is asserted): what a restore adds.
    eprintln!("restore announced and applied in {:?}", started.elapsed());
    let guest_now: i64 = sh(&mut s, "date +%s").stdout().trim().parse().unwrap();
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest_now - host_now).abs() <= 120,
        "guest clock {guest_now}, host clock {host_now}"
    );
    assert_eq!(
        sh(&mut s, "cat /etc/machine-id").stdout(),
        format!("{first}\n")
    );
    // The kernel RNG still works after the reseed.
    let random = sh(
        &mut s,
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
    );
    assert_eq!(random.stdout().len(), 32, "{}", random.stderr());

    // Announcing the same generation again is a host bug: refused, and
    // nothing changes.
    let second = new_clone_id().expect("a clone id");
    let err = s.announce_restore(1, &second).unwrap_err();
    assert!(
        matches!(&err, SessionError::Agent(m) if m.contains("generation 1 is not newer")),
        "{err}"
    );
    assert_eq!(
        sh(&mut s, "cat /etc/machine-id").stdout(),
        format!("{first}\n")
    );

    // A newer generation is applied, from any connection.
    other.announce_restore(2, &second).expect("restore applied");
    assert_eq!(
        sh(&mut s, "cat /etc/machine-id").stdout(),
        format!("{second}\n")
    );
    assert_eq!(
        sh(&mut s, "stat -c %a /etc/machine-id").stdout(),
        "444\n",
        "machine-id is read-only, as systemd writes it"
    );
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode()
}

/// MD5 by the host's `md5sum`, to compare with the guest's busybox one.
fn md5_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
