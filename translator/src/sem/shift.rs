//! Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD.
//!
//! Counts are masked to 5 bits (6 for 64-bit operands). A masked count of 0 changes nothing, not
//! even flags; with an immediate count that is decided at translation time, with CL it becomes a
//! `select` on the result and RFLAGS. OF is defined by the SDM only for counts of 1; the formula
//! for 1 is applied to every count (what the hardware does for shifts; the difftest masks it).

use super::emit::{BinOp, Emitter};
use super::flags::{self, CcOp, Lazy};
use super::operand::{loc, Loc};
use super::{width0, Exception};
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// The masked count of operand `i`: its value and, for an immediate, the constant.
fn count<E: Emitter>(
    e: &mut E,
    insn: &Instruction,
    i: u32,
    w: u32,
) -> Result<(E::V, Option<u64>), Exception> {
    let mask = if w == 64 { 0x3f } else { 0x1f };
    match insn.op_kind(i) {
        OpKind::Immediate8 => {
            let c = insn.immediate(i) & mask;
            Ok((e.imm(c), Some(c)))
        }
        _ => {
            let src = loc(e, insn, i)?;
            let v = src.read(e, 8)?;
            Ok((e.and_i(v, mask), None))
        }
    }
}

/// The "count is non-zero" condition: None when known non-zero at translation time.
fn nonzero<E: Emitter>(e: &mut E, c: E::V, constant: Option<u64>) -> Option<E::V> {
    match constant {
        Some(_) => None,
        None => Some(e.ne_i(c, 0)),
    }
}

/// Writes `r` to `dst`, or the unchanged `old` when `cond` says the count was 0.
fn write_result<E: Emitter>(
    e: &mut E,
    dst: &Loc<E::V>,
    cond: Option<E::V>,
    r: E::V,
    old: E::V,
) -> Result<(), Exception> {
    let v = match cond {
        Some(c) => e.select(c, r, old),
        None => r,
    };
    dst.write(e, v)
}

/// A masked count of 0 changes no flags and no value, but a 32-bit register destination is
/// still written, so its upper half is cleared (as the hardware does).
fn count_zero<E: Emitter>(e: &mut E, dst: &Loc<E::V>, a: E::V) -> Result<(), Exception> {
    match dst {
        Loc::Reg(_) => dst.write(e, a),
        _ => Ok(()),
    }
}

/// What every shift and rotate starts from.
struct Operands<V> {
    dst: Loc<V>,
    w: u32,
    a: V,
    n: V,
    constant: Option<u64>,
}

/// The common start of the shifts and rotates: destination, width, its value and the masked
/// count (operand `count_at`). A count known to be zero is handled here (see [`count_zero`])
/// and gives `None`: the instruction is complete.
fn prologue<E: Emitter>(
    e: &mut E,
    insn: &Instruction,
    count_at: u32,
) -> Result<Option<Operands<E::V>>, Exception> {
    let dst = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &dst)?;
    let a = dst.read_rmw(e, w)?;
    let (n, constant) = count(e, insn, count_at, w)?;
    if constant == Some(0) {
        count_zero(e, &dst, a)?;
        return Ok(None);
    }
    Ok(Some(Operands {
        dst,
        w,
        a,
        n,
        constant,
    }))
}

/// The common end of the shifts: truncate the lane result to the operand width, write it and
/// record lazy flags, both only when the masked count is not zero (a zero count changes
/// nothing, whether known at translation time or only at run time).
fn finish<E: Emitter>(
    e: &mut E,
    dst: &Loc<E::V>,
    op: CcOp,
    w: u32,
    a: E::V,
    (n, constant): (E::V, Option<u64>),
    raw: E::V,
) -> Result<(), Exception> {
    let r = e.zext(raw, w);
    let cond = nonzero(e, n, constant);
    write_result(e, dst, cond, r, a)?;
    let aux = e.imm(0);
    let l = Lazy {
        op,
        width: w,
        src1: a,
        src2: n,
        result: r,
        aux,
    };
    flags::set_lazy_if(e, cond, l);
    Ok(())
}

/// SHL/SAL, SHR, SAR.
pub fn shift<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let Some(Operands {
        dst,
        w,
        a,
        n,
        constant,
    }) = prologue(e, insn, 1)?
    else {
        return Ok(());
    };
    let (op, raw) = match insn.mnemonic() {
        Mnemonic::Shr => (CcOp::Shr, e.bin(BinOp::Shr, a, n)),
        Mnemonic::Sar => {
            let s = e.sext(a, w);
            (CcOp::Sar, e.bin(BinOp::Sar, s, n))
        }
        _ => (CcOp::Shl, e.bin(BinOp::Shl, a, n)),
    };
    finish(e, &dst, op, w, a, (n, constant), raw)
}

/// `(a << n) | (a >> (w - n))` within `w` bits, for `n` in 0..w.
fn rol_w<E: Emitter>(e: &mut E, a: E::V, n: E::V, w: u32) -> E::V {
    let wv = e.imm(u64::from(w));
    let back = e.sub(wv, n);
    let l = e.bin(BinOp::Shl, a, n);
    let r = e.bin(BinOp::Shr, a, back);
    let v = e.or(l, r);
    e.zext(v, w)
}

