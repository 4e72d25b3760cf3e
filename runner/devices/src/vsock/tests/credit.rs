//! Credit-based flow control in both directions.

use std::io::{Read, Write};
use std::time::Duration;

use super::driver::*;
use crate::vsock::packet::Op;

#[test]
fn guest_stops_receiving_at_its_credit_and_resumes_after_credit_update() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.buf_alloc = 8192;
    let (mut host, local) = g.connect_from_host(7000);
    let data = pattern(20_000);
    host.write_all(&data).expect("host writes");
    g.offer_rx(64);

    // Only the advertised 8 KiB arrive, however long we wait.
    let mut pkts = g.collect_until(WAIT, |p| rw_bytes(p).len() >= 8192);
    for _ in 0..10 {
        g.pump(Duration::from_millis(20));
        pkts.extend(g.received());
    }
    assert_eq!(
        rw_bytes(&pkts).len(),
        8192,
        "no byte beyond the guest's credit"
    );
    assert!(
        pkts.iter().any(|p| p.op() == Some(Op::CreditRequest)),
        "the device asks for credit when it runs out"
    );

    // The guest consumed 8 KiB and says so: the next 8 KiB flow.
    g.fwd_cnt = 8192;
    g.send(g.header(Op::CreditUpdate, 7000, local), &[]);
    pkts.extend(g.collect_until(WAIT, |p| rw_bytes(p).len() >= 8192));
    assert_eq!(rw_bytes(&pkts).len(), 16384);

    g.fwd_cnt = 16384;
    g.send(g.header(Op::CreditUpdate, 7000, local), &[]);
    pkts.extend(g.collect_until(WAIT, |p| rw_bytes(p).len() >= 20_000 - 16384));
    assert_eq!(
        rw_bytes(&pkts),
        data,
        "the stream arrives intact and in order"
    );
}

#[test]
fn credit_request_from_guest_is_answered() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_host, local) = g.connect_from_host(7001);
    g.send(g.header(Op::CreditRequest, 7001, local), &[]);
    let pkts = g.received();
    let update = pkts
        .iter()
        .find(|p| p.op() == Some(Op::CreditUpdate))
        .expect("credit update");
    assert_eq!(update.hdr.buf_alloc, 256 * 1024);
    assert_eq!(update.hdr.fwd_cnt, 0);
}

#[test]
fn device_reports_forwarded_bytes_before_the_guest_runs_dry() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_listener, mut host) = g.connect_from_guest(40100, 7002);
    let data = pattern(160 * 1024);
    let mut sent = 0;
    for chunk in data.chunks(16 * 1024) {
        let mut hdr = g.header(Op::Rw, 40100, 7002);
        hdr.len = chunk.len() as u32;
        g.send(hdr, chunk);
        sent += chunk.len();
    }
    let mut got = vec![0u8; sent];
    host.read_exact(&mut got).expect("host reads");
    assert_eq!(got, data);
    g.pump(Duration::from_millis(10));
    let pkts = g.received();
    let update = pkts
        .iter()
        .rfind(|p| p.op() == Some(Op::CreditUpdate))
        .expect("a credit update once half the buffer was forwarded");
    assert!(
        update.hdr.fwd_cnt >= 64 * 1024,
        "fwd_cnt {}",
        update.hdr.fwd_cnt
    );
}

#[test]
fn guest_ignoring_credit_is_reset_and_host_buffer_stays_bounded() {
    let mem = memory();
    let buffer = 16 * 1024;
    let mut g = Guest::with_config(&mem, |c| c.conn_buffer_size = buffer);
    // The host never reads: the socket fills, then the device's buffer.
    let (_listener, _host) = g.connect_from_guest(40200, 7003);
    g.offer_rx(8);
    let chunk = pattern(60 * 1024);
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..200 {
        let mut hdr = g.header(Op::Rw, 40200, 7003);
        hdr.len = chunk.len() as u32;
        g.send(hdr, &chunk);
        sent += chunk.len();
        if g.received().iter().any(|p| p.op() == Some(Op::Rst)) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "a guest overrunning its credit is reset (sent {sent} bytes)"
    );
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn many_packets_round_trip_intact() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_listener, mut host) = g.connect_from_guest(40300, 7004);
    let data = pattern(1024 * 1024);
    let writer = {
        let mut host = host.try_clone().expect("clone");
        let data = data.clone();
        std::thread::spawn(move || host.write_all(&data).expect("host writes"))
    };
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < data.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled at {} bytes",
            got.len()
        );
        g.offer_rx(64 - g.rx_outstanding);
        g.kick(crate::vsock::RX_QUEUE);
        g.pump(Duration::from_millis(5));
        let pkts = g.received();
        let n = rw_bytes(&pkts);
        // Consume like a guest application and return the credit.
        g.fwd_cnt = g.fwd_cnt.wrapping_add(n.len() as u32);
        got.extend(n);
        g.send(g.header(Op::CreditUpdate, 40300, 7004), &[]);
    }
    writer.join().expect("writer");
    assert_eq!(got, data);
    let mut none = [0u8; 1];
    host.set_nonblocking(true).expect("nonblocking");
    assert!(
        host.read(&mut none).is_err(),
        "nothing unexpected came back"
    );
}
