//! The CPU model the BT advertises through CPUID, and so promises to implement.
//!
//! # Vendor: AuthenticAMD
//! The BT claims to be an AMD CPU (family 0Fh, an x86-64-v1 "K8-class" part), for three reasons:
//! - The tiers' semantics were checked against an AMD host (the differential tests' oracle), so
//!   where the vendors differ in user-visible behaviour (undefined flags, MOVSXD r16, ENTER
//!   #AC) the BT already behaves as AMD does; claiming Intel would make it an inconsistent CPU.
//! - Linux 6.1 on AMD family 0Fh takes no Meltdown/MDS/L1TF/SWAPGS/ITLB-multihit mitigations
//!   (its vulnerability whitelist covers every AMD family), so a guest runs without page-table
//!   isolation (a CR3 write on every kernel entry and exit) and without a VERW on every return
//!   to user mode: both would be traps in the BT.
//! - AMD's fast system calls are the ones 64-bit kernels use: SYSCALL works in 64-bit,
//!   compatibility and legacy mode (CSTAR for compatibility mode), SYSENTER/SYSEXIT are legacy
//!   mode only (#UD in long mode), and SYSRET does not check RCX for canonical form (the #GP
//!   comes from the fetch at CPL 3, never at CPL 0). [`super::privileged`] implements exactly that.
//!
//! Model 2Bh (a K8 revision E number) is chosen below model 41h so Linux does not assume AMD
//! erratum 400 (which makes it read an undocumented MSR), and above 14h so it keeps LAHF_LM.
//!
//! Leaves: unsupported leaves (above the maximum basic or extended leaf, the hypervisor range)
//! return zeros, as AMD CPUs do (Intel would return the highest basic leaf's data).
//!
//! # Features: exactly what the BT implements
//! x86-64-v1 (FPU, CX8, CMOV, MMX, FXSR, SSE, SSE2, SYSCALL, LM, ...) plus CX16, MOVBE, POPCNT,
//! LAHF_LM, ABM (LZCNT), RDTSCP, 3DNowPrefetch (PREFETCH/PREFETCHW) and BMI1 (ANDN, BEXTR,
//! BLSI, BLSMSK, BLSR, TZCNT). Not advertised, so #UD: SSE3 and later SIMD, AVX*, BMI2, ADX,
//! AES, XSAVE, RDRAND/RDSEED, FSGSBASE, RDPID, MONITOR, CLFSH (CLFLUSH), SMAP, CET, 3DNow!.
//! [`INSTRUCTION_FEATURES`] maps iced's per-instruction CPUID features onto these bits, and the
//! decoder ([`crate::interp::decode`]) refuses with #UD every instruction the table and the
//! model's list do not admit ([`CpuidGate`]), so the tiers and the monitor never run an
//! instruction the guest was told does not exist. Encodings whose meaning on a CPU without the
//! feature is not #UD are decided as that AMD CPU does ([`CpuidGate::admits`]): the hint NOPs
//! 0F 18..1F (ENDBR, RDSSP, CLDEMOTE, PREFETCHIT*) run as NOPs, 0F 0D /2 is a prefetch, a
//! register operand of 0F 0D is #UD.

use iced_x86::{CpuidFeature, Instruction};

