//! Decimal-arithmetic adjustments: DAA, DAS, AAA, AAS, AAM, AAD (legacy and compatibility mode
//! only; the opcodes are #UD in 64-bit mode, which the decoder already reports).
//!
//! Results follow the SDM pseudocode. Flags the SDM leaves undefined are chosen as: DAA/DAS
//! OF = 0; AAA/AAS keep SF, ZF, PF and OF (as QEMU does); AAM/AAD CF = AF = OF = 0 (SF, ZF, PF
//! are defined by AL). The hardware oracle cannot check these here (32-bit code is emulated on
//! this machine's hypervisor), so they are covered by known-answer tests.

use super::emit::{BinOp, Emitter};
use super::flags::{self, CcOp, Flag, ARITH};
use super::operand::{read_reg_bits, write_reg_bits};
use super::{Exception, DE, UD};
use crate::state::reg::RAX;
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic};

/// `(AL & 0xf) > 9 || AF` as 0/1.
fn low_nibble_adjust<E: Emitter>(e: &mut E, al: E::V) -> E::V {
    let low = e.and_i(al, 0xf);
    let nine = e.imm(9);
    let big = e.bin(BinOp::Ult, nine, low);
    let af = flags::compute(e, Flag::Af);
    e.or(big, af)
}

/// DAA and DAS: adjust AL after a packed-BCD addition or subtraction.
pub fn daa_das<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    if e.code_bits() == 64 {
        return Err(Exception::cpu(UD));
    }
    let sub = insn.mnemonic() == Mnemonic::Das;
    let al = read_reg_bits(e, RAX, 8);
    let cf = flags::compute(e, Flag::Cf);
    let adj_low = low_nibble_adjust(e, al);
    // Step 1: +/- 6 when the low nibble needs it; carry/borrow out of AL.
    let six = e.imm(6);
    let stepped = if sub { e.sub(al, six) } else { e.add(al, six) };
    let out = e.shr_i(stepped, 8);
    let out = e.and_i(out, 1);
    let al1 = e.select(adj_low, stepped, al);
    let al1 = e.zext(al1, 8);
    let cf1 = e.or(cf, out);
    let zero = e.imm(0);
    let cf1 = e.select(adj_low, cf1, zero);
    // Step 2: +/- 0x60 when the original AL was above 0x99 or CF was set.
    let limit = e.imm(0x99);
    let above = e.bin(BinOp::Ult, limit, al);
    let adj_high = e.or(above, cf);
    let sixty = e.imm(0x60);
    let moved = if sub {
        e.sub(al1, sixty)
    } else {
        e.add(al1, sixty)
    };
    let al2 = e.select(adj_high, moved, al1);
    let al2 = e.zext(al2, 8);
    // DAA clears CF when step 2 does not apply; DAS keeps step 1's borrow.
    let one = e.imm(1);
    let cf2 = if sub {
        e.select(adj_high, one, cf1)
    } else {
        adj_high
    };
    write_reg_bits(e, RAX, 8, al2);
    let zf = e.eq_i(al2, 0);
    let sf = e.bit(al2, 7);
    let pf = flags::parity(e, al2);
    let mut bits = cf2;
    for (v, f) in [
        (pf, Flag::Pf),
        (adj_low, Flag::Af),
        (zf, Flag::Zf),
        (sf, Flag::Sf),
    ] {
        let s = e.shl_i(v, f.bit());
        bits = e.or(bits, s);
    }
    flags::write_bits(e, ARITH, bits);
    Ok(())
}

/// AAA and AAS: adjust AX after an unpacked-BCD addition or subtraction.
pub fn aaa_aas<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    if e.code_bits() == 64 {
        return Err(Exception::cpu(UD));
    }
    let ax = read_reg_bits(e, RAX, 16);
    let adj = low_nibble_adjust(e, ax);
    let adjusted = if insn.mnemonic() == Mnemonic::Aaa {
        e.add_i(ax, 0x106)
    } else {
        // AX - 6, then AH - 1.
        let t = e.add_i(ax, (-6i64) as u64);
        e.add_i(t, (-0x100i64) as u64)
    };
    let ax = e.select(adj, adjusted, ax);
    let ax = e.and_i(ax, 0xff0f);
    write_reg_bits(e, RAX, 16, ax);
    let cf_af = e.imm(rflags::CF | rflags::AF);
    let zero = e.imm(0);
    let bits = e.select(adj, cf_af, zero);
    flags::write_bits(e, rflags::CF | rflags::AF, bits);
    Ok(())
}

/// AAM imm8 (AH = AL / imm8, AL = AL mod imm8; #DE for 0) and AAD imm8
/// (AL = AL + AH * imm8, AH = 0).
pub fn aam_aad<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    if e.code_bits() == 64 {
        return Err(Exception::cpu(UD));
    }
    let base = u64::from(insn.immediate8());
    let al = read_reg_bits(e, RAX, 8);
    let ax = if insn.mnemonic() == Mnemonic::Aam {
        if base == 0 {
            return Err(Exception::cpu(DE));
        }
        let d = e.imm(base);
        let q = e.bin(BinOp::UDiv, al, d);
        let r = e.bin(BinOp::URem, al, d);
        let q = e.shl_i(q, 8);
        e.or(q, r)
    } else {
        let ah = read_reg_bits(e, RAX, 16);
        let ah = e.shr_i(ah, 8);
        let d = e.imm(base);
        let p = e.bin(BinOp::Mul, ah, d);
        let s = e.add(al, p);
        e.and_i(s, 0xff)
    };
    write_reg_bits(e, RAX, 16, ax);
    let low = e.and_i(ax, 0xff);
    let zero = e.imm(0);
    flags::set_lazy(e, CcOp::Logic, 8, low, zero, low, zero);
    Ok(())
}
