//! The overlay on its own: reads, writes, copy-up, against a flat model.

use std::io::Write;

use super::*;

struct Fixture {
    _image: tempfile::NamedTempFile,
    image_path: std::path::PathBuf,
    dir: tempfile::TempDir,
    data: Vec<u8>,
}

/// A base image of `len` bytes of a position-dependent pattern.
fn fixture(len: usize) -> Fixture {
    let data: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let mut image = tempfile::NamedTempFile::new().expect("image");
    image.write_all(&data).expect("write image");
    let image_path = image.path().to_path_buf();
    Fixture {
        _image: image,
        image_path,
        dir: tempfile::tempdir().expect("overlay dir"),
        data,
    }
}

fn overlay(f: &Fixture, chunk: u64) -> Overlay {
    let base = BaseImage::open(&f.image_path).expect("base");
    let size = base.len().div_ceil(512) * 512;
    Overlay::new(base, size, f.dir.path(), chunk).expect("overlay")
}

fn read(o: &Overlay, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    o.read_at(&mut buf, offset).expect("read");
    buf
}

#[test]
fn reads_go_through_to_the_base() {
    let f = fixture(64 * 1024);
    let o = overlay(&f, 4096);
    assert_eq!(read(&o, 0, 64 * 1024), f.data);
    assert_eq!(read(&o, 1000, 5000), f.data[1000..6000]);
    assert_eq!(o.written_chunks(), 0);
}

#[test]
fn writes_read_back_and_leave_neighbours_alone() {
    let f = fixture(64 * 1024);
    let mut o = overlay(&f, 4096);
    o.write_at(&[0x5A; 8192], 8192).expect("write");
    assert_eq!(read(&o, 8192, 8192), vec![0x5A; 8192]);
    assert_eq!(read(&o, 0, 8192), f.data[..8192]);
    assert_eq!(read(&o, 16384, 4096), f.data[16384..20480]);
    // One read spanning base, overlay and base again.
    let mut want = f.data[4096..20480].to_vec();
    want[4096..12288].fill(0x5A);
    assert_eq!(read(&o, 4096, 16384), want);
    assert_eq!(o.written_chunks(), 2);
}

#[test]
fn partial_chunk_writes_copy_the_rest_up_from_the_base() {
    let f = fixture(256 * 1024);
    let mut o = overlay(&f, 64 * 1024);
    let mut model = f.data.clone();
    // Inside one chunk.
    o.write_at(&[1; 512], 65536 + 1024).expect("write");
    model[65536 + 1024..65536 + 1536].fill(1);
    // Straddling two chunks, covering neither fully.
    o.write_at(&[2; 4096], 131072 - 1024).expect("write");
    model[131072 - 1024..131072 + 3072].fill(2);
    // A later partial write into an already copied-up chunk keeps the
    // earlier one.
    o.write_at(&[3; 512], 65536).expect("write");
    model[65536..66048].fill(3);
    assert_eq!(read(&o, 0, model.len()), model);
    assert_eq!(o.written_chunks(), 2);
}

#[test]
fn multi_chunk_write_with_partial_ends() {
    let f = fixture(64 * 1024);
    let mut o = overlay(&f, 4096);
    let mut model = f.data.clone();
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
    o.write_at(&payload, 3000).expect("write");
    model[3000..23_000].copy_from_slice(&payload);
    assert_eq!(read(&o, 0, model.len()), model);
    assert_eq!(o.written_chunks(), 6);
}

#[test]
fn writes_never_touch_the_base_file() {
    let f = fixture(128 * 1024);
    let before = std::fs::metadata(&f.image_path).expect("stat");
    let mut o = overlay(&f, 4096);
    o.write_at(&[0xFF; 128 * 1024], 0)
        .expect("overwrite everything");
    o.write_at(&[0; 512], 4096 + 512).expect("partial");
    assert_ne!(read(&o, 0, 4096), f.data[..4096]);
    drop(o);
    assert_eq!(std::fs::read(&f.image_path).expect("reread base"), f.data);
    let after = std::fs::metadata(&f.image_path).expect("stat");
    assert_eq!(before.modified().ok(), after.modified().ok());
}

#[test]
fn the_tail_past_the_end_of_the_base_reads_as_zero_and_takes_writes() {
    // 5000 bytes: the disk is 5120 (10 sectors), the last chunk is short.
    let f = fixture(5000);
    let mut o = overlay(&f, 4096);
    assert_eq!(o.size(), 5120);
    let tail = read(&o, 4608, 512);
    assert_eq!(tail[..392], f.data[4608..5000]);
    assert!(tail[392..].iter().all(|&b| b == 0));
    o.write_at(&[7; 512], 4608).expect("write last sector");
    let mut want = f.data[4096..4608].to_vec();
    want.extend_from_slice(&[7; 512]);
    assert_eq!(read(&o, 4096, 1024), want);
    let mut buf = [0u8; 512];
    assert!(o.read_at(&mut buf, 5120).is_err());
    assert!(o.write_at(&buf, 4609 + 512).is_err());
    assert!(o.write_at(&buf, u64::MAX - 100).is_err());
}