/// A CPUID feature bit the model may advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// x87 FPU on chip (leaf 1 EDX 0).
    Fpu,
    /// Debugging extensions: CR4.DE, DR4/DR5 #UD (leaf 1 EDX 2).
    De,
    /// 4 MiB pages (leaf 1 EDX 3).
    Pse,
    /// RDTSC and CR4.TSD (leaf 1 EDX 4).
    Tsc,
    /// RDMSR/WRMSR (leaf 1 EDX 5).
    Msr,
    /// Physical address extension (leaf 1 EDX 6).
    Pae,
    /// CMPXCHG8B (leaf 1 EDX 8).
    Cx8,
    /// On-chip local APIC (leaf 1 EDX 9; reads 0 while IA32_APIC_BASE disables it).
    Apic,
    /// SYSENTER/SYSEXIT (leaf 1 EDX 11; legacy mode only on AMD).
    Sep,
    /// Memory type range registers (leaf 1 EDX 12).
    Mtrr,
    /// Global pages (leaf 1 EDX 13).
    Pge,
    /// CMOVcc, FCMOVcc (leaf 1 EDX 15).
    Cmov,
    /// Page attribute table (leaf 1 EDX 16).
    Pat,
    /// MMX (leaf 1 EDX 23).
    Mmx,
    /// FXSAVE/FXRSTOR, CR4.OSFXSR (leaf 1 EDX 24).
    Fxsr,
    /// SSE (leaf 1 EDX 25).
    Sse,
    /// SSE2 (leaf 1 EDX 26).
    Sse2,
    /// CMPXCHG16B (leaf 1 ECX 13).
    Cx16,
    /// MOVBE (leaf 1 ECX 22).
    Movbe,
    /// POPCNT (leaf 1 ECX 23).
    Popcnt,
    /// SYSCALL/SYSRET (leaf 8000_0001h EDX 11).
    Syscall,
    /// No-execute pages, EFER.NXE (leaf 8000_0001h EDX 20).
    Nx,
    /// 1 GiB pages (leaf 8000_0001h EDX 26).
    Pdpe1gb,
    /// RDTSCP and IA32_TSC_AUX (leaf 8000_0001h EDX 27).
    Rdtscp,
    /// Long mode (leaf 8000_0001h EDX 29).
    Lm,
    /// LAHF/SAHF in 64-bit mode (leaf 8000_0001h ECX 0).
    LahfLm,
    /// Advanced bit manipulation: LZCNT (leaf 8000_0001h ECX 5).
    Abm,
    /// PREFETCH/PREFETCHW, "3DNowPrefetch" (leaf 8000_0001h ECX 8).
    Prefetchw,
    /// Bit manipulation group 1: ANDN, BEXTR, BLSI, BLSMSK, BLSR, TZCNT (leaf 7 EBX 3).
    Bmi1,
}

/// Where a feature bit lives: leaf, register index (0 EAX .. 3 EDX), bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitLocation {
    /// CPUID leaf (EAX input).
    pub leaf: u32,
    /// Output register: 0 EAX, 1 EBX, 2 ECX, 3 EDX.
    pub reg: usize,
    /// Bit number.
    pub bit: u32,
}

/// Output register indices in `[u32; 4]` results.
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

impl Feature {
    /// Every feature the BT implements and the default model advertises, in CPUID order.
    pub const ADVERTISED: [Feature; 29] = [
        Feature::Fpu,
        Feature::De,
        Feature::Pse,
        Feature::Tsc,
        Feature::Msr,
        Feature::Pae,
        Feature::Cx8,
        Feature::Apic,
        Feature::Sep,
        Feature::Mtrr,
        Feature::Pge,
        Feature::Cmov,
        Feature::Pat,
        Feature::Mmx,
        Feature::Fxsr,
        Feature::Sse,
        Feature::Sse2,
        Feature::Cx16,
        Feature::Movbe,
        Feature::Popcnt,
        Feature::Syscall,
        Feature::Nx,
        Feature::Pdpe1gb,
        Feature::Rdtscp,
        Feature::Lm,
        Feature::LahfLm,
        Feature::Abm,
        Feature::Prefetchw,
        Feature::Bmi1,
    ];

