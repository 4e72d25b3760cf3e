//! `size` in an image spec is the job's room to write: the image's free
//! space, on a per-VM copy-on-write layer the host keeps outside the image
//! file, instead of a tmpfs overlay in guest RAM. The writes here are more
//! than the tmpfs of a 256M guest can hold (half its memory), so they only
//! fit on the disk; the same writes on the plain `minimal` image run out of
//! room. Then a second run on the same image finds none of them, and the
//! cached image file did not change.
//!
//! Runs on the backend `RUNNER_BACKEND` names (the nested tier runs it with
//! the kvm backend). The spec uses `base: minimal`, built in a second into
//! a private cache.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use e2e_tests::{both, job_log, runner_test, vm_dirs};

const IMAGE: &str = "image: { base: minimal, size: 1G }\nmemory: 256M\ndefaults: { files: none }\n";

/// 160 MiB to the root and 140 MiB to /tmp: each alone is more than the
/// 128 MiB a tmpfs gets in a 256M guest.
const WRITE_A_LOT: &str = concat!(
    "      - grep ' / ' /proc/mounts\n",
    "      - dd if=/dev/zero of=/var/big bs=1M count=160 && sync && echo root-wrote=$(($(stat -c %s /var/big) >> 20))M\n",
    "      - dd if=/dev/zero of=/tmp/big bs=1M count=140 && sync && echo tmp-wrote=$(($(stat -c %s /tmp/big) >> 20))M\n",
    "      - df -m / /tmp\n",
);

fn run(dir: &Path, yaml: &str) -> Output {
    runner_test(dir, yaml)
        .env("RUNNER_CACHE", dir.join("cache"))
        .args(["--jobs", "2"])
        .output()
        .unwrap()
}

/// The built images in the private cache.
fn cached_images(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![cache.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "ext4") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn an_image_size_is_room_for_writes_on_a_throwaway_disk() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{IMAGE}jobs:\n  on-disk:\n    steps:\n{WRITE_A_LOT}  in-ram:\n    image: minimal\n    steps:\n      - if dd if=/dev/zero of=/var/big bs=1M count=160; then exit 1; fi; echo no-room-in-ram\n"
    );
    let out = run(dir.path(), &yaml);
    // A failing step's output is on the console; the passing ones' in logs.
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let on_disk = job_log(dir.path(), "on-disk");
    let in_ram = job_log(dir.path(), "in-ram");
    let text = format!("--- on-disk:\n{on_disk}\n--- in-ram:\n{in_ram}");
    assert!(on_disk.contains("/dev/root / ext4 rw"), "{text}");
    assert!(on_disk.contains("root-wrote=160M"), "{text}");
    assert!(on_disk.contains("tmp-wrote=140M"), "{text}");
    assert!(in_ram.contains("No space left on device"), "{text}");
    assert!(in_ram.contains("no-room-in-ram"), "{text}");

    let images = cached_images(&dir.path().join("cache"));
    let [image] = images.as_slice() else {
        panic!("expected one built image in the cache, found {images:?}");
    };
    let before = std::fs::metadata(image).unwrap();

    // A fresh VM of the same image: none of the first run's writes.
    let yaml = format!(
        "{IMAGE}jobs:\n  fresh:\n    steps:\n      - test ! -e /var/big && test ! -e /tmp/big && echo clean-room\n"
    );
    let out = run(dir.path(), &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = format!("{}--- fresh:\n{}", both(&out), job_log(dir.path(), "fresh"));
    assert!(text.contains("clean-room"), "{text}");
    assert!(text.contains("): cached"), "{text}");

    // The writes never reached the image file, and their layer is gone.
    let after = std::fs::metadata(image).unwrap();
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert_eq!(before.mtime(), after.mtime());
    assert_eq!(before.blocks(), after.blocks(), "the image file grew");
    assert!(
        after.blocks() * 512 < 100 << 20,
        "the image file holds {} bytes",
        after.blocks() * 512
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
