//! Saving a device the driver wrote through, restoring it into fresh
//! devices over the same image, and refusing states that do not fit.

use std::rc::Rc;

use super::harness::*;
use crate::block::{BlockConfig, BlockDevice, BlockState, DiskMode, OVERLAY_CHUNK_SIZE};
use crate::snapshot::codec;
use crate::snapshot::error::SnapshotError;
use crate::snapshot::state::DeviceState;
use crate::virtio::VirtioDevice;
use crate::vsock::{VsockConfig, VsockDevice};

fn save(dev: &BlockDevice) -> DeviceState {
    VirtioDevice::<Mem>::save_state(dev).expect("save")
}

fn block(state: &DeviceState) -> &BlockState {
    match state {
        DeviceState::Block(b) => b,
        other => panic!("not a block state: {other:?}"),
    }
}

/// A fresh device over `h`'s image, configured like it, with its own
/// overlay directory.
fn fresh_device(h: &Harness<'_>) -> (BlockDevice, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("overlay dir");
    let config = BlockConfig {
        image: h.image.path().to_path_buf(),
        mode: DiskMode::Overlay {
            dir: Some(dir.path().to_path_buf()),
        },
        serial: "test-serial".into(),
    };
    (BlockDevice::new(config).expect("device"), dir)
}

/// Restores `state` into a fresh device over `h`'s image and drives it.
fn restore<'a>(mem: &'a Mem, h: &Harness<'_>, state: &DeviceState) -> Harness<'a> {
    let (mut dev, dir) = fresh_device(h);
    VirtioDevice::<Mem>::restore_state(&mut dev, state).expect("restore");
    Harness::around(mem, dev, Rc::clone(&h.image), h.image_data.clone(), dir)
}

fn refusal(dev: &mut BlockDevice, state: &DeviceState) -> String {
    match VirtioDevice::<Mem>::restore_state(dev, state) {
        Err(e @ SnapshotError::Invalid { .. }) => e.to_string(),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(()) => panic!("restored a state it should refuse"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn written_sectors_come_back_and_the_rest_reads_from_the_base() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let whole = pattern(8192, 1);
    let partial = pattern(512, 2);
    let last = pattern(512, 3);
    // Two whole chunks, one sector inside a chunk (copied up), the last sector.
    assert_eq!(h.write(16, &whole).0, OK);
    assert_eq!(h.write(3, &partial).0, OK);
    assert_eq!(h.write(IMAGE_SECTORS - 1, &last).0, OK);
    let written = h.device.disk().overlay().expect("overlay").written_chunks();
    assert_eq!(written, 4);

    let state = save(&h.device);
    // The written chunks and a bitmap, never the 2 MiB base image, and
    // the chunks as they are once encoded.
    let chunk_bytes = (written * OVERLAY_CHUNK_SIZE) as usize;
    let encoded = codec::encode(&state).expect("encode").len();
    assert!(encoded >= chunk_bytes, "{encoded} bytes");
    assert!(encoded < chunk_bytes + 256, "{encoded} bytes");

    let mem2 = memory();
    let mut r = restore(&mem2, &h, &state);
    assert!(r.device.is_activated());
    assert_eq!(
        VirtioDevice::<Mem>::acked_features(&r.device),
        VirtioDevice::<Mem>::acked_features(&h.device)
    );
    let overlay = r.device.disk().overlay().expect("overlay");
    assert_eq!(overlay.written_chunks(), written);
    assert_eq!(overlay.link_count().expect("stat"), 0);

    assert_eq!(r.read(16, 8192), (OK, 8193));
    assert_eq!(r.guest(DATA, 8192), whole);
    assert_eq!(r.read(3, 512).0, OK);
    assert_eq!(r.guest(DATA, 512), partial);
    // The rest of the copied-up chunk, and untouched sectors, are the base.
    assert_eq!(r.read(0, 1536).0, OK);
    assert_eq!(r.guest(DATA, 1536), r.image_at(0, 1536));
    assert_eq!(r.read(4, 2048).0, OK);
    assert_eq!(r.guest(DATA, 2048), r.image_at(4, 2048));
    assert_eq!(r.read(100, 4096).0, OK);
    assert_eq!(r.guest(DATA, 4096), r.image_at(100, 4096));
    assert_eq!(r.read(IMAGE_SECTORS - 2, 1024).0, OK);
    assert_eq!(r.guest(DATA, 512), r.image_at(IMAGE_SECTORS - 2, 512));
    assert_eq!(r.guest(DATA + 512, 512), last);

    // The clone writes on; neither the original nor the base sees it.
    assert_eq!(r.write(16, &[0x77; 512]).0, OK);
    assert_eq!(r.write(200, &[0x78; 512]).0, OK);
    assert_eq!(h.read(16, 512).0, OK);
    assert_eq!(h.guest(DATA, 512), whole[..512]);
    assert_eq!(h.read(200, 512).0, OK);
    assert_eq!(h.guest(DATA, 512), h.image_at(200, 512));
    assert!(h.base_unchanged());

    // A second clone of the same state starts from the saved writes only.
    let mem3 = memory();
    let mut r2 = restore(&mem3, &h, &state);
    assert_eq!(r2.read(16, 512).0, OK);
    assert_eq!(r2.guest(DATA, 512), whole[..512]);
    assert_eq!(r2.read(200, 512).0, OK);
    assert_eq!(r2.guest(DATA, 512), r2.image_at(200, 512));
    // And saving a restored device gives the same state back.
    assert_eq!(save(&r2.device), state);
}

#[test]
fn a_device_with_nothing_written_round_trips() {
    let mem = memory();
    let h = Harness::new(&mem);
    let state = save(&h.device);
    let mem2 = memory();
    let mut r = restore(&mem2, &h, &state);
    assert_eq!(
        r.device.disk().overlay().expect("overlay").written_chunks(),
        0
    );
    assert_eq!(r.read(0, 4096).0, OK);
    assert_eq!(r.guest(DATA, 4096), r.image_at(0, 4096));

    // Not activated when saved: not activated when restored.
    let (mut plain, _dir) = fresh_device(&h);
    let unactivated = save(&plain);
    let (mut other, _dir2) = fresh_device(&h);
    VirtioDevice::<Mem>::restore_state(&mut other, &unactivated).expect("restore");
    assert!(!other.is_activated());
    // A device that was set up already is not fresh.
    VirtioDevice::<Mem>::ack_features(&mut plain, 1 << 32);
    let m = refusal(&mut plain, &state);
    assert!(m.contains("freshly created device"), "{m}");
}

#[test]
fn a_disk_of_another_size_is_refused() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.write(0, &[1; 512]).0, OK);
    let state = save(&h.device);
    let other = Harness::with(&mem, (IMAGE_SECTORS * 512 + 512) as usize, |c| c);
    let (mut dev, _dir) = fresh_device(&other);
    let m = refusal(&mut dev, &state);
    assert_eq!(
        m,
        format!(
            "block: cannot restore: the saved disk has {IMAGE_SECTORS} sectors, this one {}: \
             a snapshot only restores over a disk of the same size",
            IMAGE_SECTORS + 1
        )
    );
    // Refused before anything was written: the device is still fresh.
    assert_eq!(dev.disk().overlay().expect("overlay").written_chunks(), 0);
}

