//! Guest memory as the translator sees it: a flat guest-physical byte space behind [`GuestMem`].
//!
//! The root crate implements the trait over its RAM mapping and MMIO bus; [`FlatMem`] is a plain
//! RAM window for tests and the hardware oracle. Paging comes with the MMU increment, which will
//! translate linear to physical addresses in front of this trait.

/// An access to guest-physical memory that nothing backs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no guest memory for {len}-byte {} at {addr:#x}", if *.write { "write" } else { "read" })]
pub struct MemFault {
    /// First byte of the access.
    pub addr: u64,
    /// Length of the access in bytes.
    pub len: usize,
    /// Whether it was a write.
    pub write: bool,
}

/// Byte-addressed guest memory.
pub trait GuestMem {
    /// Fills `buf` from guest address `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    /// Writes `data` at guest address `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemFault>;
}

/// RAM covering `[base, base + len)`; anything outside faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatMem {
    /// Guest address of the first byte.
    pub base: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl FlatMem {
    /// `len` zeroed bytes at guest address `base`.
    pub fn new(base: u64, len: usize) -> Self {
        FlatMem {
            base,
            bytes: vec![0; len],
        }
    }

    /// The byte range for an access, if it lies entirely inside the window.
    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

impl GuestMem for FlatMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let fault = MemFault {
            addr,
            len: buf.len(),
            write: false,
        };
        let r = self.range(addr, buf.len()).ok_or(fault)?;
        buf.copy_from_slice(self.bytes.get(r).ok_or(fault)?);
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemFault> {
        let fault = MemFault {
            addr,
            len: data.len(),
            write: true,
        };
        let r = self.range(addr, data.len()).ok_or(fault)?;
        self.bytes.get_mut(r).ok_or(fault)?.copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_mem_bounds() {
        let mut m = FlatMem::new(0x1000, 16);
        m.write(0x100c, &[1, 2, 3, 4]).unwrap();
        let mut b = [0; 2];
        m.read(0x100d, &mut b).unwrap();
        assert_eq!(b, [2, 3]);
        assert!(m.write(0x100d, &[0; 4]).is_err());
        assert!(m.read(0xfff, &mut b).is_err());
        assert!(m.read(u64::MAX, &mut b).is_err());
    }
}
