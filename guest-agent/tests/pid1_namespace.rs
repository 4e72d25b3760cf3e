//! The agent as PID 1, on the host: inside fresh PID, mount, UTS and network
//! namespaces (`unshare`), so its mounts, hostname and loopback setup touch
//! nothing outside. Needs root and util-linux `unshare`; without them the
//! test fails with one line saying so (it must never pass untested).

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_protocol::{Message, PROTOCOL_VERSION};
use common::{script, Client};

struct Pid1Agent {
    unshare: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Pid1Agent {
    fn drop(&mut self) {
        // --kill-child takes the agent (the namespace's init) and so every
        // process in the namespace down with unshare.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn can_unshare() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn pid1_mode_sets_up_the_guest_and_reaps_orphans() {
    assert!(
        can_unshare(),
        "needs root and a working `unshare` (apt-get install util-linux)"
    );
    // As PID 1 the agent mounts fresh tmpfs on /tmp and /run in its mount
    // namespace, so the socket must live elsewhere (the checkout itself may
    // be under /tmp).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let socket = dir.path().join("pid1.sock");
    let unshare = std::process::Command::new("unshare")
        .args(["--pid", "--kill-child", "--mount-proc", "--uts", "--net"])
        .args(["--propagation", "private"])
        .arg(env!("CARGO_BIN_EXE_guest-agent"))
        .arg("--listen-unix")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Pid1Agent { unshare, _dir: dir };
    let until = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("agent never listened: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut c = Client { stream };
    assert!(matches!(c.hello(PROTOCOL_VERSION), Message::Hello { .. }));

    let out = c.exec(script(
        "cat /proc/1/comm; hostname; stat -f -c %T /tmp /run /dev/shm; \
         ip -o link show lo | grep -c '<LOOPBACK,UP'; ip -4 -o addr show lo | grep -o 'inet [0-9./]*'",
    ));
    assert_eq!(
        out.stdout_str(),
        "guest-agent\nrunner\ntmpfs\ntmpfs\ntmpfs\n1\ninet 127.0.0.1/8\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An orphan is adopted by PID 1 (the agent) and reaped when it exits.
    let out = c.exec(script("(sleep 0.3 >/dev/null 2>&1 & echo $!) ; sleep 0.1"));
    let orphan = out.stdout_str().trim().to_string();
    let stat = c.exec(script(&format!("cut -d' ' -f4 /proc/{orphan}/stat")));
    assert_eq!(stat.stdout_str(), "1\n", "orphan not adopted by PID 1");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies = c.exec(script(
            "for s in /proc/[0-9]*/stat; do cut -d' ' -f1,3 $s; done 2>/dev/null | grep -c ' Z$' || true",
        ));
        let gone = c.exec(script(&format!(
            "test -e /proc/{orphan} && echo alive || echo gone"
        )));
        if zombies.stdout_str() == "0\n" && gone.stdout_str() == "gone\n" {
            break;
        }
        assert!(Instant::now() < until, "orphan {orphan} not reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
}
