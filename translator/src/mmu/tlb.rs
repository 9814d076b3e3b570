//! The software TLB: direct-mapped, one array per access kind, split by privilege.
//!
//! Each of the three arrays (read, write, fetch) has [`TLB_ENTRIES`] slots for supervisor
//! accesses followed by as many for user-mode accesses (CPL 3); the half is chosen once per
//! context ([`Tlb::half`]), so the hit path is: index = half | (page & mask), compare the tag
//! (the linear page number), use the physical page or host pointer. An entry exists only for an
//! access kind that passed its permission checks under the privilege of its half (a write
//! entry only once the page's dirty flag is set), so a hit needs no check at all.
//!
//! Entries are 4 KiB even when the guest maps a large page; [`Tlb::flush_page`] drops every
//! entry of a large page covering the address, using a QEMU-style bounding region of all the
//! large pages entered to keep INVLPG of small pages cheap.

use super::Access;

/// log2 of the number of slots per privilege half of each access kind.
pub const TLB_BITS: u32 = 9;
/// Slots per privilege half of each access kind.
pub const TLB_ENTRIES: usize = 1 << TLB_BITS;
/// Slots per access kind (both halves).
const SLOTS: usize = 2 * TLB_ENTRIES;
/// The tag of an empty slot (no linear page number is this large).
const INVALID: u64 = u64::MAX;
/// `meta` bit: the entry maps a global page.
const META_GLOBAL: u64 = 1;
/// `meta` bits 6:1: log2 of the guest page size the entry came from.
const META_SHIFT: u32 = 1;

/// One TLB slot; `#[repr(C)]` so generated code can inline the hit path (tag at offset 0,
/// host pointer at 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct TlbEntry {
    /// The linear page number (linear >> 12), or `u64::MAX` for an empty slot.
    pub tag: u64,
    /// The host address of the physical page when it is plain RAM, else null (MMIO).
    pub host: *mut u8,
    /// Physical page address (bits 63:12), global flag (bit 0), guest page-size shift (6:1).
    pub meta: u64,
}

impl TlbEntry {
    /// Byte offset of [`TlbEntry::tag`] (for generated code).
    pub const TAG_OFFSET: usize = std::mem::offset_of!(TlbEntry, tag);
    /// Byte offset of [`TlbEntry::host`] (for generated code).
    pub const HOST_OFFSET: usize = std::mem::offset_of!(TlbEntry, host);
    /// Bytes per entry (the stride of a TLB half).
    pub const SIZE: usize = std::mem::size_of::<TlbEntry>();

    /// A slot that matches no page (its tag is larger than any linear page number).
    pub const EMPTY: TlbEntry = TlbEntry {
        tag: INVALID,
        host: std::ptr::null_mut(),
        meta: 0,
    };

    /// An entry mapping linear page `vpn` (linear >> 12) to physical page address `phys_page`
    /// (`host` if plain RAM, else null), from a guest page of 2^`page_shift` bytes.
    pub fn new(vpn: u64, phys_page: u64, host: *mut u8, global: bool, page_shift: u32) -> Self {
        TlbEntry {
            tag: vpn,
            host,
            meta: (phys_page & !0xfff)
                | u64::from(global)
                | (u64::from(page_shift & 0x3f) << META_SHIFT),
        }
    }

    /// The physical address of the page's first byte.
    #[inline(always)]
    pub fn phys_page(&self) -> u64 {
        self.meta & !0xfff
    }

    /// Whether the entry maps a global page.
    pub fn global(&self) -> bool {
        self.meta & META_GLOBAL != 0
    }

    /// log2 of the guest page size this entry is part of (12, 21, 22 or 30).
    pub fn page_shift(&self) -> u32 {
        ((self.meta >> META_SHIFT) & 0x3f) as u32
    }
}

/// The TLB halves generated code may read to inline the hit path (see
/// [`crate::mem::GuestMem::fast_path`]).
///
/// Each pointer, when not null, is the first of [`TLB_ENTRIES`] [`TlbEntry`] slots of the
/// current privilege half; the slot of linear address `a` is `(a >> 12) & (TLB_ENTRIES - 1)`.
/// A slot whose `tag` equals `a >> 12` and whose `host` is not null allows that access kind
/// on the 4 KiB page of `a` at the current privilege, without any other check, through
/// `host + (a & 0xfff)` (for an access that does not cross the page end). A null pointer
/// means "no fast path for this kind": every access takes the helper.
///
/// Two pointers, so it is returned in registers (an `Option` around it would go through
/// memory: it is asked for at every block entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FastPath {
    /// Data reads.
    pub read: *const TlbEntry,
    /// Data writes (never an entry for a watched code page or a clean page).
    pub write: *const TlbEntry,
}

