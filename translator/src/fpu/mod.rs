//! The floating-point and SIMD unit of the BT backend: x87, MMX, SSE and SSE2, run by the
//! monitor for every instruction [`crate::system::is_floating_point`] claims.
//!
//! Arithmetic is exact because it is the host's own: the BT only runs on x86-64 hosts, so
//! every x87 computation runs the guest's very instruction encoding on the host x87 unit
//! loaded with the guest's registers, control word and tags ([`host::x87`]), and every SSE
//! computation runs the same host instruction under the guest's MXCSR ([`host::run`]). Data
//! movement, shuffles, control instructions and state images are done in software here.
//!
//! Modules: [`host`] (the safe wrapper around `asm!`), `x87` (x87 dispatch, environment and
//! state images), `sse` (MMX, SSE, SSE2), `fxsave` (FXSAVE/FXRSTOR, LDMXCSR/STMXCSR).
//!
//! # State conventions
//! - `cpu.fpu.st[i]` is the FXSAVE register area: **ST(i), in stack order** (relative to TOP),
//!   exactly what FXSAVE stores and KVM reports. The abridged tag word `ftw` is in physical
//!   order (bit r = physical register Rr valid). MMi is physical register Ri; an MMX
//!   instruction sets TOP = 0 (rotating the array so that `st[i]` = Ri = MMi) and all tags
//!   valid, and its writes set bits 64-79 to all ones. EMMS sets TOP = 0 the same way and
//!   empties every tag.
//! - FCS and FDS are not modelled (deprecated on current CPUs, stored as zero): `fip` and
//!   `fdp` hold the instruction and operand offsets; 32-bit images keep bits 32-47 of those
//!   fields as the selector slots so foreign images round-trip.
//!
//! # Exceptions
//! - CR0.EM: x87 → #NM, MMX/SSE → #UD. CR0.TS: #NM (WAIT only with CR0.MP). CR4.OSFXSR = 0:
//!   SSE → #UD; FXSAVE/FXRSTOR run without the XMM registers.
//! - A pending unmasked x87 exception (FSW.ES) raises #MF at the next waiting x87 or MMX
//!   instruction when CR0.NE = 1. With CR0.NE = 0 (external FERR#/IGNNE# reporting, not
//!   modelled) the exception stays pending and the instruction runs, as if IGNNE# were
//!   asserted.
//! - SSE numeric exceptions unmasked in MXCSR: #XM if CR4.OSXMMEXCPT, else #UD. As on the
//!   CPU, the MXCSR flags of the fault are set before it is delivered, and an instruction
//!   with an MMX register operand has made the x87 -> MMX transition (the only state an
//!   `Err` changes; the destination is untouched). Pre-computation exceptions (IE, DE, ZE)
//!   take precedence over post-computation ones; an exact tiny result with UM = 0 raises UE;
//!   a lane whose OE or UE is unmasked sets PE only if its result rounded with an unbounded
//!   exponent is inexact (measured on AMD; see `sse`).
//! - Where the manuals and the CPU differ, the host CPU wins: FCOMI* write RFLAGS from the
//!   host instruction even with an unmasked #IA (AMD sets ZF = PF = CF = 1 there).
//! - #GP(0): misaligned 16-byte operands of the aligned forms, FXSAVE/FXRSTOR areas,
//!   reserved MXCSR bits (LDMXCSR, FXRSTOR).
//! - Faults from guest memory propagate unchanged; every read precedes every write and the
//!   registers are committed last.
//!
//! # Not implemented (`Exception::Unimplemented`)
//! SSE3 and later (except FISTTP), #AC alignment checks on FP operands, segment limit
//! checks (as in the rest of the semantics), FCS/FDS.

pub mod fxsave;
pub mod host;
mod sse;
mod x87;

use crate::interp::Interp;
use crate::mem::GuestMem;
use crate::sem::operand::{effective_address, gpr_of, mem_linear, Gpr};
use crate::sem::{Exception, GP, UD};
use crate::state::{ctl, CpuState, FpuState};
use iced_x86::{CpuidFeature, Instruction, Mnemonic, OpKind};

/// #NM, device not available.
pub const NM: u8 = 7;
/// #MF, x87 floating-point error.
pub const MF: u8 = 16;
/// #XM, SIMD floating-point exception.
pub const XM: u8 = 19;

