//! The guest's memory use, sampled by the agent itself: the host asks for
//! the peak since it last asked (`Message::Usage`), so a peak that came and
//! went between two questions still counts, and the host's questions cost
//! one round trip each, not one per sample. And, for each command, what
//! likely failed it: OOM kills while it ran, a full file system after.

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

/// The root file system's size and use; `None` if it cannot be read.
pub fn disk() -> Option<agent_protocol::DiskReport> {
    let (total, free) = fs_space("/")?;
    Some(agent_protocol::DiskReport {
        root_total_kib: total >> 10,
        root_used_kib: total.saturating_sub(free) >> 10,
    })
}

/// A file system's size and free bytes (root's reserve included: the
/// job's steps run as root), or `None`.
fn fs_space(path: &str) -> Option<(u64, u64)> {
    let fs = nix::sys::statvfs::statvfs(path).ok()?;
    let block = fs.fragment_size().max(1);
    Some((fs.blocks() * block, fs.blocks_free() * block))
}

/// What a command's run is compared against: the OOM kills so far, and
/// where it works.
pub struct CommandWatch {
    /// The kernel log, read from where it ended when the command started.
    kmsg: Option<std::fs::File>,
    dir: String,
}

impl CommandWatch {
    /// Costs an open and a seek: every command, `ready` polls included,
    /// starts one, and the log is read only for one that failed.
    pub fn start(cwd: Option<&str>) -> CommandWatch {
        CommandWatch {
            kmsg: kmsg_from_now(),
            dir: cwd.unwrap_or("/").to_string(),
        }
    }

    /// Processes the OOM killer ended since [`CommandWatch::start`], from
    /// the kernel log's `Killed process` records (`/proc/vmstat` counts
    /// them only with CONFIG_VM_EVENT_COUNTERS, which our kernel leaves
    /// out). Reads only the records logged since.
    pub fn oom_kills(&self) -> u64 {
        use std::io::Read;

        let Some(mut kmsg) = self.kmsg.as_ref() else {
            return 0;
        };
        // One record per read; EAGAIN at the end of the log.
        let mut record = vec![0u8; 8192];
        let mut kills = 0;
        loop {
            match kmsg.read(&mut record) {
                Ok(0) => break,
                Ok(n) => kills += u64::from(is_oom_kill(&record[..n])),
                // Records overwritten before we read them: skip on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        kills
    }

    /// Whether the working directory's file system has (almost) no room
    /// left: less than 1% and less than 1 MiB free, as root sees it.
    pub fn disk_full(&self) -> bool {
        let Some((total, free)) = fs_space(&self.dir) else {
            return false;
        };
        total > 0 && free < (total / 100).min(1 << 20)
    }
}

/// The kernel log, positioned after its last record (non-blocking).
fn kmsg_from_now() -> Option<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;

    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok()?;
    kmsg.seek(SeekFrom::End(0)).ok()?;
    Some(kmsg)
}

/// Whether a kernel log record says the OOM killer ended a process
/// (`Out of memory: Killed process 42 (tail) ...`, or a memory cgroup's).
fn is_oom_kill(record: &[u8]) -> bool {
    let text = String::from_utf8_lossy(record);
    let message = text.split_once(';').map_or(&*text, |(_, m)| m);
    message.contains("out of memory: Killed process")
        || message.contains("Out of memory: Killed process")
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
    fn a_command_watch_sees_no_kills_and_room_here() {
        let watch = CommandWatch::start(Some("/"));
        assert_eq!(watch.oom_kills(), 0);
        assert!(is_oom_kill(
            b"3,1234,5678,-;Out of memory: Killed process 42 (tail) total-vm:1kB"
        ));
        assert!(is_oom_kill(
            b"3,9,9,-;Memory cgroup out of memory: Killed process 7 (x)"
        ));
        assert!(!is_oom_kill(b"6,1,1,-;Killed process accounting"));
        let dir = tempfile::tempdir().unwrap();
        let here = CommandWatch::start(dir.path().to_str());
        assert!(!here.disk_full());
        // Unreadable: not full.
        assert!(!CommandWatch::start(Some("/no/such/dir")).disk_full());
    }

    #[test]
    fn a_report_is_the_peak_since_the_last_one() {
        let (total, _) = report().expect("this host has /proc/meminfo");
        assert!(total > 0);
        PEAK_KIB.fetch_max(u64::MAX / 2, Ordering::Relaxed);
        assert_eq!(report().unwrap().1, u64::MAX / 2);
        assert!(report().unwrap().1 < u64::MAX / 2);
    }

    #[test]
    fn the_root_file_system_has_a_size_and_what_is_free_fits_in_it() {
        let (total, free) = fs_space("/").unwrap();
        assert!(total > 0 && free <= total);
        let disk = disk().unwrap();
        assert!(disk.root_used_kib <= disk.root_total_kib);
    }
}
