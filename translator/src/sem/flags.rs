//! Lazy arithmetic flags (QEMU's `cc_op` idea) and their one generic evaluation.
//!
//! A flag-setting instruction records a [`Lazy`] descriptor (operation, width, operands, result)
//! instead of computing six flags; [`compute`] derives any single flag on demand and
//! [`materialize`] folds the descriptor into RFLAGS when something needs the whole register
//! (pushf, lahf, rotates, sahf, end of a block). The rules follow the Intel SDM Vol. 1 §3.4.3 and
//! each instruction's "Flags Affected" section; where the manuals leave a flag undefined the
//! choice below is documented at the operation.

use super::emit::{BinOp, Emitter, UnOp};
use crate::state::rflags;
use iced_x86::ConditionCode;

/// The six arithmetic status flags in RFLAGS.
pub const ARITH: u64 = rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF;

/// The operation whose flags a [`Lazy`] descriptor describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcOp {
    /// `result = src1 + src2`.
    Add,
    /// `result = src1 + src2 + aux` (aux = carry in).
    Adc,
    /// `result = src1 - src2` (also CMP and NEG with `src1 = 0`).
    Sub,
    /// `result = src1 - src2 - aux` (aux = borrow in).
    Sbb,
    /// INC: like `Add` with `src2 = 1`, CF kept in `aux`.
    Inc,
    /// DEC: like `Sub` with `src2 = 1`, CF kept in `aux`.
    Dec,
    /// AND/OR/XOR/TEST: CF = OF = 0, AF = 0 (undefined by the SDM; 0 is what Intel and AMD do).
    Logic,
    /// SHL by `src2` in 1..32/64: CF = last bit out, OF = MSB(result) xor CF, AF = 1 (undefined;
    /// AMD's value).
    Shl,
    /// SHR by `src2`: CF = last bit out, OF = MSB(src1).
    Shr,
    /// SAR by `src2`: CF = last bit out, OF = 0.
    Sar,
    /// SHRD by `src2`: CF = last bit out of `src1`, OF = MSB(result) xor MSB(src1).
    Shrd,
    /// MUL/IMUL: CF = OF = `aux`; SF/ZF/PF follow the low result, AF = 0 (all undefined).
    Mul,
}

/// The recorded inputs of the last flag-setting operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lazy<V> {
    /// Which operation.
    pub op: CcOp,
    /// Operand width in bits (8, 16, 32, 64).
    pub width: u32,
    /// First operand, zero-extended from `width`.
    pub src1: V,
    /// Second operand (shift count for shifts), zero-extended from `width`.
    pub src2: V,
    /// Result, zero-extended from `width`.
    pub result: V,
    /// Carry in (ADC/SBB), preserved CF (INC/DEC) or overflow (MUL); 0/1.
    pub aux: V,
}

/// Where the current arithmetic flags live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagState<V> {
    /// RFLAGS holds them.
    Materialized,
    /// They are a function of the descriptor (the arithmetic bits in RFLAGS are stale).
    Lazy(Lazy<V>),
}

/// One arithmetic flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Carry.
    Cf,
    /// Parity of the low result byte (1 = even).
    Pf,
    /// Auxiliary carry out of bit 3.
    Af,
    /// Zero.
    Zf,
    /// Sign.
    Sf,
    /// Overflow.
    Of,
}

impl Flag {
    /// The flag's bit position in RFLAGS.
    pub fn bit(self) -> u32 {
        match self {
            Flag::Cf => 0,
            Flag::Pf => 2,
            Flag::Af => 4,
            Flag::Zf => 6,
            Flag::Sf => 7,
            Flag::Of => 11,
        }
    }
}

/// Records a flag-setting operation. Operands and result must already be masked to `width`.
pub fn set_lazy<E: Emitter>(
    e: &mut E,
    op: CcOp,
    width: u32,
    src1: E::V,
    src2: E::V,
    result: E::V,
    aux: E::V,
) {
    e.set_flag_state(FlagState::Lazy(Lazy {
        op,
        width,
        src1,
        src2,
        result,
        aux,
    }));
}

/// Even parity of the low byte of `v` as 0/1.
pub fn parity<E: Emitter>(e: &mut E, v: E::V) -> E::V {
    let low = e.and_i(v, 0xff);
    let n = e.un(UnOp::Popcnt, low);
    let odd = e.and_i(n, 1);
    let one = e.imm(1);
    e.xor(odd, one)
}

/// The current value (0/1) of flag `f`.
pub fn compute<E: Emitter>(e: &mut E, f: Flag) -> E::V {
    match e.flag_state() {
        FlagState::Materialized => {
            let r = e.rflags();
            e.bit(r, f.bit())
        }
        FlagState::Lazy(l) => compute_lazy(e, &l, f),
    }
}