    /// The CPUID bit that reports this feature.
    pub fn location(self) -> BitLocation {
        use Feature as F;
        let (leaf, reg, bit) = match self {
            F::Fpu => (1, EDX, 0),
            F::De => (1, EDX, 2),
            F::Pse => (1, EDX, 3),
            F::Tsc => (1, EDX, 4),
            F::Msr => (1, EDX, 5),
            F::Pae => (1, EDX, 6),
            F::Cx8 => (1, EDX, 8),
            F::Apic => (1, EDX, 9),
            F::Sep => (1, EDX, 11),
            F::Mtrr => (1, EDX, 12),
            F::Pge => (1, EDX, 13),
            F::Cmov => (1, EDX, 15),
            F::Pat => (1, EDX, 16),
            F::Mmx => (1, EDX, 23),
            F::Fxsr => (1, EDX, 24),
            F::Sse => (1, EDX, 25),
            F::Sse2 => (1, EDX, 26),
            F::Cx16 => (1, ECX, 13),
            F::Movbe => (1, ECX, 22),
            F::Popcnt => (1, ECX, 23),
            F::Syscall => (EXT1, EDX, 11),
            F::Nx => (EXT1, EDX, 20),
            F::Pdpe1gb => (EXT1, EDX, 26),
            F::Rdtscp => (EXT1, EDX, 27),
            F::Lm => (EXT1, EDX, 29),
            F::LahfLm => (EXT1, ECX, 0),
            F::Abm => (EXT1, ECX, 5),
            F::Prefetchw => (EXT1, ECX, 8),
            F::Bmi1 => (7, EBX, 3),
        };
        BitLocation { leaf, reg, bit }
    }
}

/// What an instruction of one iced [`CpuidFeature`] needs to exist on the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Every x86-64 CPU has it: no CPUID bit reports it.
    Baseline,
    /// The model must advertise this CPUID bit.
    Bit(Feature),
}

/// The one table behind both the CPUID bits and the decoder's #UD gate: every iced CPUID
/// feature whose instructions the BT implements, and what makes them exist. A feature missing
/// here (SSE3+, AVX, BMI2, ADX, AES, RDRAND, XSAVE, CLFSH, FSGSBASE, MONITOR, 3DNow!, ...) is not
/// implemented, and its instructions raise #UD as on a CPU without it.
pub const INSTRUCTION_FEATURES: [(CpuidFeature, Requirement); 30] = {
    use CpuidFeature as C;
    use Feature as F;
    use Requirement::{Baseline as B, Bit};
    [
        // The 8086..486 instruction set, CPUID, PAUSE (a NOP before SSE2), the hint NOPs
        // 0F 18..1F (family 6/0Fh) and RDPMC (which faults when no counter exists, as here).
        (C::INTEL8086, B),
        (C::INTEL186, B),
        (C::INTEL286, B),
        (C::INTEL386, B),
        (C::INTEL486, B),
        (C::CPUID, B),
        (C::PAUSE, B),
        (C::MULTIBYTENOP, B),
        (C::RDPMC, B),
        (C::X64, Bit(F::Lm)),
        (C::FPU, Bit(F::Fpu)),
        (C::FPU287, Bit(F::Fpu)),
        (C::FPU387, Bit(F::Fpu)),
        (C::TSC, Bit(F::Tsc)),
        (C::MSR, Bit(F::Msr)),
        (C::CX8, Bit(F::Cx8)),
        (C::SEP, Bit(F::Sep)),
        (C::CMOV, Bit(F::Cmov)),
        (C::MMX, Bit(F::Mmx)),
        (C::FXSR, Bit(F::Fxsr)),
        (C::SSE, Bit(F::Sse)),
        (C::SSE2, Bit(F::Sse2)),
        (C::CMPXCHG16B, Bit(F::Cx16)),
        (C::MOVBE, Bit(F::Movbe)),
        (C::POPCNT, Bit(F::Popcnt)),
        (C::SYSCALL, Bit(F::Syscall)),
        (C::RDTSCP, Bit(F::Rdtscp)),
        // AMD reports LZCNT as part of ABM.
        (C::LZCNT, Bit(F::Abm)),
        (C::PREFETCHW, Bit(F::Prefetchw)),
        (C::BMI1, Bit(F::Bmi1)),
    ]
};

/// The [`INSTRUCTION_FEATURES`] row of `f`.
const fn requirement(f: CpuidFeature) -> Option<Requirement> {
    let mut i = 0;
    while i < INSTRUCTION_FEATURES.len() {
        let (c, r) = INSTRUCTION_FEATURES[i];
        if c as usize == f as usize {
            return Some(r);
        }
        i += 1;
    }
    None
}

