//! Report files are replaced whole: a reader never sees half of one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `contents` to `path` atomically: a temporary file (named
/// `<prefix>….tmp`) in the same directory, synced, then renamed over
/// `path`. A crash leaves either the old file or the new one, never half
/// of one.
pub fn write_atomically(contents: &[u8], path: &Path, prefix: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    // Temporary files are private; a report is for everyone to read.
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))?;
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}
