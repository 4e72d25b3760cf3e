//! Least-recently-used eviction, the one policy by which the runner's
//! caches (spec images, warm-start snapshots, cache volumes) shrink: every
//! entry last used longer ago than an age goes, and then, while the cache
//! is over a size, the least recently used entry goes next. An entry in use
//! is never removed: the caller's `remove` says so by returning false, and
//! the entry keeps counting towards the size.

use std::time::{Duration, SystemTime};

/// One entry a cache could drop.
#[derive(Debug)]
pub struct Candidate<T> {
    pub item: T,
    /// Allocated blocks, not the apparent size: what removing it frees.
    pub disk_bytes: u64,
    pub last_used: SystemTime,
}

/// What to evict; nothing when both are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Every entry unused for at least this long.
    pub older_than: Option<Duration>,
    /// Least recently used first, until the entries take at most this.
    pub max_bytes: Option<u64>,
}

/// What an eviction did.
#[derive(Debug)]
pub struct Evicted<T> {
    pub removed: Vec<T>,
    /// Entries that should have gone but were in use.
    pub in_use: Vec<T>,
    pub freed_bytes: u64,
    /// What the entries take afterwards.
    pub remaining_bytes: u64,
}

/// Evicts from `candidates` what `limits` select, least recently used
/// first. `remove` removes one entry and returns false when it is in use
/// (then it stays).
pub fn evict<T>(
    mut candidates: Vec<Candidate<T>>,
    limits: Limits,
    now: SystemTime,
    mut remove: impl FnMut(&T) -> bool,
) -> Evicted<T> {
    candidates.sort_by_key(|c| c.last_used);
    let mut total: u64 = candidates.iter().map(|c| c.disk_bytes).sum();
    let mut evicted = Evicted {
        removed: Vec::new(),
        in_use: Vec::new(),
        freed_bytes: 0,
        remaining_bytes: 0,
    };
    for candidate in candidates {
        // A time in the future (a clock set back) counts as just used.
        let too_old = limits.older_than.is_some_and(|age| {
            now.duration_since(candidate.last_used)
                .is_ok_and(|unused| unused >= age)
        });
        let too_big = limits.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            continue;
        }
        if remove(&candidate.item) {
            total -= candidate.disk_bytes;
            evicted.freed_bytes += candidate.disk_bytes;
            evicted.removed.push(candidate.item);
        } else {
            evicted.in_use.push(candidate.item);
        }
    }
    evicted.remaining_bytes = total;
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn candidates() -> Vec<Candidate<&'static str>> {
        // Out of order on purpose: eviction sorts by last use.
        [
            ("c", 30, 300),
            ("a", 10, 100),
            ("d", 40, 400),
            ("b", 20, 200),
        ]
        .into_iter()
        .map(|(item, disk_bytes, used)| Candidate {
            item,
            disk_bytes,
            last_used: at(used),
        })
        .collect()
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_size_fits() {
        let limits = Limits {
            older_than: None,
            max_bytes: Some(50),
        };
        let mut order = Vec::new();
        let evicted = evict(candidates(), limits, at(1000), |item| {
            order.push(*item);
            true
        });
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(evicted.removed, ["a", "b", "c"]);
        assert_eq!((evicted.freed_bytes, evicted.remaining_bytes), (60, 40));
    }

    #[test]
    fn an_entry_in_use_stays_and_still_counts() {
        let limits = Limits {
            older_than: None,
            max_bytes: Some(40),
        };
        let evicted = evict(candidates(), limits, at(1000), |item| *item != "a");
        // "a" (10 bytes) stays, so "d" must go too.
        assert_eq!(evicted.removed, ["b", "c", "d"]);
        assert_eq!(evicted.in_use, ["a"]);
        assert_eq!(evicted.remaining_bytes, 10);
    }

    #[test]
    fn an_age_removes_what_is_older_and_nothing_newer() {
        let limits = Limits {
            older_than: Some(Duration::from_secs(750)),
            max_bytes: None,
        };
        let evicted = evict(candidates(), limits, at(1000), |_| true);
        assert_eq!(evicted.removed, ["a", "b"]);
        // No limit at all removes nothing.
        let evicted = evict(candidates(), Limits::default(), at(1000), |_| true);
        assert!(evicted.removed.is_empty());
        assert_eq!(evicted.remaining_bytes, 100);
        // Used "in the future": kept by an age.
        let limits = Limits {
            older_than: Some(Duration::ZERO),
            max_bytes: None,
        };
        let evicted = evict(candidates(), limits, at(250), |_| true);
        assert_eq!(evicted.removed, ["a", "b"]);
    }
}
