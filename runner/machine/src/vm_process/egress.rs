//! A NIC's egress process (`Role::Egress`): between the guest's NIC and
//! passt, it applies the job's egress policy
//! (`runner_devices::net::egress`) to every frame the guest sends, and is
//! the guest's DNS forwarder. It reads guest bytes and DNS answers a guest
//! steers, so it gets the same jail and seccomp filters as a VMM; both
//! backends' NICs go through it, so there is one place where a job's
//! network is enforced.
//!
//! Its sockets come from the runner: the guest's end (the other end is our
//! virtio-net device or QEMU's `-netdev stream`), a connection to passt,
//! a UDP socket connected to the resolver, and a control socket on which
//! each byte the runner sends is answered with the record of what the
//! guest touched so far ([`EgressReport`], one line of JSON). One thread,
//! `poll`, each direction's output bounded ([`super::framed_port`]).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use runner_devices::net::egress::{Egress, EgressReport, Rules};
use runner_devices::net::filter::{DropNotes, Verdict};
use serde::{Deserialize, Serialize};

use super::framed_port::{wait, FramedPort};

/// Most datagrams read from the resolver in one round.
const ANSWERS_PER_ROUND: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRole {
    /// The VM's name, for the log.
    pub vm: String,
    /// The runner's end of the guest NIC's socket pair.
    pub guest_fd: RawFd,
    /// Connected to passt.
    pub passt_fd: RawFd,
    /// A UDP socket connected to the resolver; `None` on a host with no
    /// name server (`rules.resolver` is false then).
    pub resolver_fd: Option<RawFd>,
    /// The runner asks for the report here.
    pub control_fd: RawFd,
    pub rules: Rules,
}

/// Takes the descriptors (each once), calls `lock_down` (set-up is done:
/// the seccomp filters go on), and relays until the guest or passt goes
/// away.
pub fn serve(
    role: &EgressRole,
    lock_down: impl FnOnce() -> Result<(), String>,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let mut fds = vec![role.guest_fd, role.passt_fd, role.control_fd];
    fds.extend(role.resolver_fd);
    if fds.iter().any(|&fd| fd < 3) || fds.iter().collect::<HashSet<_>>().len() != fds.len() {
        return Err(format!("bad descriptors {fds:?}"));
    }
    // SAFETY: the runner passed these descriptors for these sockets alone
    // (checked above: each is taken once), and nothing else owns them.
    let (guest, passt, resolver, control) = unsafe {
        (
            UnixStream::from_raw_fd(role.guest_fd),
            UnixStream::from_raw_fd(role.passt_fd),
            role.resolver_fd.map(|fd| UdpSocket::from_raw_fd(fd)),
            UnixStream::from_raw_fd(role.control_fd),
        )
    };
    let mut control = Some(control);
    let setup = |what: &str, e: io::Error| format!("{what}: {e}");
    let mut guest = FramedPort::new("the guest".into(), guest).map_err(|e| setup("guest", e))?;
    let mut passt = FramedPort::new("passt".into(), passt).map_err(|e| setup("passt", e))?;
    if let Some(resolver) = &resolver {
        resolver
            .set_nonblocking(true)
            .map_err(|e| setup("resolver", e))?;
    }
    let mut relay = Relay {
        vm: &role.vm,
        egress: Egress::new(role.rules.clone()),
        notes: DropNotes::default(),
        resolver,
        buf: vec![0u8; 64 << 10],
    };
    lock_down()?;
    say("ready");
    while !guest.closed && !passt.closed {
        let mut fds = [
            guest.pollfd(),
            passt.pollfd(),
            relay.resolver_pollfd(),
            control_pollfd(control.as_ref()),
        ];
        wait(&mut fds, "the NIC's sockets")?;
        if fds[3].revents != 0 {
            answer_control(&mut control, relay.egress.report());
        }
        relay.guest_frames(&mut guest, &mut passt);
        relay.passt_frames(&mut passt, &mut guest);
        relay.resolver_answers(&mut guest);
        guest.flush();
        passt.flush();
    }
    say("exit the guest's NIC or passt went away");
    Ok(())
}

