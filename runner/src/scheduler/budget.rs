//! Host memory as a budget: a VM starts only when its memory fits in what is
//! left, so `--jobs` never overcommits the host; extra jobs wait their turn.

use std::sync::{Condvar, Mutex};

pub struct MemoryBudget {
    total_mib: u64,
    free_mib: Mutex<u64>,
    freed: Condvar,
}

/// What QEMU (or our VMM) needs beyond guest memory: the process, its
/// device threads and page tables.
pub const VM_OVERHEAD_MIB: u64 = 64;

impl MemoryBudget {
    pub fn new(total_mib: u64) -> MemoryBudget {
        MemoryBudget {
            total_mib,
            free_mib: Mutex::new(total_mib),
            freed: Condvar::new(),
        }
    }

    /// 80% of what the kernel says is available now, leaving room for the
    /// host's own work (and the page cache the images live in).
    pub fn from_host() -> MemoryBudget {
        let available_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(4 * 1024 * 1024);
        MemoryBudget::new(available_kib / 1024 * 8 / 10)
    }

    pub fn total_mib(&self) -> u64 {
        self.total_mib
    }

    /// Blocks until `mib` is free and takes it. `None` if it can never fit.
    pub fn acquire(&self, mib: u64) -> Option<Reservation<'_>> {
        if mib > self.total_mib {
            return None;
        }
        let mut free = self.free_mib.lock().unwrap_or_else(|p| p.into_inner());
        while *free < mib {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= mib;
        Some(Reservation { budget: self, mib })
    }
}

/// Memory held by one running VM; given back when dropped.
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    mib: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut free = self
            .budget
            .free_mib
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *free += self.mib;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn reservations_wait_for_memory_and_never_exceed_the_total() {
        let budget = MemoryBudget::new(1000);
        assert!(budget.acquire(1001).is_none(), "can never fit");
        let in_use = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _r = budget.acquire(400).unwrap();
                    let now = in_use.fetch_add(400, Ordering::SeqCst) + 400;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    in_use.fetch_sub(400, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(
            peak.load(Ordering::SeqCst),
            800,
            "two 400 MiB VMs fit in 1000"
        );
        assert_eq!(*budget.free_mib.lock().unwrap(), 1000);
    }
}
