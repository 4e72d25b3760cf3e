//! `image: { oci: PATH }`: an OCI image layout directory (as written by
//! umoci or `skopeo copy … oci:DIR`) or a `docker save` tarball, unpacked
//! without root into a directory that `rootfs/build-spec.sh` turns into ext4.
//!
//! Layers are applied in order with the OCI whiteout rules: `.wh.NAME`
//! deletes NAME from the layers below, `.wh..wh..opq` empties its directory
//! of everything the layers below put there. Layers are untrusted: a path
//! that leaves the root (`..`, or through a symlink a lower layer made), a
//! hard link to outside, and device nodes are refused; bytes and entries
//! have a budget. The unpacking runs as the image build's unprivileged user
//! (`runner __unpack-oci`, never as the host's root), and the owners the
//! layers name are written to a list that rootfs/build-spec.sh applies in
//! the build's user namespace.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use safe_untar::{relative_parts, AbsoluteNames, Budget, Entry, Limits, Tree, Visitor};
use serde_json::Value;

use crate::digest::{sha256_bytes, sha256_file};

/// In the cache key: bump when unpacking changes what an image contains.
pub const UNPACKER_VERSION: &str = "oci-unpack v2";

type Result<T> = std::result::Result<T, String>;

/// What identifies the image's contents: the manifest's digest for a layout
/// (blobs are content-addressed and checked while unpacking), the whole
/// file's sha256 for a tarball.
pub fn digest(path: &Path) -> Result<String> {
    if path.is_dir() {
        let manifest = layout_manifest(path)?;
        return Ok(format!("manifest {}", sha256_bytes(&manifest)));
    }
    if path.is_file() {
        return sha256_file(path)
            .map(|sum| format!("tarball {sum}"))
            .map_err(|e| e.to_string());
    }
    Err("not found (expected an OCI image layout directory or a `docker save` tarball)".into())
}

/// Most entries (files, directories, links) an image's layers may hold.
pub const MAX_ENTRIES: u64 = 2_000_000;

/// Unpacks the image's layers into `dest` (created); the bytes of file
/// contents written, over all layers, may not pass `limit`. Returns the
/// owners the layers gave each path. Refuses to run as the host's root.
pub fn unpack(path: &Path, dest: &Path, limit: u64) -> Result<Owners> {
    if nix::unistd::geteuid().is_root() && in_initial_user_namespace() {
        return Err("OCI layers are never unpacked as the host's root".into());
    }
    unpack_layers(path, dest, limit)
}

fn unpack_layers(path: &Path, dest: &Path, limit: u64) -> Result<Owners> {
    fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let layers = if path.is_dir() {
        layout_layers(path)?
    } else {
        let extracted = dest.with_extension("tarball");
        extract_tarball(path, &extracted)?;
        let layers = if extracted.join("index.json").is_file() {
            layout_layers(&extracted)?
        } else {
            docker_layers(&extracted)?
        };
        // Layers are read from `extracted`, so it stays until unpacking ends;
        // the caller's temp dir removes it.
        layers
    };
    apply_layers(
        &layers,
        dest,
        Limits {
            max_bytes: limit,
            max_entries: MAX_ENTRIES,
        },
    )
}

/// Applies the layer files `layers`, lowest first, to the existing tree
/// `dest`, within `limits` over all of them. Returns the owners they gave.
pub(crate) fn apply_layers(layers: &[PathBuf], dest: &Path, limits: Limits) -> Result<Owners> {
    let mut unpacker = layer::unpacker(dest)?;
    let mut budget = Budget::new(limits);
    let mut owners = Owners::new();
    for (index, layer) in layers.iter().enumerate() {
        apply_layer(layer, &mut unpacker, &mut budget, &mut owners)
            .map_err(|e| format!("layer {}: {e}", index + 1))?;
    }
    // Directory modes and mtimes last, deepest first: adding children
    // moved them.
    unpacker.finish().map_err(|e| e.to_string())?;
    Ok(owners)
}

/// Exit code of `runner __unpack-oci` when the image is at fault.
pub const REFUSED: i32 = 65;

/// `runner __unpack-oci SOURCE DEST OWNERS LIMIT`: [`unpack`], then
/// [`write_owners`]; one line on stderr and [`REFUSED`] if the image is
/// refused.
pub fn unpack_main(source: &Path, dest: &Path, owners: &Path, limit: u64) -> i32 {
    match unpack(source, dest, limit).and_then(|found| write_owners(&found, owners)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            REFUSED
        }
    }
}

