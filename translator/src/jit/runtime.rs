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
            tlb_read: table_or_empty(f.read),
            tlb_write: table_or_empty(f.write),
            fault: None,
            mem,
        }
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
