//! The layer file: what the device writes into it, and reading it back.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;

use super::*;
use crate::block::tests::harness::*;
use crate::block::{BlockConfig, BlockDevice, DiskError, DiskMode};
use crate::virtio::VirtioDevice;

const C: u64 = OVERLAY_CHUNK_SIZE;

/// A driver in front of a cache volume over an image of `image_len`
/// bytes, its layer in a file of its own (returned, to read back).
fn cache_volume(mem: &Mem, image_len: usize) -> (Harness<'_>, File) {
    let layer = tempfile::tempfile().expect("layer file");
    let reader = layer.try_clone().expect("layer fd");
    let h = Harness::with(mem, image_len, |c| {
        let base = File::open(&c.image).expect("open base");
        BlockConfig::layer(c.image.clone(), base, layer).with_serial("cache0")
    });
    (h, reader)
}

fn bitmap_word(layer: &File, disk_size: u64, word: u64) -> u64 {
    let mut bytes = [0u8; 8];
    layer
        .read_exact_at(&mut bytes, disk_size + word * 8)
        .expect("read bitmap word");
    u64::from_le_bytes(bytes)
}

#[test]
fn the_device_writes_data_then_bits_and_the_reader_finds_them() {
    let mem = memory();
    let size = IMAGE_SECTORS * 512;
    let (mut h, layer) = cache_volume(&mem, size as usize);
    assert_eq!(layer.metadata().unwrap().len(), layer_len(size).unwrap());
    assert_eq!(written_ranges(&layer, size).unwrap(), vec![]);

    // A whole chunk, then one sector in the middle of another (copied up).
    let chunk = vec![0x11; C as usize];
    assert_eq!(h.write(8, &chunk).0, OK);
    assert_eq!(bitmap_word(&layer, size, 0), 1 << 1);
    assert_eq!(h.write(5 * 8 + 3, &[0x22; 512]).0, OK);
    assert_eq!(bitmap_word(&layer, size, 0), (1 << 1) | (1 << 5));
    assert_eq!(
        written_ranges(&layer, size).unwrap(),
        vec![C..2 * C, 5 * C..6 * C]
    );

    // The layer holds whole chunks: the written bytes, the rest copied up.
    let mut got = vec![0; C as usize];
    layer.read_exact_at(&mut got, C).unwrap();
    assert_eq!(got, chunk);
    layer.read_exact_at(&mut got, 5 * C).unwrap();
    let mut want = h.image_at(5 * 8, C as usize).to_vec();
    want[3 * 512..4 * 512].fill(0x22);
    assert_eq!(got, want);

    // Reads see the writes; the base never changes.
    assert_eq!(h.read(5 * 8, C as u32).0, OK);
    assert_eq!(h.guest(DATA, C as usize), want);
    assert!(h.base_unchanged());
}

#[test]
fn adjacent_chunks_coalesce_across_bitmap_words() {
    let mem = memory();
    let size = IMAGE_SECTORS * 512;
    let (mut h, layer) = cache_volume(&mem, size as usize);
    // Chunks 62..=65 (straddling words 0 and 1), in two writes, then 70.
    assert_eq!(h.write(62 * 8, &vec![1; 2 * C as usize]).0, OK);
    assert_eq!(h.write(64 * 8, &vec![2; 2 * C as usize]).0, OK);
    assert_eq!(h.write(70 * 8, &[3; 512]).0, OK);
    assert_eq!(
        written_ranges(&layer, size).unwrap(),
        vec![62 * C..66 * C, 70 * C..71 * C]
    );
    assert_eq!(bitmap_word(&layer, size, 0), 0b11 << 62);
    assert_eq!(bitmap_word(&layer, size, 1), 0b11 | (1 << 6));
}

#[test]
fn a_partial_last_chunk_is_clamped_to_the_disk() {
    let mem = memory();
    // 9 sectors: one whole chunk and one of 512 bytes.
    let size = 9 * 512;
    let (mut h, layer) = cache_volume(&mem, size as usize);
    assert_eq!(layer.metadata().unwrap().len(), size + 8);
    assert_eq!(h.write(8, &[9; 512]).0, OK);
    assert_eq!(written_ranges(&layer, size).unwrap(), vec![C..size]);
    assert_eq!(h.write(0, &[8; 512]).0, OK);
    assert_eq!(written_ranges(&layer, size).unwrap(), vec![0..size]);
    // A write past the end fails and marks nothing.
    assert_eq!(h.write(9, &[7; 512]).0, IOERR);
    assert_eq!(bitmap_word(&layer, size, 0), 0b11);
}

