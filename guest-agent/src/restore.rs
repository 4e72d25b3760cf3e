//! Becoming a new clone after the VM was restored from a snapshot.
//!
//! Every clone of one snapshot wakes up with the same kernel RNG state, the
//! same clock (stopped when the snapshot was taken) and the same identity.
//! Before any job command runs, the host announces the restore
//! (`Message::Restored`) and the agent:
//!
//! 1. mixes the host's entropy into the kernel's input pool and credits it
//!    (`RNDADDENTROPY`);
//! 2. forces the kernel to reseed its CRNG from that pool
//!    (`RNDRESEEDCRNG`). Without it a 6.1 kernel keeps producing output
//!    from the old CRNG key for up to a minute (its reseed interval), so
//!    two clones would read the same bytes from /dev/urandom;
//! 3. sets CLOCK_REALTIME to the host's time;
//! 4. writes the clone's id to /etc/machine-id.
//!
//! Everything is checked before anything is changed, and the host gets its
//! answer only after the last step, so a command it starts afterwards
//! cannot see the old state.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use agent_protocol::{is_valid_clone_id, RESTORE_ENTROPY_MAX, RESTORE_ENTROPY_MIN};

const MACHINE_ID: &str = "/etc/machine-id";

/// The generation of the last restore applied; 0 is the cold-booted guest
/// the snapshot was taken of. Held for the whole of a restore, so two
/// announcements on two connections cannot interleave their steps.
static LAST_GENERATION: Mutex<u64> = Mutex::new(0);

/// A restore as announced by the host.
pub struct Restore<'a> {
    pub generation: u64,
    pub entropy: &'a [u8],
    pub unix_time_ns: u64,
    pub clone_id: &'a str,
}

/// Applies `restore` to this guest; on failure, the message names the step.
pub fn apply(restore: &Restore) -> Result<(), String> {
    let mut last = LAST_GENERATION
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    validate(restore, *last)?;
    add_entropy(restore.entropy).map_err(|e| format!("RNDADDENTROPY: {e}"))?;
    reseed_crng().map_err(|e| format!("RNDRESEEDCRNG: {e}"))?;
    set_realtime_clock(restore.unix_time_ns).map_err(|e| format!("clock_settime: {e}"))?;
    write_machine_id(Path::new(MACHINE_ID), restore.clone_id)
        .map_err(|e| format!("writing {MACHINE_ID}: {e}"))?;
    // Only a restore applied in full counts: after a failed one the host
    // may try the same generation again.
    *last = restore.generation;
    Ok(())
}

/// Checks a restore against the generation applied last, changing nothing.
pub fn validate(restore: &Restore, last_generation: u64) -> Result<(), String> {
    if restore.generation <= last_generation {
        return Err(format!(
            "generation {} is not newer than the last one applied ({last_generation}); \
             a clone is announced once",
            restore.generation
        ));
    }
    let len = restore.entropy.len();
    if !(RESTORE_ENTROPY_MIN..=RESTORE_ENTROPY_MAX).contains(&len) {
        return Err(format!(
            "{len} bytes of entropy: expected {RESTORE_ENTROPY_MIN} to {RESTORE_ENTROPY_MAX}"
        ));
    }
    if !is_valid_clone_id(restore.clone_id) {
        return Err(format!(
            "invalid clone id {:?}: expected 32 lowercase hexadecimal digits",
            restore.clone_id
        ));
    }
    if restore.unix_time_ns == 0 {
        return Err("no time given (unix_time_ns is 0)".to_string());
    }
    Ok(())
}

// The ioctls of <linux/random.h>, which the libc crate does not define:
// RNDADDENTROPY is _IOW('R', 0x03, int[2]), RNDRESEEDCRNG is _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    RandPoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// `struct rand_pool_info` with room for the largest entropy we take; the
/// kernel reads `buf_size` bytes of `buf`.
#[repr(C)]
struct RandPoolInfo {
    /// Bits to credit.
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; RESTORE_ENTROPY_MAX],
}

fn open_urandom() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/urandom")
}

