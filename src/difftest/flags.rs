//! Flags the manuals leave undefined, per instruction and over a sequence.
//!
//! The comparison of a case masks exactly the arithmetic flags whose value the last instruction
//! that wrote them left undefined (Intel SDM Vol. 2, each instruction's "Flags Affected"). An
//! instruction that defines a flag later clears the undefined state. Reading an undefined flag
//! (e.g. `adc` after `mul`) would make registers undefined too; the generator never emits such a
//! sequence (see [`super::gen`]), so registers are always compared in full.

use iced_x86::{Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};
use ringzero_translator::state::rflags::{AF, CF, OF, PF, SF, ZF};

/// All six arithmetic flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// Converts iced-x86's `RflagsBits` (its own bit numbering) to EFLAGS bit positions.
pub fn eflags_from_iced(bits: u32) -> u64 {
    use iced_x86::RflagsBits as R;
    [
        (R::OF, OF),
        (R::SF, SF),
        (R::ZF, ZF),
        (R::AF, AF),
        (R::CF, CF),
        (R::PF, PF),
    ]
    .iter()
    .filter(|(i, _)| bits & i != 0)
    .fold(0, |acc, (_, e)| acc | e)
}

/// Width in bits of the instruction's first operand (its destination for the ALU forms).
fn op0_bits(insn: &Instruction) -> u32 {
    let bytes = match insn.op0_kind() {
        OpKind::Register => insn.op0_register().size(),
        OpKind::Memory => insn.memory_size().size(),
        _ => 0,
    };
    (bytes * 8) as u32
}

/// The masked shift/rotate count when it is known: the immediate, or `cl` if given.
/// SDM Vol. 2B SAL/SAR/SHL/SHR and RCL/RCR/ROL/ROR: the count is masked to 5 bits (6 with
/// REX.W); SHLD/SHRD likewise.
pub fn masked_count(insn: &Instruction, cl: Option<u8>) -> Option<u32> {
    let mask = if op0_bits(insn) == 64 { 0x3f } else { 0x1f };
    let count_op = insn.op_count().checked_sub(1)?;
    let raw = match insn.op_kind(count_op) {
        OpKind::Immediate8 => u32::from(insn.immediate8()),
        OpKind::Register if insn.op_register(count_op) == Register::CL => u32::from(cl?),
        // The D0/D1 "by 1" forms.
        _ if insn.op_count() == 1 => 1,
        _ => return None,
    };
    Some(raw & mask)
}

/// Whether the instruction's flag effect depends on a shift/rotate count.
fn is_counted(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Shl
            | Mnemonic::Sal
            | Mnemonic::Shr
            | Mnemonic::Sar
            | Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Rcl
            | Mnemonic::Rcr
            | Mnemonic::Shld
            | Mnemonic::Shrd
    )
}

/// Flags the SDM leaves undefined after `insn`, assuming nothing about a `cl` count (so the
/// answer is conservative for count-in-`cl` shifts and rotates).
pub fn undefined_flags_mask(insn: &Instruction) -> u64 {
    undefined_flags(insn, None)
}