/// Whether `list` holds `f` (usable in constants).
const fn contains(list: &[Feature], f: Feature) -> bool {
    let mut i = 0;
    while i < list.len() {
        if list[i] as u8 == f as u8 {
            return true;
        }
        i += 1;
    }
    false
}

/// The decoder's #UD gate: a bitset over iced [`CpuidFeature`] values, precomputed from a
/// feature list through [`INSTRUCTION_FEATURES`] (so it agrees with [`CpuModel::supports`] and
/// with the CPUID bits by construction). Checking an instruction allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidGate {
    bits: [u64; 4],
}

/// The gate of the model the BT implements ([`CpuModel::default`]).
pub const DEFAULT_GATE: CpuidGate = CpuidGate::new(&Feature::ADVERTISED);

impl CpuidGate {
    /// The gate for a CPU advertising exactly `features`.
    pub const fn new(features: &[Feature]) -> Self {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < INSTRUCTION_FEATURES.len() {
            let (c, r) = INSTRUCTION_FEATURES[i];
            let ok = match r {
                Requirement::Baseline => true,
                Requirement::Bit(f) => contains(features, f),
            };
            if ok {
                let n = c as usize;
                bits[n / 64] |= 1 << (n % 64);
            }
            i += 1;
        }
        CpuidGate { bits }
    }

    /// The gate for `model`.
    pub fn of(model: &CpuModel) -> Self {
        Self::new(&model.features)
    }

    /// Whether instructions needing `f` exist.
    pub fn allows(&self, f: CpuidFeature) -> bool {
        let n = f as usize;
        self.bits
            .get(n / 64)
            .is_some_and(|w| w >> (n % 64) & 1 != 0)
    }

    /// Whether `insn` exists on the CPU: all its CPUID features are allowed, with the
    /// encodings whose meaning on a CPU without the feature is not #UD decided as that CPU
    /// does (AMD, which the model claims to be).
    pub fn admits(&self, insn: &Instruction) -> bool {
        use iced_x86::Code as C;
        match insn.code() {
            // The hint-NOP space 0F 18..1F: a CPU without CET, CLDEMOTE or PREFETCHITI runs
            // these encodings as NOPs (static glibc puts ENDBR64 at every function entry).
            // iced decodes the MPX encodings there as reserved NOPs already (no
            // DecoderOptions::MPX).
            C::Endbr32
            | C::Endbr64
            | C::Rdsspd_r32
            | C::Rdsspq_r64
            | C::Cldemote_m8
            | C::Prefetchit0_m8
            | C::Prefetchit1_m8 => true,
            // AMD's 3DNowPrefetch decodes every 0F 0D /r memory form as a prefetch (iced
            // reads /2 as Intel's PREFETCHWT1) and a register operand as #UD (checked on a
            // Zen host); iced calls the register forms reserved NOPs, as on Intel.
            C::Prefetchwt1_m8 => self.allows(CpuidFeature::PREFETCHW),
            C::Reservednop_rm16_r16_0F0D
            | C::Reservednop_rm32_r32_0F0D
            | C::Reservednop_rm64_r64_0F0D => false,
            _ => insn.cpuid_features().iter().all(|&f| self.allows(f)),
        }
    }
}

/// Whether `insn` exists on the CPU the BT implements ([`DEFAULT_GATE`]); the decoder gives
/// #UD for an instruction that does not.
pub fn implemented(insn: &Instruction) -> bool {
    DEFAULT_GATE.admits(insn)
}

/// Leaf 8000_0001h: extended features.
const EXT1: u32 = 0x8000_0001;

/// Leaf 1 EDX bits AMD repeats in leaf 8000_0001h EDX (FPU..APIC, MTRR..PSE36, MMX, FXSR).
pub const AMD_MIRRORED_EDX: u32 = 0x0183_f3ff;

