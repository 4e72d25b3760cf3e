//! The snapshot file: one file holding a fixed header, the machine state
//! and guest memory, laid out so that memory can be mapped straight from it.
//!
//! ```text
//! offset 0      header, HEADER_SIZE bytes, little endian:
//!                 0  magic "RUNRSNAP"
//!                 8  format version (u32), FORMAT_VERSION
//!                12  reserved, 0
//!                16  state length in bytes (u64)
//!                24  CRC-32 of the state bytes (u32)
//!                28  reserved, 0
//!                32  memory offset in the file (u64, page aligned)
//!                40  memory length in bytes (u64) = guest RAM size
//!                48  identity length (u16), then the identity bytes
//!              4092  CRC-32 of bytes 0..4092 (u32)
//! HEADER_SIZE   the state: `SnapshotState` in the snapshot codec
//!               (`runner_devices::snapshot::codec`)
//! memory offset guest RAM, in memfd order (the regions of
//!               `layout::ram_ranges`, back to back); all-zero pages are
//!               holes, so the file is sparse
//! ```
//!
//! The *identity* is a string the caller chooses (the runner hashes the
//! kernel, rootfs, agent, vCPUs, memory and the host CPU/KVM into it): a
//! snapshot is only loaded by a caller that expects exactly that identity.
//! Memory is not checksummed, so that a restore does not read the whole
//! file; a truncated file is caught by its length. The header is written
//! last. Callers create the file under a temporary name and rename it into
//! place once it is whole.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

pub const MAGIC: &[u8; 8] = b"RUNRSNAP";
/// Bumped on any change to the header or to `SnapshotState`, or to the
/// devices a snapshotted VM has. Version 1 held the state as JSON with
/// hex-encoded device states; version 2 holds it in the snapshot codec;
/// version 3 has empty cache slots after the other devices. A file of
/// another version is refused (the runner then builds a new snapshot).
pub const FORMAT_VERSION: u32 = 3;
pub const HEADER_SIZE: u64 = 4096;
/// Memory starts on a page boundary so it can be mmapped.
const PAGE: u64 = 4096;
/// Longest identity string.
pub const MAX_IDENTITY: usize = 1024;
/// Largest state section we agree to read (a few vCPUs' state is ~100 KiB).
const MAX_STATE: u64 = 64 << 20;

/// What the header says, once checked.
#[derive(Debug)]
pub struct Header {
    pub state_len: u64,
    pub state_crc: u32,
    pub memory_offset: u64,
    pub memory_len: u64,
    pub identity: String,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.state_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.state_crc.to_le_bytes());
        h[32..40].copy_from_slice(&self.memory_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.memory_len.to_le_bytes());
        let id = self.identity.as_bytes();
        h[48..50].copy_from_slice(&(id.len() as u16).to_le_bytes());
        h[50..50 + id.len()].copy_from_slice(id);
        let crc = crc32fast::hash(&h[..4092]);
        h[4092..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> Result<Header, String> {
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        if &h[0..8] != MAGIC {
            return Err("not a runner snapshot (bad magic)".into());
        }
        // Before the checksum: a file of another version is told apart
        // from a damaged one, whatever that version's header holds.
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, but this runner reads only version \
                 {FORMAT_VERSION}: another runner version wrote it"
            ));
        }
        if crc32fast::hash(&h[..4092]) != u32_at(4092) {
            return Err("header checksum mismatch (corrupt file)".into());
        }
        let id_len = usize::from(u16::from_le_bytes([h[48], h[49]]));
        if id_len > MAX_IDENTITY {
            return Err(format!("identity of {id_len} bytes is too long"));
        }
        let identity = String::from_utf8(h[50..50 + id_len].to_vec())
            .map_err(|_| "identity is not UTF-8".to_string())?;
        Ok(Header {
            state_len: u64_at(16),
            state_crc: u32_at(24),
            memory_offset: u64_at(32),
            memory_len: u64_at(40),
            identity,
        })
    }
}

