//! The floating-point families: `x87`, `sse` (SSE/SSE2 floating point) and `simd_int` (MMX and
//! SSE2 integer), with random x87/MMX/SSE state biased to the special classes.
//!
//! Instructions come from iced-x86's opcode tables (every legacy form of the family's mnemonics
//! that needs nothing beyond FPU/CMOV/MMX/SSE/SSE2: what the BT's CPU model advertises). Operands:
//! - x87 registers anywhere in the stack, whatever their tags, so stack overflow and underflow
//!   happen (masked: QNaN indefinite and FSW.SF; unmasked: #MF at the next waiting instruction);
//! - memory operands `[ptr + disp]` inside the FP zone of the data region (one reserved pointer
//!   register that no instruction writes), 16-byte aligned for the aligned SSE forms except for
//!   one in [`MISALIGNED_ONE_IN`] (so #GP(0) is checked too);
//! - FLDCW and LDMXCSR read a control slot holding a chosen valid value (random RC, PC, DAZ,
//!   FTZ; the masks as the case's variant says), away from every other memory operand.
//!
//! Initial state: ST0-7 with a random TOP, the valid registers at the top of the stack (or a
//! random tag pattern), values drawn from [`x87_value`] (±0, denormals, pseudo-denormals,
//! unnormals, pseudo-infinities/NaNs, infinities, QNaN/SNaN, the indefinite, extremes, values
//! one ulp around rounding boundaries); XMM lanes of f32/f64 specials or integer edge bytes;
//! FCW with random RC and PC, MXCSR with random RC, DAZ and FTZ. Exceptions are masked except
//! in one case in [`UNMASKED_ONE_IN`], which unmasks a random subset (and may start with a
//! pending x87 exception) to check #MF/#XM delivery: the vector, and the state left unchanged.
//!
//! The generator never lets an x87 condition code the SDM leaves undefined reach a register
//! or memory: FNSTSW (and anything else that stores the status word) comes after an
//! instruction that defines all four (FXAM is inserted when needed).

use iced_x86::{
    Code, CpuidFeature, Encoder, EncodingKind, Instruction, MemoryOperand, Mnemonic,
    OpCodeOperandKind as K, Register,
};
use ringzero_translator::state::FpuState;

use super::flags::fsw_condition_codes;
use super::gen::{Family, Rng};
use super::{Case, Mode, DATA_BASE, DATA_SIZE, STACK_TOP};

/// One case in this many unmasks some exceptions.
pub const UNMASKED_ONE_IN: u64 = 8;
/// One aligned-form memory operand in this many is misaligned (#GP(0)).
pub const MISALIGNED_ONE_IN: u64 = 32;
/// Start of the zone random FP memory operands address (offset in the data region).
const ZONE_START: u64 = 0x400;
/// End of that zone.
const ZONE_END: u64 = 0x1000;
/// Control slots (FLDCW/LDMXCSR sources), 16 bytes apart, never addressed otherwise.
const SLOTS: u64 = 0x1f00;

/// x87 mnemonics of the `x87` family (the no-wait forms of the control instructions).
const X87: &[Mnemonic] = {
    use Mnemonic as M;
    &[
        M::Fld,
        M::Fst,
        M::Fstp,
        M::Fild,
        M::Fist,
        M::Fistp,
        // No FISTTP: it is SSE3, which the BT's CPU model does not advertise
        // (translator/src/system/cpuid.rs), so it is #UD there by design while the host CPU
        // (which has SSE3 and runs ring 3 natively whatever CPUID says) executes it.
        M::Fadd,
        M::Faddp,
        M::Fiadd,
        M::Fsub,
        M::Fsubp,
        M::Fisub,
        M::Fsubr,
        M::Fsubrp,
        M::Fisubr,
        M::Fmul,
        M::Fmulp,
        M::Fimul,
        M::Fdiv,
        M::Fdivp,
        M::Fidiv,
        M::Fdivr,
        M::Fdivrp,
        M::Fidivr,
        M::Fcom,
        M::Fcomp,
        M::Fcompp,
        M::Fucom,
        M::Fucomp,
        M::Fucompp,
        M::Ficom,
        M::Ficomp,
        M::Fcomi,
        M::Fcomip,
        M::Fucomi,
        M::Fucomip,
        M::Ftst,
        M::Fxam,
        M::Fxch,
        M::Fchs,
        M::Fabs,
        M::Fsqrt,
        M::Frndint,
        M::Fscale,
        M::Fprem,
        M::Fprem1,
        M::Fxtract,
        M::Fld1,
        M::Fldz,
        M::Fldpi,
        M::Fldl2e,
        M::Fldl2t,
        M::Fldlg2,
        M::Fldln2,
        M::Fcmovb,
        M::Fcmove,
        M::Fcmovbe,
        M::Fcmovu,
        M::Fcmovnb,
        M::Fcmovne,
        M::Fcmovnbe,
        M::Fcmovnu,
        M::Fnstsw,
        M::Fnstcw,
        M::Fldcw,
        M::Fincstp,
        M::Fdecstp,
        M::Ffree,
        M::Fnop,
        M::Fnclex,
        M::Wait,
        M::Fbstp,
    ]
};

