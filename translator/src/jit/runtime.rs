//! The run-time side of compiled blocks: the context they run in and the Rust helpers they call.
//!
//! Generated code touches only the `u64` and pointer fields of [`RunCtx`] (at `offset_of!`
//! offsets); the helpers are plain `extern "C"` functions called through a function-pointer
//! constant. Loads and stores first try the inline TLB hit path through [`RunCtx::tlb_read`] /
//! [`RunCtx::tlb_write`] and call the helpers only on a miss. A helper reports a fault by
//! setting [`RunCtx::status`] (loads and the division) or by its return value (stores); the
//! block then leaves through a side exit.

use crate::mem::GuestMem;
use crate::mmu::tlb::TLB_ENTRIES;
use crate::mmu::TlbEntry;
use crate::sem::Exception;
use std::cell::Cell;
use std::ptr::NonNull;

/// A TLB half with no valid slot: the table generated code reads when the memory has no fast
/// path (or none for that access kind), so every access takes the helper without a null check.
#[repr(C)]
struct NoTlb([TlbEntry; TLB_ENTRIES]);

// SAFETY: never written; the host pointers in it are all null.
unsafe impl Sync for NoTlb {}

/// The empty half behind every missing fast-path table.
static NO_TLB: NoTlb = NoTlb([TlbEntry::EMPTY; TLB_ENTRIES]);

/// `p`, or the empty half when `p` is null.
#[inline]
fn table_or_empty(p: *const TlbEntry) -> *const TlbEntry {
    if p.is_null() {
        NO_TLB.0.as_ptr()
    } else {
        p
    }
}

/// What a compiled block needs besides the `CpuState`: guest memory and scratch for helpers.
#[repr(C)]
pub struct RunCtx<'a> {
    /// Set non-zero by a load helper that faulted (never cleared inside a block run).
    pub status: u64,
    /// Quotient written by [`jit_div_wide`].
    pub div_q: u64,
    /// Remainder written by [`jit_div_wide`].
    pub div_r: u64,
    /// Set to 1 by a store that hit a page holding translations: the block ends after the
    /// storing instruction (self-modifying code).
    pub code_written: u64,
    /// The read half of the current TLB ([`crate::mmu::FastPath::read`]), never null: the
    /// empty half when the memory has no fast path. Constant during a block run.
    pub tlb_read: *const TlbEntry,
    /// The write half ([`crate::mmu::FastPath::write`]), never null, as `tlb_read`.
    pub tlb_write: *const TlbEntry,
    /// Instructions chained blocks may still run: a block jumps to a linked successor only
    /// when its own executed count plus the successor's length fits, and then subtracts its
    /// count (0: no chaining; see [`crate::jit`], "Chaining").
    pub chain_budget: u64,
    /// The engine's chain epoch: a link cell is used only when its epoch equals this.
    pub chain_epoch: u64,
    /// Chain jumps taken in compiled code during this run.
    pub chained: u64,
    /// The link cell of the chainable exit the run returned through without chaining
    /// (a `*const LinkCell`; 0 when the last exit was not chainable): the dispatcher fills it.
    pub exit_cell: u64,
    /// The `*const BlockMeta` of the block that left through an exception exit (whose table
    /// the exit code indexes); 0 until one does.
    pub exc_meta: u64,
    /// The memory fault (page fault, unbacked access, ...) that ended the block, if any.
    pub fault: Option<Exception>,
    /// Guest memory the helpers access.
    pub mem: &'a mut dyn GuestMem,
}

impl<'a> RunCtx<'a> {
    /// A context over `mem` with no fault recorded, with `mem`'s current fast-path tables
    /// ([`GuestMem::fast_path`]; taken afresh for every block run, since the privilege half
    /// may differ between runs).
    pub fn new(mem: &'a mut dyn GuestMem) -> Self {
        let f = mem.fast_path();
        RunCtx {
            status: 0,
            div_q: 0,
            div_r: 0,
            code_written: 0,
            chain_budget: 0,
            chain_epoch: 0,
            chained: 0,
            exit_cell: 0,
            exc_meta: 0,
            tlb_read: table_or_empty(f.read),
            tlb_write: table_or_empty(f.write),
            fault: None,
            mem,
        }
    }
}

