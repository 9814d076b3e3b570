//! Data movement: MOV, MOVZX/MOVSX/MOVSXD, LEA, XCHG, BSWAP, MOVBE, XLAT, CMOVcc, SETcc.

use super::emit::{Emitter, Seg, UnOp};
use super::operand::{effective_address, loc, store, write_reg_bits, Loc};
use super::{flags, width0, Exception};
use crate::state::reg::RAX;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// MOV between general registers, memory and immediates, and MOV r/m, Sreg (a selector read:
/// segment registers only change in the monitor, so reading one needs no trap). Loads into
/// segment registers and control/debug register moves are system instructions.
pub fn mov<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    if insn.op1_kind() == OpKind::Register && insn.op1_register().is_segment_register() {
        return mov_from_sreg(e, insn);
    }
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let v = src.read(e, w)?;
    dst.write(e, v)
}

/// MOV r/m, Sreg: a memory destination takes 16 bits whatever the operand size; a register
/// takes the selector zero-extended at the operand size (16-bit forms keep the upper bits), as
/// the CPU does.
fn mov_from_sreg<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    use iced_x86::Register as R;
    let seg = match insn.op1_register() {
        R::ES => Seg::Es,
        R::CS => Seg::Cs,
        R::SS => Seg::Ss,
        R::DS => Seg::Ds,
        R::FS => Seg::Fs,
        R::GS => Seg::Gs,
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let dst = loc(e, insn, 0)?;
    let v = e.seg_selector(seg);
    match dst {
        Loc::Mem { addr, .. } => store(e, addr, v, 2),
        Loc::Reg(_) => dst.write(e, v),
        Loc::Imm(_) => Err(Exception::Unimplemented(insn.mnemonic())),
    }
}

/// MOVZX (`signed = false`) and MOVSX/MOVSXD (`signed = true`).
pub fn movx<E: Emitter>(e: &mut E, insn: &Instruction, signed: bool) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let mut src = loc(e, insn, 1)?;
    if let (Mnemonic::Movsxd, Loc::Mem { bits, .. }) = (insn.mnemonic(), &mut src) {
        // MOVSXD r16, m: the value is the low word either way, but AMD (the difftest oracle's
        // CPU; APM "MOVSXD reg, reg/mem32") reads a doubleword, which #AC checks for 4-byte
        // alignment. Intel documents a word read; only #AC/unbacked-memory edges differ.
        *bits = 32;
    }
    let sw = src
        .bits()
        .ok_or(Exception::Unimplemented(insn.mnemonic()))?;
    let v = src.read(e, sw)?;
    let v = if signed { e.sext(v, sw) } else { v };
    dst.write(e, v)
}

/// LEA: the effective address (no segment base), truncated to the operand size.
pub fn lea<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let ea = effective_address(e, insn, None)?;
    dst.write(e, ea)
}

/// XCHG: both inputs are read before the memory side (if any) is written first.
pub fn xchg<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let a = loc(e, insn, 0)?;
    let b = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &a)?;
    // XCHG with memory is a locked read-modify-write of the memory operand.
    let va = a.read_rmw(e, w)?;
    let vb = b.read_rmw(e, w)?;
    if matches!(b, Loc::Mem { .. }) {
        b.write(e, va)?;
        a.write(e, vb)
    } else {
        a.write(e, vb)?;
        b.write(e, va)
    }
}

/// BSWAP. The 16-bit form is undefined by the SDM; Intel and AMD both clear the low word, which
/// is what the byte swap of the zero-extended 32-bit value shifted out yields here.
pub fn bswap<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let w = width0::<E>(insn, &dst)?;
    let v = dst.read(e, w)?;
    let s = e.un(UnOp::Bswap, v);
    let r = match w {
        64 => s,
        32 => e.shr_i(s, 32),
        _ => e.imm(0),
    };
    dst.write(e, r)
}

/// XLAT/XLATB: AL = [seg:rBX + AL] (AL unsigned, address size wrap; DS unless overridden).
pub fn xlat<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let src = loc(e, insn, 0)?;
    let v = src.read(e, 8)?;
    write_reg_bits(e, RAX, 8, v);
    Ok(())
}

/// MOVBE: a load or store with the bytes of the 16-, 32- or 64-bit operand reversed (one side
/// is always memory). A 16-bit register destination keeps its upper bits, a 32-bit one is
/// zero-extended, as for MOV.
pub fn movbe<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let v = src.read(e, w)?;
    let s = e.un(UnOp::Bswap, v);
    let r = e.shr_i(s, 64 - w);
    dst.write(e, r)
}

/// CMOVcc: the source is always read (a memory source faults even when the condition is false)
/// and a 32-bit destination is always zero-extended.
pub fn cmov<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let d = dst.read(e, w)?;
    let c = flags::cond(e, insn.condition_code());
    let v = e.select(c, s, d);
    dst.write(e, v)
}

/// SETcc: writes 0 or 1 to an 8-bit operand.
pub fn setcc<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let c = flags::cond(e, insn.condition_code());
    dst.write(e, c)
}
