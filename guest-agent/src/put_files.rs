//! `put-files`: unpack the host's tar stream under a target directory,
//! through `safe-untar` under [`Policy::WORKSPACE`] (its policy module
//! says what that allows). The stream is consumed as it arrives, never
//! held whole; its framing is the caller's (`server.rs`).

use std::io::Read;
use std::path::Path;

use safe_untar::{Budget, Limits, Policy};

/// What a transfer moved.
#[derive(Debug, Default)]
pub struct Transferred {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar stream in `input` under `target` (created if missing).
/// Stops at the first refused or failed entry; entries before it stay (all
/// inside the target).
pub fn unpack<R: Read>(input: R, target: &str) -> Result<Transferred, String> {
    let target = Path::new("/").join(target);
    std::fs::create_dir_all(&target)
        .map_err(|e| format!("cannot create target directory {target:?}: {e}"))?;
    // The host is trusted and the guest's disk bounds what it can send.
    let mut budget = Budget::new(Limits::UNLIMITED);
    let done = safe_untar::unpack(input, &target, Policy::WORKSPACE, &mut budget);
    match done.error {
        Some(e) => Err(e.to_string()),
        None => Ok(Transferred {
            entries: done.entries,
            bytes: done.bytes,
        }),
    }
}