/// ROL and ROR: only CF and OF change (CF = the bit rotated around).
pub fn rotate<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let Some(Operands {
        dst,
        w,
        a,
        n,
        constant,
    }) = prologue(e, insn, 1)?
    else {
        return Ok(());
    };
    let k = e.and_i(n, u64::from(w - 1));
    let left = insn.mnemonic() == Mnemonic::Rol;
    let (r, cf, of) = if left {
        let r = rol_w(e, a, k, w);
        let cf = e.and_i(r, 1);
        let msb = e.bit(r, w - 1);
        (r, cf, e.xor(msb, cf))
    } else {
        let wv = e.imm(u64::from(w));
        let back = e.sub(wv, k);
        let back = e.and_i(back, u64::from(w - 1));
        let r = rol_w(e, a, back, w);
        let cf = e.bit(r, w - 1);
        let next = e.bit(r, w - 2);
        (r, cf, e.xor(cf, next))
    };
    let cond = nonzero(e, n, constant);
    write_result(e, &dst, cond, r, a)?;
    let of = e.shl_i(of, 11);
    let bits = e.or(cf, of);
    flags::write_bits_if(e, cond, rflags::CF | rflags::OF, bits);
    Ok(())
}

/// RCL and RCR: rotate through CF, a (w + 1)-bit rotation (count mod 9 / 17 for 8 / 16 bits).
pub fn rotate_carry<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let Some(Operands {
        dst,
        w,
        a,
        n,
        constant,
    }) = prologue(e, insn, 1)?
    else {
        return Ok(());
    };
    let k = match w {
        8 | 16 => {
            let m = e.imm(u64::from(w + 1));
            e.bin(BinOp::URem, n, m)
        }
        _ => n,
    };
    let cin = flags::compute(e, flags::Flag::Cf);
    let wv = e.imm(u64::from(w));
    let one = e.imm(1);
    let w_minus_k = e.sub(wv, k);
    let k_minus_1 = e.sub(k, one);
    let left = insn.mnemonic() == Mnemonic::Rcl;
    let (r, cout) = if left {
        // (a << k) | (cf << (k - 1)) | (a >> (w + 1 - k)), the last as (a >> 1) >> (w - k).
        let hi = e.bin(BinOp::Shl, a, k);
        let c = e.bin(BinOp::Shl, cin, k_minus_1);
        let a1 = e.shr_i(a, 1);
        let lo = e.bin(BinOp::Shr, a1, w_minus_k);
        let v = e.or(hi, c);
        let v = e.or(v, lo);
        let s = e.bin(BinOp::Shr, a, w_minus_k);
        (e.zext(v, w), e.and_i(s, 1))
    } else {
        // (a >> k) | (cf << (w - k)) | (a << (w + 1 - k)), the last as (a << 1) << (w - k).
        let lo = e.bin(BinOp::Shr, a, k);
        let c = e.bin(BinOp::Shl, cin, w_minus_k);
        let a1 = e.shl_i(a, 1);
        let hi = e.bin(BinOp::Shl, a1, w_minus_k);
        let v = e.or(lo, c);
        let v = e.or(v, hi);
        let s = e.bin(BinOp::Shr, a, k_minus_1);
        (e.zext(v, w), e.and_i(s, 1))
    };
    // A count that is a multiple of w + 1 rotates back to the start, CF included.
    let k_zero = e.eq_i(k, 0);
    let r = e.select(k_zero, a, r);
    let cout = e.select(k_zero, cin, cout);
    let msb = e.bit(r, w - 1);
    let of = if left {
        e.xor(msb, cout)
    } else {
        let next = e.bit(r, w - 2);
        e.xor(msb, next)
    };
    let cond = nonzero(e, n, constant);
    write_result(e, &dst, cond, r, a)?;
    let of = e.shl_i(of, 11);
    let bits = e.or(cout, of);
    flags::write_bits_if(e, cond, rflags::CF | rflags::OF, bits);
    Ok(())
}

/// SHLD and SHRD. A count greater than a 16-bit operand's width gives an undefined result and
/// flags; the value computed here is whatever the lane arithmetic yields.
pub fn double<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let Some(Operands {
        dst,
        w,
        a,
        n,
        constant,
    }) = prologue(e, insn, 2)?
    else {
        return Ok(());
    };
    // The second operand is always a register: reading it after the count changes nothing.
    let b = loc(e, insn, 1)?.read(e, w)?;
    let wv = e.imm(u64::from(w));
    let back = e.sub(wv, n);
    let (op, raw) = if insn.mnemonic() == Mnemonic::Shld {
        let hi = e.bin(BinOp::Shl, a, n);
        let lo = e.bin(BinOp::Shr, b, back);
        (CcOp::Shl, e.or(hi, lo))
    } else {
        let lo = e.bin(BinOp::Shr, a, n);
        let hi = e.bin(BinOp::Shl, b, back);
        (CcOp::Shrd, e.or(lo, hi))
    };
    finish(e, &dst, op, w, a, (n, constant), raw)
}
