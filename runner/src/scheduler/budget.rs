//! What the host has a fixed amount of, as budgets: its memory (a job starts
//! only when its VMs' memory fits in what is left, so `--jobs` never
//! overcommits the host) and its VM slots (`--jobs`: a job with services
//! takes one slot per VM). Extra jobs wait their turn.

use std::sync::{Condvar, Mutex};

pub struct Budget {
    total: u64,
    free: Mutex<u64>,
    freed: Condvar,
}

/// What QEMU (or our VMM) needs beyond guest memory: the process, its
/// device threads and page tables.
pub const VM_OVERHEAD_MIB: u64 = 64;

impl Budget {
    pub fn new(total: u64) -> Budget {
        Budget {
            total,
            free: Mutex::new(total),
            freed: Condvar::new(),
        }
    }

    /// 80% of what the kernel says is available now, leaving room for the
    /// host's own work (and the page cache the images live in).
    pub fn host_memory_mib() -> Budget {
        let available_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(4 * 1024 * 1024);
        Budget::new(available_kib / 1024 * 8 / 10)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Blocks until `amount` is free and takes it. `None` if it can never
    /// fit.
    pub fn acquire(&self, amount: u64) -> Option<Reservation<'_>> {
        if amount > self.total {
            return None;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < amount {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= amount;
        Some(Reservation {
            budget: self,
            amount,
        })
    }
}

/// What one job holds while it runs; given back when dropped.
pub struct Reservation<'a> {
    budget: &'a Budget,
    amount: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += self.amount;
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
        let budget = Budget::new(1000);
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
        assert_eq!(*budget.free.lock().unwrap(), 1000);
    }
}
