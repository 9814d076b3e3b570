//! `CpuState`: the complete architectural state of one x86 CPU, shared by every backend.
//!
//! Snapshots, migration between backends and lockstep comparison all rest on this one type.
//! Conversions to and from KVM's structures live in [`kvm`] and are lossless: a state read from
//! KVM and written back is bit-for-bit the same.

pub mod kvm;

pub use kvm::{KvmExtras, StateError};

/// Index of each general-purpose register in [`CpuState::gpr`], in x86 encoding order.
#[allow(missing_docs)]
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const R8: usize = 8;
    pub const R9: usize = 9;
    pub const R10: usize = 10;
    pub const R11: usize = 11;
    pub const R12: usize = 12;
    pub const R13: usize = 13;
    pub const R14: usize = 14;
    pub const R15: usize = 15;
}

/// RFLAGS bits.
#[allow(missing_docs)]
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
}

/// Control-register and EFER bits used across the machine.
#[allow(missing_docs)]
pub mod ctl {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_AM: u64 = 1 << 18;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_VME: u64 = 1 << 0;
    pub const CR4_PVI: u64 = 1 << 1;
    pub const CR4_TSD: u64 = 1 << 2;
    pub const CR4_DE: u64 = 1 << 3;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_MCE: u64 = 1 << 6;
    pub const CR4_PGE: u64 = 1 << 7;
    pub const CR4_PCE: u64 = 1 << 8;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const CR4_FSGSBASE: u64 = 1 << 16;
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// MSR indices the platform saves and restores.
#[allow(missing_docs)]
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Cached base address.
    pub base: u64,
    /// Cached limit, byte-granular (already scaled by G).
    pub limit: u32,
    /// Descriptor type (4 bits: S=0 system types, or code/data type bits).
    pub type_: u8,
    /// S bit: 1 for code/data, 0 for system descriptors.
    pub s: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Present bit.
    pub present: bool,
    /// AVL bit.
    pub avl: bool,
    /// L bit: 64-bit code segment.
    pub l: bool,
    /// D/B bit: default operand size 32 (code) or big stack (data).
    pub db: bool,
    /// Granularity bit.
    pub g: bool,
    /// Unusable (null-loaded) segment, as VMX and KVM track it.
    pub unusable: bool,
}

impl Segment {
    /// A real-mode segment for `selector` (base = selector << 4, 64 KiB limit, data RW accessed).
    pub fn real_mode(selector: u16) -> Self {
        Segment {
            selector,
            base: u64::from(selector) << 4,
            limit: 0xffff,
            type_: 3,
            s: true,
            dpl: 0,
            present: true,
            ..Default::default()
        }
    }

    /// A flat 4 GiB protected-mode code (`code = true`) or data segment.
    pub fn flat32(selector: u16, code: bool) -> Self {
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            type_: if code { 0xb } else { 0x3 },
            s: true,
            dpl: 0,
            present: true,
            db: true,
            g: true,
            ..Default::default()
        }
    }

    /// A flat 64-bit code segment (L=1, D=0).
    pub fn code64(selector: u16) -> Self {
        Segment {
            l: true,
            db: false,
            ..Segment::flat32(selector, true)
        }
    }

    /// The 8-byte GDT descriptor encoding this segment's cached fields (limit is re-scaled by G).
    pub fn to_descriptor(&self) -> u64 {
        let limit = if self.g { self.limit >> 12 } else { self.limit };
        let base = self.base as u32;
        let access = u64::from(self.type_ & 0xf)
            | (u64::from(self.s) << 4)
            | (u64::from(self.dpl & 3) << 5)
            | (u64::from(self.present) << 7);
        let flags = u64::from(self.avl)
            | (u64::from(self.l) << 1)
            | (u64::from(self.db) << 2)
            | (u64::from(self.g) << 3);
        u64::from(limit & 0xffff)
            | (u64::from(base & 0xff_ffff) << 16)
            | (access << 40)
            | (u64::from((limit >> 16) & 0xf) << 48)
            | (flags << 52)
            | (u64::from(base >> 24) << 56)
    }
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (size - 1).
    pub limit: u16,
}

/// x87 FPU, MMX and SSE state in FXSAVE terms, plus the AVX upper halves when XSAVE carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FpuState {
    /// ST0-ST7 / MM0-MM7 as 80-bit values in the low 10 bytes (FXSAVE layout, physical order).
    pub st: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged tag word (one bit per register: 1 = valid), as FXSAVE stores it.
    pub ftw: u8,
    /// Last x87 opcode.
    pub fop: u16,
    /// Last x87 instruction pointer (64-bit FXSAVE form).
    pub fip: u64,
    /// Last x87 data pointer (64-bit FXSAVE form).
    pub fdp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// Upper 128 bits of YMM0-YMM15 (zero when AVX is absent).
    pub ymm_hi: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
    /// XSAVE XSTATE_BV: which components the state holds (bit 0 x87, 1 SSE, 2 AVX).
    pub xstate_bv: u64,
}

