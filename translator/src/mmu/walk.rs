//! The page walker: linear → physical through the guest's paging structures (SDM Vol. 3 §4).
//!
//! Rules implemented (no SMEP, SMAP, PKE: they are not advertised):
//! - A walk stops at the first entry with P = 0 (#PF, P = 0 in the error code) or with a
//!   reserved bit set (#PF, P = 1 and RSVD = 1), in walk order.
//! - Access rights (§4.6) combine every level: a *user-mode address* has U/S = 1 at every level,
//!   a *writable* one R/W = 1 at every level, and with EFER.NXE = 1 an XD bit at any level makes
//!   it non-executable. User-mode accesses (CPL 3, not an implicit supervisor access) need a
//!   user-mode address, R/W everywhere for writes and no XD for fetches. Supervisor accesses
//!   may read anything, write anything when CR0.WP = 0 (only writable addresses when WP = 1),
//!   and fetch from anything without XD.
//! - Only a walk that succeeds has side effects: the accessed flag of every entry used (PAE
//!   PDPTEs have none) and, for a write, the dirty flag of the leaf; an entry is written back
//!   only when one of its bits changes. (Intel sets A while walking; a faulting walk leaving
//!   the upper A bits clear is a difference software cannot rely on either way.)
//! - PAE PDPTEs are read from CR3 at each walk; real CPUs latch them when CR3 is loaded and
//!   raise #GP then for reserved bits. Here a reserved PDPTE bit is a #PF with RSVD.

use super::phys::PhysMem;
use super::{Access, PagingContext, PagingMode};
use crate::sem::Exception;

/// The physical-address width the MMU implements (CPUID.80000008H:EAX[7:0]).
pub const MAXPHYADDR: u32 = 40;

/// #PF error-code bits (SDM Vol. 3 §4.7).
pub mod pf {
    /// The page was present (a protection or reserved-bit fault); 0 = not present.
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was a user-mode access (CPL 3, not an implicit supervisor access).
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch (reported only with PAE/4-level paging and NXE = 1).
    pub const ID: u32 = 1 << 4;
}

/// Paging-structure entry bits.
mod bit {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const XD: u64 = 1 << 63;
}

/// Physical addresses the CPU can form.
const PHYS_MASK: u64 = (1 << MAXPHYADDR) - 1;
/// The address field of a PAE/4-level entry (bits MAXPHYADDR-1:12).
const ADDR_MASK: u64 = PHYS_MASK & !0xfff;
/// 4-level entries: bits 51:MAXPHYADDR are reserved.
const RSVD_4LEVEL: u64 = ((1 << 52) - 1) & !PHYS_MASK;
/// PAE directory and table entries: bits 62:MAXPHYADDR are reserved.
const RSVD_PAE: u64 = ((1 << 63) - 1) & !PHYS_MASK;
/// PAE PDPTEs: bits 2:1, 8:5 and 63:MAXPHYADDR are reserved.
const RSVD_PDPTE: u64 = 0b110 | 0x1e0 | !PHYS_MASK;

/// A successful translation and the access rights of its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the translated byte.
    pub phys: u64,
    /// The size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
    /// The page is global (G = 1 in the leaf and CR4.PGE = 1): kept by CR3 loads.
    pub global: bool,
    /// U/S = 1 at every level: a user-mode address.
    pub user: bool,
    /// R/W = 1 at every level.
    pub writable: bool,
    /// Not made non-executable by an XD bit (with EFER.NXE = 1).
    pub executable: bool,
    /// The leaf's dirty flag is set (after this walk).
    pub dirty: bool,
}

impl Translation {
    /// The identity translation used while paging is off: everything allowed, nothing to set.
    pub fn identity(linear: u64) -> Self {
        Translation {
            phys: linear,
            page_size: super::PAGE_SIZE,
            global: false,
            user: true,
            writable: true,
            executable: true,
            dirty: true,
        }
    }

    /// Whether `access` (a user-mode access when `user_mode`) is allowed on this page under
    /// CR0.WP = `wp` (SDM Vol. 3 §4.6.1, without SMEP/SMAP).
    pub fn permits(&self, access: Access, user_mode: bool, wp: bool) -> bool {
        match access {
            Access::Read => !user_mode || self.user,
            Access::Write => {
                if user_mode {
                    self.user && self.writable
                } else {
                    !wp || self.writable
                }
            }
            Access::Execute => (!user_mode || self.user) && self.executable,
        }
    }
}

/// One entry used by a walk: where it is, its value, and its width (for the write-back).
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    addr: u64,
    value: u64,
    wide: bool,
}

/// The entries a walk used, at most 4 (PDPTEs of PAE have no A bit and are not recorded).
#[derive(Debug, Default)]
struct Path {
    used: [Used; 4],
    len: usize,
}

impl Path {
    fn push(&mut self, addr: u64, value: u64, wide: bool) {
        if let Some(u) = self.used.get_mut(self.len) {
            *u = Used { addr, value, wide };
            self.len += 1;
        }
    }
}

