//! Snapshots: saving is refused while anything lives on the host side; a
//! restored device sends the transport reset, then works as usual.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::driver::*;
use crate::block::BlockState;
use crate::common::CommonState;
use crate::snapshot::codec;
use crate::snapshot::error::SnapshotError;
use crate::snapshot::state::DeviceState;
use crate::virtio::VirtioDevice;
use crate::vsock::packet::Op;
use crate::vsock::state::VsockState;
use virtio_queue::QueueT;

use crate::vsock::{VsockDevice, EVENT_QUEUE, RX_QUEUE};

type Mem = GuestMemoryMmap;

fn save(dev: &VsockDevice) -> Result<DeviceState, SnapshotError> {
    VirtioDevice::<Mem>::save_state(dev)
}

/// Why saving is refused; the cheap `snapshot_blocker` a VMM polls must
/// say the same.
fn busy_reason(dev: &VsockDevice) -> String {
    let reason = match save(dev) {
        Err(e @ SnapshotError::Busy { .. }) => e.to_string(),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("saved a device that is not idle"),
    };
    let blocker = VirtioDevice::<Mem>::snapshot_blocker(dev).map(|e| e.to_string());
    assert_eq!(blocker.as_deref(), Some(reason.as_str()));
    reason
}

fn refusal(dev: &mut VsockDevice, state: &DeviceState) -> String {
    match VirtioDevice::<Mem>::restore_state(dev, state) {
        Err(e @ SnapshotError::Invalid { .. }) => e.to_string(),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(()) => panic!("restored a state it should refuse"),
    }
}

/// A fresh device configured like the test guest's, restored from `state`.
fn restored<'a>(mem: &'a Mem, state: &DeviceState) -> Guest<'a> {
    let (config, dir) = Guest::config(|_| {});
    let mut device = VsockDevice::new(config).expect("device");
    VirtioDevice::<Mem>::restore_state(&mut device, state).expect("restore");
    Guest::around(mem, device, dir)
}

fn readable_now(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// Pumps until the device has `n` connections.
fn pump_until_connections(g: &mut Guest<'_>, n: usize) {
    let start = Instant::now();
    while g.device.connection_count() != n {
        assert!(start.elapsed() < WAIT, "never reached {n} connections");
        g.pump(Duration::from_millis(20));
    }
}

#[test]
fn saving_is_refused_while_a_connection_is_open_and_names_it() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_listener, _host) = g.connect_from_guest(52000, 1024);
    assert_eq!(
        busy_reason(&g.device),
        "vsock: 1 connection is open (host port 1024 -> guest port 52000); a snapshot needs none"
    );
    // The guest resets it: nothing is left, and saving works.
    g.send(g.header(Op::Rst, 52000, 1024), &[]);
    assert_eq!(g.device.connection_count(), 0);
    save(&g.device).expect("save an idle device");
    assert!(VirtioDevice::<Mem>::snapshot_blocker(&g.device).is_none());

    let (_host2, local) = g.connect_from_host(52);
    let (_listener3, _host3) = g.connect_from_guest(52001, 1025);
    assert_eq!(
        busy_reason(&g.device),
        format!(
            "vsock: 2 connections are open (host port 1025 -> guest port 52001, host port \
             {local} -> guest port 52); a snapshot needs none"
        )
    );
}

#[test]
fn saving_is_refused_during_a_handshake_or_with_a_reset_for_the_guest() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // A host program connected and has not sent its CONNECT line.
    let silent = UnixStream::connect(&g.uds).expect("connect uds");
    let start = Instant::now();
    while save(&g.device).is_ok() {
        assert!(start.elapsed() < WAIT, "the connection was never accepted");
        g.pump(Duration::from_millis(20));
    }
    let m = busy_reason(&g.device);
    assert!(
        m.contains("1 host program(s) connected to") && m.contains("CONNECT line"),
        "{m}"
    );
    drop(silent);
    let start = Instant::now();
    while save(&g.device).is_err() {
        assert!(
            start.elapsed() < WAIT,
            "the closed handshake was never dropped"
        );
        g.pump(Duration::from_millis(20));
    }

    // A packet for no connection while the guest has no rx buffer: the RST
    // waits in the device.
    let mut stray = g.header(Op::Rw, 40000, 7777);
    stray.len = 3;
    g.send(stray, b"abc");
    assert_eq!(
        busy_reason(&g.device),
        "vsock: 1 reset packet(s) wait for the guest; a snapshot needs none"
    );
    g.offer_rx(1);
    g.kick(RX_QUEUE);
    assert_eq!(g.received()[0].op(), Some(Op::Rst));
    save(&g.device).expect("save once the RST went out");
}

