//! Stack instructions: PUSH, POP, LEAVE, PUSHF, POPF, and the push/pop helpers CALL/RET use.
//!
//! The stack pointer is RSP in 64-bit mode, else ESP or SP by SS.B; stack addresses are SS
//! relative (a non-canonical one raises #SS(0)). Every push stores before RSP changes, so a
//! faulting push leaves RSP intact.

use super::emit::{BinOp, Emitter, Seg};
use super::flags::{self, ARITH};
use super::operand::{gpr_of, linear, load, loc, mem_linear, read_reg_bits, store, write_reg_bits};
use super::Exception;
use crate::state::reg::{RBP, RSP};
use crate::state::rflags;
use iced_x86::{Instruction, OpKind};

/// The current stack pointer, zero-extended from the stack width.
pub fn sp<E: Emitter>(e: &mut E) -> E::V {
    let bits = e.stack_bits();
    read_reg_bits(e, RSP, bits)
}

/// Writes the stack pointer at the stack width.
pub fn set_sp<E: Emitter>(e: &mut E, v: E::V) {
    let bits = e.stack_bits();
    write_reg_bits(e, RSP, bits, v)
}

/// `sp + delta` wrapped to the stack width.
pub fn sp_plus<E: Emitter>(e: &mut E, sp: E::V, delta: i64) -> E::V {
    let bits = e.stack_bits();
    let s = e.add_i(sp, delta as u64);
    e.zext(s, bits)
}

/// Pushes the low `bytes` of `v` (store first, then the stack pointer).
pub fn push_value<E: Emitter>(e: &mut E, v: E::V, bytes: u32) -> Result<(), Exception> {
    let s = sp(e);
    let new = sp_plus(e, s, -i64::from(bytes));
    let addr = linear(e, Seg::Ss, new)?;
    store(e, addr, v, bytes as u8)?;
    set_sp(e, new);
    Ok(())
}

/// Reads `bytes` from the top of the stack without moving it: (value, incremented pointer).
pub fn peek<E: Emitter>(e: &mut E, bytes: u32) -> Result<(E::V, E::V), Exception> {
    let s = sp(e);
    let addr = linear(e, Seg::Ss, s)?;
    let v = load(e, addr, bytes as u8)?;
    let new = sp_plus(e, s, i64::from(bytes));
    Ok((v, new))
}

/// Bytes moved by a push or pop instruction.
fn size(insn: &Instruction) -> Result<u32, Exception> {
    match insn.stack_pointer_increment().unsigned_abs() {
        s @ (2 | 4 | 8) => Ok(s),
        _ => Err(Exception::Unimplemented(insn.mnemonic())),
    }
}

/// PUSH of a register, memory operand or immediate (PUSH RSP pushes the old value).
pub fn push<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = size(insn)?;
    let src = loc(e, insn, 0)?;
    let v = src.read(e, bytes * 8)?;
    push_value(e, v, bytes)
}

/// POP to a register or memory. A memory destination is addressed with the incremented stack
/// pointer (SDM POP); POP RSP loads the popped value into RSP.
pub fn pop<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = size(insn)?;
    if insn.op0_kind() == OpKind::Register && gpr_of(insn.op0_register()).is_none() {
        return Err(Exception::Unimplemented(insn.mnemonic()));
    }
    let (v, new) = peek(e, bytes)?;
    if insn.op0_kind() == OpKind::Memory {
        let addr = mem_linear(e, insn, Some(new))?;
        store(e, addr, v, bytes as u8)?;
        set_sp(e, new);
        Ok(())
    } else {
        let dst = loc(e, insn, 0)?;
        set_sp(e, new);
        dst.write(e, v)
    }
}

/// LEAVE: the stack pointer takes the frame pointer, then the frame pointer is popped.
pub fn leave<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = size(insn)?;
    let sbits = e.stack_bits();
    let bp = read_reg_bits(e, RBP, sbits);
    let addr = linear(e, Seg::Ss, bp)?;
    let v = load(e, addr, bytes as u8)?;
    let new = sp_plus(e, bp, i64::from(bytes));
    set_sp(e, new);
    write_reg_bits(e, RBP, bytes * 8, v);
    Ok(())
}

/// PUSHF/PUSHFD/PUSHFQ: RFLAGS with VM and RF cleared in the pushed image.
pub fn pushf<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = size(insn)?;
    let r = flags::materialize(e);
    let v = e.and_i(r, !(rflags::VM | rflags::RF));
    push_value(e, v, bytes)
}

/// POPF/POPFD/POPFQ outside virtual-8086 mode: IOPL changes only at CPL 0, IF only when
/// CPL <= IOPL; VM, VIP and VIF are kept, RF is cleared; a 16-bit POPF keeps the upper half.
pub fn popf<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = size(insn)?;
    let (v, new) = peek(e, bytes)?;
    let old = flags::materialize(e);
    let mut fixed = ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::AC | rflags::ID;
    let cpl = e.cpl();
    if cpl == 0 {
        fixed |= rflags::IOPL | rflags::IF;
    }
    if bytes == 2 {
        fixed &= 0xffff;
    }
    let mut mask = e.imm(fixed);
    if cpl != 0 {
        // IF is writable when CPL <= IOPL (a run-time value).
        let iopl = e.shr_i(old, 12);
        let iopl = e.and_i(iopl, 3);
        let c = e.imm(u64::from(cpl));
        let ok = e.bin(BinOp::Ule, c, iopl);
        let if_bit = e.shl_i(ok, 9);
        mask = e.or(mask, if_bit);
    }
    let new_bits = e.and(v, mask);
    let all = e.imm(u64::MAX);
    let keep = e.xor(mask, all);
    let kept = e.and(old, keep);
    let r = e.or(kept, new_bits);
    let r = e.and_i(r, !rflags::RF);
    set_sp(e, new);
    e.set_rflags(r);
    Ok(())
}
