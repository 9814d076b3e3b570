//! String instructions: MOVS, STOS, LODS, CMPS, SCAS with REP/REPE/REPNE and the direction flag.
//!
//! One execution performs at most one element by the semantics (QEMU's approach): with a REP
//! prefix the instruction checks the count register first (zero: nothing happens, no flags
//! change), moves one element, decrements the count, and leaves RIP on itself while the count
//! is not exhausted (and, for CMPS/SCAS, the REPE/REPNE condition holds). A repeated string
//! therefore ends its translation block after every element, which keeps both tiers simple and
//! exceptions precise: a fault in iteration k leaves rCX/rSI/rDI as after iteration k - 1 and
//! RIP at the instruction, exactly what the CPU reports, and interrupts are taken between
//! elements at block boundaries as on hardware.
//!
//! Bulk: a 64-bit-address REP MOVS/STOS with DF = 0 first asks the memory to run the elements
//! left on the current source and destination pages at once
//! ([`crate::mem::GuestMem::string_bulk`]: only where none of them could fault, touch MMIO or
//! rewrite translated code), advances rCX/rSI/rDI past them, then runs one more element as
//! above. The kernel clears and copies pages and user buffers with `rep stos`/`rep movs`; one
//! dispatch per element made that ~1000× slower than a memset. Such an execution counts as one
//! instruction. `SystemMem::set_precise_strings` turns the bulk step off (the instruction
//! trace and lockstep, which compare per element with KVM's single-step), and memories
//! without it (`FlatMem`) never run elements in bulk.
//!
//! Source operands are seg:rSI (DS unless overridden), destinations ES:rDI (no override). The
//! address size (16/32/64 by mode and 0x67) picks SI/ESI/RSI, DI/EDI/RDI and CX/ECX/RCX, which
//! are written at that width (a 32-bit write zero-extends, a 16-bit one merges).

use super::emit::{Emitter, Seg};
use super::flags::{self, CcOp, Flag, Lazy, ARITH};
use super::operand::{linear, load, read_reg_bits, segment_of, store, write_reg_bits};
use super::Exception;
use crate::mem::StringOp;
use crate::state::reg::{RAX, RCX, RDI, RSI};
use crate::state::rflags;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// Which string operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// The address size of a string instruction, from its implicit memory operands.
fn address_bits(insn: &Instruction) -> Option<u32> {
    (0..insn.op_count()).find_map(|i| match insn.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(16),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(32),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(64),
        _ => None,
    })
}

/// The bulk step of a 64-bit-address REP MOVS/STOS with DF = 0: the memory runs as many of the
/// remaining elements on the current pages as it can at once; the registers advance past them
/// and the element path continues from there (see the module docs).
fn bulk<E: Emitter>(e: &mut E, insn: &Instruction, op: Op, bytes: u32) -> Result<(), Exception> {
    let count = read_reg_bits(e, RCX, 64);
    let r = e.rflags();
    let df = e.bit(r, rflags::DF.trailing_zeros());
    let forward = e.eq_i(df, 0);
    let some = e.ne_i(count, 0);
    let go = e.and(forward, some);
    e.if_then(go, |e| {
        let si = read_reg_bits(e, RSI, 64);
        let di = read_reg_bits(e, RDI, 64);
        let src = match op {
            Op::Movs => linear(e, segment_of(insn), si)?,
            _ => e.imm(0),
        };
        let dst = linear(e, Seg::Es, di)?;
        let value = read_reg_bits(e, RAX, bytes * 8);
        let kind = match op {
            Op::Movs => StringOp::Movs,
            _ => StringOp::Stos,
        };
        let done = e.string_bulk(kind, bytes as u8, src, dst, count, value);
        let moved = e.shl_i(done, bytes.trailing_zeros());
        let left = e.sub(count, done);
        write_reg_bits(e, RCX, 64, left);
        let d = e.add(di, moved);
        write_reg_bits(e, RDI, 64, d);
        if op == Op::Movs {
            let s = e.add(si, moved);
            write_reg_bits(e, RSI, 64, s);
        }
        Ok(())
    })
}

