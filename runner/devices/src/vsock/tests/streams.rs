//! Connection set-up, data in both directions, and tear-down.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::driver::*;
use crate::virtio::VirtioDevice;
use crate::vsock::packet::{Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};

#[test]
fn request_to_unknown_port_gets_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.offer_rx(4);
    g.send(g.header(Op::Request, 40000, 9999), &[]);
    let pkts = g.received();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let rst = &pkts[0].hdr;
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((rst.src_port, rst.dst_port), (9999, 40000));
    assert_eq!(g.device.connection_count(), 0);
    assert_eq!(g.tx_used(), 1, "the tx buffer was returned");
    assert!(g.irq.used[0].get() >= 1, "rx interrupt raised");
    assert!(g.irq.used[1].get() >= 1, "tx interrupt raised");
}

#[test]
fn guest_initiated_connection_reaches_listener() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_listener, mut host) = g.connect_from_guest(40000, 1234);
    assert_eq!(g.device.connection_count(), 1);

    let mut hello = g.header(Op::Rw, 40000, 1234);
    hello.len = 16;
    g.send(hello, b"hello from guest");
    let mut got = [0u8; 16];
    host.read_exact(&mut got).expect("host reads");
    assert_eq!(&got, b"hello from guest");

    host.write_all(b"hello from host").expect("host writes");
    let pkts = g.collect_until(WAIT, |p| rw_bytes(p).len() >= 15);
    assert_eq!(rw_bytes(&pkts), b"hello from host");
    let rw = pkts.iter().find(|p| p.op() == Some(Op::Rw)).expect("rw");
    assert_eq!((rw.hdr.src_port, rw.hdr.dst_port), (1234, 40000));

    // The guest closes its socket: the host sees EOF, the guest gets its RST.
    let mut bye = g.header(Op::Shutdown, 40000, 1234);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(bye, &[]);
    assert_eq!(host.read(&mut got).expect("read EOF"), 0);
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Rst)));
    assert_eq!(pkts.last().and_then(Pkt::op), Some(Op::Rst));
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn host_initiated_connect_handshake_and_data() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut host, local) = g.connect_from_host(5000);
    assert!(
        local >= 1 << 30,
        "host-side port comes from the ephemeral range"
    );

    host.write_all(b"ping").expect("host writes");
    let pkts = g.collect_until(WAIT, |p| rw_bytes(p).len() >= 4);
    assert_eq!(rw_bytes(&pkts), b"ping");
    let rw = &pkts[0].hdr;
    assert_eq!((rw.src_port, rw.dst_port), (local, 5000));

    let mut pong = g.header(Op::Rw, 5000, local);
    pong.len = 4;
    g.send(pong, b"pong");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).expect("host reads");
    assert_eq!(&got, b"pong");
}

#[test]
fn bytes_sent_right_after_connect_line_are_kept() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.set_read_timeout(Some(WAIT)).expect("timeout");
    host.write_all(b"CONNECT 77\nearly bytes").expect("write");
    g.offer_rx(8);
    let pkts = g.collect_until(WAIT, |p| !p.is_empty());
    let local = pkts[0].hdr.src_port;
    assert_eq!(pkts[0].op(), Some(Op::Request));
    g.send(g.header(Op::Response, 77, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}\n"));
    let pkts = g.collect_until(WAIT, |p| rw_bytes(p).len() >= 11);
    assert_eq!(rw_bytes(&pkts), b"early bytes");
}

#[test]
fn guest_refusing_host_connection_closes_the_socket() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.set_read_timeout(Some(WAIT)).expect("timeout");
    host.write_all(b"CONNECT 6000\n").expect("write");
    g.offer_rx(4);
    let pkts = g.collect_until(WAIT, |p| !p.is_empty());
    let local = pkts[0].hdr.src_port;
    g.send(g.header(Op::Rst, 6000, local), &[]);
    let mut buf = [0u8; 16];
    assert_eq!(host.read(&mut buf).expect("EOF, not OK"), 0);
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn malformed_connect_line_closes_the_socket() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    for line in [
        &b"HELLO 5\n"[..],
        b"CONNECT x\n",
        b"CONNECT 123456789012345678901234567890\n",
    ] {
        let mut host = UnixStream::connect(&g.uds).expect("connect");
        host.set_read_timeout(Some(WAIT)).expect("timeout");
        host.write_all(line).expect("write");
        g.pump(Duration::from_millis(200));
        let mut buf = [0u8; 8];
        // EOF, or a reset when unread bytes were left behind.
        match host.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "{line:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{line:?}"),
        }
    }
    g.offer_rx(2);
    g.pump(Duration::from_millis(50));
    assert!(g.received().is_empty(), "nothing reached the guest");
}

