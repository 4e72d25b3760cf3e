//! The entry point of the `safe_untar` fuzz target (the `fuzzing`
//! feature): arbitrary bytes as a tar stream under each policy. It lives
//! here, not in `fuzz/`, so that this crate's tests replay the kept inputs
//! through exactly the code the fuzzer ran.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path};

use crate::{Budget, HardLinks, Limits, NoVisitor, Policy, Symlinks, Unpacker};

/// Small, so that running out is reached.
pub const FUZZ_LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_entries: 64,
};

/// Picked by bits 0-1 of the control byte.
pub const POLICIES: [Policy; 4] = [
    Policy::ARTIFACTS,
    Policy::OCI_LAYER,
    Policy::WORKSPACE,
    Policy::ARTIFACTS,
];

/// The file next to the destination that no stream may reach.
const KEEP: &str = "keep";

/// Input: a control byte, then a tar stream. Bits 0-1 of the control byte
/// pick the policy ([`POLICIES`]); with bit 2 set the stream is unpacked
/// twice into the same directory with one budget, so the second pass meets
/// what the first left (as an image's layers and a job's transfers do).
///
/// Whatever the stream holds, it must not panic, nor change anything
/// outside the destination, nor write more than the budget, nor create a
/// device node; and what each policy promises must hold on disk (see
/// [`check_tree`]). Returns whether anything was unpacked.
pub fn safe_untar(data: &[u8]) -> bool {
    let Some((&control, stream)) = data.split_first() else {
        return false;
    };
    let policy = POLICIES[usize::from(control & 3)];
    let passes = if control & 4 != 0 { 2 } else { 1 };
    let sandbox = tempfile::tempdir().expect("temp dir");
    let dest = sandbox.path().join("dest");
    let outside = sandbox.path().join("outside");
    fs::create_dir(&dest).expect("dest dir");
    fs::create_dir(&outside).expect("outside dir");
    fs::write(outside.join(KEEP), KEEP).expect("outside file");

    let mut budget = Budget::new(FUZZ_LIMITS);
    let mut unpacker = Unpacker::new(&dest, policy).expect("unpacker");
    let mut entries = 0;
    for _ in 0..passes {
        let done = unpacker.unpack(stream, &mut budget, &mut NoVisitor);
        entries += done.entries;
        if done.error.is_some() {
            break;
        }
    }
    // Called whatever happened: it removes symlinks that resolve outside.
    let _ = unpacker.finish();

    let (bytes, charged) = budget.used();
    assert!(bytes <= FUZZ_LIMITS.max_bytes && charged <= FUZZ_LIMITS.max_entries);
    let names = |dir: &Path| -> Vec<_> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(sandbox.path()), ["dest", "outside"]);
    assert_eq!(names(&outside), [KEEP]);
    assert_eq!(
        fs::read(outside.join(KEEP)).expect("outside file"),
        KEEP.as_bytes()
    );

    let root = dest.canonicalize().expect("canonical dest");
    let mut inodes = HashSet::new();
    let mut on_disk = 0;
    check_tree(&policy, &root, &root, &mut inodes, &mut on_disk);
    assert!(on_disk <= FUZZ_LIMITS.max_bytes, "{on_disk} bytes on disk");
    entries > 0
}

/// Walks `dir` (inside `root`) without following symlinks, summing the
/// files' sizes (each inode once) and asserting what `policy` promises.
fn check_tree(
    policy: &Policy,
    root: &Path,
    dir: &Path,
    inodes: &mut HashSet<u64>,
    bytes: &mut u64,
) {
    // The workspace policy keeps modes as sent: a directory may deny us.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod dir");
    for entry in fs::read_dir(dir).expect("read unpacked dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat unpacked entry");
        let kind = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        let shown = path.display();
        if kind.is_symlink() {
            check_symlink(policy, root, &path);
            continue;
        }
        // Beyond the mask, only the owner access the policy adds.
        let added = if policy.owner_access { 0o700 } else { 0 };
        assert_eq!(
            mode & !(policy.mode_mask | added),
            0,
            "{shown} has mode {mode:o}"
        );
        if kind.is_dir() {
            check_tree(policy, root, &path, inodes, bytes);
        } else if kind.is_file() {
            if inodes.insert(meta.ino()) {
                *bytes += meta.len();
            }
            if policy.hard_links == HardLinks::Copy {
                assert_eq!(meta.nlink(), 1, "{shown} is hard-linked");
            }
        } else {
            // No device node, socket or (unless allowed) fifo.
            assert!(policy.fifos && kind.is_fifo(), "{shown} is a {kind:?}");
        }
    }
}

fn check_symlink(policy: &Policy, root: &Path, link: &Path) {
    let target = fs::read_link(link).expect("read link");
    let shown = || format!("{} -> {}", link.display(), target.display());
    match policy.symlinks {
        Symlinks::Downward => assert!(
            target
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                && target
                    .components()
                    .any(|c| matches!(c, Component::Normal(_))),
            "{}",
            shown()
        ),
        Symlinks::InsideRoot => {
            if let Ok(real) = link.canonicalize() {
                assert!(
                    real.starts_with(root),
                    "{} resolves to {}",
                    shown(),
                    real.display()
                );
            }
        }
        // Meant for inside a VM, and never followed here.
        Symlinks::Anywhere => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the seeds and the kept regressions of the `safe_untar`
    /// target (see fuzz/README.md). This crate ships in the guest, so it
    /// replays on its own rather than through the host crates' helper.
    #[test]
    fn replay_safe_untar_inputs() {
        let fuzz = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"));
        let mut replayed = 0;
        for dir in ["regressions", "seeds"] {
            let Ok(inputs) = fs::read_dir(fuzz.join(dir).join("safe_untar")) else {
                continue;
            };
            for input in inputs {
                let path = input.unwrap().path();
                let accepted = safe_untar(&fs::read(&path).unwrap());
                assert!(
                    accepted || dir != "seeds",
                    "seed {} rejected",
                    path.display()
                );
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no fuzz inputs for safe_untar");
    }
}