/// A compiled block's link to the successor at one static exit RIP, read by the block's code
/// at its embedded address: chain to `target` when `epoch` is the current chain epoch and
/// `len` instructions still fit the budget. Written only by the dispatcher, between runs.
#[repr(C)]
#[derive(Debug, Default)]
pub struct LinkCell {
    /// Host entry of the successor's compiled code (a tail-call-convention block function).
    pub target: Cell<u64>,
    /// The chain epoch the link was made in (0: never; epochs start at 1).
    pub epoch: Cell<u64>,
    /// The successor's compiled length (instructions).
    pub len: Cell<u64>,
    /// The guest RIP of the exit this cell serves (constant after compilation): the
    /// dispatcher only links a block that starts there.
    pub rip: Cell<u64>,
}

/// Link cells per compiled block (one per distinct static exit RIP; further exits return).
pub const LINK_CELLS: usize = 4;

/// What compiled code reaches of its block at a fixed address: the link cells and the
/// exception table (both outlive every run of the block; see [`MetaBox`]).
#[derive(Debug, Default)]
pub struct BlockMeta {
    /// The exit links, by first use in the block.
    pub cells: [LinkCell; LINK_CELLS],
    /// Exceptions side exits raise, indexed by the exit code.
    pub exceptions: Vec<Exception>,
}

/// An owned [`BlockMeta`] at a stable heap address that code may embed. Held as a raw
/// pointer (not a `Box`) because compiled code and the dispatcher access it through copies of
/// that pointer while the owner moves around.
#[derive(Debug)]
pub struct MetaBox(NonNull<BlockMeta>);

impl MetaBox {
    /// A fresh meta with empty cells and no exceptions.
    pub fn new() -> Self {
        MetaBox(NonNull::from(Box::leak(Box::default())))
    }

    /// The address compiled code embeds.
    pub fn as_ptr(&self) -> *const BlockMeta {
        self.0.as_ptr()
    }

    /// Shared access (the cells are `Cell`s: written through shared references).
    pub fn get(&self) -> &BlockMeta {
        // SAFETY: the pointer came from Box::leak and is freed only in Drop; nothing creates a
        // mutable reference to it after construction except `set_exceptions` (exclusive).
        unsafe { self.0.as_ref() }
    }

    /// Installs the exception table (once, before any code of the block runs).
    pub fn set_exceptions(&mut self, exceptions: Vec<Exception>) {
        // SAFETY: `&mut self`: no other reference to the meta exists in Rust, and the block's
        // code has not run yet (or is not running: runs borrow the block).
        unsafe { self.0.as_mut().exceptions = exceptions }
    }
}

impl Default for MetaBox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MetaBox {
    fn drop(&mut self) {
        // SAFETY: allocated by Box in `new`, freed once here. Code that embeds the address is
        // never entered after its block is dropped: chain links name it only in an epoch the
        // engine ends on every invalidation and flush.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Loads `size` bytes little-endian at `addr`, zero-extended; on a fault sets `status`.
///
/// # Safety
/// `ctx` must point to a live [`RunCtx`] not otherwise borrowed (the block's caller owns it).
pub unsafe extern "C" fn jit_load(ctx: *mut RunCtx<'_>, addr: u64, size: u64) -> u64 {
    // SAFETY: the caller (run_compiled, through the block) passes its exclusively owned context.
    let ctx = unsafe { &mut *ctx };
    let n = usize::try_from(size).unwrap_or(8).min(8);
    let mut buf = [0u8; 8];
    match ctx.mem.read(addr, &mut buf[..n]) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(f) => {
            ctx.fault = Some(f);
            ctx.status = 1;
            0
        }
    }
}

/// [`jit_load`] for the destination of a read-modify-write instruction (translated for
/// writing: [`GuestMem::read_for_write`]).
///
/// # Safety
/// As for [`jit_load`].
pub unsafe extern "C" fn jit_load_rmw(ctx: *mut RunCtx<'_>, addr: u64, size: u64) -> u64 {
    // SAFETY: as in jit_load.
    let ctx = unsafe { &mut *ctx };
    let n = usize::try_from(size).unwrap_or(8).min(8);
    let mut buf = [0u8; 8];
    match ctx.mem.read_for_write(addr, &mut buf[..n]) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(f) => {
            ctx.fault = Some(f);
            ctx.status = 1;
            0
        }
    }
}

