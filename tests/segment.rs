//! The switch of a job's private segment, as the runner starts it: a
//! process of its own (`runner __vm-process`), jailed and under its seccomp
//! filter, joined to its members by socket pairs.
//!
//! The first tests boot no VM: the members are this test, speaking the
//! NICs' framing, so each rule can be checked frame by frame against the
//! real process. The last boots real guests on a segment (the backend the
//! environment selects: QEMU on the host tier, kvm in the nested one).

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use std::sync::Arc;

use e2e_tests::{boot_spec, sh, spec};
use runner_devices::net::segment::{self, Member};
use runner_devices::net::stream::{read_frame, write_frame};
use runner_machine::network::segment::{SegmentNic, Switch};

fn start(names: &[&str]) -> (Switch, Vec<(SegmentNic, UnixStream)>) {
    // The switch is found beside the test binaries, as VM processes are.
    std::env::set_var("RUNNER_EXE", e2e_tests::runner_bin());
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (switch, nics) = Switch::start(&names).expect("the switch starts");
    let members = nics
        .into_iter()
        .map(|nic| {
            let stream = UnixStream::from(nic.socket.try_clone().unwrap());
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            (nic, stream)
        })
        .collect();
    (switch, members)
}

fn arp_request(from: &SegmentNic, wanted: Ipv4Addr) -> Vec<u8> {
    let asker = Member {
        mac: from.mac,
        address: from.address,
    };
    segment::arp_request(asker, wanted)
}

fn udp(from: &SegmentNic, to: &SegmentNic, src: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let mut f = to.mac.to_vec();
    f.extend(from.mac);
    f.extend([
        8,
        0,
        0x45,
        0,
        0,
        28 + body.len() as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend(src.octets());
    f.extend(to.address.octets());
    f.extend([0x30, 0x39, 0x15, 0x38, 0, 8 + body.len() as u8, 0, 0]);
    f.extend(body);
    f
}

fn next_frame(stream: &mut UnixStream) -> Vec<u8> {
    let mut frame = Vec::new();
    assert!(read_frame(stream, &mut frame).expect("a frame within 20 s"));
    frame
}

#[test]
fn the_jailed_switch_answers_arp_forwards_between_members_and_drops_a_poser() {
    let (mut switch, mut members) = start(&["job", "db", "cache"]);
    let (job, db, cache) = (&members[0].0, &members[1].0, &members[2].0);
    assert_eq!(job.address, Ipv4Addr::new(10, 0, 3, 2));
    assert_eq!(db.address, Ipv4Addr::new(10, 0, 3, 3));
    let ask = arp_request(job, db.address);
    let hello = udp(job, db, job.address, b"hello db");
    // The cache poses as the job, then sends something true.
    let posing = udp(cache, db, job.address, b"i am the job");
    let honest = udp(cache, db, cache.address, b"from cache");
    let reply_to_job = udp(db, job, db.address, b"hello job");

    write_frame(&mut members[0].1, &ask).unwrap();
    let answer = next_frame(&mut members[0].1);
    assert_eq!(&answer[6..12], &members[1].0.mac, "the db's MAC answers");
    assert_eq!(&answer[28..32], &members[1].0.address.octets());

    write_frame(&mut members[0].1, &hello).unwrap();
    write_frame(&mut members[2].1, &posing).unwrap();
    write_frame(&mut members[2].1, &honest).unwrap();
    assert_eq!(next_frame(&mut members[1].1), hello);
    // The poser's frame never arrives: the next one is the honest one.
    assert_eq!(next_frame(&mut members[1].1), honest);
    write_frame(&mut members[1].1, &reply_to_job).unwrap();
    assert_eq!(next_frame(&mut members[0].1), reply_to_job);

    // The switch ends once every member has gone, and says so.
    drop(members);
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if let Some(outcome) = switch.outcome() {
            break outcome;
        }
        assert!(Instant::now() < deadline, "the switch outlived its members");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(outcome.clean, "{outcome:?}");
    assert!(outcome.description.contains("every member"), "{outcome:?}");
}

#[test]
fn a_member_that_breaks_the_framing_is_cut_off_and_the_others_go_on() {
    let (_switch, mut members) = start(&["job", "db"]);
    let hello = udp(
        &members[0].0,
        &members[1].0,
        members[0].0.address,
        b"still here",
    );
    // A length no frame has: the db's port closes.
    use std::io::Write;
    members[1].1.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(members[1].1.read_to_end(&mut rest).unwrap(), 0);
    assert!(rest.is_empty());
    // Frames to it go nowhere; the job's port still works (ARP to itself is
    // dropped, so ask for the gone member: the table still answers).
    write_frame(&mut members[0].1, &hello).unwrap();
    let ask = arp_request(&members[0].0, members[1].0.address);
    write_frame(&mut members[0].1, &ask).unwrap();
    let answer = next_frame(&mut members[0].1);
    assert_eq!(&answer[12..14], &[8, 6]);
}

#[test]
fn guests_on_a_segment_reach_each_other_by_name_and_nothing_else() {
    std::env::set_var("RUNNER_EXE", e2e_tests::runner_bin());
    let names = ["job".to_string(), "db".to_string()];
    let (_switch, nics) = Switch::start(&names).expect("the switch starts");
    let table: Vec<(String, Ipv4Addr)> = nics.iter().map(|n| (n.name.clone(), n.address)).collect();
    let nics: Vec<Arc<SegmentNic>> = nics.into_iter().map(Arc::new).collect();
    // Both boot at once, as a job and its services do.
    let booting: Vec<_> = nics
        .iter()
        .map(|nic| {
            let mut spec = spec(&nic.name);
            spec.segment = Some(nic.clone());
            std::thread::spawn(move || boot_spec(&spec))
        })
        .collect();
    let mut vms: Vec<_> = booting.into_iter().map(|b| b.join().unwrap()).collect();
    for (vm, nic) in vms.iter_mut().zip(&nics) {
        let interface = vm
            .session
            .configure_network(&nic.guest_config(&table))
            .expect("the segment's NIC is configured");
        assert!(interface.starts_with("eth"), "{interface}");
    }
    let (job, db) = vms.split_at_mut(1);
    let (job, db) = (&mut job[0], &mut db[0]);
    // The database side: one answer on port 5432, in the background.
    let serve = sh(
        &mut db.session,
        "(echo pong | nc -l -p 5432 >/tmp/got 2>&1 &) ; sleep 1; grep job /etc/hosts",
    );
    assert!(serve.status.success(), "{}", serve.stderr());
    assert!(serve.stdout().contains("10.0.3.2"), "{}", serve.stdout());

    let talk = sh(&mut job.session, "echo ping | nc -w 10 db 5432");
    assert!(talk.status.success(), "{}{}", talk.stdout(), talk.stderr());
    assert_eq!(talk.stdout().trim(), "pong");
    let got = sh(&mut db.session, "sleep 1; cat /tmp/got");
    assert_eq!(got.stdout().trim(), "ping");

    // Nothing else is there: no gateway, no host, no member at .9, no
    // route out.
    let alone = sh(
        &mut job.session,
        "for to in 10.0.3.9 10.0.2.2 1.1.1.1; do \
           if echo x | nc -w 3 $to 80; then echo \"reached $to\"; fi; \
         done; ip route 2>/dev/null || route -n",
    );
    assert!(!alone.stdout().contains("reached"), "{}", alone.stdout());
    assert!(!alone.stdout().contains("default"), "{}", alone.stdout());
    assert!(
        alone.stdout().contains("10.0.3.0"),
        "no segment route: {}",
        alone.stdout()
    );
}
