//! Integer arithmetic and logic: ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST, INC, DEC, NEG, NOT.

use super::emit::{Emitter, UnOp};
use super::flags::{self, CcOp, Flag};
use super::operand::loc;
use super::{width0, Exception};
use iced_x86::{Instruction, Mnemonic};

/// The two-operand ALU group; CMP and TEST only set flags.
pub fn binary<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let m = insn.mnemonic();
    let a = if matches!(m, Mnemonic::Cmp | Mnemonic::Test) {
        dst.read(e, w)?
    } else {
        dst.read_rmw(e, w)?
    };
    let b = src.read(e, w)?;
    let (op, raw, aux) = match m {
        Mnemonic::Add => (CcOp::Add, e.add(a, b), None),
        Mnemonic::Sub | Mnemonic::Cmp => (CcOp::Sub, e.sub(a, b), None),
        Mnemonic::Adc => {
            let c = flags::compute(e, Flag::Cf);
            let s = e.add(a, b);
            (CcOp::Adc, e.add(s, c), Some(c))
        }
        Mnemonic::Sbb => {
            let c = flags::compute(e, Flag::Cf);
            let s = e.sub(a, b);
            (CcOp::Sbb, e.sub(s, c), Some(c))
        }
        Mnemonic::And | Mnemonic::Test => (CcOp::Logic, e.and(a, b), None),
        Mnemonic::Or => (CcOp::Logic, e.or(a, b), None),
        Mnemonic::Xor => (CcOp::Logic, e.xor(a, b), None),
        _ => {
            return Err(Exception::Internal(
                "alu::binary dispatched a non-ALU mnemonic",
            ))
        }
    };
    let r = e.zext(raw, w);
    if !matches!(m, Mnemonic::Cmp | Mnemonic::Test) {
        dst.write(e, r)?;
    }
    let aux = match aux {
        Some(c) => c,
        None => e.imm(0),
    };
    flags::set_lazy(e, op, w, a, b, r, aux);
    Ok(())
}

/// INC and DEC: like ADD/SUB 1 but CF is preserved.
pub fn inc_dec<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &dst)?;
    let a = dst.read_rmw(e, w)?;
    let one = e.imm(1);
    let (op, raw) = if insn.mnemonic() == Mnemonic::Inc {
        (CcOp::Inc, e.add(a, one))
    } else {
        (CcOp::Dec, e.sub(a, one))
    };
    let r = e.zext(raw, w);
    let cf = flags::compute(e, Flag::Cf);
    dst.write(e, r)?;
    flags::set_lazy(e, op, w, a, one, r, cf);
    Ok(())
}

/// NEG: flags as for `0 - x` (CF = x != 0).
pub fn neg<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &dst)?;
    let a = dst.read_rmw(e, w)?;
    let n = e.un(UnOp::Neg, a);
    let r = e.zext(n, w);
    dst.write(e, r)?;
    let zero = e.imm(0);
    flags::set_lazy(e, CcOp::Sub, w, zero, a, r, zero);
    Ok(())
}

/// NOT: no flags.
pub fn not<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &dst)?;
    let a = dst.read_rmw(e, w)?;
    let n = e.un(UnOp::Not, a);
    dst.write(e, n)
}
