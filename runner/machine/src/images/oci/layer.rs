//! Applying one untrusted layer: its tar stream (decompressed from gzip or
//! zstd as it is read), through `safe-untar` under [`Policy::OCI_LAYER`]
//! (what that allows is listed in its policy module), plus what only
//! layers have: the OCI whiteouts and the owners list.
//!
//! Nothing here runs as the host's root (`super::unpack` refuses to), and
//! nothing takes a layer's owners or device numbers at their word: device
//! nodes are refused (a VM's `/dev` is the kernel's devtmpfs), and owners
//! are only recorded ([`Owners`]), to be given inside the image build's
//! user namespace, where they map to ids that own nothing on the host.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use safe_untar::{Budget, Entry, OverBudget, Policy, Refusal, Refused, Tree, Unpacker, Visitor};

/// Errors are one line for the image build's report, as in `oci`.
type Result<T> = std::result::Result<T, String>;

/// Largest zstd window accepted, as a power of two: 128 MiB, zstd's own
/// default limit for decoding. A frame may ask for up to 2 GiB, which the
/// decoder would allocate before the first byte comes out.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// A layer's tar stream, decompressed when its magic says gzip or zstd.
/// Whatever it unpacks to is metered by the engine: a decompression bomb
/// meets the budget, not the disk.
pub(super) fn layer_reader(layer: &Path) -> Result<Box<dyn Read>> {
    let shown = |e: io::Error| format!("{}: {e}", layer.display());
    let mut file = BufReader::new(File::open(layer).map_err(shown)?);
    let magic = file.fill_buf().map_err(shown)?;
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(file).map_err(shown)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(shown)?;
            Box::new(decoder)
        }
        _ => Box::new(file),
    })
}

/// Owner and mode of one unpacked path, as its layer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
}

/// The owners to give the unpacked tree, by path below its root.
pub type Owners = HashMap<PathBuf, Owner>;

/// The ids a build's user namespace maps (see rootfs/build-spec.sh).
pub const NAMESPACE_IDS: u32 = 65536;

/// Applies the layer file `layer` to the tree of `unpacker`.
pub(super) fn apply_layer(
    layer: &Path,
    unpacker: &mut Unpacker,
    budget: &mut Budget,
    owners: &mut Owners,
) -> Result<()> {
    let mut visitor = LayerVisitor {
        owners,
        made: HashSet::new(),
    };
    let done = unpacker.unpack(layer_reader(layer)?, budget, &mut visitor);
    match done.error {
        None => Ok(()),
        Some(safe_untar::Error::OverBudget(over)) => Err(over_budget(&over)),
        Some(e) => Err(e.to_string()),
    }
}

/// The limits' messages, with what the image's author can change.
fn over_budget(over: &OverBudget) -> String {
    const BYTES: &str = "the layers unpack to more bytes than the image may hold (its `size`, or the operator's --max-image-size)";
    match over {
        OverBudget::Bytes { entry, .. } => format!("{entry}: {BYTES}"),
        OverBudget::Stream => BYTES.to_string(),
        OverBudget::Entries { entry, max } => {
            format!("{entry}: the layers hold more entries than an image may ({max})")
        }
    }
}

/// What a layer adds to the engine: whiteouts, and the owners list.
struct LayerVisitor<'a> {
    owners: &'a mut Owners,
    /// Paths this layer made: an opaque marker hides only the lower layers.
    made: HashSet<PathBuf>,
}

impl Visitor for LayerVisitor<'_> {
    /// `.wh.NAME` deletes NAME from the layers below; `.wh..wh..opq`
    /// empties its directory of what the layers below put there.
    fn intercept(
        &mut self,
        tree: &mut Tree,
        entry: &Entry<'_>,
    ) -> std::result::Result<bool, safe_untar::Error> {
        let Some(name) = entry.path.file_name().map(OsStr::as_bytes) else {
            return Ok(false);
        };
        let parent = entry.path.parent().unwrap_or(Path::new(""));
        if name == b".wh..wh..opq" {
            for child in tree.children(parent)? {
                let below = parent.join(child);
                if !self.made.contains(&below) {
                    tree.remove(&below)?;
                }
            }
            return Ok(true);
        }
        let Some(hidden) = name.strip_prefix(b".wh.") else {
            return Ok(false);
        };
        // `.wh.`, `.wh..` and `.wh...` would name the directory or its
        // parent, not a file in it.
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(safe_untar::Error::Refused(Refused {
                entry: entry.name.to_string(),
                why: Refusal::Caller("a whiteout that names no file".into()),
            }));
        }
        tree.remove(&parent.join(OsStr::from_bytes(hidden)))?;
        Ok(true)
    }

    fn placed(&mut self, entry: &Entry<'_>) -> std::result::Result<(), String> {
        let header = entry.header;
        let id = |raw: io::Result<u64>, what: &str| -> std::result::Result<u32, String> {
            let id = raw.map_err(|e| e.to_string())?;
            u32::try_from(id)
                .ok()
                .filter(|id| *id < NAMESPACE_IDS)
                .ok_or_else(|| {
                    format!("{what} {id} is beyond the {NAMESPACE_IDS} ids an image build maps")
                })
        };
        let owner = Owner {
            uid: id(header.uid(), "owner")?,
            gid: id(header.gid(), "group")?,
            mode: header.mode().map_err(|e| e.to_string())? & 0o7777,
        };
        // A hard link shares its file's inode, and so its owner.
        if header.entry_type() != tar::EntryType::Link {
            self.owners.insert(entry.path.to_path_buf(), owner);
        }
        self.made.insert(entry.path.to_path_buf());
        Ok(())
    }

    /// Forgets the owners of `path` and of everything below it.
    fn removed(&mut self, path: &Path) {
        self.owners.retain(|owned, _| !owned.starts_with(path));
    }
}

/// The engine for an image's tree at `root`, which exists.
pub(super) fn unpacker(root: &Path) -> Result<Unpacker> {
    Unpacker::new(root, Policy::OCI_LAYER).map_err(|e| e.to_string())
}