#[test]
fn read_only_devices_take_only_read_only_states() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let read_only = BlockConfig {
        image: h.image.path().to_path_buf(),
        mode: DiskMode::ReadOnly,
        serial: "test-serial".into(),
    };
    let mut ro = BlockDevice::new(read_only.clone()).expect("device");
    let m = refusal(&mut ro, &save(&h.device));
    assert!(
        m.contains("writable (copy-on-write) but this device is read-only"),
        "{m}"
    );
    assert_eq!(h.write(8, &[5; 4096]).0, OK);
    let m = refusal(&mut ro, &save(&h.device));
    assert!(
        m.contains("holds 1 chunks the guest wrote but this device is read-only"),
        "{m}"
    );

    // Read-only to read-only works; read-only to copy-on-write does not.
    let mut saved_ro = BlockDevice::new(read_only.clone()).expect("device");
    VirtioDevice::<Mem>::ack_features(&mut saved_ro, u64::MAX);
    VirtioDevice::<Mem>::activate(&mut saved_ro).expect("activate");
    let state = save(&saved_ro);
    VirtioDevice::<Mem>::restore_state(&mut ro, &state).expect("restore read-only");
    assert!(ro.is_activated());
    assert_eq!(
        VirtioDevice::<Mem>::acked_features(&ro),
        VirtioDevice::<Mem>::features(&ro)
    );
    let (mut cow, _dir) = fresh_device(&h);
    let m = refusal(&mut cow, &state);
    assert!(
        m.contains("was read-only but this device is writable"),
        "{m}"
    );
}