impl FastPath {
    /// No fast path: every access takes the helper.
    pub const NONE: FastPath = FastPath {
        read: std::ptr::null(),
        write: std::ptr::null(),
    };
}

/// Counters of the MMU's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmuStats {
    /// Accesses (or page pieces of split accesses) served by a TLB entry.
    pub hits: u64,
    /// Lookups that found no entry.
    pub misses: u64,
    /// Page walks done (misses with paging on).
    pub walks: u64,
    /// Page faults raised.
    pub faults: u64,
    /// Flushes that dropped something (all, non-global or page).
    pub flushes: u64,
    /// Writes into watched code pages (self-modifying code) recorded.
    pub code_writes: u64,
}

/// The software TLB (see the module documentation).
pub struct Tlb {
    /// Read, write and fetch arrays, indexed by `Access as usize`.
    sets: [Box<[TlbEntry; SLOTS]>; 3],
    /// Bounding region (base, mask) of every large page entered since the last full flush.
    large: Option<(u64, u64)>,
    /// Some slot may be valid.
    any: bool,
    /// Some slot may hold a non-global entry.
    non_global: bool,
    /// Slots (set × SLOTS + index) filled since the last full flush, so flushes visit only
    /// those (a CR3 load per munmap or context switch must not scan all 3 × 1024 slots);
    /// `None` once it grew past [`FILLED_LIMIT`] (flushes then scan everything).
    filled: Option<Vec<u16>>,
}

/// Past this many recorded fills a flush scans every slot instead.
const FILLED_LIMIT: usize = 3 * SLOTS;

impl std::fmt::Debug for Tlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tlb")
            .field("valid", &self.valid_entries())
            .field("large", &self.large)
            .finish()
    }
}

impl Default for Tlb {
    fn default() -> Self {
        Self::new()
    }
}

impl Tlb {
    /// An empty TLB.
    pub fn new() -> Self {
        let set = || Box::new([TlbEntry::EMPTY; SLOTS]);
        Tlb {
            sets: [set(), set(), set()],
            large: None,
            any: false,
            non_global: false,
            filled: Some(Vec::new()),
        }
    }

    /// The index base of a privilege half: user-mode accesses use the upper half.
    #[inline(always)]
    pub fn half(user_mode: bool) -> usize {
        if user_mode {
            TLB_ENTRIES
        } else {
            0
        }
    }

    /// The slot index of linear page `vpn` in `half`.
    #[inline(always)]
    fn index(half: usize, vpn: u64) -> usize {
        (half | (vpn as usize & (TLB_ENTRIES - 1))) & (SLOTS - 1)
    }

    /// The entry for linear page `vpn` (linear >> 12) and `access` in `half`, if cached.
    #[inline(always)]
    pub fn lookup(&self, access: Access, half: usize, vpn: u64) -> Option<&TlbEntry> {
        let e = &self.sets[access as usize][Self::index(half, vpn)];
        (e.tag == vpn).then_some(e)
    }

    /// Caches `entry` (made by [`TlbEntry::new`]) for `access` in `half`: the access kind passed
    /// its checks under that half's privilege.
    pub fn insert(&mut self, access: Access, half: usize, entry: TlbEntry) {
        let shift = entry.page_shift();
        if shift > 12 {
            self.note_large(entry.tag << 12, shift);
        }
        self.any = true;
        self.non_global |= !entry.global();
        let index = Self::index(half, entry.tag);
        let slot = &mut self.sets[access as usize][index];
        if slot.tag == INVALID {
            if let Some(list) = &mut self.filled {
                if list.len() < FILLED_LIMIT {
                    list.push((access as usize * SLOTS + index) as u16);
                } else {
                    self.filled = None;
                }
            }
        }
        *slot = entry;
    }

    /// Grows the large-page region to cover the page of 2^`shift` bytes holding `linear`.
    fn note_large(&mut self, linear: u64, shift: u32) {
        let mut mask = !((1u64 << shift) - 1);
        let mut base = linear & mask;
        if let Some((b, m)) = self.large {
            mask &= m;
            while (b & mask) != (base & mask) {
                mask <<= 1;
            }
            base &= mask;
        }
        self.large = Some((base, mask));
    }