/// Flags the SDM leaves undefined after `insn`, given the `cl` value if known.
pub fn undefined_flags(insn: &Instruction, cl: Option<u8>) -> u64 {
    let bits = op0_bits(insn);
    let count = masked_count(insn, cl);
    match insn.mnemonic() {
        // SDM AND/OR/XOR/TEST: "The OF and CF flags are cleared; the SF, ZF, and PF flags are set
        // according to the result. The state of the AF flag is undefined."
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => AF,
        // SDM MUL, IMUL: "The SF, ZF, AF, and PF flags are undefined."
        Mnemonic::Mul | Mnemonic::Imul => SF | ZF | AF | PF,
        // SDM DIV, IDIV: "The CF, OF, SF, ZF, AF, and PF flags are undefined."
        Mnemonic::Div | Mnemonic::Idiv => ARITH,
        // SDM BSF, BSR: "The CF, OF, SF, AF, and PF flags are undefined."
        Mnemonic::Bsf | Mnemonic::Bsr => CF | OF | SF | AF | PF,
        // SDM BT, BTS, BTR, BTC: "The ZF flag is unaffected. The OF, SF, AF, and PF flags are
        // undefined."
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => OF | SF | AF | PF,
        // SDM LZCNT, TZCNT: "The OF, SF, PF and AF flags are undefined."
        Mnemonic::Lzcnt | Mnemonic::Tzcnt => OF | SF | PF | AF,
        // SDM AAA, AAS: "The OF, SF, ZF, and PF flags are undefined."
        Mnemonic::Aaa | Mnemonic::Aas => OF | SF | ZF | PF,
        // SDM AAM, AAD: "The OF, AF, and CF flags are undefined."
        Mnemonic::Aam | Mnemonic::Aad => OF | AF | CF,
        // SDM DAA, DAS: "The OF flag is undefined."
        Mnemonic::Daa | Mnemonic::Das => OF,
        // SDM SAL/SAR/SHL/SHR: a zero count affects no flags; otherwise AF is undefined, OF is
        // defined only for 1-bit shifts, and CF is undefined for SHL and SHR when the count is
        // greater than or equal to the operand size.
        m @ (Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar) => {
            let cf_can_overflow = !matches!(m, Mnemonic::Sar);
            match count {
                Some(0) => 0,
                Some(c) => {
                    AF | if c > 1 { OF } else { 0 }
                        | if cf_can_overflow && c >= bits { CF } else { 0 }
                }
                None => AF | OF | if cf_can_overflow && bits < 32 { CF } else { 0 },
            }
        }
        // SDM RCL/RCR/ROL/ROR: "The OF flag is defined only for the 1-bit rotates; it is
        // undefined in all other cases"; a zero (masked) count affects no flags.
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr => match count {
            Some(0 | 1) => 0,
            _ => OF,
        },
        // SDM SHLD/SHRD: a zero count affects nothing; for 1 OF is defined, for more it is
        // undefined; AF is undefined for any non-zero count; "If the count is greater than the
        // operand size, the result is undefined" (flags and destination).
        Mnemonic::Shld | Mnemonic::Shrd => match count {
            Some(0) => 0,
            Some(c) if c > bits => ARITH,
            Some(c) => AF | if c > 1 { OF } else { 0 },
            None if bits < 32 => ARITH,
            None => AF | OF,
        },
        _ => 0,
    }
}

/// Flags `insn` certainly writes with a defined value (so an earlier undefined state ends).
/// Count-dependent instructions redefine nothing unless their count is known and non-zero.
pub fn defined_flags(insn: &Instruction, cl: Option<u8>) -> u64 {
    if is_counted(insn.mnemonic()) && !matches!(masked_count(insn, cl), Some(c) if c > 0) {
        return 0;
    }
    eflags_from_iced(insn.rflags_modified()) & !undefined_flags(insn, cl)
}

/// Flags undefined at the end of `insns` run in order up to (not including) the first
/// instruction at or after `stop_rip`, given the initial RCX (for `cl` counts).
///
/// Instructions are taken in address order, which is the executed order for straight-line code;
/// the generator emits branches only in sequences without undefined-flag producers.
pub fn sequence_undefined_flags(insns: &[Instruction], initial_rcx: u64, stop_rip: u64) -> u64 {
    let mut factory = InstructionInfoFactory::new();
    let mut cl = Some(initial_rcx as u8);
    let mut undef = 0u64;
    for insn in insns.iter().filter(|i| i.ip() < stop_rip) {
        undef = (undef & !defined_flags(insn, cl)) | undefined_flags(insn, cl);
        let info = factory.info(insn);
        let writes_rcx = info.used_registers().iter().any(|u| {
            u.register().full_register() == Register::RCX
                && !matches!(
                    u.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::None
                )
        });
        if writes_rcx {
            cl = None;
        }
    }
    undef
}

/// x87 condition code C0 in the FPU status word.
pub const FSW_C0: u16 = 1 << 8;
/// x87 condition code C1.
pub const FSW_C1: u16 = 1 << 9;
/// x87 condition code C2.
pub const FSW_C2: u16 = 1 << 10;
/// x87 condition code C3.
pub const FSW_C3: u16 = 1 << 14;
/// All four condition codes.
pub const FSW_CC: u16 = FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3;

