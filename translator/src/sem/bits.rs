//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, TZCNT/LZCNT, POPCNT.
//!
//! Undefined flags follow what the host (AMD Zen) and Intel cores do where they agree, as the
//! unit tests check against the host CPU; the difftest masks them by the SDM's rule.

use super::emit::{BinOp, Emitter, UnOp};
use super::flags::{self, Flag, ARITH};
use super::operand::{address_bits, effective_address, linear, loc, segment_of, Loc};
use super::{width0, Exception};
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// BT, BTS, BTR, BTC. With a register bit offset and a memory operand the offset is signed and
/// selects a word anywhere relative to the operand's address; otherwise it is taken modulo the
/// width. CF = the selected bit; ZF is kept, the rest (undefined) are kept too.
pub fn bt<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let m = insn.mnemonic();
    let off_loc = loc(e, insn, 1)?;
    let (dst, w, bit) = if insn.op0_kind() == OpKind::Memory && insn.op1_kind() == OpKind::Register
    {
        let w = insn.memory_size().size() as u32 * 8;
        if !matches!(w, 16 | 32 | 64) {
            return Err(Exception::Unimplemented(m));
        }
        let off = off_loc.read(e, w)?;
        let soff = e.sext(off, w);
        let sh = e.imm(u64::from(w.trailing_zeros()));
        let words = e.bin(BinOp::Sar, soff, sh);
        let disp = e.shl_i(words, (w / 8).trailing_zeros());
        let ea = effective_address(e, insn, None)?;
        let ea = e.add(ea, disp);
        let ea = e.zext(ea, address_bits(insn, e.code_bits()));
        let addr = linear(e, segment_of(insn), ea)?;
        let bit = e.and_i(off, u64::from(w - 1));
        (Loc::Mem { addr, bits: w }, w, bit)
    } else {
        let dst = loc(e, insn, 0)?;
        let w = width0::<E>(insn, &dst)?;
        let off = off_loc.read(e, w)?;
        let bit = e.and_i(off, u64::from(w - 1));
        (dst, w, bit)
    };
    let v = if m == Mnemonic::Bt {
        dst.read(e, w)?
    } else {
        dst.read_rmw(e, w)?
    };
    let shifted = e.bin(BinOp::Shr, v, bit);
    let cf = e.and_i(shifted, 1);
    if m != Mnemonic::Bt {
        let one = e.imm(1);
        let b = e.bin(BinOp::Shl, one, bit);
        let r = match m {
            Mnemonic::Bts => e.or(v, b),
            Mnemonic::Btr => {
                let nb = e.un(UnOp::Not, b);
                e.and(v, nb)
            }
            _ => e.xor(v, b),
        };
        dst.write(e, r)?;
    }
    flags::set_flag(e, Flag::Cf, cf);
    Ok(())
}

/// BSF and BSR. A zero source sets ZF and leaves the destination unchanged (AMD documents it,
/// Intel does it); otherwise ZF = 0 and the destination gets the bit index. The other flags are
/// undefined and kept.
pub fn bsf_bsr<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let zero = e.eq_i(s, 0);
    let idx = if insn.mnemonic() == Mnemonic::Bsf {
        e.un(UnOp::Ctz, s)
    } else {
        let lz = e.un(UnOp::Clz, s);
        let top = e.imm(63);
        e.sub(top, lz)
    };
    let nz = e.eq_i(zero, 0);
    e.if_then(nz, |e| dst.write(e, idx))?;
    let z = e.shl_i(zero, Flag::Zf.bit());
    flags::write_bits(e, rflags::ZF, z);
    Ok(())
}

/// TZCNT and LZCNT: the count (the width for a zero source), CF = source was zero,
/// ZF = result is zero; of the undefined flags SF, AF, PF are cleared and OF is kept, as on
/// the AMD host (the model is an AMD CPU; with BMI1 advertised, F3 0F BC is TZCNT, not BSF).
pub fn tzcnt_lzcnt<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let zero = e.eq_i(s, 0);
    let r = if insn.mnemonic() == Mnemonic::Tzcnt {
        let c = e.un(UnOp::Ctz, s);
        let wv = e.imm(u64::from(w));
        e.select(zero, wv, c)
    } else {
        let c = e.un(UnOp::Clz, s);
        e.add_i(c, (u64::from(w)).wrapping_sub(64))
    };
    dst.write(e, r)?;
    let rz = e.eq_i(r, 0);
    let rz = e.shl_i(rz, Flag::Zf.bit());
    let bits = e.or(zero, rz);
    let cleared = rflags::CF | rflags::ZF | rflags::SF | rflags::AF | rflags::PF;
    flags::write_bits(e, cleared, bits);
    Ok(())
}

/// POPCNT: ZF = source was zero, CF = OF = SF = AF = PF = 0.
pub fn popcnt<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let dst = loc(e, insn, 0)?;
    let src = loc(e, insn, 1)?;
    let w = width0::<E>(insn, &dst)?;
    let s = src.read(e, w)?;
    let r = e.un(UnOp::Popcnt, s);
    dst.write(e, r)?;
    let z = e.eq_i(s, 0);
    let z = e.shl_i(z, Flag::Zf.bit());
    flags::write_bits(e, ARITH, z);
    Ok(())
}