/// Mixes `entropy` into the input pool and credits all of its bits: it
/// comes from the host's own RNG, which is what the guest would trust
/// anyway.
fn add_entropy(entropy: &[u8]) -> std::io::Result<()> {
    let mut info = RandPoolInfo {
        entropy_count: (entropy.len() * 8) as libc::c_int,
        buf_size: entropy.len() as libc::c_int,
        buf: [0; RESTORE_ENTROPY_MAX],
    };
    info.buf[..entropy.len()].copy_from_slice(entropy);
    let urandom = open_urandom()?;
    // SAFETY: `info` is a valid rand_pool_info whose `buf_size` bytes of
    // `buf` are in bounds (`validate` capped the length).
    unsafe { rnd_add_entropy(urandom.as_raw_fd(), &info) }
        .map(drop)
        .map_err(std::io::Error::from)
}

/// Makes the kernel derive a new CRNG key from the input pool now, rather
/// than at its next scheduled reseed.
fn reseed_crng() -> std::io::Result<()> {
    let urandom = open_urandom()?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { rnd_reseed_crng(urandom.as_raw_fd()) }
        .map(drop)
        .map_err(std::io::Error::from)
}

fn set_realtime_clock(unix_time_ns: u64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `id` to `path` by way of a temporary file renamed over it, so a
/// reader sees the old id or the new one, never half of one.
fn write_machine_id(path: &Path, id: &str) -> std::io::Result<()> {
    let temp = path.with_file_name(".machine-id.restore");
    // Left over from a restore that failed half-way: the lock in `apply`
    // means nobody else is writing it.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(format!("{id}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn restore(generation: u64, entropy: &[u8]) -> Restore<'_> {
        Restore {
            generation,
            entropy,
            unix_time_ns: 1_700_000_000_000_000_000,
            clone_id: ID,
        }
    }

    #[test]
    fn a_well_formed_restore_passes() {
        let seed = [7u8; 64];
        assert_eq!(validate(&restore(1, &seed), 0), Ok(()));
        assert_eq!(validate(&restore(u64::MAX, &seed), 41), Ok(()));
    }

    #[test]
    fn entropy_must_hold_32_to_512_bytes() {
        for ok in [RESTORE_ENTROPY_MIN, 64, RESTORE_ENTROPY_MAX] {
            assert_eq!(validate(&restore(1, &vec![1; ok]), 0), Ok(()), "{ok}");
        }
        for bad in [0, 1, RESTORE_ENTROPY_MIN - 1, RESTORE_ENTROPY_MAX + 1, 4096] {
            let err = validate(&restore(1, &vec![1; bad]), 0).unwrap_err();
            assert!(
                err.contains(&format!("{bad} bytes of entropy")) && err.contains("32 to 512"),
                "{err}"
            );
        }
    }

    #[test]
    fn generations_only_go_up() {
        let seed = [7u8; 64];
        let zero = validate(&restore(0, &seed), 0).unwrap_err();
        assert!(zero.contains("generation 0 is not newer"), "{zero}");
        let same = validate(&restore(5, &seed), 5).unwrap_err();
        assert!(same.contains("generation 5 is not newer than the last one applied (5)"));
        assert!(validate(&restore(4, &seed), 5).is_err());
        assert_eq!(validate(&restore(6, &seed), 5), Ok(()));
    }

    #[test]
    fn clone_ids_and_times_are_checked() {
        let seed = [7u8; 64];
        for bad in ["", "0123456789ABCDEF0123456789ABCDEF", "../../etc/passwd"] {
            let err = validate(
                &Restore {
                    clone_id: bad,
                    ..restore(1, &seed)
                },
                0,
            )
            .unwrap_err();
            assert!(err.starts_with("invalid clone id"), "{err}");
        }
        let err = validate(
            &Restore {
                unix_time_ns: 0,
                ..restore(1, &seed)
            },
            0,
        )
        .unwrap_err();
        assert!(err.contains("no time"), "{err}");
    }

    #[test]
    fn the_machine_id_is_created_then_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        write_machine_id(&path, ID).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{ID}\n"));
        let other = "fedcba9876543210fedcba9876543210";
        // A temporary file left by an earlier failed attempt is no obstacle.
        std::fs::write(dir.path().join(".machine-id.restore"), "junk").unwrap();
        write_machine_id(&path, other).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{other}\n")
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["machine-id"], "temporary files left behind");
    }

    #[test]
    fn the_ioctl_numbers_match_linux_random_h() {
        // From the kernel's UAPI header, as `strace -e raw=ioctl` prints them.
        assert_eq!(
            nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
            0x4008_5203
        );
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }
}
