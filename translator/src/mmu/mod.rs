//! The software MMU of the binary-translation backend: x86 paging in software.
//!
//! - [`phys`]: [`PhysMem`], guest-physical memory as the MMU sees it (RAM + MMIO, infallible
//!   like a bus), with a fast-path hook that hands out host pointers to whole RAM pages.
//! - [`walk`]: the page walker for 2-level (with CR4.PSE 4 MiB pages and PSE-36), PAE and
//!   4-level paging: A/D bits, U/S, R/W, NX and reserved-bit checks, #PF error codes
//!   (SDM Vol. 3 §4.3–§4.8).
//! - [`tlb`]: a direct-mapped software TLB per access kind, split by privilege (CPL 3 or not),
//!   QEMU-style: an entry exists only for an access kind that passed its checks.
//! - [`system`]: [`SystemMem`], the full-system [`crate::mem::GuestMem`]: TLB hit path, walks on
//!   a miss, page-split accesses with precise faults, and the self-modifying-code watch.
//!
//! The CPU model this MMU implements (the CPUID model must advertise the same): MAXPHYADDR 40,
//! PSE, PSE-36, PAE, PGE, NX, 1 GiB pages; no SMEP, SMAP, PKE, PCID or 5-level paging.

pub mod phys;
pub mod system;
pub mod tlb;
pub mod walk;

#[cfg(test)]
mod tests;

pub use phys::{PhysMem, RamPage, VecPhys};
pub use system::SystemMem;
pub use tlb::{FastPath, MmuStats, Tlb, TlbEntry};
pub use walk::{walk, Translation};

use crate::state::{ctl, CpuState};

/// The page size every TLB entry and every watched code page uses.
pub const PAGE_SIZE: u64 = 4096;

/// The kind of a memory access (the walker's permission check and the TLB it fills).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read.
    Read = 0,
    /// A data write.
    Write = 1,
    /// An instruction fetch.
    Execute = 2,
}

impl Access {
    /// All access kinds, in TLB order.
    pub const ALL: [Access; 3] = [Access::Read, Access::Write, Access::Execute];
}

/// Which paging structures translate linear addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// Paging off (CR0.PG = 0): linear equals physical, truncated to 32 bits.
    None,
    /// 32-bit paging: page directory and page tables of 4-byte entries; 4 MiB pages when
    /// CR4.PSE = 1.
    TwoLevel,
    /// PAE paging: 4 PDPTEs, then 8-byte directories and tables; 2 MiB pages.
    Pae,
    /// 4-level (IA-32e) paging: PML4, PDPT, directory, table; 1 GiB and 2 MiB pages.
    FourLevel,
}

/// Everything about the CPU that decides how a linear address translates and is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PagingContext {
    /// The paging mode (CR0.PG, CR4.PAE, EFER.LMA).
    pub mode: PagingMode,
    /// CR3 (the root of the paging structures).
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// EFER.NXE: the XD bit is defined (PAE and 4-level only).
    pub nxe: bool,
    /// CR4.PSE: 4 MiB pages in 2-level paging.
    pub pse: bool,
    /// CR4.PGE: global pages survive a CR3 load.
    pub pge: bool,
    /// The current privilege level (3 = user-mode accesses).
    pub cpl: u8,
}

impl Default for PagingContext {
    /// Paging off at CPL 0 (the state after RESET).
    fn default() -> Self {
        PagingContext {
            mode: PagingMode::None,
            cr3: 0,
            wp: false,
            nxe: false,
            pse: false,
            pge: false,
            cpl: 0,
        }
    }
}

impl PagingContext {
    /// The paging context of `cpu` now.
    pub fn of(cpu: &CpuState) -> Self {
        // CR0.PG without CR0.PE cannot be loaded (#GP), so PE=0 means paging off.
        let paging = cpu.cr0 & ctl::CR0_PG != 0 && cpu.cr0 & ctl::CR0_PE != 0;
        let mode = if !paging {
            PagingMode::None
        } else if cpu.cr4 & ctl::CR4_PAE == 0 {
            PagingMode::TwoLevel
        } else if cpu.efer & ctl::EFER_LMA != 0 {
            PagingMode::FourLevel
        } else {
            PagingMode::Pae
        };
        PagingContext {
            mode,
            cr3: cpu.cr3,
            wp: cpu.cr0 & ctl::CR0_WP != 0,
            nxe: cpu.efer & ctl::EFER_NXE != 0,
            pse: cpu.cr4 & ctl::CR4_PSE != 0,
            pge: cpu.cr4 & ctl::CR4_PGE != 0,
            cpl: cpu.cpl(),
        }
    }

    /// Whether paging is enabled.
    pub fn paging(&self) -> bool {
        self.mode != PagingMode::None
    }

    /// Whether explicit accesses are user-mode accesses (CPL 3).
    pub fn user(&self) -> bool {
        self.cpl == 3
    }

    /// The mask applied to every linear address: 64 bits in 4-level paging, else 32 bits
    /// (legacy and real mode linear addresses wrap at 4 GiB).
    pub fn linear_mask(&self) -> u64 {
        if self.mode == PagingMode::FourLevel {
            u64::MAX
        } else {
            0xffff_ffff
        }
    }
}