/// The x87 condition codes `insn` leaves undefined and those it certainly defines, as
/// `(undefined, defined)`, from each instruction's "FPU Flags Affected" in the SDM Vol. 2.
/// Instructions that do not touch the x87 status word give `(0, 0)`.
pub fn fsw_condition_codes(insn: &Instruction) -> (u16, u16) {
    use Mnemonic as M;
    const C023: u16 = FSW_C0 | FSW_C2 | FSW_C3;
    match insn.mnemonic() {
        // "C1 Set to 0 if stack underflow occurred [or rounding/overflow per instruction];
        // C0, C2, C3 Undefined." (FLD, FST/FSTP, FILD, FIST/FISTP, FISTTP, FADD..FDIVR and
        // their integer and popping forms, FXCH, FCHS, FABS, FSQRT, FRNDINT, FSCALE, FXTRACT,
        // FLD1..FLDZ, FCMOVcc, FINCSTP/FDECSTP, FBLD/FBSTP, F2XM1, FYL2X(P1), FPATAN, FPTAN.)
        M::Fld
        | M::Fst
        | M::Fstp
        | M::Fild
        | M::Fist
        | M::Fistp
        | M::Fisttp
        | M::Fadd
        | M::Faddp
        | M::Fiadd
        | M::Fsub
        | M::Fsubp
        | M::Fisub
        | M::Fsubr
        | M::Fsubrp
        | M::Fisubr
        | M::Fmul
        | M::Fmulp
        | M::Fimul
        | M::Fdiv
        | M::Fdivp
        | M::Fidiv
        | M::Fdivr
        | M::Fdivrp
        | M::Fidivr
        | M::Fxch
        | M::Fchs
        | M::Fabs
        | M::Fsqrt
        | M::Frndint
        | M::Fscale
        | M::Fxtract
        | M::Fld1
        | M::Fldz
        | M::Fldpi
        | M::Fldl2e
        | M::Fldl2t
        | M::Fldlg2
        | M::Fldln2
        | M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu
        | M::Fincstp
        | M::Fdecstp
        | M::Fbld
        | M::Fbstp
        | M::F2xm1
        | M::Fyl2x
        | M::Fyl2xp1
        | M::Fpatan
        | M::Fptan => (C023, FSW_C1),
        // FCOM/FUCOM/FICOM/FTST/FXAM set C0, C2, C3 from the comparison and clear C1 (FXAM
        // sets it to the sign); FPREM/FPREM1 set C0, C3, C1 to quotient bits and C2 to
        // "incomplete"; FNINIT clears all four.
        M::Fcom
        | M::Fcomp
        | M::Fcompp
        | M::Fucom
        | M::Fucomp
        | M::Fucompp
        | M::Ficom
        | M::Ficomp
        | M::Ftst
        | M::Fxam
        | M::Fprem
        | M::Fprem1
        | M::Fninit
        | M::Finit => (0, FSW_CC),
        // FCOMI/FUCOMI(P): "C1 Set to 0 if stack underflow occurred; otherwise, set to 0.
        // C0, C2, C3 Not affected."
        M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => (0, FSW_C1),
        // FSTSW/FNSTSW, FSTCW/FNSTCW, FLDCW, FCLEX/FNCLEX, FSTENV/FNSTENV, FFREE, FNOP, WAIT:
        // "The C0, C1, C2, and C3 flags are undefined."
        M::Fstsw
        | M::Fnstsw
        | M::Fstcw
        | M::Fnstcw
        | M::Fldcw
        | M::Fclex
        | M::Fnclex
        | M::Fstenv
        | M::Fnstenv
        | M::Ffree
        | M::Fnop
        | M::Wait => (FSW_CC, 0),
        _ => (0, 0),
    }
}

