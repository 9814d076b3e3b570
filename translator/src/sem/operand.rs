//! Instruction operands: general registers of every width, immediates and memory addresses.
//!
//! Register reads return the value zero-extended from the operand width; writes follow the x86
//! rules (8- and 16-bit writes merge, 32-bit writes zero the upper half, 64-bit writes replace).
//! Memory operands produce a linear address: effective address (base + index * scale + disp)
//! wrapped to the address size, plus the segment base (only FS/GS in 64-bit mode), with the
//! canonical check in 64-bit mode. Segment limit checks come with the system-level increment.
//!
//! Every data access of the semantics goes through [`load`] and [`store`] here (never
//! [`Emitter::load`]/[`Emitter::store`] directly), so the alignment check (#AC) lives in one
//! place.

use super::emit::{BinOp, Emitter, Seg};
use super::{Exception, AC, GP, SS};
use crate::state::{reg, rflags};
use iced_x86::{Instruction, OpKind, Register};

/// A general-purpose register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpr {
    /// Index in encoding order (0 = RAX .. 15 = R15).
    pub index: usize,
    /// Width in bits: 8, 16, 32 or 64.
    pub bits: u32,
    /// AH/CH/DH/BH: bits 8..16 of register `index`.
    pub high: bool,
}

/// Maps an iced register to a general-purpose register operand (None for any other register).
pub fn gpr_of(r: Register) -> Option<Gpr> {
    let n = r as usize;
    let (base, bits) = if r.is_gpr8() {
        (Register::AL as usize, 8)
    } else if r.is_gpr16() {
        (Register::AX as usize, 16)
    } else if r.is_gpr32() {
        (Register::EAX as usize, 32)
    } else if r.is_gpr64() {
        (Register::RAX as usize, 64)
    } else {
        return None;
    };
    let i = n - base;
    Some(match (bits, i) {
        (8, 4..=7) => Gpr {
            index: i - 4,
            bits,
            high: true,
        },
        (8, 8..) => Gpr {
            index: i - 4,
            bits,
            high: false,
        },
        _ => Gpr {
            index: i,
            bits,
            high: false,
        },
    })
}

/// Reads a register operand, zero-extended.
pub fn read_gpr<E: Emitter>(e: &mut E, g: Gpr) -> E::V {
    let v = e.gpr(g.index);
    if g.high {
        let s = e.shr_i(v, 8);
        e.and_i(s, 0xff)
    } else {
        e.zext(v, g.bits)
    }
}

/// Writes a register operand with x86's partial-register rules; `v` may hold junk above `bits`.
pub fn write_gpr<E: Emitter>(e: &mut E, g: Gpr, v: E::V) {
    match (g.bits, g.high) {
        (64, _) => e.set_gpr(g.index, v),
        (32, _) => {
            let z = e.zext(v, 32);
            e.set_gpr(g.index, z);
        }
        (bits, high) => {
            let shift = if high { 8 } else { 0 };
            let field = ((1u64 << bits) - 1) << shift;
            let old = e.gpr(g.index);
            let keep = e.and_i(old, !field);
            let new = e.shl_i(v, shift);
            let new = e.and_i(new, field);
            let merged = e.or(keep, new);
            e.set_gpr(g.index, merged);
        }
    }
}

/// Reads the low `bits` of register `index`, zero-extended.
pub fn read_reg_bits<E: Emitter>(e: &mut E, index: usize, bits: u32) -> E::V {
    read_gpr(
        e,
        Gpr {
            index,
            bits,
            high: false,
        },
    )
}

/// Writes the low `bits` of register `index` with the partial-register rules.
pub fn write_reg_bits<E: Emitter>(e: &mut E, index: usize, bits: u32, v: E::V) {
    write_gpr(
        e,
        Gpr {
            index,
            bits,
            high: false,
        },
        v,
    )
}

/// A resolved operand: where to read it from and write it to.
#[derive(Debug, Clone, Copy)]
pub enum Loc<V> {
    /// A general-purpose register.
    Reg(Gpr),
    /// Memory at a linear address.
    Mem {
        /// Linear address (segment base added, canonical-checked).
        addr: V,
        /// Access width in bits.
        bits: u32,
    },
    /// An immediate, sign-extended to 64 bits as the encoding specifies.
    Imm(u64),
}

impl<V: Copy> Loc<V> {
    /// The operand width in bits (None for immediates, whose width is the instruction's).
    pub fn bits(&self) -> Option<u32> {
        match *self {
            Loc::Reg(g) => Some(g.bits),
            Loc::Mem { bits, .. } => Some(bits),
            Loc::Imm(_) => None,
        }
    }