#[test]
fn flush_syncs_the_layer() {
    let mem = memory();
    let (mut h, layer) = cache_volume(&mem, 64 * 1024);
    assert_eq!(h.write(0, &[5; 4096]).0, OK);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);
    assert_eq!(h.device.stats().counts().flushes, 1);
    assert_eq!(written_ranges(&layer, 64 * 1024).unwrap(), vec![0..C]);
}

#[test]
fn a_layer_is_never_saved_in_a_snapshot() {
    let mem = memory();
    let (h, _layer) = cache_volume(&mem, 64 * 1024);
    let err = VirtioDevice::<Mem>::save_state(&h.device).expect_err("saved a cache volume");
    assert!(
        err.to_string().contains("never part of a snapshot"),
        "{err}"
    );
}

#[test]
fn a_layer_file_that_is_not_empty_is_refused() {
    let image = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(image.path(), [0u8; 4096]).unwrap();
    let layer = tempfile::tempfile().unwrap();
    layer.write_all_at(b"old", 0).unwrap();
    let config = BlockConfig::layer(image.path(), File::open(image.path()).unwrap(), layer);
    let err = BlockDevice::new(config).err().expect("a used layer");
    assert!(
        matches!(err, crate::block::BlockError::Disk(DiskError::Layer { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(matches!(
        BlockConfig::layer(
            "x",
            tempfile::tempfile().unwrap(),
            tempfile::tempfile().unwrap()
        )
        .mode,
        DiskMode::Layer { .. }
    ));
}

/// A file of `len` bytes whose bitmap (at `size`) is `words`.
fn layer_file(len: u64, size: u64, words: &[u64]) -> File {
    let file = tempfile::tempfile().unwrap();
    file.set_len(len).unwrap();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if !bytes.is_empty() {
        file.write_all_at(&bytes, size).unwrap();
    }
    file
}

#[test]
fn an_empty_file_holds_nothing() {
    let file = tempfile::tempfile().unwrap();
    assert_eq!(written_ranges(&file, 1 << 20).unwrap(), vec![]);
}

#[test]
fn short_and_long_files_are_refused_unread() {
    let size = 1 << 20;
    let full = layer_len(size).unwrap();
    for len in [1, size, full - 1, full + 1, 1 << 40] {
        let file = tempfile::tempfile().unwrap();
        file.set_len(len).unwrap();
        let err = written_ranges(&file, size).expect_err("a layer of the wrong length");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{len}: {err}");
    }
}

#[test]
fn bits_past_the_last_chunk_are_ignored() {
    // 100 chunks: bits 100..128 of the second word name nothing.
    let size = 100 * C;
    let file = layer_file(layer_len(size).unwrap(), size, &[0, u64::MAX]);
    assert_eq!(written_ranges(&file, size).unwrap(), vec![64 * C..100 * C]);
    // With a partial last chunk, its range ends with the disk.
    let size = 99 * C + 512;
    let file = layer_file(layer_len(size).unwrap(), size, &[1, u64::MAX]);
    assert_eq!(
        written_ranges(&file, size).unwrap(),
        vec![0..C, 64 * C..size]
    );
}

#[test]
fn impossible_disk_sizes_are_refused() {
    let file = tempfile::tempfile().unwrap();
    let err = written_ranges(&file, 1000).expect_err("not whole sectors");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    // More than 64 MiB of bitmap: refused before anything is allocated.
    let err = written_ranges(&file, 1 << 50).expect_err("a huge disk");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(written_ranges(&file, 0).unwrap(), vec![]);
}

#[test]
fn a_full_bitmap_is_one_range() {
    let size = 128 * C;
    let file = layer_file(layer_len(size).unwrap(), size, &[u64::MAX, u64::MAX]);
    assert_eq!(written_ranges(&file, size).unwrap(), vec![0..size]);
}