/// SSE/SSE2 floating-point mnemonics of the `sse` family.
const SSE: &[Mnemonic] = {
    use Mnemonic as M;
    &[
        M::Addps,
        M::Addpd,
        M::Addss,
        M::Addsd,
        M::Subps,
        M::Subpd,
        M::Subss,
        M::Subsd,
        M::Mulps,
        M::Mulpd,
        M::Mulss,
        M::Mulsd,
        M::Divps,
        M::Divpd,
        M::Divss,
        M::Divsd,
        M::Sqrtps,
        M::Sqrtpd,
        M::Sqrtss,
        M::Sqrtsd,
        M::Minps,
        M::Minpd,
        M::Minss,
        M::Minsd,
        M::Maxps,
        M::Maxpd,
        M::Maxss,
        M::Maxsd,
        M::Cmpps,
        M::Cmppd,
        M::Cmpss,
        M::Cmpsd,
        M::Comiss,
        M::Comisd,
        M::Ucomiss,
        M::Ucomisd,
        M::Andps,
        M::Andpd,
        M::Andnps,
        M::Andnpd,
        M::Orps,
        M::Orpd,
        M::Xorps,
        M::Xorpd,
        M::Movaps,
        M::Movapd,
        M::Movups,
        M::Movupd,
        M::Movss,
        M::Movsd,
        M::Movlps,
        M::Movlpd,
        M::Movhps,
        M::Movhpd,
        M::Movhlps,
        M::Movlhps,
        M::Movmskps,
        M::Movmskpd,
        M::Movntps,
        M::Movntpd,
        M::Shufps,
        M::Shufpd,
        M::Unpcklps,
        M::Unpcklpd,
        M::Unpckhps,
        M::Unpckhpd,
        M::Cvtps2pd,
        M::Cvtpd2ps,
        M::Cvtss2sd,
        M::Cvtsd2ss,
        M::Cvtsi2ss,
        M::Cvtsi2sd,
        M::Cvtss2si,
        M::Cvtsd2si,
        M::Cvttss2si,
        M::Cvttsd2si,
        M::Cvtdq2ps,
        M::Cvtps2dq,
        M::Cvttps2dq,
        M::Cvtdq2pd,
        M::Cvtpd2dq,
        M::Cvttpd2dq,
        M::Cvtpi2ps,
        M::Cvtpi2pd,
        M::Cvtps2pi,
        M::Cvttps2pi,
        M::Cvtpd2pi,
        M::Cvttpd2pi,
        M::Ldmxcsr,
        M::Stmxcsr,
    ]
};

/// MMX/SSE2 integer mnemonics of the `simd_int` family.
const SIMD_INT: &[Mnemonic] = {
    use Mnemonic as M;
    &[
        M::Paddb,
        M::Paddw,
        M::Paddd,
        M::Paddq,
        M::Paddsb,
        M::Paddsw,
        M::Paddusb,
        M::Paddusw,
        M::Psubb,
        M::Psubw,
        M::Psubd,
        M::Psubq,
        M::Psubsb,
        M::Psubsw,
        M::Psubusb,
        M::Psubusw,
        M::Pcmpeqb,
        M::Pcmpeqw,
        M::Pcmpeqd,
        M::Pcmpgtb,
        M::Pcmpgtw,
        M::Pcmpgtd,
        M::Pmovmskb,
        M::Pminub,
        M::Pminsw,
        M::Pmaxub,
        M::Pmaxsw,
        M::Pavgb,
        M::Pavgw,
        M::Psadbw,
        M::Pmullw,
        M::Pmulhw,
        M::Pmulhuw,
        M::Pmuludq,
        M::Pmaddwd,
        M::Packsswb,
        M::Packssdw,
        M::Packuswb,
        M::Punpcklbw,
        M::Punpcklwd,
        M::Punpckldq,
        M::Punpcklqdq,
        M::Punpckhbw,
        M::Punpckhwd,
        M::Punpckhdq,
        M::Punpckhqdq,
        M::Pshufd,
        M::Pshufhw,
        M::Pshuflw,
        M::Pshufw,
        M::Psllw,
        M::Pslld,
        M::Psllq,
        M::Psrlw,
        M::Psrld,
        M::Psrlq,
        M::Psraw,
        M::Psrad,
        M::Pslldq,
        M::Psrldq,
        M::Pinsrw,
        M::Pextrw,
        M::Pand,
        M::Pandn,
        M::Por,
        M::Pxor,
        M::Movd,
        M::Movq,
        M::Movdqa,
        M::Movdqu,
        M::Movq2dq,
        M::Movdq2q,
        M::Movntdq,
        M::Movntq,
        M::Emms,
    ]
};

