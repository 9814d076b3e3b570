//! BMI1, the VEX-encoded bit manipulation group: ANDN, BEXTR, BLSI, BLSMSK, BLSR (TZCNT, the
//! sixth member, is legacy-encoded and lives in [`super::bits`]).
//!
//! All have 32- and 64-bit forms only (VEX.W; ignored outside 64-bit mode, as iced decodes it),
//! read every input before the single register write, and need neither CR4.OSXSAVE nor XCR0.
//! VEX.L = 1, a VEX with a 66/F2/F3/REX/LOCK prefix and VEX in real or virtual-8086 mode are
//! #UD before they get here (the decoder). Flags the manuals leave undefined (AF, PF; SF for
//! BEXTR) take the values an AMD Zen host produces, which the model claims to be: AF = 0 and
//! PF = parity of the result, except BEXTR, which sets AF = 1 and SF = 0.

use super::emit::{BinOp, Emitter, UnOp};
use super::flags::{self, CcOp, Flag, ARITH};
use super::operand::loc;
use super::{width0, Exception};
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic};

/// ANDN dest, src1, src2: dest = !src1 & src2. SF, ZF, PF from the result; CF = OF = AF = 0
/// (the logic-operation flags).
pub fn andn<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src1 = loc(e, insn, 1)?;
    let src2 = loc(e, insn, 2)?;
    let w = width0::<E>(insn, &dst)?;
    let b = src2.read(e, w)?;
    let a = src1.read(e, w)?;
    let na = e.un(UnOp::Not, a);
    let r = e.and(na, b);
    let r = e.zext(r, w);
    dst.write(e, r)?;
    let zero = e.imm(0);
    flags::set_lazy(e, CcOp::Logic, w, r, r, r, zero);
    Ok(())
}

/// BEXTR dest, src, control: the `len` = control[15:8] bits of `src` from bit `start` =
/// control[7:0], zero-filled beyond the operand (start >= width gives 0, len >= width keeps
/// every bit from `start`). ZF from the result, CF = OF = 0; undefined: PF = parity, AF = 1,
/// SF = 0 (AMD).
pub fn bextr<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let ctl = loc(e, insn, 2)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let c = ctl.read(e, w)?;
    let wv = e.imm(u64::from(w));
    let start = e.and_i(c, 0xff);
    let len = e.shr_i(c, 8);
    let len = e.and_i(len, 0xff);
    // Emitter shifts take the count modulo 64; the selects cover the counts >= width.
    let shifted = e.bin(BinOp::Shr, s, start);
    let start_in = e.bin(BinOp::Ult, start, wv);
    let zero = e.imm(0);
    let shifted = e.select(start_in, shifted, zero);
    let one = e.imm(1);
    let bit = e.bin(BinOp::Shl, one, len);
    let mask = e.sub(bit, one);
    let len_in = e.bin(BinOp::Ult, len, wv);
    let all = e.imm(u64::MAX);
    let mask = e.select(len_in, mask, all);
    let r = e.and(shifted, mask);
    dst.write(e, r)?;
    let zf = e.eq_i(r, 0);
    let zf = e.shl_i(zf, Flag::Zf.bit());
    let pf = flags::parity(e, r);
    let pf = e.shl_i(pf, Flag::Pf.bit());
    let bits = e.or(zf, pf);
    let bits = e.or_i(bits, rflags::AF);
    flags::write_bits(e, ARITH, bits);
    Ok(())
}

/// BLSI (`-src & src`, the lowest set bit), BLSMSK (`(src - 1) ^ src`, the mask up to it) and
/// BLSR (`(src - 1) & src`, clear it) into the VEX.vvvv register. SF, ZF, PF from the result,
/// OF = AF = 0; CF = source is not zero for BLSI, source is zero for BLSMSK and BLSR.
pub fn bls<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let m = insn.mnemonic();
    let r = if m == Mnemonic::Blsi {
        let n = e.un(UnOp::Neg, s);
        e.and(n, s)
    } else {
        let one = e.imm(1);
        let dec = e.sub(s, one);
        if m == Mnemonic::Blsmsk {
            e.xor(dec, s)
        } else {
            e.and(dec, s)
        }
    };
    let r = e.zext(r, w);
    dst.write(e, r)?;
    let src_zero = e.eq_i(s, 0);
    let cf = if m == Mnemonic::Blsi {
        e.eq_i(src_zero, 0)
    } else {
        src_zero
    };
    let zf = e.eq_i(r, 0);
    let zf = e.shl_i(zf, Flag::Zf.bit());
    let sf = e.shr_i(r, w - 1);
    let sf = e.shl_i(sf, Flag::Sf.bit());
    let pf = flags::parity(e, r);
    let pf = e.shl_i(pf, Flag::Pf.bit());
    let bits = e.or(cf, zf);
    let bits = e.or(bits, sf);
    let bits = e.or(bits, pf);
    flags::write_bits(e, ARITH, bits);
    Ok(())
}