/// Whether this process is in the host's user namespace (not in a build's).
fn in_initial_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .map(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(true)
}

/// Writes `owners` for rootfs/build-spec.sh: one NUL-terminated record
/// `UID:GID:MODE(octal):PATH` per path (paths may hold any byte but NUL).
pub fn write_owners(owners: &Owners, file: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut sorted: Vec<_> = owners.iter().collect();
    sorted.sort_by_key(|(path, _)| *path);
    let mut out = Vec::new();
    for (path, owner) in sorted {
        out.extend_from_slice(format!("{}:{}:{:o}:", owner.uid, owner.gid, owner.mode).as_bytes());
        out.extend_from_slice(path.as_os_str().as_bytes());
        out.push(0);
    }
    fs::write(file, out).map_err(|e| format!("writing {}: {e}", file.display()))
}

/// The image manifest's bytes, found through index.json (a nested index is
/// followed; with several manifests, the linux/amd64 one).
fn layout_manifest(layout: &Path) -> Result<Vec<u8>> {
    let index = fs::read(layout.join("index.json"))
        .map_err(|e| format!("{}: {e}", layout.join("index.json").display()))?;
    let mut document: Value =
        serde_json::from_slice(&index).map_err(|e| format!("index.json: {e}"))?;
    for _ in 0..4 {
        let Some(manifests) = document.get("manifests").and_then(Value::as_array) else {
            return serde_json::to_vec(&document).map_err(|e| e.to_string());
        };
        let chosen = match manifests.as_slice() {
            [] => return Err("index.json lists no manifests".into()),
            [only] => only,
            many => many
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .ok_or("index.json lists several manifests and none for linux/amd64")?,
        };
        let digest = chosen["digest"]
            .as_str()
            .ok_or("a manifest without a digest")?;
        let bytes = read_blob(layout, digest)?;
        document = serde_json::from_slice(&bytes).map_err(|e| format!("manifest {digest}: {e}"))?;
        if document.get("layers").is_some() {
            return Ok(bytes);
        }
    }
    Err("image indexes nested too deep".into())
}

fn layout_layers(layout: &Path) -> Result<Vec<PathBuf>> {
    let manifest: Value =
        serde_json::from_slice(&layout_manifest(layout)?).map_err(|e| format!("manifest: {e}"))?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or("manifest has no layers")?;
    layers
        .iter()
        .map(|layer| {
            let digest = layer["digest"].as_str().ok_or("a layer without a digest")?;
            let path = blob_path(layout, digest)?;
            let sum = sha256_file(&path).map_err(|e| format!("blob {digest}: {e}"))?;
            if format!("sha256:{sum}") != digest {
                return Err(format!("blob {digest} does not match its digest"));
            }
            Ok(path)
        })
        .collect()
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            format!("unsupported digest `{digest}` (expected sha256:<64 hex digits>)")
        })?;
    Ok(layout.join("blobs/sha256").join(hex))
}

fn read_blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let bytes = fs::read(blob_path(layout, digest)?).map_err(|e| format!("blob {digest}: {e}"))?;
    if format!("sha256:{}", sha256_bytes(&bytes)) != digest {
        return Err(format!("blob {digest} does not match its digest"));
    }
    Ok(bytes)
}

/// `docker save`'s own format: manifest.json names the layer tarballs.
fn docker_layers(dir: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read(dir.join("manifest.json")).map_err(|_| {
        "neither index.json nor manifest.json in the tarball: not an OCI or docker image"
            .to_string()
    })?;
    let manifest: Value =
        serde_json::from_slice(&text).map_err(|e| format!("manifest.json: {e}"))?;
    let images = manifest.as_array().ok_or("manifest.json is not a list")?;
    let [image] = images.as_slice() else {
        return Err(format!(
            "the tarball holds {} images; save exactly one",
            images.len()
        ));
    };
    let layers = image["Layers"]
        .as_array()
        .ok_or("manifest.json has no Layers")?;
    layers
        .iter()
        .map(|layer| {
            let name = layer.as_str().ok_or("a layer that is not a path")?;
            safe_relative(Path::new(name))
                .map(|rel| dir.join(rel))
                .ok_or_else(|| format!("layer path `{name}` leaves the tarball"))
        })
        .collect()
}

