//! The CPU time of a VM's vCPUs, read from the host's `/proc`: the threads
//! of the process that runs the guest whose names say they are vCPUs (ours
//! are `vcpu0`..., QEMU's `CPU 0/TCG`... with `debug-threads=on`). Read
//! before the process is killed: its threads' counts go with it.

use std::path::Path;
use std::time::Duration;

/// The user and system time of `pid`'s threads whose name starts with
/// `prefix`; `None` if `/proc` cannot tell (the process is gone, or no
/// thread has such a name).
pub fn of_threads(pid: u32, prefix: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let mut ticks = 0u64;
    let mut found = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, used)) = parse_stat(&stat) {
            if name.starts_with(prefix) {
                found = true;
                ticks += used;
            }
        }
    }
    (found && ticks_per_second > 0).then(|| Duration::from_millis(ticks * 1000 / ticks_per_second))
}

/// A thread's name and its `utime + stime` in clock ticks, from its
/// `stat` line. The name is between the first `(` and the last `)`: it may
/// hold spaces and parentheses itself.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_both_times() {
        let line = "4242 (CPU 0/TCG) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(line), Some(("CPU 0/TCG", 280)));
        let odd = "7 (a) b) R 1 2 3 4 5 6 7 8 9 10 1 2 0";
        assert_eq!(parse_stat(odd), Some(("a) b", 3)));
        assert_eq!(parse_stat("7 (x) R 1 2"), None);
    }

    #[test]
    fn this_process_threads_are_counted_by_name() {
        let me = std::process::id();
        let busy = std::thread::Builder::new()
            .name("cpu-time-test".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                of_threads(std::process::id(), "cpu-time-te").map(|_| x)
            })
            .unwrap();
        assert!(busy.join().unwrap().is_some());
        assert_eq!(of_threads(me, "no thread has this name"), None);
        assert_eq!(of_threads(u32::MAX, ""), None);
    }
}
