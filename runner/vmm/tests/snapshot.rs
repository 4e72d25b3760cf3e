//! Snapshot and restore through the real `Vmm`, on a tiny guest that
//! prints a counting sequence on COM1 forever (`A`..`P`, then again). A
//! snapshot stops it mid-count; every clone restored from the file must
//! carry on from exactly the next letter: its registers (the counter),
//! memory (the code), the serial port and the interrupt controllers all
//! came back. Files that do not match are refused with the reason.
//!
//! They need /dev/kvm (real KVM: the nested tier runs them) and fail with
//! the reason when it is unusable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{elf_image, require_kvm};
use runner_vmm::{BootProtocol, ExitReason, SnapshotConfig, Vmm, VmmConfig};

const GUEST_BASE: u64 = 0x20_0000;

/// `bl` counts; each round prints 'A' + (bl & 15), then spins a while.
const COUNTING_GUEST: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x31, 0xdb, // xor ebx, ebx
    0x88, 0xd8, // 6: mov al, bl
    0x24, 0x0f, // and al, 0x0f
    0x04, 0x41, // add al, 'A'
    0xee, // out dx, al
    0xfe, 0xc3, // inc bl
    0xb9, 0x00, 0x00, 0x04, 0x00, // mov ecx, 0x40000
    0xe2, 0xfe, // 20: loop 20
    0xeb, 0xee, // jmp 6
];

/// How long a test waits for the guest to make progress: never reached
/// unless something is broken, so the machine's speed does not matter.
const PATIENCE: Duration = Duration::from_secs(300);
const IDENTITY: &str = "test-guest counting v1";

fn config(dir: &Path, log: &str) -> VmmConfig {
    let kernel = dir.join("guest.elf");
    if !kernel.exists() {
        std::fs::File::create(&kernel)
            .unwrap()
            .write_all(&elf_image(GUEST_BASE, COUNTING_GUEST))
            .unwrap();
    }
    let mut config = VmmConfig::new(&kernel, "console=ttyS0");
    config.memory.size_mib = 32;
    config.serial.log_path = Some(dir.join(log));
    config
}

fn snapshot_config(dir: &Path) -> SnapshotConfig {
    SnapshotConfig {
        path: dir.join("snap"),
        identity: IDENTITY.into(),
    }
}

fn log(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_default()
}

/// Runs `vmm` until its serial log has `bytes` bytes, then calls `end` on
/// its handle; returns how the run ended.
fn run_until(
    vmm: Vmm,
    log_path: PathBuf,
    bytes: usize,
    end: fn(&runner_vmm::VmmHandle),
) -> ExitReason {
    let handle = vmm.handle();
    let runner = std::thread::spawn(move || vmm.run());
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read(&log_path).unwrap_or_default().len() < bytes {
        assert!(
            Instant::now() < deadline && !runner.is_finished(),
            "the guest printed {:?} and no more",
            String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    end(&handle);
    runner.join().unwrap().unwrap().reason
}

fn next(letter: u8) -> u8 {
    b'A' + (letter - b'A' + 1) % 16
}

/// Every byte follows the one before it in the sequence.
fn assert_counts(bytes: &[u8]) {
    for pair in bytes.windows(2) {
        assert_eq!(
            pair[1],
            next(pair[0]),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn take_snapshot(dir: &Path) -> u8 {
    require_kvm();
    let mut config = config(dir, "original.log");
    config.snapshot = Some(snapshot_config(dir));
    let vmm = Vmm::new(config).unwrap();
    let reason = run_until(vmm, dir.join("original.log"), 40, |h| h.snapshot());
    assert_eq!(reason, ExitReason::Snapshotted);
    let printed = log(dir, "original.log");
    assert_counts(&printed);
    *printed.last().unwrap()
}

#[test]
fn clones_carry_on_counting_from_where_the_snapshot_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let last = take_snapshot(dir.path());
    // Memory is sparse in the file: 32 MiB of guest, little of it written.
    let snap = dir.path().join("snap");
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&snap).unwrap().blocks() * 512;
    assert!(on_disk < 8 << 20, "the snapshot takes {on_disk} bytes");

    // Two clones at once, from the one file.
    let clones: Vec<_> = ["clone-a.log", "clone-b.log"]
        .into_iter()
        .map(|name| {
            let vmm = Vmm::restore(config(dir.path(), name), &snapshot_config(dir.path())).unwrap();
            assert_eq!(vmm.boot_protocol(), BootProtocol::Snapshot);
            let path = dir.path().join(name);
            std::thread::spawn(move || run_until(vmm, path, 20, |h| h.stop()))
        })
        .collect();
    for clone in clones {
        assert_eq!(clone.join().unwrap(), ExitReason::Stopped);
    }
    for name in ["clone-a.log", "clone-b.log"] {
        let printed = log(dir.path(), name);
        assert_eq!(
            printed[0],
            next(last),
            "the snapshot stopped after {:?}; {name} began with {:?}",
            last as char,
            String::from_utf8_lossy(&printed)
        );
        assert_counts(&printed);
    }
}

fn refusal(dir: &Path, config: VmmConfig, snapshot: &SnapshotConfig) -> String {
    match Vmm::restore(config, snapshot) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} was restored", dir.display()),
    }
}

#[test]
fn a_snapshot_for_another_identity_or_vm_size_or_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    take_snapshot(dir.path());
    let snap = snapshot_config(dir.path());

    let other = SnapshotConfig {
        identity: "another kernel".into(),
        ..snap.clone()
    };
    let err = refusal(dir.path(), config(dir.path(), "x.log"), &other);
    assert!(err.contains("made for `test-guest counting v1`"), "{err}");

    let mut bigger = config(dir.path(), "x.log");
    bigger.memory.size_mib = 64;
    let err = refusal(dir.path(), bigger, &snap);
    assert!(err.contains("guest memory"), "{err}");

    let mut smp = config(dir.path(), "x.log");
    smp.vcpus.num = 2;
    let err = refusal(dir.path(), smp, &snap);
    assert!(err.contains("1 vCPUs"), "{err}");

    let full = std::fs::read(&snap.path).unwrap();
    std::fs::write(&snap.path, &full[..full.len() / 2]).unwrap();
    let err = refusal(dir.path(), config(dir.path(), "x.log"), &snap);
    assert!(err.contains("truncated"), "{err}");

    let mut bad = full.clone();
    bad[4096 + 10] ^= 0x55;
    std::fs::write(&snap.path, &bad).unwrap();
    let err = refusal(dir.path(), config(dir.path(), "x.log"), &snap);
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn a_vm_without_a_snapshot_path_ends_with_the_reason() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::new(config(dir.path(), "original.log")).unwrap();
    let reason = run_until(vmm, dir.path().join("original.log"), 4, |h| h.snapshot());
    match reason {
        ExitReason::SnapshotFailed(detail) => {
            assert!(detail.contains("without a snapshot path"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}
