//! [`SystemMem`]: the full-system guest memory (MMU + TLB + physical memory).

use std::collections::HashSet;

use super::phys::PhysMem;
use super::tlb::{FastPath, MmuStats, Tlb, TlbEntry};
use super::walk::{walk, Translation};
use super::{Access, PagingContext, PagingMode, PAGE_SIZE};
use crate::mem::{GuestMem, StringOp};
use crate::sem::Exception;
use crate::state::CpuState;
use crate::system::TlbFlush;

/// Where one page of an access goes, once translated and checked.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// Physical address of the page's first byte.
    phys_page: u64,
    /// Host address of the page (RAM), or null (MMIO: go through [`PhysMem`]).
    host: *mut u8,
    /// A write must be recorded: the page is a watched code page.
    watched: bool,
}

/// Guest memory of the full system: linear addresses through the MMU onto [`PhysMem`].
///
/// Hot path: one direct-mapped TLB slot compared per access (no hashing, no allocation, no
/// dynamic call for RAM); everything else (walks, page-split accesses, MMIO, watched code
/// pages) is the slow path.
pub struct SystemMem {
    /// Guest-physical memory.
    phys: Box<dyn PhysMem + Send>,
    /// The paging context of the last [`SystemMem::set_context`].
    ctx: PagingContext,
    /// The cached translations.
    tlb: Tlb,
    /// TLB half of explicit accesses ([`Tlb::half`] of CPL 3).
    half: usize,
    /// Applied to every linear address ([`PagingContext::linear_mask`]).
    linear_mask: u64,
    /// Physical page numbers holding translated code.
    watched: HashSet<u64>,
    /// Watched pages written since the last [`GuestMem::take_code_writes`].
    code_writes: Vec<u64>,
    /// Counters.
    stats: MmuStats,
    /// The TLB halves of explicit accesses at the current privilege ([`GuestMem::fast_path`]),
    /// kept with `half` (the arrays are boxed: the pointers survive moves of `self`).
    fast: FastPath,
    /// REP MOVS/STOS run one element per execution ([`SystemMem::set_precise_strings`]).
    precise_strings: bool,
}

// SAFETY: the only non-Send fields are the TLB's host pointers, which point into `phys`'s RAM
// (RamPage contract: valid while `phys` lives, wherever it is moved); `phys` is Send and is
// moved together with them.
unsafe impl Send for SystemMem {}

