//! Timeouts and the connection limit: what keeps a silent peer from holding
//! resources forever.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::driver::*;
use crate::vsock::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};

const SHORT: Duration = Duration::from_millis(100);

fn short_timeouts(c: &mut crate::vsock::VsockConfig) {
    c.timeouts.handshake = SHORT;
    c.timeouts.request = SHORT;
    c.timeouts.close = SHORT;
}

/// Pumps until the host end reads EOF (or a reset), failing after `WAIT`.
fn wait_closed(g: &mut Guest, host: &mut UnixStream) {
    host.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match host.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
        assert!(start.elapsed() < WAIT, "host socket still open");
        g.pump(Duration::from_millis(20));
    }
}

#[test]
fn host_program_that_never_sends_connect_is_dropped() {
    let mem = memory();
    let mut g = Guest::with_config(&mem, short_timeouts);
    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.write_all(b"CONN").expect("partial line");
    let start = Instant::now();
    wait_closed(&mut g, &mut host);
    assert!(start.elapsed() >= SHORT, "not before the timeout");
}

#[test]
fn unanswered_request_times_out() {
    let mem = memory();
    let mut g = Guest::with_config(&mem, short_timeouts);
    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.write_all(b"CONNECT 8000\n").expect("write");
    g.offer_rx(4);
    let pkts = g.collect_until(WAIT, |p| !p.is_empty());
    assert_eq!(pkts[0].op(), Some(Op::Request));
    wait_closed(&mut g, &mut host);
    let pkts = g.collect_until(WAIT, |p| !p.is_empty());
    assert_eq!(
        pkts[0].op(),
        Some(Op::Rst),
        "the guest learns the request is void"
    );
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn close_without_guest_rst_is_reset_after_the_timeout() {
    let mem = memory();
    let mut g = Guest::with_config(&mem, short_timeouts);
    let (host, local) = g.connect_from_host(8001);
    drop(host);
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Shutdown)));
    let shut = pkts
        .iter()
        .find(|p| p.op() == Some(Op::Shutdown))
        .expect("shutdown");
    assert_eq!(shut.hdr.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    // The guest never answers.
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Rst)));
    let rst = pkts.iter().find(|p| p.op() == Some(Op::Rst)).expect("rst");
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (local, 8001));
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn guest_close_waits_for_unsent_data_at_most_the_timeout() {
    let mem = memory();
    let mut g = Guest::with_config(&mem, |c| {
        short_timeouts(c);
        c.conn_buffer_size = 4 << 20;
    });
    // The host never reads, so guest data stays buffered in the device.
    let (_listener, _host) = g.connect_from_guest(41000, 8002);
    let chunk = pattern(60 * 1024);
    for _ in 0..20 {
        let mut h = g.header(Op::Rw, 41000, 8002);
        h.len = chunk.len() as u32;
        g.send(h, &chunk);
    }
    let mut bye = g.header(Op::Shutdown, 41000, 8002);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(bye, &[]);
    assert_eq!(g.device.connection_count(), 1, "kept while data waits");
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Rst)));
    assert!(pkts.iter().any(|p| p.op() == Some(Op::Rst)));
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let mem = memory();
    let mut g = Guest::with_config(&mem, |c| c.max_connections = 2);
    let (_l1, _h1) = g.connect_from_guest(42000, 8100);
    let (_l2, _h2) = g.connect_from_guest(42001, 8101);
    let _l3 = std::os::unix::net::UnixListener::bind(g.port_path(8102)).expect("bind");
    g.send(g.header(Op::Request, 42002, 8102), &[]);
    let pkts = g.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        pkts[0].op(),
        Some(Op::Rst),
        "third guest connection refused"
    );

    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.write_all(b"CONNECT 9\n").expect("write");
    wait_closed(&mut g, &mut host);
    assert_eq!(g.device.connection_count(), 2);
}