#[test]
fn the_overlay_file_has_no_name() {
    let f = fixture(16 * 1024);
    let mut o = overlay(&f, 4096);
    o.write_at(&[9; 4096], 0).expect("write");
    assert_eq!(o.link_count().expect("stat overlay"), 0);
    let left: Vec<_> = std::fs::read_dir(f.dir.path())
        .expect("list overlay dir")
        .collect();
    assert!(left.is_empty(), "overlay dir holds {left:?}");
}

#[test]
fn bad_parameters_are_refused() {
    let f = fixture(4096);
    for chunk in [0, 256, 3000] {
        let base = BaseImage::open(&f.image_path).expect("base");
        assert!(Overlay::new(base, 4096, f.dir.path(), chunk).is_err());
    }
    let base = BaseImage::open(&f.image_path).expect("base");
    assert!(Overlay::new(base, u64::MAX, f.dir.path(), 512).is_err());
}

/// Random writes and reads against a plain in-memory copy of the disk.
#[test]
fn random_io_matches_a_flat_model() {
    let f = fixture(300 * 1024 + 512);
    let mut o = overlay(&f, 4096);
    let mut model = f.data.clone();
    model.resize(o.size() as usize, 0);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let sectors = o.size() / 512;
    for round in 0..400u32 {
        let start = next(sectors);
        let count = 1 + next((sectors - start).min(40));
        let (offset, len) = (start * 512, (count * 512) as usize);
        if next(2) == 0 {
            let fill = (round % 255) as u8 + 1;
            o.write_at(&vec![fill; len], offset).expect("write");
            model[offset as usize..offset as usize + len].fill(fill);
        } else {
            assert_eq!(
                read(&o, offset, len),
                model[offset as usize..offset as usize + len],
                "round {round}: {len} bytes at {offset}"
            );
        }
    }
    assert_eq!(read(&o, 0, model.len()), model);
}

/// Random writes, saved and restored into a fresh overlay in another
/// directory: every byte of the disk reads the same from both.
#[test]
fn saved_chunks_restore_into_a_fresh_overlay_byte_for_byte() {
    // 301 KiB: the last chunk is short, and the bitmap's last word partial.
    let f = fixture(300 * 1024 + 1024);
    let mut o = overlay(&f, 4096);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let sectors = o.size() / 512;
    for round in 0..60u32 {
        let start = next(sectors);
        let count = 1 + next((sectors - start).min(24));
        o.write_at(&vec![round as u8 + 1; (count * 512) as usize], start * 512)
            .expect("write");
    }
    o.write_at(&[0xAB; 512], o.size() - 512)
        .expect("last sector");

    let saved_overlay = o.save().expect("save");
    let saved = saved_overlay.check(o.size()).expect("check");
    assert_eq!(saved.count(), o.written_chunks());

    let other_dir = tempfile::tempdir().expect("dir");
    let base = BaseImage::open(&f.image_path).expect("base");
    let mut restored = Overlay::new(base, o.size(), other_dir.path(), 4096).expect("overlay");
    restored.restore(saved).expect("restore");
    assert_eq!(restored.written_chunks(), o.written_chunks());
    let len = o.size() as usize;
    assert_eq!(read(&restored, 0, len), read(&o, 0, len));

    // A fresh overlay only: restoring twice is refused.
    let again = saved_overlay.check(o.size()).expect("check");
    let err = restored.restore(again).expect_err("not fresh");
    assert!(err.to_string().contains("already holds"), "{err}");
    // Another chunk size is refused.
    let saved = saved_overlay.check(o.size()).expect("check");
    let base = BaseImage::open(&f.image_path).expect("base");
    let mut big = Overlay::new(base, o.size(), other_dir.path(), 8192).expect("overlay");
    let err = big.restore(saved).expect_err("other chunk size");
    assert!(
        err.to_string().contains("4096-byte chunks, this one 8192"),
        "{err}"
    );
}

#[test]
fn runs_of_written_chunks_are_found_across_words() {
    let mut bitmap = vec![0u64; 4];
    for chunk in [0u64, 1, 2, 63, 64, 65, 130] {
        bitmap[(chunk / 64) as usize] |= 1 << (chunk % 64);
    }
    bitmap[3] = u64::MAX; // chunks 192..256, then the end of the disk
    let mut runs = Vec::new();
    for_each_run(&bitmap, 256, |s, e| -> Result<(), ()> {
        runs.push((s, e));
        Ok(())
    })
    .expect("runs");
    assert_eq!(runs, vec![(0, 3), (63, 66), (130, 131), (192, 256)]);
}