fn compute_lazy<E: Emitter>(e: &mut E, l: &Lazy<E::V>, f: Flag) -> E::V {
    let w = l.width;
    match f {
        Flag::Zf => e.eq_i(l.result, 0),
        Flag::Sf => e.bit(l.result, w - 1),
        Flag::Pf => parity(e, l.result),
        Flag::Af => match l.op {
            CcOp::Logic | CcOp::Mul => e.imm(0),
            // Undefined for shifts by a non-zero count; AMD sets it, which costs nothing here.
            CcOp::Shl | CcOp::Shr | CcOp::Sar | CcOp::Shrd => e.imm(1),
            _ => {
                let x = e.xor(l.src1, l.src2);
                let x = e.xor(x, l.result);
                e.bit(x, 4)
            }
        },
        Flag::Cf => match l.op {
            CcOp::Add => e.bin(BinOp::Ult, l.result, l.src1),
            CcOp::Adc => {
                let lt = e.bin(BinOp::Ult, l.result, l.src1);
                let eq = e.bin(BinOp::Eq, l.result, l.src1);
                let c = e.and(eq, l.aux);
                e.or(lt, c)
            }
            CcOp::Sub => e.bin(BinOp::Ult, l.src1, l.src2),
            CcOp::Sbb => {
                let lt = e.bin(BinOp::Ult, l.src1, l.src2);
                let eq = e.bin(BinOp::Eq, l.src1, l.src2);
                let c = e.and(eq, l.aux);
                e.or(lt, c)
            }
            CcOp::Inc | CcOp::Dec | CcOp::Mul => l.aux,
            CcOp::Logic => e.imm(0),
            CcOp::Shl => {
                // Bit (width - count) of src1, i.e. the last bit shifted out of the top.
                let one = e.imm(1);
                let n = e.sub(l.src2, one);
                let s = e.bin(BinOp::Shl, l.src1, n);
                e.bit(s, w - 1)
            }
            CcOp::Shr | CcOp::Sar | CcOp::Shrd => {
                let src = if l.op == CcOp::Sar {
                    e.sext(l.src1, w)
                } else {
                    l.src1
                };
                let one = e.imm(1);
                let n = e.sub(l.src2, one);
                let op = if l.op == CcOp::Sar {
                    BinOp::Sar
                } else {
                    BinOp::Shr
                };
                let s = e.bin(op, src, n);
                e.and_i(s, 1)
            }
        },
        Flag::Of => match l.op {
            CcOp::Add | CcOp::Adc | CcOp::Inc => {
                let a = e.xor(l.src1, l.result);
                let b = e.xor(l.src2, l.result);
                let x = e.and(a, b);
                e.bit(x, w - 1)
            }
            CcOp::Sub | CcOp::Sbb | CcOp::Dec => {
                let a = e.xor(l.src1, l.src2);
                let b = e.xor(l.src1, l.result);
                let x = e.and(a, b);
                e.bit(x, w - 1)
            }
            CcOp::Logic | CcOp::Sar => e.imm(0),
            CcOp::Mul => l.aux,
            CcOp::Shl => {
                let cf = compute_lazy(e, l, Flag::Cf);
                let msb = e.bit(l.result, w - 1);
                e.xor(msb, cf)
            }
            CcOp::Shr => e.bit(l.src1, w - 1),
            CcOp::Shrd => {
                let x = e.xor(l.src1, l.result);
                e.bit(x, w - 1)
            }
        },
    }
}

/// The six arithmetic flags of the current state, in their RFLAGS positions (other bits 0).
pub fn arith_bits<E: Emitter>(e: &mut E) -> E::V {
    match e.flag_state() {
        FlagState::Materialized => {
            let r = e.rflags();
            e.and_i(r, ARITH)
        }
        FlagState::Lazy(l) => lazy_arith_bits(e, &l),
    }
}

/// The six arithmetic flags `l` describes, in their RFLAGS positions (other bits 0), without
/// touching the emitter's flag state (usable inside an [`Emitter::if_then`] body).
pub fn lazy_arith_bits<E: Emitter>(e: &mut E, l: &Lazy<E::V>) -> E::V {
    let mut acc = e.imm(0);
    for f in [Flag::Cf, Flag::Pf, Flag::Af, Flag::Zf, Flag::Sf, Flag::Of] {
        let v = compute_lazy(e, l, f);
        let v = e.shl_i(v, f.bit());
        acc = e.or(acc, v);
    }
    acc
}

/// Folds any lazy flags into RFLAGS and returns the complete RFLAGS value.
pub fn materialize<E: Emitter>(e: &mut E) -> E::V {
    if let FlagState::Lazy(_) = e.flag_state() {
        let bits = arith_bits(e);
        let r = e.rflags();
        let r = e.and_i(r, !ARITH);
        let r = e.or(r, bits);
        e.set_rflags(r);
        e.set_flag_state(FlagState::Materialized);
    }
    e.rflags()
}