    /// The first slot of `half` of the `access` array: [`TLB_ENTRIES`] consecutive entries,
    /// indexed by `vpn & (TLB_ENTRIES - 1)` ([`FastPath`]). The pointer stays valid while the
    /// TLB lives (the arrays are boxed and never reallocated); what it points at changes with
    /// every insert and flush.
    #[inline]
    pub fn half_ptr(&self, access: Access, half: usize) -> *const TlbEntry {
        let set = &self.sets[access as usize];
        set.get(half & TLB_ENTRIES..)
            .map_or(set.as_ptr(), <[TlbEntry]>::as_ptr)
    }

    /// Drops every entry (global ones too): CR0.PG/WP, CR4.PGE/PAE/PSE changes.
    pub fn flush_all(&mut self) -> bool {
        if !self.any {
            return false;
        }
        match self.filled.take() {
            Some(mut list) => {
                for &s in &list {
                    let (set, index) = (usize::from(s) / SLOTS, usize::from(s) % SLOTS);
                    if let Some(e) = self.sets.get_mut(set).and_then(|a| a.get_mut(index)) {
                        *e = TlbEntry::EMPTY;
                    }
                }
                list.clear();
                self.filled = Some(list);
            }
            None => {
                for set in &mut self.sets {
                    set.fill(TlbEntry::EMPTY);
                }
                self.filled = Some(Vec::new());
            }
        }
        self.large = None;
        self.any = false;
        self.non_global = false;
        true
    }

    /// Drops every non-global entry (a CR3 load).
    pub fn flush_non_global(&mut self) -> bool {
        if !self.non_global {
            return false;
        }
        let mut any = false;
        match self.filled.take() {
            Some(mut list) => {
                // Keep the slots that still hold (global) entries on the list.
                list.retain(|&s| {
                    let (set, index) = (usize::from(s) / SLOTS, usize::from(s) % SLOTS);
                    let Some(e) = self.sets.get_mut(set).and_then(|a| a.get_mut(index)) else {
                        return false;
                    };
                    if e.tag == INVALID {
                        false
                    } else if e.global() {
                        any = true;
                        true
                    } else {
                        *e = TlbEntry::EMPTY;
                        false
                    }
                });
                list.sort_unstable();
                list.dedup();
                self.filled = Some(list);
            }
            None => {
                let mut list = Vec::new();
                for (set_no, set) in self.sets.iter_mut().enumerate() {
                    for (index, e) in set.iter_mut().enumerate() {
                        if e.tag != INVALID {
                            if e.global() {
                                any = true;
                                list.push((set_no * SLOTS + index) as u16);
                            } else {
                                *e = TlbEntry::EMPTY;
                            }
                        }
                    }
                }
                self.filled = Some(list);
            }
        }
        self.any = any;
        self.non_global = false;
        true
    }

    /// Drops the entries of the page holding `linear` (INVLPG), global or not, in both halves
    /// and all access kinds, and every entry of a large page that covers it.
    pub fn flush_page(&mut self, linear: u64) -> bool {
        if !self.any {
            return false;
        }
        let vpn = linear >> 12;
        for set in &mut self.sets {
            for half in [0, TLB_ENTRIES] {
                let e = &mut set[Self::index(half, vpn)];
                if e.tag == vpn {
                    *e = TlbEntry::EMPTY;
                }
            }
        }
        if let Some((base, mask)) = self.large {
            if linear & mask == base {
                for set in &mut self.sets {
                    for e in set.iter_mut() {
                        let shift = e.page_shift();
                        if e.tag != INVALID
                            && shift > 12
                            && shift < 64
                            && (e.tag << 12) >> shift == linear >> shift
                        {
                            *e = TlbEntry::EMPTY;
                        }
                    }
                }
            }
        }
        true
    }

    /// Drops the write entries that map physical page address `phys_page` (it became a watched
    /// code page: its writes must take the slow path).
    pub fn drop_writes_to(&mut self, phys_page: u64) {
        let phys_page = phys_page & !0xfff;
        for e in self.sets[Access::Write as usize].iter_mut() {
            if e.tag != INVALID && e.phys_page() == phys_page {
                *e = TlbEntry::EMPTY;
            }
        }
    }

    /// How many slots are valid (diagnostics and tests).
    pub fn valid_entries(&self) -> usize {
        self.sets
            .iter()
            .map(|s| s.iter().filter(|e| e.tag != INVALID).count())
            .sum()
    }
}
