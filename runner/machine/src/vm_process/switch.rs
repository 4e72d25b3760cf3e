//! The switch of a job's private segment, run as a VM process of its own
//! (`Role::Switch`): it reads the frames every member sends, which are
//! guest bytes, so it gets the same jail and seccomp filters as a VMM.
//!
//! Each port is one end of a socket pair the runner made; the other end is
//! the member's NIC (our virtio-net device, or QEMU's `-netdev stream`),
//! with the same framing as passt's socket. Identity is the socket, never
//! what a frame says: `runner_devices::net::segment` decides where each
//! frame goes. This loop only moves bytes: one thread, `poll`, each
//! port's output bounded (a frame that does not fit is dropped, as a busy
//! switch drops it), so no member can make the switch grow.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use runner_devices::net::segment::{Member, RateLimit, Segment, Switched};
use serde::{Deserialize, Serialize};

use super::framed_port::{wait, whole_frames, FramedPort, Read1, READS_PER_ROUND};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRole {
    pub ports: Vec<PortRole>,
}

/// One member of the segment, on the inherited descriptor `fd`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRole {
    /// The job's or the service's name, for the log.
    pub name: String,
    pub fd: RawFd,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

/// Takes the ports' descriptors (each at most once), calls `lock_down`
/// (the seccomp filters go on there: set-up is done), and serves the ports
/// until every member has gone away.
pub fn serve(
    role: &SwitchRole,
    lock_down: impl FnOnce() -> Result<(), String>,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let mut seen = HashMap::new();
    let mut ports = Vec::new();
    for port in &role.ports {
        if seen.insert(port.fd, &port.name).is_some() || port.fd < 3 {
            return Err(format!(
                "port {} has a bad descriptor {}",
                port.name, port.fd
            ));
        }
        // SAFETY: the runner passed this descriptor for this port alone
        // (checked above: each is taken once), and nothing else owns it.
        let stream = unsafe { UnixStream::from_raw_fd(port.fd) };
        let port = FramedPort::new(port.name.clone(), stream)
            .map_err(|e| format!("port {}: {e}", port.name))?;
        ports.push(port);
    }
    let members = role
        .ports
        .iter()
        .map(|p| Member {
            mac: p.mac,
            address: p.address,
        })
        .collect();
    let mut segment = Segment::new(members, RateLimit::default());
    let mut buf = vec![0u8; 64 << 10];
    lock_down()?;
    say("ready");
    let started = Instant::now();
    while ports.iter().any(|p| !p.closed) {
        let mut fds: Vec<libc::pollfd> = (ports.iter())
            .filter(|p| !p.closed)
            .map(FramedPort::pollfd)
            .collect();
        wait(&mut fds, "the segment's ports")?;
        for from in 0..ports.len() {
            read_frames(&mut ports, from, &mut segment, &mut buf, started);
        }
        for port in ports.iter_mut() {
            port.flush();
        }
    }
    say("exit every member of the segment went away");
    Ok(())
}

/// Reads what port `from` has sent and switches every whole frame in it.
fn read_frames(
    ports: &mut [FramedPort],
    from: usize,
    segment: &mut Segment,
    buf: &mut [u8],
    started: Instant,
) {
    // A bounded number of reads per round, so a member that never stops
    // sending cannot keep the others waiting.
    for _ in 0..READS_PER_ROUND {
        if let Read1::Done = ports[from].read_once(buf) {
            return;
        }
        // Whole frames are switched as they come, so the input never holds
        // more than one frame and one read. The input is out of the port
        // while its frames go to other ports, and put back with only the
        // partial frame left, keeping its allocation.
        let mut input = std::mem::take(&mut ports[from].input);
        let switched = whole_frames(&input, |frame| {
            match segment.switch(from, frame, started.elapsed()) {
                Switched::Forward(to) => ports[to].queue(frame),
                Switched::Reply(reply) => ports[from].queue(&reply),
                Switched::Drop(why) => {
                    tracing::debug!(port = %ports[from].name, "segment: dropped {why}")
                }
                Switched::Refuse(why) => ports[from].note("segment", why),
            }
        });
        match switched {
            Ok(taken) => {
                input.drain(..taken);
                ports[from].input = input;
            }
            Err(why) => {
                ports[from].close(&why);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_devices::net::stream::{read_frame, write_frame};
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;

    fn member(i: u8) -> (UnixStream, PortRole) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let port = PortRole {
            name: format!("m{i}"),
            fd: theirs.into_raw_fd(),
            mac: [0x52, 0x54, 0, 0, 0, i],
            address: Ipv4Addr::new(10, 0, 2, 14 + i),
        };
        (ours, port)
    }

    fn tcp(from: &PortRole, to: &PortRole, body: u8) -> Vec<u8> {
        let mut f = to.mac.to_vec();
        f.extend(from.mac);
        f.extend([8, 0, 0x45, 0, 0, 41, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend(from.address.octets());
        f.extend(to.address.octets());
        f.resize(14 + 40, 0);
        f.push(body);
        f
    }

    #[test]
    fn frames_go_between_members_and_a_broken_member_is_cut_off_alone() {
        let (mut a, pa) = member(1);
        let (mut b, pb) = member(2);
        let (mut c, pc) = member(3);
        let role = SwitchRole {
            ports: vec![pa.clone(), pb.clone(), pc.clone()],
        };
        let server = std::thread::spawn(move || serve(&role, || Ok(()), &mut |_| {}));
        write_frame(&mut a, &tcp(&pa, &pb, 1)).unwrap();
        // Posing as a: dropped; then c breaks the framing.
        write_frame(&mut c, &tcp(&pa, &pb, 2)).unwrap();
        c.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut frame = Vec::new();
        assert!(read_frame(&mut b, &mut frame).unwrap());
        assert_eq!(frame, tcp(&pa, &pb, 1));
        // c is gone; a and b still talk.
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap(), 0);
        write_frame(&mut b, &tcp(&pb, &pa, 3)).unwrap();
        assert!(read_frame(&mut a, &mut frame).unwrap());
        assert_eq!(frame, tcp(&pb, &pa, 3));
        // Everyone leaving ends the switch.
        drop((a, b));
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_descriptor_named_twice_is_refused() {
        let (_a, pa) = member(1);
        let role = SwitchRole {
            ports: vec![pa.clone(), pa],
        };
        let err = serve(&role, || Ok(()), &mut |_| {}).unwrap_err();
        assert!(err.contains("bad descriptor"), "{err}");
    }
}
