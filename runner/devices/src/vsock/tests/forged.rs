//! Malformed or forged buffers from the driver are dropped, never fatal.

use std::io::ErrorKind;
use std::os::unix::net::UnixListener;

use vm_memory::{Bytes, GuestAddress};

use super::driver::*;
use crate::vsock::packet::{Op, VsockHeader, HDR_SIZE, MAX_PAYLOAD};

/// Writes `hdr` into the free area and returns its guest address.
fn place(g: &Guest, at: u64, hdr: &VsockHeader) -> u64 {
    let addr = FREE_AREA + at;
    g.mem
        .write_slice(&hdr.to_bytes(), GuestAddress(addr))
        .expect("write");
    addr
}

/// A listener that must never see a connection.
fn quiet_listener(g: &Guest, port: u32) -> UnixListener {
    let l = UnixListener::bind(g.port_path(port)).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn assert_no_connection(l: &UnixListener) {
    match l.accept() {
        Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        Ok(_) => panic!("a forged packet opened a host connection"),
    }
}

#[test]
fn forged_tx_packets_are_dropped_without_reply() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = quiet_listener(&g, 1500);
    g.offer_rx(16);
    let mut returned = 0;

    // Header shorter than 44 bytes, and an empty chain.
    let hdr = g.header(Op::Request, 40000, 1500);
    let at = place(&g, 0, &hdr);
    g.send_raw(&[(at, 20)]);
    g.send_raw(&[(at, 0)]);
    returned += 2;

    // Header split over descriptors, but still too short in total.
    g.send_raw(&[(at, 10), (at + 10, 10)]);
    returned += 1;

    // Wrong source CID, wrong destination CID, unknown type, unknown op.
    for tweak in [
        (|h: &mut VsockHeader| h.src_cid = 7) as fn(&mut VsockHeader),
        |h| h.dst_cid = 5,
        |h| h.type_ = 2,
        |h| h.op = 99,
        |h| h.op = 0,
    ] {
        let mut h = g.header(Op::Request, 40000, 1500);
        tweak(&mut h);
        let at = place(&g, 0x100, &h);
        g.send_raw(&[(at, HDR_SIZE as u32)]);
        returned += 1;
    }

    // A data packet claiming more payload than its buffer holds.
    let mut h = g.header(Op::Rw, 40000, 1500);
    h.len = 1000;
    let at = place(&g, 0x200, &h);
    g.send_raw(&[(at, HDR_SIZE as u32), (at + 0x100, 10)]);
    returned += 1;

    // A data packet larger than any packet may be, in a buffer that holds it.
    h.len = (MAX_PAYLOAD + 1) as u32;
    let at = place(&g, 0x300, &h);
    g.send_raw(&[
        (at, HDR_SIZE as u32),
        (FREE_AREA + 0x1000, MAX_PAYLOAD as u32 + 1),
    ]);
    returned += 1;

    // Descriptors pointing outside guest memory, for header and payload.
    g.send_raw(&[(0x1_0000_0000, HDR_SIZE as u32)]);
    h.len = 100;
    let at = place(&g, 0x400, &h);
    g.send_raw(&[(at, HDR_SIZE as u32), (0x2ff_fff0, 100)]);
    returned += 2;

    assert_eq!(
        g.tx_used(),
        returned,
        "every forged buffer went back to the driver"
    );
    g.pump(std::time::Duration::from_millis(20));
    assert!(g.received().is_empty(), "no reply to dropped packets");
    assert_no_connection(&listener);
    assert_eq!(g.device.connection_count(), 0);

    // The device still works.
    g.send(g.header(Op::Request, 40000, 1500), &[]);
    let pkts = g.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Response));
    assert!(listener.accept().is_ok());
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.offer_rx(8);
    let mut h = g.header(Op::Rw, 40000, 1501);
    h.len = 3;
    g.send(h, b"abc");
    g.send(g.header(Op::Shutdown, 40000, 1501), &[]);
    // An RST is never answered, or two ends could bounce RSTs forever.
    g.send(g.header(Op::Rst, 40000, 1501), &[]);
    let pkts = g.received();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert!(pkts.iter().all(|p| p.op() == Some(Op::Rst)));
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // Too small for a header, and one outside guest memory.
    g.offer_rx_raw(&[(FREE_AREA, 20)]);
    g.offer_rx_raw(&[(0x1_0000_0000, 4096)]);
    g.offer_rx(1);
    g.send(g.header(Op::Request, 40000, 1502), &[]);
    let pkts = g.received();
    assert_eq!(pkts.len(), 3, "{pkts:?}");
    assert_eq!(
        pkts[0].hdr,
        VsockHeader::default(),
        "returned with length 0"
    );
    assert_eq!(
        pkts[1].hdr,
        VsockHeader::default(),
        "returned with length 0"
    );
    assert_eq!(
        pkts[2].op(),
        Some(Op::Rst),
        "the reply went into the good buffer"
    );
}

#[test]
fn data_before_response_resets_a_host_initiated_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut host = std::os::unix::net::UnixStream::connect(&g.uds).expect("connect");
    std::io::Write::write_all(&mut host, b"CONNECT 1503\n").expect("write");
    g.offer_rx(4);
    let pkts = g.collect_until(WAIT, |p| !p.is_empty());
    let local = pkts[0].hdr.src_port;
    let mut h = g.header(Op::Rw, 1503, local);
    h.len = 2;
    g.send(h, b"no");
    let pkts = g.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert_eq!(g.device.connection_count(), 0);
}

/// Found by the `mmio_transport` fuzz target: a driver's avail index more
/// than a queue's length ahead made the device spin for ever (nothing
/// could be popped, and re-enabling notifications reported work). The
/// queue is unusable: an error, so the transport asks for a reset.
#[test]
fn an_avail_index_out_of_reach_is_an_error_not_a_spin() {
    use crate::virtio::{DeviceContext, DeviceError, VirtioDevice};
    use crate::vsock::TX_QUEUE;
    use virtio_queue::QueueT;

    let mem = memory();
    let mut g = Guest::new(&mem);
    let avail = g.queues[usize::from(TX_QUEUE)].avail_ring();
    mem.write_obj(QSIZE + 1, GuestAddress(avail + 2))
        .expect("avail idx");
    let mut ctx = DeviceContext::new(g.mem, &mut g.queues, &g.irq);
    let result = g.device.process_queue(TX_QUEUE, &mut ctx);
    assert!(
        matches!(
            result,
            Err(DeviceError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ),
        "{result:?}"
    );
}