#[test]
fn corrupt_and_foreign_states_are_refused_and_change_nothing() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.write(16, &pattern(4096, 9)).0, OK);
    assert_eq!(h.write(IMAGE_SECTORS - 1, &[4; 512]).0, OK);
    let state = save(&h.device);
    let (mut dev, _dir) = fresh_device(&h);

    // Every truncation of its encoding, down to nothing, and any byte
    // more: the decoding refuses it before a device sees it.
    let encoded = codec::encode(&state).expect("encode");
    assert_eq!(
        codec::decode::<DeviceState>(&encoded).expect("decode"),
        state
    );
    for len in 0..encoded.len() {
        assert!(
            codec::decode::<DeviceState>(&encoded[..len]).is_err(),
            "{len} bytes"
        );
    }
    let mut longer = encoded.clone();
    longer.push(0);
    let err = codec::decode::<DeviceState>(&longer).expect_err("leftover");
    assert!(err.to_string().contains("1 unexpected bytes"), "{err}");
    // A flag that is neither 0 nor 1 (`activated`, after the variant and
    // the two feature words).
    let s = block(&state);
    let activated_at = codec::encode(&(0u8, s.virtio.features, s.virtio.acked_features))
        .expect("encode")
        .len();
    assert_eq!(encoded[activated_at], 1, "the activated flag");
    let mut bad_flag = encoded.clone();
    bad_flag[activated_at] = 2;
    assert!(codec::decode::<DeviceState>(&bad_flag).is_err());

    type Damage = fn(&mut BlockState);
    let cases: [(Damage, &str); 11] = [
        (
            |s| s.serial[..5].copy_from_slice(b"other"),
            "saved serial is \"otherserial\"",
        ),
        (|s| s.overlay = None, "was read-only"),
        (
            |s| s.overlay.as_mut().unwrap().chunk_size = 1000,
            "not a power of two",
        ),
        // Other chunks: the bitmap length no longer fits the disk.
        (
            |s| s.overlay.as_mut().unwrap().chunk_size = 8192,
            "bitmap has 8 words",
        ),
        (
            |s| s.overlay.as_mut().unwrap().bitmap.extend([0; 8]),
            "bitmap has 9 words",
        ),
        (
            |s| s.overlay.as_mut().unwrap().bitmap.push(0),
            "not whole 64-bit words",
        ),
        // One more chunk marked than there are bytes for, and one fewer.
        (
            |s| s.overlay.as_mut().unwrap().bitmap[0] = 0b110,
            "the written chunks are 8192 bytes, the bitmap marks 12288",
        ),
        (
            |s| s.overlay.as_mut().unwrap().bitmap[0] = 0,
            "the written chunks are 8192 bytes, the bitmap marks 4096",
        ),
        (|s| s.virtio.features = 0, "offered features 0x0"),
        (|s| s.virtio.acked_features = u64::MAX, "never offered"),
        (|s| s.capacity += 1, "the saved disk has"),
    ];
    for (damage, want) in cases {
        let mut bad = block(&state).clone();
        damage(&mut bad);
        let m = refusal(&mut dev, &DeviceState::Block(bad));
        assert!(m.contains(want), "want {want:?} in {m}");
    }
    // A bit past the last chunk (the disk has 512 chunks: 8 full words, so
    // make the disk one chunk longer to have a partial last word).
    let odd = Harness::with(&mem, (IMAGE_SECTORS * 512 + 4096) as usize, |c| c);
    let mut past_the_end = block(&save(&odd.device)).clone();
    let overlay = past_the_end.overlay.as_mut().expect("overlay");
    assert_eq!(overlay.bitmap.len(), 9 * 8);
    overlay.bitmap[64] = 0b10;
    overlay.data = vec![0; 4096];
    let (mut odd_dev, _dir) = fresh_device(&odd);
    let m = refusal(&mut odd_dev, &DeviceState::Block(past_the_end));
    assert!(m.contains("chunks past the end of the disk"), "{m}");

    // A state of another device type, made by that device.
    let dir = tempfile::tempdir().expect("dir");
    let vsock = VsockDevice::new(VsockConfig::new(3, dir.path().join("v"))).expect("vsock");
    let vsock_state = VirtioDevice::<Mem>::save_state(&vsock).expect("vsock state");
    let m = refusal(&mut dev, &vsock_state);
    assert!(
        m.contains("belongs to a vsock device (virtio id 19), not to a block device"),
        "{m}"
    );

    // None of it touched the device: the real state still restores.
    assert_eq!(dev.disk().overlay().expect("overlay").written_chunks(), 0);
    VirtioDevice::<Mem>::restore_state(&mut dev, &state).expect("restore");
    assert_eq!(dev.disk().overlay().expect("overlay").written_chunks(), 2);
}
