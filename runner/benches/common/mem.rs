#![allow(dead_code)] // each bench uses a part

//! Resident memory of a process from /proc/<pid>/smaps, split into guest
//! memory (the guest RAM memfd: the built-in VMM's, or QEMU's as a
//! vhost-user device process maps it) and everything else.

/// Guest RAM mappings: runner-vmm's `memfd:runner-guest-ram`, QEMU's
/// `memory-backend-memfd` (`/memfd:mem`).
const GUEST_RAM_MAPPING: &str = "memfd:";

/// Resident memory of a process, in KiB, split by what it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemUse {
    pub guest_rss: u64,
    pub other_rss: u64,
    pub other_private: u64,
    /// This process's proportional share of its resident pages (`Pss`).
    pub other_pss: u64,
    /// Anonymous pages (heap, stacks, and the private copies of relocated
    /// data): what this process costs on top of what it shares. File pages
    /// (the binary's text, libc) are page cache, shared with every process
    /// that maps the same file; smaps calls them private dirty only while
    /// nobody else maps them and a fresh build is not yet written back.
    pub other_anonymous: u64,
    /// Page tables (`VmPTE`).
    pub page_tables: u64,
    pub anon: u64,
    pub file: u64,
    pub kvm: u64,
}

impl MemUse {
    /// Two processes' use together (a jailed VM process and its
    /// supervisor).
    pub fn plus(&self, other: &MemUse) -> MemUse {
        MemUse {
            guest_rss: self.guest_rss + other.guest_rss,
            other_rss: self.other_rss + other.other_rss,
            other_private: self.other_private + other.other_private,
            other_pss: self.other_pss + other.other_pss,
            other_anonymous: self.other_anonymous + other.other_anonymous,
            page_tables: self.page_tables + other.page_tables,
            anon: self.anon + other.anon,
            file: self.file + other.file,
            kvm: self.kvm + other.kvm,
        }
    }

    /// The sample with the larger overhead (guest pages: the larger too).
    pub fn max(self, other: MemUse) -> MemUse {
        let mut m = if other.other_rss > self.other_rss {
            other
        } else {
            self
        };
        m.guest_rss = self.guest_rss.max(other.guest_rss);
        m
    }
}

pub fn mem_use(pid: u32) -> Option<MemUse> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut use_ = MemUse::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.ends_with(':') {
            // A mapping header: range perms offset dev inode [pathname].
            name = words.nth(4).unwrap_or("").to_string();
            continue;
        }
        let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let guest = name.contains(GUEST_RAM_MAPPING);
        match first {
            "Rss:" if guest => use_.guest_rss += kib,
            "Rss:" => {
                use_.other_rss += kib;
                if name.starts_with("anon_inode:kvm") {
                    use_.kvm += kib;
                } else if name.starts_with('/') {
                    use_.file += kib;
                } else {
                    use_.anon += kib;
                }
            }
            "Private_Clean:" | "Private_Dirty:" if !guest => use_.other_private += kib,
            "Pss:" if !guest => use_.other_pss += kib,
            "Anonymous:" if !guest => use_.other_anonymous += kib,
            _ => {}
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    use_.page_tables = status
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(use_)
}
