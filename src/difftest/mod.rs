//! `ringzero difftest`: random instruction sequences run on the real CPU and compared.
//!
//! Under `/dev/kvm` on this project's machines (PVM), guest ring-3 code executes natively on the
//! host CPU, so a KVM vCPU at ring 3 is a hardware oracle for user-level instruction semantics.
//! This module holds the backend-neutral pieces: a [`Case`] (code, registers, flags, data) and its
//! [`Outcome`], the fixed guest layout both backends use, the [`oracle`] that runs a case under
//! KVM, the [`gen`]erator of random cases, the [`flags`] the manuals leave undefined, and the
//! [`report`] that compares outcomes and prints a minimal reproducer.

pub mod driver;
pub mod flags;
pub mod gen;
pub mod gen_fp;
pub mod oracle;
pub mod report;
pub mod translated;

use ringzero_translator::state::{ctl, rflags, FpuState, Segment};
use ringzero_translator::CpuState;

/// Guest address of the case's code page (ring 3, read-only, executable).
pub const CODE_BASE: u64 = 0x20_0000;
/// Size of the code page: a case's code plus its terminating `int3` must fit.
pub const CODE_SIZE: u64 = 0x1000;
/// Guest address of the case's data region: two data pages and the stack page, all compared.
pub const DATA_BASE: u64 = 0x21_0000;
/// Size of the data region ([`Case::data`] and [`Outcome::data`] are exactly this long).
pub const DATA_SIZE: u64 = 0x3000;
/// Initial RSP: the middle of the stack page (the last page of the data region), so both pushes
/// and pops of a short sequence stay inside the compared region.
pub const STACK_TOP: u64 = DATA_BASE + 0x2800;
/// FS base at case entry (segment-override tests address the data region through it).
pub const FS_BASE: u64 = DATA_BASE;
/// GS base at case entry.
pub const GS_BASE: u64 = DATA_BASE + 0x1000;
/// Ring-3 32-bit (compatibility-mode) code selector.
pub const USER_CS32: u16 = 0x2b;
/// Ring-3 data/stack selector (also loaded into DS, ES, FS and GS).
pub const USER_DS: u16 = 0x33;
/// Ring-3 64-bit code selector.
pub const USER_CS64: u16 = 0x3b;
/// RFLAGS bits a case always starts with: bit 1 and IF (ring 3 runs with interrupts enabled).
pub const RFLAGS_FIXED: u64 = rflags::FIXED1 | rflags::IF;
/// The RFLAGS bits a case may choose: the six arithmetic flags and DF.
pub const RFLAGS_CASE_BITS: u64 =
    rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF | rflags::DF;

/// Which code segment the case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 64-bit mode (long mode, CS.L = 1).
    Long64,
    /// 32-bit compatibility mode (long mode, CS.L = 0, CS.D = 1): how 32-bit code runs under a
    /// 64-bit kernel.
    Compat32,
}

impl Mode {
    /// The code size in bits (64 or 32), as iced-x86 wants it.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Long64 => 64,
            Mode::Compat32 => 32,
        }
    }

    /// Parses `64` or `32`.
    pub fn from_bits(bits: u32) -> Option<Mode> {
        match bits {
            64 => Some(Mode::Long64),
            32 => Some(Mode::Compat32),
            _ => None,
        }
    }

    /// Mask of the RIP / register bits that are architecturally meaningful in this mode.
    pub fn width_mask(self) -> u64 {
        match self {
            Mode::Long64 => u64::MAX,
            Mode::Compat32 => u64::from(u32::MAX),
        }
    }
}

/// One test case: code run at [`CODE_BASE`] at ring 3 with the given state, ended by `int3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Machine code including the terminating `int3` (at most [`CODE_SIZE`] bytes).
    pub code: Vec<u8>,
    /// Initial RAX..R15 (RSP included; the generator keeps it at [`STACK_TOP`]).
    pub regs: [u64; 16],
    /// Initial RFLAGS (only [`RFLAGS_CASE_BITS`] are taken; [`RFLAGS_FIXED`] is always set).
    pub rflags: u64,
    /// Initial contents of the data region at [`DATA_BASE`] ([`DATA_SIZE`] bytes).
    pub data: Vec<u8>,
    /// Initial x87/MMX/SSE state (ST0-7 in stack order as FXSAVE stores them, FCW, FSW with
    /// TOP, abridged tags, XMM0-15, MXCSR). The integer families leave it at
    /// [`FpuState::default`] (after FNINIT, MXCSR 0x1f80).
    pub fpu: FpuState,
}

