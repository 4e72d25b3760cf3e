//! Cache volumes at the block level, without the cache store: a VM gets a
//! small ext4 image made here as a cache disk (`cache0`, the guest's
//! `/dev/vdb`), writes a file on it; its writes land in the layer file,
//! never in the image. The host then merges the layer's written ranges
//! into a copy of the image with plain file I/O (as the store does, never
//! mounting it), and a second VM finds the file on the merged image.
//!
//! Runs on the backend `RUNNER_BACKEND` names. The nested tier runs it
//! with the kvm backend, where the warm test restores a snapshot (built
//! here, with empty cache slots) and the clone gets its cache attached
//! after the restore; on QEMU, which has no warm start, that test boots.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::{require_tool, sh, spec};
use runner::session::{wait_for_agent, SessionProbe};
use runner_devices::block::layer::written_ranges;
use runner_machine::kvm::KvmBackend;
use runner_machine::snapshots::SnapshotStore;
use runner_machine::trusted_cache::TrustedCache;
use runner_machine::{select, Backend, CacheDisk};

const IMAGE_BYTES: u64 = 32 << 20;
/// ext4's superblock is at 1024; its magic (0xEF53, little-endian) at 56
/// into it.
const EXT4_MAGIC_AT: u64 = 1024 + 56;
const CONTENT: &str = "filled by the first VM";

fn on_kvm() -> bool {
    std::env::var("RUNNER_BACKEND").as_deref() == Ok("kvm")
}

/// An empty ext4 image of [`IMAGE_BYTES`], made with mkfs.ext4.
fn make_image(path: &Path) {
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    File::create(path).unwrap().set_len(IMAGE_BYTES).unwrap();
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-L", "cache"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
}

fn ext4_magic(image: &Path) -> [u8; 2] {
    let mut magic = [0u8; 2];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut magic, EXT4_MAGIC_AT)
        .unwrap();
    magic
}

fn cache_disk(dir: &Path, base: &Path, name: &str) -> CacheDisk {
    let layer = dir.join(format!("{name}.layer"));
    File::create(&layer).unwrap();
    CacheDisk {
        serial: "cache0".into(),
        base: base.to_path_buf(),
        layer,
    }
}

/// Boots `name` with `cache` on `backend`, runs `script`, shuts the guest
/// down and waits for its VM to end: the layer is complete then.
fn run_with_cache(backend: &dyn Backend, name: &str, cache: &CacheDisk, script: &str) -> String {
    let mut spec = spec(name);
    spec.caches = vec![cache.clone()];
    let mut vm = backend.start(&spec).expect("VM starts");
    let mut session = wait_for_agent(vm.as_mut(), spec.boot_timeout)
        .unwrap_or_else(|e| panic!("{name}: guest did not become ready: {e}"));
    let ran = sh(&mut session, script);
    let stdout = ran.stdout();
    assert!(
        ran.status.success(),
        "{name}: {script}\nstdout: {stdout}\nstderr: {}",
        ran.stderr()
    );
    session.shutdown().expect("shutdown");
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "{name}: the VM did not stop"
    );
    stdout
}

/// Waits (at most 30 s) for `/dev/vdb` to have sectors: a restored
/// clone's guest learns of its cache from an interrupt, and reads the new
/// capacity in a work queue of its own, a moment later.
const WAIT_FOR_SECTORS: &str = "i=0; while [ \"$(cat /sys/block/vdb/size)\" = 0 ] && \
    [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done; ";

/// The first VM's script: the cache is `/dev/vdb`, by its serial; a file
/// is written to it and the file system unmounted.
fn fill_script() -> String {
    format!(
        "{WAIT_FOR_SECTORS}cat /sys/block/vdb/serial; echo; \
         grep -q '^0$' /sys/block/vdb/ro && \
         mkdir -p /mnt/cache && mount -t ext4 /dev/vdb /mnt/cache && \
         echo '{CONTENT}' > /mnt/cache/greeting && sync && umount /mnt/cache && echo filled"
    )
}

fn read_script() -> String {
    format!(
        "{WAIT_FOR_SECTORS}cat /sys/block/vdb/serial; echo; mkdir -p /mnt/cache && \
         mount -t ext4 /dev/vdb /mnt/cache && cat /mnt/cache/greeting && umount /mnt/cache"
    )
}

/// `base` with the ranges of `layer` laid over it, in a new file.
fn merge(base: &Path, layer: &Path, into: &Path) -> u64 {
    std::fs::copy(base, into).unwrap();
    let size = std::fs::metadata(base).unwrap().len();
    let layer = File::open(layer).unwrap();
    let ranges = written_ranges(&layer, size).expect("a layer of the cache's size");
    assert!(
        !ranges.is_empty(),
        "the guest's writes are not in the layer"
    );
    let out = std::fs::OpenOptions::new().write(true).open(into).unwrap();
    let mut merged = 0;
    for range in ranges {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        layer.read_exact_at(&mut buf, range.start).unwrap();
        out.write_all_at(&buf, range.start).unwrap();
        merged += buf.len() as u64;
    }
    out.sync_all().unwrap();
    merged
}

/// Fills a cache on `first`, merges it, and reads it back on `second`.
fn round_trip(first: &dyn Backend, second: &dyn Backend, dir: &Path) {
    let base = dir.join("base.ext4");
    make_image(&base);
    let pristine = std::fs::read(&base).unwrap();
    let cache = cache_disk(dir, &base, "first");
    let out = run_with_cache(first, "cache-fill", &cache, &fill_script());
    assert!(out.starts_with("cache0\n"), "{out}");
    assert!(out.contains("filled"), "{out}");
    assert_eq!(
        std::fs::read(&base).unwrap(),
        pristine,
        "the base was written"
    );

    let merged = dir.join("merged.ext4");
    let bytes = merge(&base, &cache.layer, &merged);
    assert!(bytes > 0 && bytes < IMAGE_BYTES, "{bytes} bytes merged");
    assert_ne!(std::fs::read(&merged).unwrap(), pristine);
    assert_eq!(ext4_magic(&merged), [0x53, 0xEF]);

    let again = cache_disk(dir, &merged, "second");
    let out = run_with_cache(second, "cache-read", &again, &read_script());
    assert_eq!(out, format!("cache0\n{CONTENT}\n"));
}

#[test]
fn a_cache_disk_keeps_the_guests_writes_in_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let backend = select::from_env().expect("a backend");
    round_trip(backend.as_ref(), backend.as_ref(), dir.path());
}

/// On kvm: both VMs are clones of one snapshot, built here (cold, with
/// empty slots and no cache), each with its cache attached to slot 0 after
/// the restore. Elsewhere both boot.
#[test]
fn a_restored_clone_gets_its_cache_attached() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Box<dyn Backend> = if on_kvm() {
        let cache = TrustedCache::at(dir.path().join("runner-cache")).expect("cache dir");
        let store = SnapshotStore::open_in(Ok(cache)).expect("snapshot store");
        Box::new(KvmBackend::with_snapshots(
            Some(store),
            Arc::new(SessionProbe),
        ))
    } else {
        select::from_env().expect("a backend")
    };
    round_trip(backend.as_ref(), backend.as_ref(), dir.path());
    if on_kvm() {
        let snapshots: Vec<PathBuf> = std::fs::read_dir(dir.path().join("runner-cache/snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .collect();
        assert_eq!(snapshots.len(), 1, "one snapshot for both: {snapshots:?}");
    }
}
