//! Bytes and entries a destination may receive, charged from the headers
//! before anything is written: a sparse 50 GB file, a layer that unpacks to
//! terabytes or millions of empty files are refused without being written.

use crate::error::{Error, OverBudget};

/// Raw stream bytes allowed per entry on top of its content: header,
/// padding and a GNU long name (extension headers are capped on their own,
/// in stream.rs).
const FRAMING_PER_ENTRY: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of content: files' sizes as their headers say, and copies of
    /// hard-linked files.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Limits {
    /// For a stream from a trusted sender, whose destination is bounded
    /// otherwise (the guest's own disk).
    pub const UNLIMITED: Limits = Limits {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
    };
}

/// What has been used of [`Limits`], across as many streams as the caller
/// charges to it (a job's artifact transfers, an image's layers).
#[derive(Clone, Debug)]
pub struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes and entries charged so far.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes, self.entries)
    }

    pub(crate) fn charge(&mut self, entry: &str, entries: u64, bytes: u64) -> Result<(), Error> {
        let max = self.limits;
        if self.entries.saturating_add(entries) > max.max_entries {
            return Err(Error::OverBudget(OverBudget::Entries {
                entry: entry.to_string(),
                max: max.max_entries,
            }));
        }
        if self.bytes.saturating_add(bytes) > max.max_bytes {
            return Err(Error::OverBudget(OverBudget::Bytes {
                entry: entry.to_string(),
                size: bytes,
                max: max.max_bytes,
            }));
        }
        self.entries += entries;
        self.bytes += bytes;
        Ok(())
    }

    /// Raw stream bytes the rest of the budget can justify.
    pub(crate) fn stream_allowance(&self) -> u64 {
        let entries_left = self
            .limits
            .max_entries
            .saturating_sub(self.entries)
            .saturating_add(2);
        self.limits
            .max_bytes
            .saturating_sub(self.bytes)
            .saturating_add(entries_left.saturating_mul(FRAMING_PER_ENTRY))
    }
}