/// The control socket's `poll` entry; a negative descriptor once it is
/// gone, which `poll` skips.
fn control_pollfd(control: Option<&UnixStream>) -> libc::pollfd {
    use std::os::fd::AsRawFd;
    libc::pollfd {
        fd: control.map_or(-1, |c| c.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Answers what the runner sent on the control socket: the report, once
/// per read (however many bytes it asked with). The runner reads at once,
/// and a report is far smaller than the socket's buffer, so the write does
/// not wait. A closed or broken control socket is dropped.
fn answer_control(control: &mut Option<UnixStream>, report: &EgressReport) {
    let Some(socket) = control.as_mut() else {
        return;
    };
    let mut asked = [0u8; 64];
    let answered = match socket.read(&mut asked) {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            let mut line = serde_json::to_vec(report).unwrap_or_default();
            line.push(b'\n');
            socket.write_all(&line).is_ok()
        }
    };
    if !answered {
        *control = None;
    }
}

struct Relay<'a> {
    vm: &'a str,
    egress: Egress,
    notes: DropNotes,
    resolver: Option<UdpSocket>,
    buf: Vec<u8>,
}

impl Relay<'_> {
    /// Without a resolver, an entry `poll` skips (a negative descriptor).
    fn resolver_pollfd(&self) -> libc::pollfd {
        use std::os::fd::AsRawFd;
        libc::pollfd {
            fd: self.resolver.as_ref().map_or(-1, |r| r.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    /// The guest's frames, through the policy.
    fn guest_frames(&mut self, guest: &mut FramedPort, passt: &mut FramedPort) {
        let Relay {
            vm,
            egress,
            notes,
            resolver,
            buf,
        } = self;
        let now = Instant::now();
        let mut answers = Vec::new();
        guest.read_frames(buf, |frame| match egress.outbound(frame, now) {
            Verdict::Pass => passt.queue(frame),
            Verdict::Drop(why) => notes.note(vm, &why),
            Verdict::Answer { frame, refused } => {
                if let Some(why) = refused {
                    notes.note(vm, &why);
                }
                answers.push(frame);
            }
            Verdict::Resolve(query) => {
                // A resolver that does not take it now gets no retry: the
                // guest's resolver asks again.
                let sent = resolver.as_ref().map(|r| r.send(&query));
                if let Some(Err(e)) = sent {
                    tracing::debug!(vm = %vm, "sending a DNS query: {e}");
                }
            }
        });
        for answer in answers {
            guest.queue(&answer);
        }
    }

    /// passt's frames, to the guest as they are: passt only answers flows
    /// the guest opened, which the policy let through.
    fn passt_frames(&mut self, passt: &mut FramedPort, guest: &mut FramedPort) {
        let now = Instant::now();
        let egress = &mut self.egress;
        passt.read_frames(&mut self.buf, |frame| {
            egress.inbound(frame, now);
            guest.queue(frame);
        });
    }

    /// The resolver's answers, to the guest once the policy has read them.
    fn resolver_answers(&mut self, guest: &mut FramedPort) {
        let Some(resolver) = &self.resolver else {
            return;
        };
        for _ in 0..ANSWERS_PER_ROUND {
            match resolver.recv(&mut self.buf) {
                Ok(n) => {
                    if let Some(frame) = self.egress.from_resolver(&self.buf[..n], Instant::now()) {
                        guest.queue(&frame);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Would block, or the resolver refused (ICMP): the guest's
                // resolver times out and asks again.
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_devices::net::dns;
    use runner_devices::net::egress::NameRule;
    use runner_devices::net::stream::{read_frame, write_frame};
    use std::net::Ipv4Addr;
    use std::os::fd::IntoRawFd;
    use std::time::Duration;

    fn udp_frame(dst: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 8, 0,
        ];
        f.extend([0x45, 0]);
        f.extend((28 + payload.len() as u16).to_be_bytes());
        f.extend([0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15]);
        f.extend(dst);
        f.extend(40000u16.to_be_bytes());
        f.extend(dst_port.to_be_bytes());
        f.extend((8 + payload.len() as u16).to_be_bytes());
        f.extend([0, 0]);
        f.extend(payload);
        f
    }

    /// A guest, passt and a resolver, all fake: a listed name is asked of
    /// the resolver and its address opens; an unlisted one is answered
    /// NXDOMAIN without reaching it; passt's frames reach the guest.
    #[test]
    fn names_go_to_the_resolver_and_open_what_it_answers() {
        let (mut guest, guest_end) = UnixStream::pair().unwrap();
        let (mut passt, passt_end) = UnixStream::pair().unwrap();
        let (mut control, control_end) = UnixStream::pair().unwrap();
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        ours.connect(resolver.local_addr().unwrap()).unwrap();
        resolver.connect(ours.local_addr().unwrap()).unwrap();
        resolver
            .set_read_timeout(Some(Duration::from_secs(600)))
            .unwrap();
        let role = EgressRole {
            vm: "t".into(),
            guest_fd: guest_end.into_raw_fd(),
            passt_fd: passt_end.into_raw_fd(),
            resolver_fd: Some(ours.into_raw_fd()),
            control_fd: control_end.into_raw_fd(),
            rules: Rules {
                public: false,
                addresses: vec![],
                names: vec![NameRule {
                    pattern: "crates.io".into(),
                    port: 443,
                    named_by_operator: false,
                }],
                dns: Ipv4Addr::new(10, 0, 2, 3),
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                resolver: true,
            },
        };
        let server = std::thread::spawn(move || serve(&role, || Ok(()), &mut |_| {}));
        let tcp_to = |dst: [u8; 4]| {
            let mut f = udp_frame(dst, 443, &[0; 12]);
            f[23] = 6;
            f
        };
        // Hard-coded, before any answer: dropped (nothing reaches passt,
        // checked below by what arrives first).
        write_frame(&mut guest, &tcp_to([151, 101, 0, 1])).unwrap();
        // Unlisted: NXDOMAIN to the guest.
        let query = dns::build::query(1, "evil.example", dns::TYPE_A);
        write_frame(&mut guest, &udp_frame([10, 0, 2, 3], 53, &query)).unwrap();
        let mut frame = Vec::new();
        assert!(read_frame(&mut guest, &mut frame).unwrap());
        let answer = dns::parse_response(&frame[42..]).unwrap();
        assert_eq!(answer.rcode, dns::RCODE_NXDOMAIN);
        // Listed: the resolver gets it and answers.
        let query = dns::build::query(2, "crates.io", dns::TYPE_A);
        write_frame(&mut guest, &udp_frame([10, 0, 2, 3], 53, &query)).unwrap();
        let mut asked = [0u8; 512];
        let n = resolver.recv(&mut asked).unwrap();
        let forwarded = dns::parse_query(&asked[..n]).unwrap();
        assert_eq!(
            forwarded.name, "crates.io",
            "the only query the resolver saw"
        );
        resolver
            .send(&dns::build::response(
                forwarded.id,
                "crates.io",
                &[[151, 101, 0, 1]],
                60,
            ))
            .unwrap();
        assert!(read_frame(&mut guest, &mut frame).unwrap());
        let answer = dns::parse_response(&frame[42..]).unwrap();
        assert_eq!((answer.id, answer.a_records.len()), (2, 1));
        // Now the address is open, and it is the first frame passt gets.
        write_frame(&mut guest, &tcp_to([151, 101, 0, 1])).unwrap();
        assert!(read_frame(&mut passt, &mut frame).unwrap());
        assert_eq!(frame, tcp_to([151, 101, 0, 1]));
        // passt to the guest, unfiltered.
        write_frame(&mut passt, &[7; 60]).unwrap();
        assert!(read_frame(&mut guest, &mut frame).unwrap());
        assert_eq!(frame, [7; 60]);
        // The record, on the control socket.
        control.write_all(b"?").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&control), &mut line).unwrap();
        let report: EgressReport = serde_json::from_str(&line).unwrap();
        assert_eq!(report.refused_names, ["evil.example"]);
        let touched: Vec<_> = (report.destinations.iter())
            .map(|d| (d.address, d.names.join(","), d.allowed))
            .collect();
        let crates = Ipv4Addr::new(151, 101, 0, 1);
        // The hard-coded try came first, before the name: named since.
        assert_eq!(touched, [(crates, "crates.io".to_string(), true)]);
        assert!(report.bytes_in >= 60 && report.bytes_out > 0);
        // The guest going away ends it.
        drop(guest);
        server.join().unwrap().unwrap();
    }
}
