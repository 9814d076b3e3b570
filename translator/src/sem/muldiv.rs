//! MUL, IMUL (one, two and three operands), DIV and IDIV.
//!
//! Products of operands up to 32 bits fit a 64-bit lane; 64-bit operands use the high-half
//! multiply and the 128/64 division primitive. Division raises #DE for a zero divisor or a
//! quotient that does not fit, before anything is written (and before a lane division that
//! would trap in compiled code is reached). DIV/IDIV leave the (undefined) flags unchanged.

use super::emit::{BinOp, Emitter};
use super::flags::{self, CcOp};
use super::operand::{loc, read_reg_bits, write_gpr, write_reg_bits, Gpr};
use super::{width0, Exception, DE};
use crate::state::reg::{RAX, RDX};
use iced_x86::{Instruction, Mnemonic};

/// Signed full product of two `w`-bit values: (low w bits, high w bits, overflow 0/1), where
/// overflow means the product does not fit `w` bits signed (IMUL's CF = OF).
fn smul<E: Emitter>(e: &mut E, a: E::V, b: E::V, w: u32) -> (E::V, E::V, E::V) {
    if w == 64 {
        let lo = e.bin(BinOp::Mul, a, b);
        let hi = e.bin(BinOp::SMulHi, a, b);
        let sixty_three = e.imm(63);
        let sign = e.bin(BinOp::Sar, lo, sixty_three);
        let ovf = e.bin(BinOp::Ne, sign, hi);
        (lo, hi, ovf)
    } else {
        let sa = e.sext(a, w);
        let sb = e.sext(b, w);
        let p = e.bin(BinOp::Mul, sa, sb);
        let lo = e.zext(p, w);
        let sw = e.imm(u64::from(w));
        let hi = e.bin(BinOp::Sar, p, sw);
        let hi = e.zext(hi, w);
        let back = e.sext(p, w);
        let ovf = e.bin(BinOp::Ne, back, p);
        (lo, hi, ovf)
    }
}

/// Unsigned full product: (low, high, high != 0).
fn umul<E: Emitter>(e: &mut E, a: E::V, b: E::V, w: u32) -> (E::V, E::V, E::V) {
    let (lo, hi) = if w == 64 {
        (e.bin(BinOp::Mul, a, b), e.bin(BinOp::UMulHi, a, b))
    } else {
        let p = e.bin(BinOp::Mul, a, b);
        (e.zext(p, w), e.shr_i(p, w))
    };
    let ovf = e.ne_i(hi, 0);
    (lo, hi, ovf)
}

/// MUL and all IMUL forms. Flags: CF = OF = upper half significant; SF/ZF/PF/AF are undefined
/// (recorded from the low result, AF = 0).
pub fn mul<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let signed = insn.mnemonic() == Mnemonic::Imul;
    match insn.op_count() {
        1 => {
            let src = loc(e, insn, 0)?;
            let w = width0::<E>(insn, &src)?;
            let b = src.read(e, w)?;
            let a = read_reg_bits(e, RAX, w);
            let (lo, hi, ovf) = if signed {
                smul(e, a, b, w)
            } else {
                umul(e, a, b, w)
            };
            if w == 8 {
                let h = e.shl_i(hi, 8);
                let ax = e.or(lo, h);
                write_reg_bits(e, RAX, 16, ax);
            } else {
                write_reg_bits(e, RAX, w, lo);
                write_reg_bits(e, RDX, w, hi);
            }
            flags::set_lazy(e, CcOp::Mul, w, a, b, lo, ovf);
        }
        n => {
            let dst = loc(e, insn, 0)?;
            let w = width0::<E>(insn, &dst)?;
            let (s1, s2) = if n == 2 { (0, 1) } else { (1, 2) };
            let l1 = loc(e, insn, s1)?;
            let l2 = loc(e, insn, s2)?;
            let a = l1.read(e, w)?;
            let b = l2.read(e, w)?;
            let (lo, _, ovf) = smul(e, a, b, w);
            dst.write(e, lo)?;
            flags::set_lazy(e, CcOp::Mul, w, a, b, lo, ovf);
        }
    }
    Ok(())
}

/// DIV and IDIV: rDX:rAX (AX for bytes) divided by the operand.
pub fn div<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let signed = insn.mnemonic() == Mnemonic::Idiv;
    let src = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &src)?;
    let d = src.read(e, w)?;
    let de = Exception::cpu(DE);
    let (q, r) = if w == 64 {
        let hi = e.gpr(RDX);
        let lo = e.gpr(RAX);
        let (q, r, fault) = e.div_wide(signed, hi, lo, d);
        e.raise(fault, de)?;
        (q, r)
    } else {
        let (hi, lo) = if w == 8 {
            let ax = read_reg_bits(e, RAX, 16);
            let lo = e.zext(ax, 8);
            (e.shr_i(ax, 8), lo)
        } else {
            (read_reg_bits(e, RDX, w), read_reg_bits(e, RAX, w))
        };
        let h = e.shl_i(hi, w);
        let dividend = e.or(h, lo);
        let zero = e.eq_i(d, 0);
        e.raise(zero, de)?;
        if signed {
            let n = e.sext(dividend, 2 * w);
            let dv = e.sext(d, w);
            if w == 32 {
                // i64::MIN / -1 overflows the lane division itself.
                let min = e.eq_i(n, 1 << 63);
                let m1 = e.eq_i(dv, u64::MAX);
                let both = e.and(min, m1);
                e.raise(both, de)?;
            }
            let q = e.bin(BinOp::SDiv, n, dv);
            let r = e.bin(BinOp::SRem, n, dv);
            let back = e.sext(q, w);
            let bad = e.bin(BinOp::Ne, back, q);
            e.raise(bad, de)?;
            (e.zext(q, w), e.zext(r, w))
        } else {
            let q = e.bin(BinOp::UDiv, dividend, d);
            let r = e.bin(BinOp::URem, dividend, d);
            let bad = e.shr_i(q, w);
            e.raise(bad, de)?;
            (q, r)
        }
    };
    if w == 8 {
        write_reg_bits(e, RAX, 8, q);
        write_gpr(
            e,
            Gpr {
                index: RAX,
                bits: 8,
                high: true,
            },
            r,
        );
    } else {
        write_reg_bits(e, RAX, w, q);
        write_reg_bits(e, RDX, w, r);
    }
    Ok(())
}

/// The 128/64 division behind DIV/IDIV at every width (operands already widened): `None`
/// when x86 raises #DE (zero divisor, or a quotient that does not fit the destination).
/// Both tiers call this: the interpreter directly, compiled code through a runtime helper.
pub fn divide_wide(signed: bool, hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let n = (u128::from(hi) << 64) | u128::from(lo);
    if d == 0 {
        return None;
    }
    if signed {
        let n = n as i128;
        let d = i128::from(d as i64);
        let q = n.checked_div(d)?;
        let r = n.checked_rem(d)?;
        (i128::from(q as i64) == q).then_some((q as u64, r as u64))
    } else {
        let d = u128::from(d);
        let q = n / d;
        (q >> 64 == 0).then_some((q as u64, (n % d) as u64))
    }
}
