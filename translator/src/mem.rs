//! Guest memory as the translator sees it: linear addresses behind [`GuestMem`].
//!
//! Every access the semantics makes goes through this trait with a *linear* address (segment
//! base already added). An implementation translates it (through the MMU when paging is on),
//! checks permissions and reports a refused access as the guest exception it causes
//! ([`Exception::PageFault`], ...). [`FlatMem`] is a plain RAM window where linear equals
//! physical, for tests and the hardware oracle; the full-system memory (MMU + RAM + MMIO) is
//! [`crate::mmu::SystemMem`].

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

use crate::sem::Exception;

/// The repeated string operations memory can run in bulk ([`GuestMem::string_bulk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StringOp {
    /// REP MOVS: copy elements from the source to the destination.
    Movs = 0,
    /// REP STOS: store the accumulator's low bytes into elements of the destination.
    Stos = 1,
}

/// Byte-addressed guest memory, by linear address.
pub trait GuestMem {
    /// Runs up to `count` forward iterations (DF = 0) of a REP MOVS/STOS with `size`-byte
    /// elements whose next element is at linear `src` (MOVS) and `dst`, as one bulk operation,
    /// and returns how many it ran: only whole elements on the current source and destination
    /// pages, only where every one of them would succeed (RAM, mapped with the needed rights,
    /// no translated code on the destination page, no overlap a forward copy would
    /// propagate), else fewer — down to 0, which leaves the element-by-element path (exact
    /// faults) to the caller. The default runs none.
    fn string_bulk(
        &mut self,
        _op: StringOp,
        _size: u8,
        _src: u64,
        _dst: u64,
        _count: u64,
        _value: u64,
    ) -> u64 {
        0
    }
    /// Fills `buf` from linear address `addr` (a data read at the current privilege level).
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception>;
    /// Writes `data` at linear address `addr` (a data write at the current privilege level).
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception>;
    /// Reads the destination of a read-modify-write instruction (ADD/INC/SHL/XCHG/... to
    /// memory): the CPU translates it for writing, so a not-present or read-only page faults
    /// with the W/R bit of the #PF error code set, before anything is written.
    fn read_for_write(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        self.read(addr, buf)
    }
    /// Fetches instruction bytes at linear address `addr` (execute permission).
    fn fetch(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        self.read(addr, buf)
    }
    /// Reads a system structure (GDT, LDT, IDT, TSS) at linear `addr`: an implicit supervisor
    /// access whatever the CPL (SDM Vol. 3 §4.6.1).
    fn read_system(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        self.read(addr, buf)
    }
    /// Writes a system structure (descriptor accessed/busy bits, interrupt frames pushed by
    /// delivery are *not* system accesses) at linear `addr` as an implicit supervisor access.
    fn write_system(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
        self.write(addr, data)
    }
    /// The physical address of the code byte at linear `addr` (the translation cache key);
    /// identity where linear is physical.
    fn code_phys(&mut self, addr: u64) -> Result<u64, Exception> {
        Ok(addr)
    }
    /// The engine holds translations of physical page `phys_page` (address >> 12): writes
    /// into it must be reported through [`GuestMem::take_code_writes`].
    fn watch_code_page(&mut self, _phys_page: u64) {}
    /// Whether a store hit a watched page since the last [`GuestMem::take_code_writes`]: the
    /// tiers end the running block after the storing instruction, so the rest of the block's
    /// (possibly rewritten) bytes are decoded again.
    fn code_write_pending(&self) -> bool {
        false
    }
    /// Appends the watched physical pages written since the last call to `pages`; returns
    /// whether there were any (cheap when none: the engine asks after every block).
    fn take_code_writes(&mut self, _pages: &mut Vec<u64>) -> bool {
        false
    }
    /// The TLB halves compiled code may read to serve [`GuestMem::read`]/[`GuestMem::write`]
    /// hits inline, valid until the next call of any other method (which may change the
    /// privilege half); [`crate::mmu::FastPath::NONE`] (the default) sends every access
    /// through the methods. Called at every compiled-block entry: keep it cheap.
    ///
    /// An implementation promises that an access the [`crate::mmu::FastPath`] allows behaves
    /// exactly as the method would (no fault, no side effect besides the bytes, no code write
    /// to record), and hands out no write half while [`GuestMem::code_write_pending`] holds.
    fn fast_path(&mut self) -> crate::mmu::FastPath {
        crate::mmu::FastPath::NONE
    }
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
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        let fault = MemFault {
            addr,
            len: buf.len(),
            write: false,
        };
        let r = self.range(addr, buf.len()).ok_or(fault)?;
        buf.copy_from_slice(self.bytes.get(r).ok_or(fault)?);
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
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