impl std::fmt::Debug for SystemMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemMem")
            .field("ctx", &self.ctx)
            .field("tlb", &self.tlb)
            .field("watched", &self.watched.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl SystemMem {
    /// Guest memory over `phys`, paging off at CPL 0 until [`SystemMem::set_context`].
    pub fn new(phys: Box<dyn PhysMem + Send>) -> Self {
        let ctx = PagingContext::default();
        let tlb = Tlb::new();
        let fast = Self::fast_of(&tlb, 0);
        SystemMem {
            phys,
            ctx,
            tlb,
            half: 0,
            linear_mask: ctx.linear_mask(),
            watched: HashSet::new(),
            code_writes: Vec::new(),
            stats: MmuStats::default(),
            fast,
            precise_strings: false,
        }
    }

    /// With `on`, REP MOVS/STOS run one element per execution, as a single-stepped CPU
    /// retires them (the instruction trace and lockstep need that); off (the default), each
    /// execution first runs the elements on the current pages in bulk
    /// ([`GuestMem::string_bulk`]).
    pub fn set_precise_strings(&mut self, on: bool) {
        self.precise_strings = on;
    }

    /// The fast-path halves of `tlb` for explicit accesses in `half`.
    fn fast_of(tlb: &Tlb, half: usize) -> FastPath {
        FastPath {
            read: tlb.half_ptr(Access::Read, half),
            write: tlb.half_ptr(Access::Write, half),
        }
    }

    /// Takes the paging context from `cpu` (after every trap and mode change). A change of
    /// paging mode, CR0.WP, EFER.NXE, CR4.PSE or CR4.PGE flushes everything and a change of CR3
    /// the non-global entries, so no stale permission survives even if the caller forgets the
    /// [`TlbFlush`]; CPL only selects the TLB half.
    pub fn set_context(&mut self, cpu: &CpuState) {
        self.set_paging_context(PagingContext::of(cpu));
    }

    /// [`SystemMem::set_context`] from an already computed context.
    pub fn set_paging_context(&mut self, ctx: PagingContext) {
        let old = self.ctx;
        if (old.mode, old.wp, old.nxe, old.pse, old.pge)
            != (ctx.mode, ctx.wp, ctx.nxe, ctx.pse, ctx.pge)
        {
            self.flush_all();
        } else if old.cr3 != ctx.cr3 {
            self.flush_non_global();
        }
        self.ctx = ctx;
        self.half = Tlb::half(ctx.user());
        self.fast = Self::fast_of(&self.tlb, self.half);
        self.linear_mask = ctx.linear_mask();
    }

    /// The current paging context.
    pub fn context(&self) -> &PagingContext {
        &self.ctx
    }

    /// The physical memory (writes through it are not checked against watched code pages:
    /// report them with [`SystemMem::note_phys_write`]).
    pub fn phys_mut(&mut self) -> &mut dyn PhysMem {
        &mut *self.phys
    }

    /// Counters since creation.
    pub fn stats(&self) -> MmuStats {
        self.stats
    }

    /// The TLB (diagnostics and tests).
    pub fn tlb(&self) -> &Tlb {
        &self.tlb
    }

    /// Drops cached translations as a system instruction requires.
    pub fn flush(&mut self, what: TlbFlush) {
        match what {
            TlbFlush::All => self.flush_all(),
            TlbFlush::NonGlobal => self.flush_non_global(),
            TlbFlush::Page(linear) => self.flush_page(linear),
        }
    }

    /// Drops every cached translation, global ones included.
    pub fn flush_all(&mut self) {
        if self.tlb.flush_all() {
            self.stats.flushes += 1;
        }
    }

    /// Drops every non-global cached translation (a CR3 load).
    pub fn flush_non_global(&mut self) {
        if self.tlb.flush_non_global() {
            self.stats.flushes += 1;
        }
    }

    /// Drops the translations of the page holding `linear` (INVLPG), including a large page
    /// covering it.
    pub fn flush_page(&mut self, linear: u64) {
        if self.tlb.flush_page(linear & self.linear_mask) {
            self.stats.flushes += 1;
        }
    }

    /// Something other than the CPU (DMA, a loader) wrote `[phys, phys + len)`: records the
    /// watched code pages it touched.
    pub fn note_phys_write(&mut self, phys: u64, len: u64) {
        if self.watched.is_empty() || len == 0 {
            return;
        }
        let first = phys >> 12;
        let last = phys.saturating_add(len - 1) >> 12;
        for page in first..=last {
            self.record_code_write(page);
        }
    }

    /// Translates `linear` for an `access` at the current privilege (filling the TLB): the
    /// physical address, or the fault the access would raise.
    pub fn translate(&mut self, linear: u64, access: Access) -> Result<u64, Exception> {
        let linear = linear & self.linear_mask;
        let t = self.target(linear, access, self.half, false)?;
        Ok(t.phys_page | (linear & (PAGE_SIZE - 1)))
    }

    /// Records a write into physical page `page` if it is watched, and unwatches it (the
    /// engine re-watches when it translates the page again).
    fn record_code_write(&mut self, page: u64) {
        if self.watched.remove(&page) {
            self.code_writes.push(page);
            self.stats.code_writes += 1;
        }
    }

    /// The checked destination of the page holding `linear` (already masked) for `access` in
    /// TLB `half`: from the TLB, else by a walk that fills it.
    fn target(
        &mut self,
        linear: u64,
        access: Access,
        half: usize,
        implicit: bool,
    ) -> Result<Target, Exception> {
        let vpn = linear >> 12;
        if let Some(e) = self.tlb.lookup(access, half, vpn) {
            self.stats.hits += 1;
            // Write entries never exist for watched pages; reads and fetches never record.
            return Ok(Target {
                phys_page: e.phys_page(),
                host: e.host,
                watched: false,
            });
        }
        self.stats.misses += 1;
        let t = if self.ctx.mode == PagingMode::None {
            Translation::identity(linear)
        } else {
            self.stats.walks += 1;
            let ctx = self.ctx;
            walk(&mut *self.phys, &ctx, linear, access, implicit).inspect_err(|_| {
                self.stats.faults += 1;
            })?
        };
        let phys_page = t.phys & !(PAGE_SIZE - 1);
        let pfn = phys_page >> 12;
        let host = self
            .phys
            .ram_page(pfn)
            .map_or(std::ptr::null_mut(), |p| p.as_ptr());
        let watched = self.watched.contains(&pfn);
        let user_mode = half != 0;
        let entry = TlbEntry::new(vpn, phys_page, host, t.global, t.page_size.trailing_zeros());
        // Fill every kind this translation already permits without further side effects: a
        // write entry needs the dirty flag set and an unwatched page.
        for kind in Access::ALL {
            if t.permits(kind, user_mode, self.ctx.wp)
                && (kind != Access::Write || (t.dirty && !watched))
            {
                self.tlb.insert(kind, half, entry);
            }
        }
        Ok(Target {
            phys_page,
            host,
            watched: watched && access == Access::Write,
        })
    }

    /// A read or fetch of `buf.len()` bytes at masked `linear` that missed the single-page
    /// fast path: every page is translated and checked before any byte is read (MMIO reads
    /// have side effects).
    #[inline(never)]
    fn read_slow(
        &mut self,
        linear: u64,
        buf: &mut [u8],
        access: Access,
        half: usize,
        implicit: bool,
    ) -> Result<(), Exception> {
        let first = self.check_pages(linear, buf.len(), access, half, implicit)?;
        let mut done = 0;
        let mut addr = linear;
        let mut i = 0;
        while done < buf.len() {
            let off = (addr & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            let t = match first.get(i).copied().flatten() {
                Some(t) => t,
                None => self.target(addr, access, half, implicit)?,
            };
            if let Some(dst) = buf.get_mut(done..done + n) {
                if t.host.is_null() {
                    self.phys.read_phys(t.phys_page | off as u64, dst);
                } else {
                    // SAFETY: RamPage contract: `host` is a live 4 KiB RAM page; off + n <= 4096.
                    unsafe { std::ptr::copy_nonoverlapping(t.host.add(off), dst.as_mut_ptr(), n) };
                }
            }
            done += n;
            addr = addr.wrapping_add(n as u64) & self.linear_mask;
            i += 1;
        }
        Ok(())
    }

    /// A write that missed the single-page fast path: every page is translated and checked
    /// (and its dirty flag set) before any byte is written, so a fault on a later page writes
    /// nothing.
    #[inline(never)]
    fn write_slow(
        &mut self,
        linear: u64,
        data: &[u8],
        half: usize,
        implicit: bool,
    ) -> Result<(), Exception> {
        let first = self.check_pages(linear, data.len(), Access::Write, half, implicit)?;
        let mut done = 0;
        let mut addr = linear;
        let mut i = 0;
        while done < data.len() {
            let off = (addr & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(data.len() - done);
            let t = match first.get(i).copied().flatten() {
                Some(t) => t,
                None => self.target(addr, Access::Write, half, implicit)?,
            };
            if t.watched {
                self.record_code_write(t.phys_page >> 12);
            }
            if let Some(src) = data.get(done..done + n) {
                if t.host.is_null() {
                    self.phys.write_phys(t.phys_page | off as u64, src);
                } else {
                    // SAFETY: RamPage contract: `host` is a live 4 KiB RAM page; off + n <= 4096.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), t.host.add(off), n) };
                }
            }
            done += n;
            addr = addr.wrapping_add(n as u64) & self.linear_mask;
            i += 1;
        }
        Ok(())
    }

    /// Translates and checks every page of `[linear, linear + len)`; returns the targets of
    /// the first two (an access longer than a page re-translates the rest, from the TLB).
    fn check_pages(
        &mut self,
        linear: u64,
        len: usize,
        access: Access,
        half: usize,
        implicit: bool,
    ) -> Result<[Option<Target>; 2], Exception> {
        let mut first = [None; 2];
        let mut done = 0;
        let mut addr = linear;
        let mut i = 0;
        while done < len {
            let n = (PAGE_SIZE - (addr & (PAGE_SIZE - 1))) as usize;
            let t = self.target(addr, access, half, implicit)?;
            if let Some(slot) = first.get_mut(i) {
                *slot = Some(t);
            }
            done += n;
            addr = addr.wrapping_add(n as u64) & self.linear_mask;
            i += 1;
        }
        Ok(first)
    }

    /// The single-page fast path of reads and fetches; `false` when the slow path must run.
    #[inline(always)]
    fn read_fast(&mut self, linear: u64, buf: &mut [u8], access: Access, half: usize) -> bool {
        let off = (linear & (PAGE_SIZE - 1)) as usize;
        if off + buf.len() > PAGE_SIZE as usize {
            return false;
        }
        let Some(e) = self.tlb.lookup(access, half, linear >> 12) else {
            return false;
        };
        let (host, phys_page) = (e.host, e.phys_page());
        self.stats.hits += 1;
        if host.is_null() {
            self.phys.read_phys(phys_page | off as u64, buf);
        } else {
            // SAFETY: RamPage contract: `host` is a live 4 KiB RAM page and
            // off + len <= 4096 (checked above).
            unsafe { copy_small(host.add(off), buf.as_mut_ptr(), buf.len()) };
        }
        true
    }

    /// The single-page fast path of writes; `false` when the slow path must run.
    #[inline(always)]
    fn write_fast(&mut self, linear: u64, data: &[u8], half: usize) -> bool {
        let off = (linear & (PAGE_SIZE - 1)) as usize;
        if off + data.len() > PAGE_SIZE as usize {
            return false;
        }
        let Some(e) = self.tlb.lookup(Access::Write, half, linear >> 12) else {
            return false;
        };
        let (host, phys_page) = (e.host, e.phys_page());
        self.stats.hits += 1;
        if host.is_null() {
            self.phys.write_phys(phys_page | off as u64, data);
        } else {
            // SAFETY: as in read_fast.
            unsafe { copy_small(data.as_ptr(), host.add(off), data.len()) };
        }
        true
    }
}

/// Copies `n` bytes, with fixed-size copies for the common operand sizes (avoids a memcpy
/// call on the hit path).
///
/// # Safety
/// As for [`std::ptr::copy_nonoverlapping`].
#[inline(always)]
unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller guarantees `n` valid, non-overlapping bytes at both ends.
    unsafe {
        match n {
            1 => *dst = *src,
            2 => std::ptr::copy_nonoverlapping(src, dst, 2),
            4 => std::ptr::copy_nonoverlapping(src, dst, 4),
            8 => std::ptr::copy_nonoverlapping(src, dst, 8),
            _ => std::ptr::copy_nonoverlapping(src, dst, n),
        }
    }
}

impl GuestMem for SystemMem {
    #[inline]
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        let linear = addr & self.linear_mask;
        let half = self.half;
        if self.read_fast(linear, buf, Access::Read, half) {
            return Ok(());
        }
        self.read_slow(linear, buf, Access::Read, half, false)
    }

    #[inline]
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
        let linear = addr & self.linear_mask;
        let half = self.half;
        if self.write_fast(linear, data, half) {
            return Ok(());
        }
        self.write_slow(linear, data, half, false)
    }

    #[inline]
    fn read_for_write(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        // Translated as a write: the write TLB serves it (its entries exist only for dirty,
        // unwatched pages); a miss walks for writing (sets A and D, as the store will).
        let linear = addr & self.linear_mask;
        let half = self.half;
        if self.read_fast(linear, buf, Access::Write, half) {
            return Ok(());
        }
        self.read_slow(linear, buf, Access::Write, half, false)
    }

    fn fetch(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        let linear = addr & self.linear_mask;
        let half = self.half;
        if self.read_fast(linear, buf, Access::Execute, half) {
            return Ok(());
        }
        self.read_slow(linear, buf, Access::Execute, half, false)
    }

    fn read_system(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        // Implicit supervisor accesses have supervisor rights: the supervisor half serves them.
        let linear = addr & self.linear_mask;
        if self.read_fast(linear, buf, Access::Read, 0) {
            return Ok(());
        }
        self.read_slow(linear, buf, Access::Read, 0, true)
    }

    fn write_system(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
        let linear = addr & self.linear_mask;
        if self.write_fast(linear, data, 0) {
            return Ok(());
        }
        self.write_slow(linear, data, 0, true)
    }

    fn code_phys(&mut self, addr: u64) -> Result<u64, Exception> {
        self.translate(addr, Access::Execute)
    }

    fn watch_code_page(&mut self, phys_page: u64) {
        if self.watched.insert(phys_page) {
            self.tlb.drop_writes_to(phys_page << 12);
        }
    }

    fn code_write_pending(&self) -> bool {
        !self.code_writes.is_empty()
    }

    fn take_code_writes(&mut self, pages: &mut Vec<u64>) -> bool {
        if self.code_writes.is_empty() {
            return false;
        }
        pages.append(&mut self.code_writes);
        true
    }

    fn string_bulk(
        &mut self,
        op: StringOp,
        size: u8,
        src: u64,
        dst: u64,
        count: u64,
        value: u64,
    ) -> u64 {
        if self.precise_strings || !matches!(size, 1 | 2 | 4 | 8) {
            return 0;
        }
        let size64 = u64::from(size);
        let (src, dst) = (src & self.linear_mask, dst & self.linear_mask);
        // Whole elements left on the page of `a` (an element straddling the end: none).
        let room = |a: u64| (PAGE_SIZE - (a & (PAGE_SIZE - 1))) / size64;
        let mut n = count.min(room(dst));
        if op == StringOp::Movs {
            n = n.min(room(src));
        }
        if n == 0 {
            return 0;
        }
        let half = self.half;
        // Translating for writing sets the accessed and dirty flags, as the first store would.
        let Ok(d) = self.target(dst, Access::Write, half, false) else {
            return 0;
        };
        if d.watched || d.host.is_null() {
            return 0;
        }
        let len = (n * size64) as usize;
        let off = (dst & (PAGE_SIZE - 1)) as usize;
        // SAFETY: `d.host` is the host address of a whole RAM page (RamPage contract) and
        // `off + len` <= PAGE_SIZE by the room computation.
        let to = unsafe { d.host.add(off) };
        match op {
            StringOp::Stos => {
                let pattern = value.to_le_bytes();
                let elem = &pattern[..usize::from(size)];
                for i in 0..n as usize {
                    // SAFETY: within the page, as above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            elem.as_ptr(),
                            to.add(i * elem.len()),
                            elem.len(),
                        )
                    };
                }
            }
            StringOp::Movs => {
                let Ok(s) = self.target(src, Access::Read, half, false) else {
                    return 0;
                };
                if s.host.is_null() {
                    return 0;
                }
                // SAFETY: as for the destination.
                let from = unsafe { s.host.add((src & (PAGE_SIZE - 1)) as usize) };
                let (f, t) = (from as usize, to as usize);
                if t > f && t < f + len {
                    // A forward copy onto its own tail replicates: element by element.
                    return 0;
                }
                // SAFETY: both ranges lie in RAM pages; with the destination below (or
                // disjoint from) the source, `copy` (memmove) equals the forward copy.
                unsafe { std::ptr::copy(from, to, len) };
            }
        }
        self.stats.hits += 1;
        n
    }

    #[inline]
    fn fast_path(&mut self) -> FastPath {
        // Write entries never map watched pages, and a write entry's hit has no side effect
        // but the bytes, except that the helper path reports a code write still pending from
        // before (jit_store checks code_write_pending after every store): keep that exact.
        let mut f = self.fast;
        if !self.code_writes.is_empty() {
            f.write = std::ptr::null();
        }
        f
    }
}