/// The mnemonics of an FP family (empty for the integer families).
pub fn mnemonics(family: Family) -> &'static [Mnemonic] {
    match family {
        Family::X87 => X87,
        Family::Sse => SSE,
        Family::SimdInt => SIMD_INT,
        _ => &[],
    }
}

/// Whether `family` is one of the floating-point/SIMD families generated here.
pub fn is_fp_family(family: Family) -> bool {
    matches!(family, Family::X87 | Family::Sse | Family::SimdInt)
}

fn feature_ok(f: CpuidFeature) -> bool {
    use CpuidFeature as F;
    matches!(
        f,
        F::FPU | F::FPU287 | F::FPU387 | F::CMOV | F::MMX | F::SSE | F::SSE2
    )
}

fn kind_ok(k: K) -> bool {
    matches!(
        k,
        K::st0
            | K::sti_opcode
            | K::mem
            | K::xmm_reg
            | K::xmm_rm
            | K::xmm_or_mem
            | K::mm_reg
            | K::mm_rm
            | K::mm_or_mem
            | K::r32_reg
            | K::r32_rm
            | K::r32_reg_mem
            | K::r32_or_mem
            | K::r64_reg
            | K::r64_rm
            | K::r64_reg_mem
            | K::r64_or_mem
            | K::ax
            | K::imm8
    )
}

/// Codes of an FP `family` valid in `mode` whose operands this generator fills.
pub fn family_codes(family: Family, mode: Mode) -> Vec<Code> {
    let wanted = mnemonics(family);
    Code::values()
        .filter(|c| {
            let info = c.op_code();
            info.is_instruction()
                && info.encoding() == EncodingKind::Legacy
                && info.decoder_option() == iced_x86::DecoderOptions::NONE
                && wanted.contains(&c.mnemonic())
                && match mode {
                    Mode::Long64 => info.mode64(),
                    Mode::Compat32 => info.mode32(),
                }
                && c.cpuid_features().iter().all(|f| feature_ok(*f))
                && info.op_kinds().iter().all(|k| kind_ok(*k))
        })
        .collect()
}

/// [`family_codes`] computed once per family and mode.
fn cached_codes(family: Family, mode: Mode) -> &'static [Code] {
    static TABLES: std::sync::OnceLock<Vec<Vec<Code>>> = std::sync::OnceLock::new();
    let fams = [Family::X87, Family::Sse, Family::SimdInt];
    let t = TABLES.get_or_init(|| {
        fams.iter()
            .flat_map(|f| [Mode::Long64, Mode::Compat32].map(|m| family_codes(*f, m)))
            .collect()
    });
    let f = fams.iter().position(|x| *x == family).unwrap_or(0);
    let m = usize::from(mode == Mode::Compat32);
    t.get(f * 2 + m).map(Vec::as_slice).unwrap_or(&[])
}

/// An 80-bit value (in the low 10 bytes of an FXSAVE slot) from the x87 special classes.
pub fn x87_value(rng: &mut Rng) -> [u8; 16] {
    let sign = if rng.chance(1, 2) { 0x8000u16 } else { 0 };
    let frac = rng.next_u64() & !(1 << 63);
    let (se, sig): (u16, u64) = match rng.below(20) {
        0 => (0, 0),                                // zero
        1 => (0, frac >> rng.below(63)),            // denormal (J = 0)
        2 => (0, (1 << 63) | frac),                 // pseudo-denormal (J = 1, exp 0)
        3 => (1 + rng.below(0x7ffe) as u16, frac),  // unnormal (J = 0)
        4 => (0x7fff, 1 << 63),                     // infinity
        5 => (0x7fff, (3 << 62) | (frac >> 1)),     // QNaN
        6 => (0x7fff, (1 << 63) | (frac >> 2) | 1), // SNaN (non-zero payload)
        7 => (0x7fff, frac),                        // pseudo-infinity / pseudo-NaN (J = 0)
        8 => (0xffff, 3 << 62),                     // the real indefinite (negative)
        9 => (0x7ffe, u64::MAX),                    // largest normal
        10 => (1, 1 << 63),                         // smallest normal
        11 => (0x3fff, 1 << 63),                    // 1.0
        // Near a rounding boundary for 24, 53 or 64 bits of precision: the bits below the
        // kept precision at, just below or just above one half.
        12 | 13 => {
            let keep = *[24u32, 53, 63].get(rng.below(3) as usize).unwrap_or(&53);
            let half = 1u64 << (63 - keep);
            let low = match rng.below(3) {
                0 => half,
                1 => half - 1,
                _ => half + 1,
            };
            let high = (1u64 << 63) | (frac & !((half << 1) - 1));
            (
                0x3fff - 40 + rng.below(80) as u16,
                high | (low & ((half << 1) - 1)),
            )
        }
        // Integers and halves (FRNDINT, FIST rounding), near the int16/32/64 limits.
        14 => {
            let e = *[0u16, 1, 14, 15, 16, 30, 31, 32, 62, 63, 64]
                .get(rng.below(11) as usize)
                .unwrap_or(&0);
            (0x3fff + e, (1 << 63) | (frac & (u64::MAX << rng.below(64))))
        }
        15 => (0x3ffe, (1 << 63) | (frac & (u64::MAX << 60))), // 0.5 .. 1 coarse
        // Exponents near the f32/f64 ranges (FST m32/m64 overflow, underflow, denormal).
        16 => {
            let e = *[
                0x3f81u16, 0x3f6a, 0x407e, 0x407f, 0x3c01, 0x3bcd, 0x43fe, 0x43ff,
            ]
            .get(rng.below(8) as usize)
            .unwrap_or(&0x3fff);
            (e - 1 + rng.below(3) as u16, (1 << 63) | frac)
        }
        _ => (0x3fff - 64 + rng.below(128) as u16, (1 << 63) | frac),
    };
    let se = se | sign;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&sig.to_le_bytes());
    out[8..10].copy_from_slice(&se.to_le_bytes());
    out
}

