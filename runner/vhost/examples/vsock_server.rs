//! Runs one [`VsockServer`] until QEMU disconnects or the process gets
//! SIGINT/SIGTERM. Used by `tests/bench/vsock.sh`.
//!
//!     cargo run --release -p runner-vhost --example vsock_server -- \
//!         --socket /tmp/vu.sock --uds /tmp/vm.vsock [--cid 3]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runner_vhost::{VsockServer, VsockServerConfig};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut socket = None;
    let mut uds = None;
    let mut cid = 3u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--uds" => uds = Some(PathBuf::from(value()?)),
            "--cid" => cid = value()?.parse()?,
            other => {
                anyhow::bail!("unknown argument {other}; usage: --socket PATH --uds PATH [--cid N]")
            }
        }
    }
    let config = VsockServerConfig {
        socket_path: socket.ok_or_else(|| anyhow::anyhow!("--socket is required"))?,
        uds_path: uds.ok_or_else(|| anyhow::anyhow!("--uds is required"))?,
        guest_cid: cid,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut server = VsockServer::start(config)?;
    eprintln!(
        "vsock_server: serving on {}",
        server.socket_path().display()
    );
    while !STOP.load(Ordering::Relaxed) && !server.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop()?;
    eprintln!("vsock_server: stopped");
    Ok(())
}
