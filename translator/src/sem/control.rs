//! Near control transfers: JMP, Jcc, JCXZ/JECXZ/JRCXZ, LOOP*, CALL, RET.
//!
//! In 64-bit mode a non-canonical target raises #GP(0) at the branch itself, before any write
//! (Intel behaviour; the return address is not pushed). In other modes targets wrap to the
//! operand size (iced already wraps relative targets).

use super::emit::Emitter;
use super::flags;
use super::operand::{check_canonical, loc, read_reg_bits, write_reg_bits};
use super::stack::{peek, push_value, set_sp, sp_plus};
use super::{Exception, GP};
use crate::state::reg::RCX;
use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind};

/// The branch target of operand 0: a relative target or an indirect register/memory operand.
fn target<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<E::V, Exception> {
    let t = match insn.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            e.imm(insn.near_branch_target())
        }
        OpKind::Register | OpKind::Memory => {
            let l = loc(e, insn, 0)?;
            let bits = l.bits().ok_or(Exception::Unimplemented(insn.mnemonic()))?;
            l.read(e, bits)?
        }
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    if e.code_bits() == 64 {
        check_canonical(e, t, GP)?;
    }
    Ok(t)
}

/// JMP near (relative or indirect).
pub fn jmp<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let t = target(e, insn)?;
    e.set_rip(t);
    Ok(())
}

/// Jcc: taken when the condition holds, else falls through.
pub fn jcc<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let c = flags::cond(e, insn.condition_code());
    branch_if(e, insn, c)
}

/// Sets RIP to the relative target when `c` != 0, else to the next instruction.
fn branch_if<E: Emitter>(e: &mut E, insn: &Instruction, c: E::V) -> Result<(), Exception> {
    let t = e.imm(insn.near_branch_target());
    let next = e.imm(insn.next_ip());
    if e.code_bits() == 64 && !is_canonical(insn.near_branch_target()) {
        // Only a taken branch faults.
        let bad = e.ne_i(c, 0);
        e.raise(
            bad,
            Exception::Cpu {
                vector: GP,
                error: Some(0),
            },
        )?;
    }
    let r = e.select(c, t, next);
    e.set_rip(r);
    Ok(())
}

fn is_canonical(a: u64) -> bool {
    ((a << 16) as i64 >> 16) as u64 == a
}

/// Width of the count register (CX/ECX/RCX) of LOOP/JCXZ: the address size.
fn count_bits(insn: &Instruction) -> u32 {
    use Code as C;
    match insn.code() {
        C::Jcxz_rel8_16
        | C::Jcxz_rel8_32
        | C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX => 16,
        C::Jrcxz_rel8_16
        | C::Jrcxz_rel8_64
        | C::Loop_rel8_16_RCX
        | C::Loop_rel8_64_RCX
        | C::Loope_rel8_16_RCX
        | C::Loope_rel8_64_RCX
        | C::Loopne_rel8_16_RCX
        | C::Loopne_rel8_64_RCX => 64,
        _ => 32,
    }
}

/// JCXZ/JECXZ/JRCXZ: taken when the count register is zero.
pub fn jcxz<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let c = read_reg_bits(e, RCX, count_bits(insn));
    let z = e.eq_i(c, 0);
    branch_if(e, insn, z)
}

/// LOOP/LOOPE/LOOPNE: decrement the count register (no flags), branch while non-zero (and ZF).
pub fn loop_<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bits = count_bits(insn);
    let c = read_reg_bits(e, RCX, bits);
    let c = e.add_i(c, u64::MAX);
    let c = e.zext(c, bits);
    let mut taken = e.ne_i(c, 0);
    let zf_cc = match insn.mnemonic() {
        Mnemonic::Loope => Some(ConditionCode::e),
        Mnemonic::Loopne => Some(ConditionCode::ne),
        _ => None,
    };
    if let Some(cc) = zf_cc {
        let z = flags::cond(e, cc);
        taken = e.and(taken, z);
    }
    // The target check comes before the count write so a fault changes nothing.
    let t = e.imm(insn.near_branch_target());
    let next = e.imm(insn.next_ip());
    if e.code_bits() == 64 && !is_canonical(insn.near_branch_target()) {
        e.raise(
            taken,
            Exception::Cpu {
                vector: GP,
                error: Some(0),
            },
        )?;
    }
    write_reg_bits(e, RCX, bits, c);
    let r = e.select(taken, t, next);
    e.set_rip(r);
    Ok(())
}

/// CALL near: the target is resolved and checked, the return address pushed, then the jump.
pub fn call<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let bytes = insn.stack_pointer_increment().unsigned_abs();
    if !matches!(bytes, 2 | 4 | 8) {
        return Err(Exception::Unimplemented(insn.mnemonic()));
    }
    let t = target(e, insn)?;
    let ret = e.imm(insn.next_ip());
    push_value(e, ret, bytes)?;
    e.set_rip(t);
    Ok(())
}

/// RET near, optionally releasing `imm16` further bytes of stack.
pub fn ret<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let (bytes, extra) = match insn.code() {
        Code::Retnw => (2, 0),
        Code::Retnd => (4, 0),
        Code::Retnq => (8, 0),
        Code::Retnw_imm16 => (2, insn.immediate16()),
        Code::Retnd_imm16 => (4, insn.immediate16()),
        Code::Retnq_imm16 => (8, insn.immediate16()),
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let (t, new) = peek(e, bytes)?;
    if e.code_bits() == 64 {
        check_canonical(e, t, GP)?;
    }
    let new = sp_plus(e, new, i64::from(extra));
    set_sp(e, new);
    e.set_rip(t);
    Ok(())
}