/// An IEEE binary value of `exp_bits`/`frac_bits` from the special classes, as raw bits.
fn ieee_value(rng: &mut Rng, exp_bits: u32, frac_bits: u32) -> u64 {
    let emax = (1u64 << exp_bits) - 1;
    let fmask = (1u64 << frac_bits) - 1;
    let bias = emax >> 1;
    let frac = rng.next_u64() & fmask;
    let sign = u64::from(rng.chance(1, 2)) << (exp_bits + frac_bits);
    let (e, f) = match rng.below(16) {
        0 => (0, 0),
        1 => (0, frac >> rng.below(u64::from(frac_bits))), // denormal
        2 => (0, fmask),                                   // largest denormal
        3 => (1, 0),                                       // smallest normal
        4 => (emax, 0),                                    // infinity
        5 => (emax, (1 << (frac_bits - 1)) | frac),        // QNaN
        6 => (emax, (frac >> 1).max(1)),                   // SNaN
        7 => (emax - 1, fmask),                            // largest normal
        8 => (bias, 0),                                    // 1.0
        // Near rounding boundaries: the low bits at/around one half (for conversions to
        // a narrower format or to integers) and integer-valued halves.
        9 => (bias + rng.below(u64::from(frac_bits) + 2), frac | 1),
        10 => (
            bias - 1 + rng.below(3),
            frac & !((1 << rng.below(u64::from(frac_bits))) - 1),
        ),
        // Around 2^31 and 2^63 (conversion overflow).
        11 => (
            bias + 31 + rng.below(2) - 1 + rng.below(2) * 32,
            frac & !(fmask >> 2),
        ),
        // Near the f32 range inside an f64 (CVTSD2SS overflow/underflow).
        12 if exp_bits == 11 => {
            let e = *[bias + 127, bias + 128, bias - 126, bias - 127, bias - 150]
                .get(rng.below(5) as usize)
                .unwrap_or(&bias);
            (e, frac)
        }
        _ => (bias - 40 + rng.below(80), frac),
    };
    sign | (e.min(emax) << frac_bits) | f
}

/// 16 bytes of one lane kind: four f32, two f64, or integer edge bytes.
fn vector_value(rng: &mut Rng, int_bias: bool) -> [u8; 16] {
    let mut out = [0u8; 16];
    let kind = if int_bias {
        2 + rng.below(2)
    } else {
        rng.below(4)
    };
    match kind {
        0 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&(ieee_value(rng, 8, 23) as u32).to_le_bytes());
            }
        }
        1 => {
            for c in out.chunks_exact_mut(8) {
                c.copy_from_slice(&ieee_value(rng, 11, 52).to_le_bytes());
            }
        }
        2 => {
            for b in out.iter_mut() {
                *b = match rng.below(6) {
                    0 => 0,
                    1 => 0xff,
                    2 => 0x7f,
                    3 => 0x80,
                    _ => rng.next_u64() as u8,
                };
            }
        }
        _ => {
            for c in out.chunks_exact_mut(8) {
                c.copy_from_slice(&rng.edge(64).to_le_bytes());
            }
        }
    }
    out
}

/// A valid FCW: bit 6 set as after FNINIT, random precision (24/53/64 bits) and rounding,
/// exceptions masked unless `unmasked` (then a random subset of IM..PM is clear).
fn random_fcw(rng: &mut Rng, unmasked: bool) -> u16 {
    let pc = *[0u16, 2, 3, 3].get(rng.below(4) as usize).unwrap_or(&3);
    let rc = rng.below(4) as u16;
    let masks = if unmasked {
        0x3f & !(rng.next_u64() as u16 & 0x3f | 1 << rng.below(6))
    } else {
        0x3f
    };
    0x40 | pc << 8 | rc << 10 | masks
}