/// Stores the low `size` bytes of `value` at `addr`; returns 1 on a fault (recorded), else 0.
///
/// # Safety
/// As for [`jit_load`].
pub unsafe extern "C" fn jit_store(ctx: *mut RunCtx<'_>, addr: u64, value: u64, size: u64) -> u64 {
    // SAFETY: as in jit_load.
    let ctx = unsafe { &mut *ctx };
    let n = usize::try_from(size).unwrap_or(8).min(8);
    match ctx.mem.write(addr, &value.to_le_bytes()[..n]) {
        Ok(()) => {
            if ctx.mem.code_write_pending() {
                ctx.code_written = 1;
            }
            0
        }
        Err(f) => {
            ctx.fault = Some(f);
            1
        }
    }
}

/// 128-by-64 division of `hi:lo` by `d` into `div_q`/`div_r`; returns 1 for #DE (zero divisor
/// or a quotient that does not fit 64 bits), else 0.
///
/// # Safety
/// As for [`jit_load`].
pub unsafe extern "C" fn jit_div_wide(
    ctx: *mut RunCtx<'_>,
    signed: u64,
    hi: u64,
    lo: u64,
    d: u64,
) -> u64 {
    // SAFETY: as in jit_load.
    let ctx = unsafe { &mut *ctx };
    match crate::sem::muldiv::divide_wide(signed != 0, hi, lo, d) {
        Some((q, r)) => {
            ctx.div_q = q;
            ctx.div_r = r;
            0
        }
        None => 1,
    }
}

/// A bulk run of REP MOVS (`op` 0) or STOS (1) through the memory
/// ([`crate::mem::GuestMem::string_bulk`]); returns the elements done.
///
/// # Safety
/// As for [`jit_load`].
pub unsafe extern "C" fn jit_string_bulk(
    ctx: *mut RunCtx<'_>,
    op: u64,
    size: u64,
    src: u64,
    dst: u64,
    count: u64,
    value: u64,
) -> u64 {
    // SAFETY: as in jit_load.
    let ctx = unsafe { &mut *ctx };
    let op = match op {
        0 => crate::mem::StringOp::Movs,
        1 => crate::mem::StringOp::Stos,
        _ => return 0,
    };
    let size = u8::try_from(size).unwrap_or(0);
    ctx.mem.string_bulk(op, size, src, dst, count, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{FlatMem, MemFault};
    use crate::sem::muldiv::divide_wide as div_wide;

    #[test]
    fn helpers_report_faults_through_the_context() {
        let mut mem = FlatMem::new(0x1000, 16);
        let mut ctx = RunCtx::new(&mut mem);
        // SAFETY: ctx is a live local.
        unsafe {
            assert_eq!(jit_store(&mut ctx, 0x1008, 0x1122_3344_5566_7788, 4), 0);
            assert_eq!(jit_load(&mut ctx, 0x1008, 8), 0x5566_7788);
            assert_eq!(ctx.status, 0);
            assert_eq!(jit_load(&mut ctx, 0x100e, 4), 0);
        }
        assert_eq!(ctx.status, 1);
        assert_eq!(
            ctx.fault,
            Some(Exception::Memory(MemFault {
                addr: 0x100e,
                len: 4,
                write: false
            }))
        );
    }

    #[test]
    fn wide_division_overflow_rules() {
        assert_eq!(div_wide(false, 0, 7, 2), Some((3, 1)));
        assert_eq!(div_wide(false, 1, 0, 1), None);
        assert_eq!(div_wide(false, 1, 0, 0), None);
        assert_eq!(div_wide(true, u64::MAX, 1 << 63, u64::MAX), None);
        assert_eq!(
            div_wide(true, u64::MAX, u64::MAX - 6, 2),
            Some((-3i64 as u64, -1i64 as u64))
        );
    }
}
