//! The vring worker must sleep while it has nothing to do, also before the
//! frontend shared guest memory and while a host program waits for the guest.
//! Alone in its own test binary so no other worker thread shares the process.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use runner_vhost::{VsockServer, VsockServerConfig};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

/// CPU time (clock ticks) used so far by this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(14) + field(15);
    }
    total
}

#[test]
fn worker_sleeps_while_host_programs_wait_for_the_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = VsockServer::start(VsockServerConfig {
        socket_path: dir.path().join("vu.sock"),
        uds_path: dir.path().join("vm.vsock"),
        guest_cid: 3,
    })
    .expect("start");
    // A frontend that connects but, like QEMU before the guest driver is up,
    // sends no memory table.
    let frontend = Frontend::connect(server.socket_path(), 3).expect("frontend");
    frontend.set_owner().expect("set_owner");
    let mut hosts = Vec::new();
    for port in 0..4 {
        let mut host = UnixStream::connect(server.uds_path()).expect("connect");
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("write");
        hosts.push(host);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = thread_ticks("vring_worker");
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_ticks("vring_worker") - before;
    // A spinning worker would use ~100 ticks per second.
    assert!(used <= 5, "vring worker used {used} ticks while idle");
    server.stop().expect("stop");
}
