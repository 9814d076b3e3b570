//! Guest-physical memory as the MMU sees it.

use std::ptr::NonNull;

use super::PAGE_SIZE;

/// A host pointer to one whole 4 KiB page of guest RAM, handed out by [`PhysMem::ram_page`].
///
/// Only [`RamPage::new`] (unsafe) makes one, so the promise behind the pointer is made once, by
/// the memory that owns the page, and the MMU can use the pointer on its TLB hit path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamPage(NonNull<u8>);

impl RamPage {
    /// Wraps the host address of a RAM page.
    ///
    /// # Safety
    /// For as long as the [`PhysMem`] that returns this value exists (it may be moved):
    /// - `ptr` points to 4096 bytes valid for reads and writes through `ptr` and pointers
    ///   derived from it, at any time the MMU is not inside a call to that `PhysMem`;
    /// - nothing holds a Rust reference (`&`/`&mut`) to those bytes while the MMU may use the
    ///   pointer (own them through a raw pointer or a mapping, as [`VecPhys`] does);
    /// - they are plain RAM: reading or writing them through the pointer is exactly
    ///   `read_phys`/`write_phys` of that page (no device behind them). If the memory map ever
    ///   changes (RAM unplugged, MMIO mapped over it), the MMU must be flushed
    ///   ([`super::SystemMem::flush_all`]) before the next access.
    pub unsafe fn new(ptr: NonNull<u8>) -> Self {
        RamPage(ptr)
    }

    /// The host address of the page's first byte.
    pub fn as_ptr(self) -> *mut u8 {
        self.0.as_ptr()
    }
}

/// Guest-physical memory (RAM and the MMIO bus) as the MMU reads and writes it.
///
/// Infallible like a bus: reads of unbacked addresses return all ones, writes to them are
/// dropped.
pub trait PhysMem {
    /// Fills `buf` from guest-physical `addr`.
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]);
    /// Writes `data` at guest-physical `addr`.
    fn write_phys(&mut self, addr: u64, data: &[u8]);
    /// The host address of RAM page `phys_page` (address >> 12), if the whole page is plain RAM
    /// (not MMIO): TLB hits then copy directly instead of calling `read_phys`/`write_phys`.
    fn ram_page(&mut self, _phys_page: u64) -> Option<RamPage> {
        None
    }
    /// Reads a little-endian u32 (a 32-bit paging entry).
    fn read_u32(&mut self, addr: u64) -> u32 {
        let mut b = [0; 4];
        self.read_phys(addr, &mut b);
        u32::from_le_bytes(b)
    }
    /// Reads a little-endian u64 (a PAE or 4-level paging entry).
    fn read_u64(&mut self, addr: u64) -> u64 {
        let mut b = [0; 8];
        self.read_phys(addr, &mut b);
        u64::from_le_bytes(b)
    }
    /// Writes a little-endian u32.
    fn write_u32(&mut self, addr: u64, value: u32) {
        self.write_phys(addr, &value.to_le_bytes());
    }
    /// Writes a little-endian u64.
    fn write_u64(&mut self, addr: u64, value: u64) {
        self.write_phys(addr, &value.to_le_bytes());
    }
}

/// RAM of `len` bytes at guest-physical 0; all ones / dropped above it (tests, small machines).
///
/// The bytes are owned through a raw pointer, never a long-lived reference, so the pointers
/// [`PhysMem::ram_page`] hands out stay valid while the methods run.
#[derive(Debug)]
pub struct VecPhys {
    /// Start of the allocation (from a leaked `Box<[u8]>`).
    ptr: NonNull<u8>,
    /// Length in bytes.
    len: usize,
}

// SAFETY: VecPhys owns its allocation exclusively; nothing else aliases it across threads.
unsafe impl Send for VecPhys {}

impl VecPhys {
    /// `len` zeroed bytes of RAM from physical address 0.
    pub fn new(len: usize) -> Self {
        let raw: *mut [u8] = Box::into_raw(vec![0u8; len].into_boxed_slice());
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        VecPhys { ptr, len }
    }

    /// The RAM size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no RAM at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The RAM as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe the live allocation; `&self` excludes writers through
        // `&mut self`, and pointers handed out by `ram_page` are only used by an MMU that
        // holds this value mutably.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The RAM as mutable bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The in-RAM part of `[addr, addr + n)`: (offset into RAM, offset into the buffer, length).
    fn overlap(&self, addr: u64, n: usize) -> Option<(usize, usize, usize)> {
        let end = addr.saturating_add(n as u64);
        let start = addr.min(self.len as u64);
        let stop = end.min(self.len as u64);
        (stop > start).then(|| {
            (
                start as usize,
                (start - addr) as usize,
                (stop - start) as usize,
            )
        })
    }
}

impl Drop for VecPhys {
    fn drop(&mut self) {
        let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: made by Box::into_raw in `new` with this length; dropped once.
        drop(unsafe { Box::from_raw(raw) });
    }
}

impl PhysMem for VecPhys {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        buf.fill(0xff);
        if let Some((ram, at, n)) = self.overlap(addr, buf.len()) {
            if let (Some(dst), Some(src)) =
                (buf.get_mut(at..at + n), self.bytes().get(ram..ram + n))
            {
                dst.copy_from_slice(src);
            }
        }
    }

    fn write_phys(&mut self, addr: u64, data: &[u8]) {
        if let Some((ram, at, n)) = self.overlap(addr, data.len()) {
            if let (Some(dst), Some(src)) =
                (self.bytes_mut().get_mut(ram..ram + n), data.get(at..at + n))
            {
                dst.copy_from_slice(src);
            }
        }
    }

    fn ram_page(&mut self, phys_page: u64) -> Option<RamPage> {
        let start = phys_page.checked_mul(PAGE_SIZE)?;
        if start.checked_add(PAGE_SIZE)? > self.len as u64 {
            return None;
        }
        // SAFETY: the page lies inside the allocation, which lives (and never moves or shrinks)
        // until `self` is dropped and is only ever accessed through raw pointers from `ptr`.
        let p = unsafe { self.ptr.as_ptr().add(start as usize) };
        // SAFETY: see RamPage::new; VecPhys meets every point of the contract.
        NonNull::new(p).map(|p| unsafe { RamPage::new(p) })
    }
}