/// The brand string the model reports in leaves 8000_0002h-8000_0004h.
pub const BRAND: &str = "ringzero BT x86-64 (binary translation)";

/// Highest basic leaf.
const MAX_BASIC: u32 = 7;
/// Highest extended leaf.
const MAX_EXTENDED: u32 = 0x8000_0008;

/// The CPU the BT presents to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuModel {
    /// 12-byte vendor identification string.
    pub vendor: [u8; 12],
    /// Display family (0Fh for AMD K8-class).
    pub family: u32,
    /// Display model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// Brand string (at most 47 bytes are reported).
    pub brand: &'static str,
    /// Advertised features.
    pub features: Vec<Feature>,
    /// Physical address width in bits (MAXPHYADDR).
    pub phys_bits: u8,
    /// Linear address width in bits.
    pub linear_bits: u8,
    /// Initial APIC ID reported in leaf 1 EBX.
    pub apic_id: u8,
}

impl Default for CpuModel {
    /// The model the BT implements: AuthenticAMD family 0Fh model 2Bh stepping 1, x86-64-v1.
    fn default() -> Self {
        CpuModel {
            vendor: *b"AuthenticAMD",
            family: 0xf,
            model: 0x2b,
            stepping: 1,
            brand: BRAND,
            features: Feature::ADVERTISED.to_vec(),
            phys_bits: 40,
            linear_bits: 48,
            apic_id: 0,
        }
    }
}