impl Default for FpuState {
    /// The state after FNINIT and reset MXCSR.
    fn default() -> Self {
        FpuState {
            st: [[0; 16]; 8],
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            xmm: [[0; 16]; 16],
            ymm_hi: [[0; 16]; 16],
            mxcsr: 0x1f80,
            xstate_bv: 0,
        }
    }
}

/// Exceptions, interrupts and shadows that are pending between instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingEvents {
    /// An exception raised but not yet delivered: (vector, error code if any).
    pub exception: Option<(u8, Option<u32>)>,
    /// Whether `exception` was already injected (KVM's `injected`) rather than just pending.
    pub exception_injected: bool,
    /// An external interrupt vector accepted but not yet delivered.
    pub interrupt: Option<u8>,
    /// Whether `interrupt` is a software interrupt (INTn) being re-injected.
    pub interrupt_soft: bool,
    /// STI / MOV SS interrupt shadow (KVM's `interrupt.shadow` bits).
    pub interrupt_shadow: u8,
    /// An NMI is being delivered.
    pub nmi_injected: bool,
    /// An NMI is waiting.
    pub nmi_pending: bool,
    /// NMIs are blocked (inside an NMI handler until IRET).
    pub nmi_masked: bool,
    /// SIPI vector for an AP waiting in wait-for-SIPI (KVM's `sipi_vector`).
    pub sipi_vector: u32,
    /// In system-management mode (never entered by ringzero, preserved for KVM round trips).
    pub smm: u8,
    /// KVM's `smi.pending`, `smi.smm_inside_nmi` and `smi.latched_init`, preserved verbatim.
    pub smi_flags: [u8; 3],
    /// KVM's `triple_fault.pending`.
    pub triple_fault_pending: bool,
}

/// The full architectural state of one x86 CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuState {
    /// RAX..R15 in encoding order (see [`reg`]).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS (bit 1 always set).
    pub rflags: u64,
    /// ES segment.
    pub es: Segment,
    /// CS segment.
    pub cs: Segment,
    /// SS segment.
    pub ss: Segment,
    /// DS segment.
    pub ds: Segment,
    /// FS segment (base mirrors `MSR_FS_BASE`).
    pub fs: Segment,
    /// GS segment (base mirrors `MSR_GS_BASE`).
    pub gs: Segment,
    /// Local descriptor table register.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// Global descriptor table register.
    pub gdtr: DescriptorTable,
    /// Interrupt descriptor table register.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR2 (last page-fault address).
    pub cr2: u64,
    /// CR3 (page-table root).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task priority).
    pub cr8: u64,
    /// EFER MSR.
    pub efer: u64,
    /// IA32_APIC_BASE MSR.
    pub apic_base: u64,
    /// DR0-DR3 breakpoint addresses.
    pub dr: [u64; 4],
    /// DR6 debug status.
    pub dr6: u64,
    /// DR7 debug control.
    pub dr7: u64,
    /// XCR0 (XSAVE feature mask); 1 (x87 only) when XSAVE is not enabled.
    pub xcr0: u64,
    /// x87/MMX/SSE/AVX register state.
    pub fpu: FpuState,
    /// Model-specific registers other than EFER and APIC_BASE, sorted by index.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts and shadows.
    pub events: PendingEvents,
    /// The CPU is halted (HLT) waiting for an interrupt.
    pub halted: bool,
    /// KVM-reported bits the fields above do not model, kept so KVM round trips are exact.
    pub kvm_extras: kvm::KvmExtras,
}

impl Default for CpuState {
    /// The architectural state after RESET, except that CS:IP is 0000:0000 with base 0 (loaders
    /// set the entry point; ringzero has no firmware at the reset vector).
    fn default() -> Self {
        let ldtr = Segment {
            type_: 2,
            s: false,
            ..Segment::real_mode(0)
        };
        let tr = Segment {
            type_: 0xb,
            s: false,
            ..Segment::real_mode(0)
        };
        let code = Segment {
            type_: 0xb,
            ..Segment::real_mode(0)
        };
        CpuState {
            gpr: [0; 16],
            rip: 0,
            rflags: rflags::FIXED1,
            es: Segment::real_mode(0),
            cs: code,
            ss: Segment::real_mode(0),
            ds: Segment::real_mode(0),
            fs: Segment::real_mode(0),
            gs: Segment::real_mode(0),
            ldtr: Segment { base: 0, ..ldtr },
            tr: Segment { base: 0, ..tr },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            cr0: ctl::CR0_ET | ctl::CR0_CD | ctl::CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            apic_base: 0xfee0_0000 | (1 << 11) | (1 << 8),
            dr: [0; 4],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            xcr0: 1,
            fpu: FpuState::default(),
            msrs: Vec::new(),
            events: PendingEvents::default(),
            halted: false,
            kvm_extras: kvm::KvmExtras::default(),
        }
    }
}

