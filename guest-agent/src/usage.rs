//! The guest's memory use, sampled by the agent itself: the host asks for
//! the peak since it last asked (`Message::Usage`), so a peak that came and
//! went between two questions still counts, and the host's questions cost
//! one round trip each, not one per sample.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// How often the memory in use is read: a step that fills memory for a
/// tenth of a second is seen. Reading /proc/meminfo costs microseconds.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The most KiB in use seen since the last report.
static PEAK_KIB: AtomicU64 = AtomicU64::new(0);
static SAMPLER: Once = Once::new();

/// `MemTotal` and the peak in use since the last call, in KiB; starts the
/// sampler on the first call. `None` if /proc/meminfo cannot be read.
pub fn report() -> Option<(u64, u64)> {
    SAMPLER.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("usage".into())
            .spawn(|| loop {
                if let Some((_, used)) = read() {
                    PEAK_KIB.fetch_max(used, Ordering::Relaxed);
                }
                std::thread::sleep(SAMPLE_EVERY);
            });
    });
    let (total, used) = read()?;
    // What is in use now starts the next period.
    let peak = PEAK_KIB.swap(used, Ordering::Relaxed).max(used);
    Some((total, peak))
}

fn read() -> Option<(u64, u64)> {
    parse(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemTotal` and `MemTotal - MemAvailable` from /proc/meminfo's text.
fn parse(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Some((total, total.saturating_sub(available)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_the_total_and_what_is_not_available() {
        let text = "MemTotal:         500000 kB\nMemFree:          100000 kB\n\
                    MemAvailable:     350000 kB\nBuffers:            1000 kB\n";
        assert_eq!(parse(text), Some((500000, 150000)));
        assert_eq!(parse("MemTotal: 5 kB\n"), None);
        assert_eq!(parse("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
    }

    #[test]
    fn a_report_is_the_peak_since_the_last_one() {
        let (total, _) = report().expect("this host has /proc/meminfo");
        assert!(total > 0);
        PEAK_KIB.fetch_max(u64::MAX / 2, Ordering::Relaxed);
        assert_eq!(report().unwrap().1, u64::MAX / 2);
        assert!(report().unwrap().1 < u64::MAX / 2);
    }
}
