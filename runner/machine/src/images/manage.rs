//! `runner image list` and `runner image prune`.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::cache::{cache, Entry, Manifest};
use crate::file_lock::{FileLock, LockMode};
use crate::lru::{self, Candidate, Limits};

/// One cache entry as listed.
pub struct Listed {
    pub entry: Entry,
    /// None when the entry is corrupt (the reason is in `problem`).
    pub manifest: Option<Manifest>,
    pub problem: Option<String>,
    pub apparent_bytes: u64,
    pub disk_bytes: u64,
    pub last_used: Option<SystemTime>,
}

/// Every entry in the cache, most recently used first.
pub fn list() -> std::io::Result<Vec<Listed>> {
    let (cache, dir) = cache().map_err(std::io::Error::other)?;
    let mut shorts = HashSet::new();
    let read = match fs::read_dir(&dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for item in read.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(short) = name
            .strip_suffix(".json")
            .or_else(|| name.strip_suffix(".ext4"))
        {
            shorts.insert(short.to_string());
        }
    }
    let mut listed: Vec<Listed> = shorts
        .into_iter()
        .map(|short| {
            let entry = Entry::new(&dir, &short);
            let checked = entry
                .check(None)
                .and_then(|m| entry.check_seal(&cache, &m.key).map(|()| m));
            let (manifest, problem) = match checked {
                Ok(m) => (Some(m), None),
                Err(why) => (None, Some(why)),
            };
            let meta = fs::metadata(&entry.image).ok();
            let last_used = fs::metadata(&entry.used)
                .and_then(|m| m.modified())
                .ok()
                .or_else(|| meta.as_ref().and_then(|m| m.modified().ok()));
            Listed {
                apparent_bytes: meta.as_ref().map_or(0, |m| m.len()),
                disk_bytes: meta.as_ref().map_or(0, |m| m.blocks() * 512),
                entry,
                manifest,
                problem,
                last_used,
            }
        })
        .collect();
    listed.sort_by_key(|l| std::cmp::Reverse(l.last_used));
    Ok(listed)
}

/// The table `runner image list` prints.
pub fn render(listed: &[Listed], now: SystemTime, verbose: bool) -> String {
    let mut out = format!(
        "{:<16}  {:>9}  {:>9}  {:<10}  {}\n",
        "KEY", "SIZE", "ON DISK", "LAST USE", "SPEC"
    );
    for l in listed {
        let age = l
            .last_used
            .and_then(|t| now.duration_since(t).ok())
            .map_or("-".to_string(), |d| format!("{} ago", short_age(d)));
        let spec = match (&l.manifest, &l.problem) {
            (Some(m), _) => m.summary.clone(),
            (None, Some(why)) => format!("corrupt: {why} (rebuilt on next use)"),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<16}  {:>9}  {:>9}  {:<10}  {spec}\n",
            l.entry.short,
            human_bytes(l.apparent_bytes),
            human_bytes(l.disk_bytes),
            age
        ));
        if let (true, Some(manifest)) = (verbose, &l.manifest) {
            for input in &manifest.inputs {
                out.push_str(&format!("    {input}\n"));
            }
        }
    }
    let total: u64 = listed.iter().map(|l| l.disk_bytes).sum();
    out.push_str(&format!(
        "{} images, {} on disk in {}\n",
        listed.len(),
        human_bytes(total),
        cache().map_or_else(|e| e, |(_, dir)| dir.display().to_string())
    ));
    out
}

/// What `prune` removes: entries last used before `older_than` ago, then
/// more, least recently used first, while the cache takes more than
/// `max_bytes`; never those in `keep` (short keys), which still count
/// towards the size. With `keep` given and no limit, every entry not in it.
pub struct PrunePolicy {
    pub older_than: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub keep: Option<HashSet<String>>,
}

/// Removes the entries the policy selects, corrupt entries, and leftovers
/// of builds that were killed; an entry being built right now (locked) is
/// skipped. Returns the removed keys and the bytes freed.
pub fn prune(policy: &PrunePolicy, now: SystemTime) -> std::io::Result<(Vec<String>, u64)> {
    let mut removed = Vec::new();
    let mut freed = 0;
    let mut candidates = Vec::new();
    let is_kept = |l: &Listed| {
        policy
            .keep
            .as_ref()
            .is_some_and(|keep| keep.contains(&l.entry.short))
    };
    for l in list()? {
        if l.problem.is_some() && !is_kept(&l) {
            if remove_unlocked(&l.entry)? {
                freed += l.disk_bytes;
                removed.push(l.entry.short.clone());
            }
            continue;
        }
        candidates.push(Candidate {
            disk_bytes: l.disk_bytes,
            last_used: l.last_used.unwrap_or(SystemTime::UNIX_EPOCH),
            item: l,
        });
    }
    let everything_not_kept = policy.keep.is_some() && policy.max_bytes.is_none();
    let limits = Limits {
        older_than: policy
            .older_than
            .or(everything_not_kept.then_some(Duration::ZERO)),
        max_bytes: policy.max_bytes,
    };
    let mut failed = None;
    let evicted = lru::evict(candidates, limits, now, |l| {
        // Kept entries are candidates only to count towards the size.
        if is_kept(l) || failed.is_some() {
            return false;
        }
        remove_unlocked(&l.entry).unwrap_or_else(|e| {
            failed = Some(e);
            false
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    freed += evicted.freed_bytes;
    removed.extend(evicted.removed.into_iter().map(|l| l.entry.short));
    if let Ok((_, dir)) = cache() {
        remove_stale_temp(&dir, now);
    }
    Ok((removed, freed))
}

/// Removes `entry` unless it is being built; true if it is gone.
fn remove_unlocked(entry: &Entry) -> std::io::Result<bool> {
    let Some(_lock) = FileLock::acquire(&entry.lock, LockMode::Exclusive, false)? else {
        return Ok(false);
    };
    entry.remove();
    let _ = fs::remove_file(&entry.lock);
    Ok(true)
}

/// Temp files and work dirs older than a day: a build that was killed.
/// A live build is younger, or holds its lock (checked by its age only:
/// no build takes a day).
fn remove_stale_temp(dir: &Path, now: SystemTime) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for item in read.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(".work-") || name.starts_with(".inputs-") || name.contains(".tmp-")) {
            continue;
        }
        let stale = item
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if stale {
            let path = item.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_are_short() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 << 20), "3.0M");
        assert_eq!(short_age(Duration::from_secs(7200)), "2h");
        assert_eq!(short_age(Duration::from_secs(3 * 86400)), "3d");
    }
}
