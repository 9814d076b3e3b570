//! Read-modify-write exchanges: XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B.
//!
//! These are the instructions SMP guests use with LOCK. The translator runs one CPU, so every
//! instruction is atomic by construction and the prefix only needs to be accepted (iced already
//! rejects LOCK on instructions and forms where it is #UD, which the decoder reports as #UD).
//! Memory destinations are stored before any register is written, so a faulting store leaves the
//! registers untouched; CMPXCHG* write memory even when the comparison fails (with its own old
//! value: SDM "the processor never produces a locked read without also producing a locked
//! write"), so a read-only destination faults either way.

use super::emit::{BinOp, Emitter};
use super::flags::{self, CcOp, Flag};
use super::operand::{load_rmw, loc, mem_linear, read_reg_bits, store, write_gpr, Gpr, Loc};
use super::{width0, Exception, GP};
use crate::state::reg::{RAX, RBX, RCX, RDX};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// XADD dst, src: `dst = dst + src`, `src = old dst`, flags as ADD. When both operands are the
/// same register the sum wins (the destination is written last, SDM pseudocode).
pub fn xadd<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let a = dst.read_rmw(e, w)?;
    let b = src.read(e, w)?;
    let sum = e.add(a, b);
    let r = e.zext(sum, w);
    if matches!(dst, Loc::Mem { .. }) {
        dst.write(e, r)?;
        src.write(e, a)?;
    } else {
        src.write(e, a)?;
        dst.write(e, r)?;
    }
    let zero = e.imm(0);
    flags::set_lazy(e, CcOp::Add, w, a, b, r, zero);
    Ok(())
}

/// Writes `v` to register operand `g` only when `cond` != 0 (the register keeps all 64 bits
/// otherwise, including the upper half a 32-bit write would clear).
fn write_gpr_if<E: Emitter>(e: &mut E, cond: E::V, g: Gpr, v: E::V) {
    let before = e.gpr(g.index);
    write_gpr(e, g, v);
    let after = e.gpr(g.index);
    let r = e.select(cond, after, before);
    e.set_gpr(g.index, r);
}

/// The low `bits` of register `index` as an operand.
fn low(index: usize, bits: u32) -> Gpr {
    Gpr {
        index,
        bits,
        high: false,
    }
}

/// CMPXCHG dst, src: compares the accumulator with `dst`; equal: ZF = 1 and `dst = src`;
/// different: ZF = 0 and the accumulator takes `dst`. A memory destination is written in both
/// cases (with its old value on failure); a register destination only on success (the AMD
/// oracle keeps the upper half of a 32-bit destination register on failure). Flags as
/// `CMP accumulator, dst`.
pub fn cmpxchg<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let old = dst.read_rmw(e, w)?;
    let new = src.read(e, w)?;
    let acc = read_reg_bits(e, RAX, w);
    let eq = e.bin(BinOp::Eq, acc, old);
    match dst {
        Loc::Reg(g) => write_gpr_if(e, eq, g, new),
        _ => {
            let v = e.select(eq, new, old);
            dst.write(e, v)?;
        }
    }
    let ne = e.eq_i(eq, 0);
    write_gpr_if(e, ne, low(RAX, w), old);
    let diff = e.sub(acc, old);
    let r = e.zext(diff, w);
    let zero = e.imm(0);
    flags::set_lazy(e, CcOp::Sub, w, acc, old, r, zero);
    Ok(())
}

/// CMPXCHG8B m64 / CMPXCHG16B m128: compares EDX:EAX (RDX:RAX) with the memory operand; equal:
/// ZF = 1 and memory takes ECX:EBX (RCX:RBX); different: ZF = 0 and EDX:EAX (RDX:RAX) take the
/// memory value. Only ZF changes. CMPXCHG16B raises #GP(0) for an operand that is not 16-byte
/// aligned, before any access.
pub fn cmpxchg_wide<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    if insn.op0_kind() != OpKind::Memory {
        return Err(Exception::cpu(super::UD));
    }
    let wide = insn.mnemonic() == Mnemonic::Cmpxchg16b;
    let half: u32 = if wide { 64 } else { 32 };
    let addr = mem_linear(e, insn, None)?;
    let (old_lo, old_hi) = if wide {
        let low = e.and_i(addr, 15);
        let bad = e.ne_i(low, 0);
        e.raise(
            bad,
            Exception::Cpu {
                vector: GP,
                error: Some(0),
            },
        )?;
        // Both halves are read before either is written: same 16-byte line, same page.
        let hi_addr = e.add_i(addr, 8);
        let lo = load_rmw(e, addr, 8)?;
        let hi = load_rmw(e, hi_addr, 8)?;
        (lo, hi)
    } else {
        let q = load_rmw(e, addr, 8)?;
        let lo = e.zext(q, 32);
        let hi = e.shr_i(q, 32);
        (lo, hi)
    };
    let a = read_reg_bits(e, RAX, half);
    let d = read_reg_bits(e, RDX, half);
    let b = read_reg_bits(e, RBX, half);
    let c = read_reg_bits(e, RCX, half);
    let lo_eq = e.bin(BinOp::Eq, a, old_lo);
    let hi_eq = e.bin(BinOp::Eq, d, old_hi);
    let eq = e.and(lo_eq, hi_eq);
    let new_lo = e.select(eq, b, old_lo);
    let new_hi = e.select(eq, c, old_hi);
    if wide {
        let hi_addr = e.add_i(addr, 8);
        // Both addresses were just read, so neither store can miss memory (with paging, both
        // halves share one page and the first store takes any write fault).
        store(e, addr, new_lo, 8)?;
        store(e, hi_addr, new_hi, 8)?;
    } else {
        let hi = e.shl_i(new_hi, 32);
        let q = e.or(new_lo, hi);
        store(e, addr, q, 8)?;
    }
    let ne = e.eq_i(eq, 0);
    write_gpr_if(e, ne, low(RAX, half), old_lo);
    write_gpr_if(e, ne, low(RDX, half), old_hi);
    flags::set_flag(e, Flag::Zf, eq);
    Ok(())
}