/// FSW exception flags IE..PE and SF.
const FSW_FLAGS: u16 = 0x7f;
/// FSW error summary.
const FSW_ES: u16 = 0x80;
/// FSW busy (mirrors ES).
const FSW_B: u16 = 0x8000;

/// Executes one x87/MMX/SSE/SSE2 instruction at `cpu.rip`; on success RIP is past it.
///
/// On `Err` the state is as before the instruction, except that an unmasked SIMD exception
/// sets its MXCSR flags and makes the x87 -> MMX transition of an instruction with an MMX
/// register (as the CPU does before delivering #XM).
pub fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::INVALID => return Err(Exception::cpu(UD)),
        M::Fxsave | M::Fxsave64 => fxsave::fxsave(cpu, mem, insn)?,
        M::Fxrstor | M::Fxrstor64 => fxsave::fxrstor(cpu, mem, insn)?,
        M::Ldmxcsr | M::Stmxcsr => fxsave::mxcsr(cpu, mem, insn)?,
        _ if is_x87(insn) => x87::execute(cpu, mem, insn)?,
        _ => sse::execute(cpu, mem, insn)?,
    }
    cpu.rip = insn.next_ip();
    Ok(())
}

/// Whether `insn` is an x87 instruction (or WAIT).
fn is_x87(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Wait | Mnemonic::Fisttp)
        || insn.cpuid_features().iter().any(|f| {
            matches!(
                f,
                CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387
            )
        })
}

/// A guest exception without error code.
fn fault(vector: u8) -> Exception {
    Exception::cpu(vector)
}

/// #GP(0).
fn gp0() -> Exception {
    Exception::Cpu {
        vector: GP,
        error: Some(0),
    }
}

/// Whether a pending unmasked x87 exception must be reported now (#MF; CR0.NE = 1).
fn mf_pending(cpu: &CpuState) -> bool {
    cpu.fpu.fsw & FSW_ES != 0 && cpu.cr0 & ctl::CR0_NE != 0
}

/// Recomputes ES and B from the flags and the masks.
fn sync_es(f: &mut FpuState) {
    if f.fsw & 0x3f & !f.fcw != 0 {
        f.fsw |= FSW_ES | FSW_B;
    } else {
        f.fsw &= !(FSW_ES | FSW_B);
    }
}

/// The memory operand of `insn`: (linear address, effective address), if it has one.
fn mem_operand(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Option<(u64, u64)>, Exception> {
    if !(0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory) {
        return Ok(None);
    }
    let mut it = Interp::new(cpu, mem);
    let ea = effective_address(&mut it, insn, None)?;
    let lin = mem_linear(&mut it, insn, None)?;
    Ok(Some((lin, ea)))
}

/// The memory operand's linear address, or an internal error when there is none.
fn need_mem(m: Option<(u64, u64)>) -> Result<u64, Exception> {
    m.map(|(l, _)| l)
        .ok_or(Exception::Internal("fpu: memory operand expected"))
}

/// Reads general register `g` zero-extended.
fn read_gpr(cpu: &CpuState, g: Gpr) -> u64 {
    let v = cpu.gpr.get(g.index).copied().unwrap_or(0);
    let v = if g.high { v >> 8 } else { v };
    if g.bits >= 64 {
        v
    } else {
        v & ((1u64 << g.bits) - 1)
    }
}

/// Writes general register `g` with the partial-register rules.
fn write_gpr(cpu: &mut CpuState, g: Gpr, v: u64) {
    let Some(r) = cpu.gpr.get_mut(g.index) else {
        return;
    };
    match g.bits {
        64 => *r = v,
        32 => *r = v & 0xffff_ffff,
        bits => {
            let shift = if g.high { 8 } else { 0 };
            let field = ((1u64 << bits) - 1) << shift;
            *r = (*r & !field) | ((v << shift) & field);
        }
    }
}

/// The general register operand `i` of `insn`, if it is one.
fn gpr_operand(insn: &Instruction, i: u32) -> Option<Gpr> {
    (insn.op_kind(i) == OpKind::Register)
        .then(|| gpr_of(insn.op_register(i)))
        .flatten()
}
