//! Stack instructions: PUSH, POP, ENTER, LEAVE, PUSHF, POPF, and the push/pop helpers CALL/RET
//! use.
//!
//! The stack pointer is RSP in 64-bit mode, else ESP or SP by SS.B; stack addresses are SS
//! relative (a non-canonical one raises #SS(0)). Every push stores before RSP changes, so a
//! faulting push leaves RSP intact.

use super::emit::{BinOp, Emitter, Seg};
use super::flags::{self, ARITH};
use super::operand::{
    gpr_of, linear, load, load_rmw, loc, mem_linear, read_reg_bits, store, write_reg_bits,
};
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

/// ENTER alloc, level: pushes the frame pointer, copies `level - 1` frame pointers of the
/// enclosing frames (read at rBP - i * size), pushes the new frame pointer when `level` > 0,
/// then rBP = the frame (FrameTemp) and the stack pointer drops by `alloc` more (SDM ENTER;
/// `level` is taken modulo 32).
///
/// Precise: every read, every canonical check and a probe of the lowest slot come before the
/// first store (the slots share one alignment, so the first store's #AC check covers all), and
/// the first store is the highest slot. The copies are read again after the rBP push, which
/// they can overlap (found by difftest: the CPU reads the freshly pushed bytes). rBP is written at the operand size (as QEMU and Bochs
/// do; only the 16-bit form in 64-bit mode differs from a full write).
pub fn enter<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = match insn.code() {
        iced_x86::Code::Enterw_imm16_imm8 => 2,
        iced_x86::Code::Enterd_imm16_imm8 => 4,
        iced_x86::Code::Enterq_imm16_imm8 => 8,
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let alloc = u64::from(insn.immediate16());
    let level = u64::from(insn.immediate8_2nd() & 31);
    let sbits = e.stack_bits();
    let s = sp(e);
    let frame = sp_plus(e, s, -i64::from(bytes));
    // Enclosing frame-pointer slots: probed once before anything is written (a missing slot
    // faults precisely), and read again in SDM order after the push of rBP (which they may
    // overlap) for their values. Their alignment is checked only by that second read: the CPU
    // raises #AC for a misaligned copy after the rBP push is stored (found by difftest on AMD:
    // `--seed 1 --start 61273`, `enter 2Bh,3` with RBP odd and AC set).
    let bp = read_reg_bits(e, RBP, sbits);
    let mut sources = Vec::new();
    for i in 1..level {
        let a = sp_plus(e, bp, -((i * u64::from(bytes)) as i64));
        let a = linear(e, Seg::Ss, a)?;
        e.load(a, bytes as u8)?;
        sources.push(a);
    }
    // Slot k (0 = old rBP, 1..level-1 = copies, level = FrameTemp) at frame - k * size.
    let mut slots = Vec::new();
    for k in 0..=level {
        let a = sp_plus(e, frame, -((k * u64::from(bytes)) as i64));
        slots.push(linear(e, Seg::Ss, a)?);
    }
    if let (true, Some(&lowest)) = (level > 0, slots.last()) {
        // A missing lowest slot faults here, before the first store.
        load(e, lowest, 1)?;
    }
    let below = level * u64::from(bytes) + alloc;
    let new_sp = sp_plus(e, frame, -(below as i64));
    let top = linear(e, Seg::Ss, new_sp)?;
    let old_bp = read_reg_bits(e, RBP, bytes * 8);
    let mut slots = slots.into_iter();
    if let Some(a) = slots.next() {
        store(e, a, old_bp, bytes as u8)?;
    }
    for (src, dst) in sources.into_iter().zip(slots.by_ref()) {
        let v = load(e, src, bytes as u8)?;
        store(e, dst, v, bytes as u8)?;
    }
    if let Some(a) = slots.next() {
        store(e, a, frame, bytes as u8)?;
    }
    // The CPU also checks the new stack top as an operand-size write, after the frame is
    // written: #AC for a misaligned one (found by difftest on AMD: `enter 0x3d, 2` with AC set
    // raises #AC with the three slots already stored) and a write #PF for an unmapped one
    // (found by the ring-3 fuzz comparison: a large frame faults at the final RSP). Nothing is
    // written there; registers are unchanged.
    load_rmw(e, top, bytes as u8)?;
    write_reg_bits(e, RBP, bytes * 8, frame);
    set_sp(e, new_sp);
    Ok(())
}

/// LEAVE: the stack pointer takes the frame pointer, then the frame pointer is popped.
pub fn leave<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    // iced reports no fixed stack-pointer increment for LEAVE (it depends on rBP).
    let bytes = match insn.code() {
        iced_x86::Code::Leavew => 2,
        iced_x86::Code::Leaved => 4,
        iced_x86::Code::Leaveq => 8,
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
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

/// PUSHA/PUSHAD (not in 64-bit mode, where the opcode is invalid): pushes AX, CX, DX, BX, the
/// original SP, BP, SI, DI at the operand size. Every value is read first; the stores go from
/// the highest address down and the stack pointer moves last, so a fault leaves the registers
/// as they were.
pub fn pusha<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = match insn.stack_pointer_increment() {
        -16 => 2,
        -32 => 4,
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let bits = bytes * 8;
    let values: Vec<E::V> = (0..8).map(|r| read_reg_bits(e, r, bits)).collect();
    let s = sp(e);
    for (i, v) in values.into_iter().enumerate() {
        let at = sp_plus(e, s, -(i as i64 + 1) * i64::from(bytes));
        let addr = linear(e, Seg::Ss, at)?;
        store(e, addr, v, bytes as u8)?;
    }
    let new = sp_plus(e, s, -8 * i64::from(bytes));
    set_sp(e, new);
    Ok(())
}

/// POPA/POPAD: pops DI, SI, BP, (SP discarded), BX, DX, CX, AX; every load comes before the
/// first register write.
pub fn popa<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = match insn.stack_pointer_increment() {
        16 => 2,
        32 => 4,
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let s = sp(e);
    let mut values = Vec::with_capacity(8);
    for i in 0..8i64 {
        let at = sp_plus(e, s, i * i64::from(bytes));
        let addr = linear(e, Seg::Ss, at)?;
        values.push(load(e, addr, bytes as u8)?);
    }
    // values[0] is DI (register 7) ... values[7] is AX (register 0); SP (values[3]) is skipped.
    for (i, v) in values.into_iter().enumerate() {
        let r = 7 - i;
        if r != RSP {
            write_reg_bits(e, r, bytes * 8, v);
        }
    }
    let new = sp_plus(e, s, 8 * i64::from(bytes));
    set_sp(e, new);
    Ok(())
}