impl Case {
    /// Guest address of the terminating `int3` (the last code byte).
    pub fn end_rip(&self) -> u64 {
        CODE_BASE + (self.code.len() as u64).saturating_sub(1)
    }

    /// RFLAGS as the case is entered.
    pub fn entry_rflags(&self) -> u64 {
        (self.rflags & RFLAGS_CASE_BITS) | RFLAGS_FIXED
    }

    /// The architectural state at case entry, for any backend: long mode with paging, ring 3,
    /// flat segments, FS/GS bases at [`FS_BASE`]/[`GS_BASE`], RIP at [`CODE_BASE`]. The system
    /// registers (CR3, GDTR, IDTR, TR) are zero here; the oracle fills in its own tables.
    pub fn entry_state(&self, mode: Mode) -> CpuState {
        let mut s = CpuState::default();
        let data = Segment {
            dpl: 3,
            selector: USER_DS,
            type_: 0x3,
            ..Segment::flat32(USER_DS, false)
        };
        s.cs = match mode {
            Mode::Long64 => Segment {
                dpl: 3,
                ..Segment::code64(USER_CS64)
            },
            Mode::Compat32 => Segment {
                dpl: 3,
                ..Segment::flat32(USER_CS32, true)
            },
        };
        s.ss = data;
        s.ds = data;
        s.es = data;
        s.fs = Segment {
            base: FS_BASE,
            ..data
        };
        s.gs = Segment {
            base: GS_BASE,
            ..data
        };
        // CR0.AM on: under PVM ring 3 runs with the host's CR0, where AM is set, so RFLAGS.AC
        // enables alignment checks whatever the guest says; making it architectural keeps the
        // oracle honest (and #AC testable).
        s.cr0 = ctl::CR0_PE
            | ctl::CR0_MP
            | ctl::CR0_ET
            | ctl::CR0_NE
            | ctl::CR0_WP
            | ctl::CR0_AM
            | ctl::CR0_PG;
        s.cr4 = ctl::CR4_PAE | ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
        s.efer = ctl::EFER_LME | ctl::EFER_LMA;
        s.gpr = self.regs;
        s.fpu = self.fpu.clone();
        s.rip = CODE_BASE;
        s.rflags = self.entry_rflags();
        s
    }
}

/// What a case did: the state where it stopped and the exception that stopped it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Final RAX..R15.
    pub regs: [u64; 16],
    /// Where execution stopped: the terminating `int3` ([`Case::end_rip`]) when the case
    /// completed, the faulting instruction for a fault, the next instruction for a trap.
    pub rip: u64,
    /// Final RFLAGS (RF, which exception delivery sets in the saved image, is cleared).
    pub rflags: u64,
    /// Final contents of the data region.
    pub data: Vec<u8>,
    /// `None` when the terminating `int3` was reached, else (vector, error code if the vector
    /// pushes one).
    pub exception: Option<(u8, Option<u32>)>,
    /// Final x87/MMX/SSE state (see [`Case::fpu`]; `xstate_bv` and `ymm_hi` are not compared).
    pub fpu: FpuState,
}

/// Errors of the difftest machinery (never of the code under test: that is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum DifftestError {
    /// KVM cannot be used here.
    #[error("KVM is unavailable: {0}")]
    KvmUnavailable(#[source] crate::kvm::KvmError),
    /// A KVM operation failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Guest memory could not be set up or accessed.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The vCPU stopped in a way the oracle cannot interpret.
    #[error("oracle vCPU stopped unexpectedly: {0}")]
    UnexpectedExit(String),
    /// The case is malformed (code too long, data of the wrong size).
    #[error("bad case: {0}")]
    BadCase(String),
    /// The hypervisor does not run this mode's ring-3 code on the real CPU, so it is no oracle.
    #[error("not a hardware oracle here: {0}")]
    NotNative(String),
    /// The translator could not be set up.
    #[error("translator: {0}")]
    Translator(String),
    /// The CPU state could not be converted for KVM.
    #[error("CPU state conversion: {0}")]
    State(String),
}

/// Names of the instruction families the generator knows (`--family`).
pub const FAMILIES: &[&str] = gen::FAMILY_NAMES;
