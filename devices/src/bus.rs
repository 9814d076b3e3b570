//! The device bus: address ranges mapped to devices, one instance for port I/O and one for MMIO.
//!
//! Both backends dispatch guest accesses here; devices never learn which backend drove them.
//! Accesses that hit no device read as all-ones and are dropped on write (logged at debug
//! level), as on a PC where nothing claims the cycle.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A device model reachable through a bus range.
///
/// `offset` is relative to the start of the range the device was registered at; `data.len()`
/// is the access size (1, 2, 4 or 8 bytes, little-endian).
pub trait BusDevice: Send {
    /// Handles a guest read; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shareable handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from registering a device on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Which address space a bus serves; used only in log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// x86 port I/O (`in`/`out`).
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Pio => "pio",
            BusKind::Mmio => "mmio",
        })
    }
}

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
pub struct Bus {
    kind: BusKind,
    /// Sorted by `base`.
    entries: Vec<Entry>,
}

impl Bus {
    /// Creates an empty bus of the given kind.
    pub fn new(kind: BusKind) -> Self {
        Bus {
            kind,
            entries: Vec::new(),
        }
    }

    /// Registers `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let end = base + (len - 1);
        if self
            .entries
            .iter()
            .any(|e| base <= e.base + (e.len - 1) && e.base <= end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        (addr - e.base < e.len).then_some(e)
    }

    /// Whether any device claims `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr).is_some()
    }

    /// Dispatches a read; unclaimed addresses read as all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some(e) => lock(&e.device).read(addr - e.base, data),
            None => {
                log::debug!(
                    "{} read of {} bytes at {addr:#x}: no device",
                    self.kind,
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    /// Dispatches a write; unclaimed addresses ignore it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some(e) => lock(&e.device).write(addr - e.base, data),
            None => log::debug!(
                "{} write of {:02x?} at {addr:#x}: no device",
                self.kind,
                data
            ),
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panic in one access must not wedge the bus.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Assembles a little-endian value from an access of 1..=8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i)))
}

/// Fills an access of 1..=8 bytes with the low bytes of `value`, little-endian.
pub fn fill_le(data: &mut [u8], value: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = if i < 8 { (value >> (8 * i)) as u8 } else { 0 };
    }
}

/// Register `i` bytes into an access at `offset`, if it is one of a device's `len` registers.
fn byte_register(offset: u64, i: usize, len: u64) -> Option<u64> {
    let reg = offset.checked_add(u64::try_from(i).ok()?)?;
    (reg < len).then_some(reg)
}

/// Splits a read into byte cycles on consecutive 8-bit registers, as the ISA bus does for a
/// wide access to an 8-bit device: byte `i` of `data` is `read_byte(offset + i)`, and bytes past
/// the device's `len` registers read as an empty port (all-ones).
pub fn read_bytewise(offset: u64, len: u64, data: &mut [u8], mut read_byte: impl FnMut(u64) -> u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = byte_register(offset, i, len).map_or(0xff, &mut read_byte);
    }
}

/// Splits a write into byte cycles on consecutive 8-bit registers (see [`read_bytewise`]):
/// `write_byte(offset + i, data[i])` in order; bytes past the device's `len` registers are dropped.
pub fn write_bytewise(offset: u64, len: u64, data: &[u8], mut write_byte: impl FnMut(u64, u8)) {
    for (i, &b) in data.iter().enumerate() {
        if let Some(reg) = byte_register(offset, i, len) {
            write_byte(reg, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Latch(u8);
    impl BusDevice for Latch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn unclaimed_reads_all_ones_and_writes_are_ignored() {
        let bus = Bus::new(BusKind::Pio);
        let mut d = [0u8; 4];
        bus.read(0x80, &mut d);
        assert_eq!(d, [0xff; 4]);
        bus.write(0x80, &[1, 2]);
    }

    #[test]
    fn dispatches_with_relative_offset_and_rejects_overlap() {
        let mut bus = Bus::new(BusKind::Pio);
        bus.insert(0x10, 4, Arc::new(Mutex::new(Latch(5)))).unwrap();
        assert_eq!(
            bus.insert(0x13, 2, Arc::new(Mutex::new(Latch(0)))),
            Err(BusError::Overlap { base: 0x13, len: 2 })
        );
        bus.insert(0x14, 2, Arc::new(Mutex::new(Latch(0)))).unwrap();
        bus.insert(0x0, 0x10, Arc::new(Mutex::new(Latch(0))))
            .unwrap();
        let mut d = [0u8; 1];
        bus.read(0x12, &mut d);
        assert_eq!(d, [7]);
        bus.write(0x10, &[9]);
        bus.read(0x10, &mut d);
        assert_eq!(d, [9]);
        assert!(!bus.contains(0x16));
        assert_eq!(
            bus.insert(u64::MAX, 2, Arc::new(Mutex::new(Latch(0)))),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
    }

    #[test]
    fn le_helpers_round_trip() {
        let mut d = [0u8; 4];
        fill_le(&mut d, 0x1234_5678_9abc);
        assert_eq!(d, [0xbc, 0x9a, 0x78, 0x56]);
        assert_eq!(le_value(&d), 0x5678_9abc);
    }

    #[test]
    fn bytewise_helpers_split_in_order_and_clip_at_the_device_end() {
        let mut seen = Vec::new();
        let mut d = [0u8; 4];
        read_bytewise(2, 4, &mut d, |r| {
            seen.push(r);
            0x10 + r as u8
        });
        assert_eq!(d, [0x12, 0x13, 0xff, 0xff]);
        assert_eq!(seen, [2, 3]);
        let mut writes = Vec::new();
        write_bytewise(1, 3, &[7, 8, 9], |r, v| writes.push((r, v)));
        assert_eq!(writes, [(1, 7), (2, 8)]);
        // Offsets at the top of the address space neither wrap nor panic.
        read_bytewise(u64::MAX, u64::MAX, &mut d, |_| 0);
        assert_eq!(d, [0xff; 4]);
        write_bytewise(u64::MAX - 1, u64::MAX, &[1, 2, 3], |r, _| {
            assert_eq!(r, u64::MAX - 1)
        });
    }
}