#[test]
fn a_restored_device_resets_the_transport_first_then_connects_both_ways() {
    let mem = memory();
    let g = Guest::new(&mem);
    let state = save(&g.device).expect("save");
    drop(g);

    let mem2 = memory();
    let mut r = restored(&mem2, &state);
    assert!(r.device.is_activated());
    assert_eq!(
        VirtioDevice::<Mem>::acked_features(&r.device),
        VirtioDevice::<Mem>::features(&r.device)
    );
    assert!(r.device.transport_reset_outstanding());
    // The transport sets EVENT_IDX up from the acked features.
    r.queues[usize::from(EVENT_QUEUE)].set_event_idx(true);

    // No event buffer yet: nothing is sent, nothing is lost.
    r.pump(Duration::ZERO);
    assert!(r.events().is_empty());

    // A host program connects meanwhile; its REQUEST waits for the reset.
    let mut host = UnixStream::connect(&r.uds).expect("connect uds");
    host.set_read_timeout(Some(WAIT)).expect("timeout");
    host.write_all(b"CONNECT 52\n").expect("write CONNECT");
    r.offer_rx(8);
    pump_until_connections(&mut r, 1);
    r.kick(RX_QUEUE);
    assert!(r.received().is_empty(), "nothing reaches the guest first");

    // The driver posts its event buffers: the reset goes out on the first.
    r.offer_events(8, 4);
    r.kick(EVENT_QUEUE);
    assert_eq!(r.events(), vec![(4, 0)], "one TRANSPORT_RESET (id 0)");
    assert_eq!(r.irq.used[usize::from(EVENT_QUEUE)].get(), 1);
    assert!(r.received().is_empty(), "still waiting for the driver");
    // The driver is asked to kick when it re-posts a buffer past index 8,
    // though 7 more are still posted.
    let avail_event_at = EVENT_USED_RING + 4 + 8 * u64::from(QSIZE);
    let avail_event: u16 = mem2
        .read_obj(GuestAddress(avail_event_at))
        .expect("avail_event");
    assert_eq!(avail_event, 8);

    // It handled the event and re-posted the buffer: the REQUEST comes.
    r.offer_events(1, 4);
    r.kick(EVENT_QUEUE);
    assert!(!r.device.transport_reset_outstanding());
    let pkts = r.received();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op(), Some(Op::Request));
    assert_eq!(pkts[0].hdr.dst_port, 52);
    let local = pkts[0].hdr.src_port;
    r.send(r.header(Op::Response, 52, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}\n"));
    host.write_all(b"ping").expect("host writes");
    let pkts = r.collect_until(WAIT, |p| rw_bytes(p).len() >= 4);
    assert_eq!(rw_bytes(&pkts), b"ping");

    // The guest connects out as usual, and there is only ever one reset.
    let (_listener, _host2) = r.connect_from_guest(40000, 1234);
    assert!(r.events().is_empty());
    assert_eq!(r.device.connection_count(), 2);
}

