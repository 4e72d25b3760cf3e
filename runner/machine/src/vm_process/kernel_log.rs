//! Which syscall a seccomp filter killed a process for: the kernel logs
//! each `SECCOMP_RET_KILL_PROCESS` as an audit record (`type=1326 ...
//! pid=N ... sig=31 ... syscall=M`), which `/dev/kmsg` shows unless an
//! audit daemon takes the records or the reader may not read the kernel
//! log. Best effort: `None` when it cannot tell.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// The syscall number in the kernel's record of `pid`'s seccomp kill.
pub fn seccomp_kill_syscall(pid: u32) -> Option<i64> {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut found = None;
    let mut record = vec![0u8; 8192];
    // One record per read; EAGAIN at the end. Bounded, in case the log
    // grows as fast as it is read.
    for _ in 0..100_000 {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(nr) = parse(&String::from_utf8_lossy(&record[..n]), pid) {
                    found = Some(nr);
                }
            }
            // EPIPE: a record was overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break,
        }
    }
    found
}

/// The syscall of a seccomp kill record for `pid`, if `line` is one.
fn parse(line: &str, pid: u32) -> Option<i64> {
    if !line.contains("type=1326") || !line.contains(" sig=31 ") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
    };
    (field("pid=")? == pid.to_string()).then_some(())?;
    field("syscall=")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_records_are_parsed_for_their_pid_only() {
        let line = "5,1234,11964175416,-;audit: type=1326 audit(1796060120.733:2): \
                    auid=4294967295 uid=0 gid=0 ses=4294967295 pid=3532 comm=\"runner\" \
                    exe=\"/x/runner\" sig=31 arch=c000003e syscall=317 compat=0 \
                    ip=0x7f5b08888829 code=0x80000000";
        assert_eq!(parse(line, 3532), Some(317));
        assert_eq!(parse(line, 353), None);
        // A logged-only record (RUNNER_SECCOMP=log) is no kill.
        assert_eq!(parse(&line.replace("sig=31", "sig=0"), 3532), None);
        assert_eq!(parse("5,1,2,-;something else pid=3532", 3532), None);
    }
}