impl CpuModel {
    /// Whether the model advertises `f`.
    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }

    /// Whether an instruction needing iced's CPUID feature `f` exists on this model
    /// ([`INSTRUCTION_FEATURES`]; the decoder's fast path is [`CpuidGate`]).
    pub fn supports(&self, f: CpuidFeature) -> bool {
        match requirement(f) {
            Some(Requirement::Baseline) => true,
            Some(Requirement::Bit(b)) => self.has(b),
            None => false,
        }
    }

    /// The 32-bit family/model/stepping signature (leaf 1 and 8000_0001h EAX).
    pub fn signature(&self) -> u32 {
        let (base_family, ext_family) = if self.family >= 0xf {
            (0xf, self.family - 0xf)
        } else {
            (self.family, 0)
        };
        // The extended model field is used for families 6 and 0Fh and up.
        let (base_model, ext_model) = if self.family == 6 || self.family >= 0xf {
            (self.model & 0xf, (self.model >> 4) & 0xf)
        } else {
            (self.model & 0xf, 0)
        };
        ((ext_family & 0xff) << 20)
            | (ext_model << 16)
            | (base_family << 8)
            | (base_model << 4)
            | (self.stepping & 0xf)
    }

    /// The advertised feature bits of output register `reg` of `leaf`.
    fn feature_bits(&self, leaf: u32, reg: usize) -> u32 {
        self.features
            .iter()
            .map(|f| f.location())
            .filter(|l| l.leaf == leaf && l.reg == reg)
            .fold(0, |acc, l| acc | (1 << l.bit))
    }

    /// The vendor string as the three registers EBX, EDX, ECX hold it.
    fn vendor_regs(&self) -> (u32, u32, u32) {
        let w = |i: usize| {
            let b = &self.vendor[i * 4..i * 4 + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        (w(0), w(1), w(2))
    }

    /// Four registers of the brand string, part `part` (0..3) of 48 NUL-padded bytes.
    fn brand_regs(&self, part: usize) -> [u32; 4] {
        let mut bytes = [0u8; 48];
        // Keep a terminating NUL: at most 47 characters.
        let src = self.brand.as_bytes();
        let n = src.len().min(47);
        bytes[..n].copy_from_slice(&src[..n]);
        let mut out = [0u32; 4];
        for (i, o) in out.iter_mut().enumerate() {
            let at = part * 16 + i * 4;
            *o = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        }
        out
    }

    /// CPUID with EAX = `leaf`, ECX = `subleaf`: `[eax, ebx, ecx, edx]`.
    pub fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let (v_ebx, v_edx, v_ecx) = self.vendor_regs();
        match leaf {
            0 => [MAX_BASIC, v_ebx, v_ecx, v_edx],
            1 => {
                // EBX: brand index 0, CLFLUSH line size 0 (the field is only defined with the
                // CLFSH bit, which the model does not advertise: CLFLUSH is #UD), one logical
                // processor, initial APIC ID.
                let ebx = (1 << 16) | (u32::from(self.apic_id) << 24);
                [
                    self.signature(),
                    ebx,
                    self.feature_bits(1, ECX),
                    self.feature_bits(1, EDX),
                ]
            }
            // Structured extended features: subleaf 0 only (EAX = highest subleaf = 0).
            7 if subleaf == 0 => [
                0,
                self.feature_bits(7, EBX),
                self.feature_bits(7, ECX),
                self.feature_bits(7, EDX),
            ],
            // 2..=6: cache descriptors (Intel-only), deterministic cache parameters, MONITOR,
            // power management: none; leaf 7 subleaves above 0: zeros.
            2..=MAX_BASIC => [0; 4],
            0x8000_0000 => [MAX_EXTENDED, v_ebx, v_ecx, v_edx],
            EXT1 => [
                self.signature(),
                0,
                self.feature_bits(EXT1, ECX),
                self.feature_bits(EXT1, EDX) | (self.feature_bits(1, EDX) & AMD_MIRRORED_EDX),
            ],
            0x8000_0002..=0x8000_0004 => self.brand_regs((leaf - 0x8000_0002) as usize),
            // L1 TLBs and caches (K8-like): 8/8 fully associative 2M/4M TLB entries, 32/32
            // fully associative 4K entries, 64 KiB 2-way 64-byte-line L1 D and I caches.
            0x8000_0005 => [0xff08_ff08, 0xff20_ff20, 0x4002_0140, 0x4002_0140],
            // L2: no 2M L2 TLB, 512-entry 4-way 4K TLBs, 512 KiB 16-way 64-byte-line L2, no L3.
            0x8000_0006 => [0, 0x4200_4200, 0x0200_8140, 0],
            // Advanced power management: invariant TSC (the BT's TSC is monotonic time).
            0x8000_0007 => [0, 0, 0, 1 << 8],
            // Address sizes; ECX: one core.
            0x8000_0008 => [
                u32::from(self.phys_bits) | (u32::from(self.linear_bits) << 8),
                0,
                0,
                0,
            ],
            _ => [0; 4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CpuModel {
        CpuModel::default()
    }

    fn ascii(regs: &[u32]) -> String {
        regs.iter()
            .flat_map(|r| r.to_le_bytes())
            .take_while(|&b| b != 0)
            .map(char::from)
            .collect()
    }

    #[test]
    fn leaf0_vendor_and_max_leaf() {
        let r = model().cpuid(0, 0);
        assert_eq!(r[0], 7);
        assert_eq!(ascii(&[r[1], r[3], r[2]]), "AuthenticAMD");
        let e = model().cpuid(0x8000_0000, 0);
        assert_eq!(e[0], 0x8000_0008);
        assert_eq!(ascii(&[e[1], e[3], e[2]]), "AuthenticAMD");
    }

    #[test]
    fn leaf1_signature_and_ebx() {
        let r = model().cpuid(1, 0);
        // Family 0Fh (ext family 0), model 2Bh (ext model 2, base b), stepping 1.
        assert_eq!(r[0], 0x0002_0fb1);
        assert_eq!(r[1], 0x0001_0000);
        // Exactly the x86-64-v1 set plus CX16/MOVBE/POPCNT.
        assert_eq!(r[3], 0x0781_bb7d);
        assert_eq!(r[2], (1 << 13) | (1 << 22) | (1 << 23));
        assert_eq!(model().cpuid(0x8000_0001, 0)[0], r[0]);
    }

    #[test]
    fn extended_features() {
        let r = model().cpuid(0x8000_0001, 0);
        assert_eq!(r[2], 0x121); // LAHF_LM, ABM, 3DNowPrefetch
        let ext = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);
        assert_eq!(r[3] & !AMD_MIRRORED_EDX, ext);
        assert_eq!(r[3] & AMD_MIRRORED_EDX, 0x0781_bb7d & AMD_MIRRORED_EDX);
    }

    #[test]
    fn every_advertised_bit_is_in_the_explicit_list() {
        let m = model();
        let mut expected = std::collections::HashMap::<(u32, usize), u32>::new();
        for f in Feature::ADVERTISED {
            let l = f.location();
            *expected.entry((l.leaf, l.reg)).or_default() |= 1 << l.bit;
        }
        let r1 = m.cpuid(1, 0);
        assert_eq!(r1[2], expected[&(1, ECX)]);
        assert_eq!(r1[3], expected[&(1, EDX)]);
        let e1 = m.cpuid(EXT1, 0);
        assert_eq!(e1[2], expected[&(EXT1, ECX)]);
        assert_eq!(e1[3] & !AMD_MIRRORED_EDX, expected[&(EXT1, EDX)]);
        let l7 = m.cpuid(7, 0);
        assert_eq!(l7[1], expected[&(7, EBX)]);
        assert_eq!(l7, [0, 1 << 3, 0, 0]); // BMI1 only
                                           // Other subleaves of leaf 7 and every other feature leaf advertise nothing.
        assert_eq!(m.cpuid(7, 1), [0; 4]);
        assert_eq!(m.cpuid(6, 0), [0; 4]);
        assert_eq!(m.cpuid(0x8000_0007, 0)[..3], [0; 3]);
        // No feature appears twice in the list.
        let mut seen = std::collections::HashSet::new();
        assert!(Feature::ADVERTISED.iter().all(|f| seen.insert(*f)));
    }

    #[test]
    fn brand_string() {
        let m = model();
        let regs: Vec<u32> = (0x8000_0002..=0x8000_0004)
            .flat_map(|l| m.cpuid(l, 0))
            .collect();
        assert_eq!(ascii(&regs), BRAND);
    }

    #[test]
    fn address_sizes_tsc_and_out_of_range_leaves() {
        let m = model();
        assert_eq!(m.cpuid(0x8000_0008, 0)[0], 0x3028);
        assert_eq!(m.cpuid(0x8000_0007, 0)[3], 1 << 8);
        for leaf in [8, 0xb, 0xd, 0x4000_0000, 0x8000_0009, 0xffff_ffff] {
            assert_eq!(m.cpuid(leaf, 0), [0; 4], "leaf {leaf:#x}");
        }
        // Cache leaves are non-zero and report 64-byte lines.
        assert_eq!(m.cpuid(0x8000_0005, 0)[2] & 0xff, 64);
        assert_eq!(m.cpuid(0x8000_0006, 0)[2] & 0xff, 64);
    }

    #[test]
    fn supports_maps_iced_features() {
        use iced_x86::CpuidFeature as C;
        let m = model();
        for f in [
            C::X64,
            C::CMOV,
            C::SSE2,
            C::CMPXCHG16B,
            C::LZCNT,
            C::RDTSCP,
            C::INTEL486,
            C::BMI1,
            C::PREFETCHW,
            C::FPU387,
        ] {
            assert!(m.supports(f), "{f:?}");
        }
        for f in [
            C::SSE3,
            C::AVX,
            C::CLFSH,
            C::FSGSBASE,
            C::RDRAND,
            C::MONITOR,
            C::BMI2,
            C::RDPID,
            C::ADX,
            C::XSAVE,
            C::INTEL8086_ONLY,
            C::PREFETCHWT1,
        ] {
            assert!(!m.supports(f), "{f:?}");
        }
        let mut no_lzcnt = model();
        no_lzcnt.features.retain(|&f| f != Feature::Abm);
        assert!(!no_lzcnt.supports(C::LZCNT));
    }
}