    /// Reads a read-modify-write destination: a memory operand is translated for writing
    /// ([`load_rmw`]); anything else reads as [`Loc::read`].
    pub fn read_rmw<E: Emitter<V = V>>(&self, e: &mut E, bits: u32) -> Result<V, Exception> {
        match *self {
            Loc::Mem { addr, bits: b } => load_rmw(e, addr, (b / 8) as u8),
            _ => self.read(e, bits),
        }
    }

    /// Reads the operand zero-extended from its width (immediates masked to `bits`).
    pub fn read<E: Emitter<V = V>>(&self, e: &mut E, bits: u32) -> Result<V, Exception> {
        match *self {
            Loc::Reg(g) => Ok(read_gpr(e, g)),
            Loc::Mem { addr, bits: b } => load(e, addr, (b / 8) as u8),
            Loc::Imm(v) => {
                let v = if bits >= 64 {
                    v
                } else {
                    v & ((1u64 << bits) - 1)
                };
                Ok(e.imm(v))
            }
        }
    }

    /// Writes the operand (junk above its width is ignored).
    pub fn write<E: Emitter<V = V>>(&self, e: &mut E, v: V) -> Result<(), Exception> {
        match *self {
            Loc::Reg(g) => {
                write_gpr(e, g, v);
                Ok(())
            }
            Loc::Mem { addr, bits } => store(e, addr, v, (bits / 8) as u8),
            Loc::Imm(_) => Err(Exception::Internal("write to an immediate operand")),
        }
    }
}

