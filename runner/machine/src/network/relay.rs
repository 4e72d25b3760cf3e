//! The frame relay between QEMU and passt for jobs with an `allow` policy.
//!
//! QEMU's stream netdev talks to a Unix socket; with passt on the other
//! end there is no place to look at the guest's frames. So for policy jobs
//! QEMU connects here instead, and the relay connects to passt: frames
//! from the guest go through [`Policy::outbound`] (the first drop towards
//! each destination is logged), frames to the guest are passed on. Both
//! directions keep one frame in memory at most ([`stream::MAX_FRAME`]);
//! a peer that breaks the framing ends the relay, and with it the guest's
//! network (not the VM).
//!
//! It runs as threads of the runner: the filter is a bounds-checked header
//! parser over a byte slice, and the threads end when the VM is dropped
//! (their sockets are shut down, and QEMU and passt are gone by then).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use runner_devices::net::filter::{DropNotes, Policy, Verdict};
use runner_devices::net::stream;

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// A running relay; dropping it stops its threads.
pub struct Relay {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    /// Every stream the threads use, to shut them down on drop.
    streams: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `socket` (for QEMU) and relays its one client to passt's
    /// socket through `policy`.
    pub fn start(socket: &Path, passt: &Path, policy: Policy, vm: &str) -> io::Result<Relay> {
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, streams) = (stop.clone(), streams.clone());
            let passt = passt.to_path_buf();
            let vm = vm.to_string();
            std::thread::Builder::new()
                .name("net-relay".into())
                .spawn(move || {
                    if let Err(e) = serve(&listener, &passt, policy, &stop, &streams, &vm) {
                        tracing::warn!(vm = %vm, "network relay: {e}; the guest's network is down");
                    }
                })?
        };
        Ok(Relay {
            socket: socket.to_path_buf(),
            stop,
            streams,
            accept: Some(accept),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(streams) = self.streams.lock() {
            for s in streams.iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(thread) = self.accept.take() {
            let _ = thread.join();
        }
    }
}

/// Waits for QEMU, connects to passt, and pumps both ways until either
/// side ends.
fn serve(
    listener: &UnixListener,
    passt: &Path,
    policy: Policy,
    stop: &AtomicBool,
    streams: &Mutex<Vec<UnixStream>>,
    vm: &str,
) -> io::Result<()> {
    let guest = loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(listener, ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    guest.set_nonblocking(false)?;
    let host = UnixStream::connect(passt)?;
    {
        let mut list = streams.lock().map_err(|_| io::Error::other("poisoned"))?;
        list.push(guest.try_clone()?);
        list.push(host.try_clone()?);
    }
    // A stop that came while we connected: the drop may have missed these.
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let inbound = {
        let (from, to) = (host.try_clone()?, guest.try_clone()?);
        std::thread::Builder::new()
            .name("net-relay-in".into())
            .spawn(move || pump(from, to, None))?
    };
    let mut notes = DropNotes::default();
    let outbound = pump(guest, host, Some((&policy, &mut notes, vm)));
    // One direction ended: end the other too.
    if let Ok(list) = streams.lock() {
        for s in list.iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    let inbound = inbound.join().unwrap_or(Ok(()));
    outbound.and(inbound)
}

/// Copies frames from `from` to `to`, through `policy` when given.
fn pump(
    mut from: UnixStream,
    mut to: UnixStream,
    mut policy: Option<(&Policy, &mut DropNotes, &str)>,
) -> io::Result<()> {
    let mut frame = Vec::with_capacity(stream::MAX_FRAME);
    loop {
        match stream::read_frame(&mut from, &mut frame) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            // Our own shutdown on drop.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some((policy, notes, vm)) = policy.as_mut() {
            if let Verdict::Drop(why) = policy.outbound(&frame) {
                notes.note(vm, &why);
                continue;
            }
        }
        match stream::write_frame(&mut to, &frame) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn wait_readable(listener: &UnixListener, limit: Duration) {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, limit.as_millis() as i32) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn tcp_frame(dst: [u8; 4], port: u16) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend([
            0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 2, 15,
        ]);
        f.extend(dst);
        f.extend(40000u16.to_be_bytes());
        f.extend(port.to_be_bytes());
        f.extend([0; 16]);
        f
    }

    /// A fake passt on one side, a fake QEMU on the other: allowed frames
    /// cross, others do not, and frames to the guest cross unfiltered.
    #[test]
    fn frames_are_filtered_guest_to_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let passt_path = dir.path().join("passt.sock");
        let passt = UnixListener::bind(&passt_path).unwrap();
        let policy = Policy {
            public: false,
            allowed: vec!["10.0.2.2:8080".parse().unwrap()],
            dns: Ipv4Addr::new(10, 0, 2, 3),
        };
        let relay = Relay::start(&dir.path().join("relay.sock"), &passt_path, policy, "t").unwrap();
        let mut qemu = UnixStream::connect(relay.socket()).unwrap();
        let (mut host, _) = passt.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(600)))
            .unwrap();

        let denied = tcp_frame([10, 0, 2, 2], 9999);
        let allowed = tcp_frame([10, 0, 2, 2], 8080);
        stream::write_frame(&mut qemu, &denied).unwrap();
        stream::write_frame(&mut qemu, &allowed).unwrap();
        let mut got = Vec::new();
        assert!(stream::read_frame(&mut host, &mut got).unwrap());
        assert_eq!(got, allowed, "the denied frame must not arrive first");

        // Inbound: anything passes (passt only answers the guest's flows).
        stream::write_frame(&mut host, &denied).unwrap();
        assert!(stream::read_frame(&mut qemu, &mut got).unwrap());
        assert_eq!(got, denied);

        // A broken length from the guest ends the relay: passt sees EOF.
        use std::io::Write;
        qemu.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(!stream::read_frame(&mut host, &mut got).unwrap_or(false));
        drop(relay);
    }

    #[test]
    fn dropping_a_relay_nobody_connected_to_returns() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(
            &dir.path().join("relay.sock"),
            &dir.path().join("nothing.sock"),
            Policy {
                public: false,
                allowed: Vec::new(),
                dns: Ipv4Addr::new(10, 0, 2, 3),
            },
            "t",
        )
        .unwrap();
        let socket = relay.socket().to_path_buf();
        drop(relay);
        // Its accept thread is gone, and with it the listener.
        let err = UnixStream::connect(&socket).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
}