/// A valid MXCSR: random rounding, DAZ and FTZ, sometimes sticky flags; exceptions masked
/// unless `unmasked`.
fn random_mxcsr(rng: &mut Rng, unmasked: bool) -> u32 {
    let rc = rng.below(4) as u32;
    let daz = u32::from(rng.chance(1, 4)) << 6;
    let ftz = u32::from(rng.chance(1, 4)) << 15;
    let masks = if unmasked {
        0x3f & !(rng.next_u64() as u32 & 0x3f | 1 << rng.below(6))
    } else {
        0x3f
    };
    let flags = if rng.chance(1, 4) {
        rng.next_u64() as u32 & 0x3f
    } else {
        0
    };
    rc << 13 | ftz | daz | masks << 7 | flags
}

/// A random initial x87/MMX/SSE state for `family`.
fn random_fpu(rng: &mut Rng, family: Family, unmasked: bool) -> FpuState {
    let mut f = FpuState::default();
    let top = rng.below(8) as u16;
    let int_bias = family == Family::SimdInt;
    for st in f.st.iter_mut() {
        *st = if int_bias && rng.chance(3, 4) {
            // An MMX value: 64 integer bits, the exponent field all ones as MMX writes leave it
            // or anything.
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&vector_value(rng, true)[..8]);
            let se = if rng.chance(1, 2) {
                0xffff
            } else {
                rng.next_u64() as u16
            };
            v[8..10].copy_from_slice(&se.to_le_bytes());
            v
        } else {
            x87_value(rng)
        };
    }
    // Valid registers: the top `n` of the stack, or (one case in five) any pattern.
    f.ftw = if rng.chance(1, 5) {
        rng.next_u64() as u8
    } else {
        let n = rng.below(9);
        (0..n).fold(0u8, |t, i| t | 1 << ((u64::from(top) + i) & 7))
    };
    f.fcw = random_fcw(rng, unmasked);
    let cc = rng.next_u64() as u16 & super::flags::FSW_CC;
    let mut flags = 0u16;
    if rng.chance(1, 4) {
        // Sticky flags that are masked (no pending exception) ...
        flags = rng.next_u64() as u16 & f.fcw & 0x3f;
    }
    if unmasked && rng.chance(1, 3) {
        // ... or, in the unmasked variant, a pending one (#MF at the next waiting instruction).
        flags |= rng.next_u64() as u16 & 0x7f;
    }
    f.fsw = top << 11 | cc | flags;
    if f.fsw & 0x3f & !f.fcw != 0 {
        f.fsw |= 0x8080; // ES and B
    }
    for x in f.xmm.iter_mut() {
        let ints = int_bias || (family == Family::Sse && rng.chance(1, 8));
        *x = vector_value(rng, ints);
    }
    f.mxcsr = random_mxcsr(rng, unmasked);
    f
}

/// An FP case under construction.
struct FpBuilder {
    mode: Mode,
    rng: Rng,
    regs: [u64; 16],
    /// The memory operands' base register (never written).
    ptr: usize,
    insns: Vec<Instruction>,
    /// (address, bytes) written over the random data: the control slots.
    pokes: Vec<(u64, Vec<u8>)>,
    /// Condition codes left undefined so far.
    undef_cc: u16,
    unmasked: bool,
    codes: &'static [Code],
}

