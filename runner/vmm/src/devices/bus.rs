//! Address-range dispatch for PIO and MMIO exits. Accesses that hit no
//! device are logged at debug level and ignored (reads see all ones, like
//! an ISA bus with nothing driving it): a guest probing hardware we do not
//! have must never bring the VMM down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Clone)]
struct Range {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Range>,
}

/// Inserting a range that overlaps an existing one.
#[derive(Debug, thiserror::Error)]
#[error("{bus} range {base:#x}+{len:#x} overlaps an existing device")]
pub struct OverlapError {
    pub bus: &'static str,
    pub base: u64,
    pub len: u64,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
        }
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), OverlapError> {
        let overlap = |b: u64, l: u64| base < b + l && b < base + len;
        if len == 0 || self.ranges.iter().any(|(b, r)| overlap(*b, r.len)) {
            return Err(OverlapError {
                bus: self.name,
                base,
                len,
            });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Range)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        (addr - base < range.len).then_some((addr - base, range))
    }

    /// Dispatches a read; returns false if no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, range)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                tracing::debug!(
                    bus = self.name,
                    addr,
                    len = data.len(),
                    "read of unmapped address"
                );
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, range)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => {
                tracing::debug!(bus = self.name, addr, ?data, "write to unmapped address");
                false
            }
        }
    }
}

/// A device whose lock was poisoned by a panic elsewhere is still usable
/// for register emulation; carrying on beats taking the VM down.
fn lock<'a>(
    dev: &'a Mutex<dyn BusDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_ignores_holes() {
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        let mut bus = Bus::new("pio");
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3f9, &[7]));
        assert!(!bus.write(0x400, &[1]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut bus = Bus::new("mmio");
        let a = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(a.clone(), 0x1000, 0x1000).unwrap();
        assert!(bus.insert(a.clone(), 0x1800, 0x1000).is_err());
        assert!(bus.insert(a.clone(), 0x0800, 0x1000).is_err());
        assert!(bus.insert(a.clone(), 0x2000, 0x1000).is_ok());
        assert!(bus.insert(a, 0x3000, 0).is_err());
    }
}