fn page_align(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Opens the file a snapshot will be written into, when the VM is built:
/// the VM's threads may run under a seccomp filter that lets them write an
/// open file but not create or rename one. It is created, or it is the
/// empty file the caller made for a VM that may not create files there (a
/// jailed one); never one with anything in it. The caller renames the file
/// into place once [`write`] succeeded, and removes it otherwise.
pub fn create(path: &Path) -> Result<File, Error> {
    let fail =
        |e: &dyn std::fmt::Display| Error::Snapshot(format!("creating {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| fail(&e))?;
    let meta = file.metadata().map_err(|e| fail(&e))?;
    if !meta.is_file() || meta.len() != 0 {
        return Err(fail(&"it exists and is not an empty file"));
    }
    Ok(file)
}

/// Writes a whole snapshot into `file` (from [`create`], still empty):
/// header, `state`, then guest memory from `write_memory`, which gets the
/// file and the offset to write at and may leave holes.
pub fn write(
    file: &File,
    identity: &str,
    state: &[u8],
    memory_len: u64,
    write_memory: impl FnOnce(&File, u64) -> io::Result<()>,
) -> Result<(), Error> {
    if identity.len() > MAX_IDENTITY {
        return Err(Error::Snapshot(format!(
            "identity of {} bytes is longer than {MAX_IDENTITY}",
            identity.len()
        )));
    }
    let header = Header {
        state_len: state.len() as u64,
        state_crc: crc32fast::hash(state),
        memory_offset: page_align(HEADER_SIZE + state.len() as u64),
        memory_len,
        identity: identity.to_string(),
    };
    let written = (|| {
        file.write_all_at(state, HEADER_SIZE)?;
        write_memory(file, header.memory_offset)?;
        // The file's full length, even when memory ends in a hole (without
        // ftruncate, which the filter does not allow).
        let end = header.memory_offset + memory_len;
        if memory_len > 0 {
            let mut last = [0u8];
            file.read_exact_at(&mut last, end - 1)
                .or_else(|_| file.write_all_at(&[0], end - 1))?;
        }
        // The header last: a file cut short before this point is refused.
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()
    })();
    written.map_err(|e| Error::Snapshot(format!("writing the snapshot: {e}")))
}

/// An opened, checked snapshot file.
pub struct Opened {
    pub file: File,
    pub header: Header,
    pub state: Vec<u8>,
}

/// Opens `path` and checks everything but guest memory's contents: magic,
/// version, header CRC, `identity`, lengths (a truncated file is refused),
/// and the state's CRC.
pub fn open(path: &Path, identity: &str, memory_len: u64) -> Result<Opened, Error> {
    let refused = |detail: String| Error::SnapshotRefused {
        path: PathBuf::from(path),
        detail,
    };
    let mut file = File::open(path).map_err(|e| refused(e.to_string()))?;
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| refused(e.to_string()))?;
    if len < HEADER_SIZE {
        return Err(refused(format!("{len} bytes: truncated")));
    }
    let mut raw = vec![0u8; HEADER_SIZE as usize];
    file.read_exact_at(&mut raw, 0)
        .map_err(|e| refused(e.to_string()))?;
    let header = Header::decode(&raw).map_err(refused)?;
    if header.identity != identity {
        return Err(refused(format!(
            "made for `{}`, not `{identity}`",
            header.identity
        )));
    }
    if header.memory_len != memory_len {
        return Err(refused(format!(
            "holds {} MiB of guest memory, the VM has {} MiB",
            header.memory_len >> 20,
            memory_len >> 20
        )));
    }
    if header.state_len > MAX_STATE
        || header.memory_offset < page_align(HEADER_SIZE + header.state_len)
        || header.memory_offset % PAGE != 0
    {
        return Err(refused("inconsistent section lengths".into()));
    }
    let end = header.memory_offset.checked_add(header.memory_len);
    if end.is_none_or(|end| len < end) {
        return Err(refused(format!(
            "{len} bytes: truncated (the header promises {})",
            header.memory_offset.saturating_add(header.memory_len)
        )));
    }
    let mut state = vec![0u8; header.state_len as usize];
    file.seek(SeekFrom::Start(HEADER_SIZE))
        .and_then(|_| file.read_exact(&mut state))
        .map_err(|e| refused(e.to_string()))?;
    if crc32fast::hash(&state) != header.state_crc {
        return Err(refused("state checksum mismatch (corrupt file)".into()));
    }
    Ok(Opened {
        file,
        header,
        state,
    })
}

/// Writes `bytes` at `offset`, leaving all-zero pages as holes.
pub fn write_sparse(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    static ZERO: [u8; PAGE as usize] = [0; PAGE as usize];
    for (index, page) in bytes.chunks(PAGE as usize).enumerate() {
        // libc's memcmp is vectorized whatever this crate's build profile:
        // a byte loop took 18 s for 256 MiB in a debug build under nested
        // KVM, most of a snapshot's time.
        // SAFETY: both pointers are valid for `page.len()` bytes.
        let zero =
            unsafe { libc::memcmp(page.as_ptr().cast(), ZERO.as_ptr().cast(), page.len()) == 0 };
        if !zero {
            file.write_all_at(page, offset + index as u64 * PAGE)?;
        }
    }
    Ok(())
}

/// Replaces the state of the snapshot at `path` by `edit(state)`, keeping
/// its identity and memory; the new file is renamed over the old one. For
/// tests that need a snapshot damaged in one precise way (what a faulty
/// save would have written), and for diagnosing a snapshot by hand.
pub fn rewrite_state(path: &Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Result<(), Error> {
    let refused = |detail: String| Error::SnapshotRefused {
        path: PathBuf::from(path),
        detail,
    };
    let mut raw = vec![0u8; HEADER_SIZE as usize];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut raw, 0))
        .map_err(|e| refused(e.to_string()))?;
    let header = Header::decode(&raw).map_err(refused)?;
    let old = open(path, &header.identity, header.memory_len)?;
    let state = edit(old.state);
    let new_path = path.with_extension("rewriting");
    let _ = std::fs::remove_file(&new_path);
    let new = create(&new_path)?;
    let written = write(
        &new,
        &header.identity,
        &state,
        header.memory_len,
        |out, at| {
            let mut chunk = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < header.memory_len {
                let n = chunk.len().min((header.memory_len - done) as usize);
                old.file
                    .read_exact_at(&mut chunk[..n], header.memory_offset + done)?;
                write_sparse(out, &chunk[..n], at + done)?;
                done += n as u64;
            }
            Ok(())
        },
    )
    .and_then(|()| {
        std::fs::rename(&new_path, path)
            .map_err(|e| Error::Snapshot(format!("renaming {}: {e}", new_path.display())))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&new_path);
    }
    written
}

/// For tests: [`create`] and [`write`] with `memory` as guest memory.
#[cfg(test)]
fn write_plain(path: &Path, identity: &str, state: &[u8], memory: &[u8]) -> Result<(), Error> {
    let file = create(path)?;
    write(&file, identity, state, memory.len() as u64, |file, at| {
        write_sparse(file, memory, at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("snap");
        let mut memory = vec![0u8; 64 * 1024];
        memory[5000] = 7;
        write_plain(&path, "kernel=abc mem=1", b"{\"x\":1}", &memory).unwrap();
        path
    }

    #[test]
    fn a_written_snapshot_opens_with_its_state_and_sparse_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let opened = open(&path, "kernel=abc mem=1", 64 * 1024).unwrap();
        assert_eq!(opened.state, b"{\"x\":1}");
        assert_eq!(opened.header.memory_offset, HEADER_SIZE + PAGE);
        let mut byte = [0u8];
        opened
            .file
            .read_exact_at(&mut byte, opened.header.memory_offset + 5000)
            .unwrap();
        assert_eq!(byte[0], 7);
        // Only the one non-zero page was written.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 4 * PAGE);
        // Nothing else left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn refusal(path: &Path, identity: &str, mem: u64) -> String {
        match open(path, identity, mem) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} was accepted", path.display()),
        }
    }

    #[test]
    fn a_rewritten_state_keeps_identity_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        rewrite_state(&path, |state| {
            assert_eq!(state, b"{\"x\":1}");
            b"{\"x\":22}".to_vec()
        })
        .unwrap();
        let opened = open(&path, "kernel=abc mem=1", 64 * 1024).unwrap();
        assert_eq!(opened.state, b"{\"x\":22}");
        let mut byte = [0u8];
        opened
            .file
            .read_exact_at(&mut byte, opened.header.memory_offset + 5000)
            .unwrap();
        assert_eq!(byte[0], 7);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn another_identity_or_memory_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let other = refusal(&path, "kernel=def mem=1", 64 * 1024);
        assert!(other.contains("made for `kernel=abc mem=1`"), "{other}");
        let mem = refusal(&path, "kernel=abc mem=1", 128 * 1024);
        assert!(mem.contains("guest memory"), "{mem}");
    }

    /// What a runner before the cache slots wrote: version 2, a header
    /// whose checksum holds. Refused in one line naming the file (warm
    /// start rebuilds a snapshot the VMM refuses).
    #[test]
    fn a_file_of_the_previous_format_version_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let mut old = std::fs::read(&path).unwrap();
        old[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&old[..4092]);
        old[4092..4096].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        let refused = refusal(&path, "kernel=abc mem=1", 64 * 1024);
        assert_eq!(
            refused,
            format!(
                "snapshot {}: format version 2, but this runner reads only version 3: another \
                 runner version wrote it",
                path.display()
            )
        );
        assert!(!refused.contains('\n'));
    }

    #[test]
    fn truncated_or_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let full = std::fs::read(&path).unwrap();
        let id = "kernel=abc mem=1";

        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("truncated"));
        std::fs::write(&path, &full[..100]).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("truncated"));

        let mut bad = full.clone();
        bad[HEADER_SIZE as usize + 2] ^= 1; // in the state
        std::fs::write(&path, &bad).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("state checksum"));

        let mut bad = full.clone();
        bad[20] ^= 1; // in the header
        std::fs::write(&path, &bad).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("header checksum"));

        let mut bad = full.clone();
        bad[8] = 9; // version
        std::fs::write(&path, &bad).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("format version 9"));

        std::fs::write(&path, b"not a snapshot at all").unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("truncated"));
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert!(refusal(&path, id, 64 * 1024).contains("bad magic"));
    }
}