/// Extracts the regular files of the outer tarball, through the same
/// engine as the layers: its content is bounded by the tarball's size.
fn extract_tarball(tarball: &Path, dest: &Path) -> Result<()> {
    /// Keeps regular files only: the layers, manifests and configs.
    struct RegularFiles;
    impl Visitor for RegularFiles {
        fn intercept(
            &mut self,
            _tree: &mut Tree,
            entry: &Entry<'_>,
        ) -> std::result::Result<bool, safe_untar::Error> {
            Ok(entry.header.entry_type() != tar::EntryType::Regular)
        }
    }
    let file = File::open(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut unpacker = layer::unpacker(dest)?;
    let mut budget = Budget::new(Limits {
        max_bytes: size,
        max_entries: MAX_ENTRIES,
    });
    let done = unpacker.unpack(BufReader::new(file), &mut budget, &mut RegularFiles);
    match done.error {
        Some(e) => Err(e.to_string()),
        None => unpacker.finish().map_err(|e| e.to_string()),
    }
}

/// `path` without `/` and `./`, of normal components; None if it has `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    relative_parts(path, AbsoluteNames::FromRoot)
        .ok()
        .map(|parts| parts.iter().collect())
}

mod layer;
use layer::apply_layer;
pub use layer::{Owner, Owners, NAMESPACE_IDS};

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies one layer to `root`, as `unpack_layers` does.
    fn apply(layer: &Path, root: &Path, budget: &mut Budget, owners: &mut Owners) -> Result<()> {
        let mut unpacker = layer::unpacker(root)?;
        apply_layer(layer, &mut unpacker, budget, owners)?;
        unpacker.finish().map_err(|e| e.to_string())
    }

    fn layer(dir: &Path, name: &str, entries: &[(&str, tar::EntryType, &str)]) -> PathBuf {
        let path = dir.join(name);
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        for (entry_path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_mtime(1_700_000_000);
            header.set_uid(0);
            header.set_gid(0);
            if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
                header.set_size(0);
                builder.append_link(&mut header, entry_path, data).unwrap();
            } else {
                header.set_size(data.len() as u64);
                // Raw name bytes: `append_data` would refuse `..` itself.
                header.as_gnu_mut().unwrap().name[..entry_path.len()]
                    .copy_from_slice(entry_path.as_bytes());
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
        builder.finish().unwrap();
        path
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let dir = tar::EntryType::Directory;
        let file = tar::EntryType::Regular;
        let lower = layer(
            tmp.path(),
            "1.tar",
            &[
                ("etc/", dir, ""),
                ("etc/keep", file, "k"),
                ("etc/gone", file, "g"),
                ("opt/", dir, ""),
                ("opt/old", file, "o"),
            ],
        );
        let upper = layer(
            tmp.path(),
            "2.tar",
            &[
                ("etc/.wh.gone", file, ""),
                ("opt/", dir, ""),
                ("opt/.wh..wh..opq", file, ""),
                ("opt/new", file, "n"),
            ],
        );
        let mut owners = Owners::new();
        apply(&lower, &root, &mut roomy(), &mut owners).unwrap();
        apply(&upper, &root, &mut roomy(), &mut owners).unwrap();
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("opt/old").exists());
        assert_eq!(fs::read_to_string(root.join("opt/new")).unwrap(), "n");
        // What went away has no owner to give.
        let mut listed: Vec<_> = owners.keys().map(|p| p.display().to_string()).collect();
        listed.sort();
        assert_eq!(listed, ["etc", "etc/keep", "opt", "opt/new"]);
    }

    fn roomy() -> Budget {
        Budget::new(Limits {
            max_bytes: 1 << 30,
            max_entries: 1000,
        })
    }

    #[test]
    fn owners_and_setid_modes_are_recorded_for_the_namespace_not_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let path = tmp.path().join("o.tar");
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        for (name, uid, mode) in [
            ("sudo", 0, 0o4755),
            ("home", 1000, 0o700),
            ("far", 70000, 0o644),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_uid(uid);
            header.set_gid(uid);
            header.set_size(1);
            header.set_cksum();
            builder.append_data(&mut header, name, &b"x"[..]).unwrap();
            if name == "home" {
                builder.finish().unwrap();
                break;
            }
        }
        drop(builder);
        let mut owners = Owners::new();
        apply(&path, &root, &mut roomy(), &mut owners).unwrap();
        let owner = |p: &str| owners[Path::new(p)];
        assert_eq!(
            owner("sudo"),
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o4755
            }
        );
        assert_eq!(
            owner("home"),
            Owner {
                uid: 1000,
                gid: 1000,
                mode: 0o700
            }
        );
        // On disk: ours, no setuid bit; the namespace gives the rest.
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(root.join("sudo")).unwrap();
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(meta.mode() & 0o7777, 0o755);
        let list = tmp.path().join("owners");
        write_owners(&owners, &list).unwrap();
        assert_eq!(
            fs::read(&list).unwrap(),
            b"1000:1000:700:home\x000:0:4755:sudo\x00"
        );

        // An owner beyond the namespace's ids.
        let far = tmp.path().join("far.tar");
        let mut builder = tar::Builder::new(File::create(&far).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(70000);
        header.set_size(0);
        header.set_cksum();
        builder.append_data(&mut header, "far", &b""[..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        let err = apply(&far, &root, &mut roomy(), &mut owners).unwrap_err();
        assert!(err.contains("owner 70000 is beyond the 65536 ids"), "{err}");
    }

    #[test]
    fn docker_save_tarballs_unpack_in_layer_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tar::EntryType::Directory;
        let file = tar::EntryType::Regular;
        let lower = layer(
            tmp.path(),
            "lower.tar",
            &[
                ("etc/", dir, ""),
                ("etc/a", file, "lower"),
                ("etc/b", file, "b"),
            ],
        );
        let upper = layer(
            tmp.path(),
            "upper.tar",
            &[("etc/a", file, "upper"), ("etc/.wh.b", file, "")],
        );
        let saved = tmp.path().join("saved.tar");
        let mut outer = tar::Builder::new(File::create(&saved).unwrap());
        let manifest = r#"[{"Config":"c.json","RepoTags":["t:1"],"Layers":["111/layer.tar","222/layer.tar"]}]"#;
        for (name, path) in [("111/layer.tar", &lower), ("222/layer.tar", &upper)] {
            outer.append_path_with_name(path, name).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        outer
            .append_data(&mut header, "manifest.json", manifest.as_bytes())
            .unwrap();
        outer.finish().unwrap();
        drop(outer);

        let root = tmp.path().join("root");
        unpack_layers(&saved, &root, 1 << 20).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/a")).unwrap(), "upper");
        assert!(!root.join("etc/b").exists());
        assert!(digest(&saved).unwrap().starts_with("tarball "));
    }

    #[test]
    fn hostile_layers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let file = tar::EntryType::Regular;
        let mut budget = roomy();
        let mut owners = Owners::new();
        let escape = layer(tmp.path(), "e.tar", &[("../outside", file, "x")]);
        let err = apply(&escape, &root, &mut budget, &mut owners).unwrap_err();
        assert_eq!(err, "../outside: the name contains `..`");
        assert!(!tmp.path().join("outside").exists());

        let through = layer(
            tmp.path(),
            "s.tar",
            &[
                ("evil", tar::EntryType::Symlink, "/tmp"),
                ("evil/x", file, "x"),
            ],
        );
        let err = apply(&through, &root, &mut budget, &mut owners).unwrap_err();
        assert_eq!(
            err,
            "evil/x: evil is a symlink, and nothing is written through one"
        );

        let hard = layer(
            tmp.path(),
            "h.tar",
            &[("passwd", tar::EntryType::Link, "../../etc/passwd")],
        );
        let err = apply(&hard, &root, &mut budget, &mut owners).unwrap_err();
        assert_eq!(err, "passwd: hard link target: the name contains `..`");

        let big = "x".repeat(4096);
        let bomb = layer(
            tmp.path(),
            "b.tar",
            &[("a", file, big.as_str()), ("b", file, big.as_str())],
        );
        let mut small = Budget::new(Limits {
            max_bytes: 6000,
            max_entries: 1000,
        });
        let err = apply(&bomb, &root, &mut small, &mut owners).unwrap_err();
        assert!(err.contains("more bytes than the image may hold"), "{err}");

        // Many empty files: the entry budget.
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let many: Vec<(&str, tar::EntryType, &str)> =
            names.iter().map(|n| (n.as_str(), file, "")).collect();
        let swarm = layer(tmp.path(), "m.tar", &many);
        let mut few = Budget::new(Limits {
            max_bytes: 1 << 20,
            max_entries: 10,
        });
        let err = apply(&swarm, &root, &mut few, &mut owners).unwrap_err();
        assert!(err.contains("more entries than an image may"), "{err}");

        // A block device: the host's disk, if it were ever created.
        for kind in [tar::EntryType::Block, tar::EntryType::Char] {
            let node = tmp.path().join("dev.tar");
            let mut builder = tar::Builder::new(File::create(&node).unwrap());
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(0o660);
            header.set_device_major(8).unwrap();
            header.set_device_minor(0).unwrap();
            header.set_size(0);
            header.set_cksum();
            builder.append_data(&mut header, "sda", &b""[..]).unwrap();
            builder.finish().unwrap();
            drop(builder);
            let err = apply(&node, &root, &mut roomy(), &mut owners).unwrap_err();
            assert!(err.contains("sda: device node refused"), "{err}");
            assert!(!root.join("sda").exists());
        }
    }

    /// `tar` compressed as `how` ("gzip" or "zstd"), in `dir/name`.
    fn compressed(dir: &Path, name: &str, tar: &[u8], how: &str) -> PathBuf {
        use std::io::Write;
        let bytes = match how {
            "gzip" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).unwrap();
                gz.finish().unwrap()
            }
            _ => zstd::stream::encode_all(tar, 3).unwrap(),
        };
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn gzip_and_zstd_layers_are_decompressed_as_they_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = layer(
            tmp.path(),
            "plain.tar",
            &[
                ("etc/", tar::EntryType::Directory, ""),
                ("etc/os", tar::EntryType::Regular, "linux"),
            ],
        );
        let tar = fs::read(&plain).unwrap();
        for how in ["gzip", "zstd"] {
            let root = tmp.path().join(how);
            fs::create_dir(&root).unwrap();
            let layer = compressed(tmp.path(), &format!("layer.{how}"), &tar, how);
            apply(&layer, &root, &mut roomy(), &mut Owners::new()).unwrap();
            assert_eq!(
                fs::read_to_string(root.join("etc/os")).unwrap(),
                "linux",
                "{how}"
            );
        }
    }

    /// 32 MiB of file content in a small layer, and 32 MiB of zeros after
    /// the end of an archive: each stops at a 1 MiB budget, with nothing
    /// big written.
    #[test]
    fn a_decompression_bomb_meets_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let big = 32u64 << 20;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(big);
        header.set_mode(0o644);
        header.set_cksum();
        let mut bomb = header.as_bytes().to_vec();
        bomb.resize(512 + big as usize + 1024, 0);
        let small = layer(
            tmp.path(),
            "small.tar",
            &[("a", tar::EntryType::Regular, "x")],
        );
        let mut trailing = fs::read(&small).unwrap();
        trailing.resize(big as usize, 0);
        for (name, tar) in [("bomb", &bomb), ("trailing", &trailing)] {
            for how in ["gzip", "zstd"] {
                let root = tmp.path().join(format!("{name}-{how}"));
                fs::create_dir(&root).unwrap();
                let layer = compressed(tmp.path(), &format!("{name}.{how}"), tar, how);
                assert!(fs::metadata(&layer).unwrap().len() < big / 100);
                let mut budget = Budget::new(Limits {
                    max_bytes: 1 << 20,
                    max_entries: 100,
                });
                let err = apply(&layer, &root, &mut budget, &mut Owners::new()).unwrap_err();
                assert!(
                    err.contains("more bytes than the image may hold"),
                    "{name} {how}: {err}"
                );
                let (bytes, _) = budget.used();
                assert!(bytes <= 1 << 20, "{name} {how}: {bytes}");
            }
        }
    }

    #[test]
    fn a_whiteout_names_a_file_in_its_directory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(tmp.path().join("sibling"), "kept").unwrap();
        let file = tar::EntryType::Regular;
        for name in [".wh.", ".wh..", ".wh...", "sub/.wh..."] {
            let wh = layer(
                tmp.path(),
                "wh.tar",
                &[("sub/kept", file, "k"), (name, file, "")],
            );
            let err = apply(&wh, &root, &mut roomy(), &mut Owners::new()).unwrap_err();
            assert!(
                err.ends_with("a whiteout that names no file"),
                "{name}: {err}"
            );
            assert!(root.join("sub/kept").exists(), "{name}");
            assert!(tmp.path().join("sibling").exists(), "{name}");
        }
    }

    #[test]
    fn the_host_s_root_never_unpacks() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test checks a refusal only root meets: run it as root (CI does)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack(tmp.path(), &tmp.path().join("root"), 1 << 20).unwrap_err();
        assert_eq!(err, "OCI layers are never unpacked as the host's root");
    }
}