/// Replaces the RFLAGS bits in `mask` with the same bits of `value` (other bits of `value` are
/// ignored), materializing lazy flags first.
pub fn write_bits<E: Emitter>(e: &mut E, mask: u64, value: E::V) {
    let r = materialize(e);
    let keep = e.and_i(r, !mask);
    let new = e.and_i(value, mask);
    let r = e.or(keep, new);
    e.set_rflags(r);
}

/// Records `l` as the new flag state when `cond` is None (unconditional) or `cond` != 0, and
/// keeps the current flags otherwise (shift and rotate counts of zero leave flags unchanged).
pub fn set_lazy_if<E: Emitter>(e: &mut E, cond: Option<E::V>, l: Lazy<E::V>) {
    match cond {
        None => e.set_flag_state(FlagState::Lazy(l)),
        Some(c) => {
            let old = materialize(e);
            e.set_flag_state(FlagState::Lazy(l));
            let new = materialize(e);
            let r = e.select(c, new, old);
            e.set_rflags(r);
        }
    }
}

/// [`write_bits`] when `cond` is None or != 0; otherwise RFLAGS keeps its value.
pub fn write_bits_if<E: Emitter>(e: &mut E, cond: Option<E::V>, mask: u64, value: E::V) {
    let old = materialize(e);
    write_bits(e, mask, value);
    if let Some(c) = cond {
        let new = e.rflags();
        let r = e.select(c, new, old);
        e.set_rflags(r);
    }
}

/// Sets one arithmetic flag to `v` (0/1), materializing first.
pub fn set_flag<E: Emitter>(e: &mut E, f: Flag, v: E::V) {
    let shifted = e.shl_i(v, f.bit());
    write_bits(e, 1 << f.bit(), shifted);
}

/// Evaluates condition code `cc` (as used by jcc/setcc/cmovcc) to 0/1.
pub fn cond<E: Emitter>(e: &mut E, cc: ConditionCode) -> E::V {
    // Fast paths on the lazy descriptor for the common compare-and-branch patterns.
    if let FlagState::Lazy(l) = e.flag_state() {
        if l.op == CcOp::Sub {
            match cc {
                ConditionCode::b => return e.bin(BinOp::Ult, l.src1, l.src2),
                ConditionCode::ae => {
                    let b = e.bin(BinOp::Ult, l.src1, l.src2);
                    return e.eq_i(b, 0);
                }
                ConditionCode::be => return e.bin(BinOp::Ule, l.src1, l.src2),
                ConditionCode::a => return e.bin(BinOp::Ult, l.src2, l.src1),
                ConditionCode::l | ConditionCode::ge | ConditionCode::le | ConditionCode::g => {
                    let a = e.sext(l.src1, l.width);
                    let b = e.sext(l.src2, l.width);
                    return match cc {
                        ConditionCode::l => e.bin(BinOp::Slt, a, b),
                        ConditionCode::ge => {
                            let lt = e.bin(BinOp::Slt, a, b);
                            e.eq_i(lt, 0)
                        }
                        ConditionCode::g => e.bin(BinOp::Slt, b, a),
                        _ => {
                            let gt = e.bin(BinOp::Slt, b, a);
                            e.eq_i(gt, 0)
                        }
                    };
                }
                _ => {}
            }
        }
    }
    let negate = matches!(
        cc,
        ConditionCode::no
            | ConditionCode::ae
            | ConditionCode::ne
            | ConditionCode::a
            | ConditionCode::ns
            | ConditionCode::np
            | ConditionCode::ge
            | ConditionCode::g
    );
    let v = match cc {
        ConditionCode::None => return e.imm(1),
        ConditionCode::o | ConditionCode::no => compute(e, Flag::Of),
        ConditionCode::b | ConditionCode::ae => compute(e, Flag::Cf),
        ConditionCode::e | ConditionCode::ne => compute(e, Flag::Zf),
        ConditionCode::be | ConditionCode::a => {
            let c = compute(e, Flag::Cf);
            let z = compute(e, Flag::Zf);
            e.or(c, z)
        }
        ConditionCode::s | ConditionCode::ns => compute(e, Flag::Sf),
        ConditionCode::p | ConditionCode::np => compute(e, Flag::Pf),
        ConditionCode::l | ConditionCode::ge => {
            let s = compute(e, Flag::Sf);
            let o = compute(e, Flag::Of);
            e.xor(s, o)
        }
        ConditionCode::le | ConditionCode::g => {
            let s = compute(e, Flag::Sf);
            let o = compute(e, Flag::Of);
            let l = e.xor(s, o);
            let z = compute(e, Flag::Zf);
            e.or(l, z)
        }
    };
    if negate {
        let one = e.imm(1);
        e.xor(v, one)
    } else {
        v
    }
}