/// Executes one element of a string instruction (see the module docs for REP).
pub fn string<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    let unimpl = Exception::Unimplemented(insn.mnemonic());
    let op = match insn.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => Op::Movs,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => Op::Stos,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => Op::Lods,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => Op::Cmps,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => Op::Scas,
        _ => return Err(unimpl),
    };
    let abits = address_bits(insn).ok_or(unimpl)?;
    let bytes = insn.memory_size().size() as u32;
    if !matches!(bytes, 1 | 2 | 4 | 8) {
        return Err(unimpl);
    }
    let bits = bytes * 8;
    // F2 on MOVS/STOS/LODS repeats like F3; on CMPS/SCAS F3 is REPE and F2 is REPNE.
    let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let compares = matches!(op, Op::Cmps | Op::Scas);

    // The body writes RFLAGS directly (no lazy descriptor can be created inside a conditional
    // region), so start from complete flags.
    if compares {
        flags::materialize(e);
    }
    if rep && abits == 64 && matches!(op, Op::Movs | Op::Stos) {
        bulk(e, insn, op, bytes)?;
    }
    let count = read_reg_bits(e, RCX, abits);
    let body = |e: &mut E| -> Result<(), Exception> {
        let r = e.rflags();
        let df = e.bit(r, rflags::DF.trailing_zeros());
        // +size, or -size when DF is set: size - 2 * size * DF.
        let twice = e.shl_i(df, (bytes * 2).trailing_zeros());
        let size = e.imm(u64::from(bytes));
        let delta = e.sub(size, twice);
        let si = read_reg_bits(e, RSI, abits);
        let di = read_reg_bits(e, RDI, abits);
        let src = match op {
            Op::Movs | Op::Lods | Op::Cmps => Some(linear(e, segment_of(insn), si)?),
            _ => None,
        };
        let dst = match op {
            Op::Movs | Op::Stos | Op::Cmps | Op::Scas => Some(linear(e, Seg::Es, di)?),
            Op::Lods => None,
        };
        // Every load before the store, every memory access before any register write.
        let sv = match src {
            Some(a) => Some(load(e, a, bytes as u8)?),
            None => None,
        };
        let dv = match (op, dst) {
            (Op::Cmps | Op::Scas, Some(a)) => Some(load(e, a, bytes as u8)?),
            _ => None,
        };
        match (op, dst, sv) {
            (Op::Movs, Some(a), Some(v)) => store(e, a, v, bytes as u8)?,
            (Op::Stos, Some(a), _) => {
                let v = read_reg_bits(e, RAX, bits);
                store(e, a, v, bytes as u8)?
            }
            _ => {}
        }
        if let (Op::Lods, Some(v)) = (op, sv) {
            write_reg_bits(e, RAX, bits, v);
        }
        if matches!(op, Op::Movs | Op::Lods | Op::Cmps) {
            let n = e.add(si, delta);
            write_reg_bits(e, RSI, abits, n);
        }
        if op != Op::Lods {
            let n = e.add(di, delta);
            write_reg_bits(e, RDI, abits, n);
        }
        if rep {
            let one = e.imm(1);
            let n = e.sub(count, one);
            write_reg_bits(e, RCX, abits, n);
        }
        if compares {
            // CMPS: [rSI] - [rDI]; SCAS: accumulator - [rDI]; flags as CMP.
            let a = match (op, sv) {
                (Op::Cmps, Some(v)) => v,
                _ => read_reg_bits(e, RAX, bits),
            };
            let b = dv.ok_or(Exception::Internal("string compare without operand"))?;
            let d = e.sub(a, b);
            let result = e.zext(d, bits);
            let aux = e.imm(0);
            let l = Lazy {
                op: CcOp::Sub,
                width: bits,
                src1: a,
                src2: b,
                result,
                aux,
            };
            let new = flags::lazy_arith_bits(e, &l);
            let r = e.rflags();
            let kept = e.and_i(r, !ARITH);
            let r = e.or(kept, new);
            e.set_rflags(r);
        }
        Ok(())
    };
    if rep {
        let run = e.ne_i(count, 0);
        e.if_then(run, body)?;
        // Repeat while elements remain (and the REPE/REPNE condition holds).
        let left = read_reg_bits(e, RCX, abits);
        let more = e.ne_i(left, 0);
        let mut again = e.and(run, more);
        if compares {
            let zf = flags::compute(e, Flag::Zf);
            let want = if insn.has_repne_prefix() {
                e.eq_i(zf, 0)
            } else {
                zf
            };
            again = e.and(again, want);
        }
        let here = e.imm(insn.ip());
        let next = e.imm(insn.next_ip());
        let rip = e.select(again, here, next);
        e.set_rip(rip);
        Ok(())
    } else {
        body(e)
    }
}