/// Generates an FP-family case (`generate` in [`super::gen`] delegates here).
pub fn generate(mut rng: Rng, mode: Mode, family: Family) -> Case {
    let nregs = if mode == Mode::Long64 { 16 } else { 8 };
    let mut regs = [0u64; 16];
    for r in regs.iter_mut().take(nregs) {
        let bits = rng.pick(&[8u32, 16, 32, 64]).unwrap_or(32);
        *r = rng.edge(if mode == Mode::Long64 {
            bits
        } else {
            bits.min(32)
        });
    }
    regs[4] = STACK_TOP;
    // Any register but RAX (FNSTSW AX writes it) and RSP is the pointer.
    let mut ptr = 1 + rng.below(nregs as u64 - 2) as usize;
    if ptr >= 4 {
        ptr += 1;
    }
    regs[ptr] = DATA_BASE + 0x800 + 16 * rng.below(32);
    let unmasked = rng.below(UNMASKED_ONE_IN) == 0;
    let mut b = FpBuilder {
        mode,
        rng,
        regs,
        ptr,
        insns: Vec::new(),
        pokes: Vec::new(),
        undef_cc: 0,
        unmasked,
        codes: cached_codes(family, mode),
    };
    let fpu = random_fpu(&mut b.rng, family, unmasked);
    b.fill();
    let code = b.encode();
    let rflags =
        b.rng.next_u64() & super::RFLAGS_CASE_BITS & !ringzero_translator::state::rflags::DF;
    let mut data = vec![0u8; DATA_SIZE as usize];
    for (i, chunk) in data.chunks_mut(16).enumerate() {
        let off = 16 * i as u64;
        let v: [u8; 16] = if (ZONE_START..ZONE_END).contains(&off) {
            match b.rng.below(6) {
                0 => x87_value(&mut b.rng),
                1 => {
                    // Integers for FILD/FIADD..: int16/32/64 edges.
                    let mut v = [0u8; 16];
                    for c in v.chunks_exact_mut(2) {
                        c.copy_from_slice(&(b.rng.edge(16) as u16).to_le_bytes());
                    }
                    if b.rng.chance(1, 2) {
                        v[..8].copy_from_slice(&b.rng.edge(64).to_le_bytes());
                    }
                    v
                }
                _ => vector_value(&mut b.rng, family == Family::SimdInt),
            }
        } else {
            vector_value(&mut b.rng, true)
        };
        let n = chunk.len();
        chunk.copy_from_slice(&v[..n]);
    }
    for (addr, bytes) in &b.pokes {
        let off = (addr - DATA_BASE) as usize;
        if let Some(d) = data.get_mut(off..off + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }
    Case {
        code,
        regs: b.regs,
        rflags,
        data,
        fpu,
    }
}

impl FpBuilder {
    fn fill(&mut self) {
        let n = 1 + self.rng.below(10) as usize;
        let mut tries = 0;
        while self.insns.len() < n && tries < 200 {
            tries += 1;
            let Some(insn) = self.table_insn() else {
                continue;
            };
            if Encoder::new(self.mode.bitness())
                .encode(&insn, super::CODE_BASE)
                .is_err()
            {
                continue;
            }
            if stores_status(&insn) && self.undef_cc != 0 {
                // Define all four condition codes first.
                self.push(Instruction::with(Code::Fxam));
            }
            self.push(insn);
        }
    }

    fn push(&mut self, insn: Instruction) {
        let (u, d) = fsw_condition_codes(&insn);
        self.undef_cc = (self.undef_cc & !d) | u;
        self.insns.push(insn);
    }

    fn xmm(&mut self) -> Register {
        let n = if self.mode == Mode::Long64 { 16 } else { 8 };
        Register::XMM0 + self.rng.below(n) as u32
    }

    fn mm(&mut self) -> Register {
        Register::MM0 + self.rng.below(8) as u32
    }

    /// A GPR of `bytes` size other than RSP and the pointer (it may be written).
    fn gpr(&mut self, bytes: u32) -> Register {
        let n = if self.mode == Mode::Long64 { 16 } else { 8 };
        let mut i = self.rng.below(n) as usize;
        while i == 4 || i == self.ptr {
            i = (i + 1) % n as usize;
        }
        let base = if bytes == 8 {
            Register::RAX
        } else {
            Register::EAX
        };
        base + i as u32
    }

    fn base_reg(&self) -> Register {
        if self.mode == Mode::Long64 {
            Register::RAX + self.ptr as u32
        } else {
            Register::EAX + self.ptr as u32
        }
    }

    /// A memory operand of `size` bytes in the FP zone; `aligned`: 16-byte aligned (except
    /// for one in [`MISALIGNED_ONE_IN`]).
    fn mem(&mut self, size: u64, aligned: bool) -> MemoryOperand {
        let base = self.regs[self.ptr];
        let lo = DATA_BASE + ZONE_START;
        let hi = DATA_BASE + ZONE_END - 16;
        let mut addr = lo + 16 * self.rng.below((hi - lo) / 16);
        if !aligned || self.rng.below(MISALIGNED_ONE_IN) == 0 {
            addr += self.rng.below(16 - size.min(15));
        }
        MemoryOperand::with_base_displ(self.base_reg(), addr as i64 - base as i64)
    }

    /// A control slot holding `bytes` (FLDCW/LDMXCSR source).
    fn slot(&mut self, bytes: Vec<u8>) -> MemoryOperand {
        let addr = DATA_BASE + SLOTS + 16 * self.pokes.len() as u64;
        self.pokes.push((addr, bytes));
        MemoryOperand::with_base_displ(self.base_reg(), addr as i64 - self.regs[self.ptr] as i64)
    }

    fn imm8(&mut self, m: Mnemonic) -> u32 {
        use Mnemonic as M;
        match m {
            // Legacy SSE compare predicates are imm8[2:0] (bits 7:3 reserved).
            M::Cmpps | M::Cmppd | M::Cmpss | M::Cmpsd => self.rng.below(8) as u32,
            // Shift counts: around each element size, and beyond.
            M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
            | M::Pslldq
            | M::Psrldq => *[0u32, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255]
                .get(self.rng.below(14) as usize)
                .unwrap_or(&1),
            _ => self.rng.next_u64() as u8 as u32,
        }
    }

    fn table_insn(&mut self) -> Option<Instruction> {
        let code = self.rng.pick(self.codes)?;
        let info = code.op_code();
        let m = code.mnemonic();
        let mut ops: Vec<Op> = Vec::with_capacity(3);
        for &k in info.op_kinds() {
            let op = match k {
                K::st0 => Op::Reg(Register::ST0),
                K::sti_opcode => Op::Reg(Register::ST0 + self.rng.below(8) as u32),
                K::mem => Op::Mem(self.mem_for(code)),
                K::xmm_reg | K::xmm_rm => Op::Reg(self.xmm()),
                K::mm_reg | K::mm_rm => Op::Reg(self.mm()),
                K::xmm_or_mem | K::mm_or_mem | K::r32_or_mem | K::r64_or_mem
                    if self.rng.chance(1, 3) =>
                {
                    Op::Mem(self.mem_for(code))
                }
                K::xmm_or_mem => Op::Reg(self.xmm()),
                K::mm_or_mem => Op::Reg(self.mm()),
                K::r32_reg | K::r32_rm | K::r32_reg_mem | K::r32_or_mem => Op::Reg(self.gpr(4)),
                K::r64_reg | K::r64_rm | K::r64_reg_mem | K::r64_or_mem => Op::Reg(self.gpr(8)),
                K::ax => Op::Reg(Register::AX),
                K::imm8 => Op::Imm(self.imm8(m)),
                _ => return None,
            };
            ops.push(op);
        }
        // FLDCW and LDMXCSR load a chosen valid value from a control slot.
        if m == Mnemonic::Fldcw {
            let v = random_fcw(&mut self.rng, self.unmasked);
            ops = vec![Op::Mem(self.slot(v.to_le_bytes().to_vec()))];
        }
        if m == Mnemonic::Ldmxcsr {
            let v = random_mxcsr(&mut self.rng, self.unmasked);
            ops = vec![Op::Mem(self.slot(v.to_le_bytes().to_vec()))];
        }
        create(code, &ops)
    }

    /// A memory operand sized and aligned for `code`'s access.
    fn mem_for(&mut self, code: Code) -> MemoryOperand {
        let size = memory_size(code);
        let aligned = size == 16
            && !matches!(
                code.mnemonic(),
                Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu
            );
        self.mem(size, aligned)
    }

    fn encode(&self) -> Vec<u8> {
        let mut enc = Encoder::new(self.mode.bitness());
        let mut ip = super::CODE_BASE;
        for i in &self.insns {
            ip += enc.encode(i, ip).unwrap_or(0) as u64;
        }
        let mut out = enc.take_buffer();
        out.push(0xcc);
        out
    }
}

/// The bytes `code`'s memory operand accesses (16 when unknown: the zone has room).
fn memory_size(code: Code) -> u64 {
    use iced_x86::MemorySize as S;
    // The memory size is a property of the code alone.
    let mut i = Instruction::default();
    i.set_code(code);
    match i.memory_size() {
        S::Unknown => 16,
        other => (other.size() as u64).clamp(1, 16),
    }
}

/// Whether `insn` stores the x87 status word (whose condition codes must then be defined).
fn stores_status(insn: &Instruction) -> bool {
    matches!(
        insn.mnemonic(),
        Mnemonic::Fnstsw | Mnemonic::Fstsw | Mnemonic::Fnstenv | Mnemonic::Fnsave
    )
}

#[derive(Clone, Copy)]
enum Op {
    Reg(Register),
    Mem(MemoryOperand),
    Imm(u32),
}

fn create(code: Code, ops: &[Op]) -> Option<Instruction> {
    use Op::*;
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(a)] => Instruction::with1(code, a),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(b)] => Instruction::with2(code, a, b),
        [Mem(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Mem(b), Imm(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Imm(b)] => Instruction::with2(code, a, b),
        _ => return None,
    };
    r.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fp_family_has_its_key_forms() {
        for m in [Mode::Long64, Mode::Compat32] {
            let x = family_codes(Family::X87, m);
            for want in [
                Code::Fld_m80fp,
                Code::Fstp_m32fp,
                Code::Fcomip_st0_sti,
                Code::Fnstsw_AX,
                Code::Fldcw_m2byte,
                Code::Fcmovnbe_st0_sti,
                Code::Fprem1,
            ] {
                assert!(x.contains(&want), "{want:?} {m:?}");
            }
            let s = family_codes(Family::Sse, m);
            for want in [
                Code::Addps_xmm_xmmm128,
                Code::Cvttsd2si_r32_xmmm64,
                Code::Ucomisd_xmm_xmmm64,
                Code::Ldmxcsr_m32,
                Code::Cvtpi2ps_xmm_mmm64,
                Code::Shufpd_xmm_xmmm128_imm8,
            ] {
                assert!(s.contains(&want), "{want:?} {m:?}");
            }
            let i = family_codes(Family::SimdInt, m);
            for want in [
                Code::Paddq_mm_mmm64,
                Code::Psadbw_xmm_xmmm128,
                Code::Pextrw_r32_xmm_imm8,
                Code::Pinsrw_mm_r32m16_imm8,
                Code::Psraw_xmm_imm8,
                Code::Emms,
            ] {
                assert!(i.contains(&want), "{want:?} {m:?}");
            }
            // Nothing past SSE2, nothing VEX.
            assert!(!i.iter().any(|c| c.mnemonic() == Mnemonic::Pminsb));
            assert!(!x.iter().any(|c| c.mnemonic() == Mnemonic::Fisttp));
        }
        assert!(family_codes(Family::Sse, Mode::Long64).contains(&Code::Cvtsi2sd_xmm_rm64));
    }

    #[test]
    fn x87_values_cover_the_special_classes() {
        let mut rng = Rng::new(3, 0);
        let (mut denormal, mut pseudo_denormal, mut unnormal, mut snan, mut inf) =
            (false, false, false, false, false);
        for _ in 0..2000 {
            let v = x87_value(&mut rng);
            let se = u16::from_le_bytes([v[8], v[9]]) & 0x7fff;
            let sig = u64::from_le_bytes(v[..8].try_into().unwrap());
            let j = sig >> 63 == 1;
            denormal |= se == 0 && !j && sig != 0;
            pseudo_denormal |= se == 0 && j;
            unnormal |= se != 0 && se != 0x7fff && !j;
            snan |= se == 0x7fff && j && sig >> 62 & 1 == 0 && sig << 2 != 0;
            inf |= se == 0x7fff && sig == 1 << 63;
        }
        assert!(denormal && pseudo_denormal && unnormal && snan && inf);
    }

    #[test]
    fn control_values_are_valid_and_masked_unless_asked() {
        let mut rng = Rng::new(5, 1);
        for _ in 0..500 {
            let m = random_mxcsr(&mut rng, false);
            assert_eq!(m & !0xffff, 0);
            assert_eq!(m & 0x1f80, 0x1f80);
            let c = random_fcw(&mut rng, false);
            assert_eq!(c & 0x3f, 0x3f);
            assert_ne!(c >> 8 & 3, 1, "reserved precision");
            assert_ne!(random_fcw(&mut rng, true) & 0x3f, 0x3f);
        }
    }

    #[test]
    fn cases_keep_memory_in_the_zone_and_status_reads_defined() {
        use crate::difftest::flags::sequence_undefined_fsw;
        use crate::difftest::gen::{decode, memory_operand_address};
        for family in [Family::X87, Family::Sse, Family::SimdInt] {
            for index in 0..300 {
                let c = generate(Rng::new(11, index), Mode::Long64, family);
                let insns = decode(&c, Mode::Long64);
                // The pointer register (the one memory operands are based on) is never
                // written: every address is known from the initial state.
                let mut factory = iced_x86::InstructionInfoFactory::new();
                let bases: Vec<Register> = insns
                    .iter()
                    .filter(|i| i.memory_base() != Register::None)
                    .map(|i| i.memory_base().full_register())
                    .collect();
                for i in &insns {
                    for u in factory.info(i).used_registers() {
                        let written = !matches!(
                            u.access(),
                            iced_x86::OpAccess::Read | iced_x86::OpAccess::NoMemAccess
                        );
                        assert!(
                            !(written && bases.contains(&u.register().full_register())),
                            "{family:?} {index}: {i} writes the pointer"
                        );
                    }
                }
                for (n, i) in insns.iter().enumerate() {
                    if (0..i.op_count()).any(|k| i.op_kind(k) == iced_x86::OpKind::Memory) {
                        let a = memory_operand_address(i, 0, &c.regs).unwrap_or(0);
                        let a = if i.op0_kind() == iced_x86::OpKind::Memory {
                            a
                        } else {
                            (0..i.op_count())
                                .find(|k| i.op_kind(*k) == iced_x86::OpKind::Memory)
                                .and_then(|k| memory_operand_address(i, k, &c.regs))
                                .unwrap_or(0)
                        };
                        assert!(
                            (DATA_BASE + ZONE_START..DATA_BASE + SLOTS + 0x100).contains(&a),
                            "{family:?} {index}: {i} at {a:#x}"
                        );
                    }
                    if stores_status(i) {
                        assert_eq!(sequence_undefined_fsw(&insns[..n], u64::MAX), 0, "{i}");
                    }
                }
            }
        }
    }
}
