//! Guest physical memory: anonymous host mappings, one per RAM region, with the PC hole for MMIO.
//!
//! Layout (as QEMU's `pc` machine and Firecracker): RAM from 0 up to [`MMIO_HOLE_START`]; what
//! does not fit below the hole continues at 4 GiB. The mappings are handed to KVM as user memory
//! and read directly by the translator, so there are no copies.

use memmap2::MmapMut;

/// Start of the 32-bit MMIO hole (PCI, IOAPIC, LAPIC, firmware); RAM never lives here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole: RAM above the hole resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Smallest RAM size the machine accepts (the loaders need the low megabyte and some room).
pub const MIN_RAM: u64 = 2 << 20;
/// Largest RAM size the machine accepts.
pub const MAX_RAM: u64 = 1 << 40;

/// Errors from creating or accessing guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested RAM size is outside what the machine supports.
    #[error("memory size {size} bytes is out of range ({MIN_RAM}..={MAX_RAM}, multiple of 4 KiB)")]
    BadSize {
        /// The rejected size.
        size: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest RAM: {source}")]
    Map {
        /// Size of the failed mapping.
        size: u64,
        /// The host error.
        source: std::io::Error,
    },
    /// An access touches an address that is not RAM.
    #[error("guest physical range {addr:#x}+{len:#x} is not RAM")]
    OutOfRange {
        /// Start of the access.
        addr: u64,
        /// Length of the access.
        len: u64,
    },
}

/// One contiguous range of guest RAM backed by one host mapping.
pub struct RamRegion {
    guest_base: u64,
    map: MmapMut,
}

impl RamRegion {
    /// Guest physical address of the first byte.
    pub fn guest_base(&self) -> u64 {
        self.guest_base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Host address of the first byte (stable for the life of the region).
    pub fn host_addr(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }
}

/// All RAM of one machine.
pub struct GuestMemory {
    regions: Vec<RamRegion>,
    size: u64,
}

// SAFETY: the mappings are plain anonymous memory; concurrent guest access is by design (as
// with real RAM), and every host access below goes through bounds-checked raw copies.
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes of RAM in the PC layout.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if !(MIN_RAM..=MAX_RAM).contains(&size) || !size.is_multiple_of(4096) {
            return Err(MemoryError::BadSize { size });
        }
        let low = size.min(MMIO_HOLE_START);
        let mut ranges = vec![(0, low)];
        if size > low {
            ranges.push((MMIO_HOLE_END, size - low));
        }
        let regions = ranges
            .into_iter()
            .map(|(base, len)| {
                let map = MmapMut::map_anon(len as usize)
                    .map_err(|source| MemoryError::Map { size: len, source })?;
                Ok(RamRegion {
                    guest_base: base,
                    map,
                })
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        Ok(GuestMemory { regions, size })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RAM regions, in ascending guest address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// End of RAM below the 4 GiB hole (exclusive).
    pub fn low_ram_end(&self) -> u64 {
        self.regions[0].size()
    }

    /// Host pointer for `[addr, addr + len)` if the whole range is inside one RAM region.
    pub fn host_ptr(&self, addr: u64, len: u64) -> Result<*mut u8, MemoryError> {
        let err = || MemoryError::OutOfRange { addr, len };
        let end = addr.checked_add(len).ok_or_else(err)?;
        let r = self
            .regions
            .iter()
            .find(|r| addr >= r.guest_base && end <= r.guest_base + r.size())
            .ok_or_else(err)?;
        // SAFETY: the offset is inside the region's mapping, checked above.
        Ok(unsafe { r.host_addr().add((addr - r.guest_base) as usize) })
    }

    /// Whether `[addr, addr + len)` is RAM.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        self.host_ptr(addr, len).is_ok()
    }

    /// Copies guest RAM at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.host_ptr(addr, buf.len() as u64)?;
        // SAFETY: `p` is valid for `buf.len()` bytes (checked by `host_ptr`); no overlap with `buf`.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into guest RAM at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let p = self.host_ptr(addr, data.len() as u64)?;
        // SAFETY: `p` is valid for `data.len()` bytes (checked by `host_ptr`); no overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Fills `[addr, addr + len)` with zeros.
    pub fn zero(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let p = self.host_ptr(addr, len)?;
        // SAFETY: `p` is valid for `len` bytes (checked by `host_ptr`).
        unsafe { std::ptr::write_bytes(p, 0, len as usize) };
        Ok(())
    }

    /// Reads a little-endian u8/u16/u32/u64 (`N` = 1, 2, 4, 8).
    pub fn read_le<const N: usize>(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; N];
        self.read(addr, &mut b)?;
        Ok(b.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
    }

    /// Writes the low `N` bytes of `value` little-endian.
    pub fn write_le<const N: usize>(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        let b: [u8; N] = std::array::from_fn(|i| (value >> (8 * i)) as u8);
        self.write(addr, &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        let m = GuestMemory::new(16 << 20).unwrap();
        assert_eq!(m.regions().len(), 1);
        assert_eq!(m.low_ram_end(), 16 << 20);
        m.write_le::<4>(0x1000, 0xdead_beef).unwrap();
        assert_eq!(m.read_le::<4>(0x1000).unwrap(), 0xdead_beef);
        assert_eq!(m.read_le::<2>(0x1002).unwrap(), 0xdead);
    }

    #[test]
    fn ram_above_the_hole_resumes_at_4g() {
        let m = GuestMemory::new(MMIO_HOLE_START + (8 << 20)).unwrap();
        assert_eq!(m.regions().len(), 2);
        assert_eq!(m.regions()[1].guest_base(), MMIO_HOLE_END);
        assert!(!m.is_ram(MMIO_HOLE_START, 1));
        assert!(m.is_ram(MMIO_HOLE_END + (8 << 20) - 1, 1));
        assert!(!m.is_ram(MMIO_HOLE_END + (8 << 20) - 1, 2));
    }

    #[test]
    fn out_of_range_accesses_are_errors() {
        let m = GuestMemory::new(4 << 20).unwrap();
        let mut b = [0u8; 8];
        assert!(m.read((4 << 20) - 4, &mut b).is_err());
        assert!(m.write(u64::MAX - 2, &b).is_err());
        assert!(matches!(
            GuestMemory::new(1000),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            GuestMemory::new(1 << 20),
            Err(MemoryError::BadSize { .. })
        ));
    }
}