/// Resolves operand `i` of `insn`. Registers other than GPRs and unusual operand kinds are
/// reported as unimplemented.
pub fn loc<E: Emitter>(e: &mut E, insn: &Instruction, i: u32) -> Result<Loc<E::V>, Exception> {
    match insn.op_kind(i) {
        OpKind::Register => gpr_of(insn.op_register(i))
            .map(Loc::Reg)
            .ok_or(Exception::Unimplemented(insn.mnemonic())),
        OpKind::Memory => {
            let bits = insn.memory_size().size() as u32 * 8;
            if !matches!(bits, 8 | 16 | 32 | 64) {
                return Err(Exception::Unimplemented(insn.mnemonic()));
            }
            let addr = mem_linear(e, insn, None)?;
            Ok(Loc::Mem { addr, bits })
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Ok(Loc::Imm(insn.immediate(i))),
        _ => Err(Exception::Unimplemented(insn.mnemonic())),
    }
}

/// The address size (16, 32, 64) of `insn`'s memory operand.
pub fn address_bits(insn: &Instruction, code_bits: u32) -> u32 {
    let sized = |r: Register| match r {
        Register::RIP => Some(64),
        Register::EIP => Some(32),
        Register::None => None,
        r => Some(r.size() as u32 * 8),
    };
    sized(insn.memory_base())
        .or_else(|| sized(insn.memory_index()))
        .unwrap_or(match insn.memory_displ_size() {
            2 => 16,
            4 => 32,
            8 => 64,
            _ => code_bits,
        })
}

/// The effective address (offset in the segment) of `insn`'s memory operand, wrapped to the
/// address size. `rsp_value` replaces the stack pointer when given (POP to memory addresses
/// with the incremented RSP).
pub fn effective_address<E: Emitter>(
    e: &mut E,
    insn: &Instruction,
    rsp_value: Option<E::V>,
) -> Result<E::V, Exception> {
    let abits = address_bits(insn, e.code_bits());
    let disp = insn.memory_displacement64();
    let base = insn.memory_base();
    if base == Register::RIP || base == Register::EIP {
        // iced already resolved the RIP-relative target from the instruction's own address.
        let target = if abits == 32 {
            disp & 0xffff_ffff
        } else {
            disp
        };
        return Ok(e.imm(target));
    }
    let mut ea = e.imm(disp);
    let reg_value = |e: &mut E, r: Register| -> Result<E::V, Exception> {
        let g = gpr_of(r).ok_or(Exception::Unimplemented(insn.mnemonic()))?;
        match rsp_value {
            Some(v) if g.index == reg::RSP => Ok(e.zext(v, g.bits)),
            _ => Ok(read_gpr(e, g)),
        }
    };
    if base != Register::None {
        let b = reg_value(e, base)?;
        ea = e.add(ea, b);
    }
    let index = insn.memory_index();
    if index != Register::None {
        let x = reg_value(e, index)?;
        let x = e.shl_i(x, insn.memory_index_scale().trailing_zeros());
        ea = e.add(ea, x);
    }
    Ok(e.zext(ea, abits))
}

/// The segment register `insn`'s memory operand uses.
pub fn segment_of(insn: &Instruction) -> Seg {
    match insn.memory_segment() {
        Register::ES => Seg::Es,
        Register::CS => Seg::Cs,
        Register::SS => Seg::Ss,
        Register::FS => Seg::Fs,
        Register::GS => Seg::Gs,
        _ => Seg::Ds,
    }
}

/// Adds the base of `seg` to effective address `ea` and applies the mode's checks: in 64-bit
/// mode only FS/GS have a base and the result must be canonical (#GP(0), #SS(0) for SS); in
/// other modes the linear address wraps at 4 GiB.
pub fn linear<E: Emitter>(e: &mut E, seg: Seg, ea: E::V) -> Result<E::V, Exception> {
    if e.code_bits() == 64 {
        let addr = if matches!(seg, Seg::Fs | Seg::Gs) {
            let b = e.seg_base(seg);
            e.add(ea, b)
        } else {
            ea
        };
        let vector = if seg == Seg::Ss { SS } else { GP };
        check_canonical(e, addr, vector)?;
        Ok(addr)
    } else {
        let b = e.seg_base(seg);
        let a = e.add(ea, b);
        Ok(e.zext(a, 32))
    }
}

/// Raises #AC(0) when alignment checking is on (CR0.AM, CPL 3: [`Emitter::alignment_checks`];
/// RFLAGS.AC at run time) and a `size`-byte data access at `addr` is not `size`-aligned.
///
/// SDM Vol. 3 §6.15 (table 6-7): words, doublewords and quadwords must be 2-, 4- and 8-aligned,
/// bit strings to their operand size; stack pushes and pops, string elements and explicit
/// operands are all data accesses. Byte accesses never fault. Checked after the canonical check
/// (#GP/#SS come first) and before the access itself.
pub fn check_alignment<E: Emitter>(e: &mut E, addr: E::V, size: u8) -> Result<(), Exception> {
    if size <= 1 || !e.alignment_checks() {
        return Ok(());
    }
    let r = e.rflags();
    let ac = e.bit(r, rflags::AC.trailing_zeros());
    let low = e.and_i(addr, u64::from(size) - 1);
    let mis = e.ne_i(low, 0);
    let bad = e.bin(BinOp::And, ac, mis);
    e.raise(
        bad,
        Exception::Cpu {
            vector: AC,
            error: Some(0),
        },
    )
}

/// Loads a `size`-byte data operand at linear `addr` (alignment-checked).
pub fn load<E: Emitter>(e: &mut E, addr: E::V, size: u8) -> Result<E::V, Exception> {
    check_alignment(e, addr, size)?;
    e.load(addr, size)
}

/// Loads the `size`-byte destination of a read-modify-write instruction at linear `addr`
/// (alignment-checked, translated for writing: a fault has W/R = 1 in its #PF error code).
pub fn load_rmw<E: Emitter>(e: &mut E, addr: E::V, size: u8) -> Result<E::V, Exception> {
    check_alignment(e, addr, size)?;
    e.load_rmw(addr, size)
}

/// Stores the low `size` bytes of `v` at linear `addr` (alignment-checked).
pub fn store<E: Emitter>(e: &mut E, addr: E::V, v: E::V, size: u8) -> Result<(), Exception> {
    check_alignment(e, addr, size)?;
    e.store(addr, v, size)
}

/// Raises `vector` with error code 0 unless `addr` is canonical (48-bit virtual addresses).
pub fn check_canonical<E: Emitter>(e: &mut E, addr: E::V, vector: u8) -> Result<(), Exception> {
    let s = e.sext(addr, 48);
    let bad = e.bin(BinOp::Ne, s, addr);
    e.raise(
        bad,
        Exception::Cpu {
            vector,
            error: Some(0),
        },
    )
}

/// The linear address of `insn`'s memory operand (see [`effective_address`] for `rsp_value`).
pub fn mem_linear<E: Emitter>(
    e: &mut E,
    insn: &Instruction,
    rsp_value: Option<E::V>,
) -> Result<E::V, Exception> {
    let ea = effective_address(e, insn, rsp_value)?;
    linear(e, segment_of(insn), ea)
}
