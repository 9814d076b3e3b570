//! Accumulator sign extensions, LAHF/SAHF and the single-flag instructions.

use super::emit::Emitter;
use super::flags::{self, Flag};
use super::operand::{read_reg_bits, write_gpr, write_reg_bits, Gpr};
use super::Exception;
use crate::state::reg::{RAX, RDX};
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic};

/// AH as an operand.
const AH: Gpr = Gpr {
    index: RAX,
    bits: 8,
    high: true,
};

/// CBW/CWDE/CDQE: the low half of the accumulator sign-extended into the whole of it.
pub fn sign_extend_acc<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let w = match insn.mnemonic() {
        Mnemonic::Cbw => 16,
        Mnemonic::Cwde => 32,
        _ => 64,
    };
    let v = read_reg_bits(e, RAX, w / 2);
    let s = e.sext(v, w / 2);
    write_reg_bits(e, RAX, w, s);
    Ok(())
}

/// CWD/CDQ/CQO: rDX filled with the sign of rAX.
pub fn sign_fill_dx<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let w = match insn.mnemonic() {
        Mnemonic::Cwd => 16,
        Mnemonic::Cdq => 32,
        _ => 64,
    };
    let v = read_reg_bits(e, RAX, w);
    let s = e.sext(v, w);
    let n = e.imm(63);
    let fill = e.bin(super::emit::BinOp::Sar, s, n);
    write_reg_bits(e, RDX, w, fill);
    Ok(())
}

/// LAHF: AH = SF:ZF:0:AF:0:PF:1:CF.
pub fn lahf<E: Emitter>(e: &mut E) -> Result<(), Exception> {
    let bits = flags::arith_bits(e);
    let low = e.and_i(bits, 0xd5);
    let v = e.or_i(low, rflags::FIXED1);
    write_gpr(e, AH, v);
    Ok(())
}

/// SAHF: SF, ZF, AF, PF, CF from AH.
pub fn sahf<E: Emitter>(e: &mut E) -> Result<(), Exception> {
    let ah = read_reg_bits(e, RAX, 16);
    let ah = e.shr_i(ah, 8);
    let mask = rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF;
    flags::write_bits(e, mask, ah);
    Ok(())
}

/// CLC, STC, CMC, CLD, STD.
pub fn flag_op<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    match insn.mnemonic() {
        Mnemonic::Clc | Mnemonic::Stc => {
            let v = e.imm(u64::from(insn.mnemonic() == Mnemonic::Stc));
            flags::set_flag(e, Flag::Cf, v);
        }
        Mnemonic::Cmc => {
            let c = flags::compute(e, Flag::Cf);
            let one = e.imm(1);
            let n = e.xor(c, one);
            flags::set_flag(e, Flag::Cf, n);
        }
        m => {
            let v = e.imm(if m == Mnemonic::Std { rflags::DF } else { 0 });
            flags::write_bits(e, rflags::DF, v);
        }
    }
    Ok(())
}

/// SALC (undocumented by Intel, documented by AMD; D6, invalid in 64-bit mode): AL = CF ?
/// 0xFF : 0, flags unchanged.
pub fn salc<E: Emitter>(e: &mut E) -> Result<(), Exception> {
    let cf = flags::compute(e, Flag::Cf);
    let zero = e.imm(0);
    let all = e.sub(zero, cf);
    write_reg_bits(e, RAX, 8, all);
    Ok(())
}

/// CLI: IF = 0; #GP(0) when CPL > IOPL (protected and virtual-8086 mode; VME and PVI are not
/// advertised). It runs in the tiers: clearing IF never makes an interrupt deliverable, so the
/// monitor need not see it (STI does, for its shadow, and stays a trap).
pub fn cli<E: Emitter>(e: &mut E) -> Result<(), Exception> {
    let cpl = e.cpl();
    if cpl > 0 {
        let r = e.rflags();
        let iopl = e.shr_i(r, 12);
        let iopl = e.and_i(iopl, 3);
        let c = e.imm(u64::from(cpl));
        let denied = e.bin(super::emit::BinOp::Ult, iopl, c);
        e.raise(
            denied,
            Exception::Cpu {
                vector: super::GP,
                error: Some(0),
            },
        )?;
    }
    let zero = e.imm(0);
    flags::write_bits(e, rflags::IF, zero);
    Ok(())
}
