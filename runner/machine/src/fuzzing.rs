//! The entry point of the `oci_layer` fuzz target (the `fuzzing` feature):
//! an image's layer file, compressed or not, through the same code an
//! image build runs. It lives here, not in `fuzz/`, so that this crate's
//! tests replay the kept inputs through exactly the code the fuzzer ran.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use safe_untar::Limits;

use crate::images::oci::apply_layers;

/// Small, so that running out is reached.
pub const FUZZ_LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_entries: 64,
};

/// Input: a control byte, then a layer file (gzip, zstd or a plain tar,
/// told apart by its magic as for a real image). With bit 0 of the control
/// byte set the layer is applied twice, as two layers of one image, so the
/// second overlays (and whites out) what the first made.
///
/// Whatever the layer holds, it must not panic, nor change anything
/// outside the image's tree, nor write more than the budget, nor create a
/// device node or a setuid, setgid or sticky bit; the owners it records are
/// within the build's ids, and (when it applied) name paths that exist.
/// A decompression bomb meets the budget. Returns whether it applied.
pub fn oci_layer(data: &[u8]) -> bool {
    let Some((&control, layer)) = data.split_first() else {
        return false;
    };
    let sandbox = tempfile::tempdir().expect("temp dir");
    let root = sandbox.path().join("root");
    let file = sandbox.path().join("layer");
    fs::create_dir(&root).expect("root dir");
    fs::write(&file, layer).expect("layer file");
    let layers = vec![file; if control & 1 != 0 { 2 } else { 1 }];
    let applied = apply_layers(&layers, &root, FUZZ_LIMITS);

    let mut names: Vec<_> = fs::read_dir(sandbox.path())
        .expect("read sandbox")
        .map(|e| e.expect("sandbox entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["layer", "root"]);
    assert_eq!(fs::read(&layers[0]).expect("layer file"), layer);
    let mut inodes = HashSet::new();
    let mut bytes = 0;
    check_tree(&root, &mut inodes, &mut bytes);
    assert!(bytes <= FUZZ_LIMITS.max_bytes, "{bytes} bytes on disk");
    let Ok(owners) = applied else {
        return false;
    };
    for (path, owner) in &owners {
        assert!(owner.uid < crate::images::oci::NAMESPACE_IDS, "{owner:?}");
        assert!(owner.gid < crate::images::oci::NAMESPACE_IDS, "{owner:?}");
        let on_disk = fs::symlink_metadata(root.join(path));
        assert!(
            on_disk.is_ok(),
            "{} has an owner and is gone",
            path.display()
        );
    }
    true
}

/// Walks `dir` without following symlinks, summing the files' sizes (each
/// inode once).
fn check_tree(dir: &Path, inodes: &mut HashSet<u64>, bytes: &mut u64) {
    for entry in fs::read_dir(dir).expect("read unpacked dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat unpacked entry");
        let kind = meta.file_type();
        let shown = path.display();
        if kind.is_symlink() {
            // Any target: never followed while unpacking, meant for a VM.
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode & 0o7000, 0, "{shown} has mode {mode:o}");
        if kind.is_dir() {
            check_tree(&path, inodes, bytes);
        } else if kind.is_file() {
            if inodes.insert(meta.ino()) {
                *bytes += meta.len();
            }
        } else {
            assert!(kind.is_fifo(), "{shown} is a {kind:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_devices::fuzzing::replay;

    #[test]
    fn replay_oci_layer_inputs() {
        replay("oci_layer", oci_layer);
    }
}