/// Translates `linear` for `access` under `ctx`, checking access rights and updating A/D.
///
/// `implicit_supervisor` marks a system-structure access (GDT, LDT, IDT, TSS): a supervisor
/// access whatever the CPL. Paging off gives the identity (truncated to 32 bits). Faults are
/// [`Exception::PageFault`] with `linear` as given and the §4.7 error code.
pub fn walk(
    phys: &mut dyn PhysMem,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
    implicit_supervisor: bool,
) -> Result<Translation, Exception> {
    let user_mode = ctx.cpl == 3 && !implicit_supervisor;
    let wide = matches!(ctx.mode, PagingMode::Pae | PagingMode::FourLevel);
    let mut error = 0;
    if access == Access::Write {
        error |= pf::W;
    }
    if user_mode {
        error |= pf::U;
    }
    if access == Access::Execute && wide && ctx.nxe {
        error |= pf::ID;
    }
    let not_present = Exception::PageFault { linear, error };
    let reserved = Exception::PageFault {
        linear,
        error: error | pf::P | pf::RSVD,
    };

    let mut path = Path::default();
    // Rights accumulated over the levels: AND of U/S and R/W, OR of XD.
    let (mut us, mut rw, mut xd) = (true, true, false);
    let (base, size, leaf) = match ctx.mode {
        PagingMode::None => return Ok(Translation::identity(linear & 0xffff_ffff)),
        PagingMode::TwoLevel => {
            let la = linear & 0xffff_ffff;
            let pde_addr = (ctx.cr3 & 0xffff_f000) | ((la >> 22) << 2);
            let pde = u64::from(phys.read_u32(pde_addr));
            if pde & bit::P == 0 {
                return Err(not_present);
            }
            path.push(pde_addr, pde, false);
            us &= pde & bit::US != 0;
            rw &= pde & bit::RW != 0;
            if ctx.pse && pde & bit::PS != 0 {
                // 4 MiB page: bits 20:13 are physical bits 39:32 (PSE-36), bit 21 reserved.
                if pde & (1 << 21) != 0 {
                    return Err(reserved);
                }
                let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
                (base, 1u64 << 22, pde)
            } else {
                let pte_addr = (pde & 0xffff_f000) | (((la >> 12) & 0x3ff) << 2);
                let pte = u64::from(phys.read_u32(pte_addr));
                if pte & bit::P == 0 {
                    return Err(not_present);
                }
                path.push(pte_addr, pte, false);
                us &= pte & bit::US != 0;
                rw &= pte & bit::RW != 0;
                (pte & 0xffff_f000, 1u64 << 12, pte)
            }
        }
        PagingMode::Pae | PagingMode::FourLevel => {
            let xd_rsvd = if ctx.nxe { 0 } else { bit::XD };
            let (mut table, mut shift, la, common) = if ctx.mode == PagingMode::Pae {
                let la = linear & 0xffff_ffff;
                let pdpte_addr = (ctx.cr3 & 0xffff_ffe0) | ((la >> 30) << 3);
                let pdpte = phys.read_u64(pdpte_addr);
                if pdpte & bit::P == 0 {
                    return Err(not_present);
                }
                if pdpte & RSVD_PDPTE != 0 {
                    return Err(reserved);
                }
                (pdpte & ADDR_MASK, 21u32, la, RSVD_PAE | xd_rsvd)
            } else {
                (ctx.cr3 & ADDR_MASK, 39u32, linear, RSVD_4LEVEL | xd_rsvd)
            };
            loop {
                let addr = table | (((la >> shift) & 0x1ff) << 3);
                let e = phys.read_u64(addr);
                if e & bit::P == 0 {
                    return Err(not_present);
                }
                let large = e & bit::PS != 0 && shift != 12;
                let mut rsvd = common;
                if large {
                    rsvd |= match shift {
                        // PS is reserved in a PML4E.
                        39 => bit::PS,
                        // Large-page address bits below the page size (bit 12 is PAT).
                        _ => ((1u64 << shift) - 1) & !0x1fff,
                    };
                }
                if e & rsvd != 0 {
                    return Err(reserved);
                }
                path.push(addr, e, true);
                us &= e & bit::US != 0;
                rw &= e & bit::RW != 0;
                xd |= e & bit::XD != 0;
                if shift == 12 || large {
                    let size = 1u64 << shift;
                    break (e & ADDR_MASK & !(size - 1), size, e);
                }
                table = e & ADDR_MASK;
                shift -= 9;
            }
        }
    };

    let mut t = Translation {
        phys: base | (linear & (size - 1)),
        page_size: size,
        global: ctx.pge && leaf & bit::G != 0,
        user: us,
        writable: rw,
        executable: !(ctx.nxe && xd),
        dirty: leaf & bit::D != 0,
    };
    if !t.permits(access, user_mode, ctx.wp) {
        return Err(Exception::PageFault {
            linear,
            error: error | pf::P,
        });
    }

    // The walk succeeded: set A on every entry used, D on the leaf for a write.
    let last = path.len.saturating_sub(1);
    for (i, u) in path.used.iter().take(path.len).enumerate() {
        let mut v = u.value | bit::A;
        if i == last && access == Access::Write {
            v |= bit::D;
            t.dirty = true;
        }
        if v != u.value {
            if u.wide {
                phys.write_u64(u.addr, v);
            } else {
                phys.write_u32(u.addr, v as u32);
            }
        }
    }
    Ok(t)
}