#[test]
fn host_half_close_is_a_send_shutdown() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (host, local) = g.connect_from_host(5001);
    host.shutdown(Shutdown::Write).expect("half close");
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Shutdown)));
    let shut = pkts
        .iter()
        .find(|p| p.op() == Some(Op::Shutdown))
        .expect("shutdown");
    assert_eq!(shut.hdr.flags, SHUTDOWN_SEND, "the host may still receive");

    assert_eq!(g.device.connection_count(), 1);
    let _ = local;
}

#[test]
fn host_half_close_still_delivers_guest_data() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut host, local) = g.connect_from_host(5002);
    host.shutdown(Shutdown::Write).expect("half close");
    g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Shutdown)));
    let mut reply = g.header(Op::Rw, 5002, local);
    reply.len = 5;
    g.send(reply, b"reply");
    let mut got = [0u8; 5];
    host.read_exact(&mut got)
        .expect("host reads after half close");
    assert_eq!(&got, b"reply");
}

#[test]
fn host_close_shuts_both_ways_and_guest_rst_frees_the_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (host, local) = g.connect_from_host(5003);
    drop(host);
    let pkts = g.collect_until(WAIT, |p| p.iter().any(|p| p.op() == Some(Op::Shutdown)));
    let shut = pkts
        .iter()
        .find(|p| p.op() == Some(Op::Shutdown))
        .expect("shutdown");
    assert_eq!(shut.hdr.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    assert_eq!(
        g.device.connection_count(),
        1,
        "kept until the guest answers"
    );
    g.send(g.header(Op::Rst, 5003, local), &[]);
    assert_eq!(g.device.connection_count(), 0);
}

#[test]
fn reset_closes_host_sockets() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut host, _) = g.connect_from_host(5004);
    let (_listener, mut host2) = g.connect_from_guest(40001, 1235);
    VirtioDevice::<GuestMemoryMmap>::reset(&mut g.device);
    assert_eq!(g.device.connection_count(), 0);
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::acked_features(&g.device),
        0
    );
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).expect("EOF"), 0);
    assert_eq!(host2.read(&mut buf).expect("EOF"), 0);
}

#[test]
fn single_descriptor_rx_buffers_carry_data() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_listener, mut host) = g.connect_from_guest(40002, 1236);
    let data = pattern(3 * RX_BUF_SIZE as usize + 100);
    host.write_all(&data).expect("host writes");
    g.offer_rx_single(8);
    let pkts = g.collect_until(WAIT, |p| rw_bytes(p).len() >= data.len());
    assert_eq!(rw_bytes(&pkts), data);
    assert!(pkts.iter().all(|p| p.data.len() <= RX_BUF_SIZE as usize));
}

#[test]
fn config_space_and_features() {
    let mem = memory();
    let g = Guest::new(&mem);
    let dev: &dyn VirtioDevice<GuestMemoryMmap> = &g.device;
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.features() & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    let mut cid = [0xffu8; 12];
    dev.read_config(0, &mut cid);
    assert_eq!(&cid[..8], &GUEST_CID.to_le_bytes());
    assert_eq!(&cid[8..], &[0; 4], "reads past the end are zero");
    let mut high = [0xffu8; 4];
    dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
}

/// The backend fd must not stay readable once its events were handled, even
/// when the device cannot deliver anything (no rx buffers): transports wait on
/// it level-triggered and would spin.
#[test]
fn backend_fd_goes_quiet_when_nothing_can_progress() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut host = UnixStream::connect(&g.uds).expect("connect");
    host.write_all(b"CONNECT 5005\n").expect("write");
    g.pump(WAIT);
    let fd = VirtioDevice::<GuestMemoryMmap>::backend_fd(&g.device).expect("fd");
    let readable = |fd| {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    };
    assert!(
        !readable(fd),
        "REQUEST waits for rx buffers without waking anyone"
    );
    host.write_all(b"more").expect("write");
    assert!(readable(fd), "new host data wakes the transport");
    g.pump(WAIT);
    assert!(!readable(fd));
    g.offer_rx(1);
    g.kick(crate::vsock::RX_QUEUE);
    assert_eq!(g.received()[0].op(), Some(Op::Request));
}
