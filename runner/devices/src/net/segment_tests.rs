use std::net::Ipv4Addr;
use std::time::Duration;

use super::segment::{Member, RateLimit, Segment, Switched, MAX_SEGMENT_FRAME};

const JOB: Member = Member {
    mac: [0x52, 0x54, 0, 0, 0, 1],
    address: Ipv4Addr::new(10, 0, 2, 15),
};
const DB: Member = Member {
    mac: [0x52, 0x54, 0, 0, 0, 2],
    address: Ipv4Addr::new(10, 0, 2, 16),
};
const CACHE: Member = Member {
    mac: [0x52, 0x54, 0, 0, 0, 3],
    address: Ipv4Addr::new(10, 0, 2, 17),
};

fn segment() -> Segment {
    Segment::new(vec![JOB, DB, CACHE], RateLimit::default())
}

fn arp(op: u16, from_mac: [u8; 6], sender: (Ipv4Addr, [u8; 6]), wanted: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(from_mac);
    f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(sender.1);
    f.extend(sender.0.octets());
    f.extend([0; 6]);
    f.extend(wanted.octets());
    f
}

fn ipv4(from: Member, to_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(to_mac);
    f.extend(from.mac);
    f.extend([0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.resize(len.max(20), 0);
    f.extend(ip);
    f
}

fn dropped(s: Switched) -> &'static str {
    match s {
        Switched::Drop(why) => why,
        other => panic!("expected a quiet drop, got {other:?}"),
    }
}

fn refused(s: Switched) -> &'static str {
    match s {
        Switched::Refuse(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn arp_is_answered_by_the_switch_with_the_members_own_mac() {
    let mut seg = segment();
    let ask = arp(1, JOB.mac, (JOB.address, JOB.mac), DB.address);
    let Switched::Reply(reply) = seg.switch(0, &ask, Duration::ZERO) else {
        panic!("no reply")
    };
    assert_eq!(&reply[0..6], &JOB.mac, "to the asker");
    assert_eq!(&reply[6..12], &DB.mac, "from the member asked for");
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    assert_eq!(&reply[22..28], &DB.mac);
    assert_eq!(&reply[28..32], &DB.address.octets());
    assert_eq!(&reply[32..38], &JOB.mac);
    assert_eq!(&reply[38..42], &JOB.address.octets());
    // A probe from 0.0.0.0 is answered too (a guest checking its address).
    let probe = arp(1, DB.mac, (Ipv4Addr::UNSPECIFIED, DB.mac), CACHE.address);
    assert!(matches!(
        seg.switch(1, &probe, Duration::ZERO),
        Switched::Reply(_)
    ));
}

#[test]
fn arp_never_reaches_another_member_nor_learns_anything_off_the_segment() {
    let mut seg = segment();
    let t = Duration::ZERO;
    // The host, the outside, oneself: not on the segment.
    for wanted in [
        Ipv4Addr::new(10, 0, 2, 2),
        Ipv4Addr::new(1, 1, 1, 1),
        JOB.address,
    ] {
        let ask = arp(1, JOB.mac, (JOB.address, JOB.mac), wanted);
        assert!(dropped(seg.switch(0, &ask, t)).contains("not on the segment"));
    }
    // Replies and announcements would poison caches: nobody gets them.
    let gratuitous = arp(2, JOB.mac, (JOB.address, JOB.mac), DB.address);
    assert!(dropped(seg.switch(0, &gratuitous, t)).contains("reply"));
    // Claiming the database's address or MAC from the job's port.
    let posing = arp(1, JOB.mac, (DB.address, JOB.mac), CACHE.address);
    assert!(refused(seg.switch(0, &posing, t)).contains("another member"));
    let posing = arp(1, JOB.mac, (JOB.address, DB.mac), CACHE.address);
    assert!(refused(seg.switch(0, &posing, t)).contains("another member"));
    // Short, or not IPv4 over Ethernet.
    let mut short = arp(1, JOB.mac, (JOB.address, JOB.mac), DB.address);
    short.truncate(14 + 27);
    assert!(dropped(seg.switch(0, &short, t)).contains("not IPv4 over Ethernet"));
}

#[test]
fn ipv4_goes_only_to_the_member_it_names_and_never_with_a_forged_source() {
    let mut seg = segment();
    let t = Duration::ZERO;
    let to_db = ipv4(JOB, DB.mac, JOB.address, DB.address, 60);
    assert_eq!(seg.switch(0, &to_db, t), Switched::Forward(1));
    let back = ipv4(DB, JOB.mac, DB.address, JOB.address, 60);
    assert_eq!(seg.switch(1, &back, t), Switched::Forward(0));

    // The job's frame sent on the database's port: another source MAC.
    assert!(refused(seg.switch(1, &to_db, t)).contains("source MAC"));
    // The right MAC, but the database's address as source.
    let forged = ipv4(JOB, CACHE.mac, DB.address, CACHE.address, 60);
    assert!(refused(seg.switch(0, &forged, t)).contains("another source"));
    // Routed through a member: its MAC, someone else's address.
    let routed = ipv4(JOB, DB.mac, JOB.address, Ipv4Addr::new(1, 1, 1, 1), 60);
    assert!(refused(seg.switch(0, &routed, t)).contains("not its MAC's member"));
    // Broadcast and unknown MACs are never flooded.
    let broadcast = ipv4(JOB, [0xff; 6], JOB.address, Ipv4Addr::BROADCAST, 60);
    assert!(dropped(seg.switch(0, &broadcast, t)).contains("not on the segment"));
    // To oneself.
    let own = ipv4(JOB, JOB.mac, JOB.address, JOB.address, 60);
    assert!(refused(seg.switch(0, &own, t)).contains("not its MAC's member"));
    // IPv6 and others.
    let mut v6 = to_db.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert!(dropped(seg.switch(0, &v6, t)).contains("neither IPv4 nor ARP"));
    // A port that does not exist.
    assert!(refused(seg.switch(7, &to_db, t)).contains("no port"));
}

#[test]
fn frame_sizes_are_bounded() {
    let mut seg = segment();
    let t = Duration::ZERO;
    assert!(refused(seg.switch(0, &[0; 13], t)).contains("runt"));
    let biggest = ipv4(JOB, DB.mac, JOB.address, DB.address, MAX_SEGMENT_FRAME - 14);
    assert_eq!(biggest.len(), MAX_SEGMENT_FRAME);
    assert_eq!(seg.switch(0, &biggest, t), Switched::Forward(1));
    let jumbo = ipv4(JOB, DB.mac, JOB.address, DB.address, MAX_SEGMENT_FRAME - 13);
    assert!(refused(seg.switch(0, &jumbo, t)).contains("MTU"));
    let mut short_ip = ipv4(JOB, DB.mac, JOB.address, DB.address, 20);
    short_ip.truncate(14 + 19);
    assert!(refused(seg.switch(0, &short_ip, t)).contains("malformed"));
}

#[test]
fn a_flooding_port_is_held_to_its_rate_and_the_others_are_not_charged() {
    let limit = RateLimit {
        frames_per_second: 100,
        bytes_per_second: 1 << 20,
        burst: Duration::from_millis(100),
    };
    let mut seg = Segment::new(vec![JOB, DB], limit);
    let to_db = ipv4(JOB, DB.mac, JOB.address, DB.address, 60);
    let t0 = Duration::from_secs(1);
    // One burst's worth (10 frames) passes, then nothing until time passes.
    let passed = (0..50)
        .filter(|_| seg.switch(0, &to_db, t0) == Switched::Forward(1))
        .count();
    assert_eq!(passed, 10);
    assert!(refused(seg.switch(0, &to_db, t0)).contains("rate"));
    // The database's port has its own budget.
    let back = ipv4(DB, JOB.mac, DB.address, JOB.address, 60);
    assert_eq!(seg.switch(1, &back, t0), Switched::Forward(0));
    // 50 ms later: 5 frames' worth again; a clock going back adds nothing.
    let t1 = t0 + Duration::from_millis(50);
    let passed = (0..50)
        .filter(|_| seg.switch(0, &to_db, t1) == Switched::Forward(1))
        .count();
    assert_eq!(passed, 5);
    assert!(refused(seg.switch(0, &to_db, t0)).contains("rate"));

    // Bytes too: 1 MiB/s with a 100 ms burst is about 69 full frames.
    let bytes_only = RateLimit {
        frames_per_second: 1_000_000,
        ..limit
    };
    let mut seg = Segment::new(vec![JOB, DB], bytes_only);
    let big = ipv4(JOB, DB.mac, JOB.address, DB.address, MAX_SEGMENT_FRAME - 14);
    let fits = (1usize << 20) / 10 / MAX_SEGMENT_FRAME;
    let passed = (0..fits + 5)
        .filter(|_| seg.switch(0, &big, t0) == Switched::Forward(1))
        .count();
    assert_eq!(passed, fits);
}