/// x87 condition codes undefined at the end of `insns` run up to (not including) the first
/// instruction at or after `stop_rip` (straight-line code, as the FP families generate).
pub fn sequence_undefined_fsw(insns: &[Instruction], stop_rip: u64) -> u16 {
    insns
        .iter()
        .filter(|i| i.ip() < stop_rip)
        .fold(0, |undef, i| {
            let (u, d) = fsw_condition_codes(i);
            (undef & !d) | u
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            v.push(d.decode());
        }
        v
    }

    #[test]
    fn per_instruction_rules() {
        // shl rax, 1 / shl rax, 5 / shl eax, 0 / ror al, cl
        let i = decode(&[
            0x48, 0xd1, 0xe0, 0x48, 0xc1, 0xe0, 0x05, 0xc1, 0xe0, 0x00, 0xd2, 0xc8,
        ]);
        assert_eq!(undefined_flags_mask(&i[0]), AF);
        assert_eq!(undefined_flags_mask(&i[1]), AF | OF);
        assert_eq!(undefined_flags_mask(&i[2]), 0);
        assert_eq!(undefined_flags(&i[3], Some(1)), 0);
        assert_eq!(undefined_flags(&i[3], Some(9)), OF);
        assert_eq!(undefined_flags_mask(&i[3]), OF);
        // mul rbx / div rbx / and eax, ebx / bsf eax, ebx
        let i = decode(&[
            0x48, 0xf7, 0xe3, 0x48, 0xf7, 0xf3, 0x21, 0xd8, 0x0f, 0xbc, 0xc3,
        ]);
        assert_eq!(undefined_flags_mask(&i[0]), SF | ZF | AF | PF);
        assert_eq!(undefined_flags_mask(&i[1]), ARITH);
        assert_eq!(undefined_flags_mask(&i[2]), AF);
        assert_eq!(undefined_flags_mask(&i[3]), CF | OF | SF | AF | PF);
        // shl al, cl with cl = 8: CF undefined too.
        let i = decode(&[0xd2, 0xe0]);
        assert_eq!(undefined_flags(&i[0], Some(8)), AF | OF | CF);
        // shld ax, bx, 17: everything undefined.
        let i = decode(&[0x66, 0x0f, 0xa4, 0xd8, 0x11]);
        assert_eq!(undefined_flags_mask(&i[0]), ARITH);
    }

    #[test]
    fn x87_condition_codes_follow_the_sdm() {
        // fadd st, st(1); fcom st(1); fnstsw ax; fcomi st, st(1)
        let i = decode(&[0xd8, 0xc1, 0xd8, 0xd1, 0xdf, 0xe0, 0xdb, 0xf1]);
        assert_eq!(
            fsw_condition_codes(&i[0]),
            (FSW_C0 | FSW_C2 | FSW_C3, FSW_C1)
        );
        assert_eq!(fsw_condition_codes(&i[1]), (0, FSW_CC));
        assert_eq!(fsw_condition_codes(&i[2]), (FSW_CC, 0));
        assert_eq!(fsw_condition_codes(&i[3]), (0, FSW_C1));
        // fadd then fcom: all defined; fcom then fadd: C0/C2/C3 undefined; fadd, fcomi: still.
        assert_eq!(sequence_undefined_fsw(&i[..2], u64::MAX), 0);
        assert_eq!(
            sequence_undefined_fsw(&[i[1], i[0]], u64::MAX),
            FSW_C0 | FSW_C2 | FSW_C3
        );
        assert_eq!(
            sequence_undefined_fsw(&[i[0], i[3]], u64::MAX),
            FSW_C0 | FSW_C2 | FSW_C3
        );
        // Stopping at the fcom (#MF there) leaves fadd's state.
        assert_eq!(
            sequence_undefined_fsw(&i[..2], i[1].ip()),
            FSW_C0 | FSW_C2 | FSW_C3
        );
        // SSE and integer instructions leave the x87 status alone.
        let i = decode(&[0x0f, 0x58, 0xc1, 0x01, 0xd8]);
        assert_eq!(sequence_undefined_fsw(&i, u64::MAX), 0);
    }

    #[test]
    fn later_definition_clears_the_undefined_state() {
        // mul rbx; add rax, rbx: add defines all six.
        let i = decode(&[0x48, 0xf7, 0xe3, 0x48, 0x01, 0xd8]);
        assert_eq!(sequence_undefined_flags(&i, 0, u64::MAX), 0);
        // mul rbx; inc rax: inc leaves CF alone, defines the rest.
        let i = decode(&[0x48, 0xf7, 0xe3, 0x48, 0xff, 0xc0]);
        assert_eq!(sequence_undefined_flags(&i, 0, u64::MAX), 0);
        // add; mul: mul's undefined flags remain.
        let i = decode(&[0x48, 0x01, 0xd8, 0x48, 0xf7, 0xe3]);
        assert_eq!(sequence_undefined_flags(&i, 0, u64::MAX), SF | ZF | AF | PF);
        // mul; shl rax, cl with cl = 0: the shift defines nothing, mul's state survives.
        let i = decode(&[0x48, 0xf7, 0xe3, 0x48, 0xd3, 0xe0]);
        assert_eq!(sequence_undefined_flags(&i, 0, u64::MAX), SF | ZF | AF | PF);
        // Stopping before the mul (a fault there) masks nothing.
        let i = decode(&[0x48, 0x01, 0xd8, 0x48, 0xf7, 0xe3]);
        assert_eq!(sequence_undefined_flags(&i, 0, 0x1003), 0);
    }
}