#[test]
fn the_reset_goes_out_without_a_kick_when_buffers_are_posted() {
    let mem = memory();
    let g = Guest::new(&mem);
    let state = save(&g.device).expect("save");
    let mem2 = memory();
    let mut r = restored(&mem2, &state);
    // Restored queues come back with the driver's buffers already posted;
    // a buffer too small for the event is handed back untouched.
    r.offer_events(1, 2);
    r.offer_events(2, 4);
    // The restore asked for a `process_backend` call...
    assert!(readable_now(r.backend_fd()));
    r.pump(Duration::ZERO);
    assert_eq!(r.events(), vec![(0, 0xFFFF_FFFF), (4, 0)]);
    // ...and nothing else: the fd is quiet again.
    assert!(!readable_now(r.backend_fd()));

    // A driver reset forgets the owed reset along with everything else.
    let mut r2 = restored(&mem2, &state);
    assert!(r2.device.transport_reset_outstanding());
    VirtioDevice::<Mem>::reset(&mut r2.device);
    assert!(!r2.device.transport_reset_outstanding());
}

#[test]
fn foreign_corrupt_and_mismatched_states_are_refused() {
    let mem = memory();
    let g = Guest::new(&mem);
    let state = save(&g.device).expect("save");
    let DeviceState::Vsock(saved) = &state else {
        panic!("not a vsock state: {state:?}");
    };
    // Features, activation and the CID: a handful of bytes.
    let encoded = codec::encode(&state).expect("encode");
    assert!(encoded.len() <= 1 + 10 + 10 + 1 + 10, "{encoded:02x?}");
    let (config, _dir) = Guest::config(|_| {});
    let mut dev = VsockDevice::new(config).expect("device");

    // Every truncation of its encoding and any byte more: the decoding
    // refuses it before a device sees it.
    for len in 0..encoded.len() {
        assert!(
            codec::decode::<DeviceState>(&encoded[..len]).is_err(),
            "{len} bytes"
        );
    }
    let mut longer = encoded.clone();
    longer.extend_from_slice(&[0; 3]);
    let err = codec::decode::<DeviceState>(&longer).expect_err("leftover");
    assert!(err.to_string().contains("3 unexpected bytes"), "{err}");
    // An activated flag that is neither 0 nor 1, and a device variant
    // that does not exist.
    let flag_at = codec::encode(&(1u8, saved.virtio.features, saved.virtio.acked_features))
        .expect("encode")
        .len();
    assert_eq!(encoded[flag_at], 1, "the activated flag");
    let mut bad = encoded.clone();
    bad[flag_at] = 9;
    assert!(codec::decode::<DeviceState>(&bad).is_err());
    let mut bad = encoded.clone();
    bad[0] = 9;
    assert!(codec::decode::<DeviceState>(&bad).is_err());

    type Damage = fn(&mut VsockState);
    let cases: [(Damage, &str); 3] = [
        (|s| s.virtio.acked_features |= 1 << 63, "never offered"),
        (
            |s| s.virtio.features = 1 << 32,
            "offered features 0x100000000",
        ),
        (|s| s.guest_cid = 4, "guest CID 4, this one 3"),
    ];
    for (damage, want) in cases {
        let mut bad = saved.clone();
        damage(&mut bad);
        let m = refusal(&mut dev, &DeviceState::Vsock(bad));
        assert!(m.contains(want), "want {want:?} in {m}");
    }
    // Another device's state.
    let block = DeviceState::Block(BlockState {
        virtio: CommonState {
            features: 0,
            acked_features: 0,
            activated: false,
        },
        capacity: 1,
        serial: [0; 20],
        overlay: None,
    });
    let m = refusal(&mut dev, &block);
    assert!(
        m.contains("belongs to a block device (virtio id 2), not to a vsock device"),
        "{m}"
    );
    // The same state into a device with another CID.
    let (other, _dir2) = Guest::config(|c| c.guest_cid = 7);
    let mut other = VsockDevice::new(other).expect("device");
    let m = refusal(&mut other, &state);
    assert!(m.contains("guest CID 3, this one 7"), "{m}");
    // Nothing above changed the device; a device already in use is refused.
    VirtioDevice::<Mem>::restore_state(&mut dev, &state).expect("restore");
    let m = refusal(&mut dev, &state);
    assert!(m.contains("freshly created device"), "{m}");
}