impl CpuState {
    /// Reads MSR `index` from the saved set (EFER and APIC_BASE included).
    pub fn msr(&self, index: u32) -> Option<u64> {
        match index {
            msr::EFER => Some(self.efer),
            msr::APIC_BASE => Some(self.apic_base),
            msr::FS_BASE => Some(self.fs.base),
            msr::GS_BASE => Some(self.gs.base),
            _ => self
                .msrs
                .binary_search_by_key(&index, |&(i, _)| i)
                .ok()
                .map(|p| self.msrs[p].1),
        }
    }

    /// Sets MSR `index` in the saved set, keeping it sorted.
    pub fn set_msr(&mut self, index: u32, value: u64) {
        match index {
            msr::EFER => self.efer = value,
            msr::APIC_BASE => self.apic_base = value,
            msr::FS_BASE => self.fs.base = value,
            msr::GS_BASE => self.gs.base = value,
            _ => match self.msrs.binary_search_by_key(&index, |&(i, _)| i) {
                Ok(p) => self.msrs[p].1 = value,
                Err(p) => self.msrs.insert(p, (index, value)),
            },
        }
    }

    /// Current privilege level (CS.DPL in protected mode, as SS.DPL tracks it).
    pub fn cpl(&self) -> u8 {
        if self.cr0 & ctl::CR0_PE == 0 {
            0
        } else if self.rflags & rflags::VM != 0 {
            3
        } else {
            self.cs.dpl
        }
    }

    /// The execution mode the CPU is in.
    pub fn mode(&self) -> CpuMode {
        if self.cr0 & ctl::CR0_PE == 0 {
            CpuMode::Real
        } else if self.rflags & rflags::VM != 0 {
            CpuMode::Virtual8086
        } else if self.efer & ctl::EFER_LMA != 0 {
            if self.cs.l {
                CpuMode::Long64
            } else {
                CpuMode::Compat
            }
        } else {
            CpuMode::Protected
        }
    }

    /// Default operand/address size of the code segment in bits (16, 32 or 64).
    pub fn code_bits(&self) -> u32 {
        match self.mode() {
            CpuMode::Long64 => 64,
            CpuMode::Real | CpuMode::Virtual8086 => 16,
            _ if self.cs.db => 32,
            _ => 16,
        }
    }
}

/// The CPU's operating mode, derived from CR0, EFER, RFLAGS and CS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real-address mode.
    Real,
    /// Virtual-8086 mode.
    Virtual8086,
    /// Legacy protected mode (16- or 32-bit code).
    Protected,
    /// Long mode, compatibility sub-mode (16- or 32-bit code).
    Compat,
    /// Long mode, 64-bit sub-mode.
    Long64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_encoding_matches_known_gdt_entries() {
        // The flat 64-bit kernel code and data descriptors Linux and Firecracker use.
        assert_eq!(Segment::code64(0x10).to_descriptor(), 0x00af_9b00_0000_ffff);
        assert_eq!(
            Segment::flat32(0x18, false).to_descriptor(),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(
            Segment::flat32(0x08, true).to_descriptor(),
            0x00cf_9b00_0000_ffff
        );
    }

    #[test]
    fn msr_table_stays_sorted_and_aliases_architectural_fields() {
        let mut s = CpuState::default();
        s.set_msr(msr::LSTAR, 5);
        s.set_msr(msr::STAR, 4);
        s.set_msr(msr::EFER, ctl::EFER_LME);
        assert_eq!(s.msrs, vec![(msr::STAR, 4), (msr::LSTAR, 5)]);
        assert_eq!(s.msr(msr::EFER), Some(ctl::EFER_LME));
        assert_eq!(s.msr(msr::CSTAR), None);
    }

    #[test]
    fn mode_follows_control_bits() {
        let mut s = CpuState::default();
        assert_eq!(s.mode(), CpuMode::Real);
        assert_eq!(s.code_bits(), 16);
        s.cr0 |= ctl::CR0_PE;
        s.cs = Segment::flat32(8, true);
        assert_eq!((s.mode(), s.code_bits()), (CpuMode::Protected, 32));
        s.efer = ctl::EFER_LME | ctl::EFER_LMA;
        s.cs = Segment::code64(0x10);
        assert_eq!((s.mode(), s.code_bits()), (CpuMode::Long64, 64));
    }
}
