//! Segmentation: descriptor tables, segment loads, far transfers through call gates, IRET,
//! LLDT/LTR/SLDT/STR, LAR/LSL/VERR/VERW and ARPL, as the SDM's pseudocode gives them.
//!
//! Every instruction computes and checks everything first and then commits in the order:
//! stack pushes, descriptor accessed/busy bits, registers. A fault therefore leaves the
//! `CpuState` exactly as it was (memory may hold part of a frame when a later push faults, as
//! on the CPU).
//!
//! Memory contexts: descriptor tables and the TSS are read with [`GuestMem::read_system`] and
//! their accessed/busy bits written with [`GuestMem::write_system`]. Pops (RETF, IRET, POP) and
//! the parameters a call gate copies are data reads at the current CPL ([`GuestMem::read`]).
//! Pushes to the caller's own stack use [`GuestMem::write`]; pushes to a more privileged
//! stack (a privilege-raising CALL through a call gate) use [`GuestMem::write_system`],
//! because the memory's CPL context is still the caller's.
//!
//! Choices and limits (documented where the SDM leaves room or the BT does not go):
//! - Task switching is not modelled (Linux never uses it): a far JMP/CALL to a task gate or
//!   TSS descriptor raises #GP(selector) with a log warning; IRET with NT=1 outside long mode
//!   returns [`Exception::Unimplemented`]; so does IRET to virtual-8086 mode (EFLAGS.VM=1 in
//!   the popped image at CPL 0).
//! - Segment limits are checked for far-transfer targets (#GP(0)) and descriptor-table reads,
//!   not for the stack accesses of pushes and pops (the tiers do flat accesses too).
//! - Loading a null selector into DS/ES/FS/GS (and a null SS in 64-bit mode) marks the
//!   register unusable with base 0 (Intel; AMD keeps the base).
//! - A conforming code segment is cached with DPL = CPL, so [`CpuState::cpl`] (CS.DPL) stays
//!   the privilege level, which a conforming transfer does not change.
//! - PUSH of a segment register with a 32/64-bit operand size writes the zero-extended
//!   selector (AMD; one of the two behaviours the SDM allows).
//! - LAR returns the access rights masked by 0x00F0FF00 (the SDM leaves bits 16-19
//!   undefined). SLDT/STR honour CR4.UMIP (#GP(0) at CPL > 0).
//! - The real-mode segment loads keep the cached limit and attributes ("unreal mode"), as
//!   the CPU does; virtual-8086 loads set limit 0xFFFF and DPL 3.

#[path = "descriptor.rs"]
pub mod descriptor;

use super::Effect;
use crate::interp::Interp;
use crate::mem::GuestMem;
use crate::sem::operand::{self, Gpr, Loc};
use crate::sem::{stack, Emitter, Exception, SS, UD};
use crate::state::{ctl, reg, rflags, CpuMode, CpuState, Segment};
use descriptor::{
    canonical, fault, fetch, gp0, gp_sel, inner_stack_segment, is_null, null_ss, sel_error,
    tss_slot64, tss_stack_legacy, write_marks, Fetched, Stack, NP,
};
use iced_x86::{Code, Instruction, MemorySize, Mnemonic, OpKind, Register};

/// CR4.UMIP: SLDT/STR/SGDT/SIDT/SMSW are CPL-0 only.
const CR4_UMIP: u64 = 1 << 11;

/// A segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegReg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
}

impl SegReg {
    /// The segment register an iced register names.
    pub fn of(r: Register) -> Option<SegReg> {
        Some(match r {
            Register::ES => SegReg::Es,
            Register::CS => SegReg::Cs,
            Register::SS => SegReg::Ss,
            Register::DS => SegReg::Ds,
            Register::FS => SegReg::Fs,
            Register::GS => SegReg::Gs,
            _ => return None,
        })
    }

    /// The register in `cpu`.
    pub fn get(self, cpu: &CpuState) -> &Segment {
        match self {
            SegReg::Es => &cpu.es,
            SegReg::Cs => &cpu.cs,
            SegReg::Ss => &cpu.ss,
            SegReg::Ds => &cpu.ds,
            SegReg::Fs => &cpu.fs,
            SegReg::Gs => &cpu.gs,
        }
    }

    /// The register in `cpu`, mutably.
    pub fn get_mut(self, cpu: &mut CpuState) -> &mut Segment {
        match self {
            SegReg::Es => &mut cpu.es,
            SegReg::Cs => &mut cpu.cs,
            SegReg::Ss => &mut cpu.ss,
            SegReg::Ds => &mut cpu.ds,
            SegReg::Fs => &mut cpu.fs,
            SegReg::Gs => &mut cpu.gs,
        }
    }
}

/// A checked segment load not yet committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// The register loaded.
    pub reg: SegReg,
    /// Its new contents.
    pub seg: Segment,
    /// The accessed-bit write the load makes: (address of the access byte, new byte).
    pub mark: Option<(u64, u8)>,
}

/// Whether [`execute`] is the executor for `insn`.
pub fn handles(insn: &Instruction) -> bool {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Mov | M::Push | M::Pop => (0..insn.op_count()).any(|i| {
            insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_segment_register()
        }),
        M::Jmp | M::Call => {
            insn.is_jmp_far()
                || insn.is_jmp_far_indirect()
                || insn.is_call_far()
                || insn.is_call_far_indirect()
        }
        M::Retf
        | M::Iret
        | M::Iretd
        | M::Iretq
        | M::Lds
        | M::Les
        | M::Lfs
        | M::Lgs
        | M::Lss
        | M::Lldt
        | M::Ltr
        | M::Sldt
        | M::Str
        | M::Lar
        | M::Lsl
        | M::Verr
        | M::Verw
        | M::Arpl => true,
        _ => false,
    }
}

/// Executes a segmentation instruction at `cpu.rip` (see the module docs for the rules).
pub fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    match m {
        M::Mov if insn.op0_kind() == OpKind::Register && sreg(insn.op0_register()).is_some() => {
            mov_to_sreg(cpu, mem, insn)
        }
        M::Mov => mov_from_sreg(cpu, mem, insn),
        M::Push => push_sreg(cpu, mem, insn),
        M::Pop => pop_sreg(cpu, mem, insn),
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => load_far_pointer(cpu, mem, insn),
        M::Jmp | M::Call => far_jmp_call(cpu, mem, insn),
        M::Retf => retf(cpu, mem, insn),
        M::Iret | M::Iretd | M::Iretq => iret(cpu, mem, insn),
        M::Lldt | M::Ltr => load_system_register(cpu, mem, insn),
        M::Sldt | M::Str => store_system_register(cpu, mem, insn),
        M::Lar | M::Lsl | M::Verr | M::Verw => access_check(cpu, mem, insn),
        M::Arpl => arpl(cpu, mem, insn),
        _ => Err(Exception::Unimplemented(m)),
    }
}

fn sreg(r: Register) -> Option<SegReg> {
    SegReg::of(r)
}

fn ud() -> Exception {
    Exception::cpu(UD)
}

fn protected(cpu: &CpuState) -> bool {
    !matches!(cpu.mode(), CpuMode::Real | CpuMode::Virtual8086)
}

fn long_mode(cpu: &CpuState) -> bool {
    cpu.efer & ctl::EFER_LMA != 0
}

fn op_mask(bytes: usize) -> u64 {
    match bytes {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The real-mode contents of `reg` after loading `sel`: base = sel << 4, the cached limit and
/// attributes kept (a register that was null-loaded in protected mode becomes a 64 KiB data
/// segment).
pub fn real_segment(cpu: &CpuState, reg: SegReg, sel: u16) -> Segment {
    let old = *reg.get(cpu);
    let mut s = if old.unusable || !old.present {
        let mut s = Segment::real_mode(sel);
        if reg == SegReg::Cs {
            s.type_ = 0xb;
        }
        s
    } else {
        old
    };
    s.selector = sel;
    s.base = u64::from(sel) << 4;
    s
}

/// The virtual-8086-mode contents of a segment register holding `sel`.
fn v86_segment(sel: u16) -> Segment {
    Segment {
        dpl: 3,
        ..Segment::real_mode(sel)
    }
}

/// The segment a selector load outside protected mode gives.
fn unprotected_segment(cpu: &CpuState, reg: SegReg, sel: u16) -> Segment {
    if cpu.mode() == CpuMode::Virtual8086 {
        v86_segment(sel)
    } else {
        real_segment(cpu, reg, sel)
    }
}

/// Checks a load of `sel` into data register `reg` or SS (SDM MOV, POP, LDS/LES/LFS/LGS/LSS).
pub fn check_load(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    reg: SegReg,
    sel: u16,
) -> Result<Load, Exception> {
    if !protected(cpu) {
        return Ok(Load {
            reg,
            seg: unprotected_segment(cpu, reg, sel),
            mark: None,
        });
    }
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    if reg == SegReg::Ss {
        if is_null(sel) {
            if cpu.mode() == CpuMode::Long64 && cpl < 3 && rpl == cpl {
                return Ok(Load {
                    reg,
                    seg: Segment {
                        selector: sel,
                        ..null_ss(cpl)
                    },
                    mark: None,
                });
            }
            return Err(gp0());
        }
        let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
        if rpl != cpl || !f.desc.writable() || f.desc.dpl() != cpl {
            return Err(gp_sel(sel));
        }
        if !f.desc.present() {
            return Err(fault(SS, sel_error(sel)));
        }
        return Ok(Load {
            reg,
            seg: f.desc.segment(sel),
            mark: f.accessed_mark(),
        });
    }
    if is_null(sel) {
        return Ok(Load {
            reg,
            seg: Segment {
                selector: sel,
                unusable: true,
                ..Segment::default()
            },
            mark: None,
        });
    }
    let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
    let d = f.desc;
    if !d.readable() {
        return Err(gp_sel(sel));
    }
    if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
        return Err(gp_sel(sel));
    }
    if !d.present() {
        return Err(fault(NP, sel_error(sel)));
    }
    Ok(Load {
        reg,
        seg: d.segment(sel),
        mark: f.accessed_mark(),
    })
}

/// Commits checked loads: accessed bits first (they can fault), then the registers.
fn commit_loads(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    loads: &[Load],
) -> Result<(), Exception> {
    let marks: Vec<(u64, u8)> = loads.iter().filter_map(|l| l.mark).collect();
    write_marks(mem, &marks)?;
    for l in loads {
        *l.reg.get_mut(cpu) = l.seg;
    }
    Ok(())
}

fn shadow_if_ss(reg: SegReg) -> Effect {
    if reg == SegReg::Ss {
        Effect::Shadow
    } else {
        Effect::Next
    }
}

/// Reads operand `i` as a 16-bit selector (registers: their low 16 bits).
fn read_sel(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
    i: u32,
) -> Result<u16, Exception> {
    let mut it = Interp::new(cpu, mem);
    let l = operand::loc(&mut it, insn, i)?;
    Ok(l.read(&mut it, 16)? as u16)
}

/// Writes `v` to operand `i` (registers by their width's rules, memory as 16 bits when
/// `force16`).
fn write_op(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
    i: u32,
    v: u64,
    force16: bool,
) -> Result<(), Exception> {
    let mut it = Interp::new(cpu, mem);
    let l = match operand::loc(&mut it, insn, i)? {
        Loc::Reg(g) if force16 => Loc::Reg(Gpr { bits: 16, ..g }),
        l => l,
    };
    l.write(&mut it, v)
}

fn mov_to_sreg(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let reg = sreg(insn.op0_register()).ok_or(ud())?;
    if reg == SegReg::Cs {
        return Err(ud());
    }
    let sel = read_sel(cpu, mem, insn, 1)?;
    let load = check_load(cpu, mem, reg, sel)?;
    commit_loads(cpu, mem, &[load])?;
    cpu.rip = insn.next_ip();
    Ok(shadow_if_ss(reg))
}

/// MOV r/m, Sreg: a selector read, which the tiers run themselves (`sem::data::mov`); the
/// monitor runs the same semantics when handed one.
fn mov_from_sreg(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let mut it = Interp::new(cpu, mem);
    let r = it.execute(insn);
    it.sync_flags();
    r.map(|()| Effect::Next)
}

fn stack_bytes(insn: &Instruction) -> Result<usize, Exception> {
    match insn.stack_pointer_increment().unsigned_abs() {
        s @ (2 | 4 | 8) => Ok(s as usize),
        _ => Err(Exception::Unimplemented(insn.mnemonic())),
    }
}

fn push_sreg(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let reg = sreg(insn.op0_register()).ok_or(ud())?;
    let bytes = stack_bytes(insn)?;
    let sel = u64::from(reg.get(cpu).selector);
    {
        let mut it = Interp::new(cpu, mem);
        let v = it.imm(sel);
        stack::push_value(&mut it, v, bytes as u32)?;
    }
    cpu.rip = insn.next_ip();
    Ok(Effect::Next)
}

fn pop_sreg(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let reg = sreg(insn.op0_register()).ok_or(ud())?;
    if reg == SegReg::Cs {
        return Err(ud());
    }
    let bytes = stack_bytes(insn)?;
    let (v, _) = {
        let mut it = Interp::new(cpu, mem);
        stack::peek(&mut it, bytes as u32)?
    };
    // The pointer moves at the old stack's width (POP SS may change SS.B).
    let mut st = Stack::current(cpu);
    st.skip(bytes as u64);
    let load = check_load(cpu, mem, reg, v as u16)?;
    commit_loads(cpu, mem, &[load])?;
    cpu.gpr[reg::RSP] = st.rsp;
    cpu.rip = insn.next_ip();
    Ok(shadow_if_ss(reg))
}

/// Reads a far pointer (offset of `off_bytes`, then the selector) at `insn`'s memory operand.
fn read_far_pointer(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
    off_bytes: usize,
) -> Result<(u16, u64), Exception> {
    let long64 = cpu.mode() == CpuMode::Long64;
    let mut it = Interp::new(cpu, mem);
    let addr = operand::mem_linear(&mut it, insn, None)?;
    let off = operand::load(&mut it, addr, off_bytes as u8)?;
    let mut sel_addr = addr.wrapping_add(off_bytes as u64);
    if !long64 {
        sel_addr &= 0xffff_ffff;
    }
    let sel = operand::load(&mut it, sel_addr, 2)? as u16;
    Ok((sel, off))
}

fn load_far_pointer(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let reg = match insn.mnemonic() {
        Mnemonic::Lds => SegReg::Ds,
        Mnemonic::Les => SegReg::Es,
        Mnemonic::Lfs => SegReg::Fs,
        Mnemonic::Lgs => SegReg::Gs,
        _ => SegReg::Ss,
    };
    if insn.op1_kind() != OpKind::Memory {
        return Err(ud());
    }
    let dst = operand::gpr_of(insn.op0_register()).ok_or(ud())?;
    let (sel, off) = read_far_pointer(cpu, mem, insn, (dst.bits / 8) as usize)?;
    let load = check_load(cpu, mem, reg, sel)?;
    commit_loads(cpu, mem, &[load])?;
    operand::write_gpr(&mut Interp::new(cpu, mem), dst, off);
    cpu.rip = insn.next_ip();
    Ok(shadow_if_ss(reg))
}

/// The target's CS contents for selector `sel` at privilege `cpl` (RPL = CPL; a conforming
/// segment is cached with DPL = CPL, see the module docs).
pub(crate) fn code_segment(f: &Fetched, sel: u16, cpl: u8) -> Segment {
    let mut s = f.desc.segment((sel & !3) | u16::from(cpl));
    if f.desc.conforming() {
        s.dpl = cpl;
    }
    s
}

/// Checks that `off` lies in the new code segment: canonical for 64-bit code, else within
/// the limit (#GP(0)).
fn check_target(cpu: &CpuState, cs: &Segment, off: u64) -> Result<(), Exception> {
    let ok = if long_mode(cpu) && cs.l {
        canonical(off)
    } else {
        off <= u64::from(cs.limit)
    };
    if ok {
        Ok(())
    } else {
        Err(gp0())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Far {
    Jmp,
    Call,
}

fn far_jmp_call(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let kind = if insn.mnemonic() == Mnemonic::Call {
        Far::Call
    } else {
        Far::Jmp
    };
    let (sel, off, bytes) = match insn.op0_kind() {
        OpKind::FarBranch16 => (
            insn.far_branch_selector(),
            u64::from(insn.far_branch16()),
            2,
        ),
        OpKind::FarBranch32 => (
            insn.far_branch_selector(),
            u64::from(insn.far_branch32()),
            4,
        ),
        OpKind::Memory => {
            let bytes = match insn.memory_size() {
                MemorySize::SegPtr16 => 2,
                MemorySize::SegPtr32 => 4,
                MemorySize::SegPtr64 => 8,
                _ => return Err(Exception::Unimplemented(insn.mnemonic())),
            };
            let (sel, off) = read_far_pointer(cpu, mem, insn, bytes)?;
            (sel, off, bytes)
        }
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    };
    let ret = insn.next_ip();
    if protected(cpu) {
        far_protected(cpu, mem, kind, sel, off & op_mask(bytes), bytes, ret)?;
    } else {
        let ip = off & op_mask(bytes);
        let cs = unprotected_segment(cpu, SegReg::Cs, sel);
        if ip > u64::from(cs.limit) {
            return Err(gp0());
        }
        let mut st = Stack::current(cpu);
        if kind == Far::Call {
            st.push(u64::from(cpu.cs.selector), bytes)?;
            st.push(ret, bytes)?;
            st.commit(mem)?;
        }
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = ip;
    }
    Ok(Effect::Next)
}

/// A far JMP/CALL in protected or long mode (SDM JMP and CALL, "protected mode" branches).
fn far_protected(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    kind: Far,
    sel: u16,
    off: u64,
    bytes: usize,
    ret: u64,
) -> Result<(), Exception> {
    if is_null(sel) {
        return Err(gp0());
    }
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let lma = long_mode(cpu);
    let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
    let d = f.desc;
    if d.s() {
        if !d.is_code() {
            return Err(gp_sel(sel));
        }
        if d.conforming() {
            if d.dpl() > cpl {
                return Err(gp_sel(sel));
            }
        } else if rpl > cpl || d.dpl() != cpl {
            return Err(gp_sel(sel));
        }
        if !d.present() {
            return Err(fault(NP, sel_error(sel)));
        }
        if lma && d.l() && d.db() {
            return Err(gp_sel(sel));
        }
        let cs = code_segment(&f, sel, cpl);
        check_target(cpu, &cs, off)?;
        let mut st = Stack::current(cpu);
        if kind == Far::Call {
            st.push(u64::from(cpu.cs.selector), bytes)?;
            st.push(ret, bytes)?;
            st.commit(mem)?;
        }
        write_marks(mem, f.accessed_mark().as_slice())?;
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = off;
        return Ok(());
    }
    // System descriptors: only call gates are followed.
    let gate_ok = match d.type_() {
        0x4 => !lma,
        0xc => true,
        0x1 | 0x3 | 0x5 | 0x9 | 0xb => {
            log::warn!(
                "far {kind:?} to task gate/TSS {sel:#x}: task switching is not supported, #GP"
            );
            false
        }
        _ => false,
    };
    if !gate_ok {
        return Err(gp_sel(sel));
    }
    let gate = if lma {
        let g = fetch(cpu, mem, sel, true)?.ok_or(gp_sel(sel))?;
        if g.desc.hi_type() != 0 {
            return Err(gp_sel(sel));
        }
        g.desc
    } else {
        d
    };
    if gate.dpl() < cpl || rpl > gate.dpl() {
        return Err(gp_sel(sel));
    }
    if !gate.present() {
        return Err(fault(NP, sel_error(sel)));
    }
    let gate_bytes: usize = if lma {
        8
    } else if gate.type_() == 0xc {
        4
    } else {
        2
    };
    let code_sel = gate.gate_selector();
    if is_null(code_sel) {
        return Err(gp0());
    }
    let cf = fetch(cpu, mem, code_sel, false)?.ok_or(gp_sel(code_sel))?;
    let cd = cf.desc;
    if !cd.is_code() || cd.dpl() > cpl {
        return Err(gp_sel(code_sel));
    }
    if kind == Far::Jmp && !cd.conforming() && cd.dpl() != cpl {
        return Err(gp_sel(code_sel));
    }
    if !cd.present() {
        return Err(fault(NP, sel_error(code_sel)));
    }
    if lma && !cd.is_code64() {
        return Err(gp_sel(code_sel));
    }
    let target = gate.gate_offset() & op_mask(gate_bytes);
    let inner = kind == Far::Call && !cd.conforming() && cd.dpl() < cpl;
    let new_cpl = if inner { cd.dpl() } else { cpl };
    let cs = code_segment(&cf, code_sel, new_cpl);
    check_target(cpu, &cs, target)?;
    let mut marks = Vec::new();
    marks.extend(cf.accessed_mark());
    let old_cs = u64::from(cpu.cs.selector);
    if !inner {
        let mut st = Stack::current(cpu);
        if kind == Far::Call {
            st.push(old_cs, gate_bytes)?;
            st.push(ret, gate_bytes)?;
            st.commit(mem)?;
        }
        write_marks(mem, &marks)?;
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = target;
        return Ok(());
    }
    // Privilege-raising CALL: switch to the inner stack from the TSS.
    let old_ss = u64::from(cpu.ss.selector);
    let old_rsp = cpu.gpr[reg::RSP];
    let (ss, mut st) = if lma {
        let rsp = tss_slot64(cpu, mem, 4 + 8 * u64::from(new_cpl))?;
        if !canonical(rsp) {
            return Err(fault(SS, 0));
        }
        (null_ss(new_cpl), Stack::new(0, rsp, 64, true))
    } else {
        let (ss_sel, esp) = tss_stack_legacy(cpu, mem, new_cpl)?;
        let sf = inner_stack_segment(cpu, mem, ss_sel, new_cpl)?;
        marks.extend(sf.accessed_mark());
        let ss = sf.desc.segment(ss_sel);
        let width = if ss.db { 32 } else { 16 };
        (ss, Stack::new(ss.base, esp, width, true))
    };
    st.push(old_ss, gate_bytes)?;
    st.push(old_rsp, gate_bytes)?;
    if !lma {
        // Parameters in the caller's order: the one at the highest address is pushed first.
        let caller = Stack::current(cpu);
        let n = u64::from(gate.gate_params());
        for i in (0..n).rev() {
            let sp = caller.sp().wrapping_add(i * gate_bytes as u64);
            let v = caller.peek(mem, sp, gate_bytes)?;
            st.push(v, gate_bytes)?;
        }
    }
    st.push(old_cs, gate_bytes)?;
    st.push(ret, gate_bytes)?;
    st.commit(mem)?;
    write_marks(mem, &marks)?;
    cpu.cs = cs;
    cpu.ss = ss;
    cpu.gpr[reg::RSP] = st.rsp;
    cpu.rip = target;
    Ok(())
}

/// Checks the CS selector a RETF or IRET returns to (SDM RET/IRET): #GP(0) null, #GP(sel)
/// out of bounds, RPL < CPL, not code, conforming DPL > RPL, non-conforming DPL != RPL, or
/// L=D=1 in long mode; #NP(sel) not present.
fn check_return_cs(cpu: &CpuState, mem: &mut dyn GuestMem, sel: u16) -> Result<Fetched, Exception> {
    if is_null(sel) {
        return Err(gp0());
    }
    let rpl = (sel & 3) as u8;
    let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
    let d = f.desc;
    if rpl < cpu.cpl() || !d.is_code() {
        return Err(gp_sel(sel));
    }
    if (d.conforming() && d.dpl() > rpl) || (!d.conforming() && d.dpl() != rpl) {
        return Err(gp_sel(sel));
    }
    if long_mode(cpu) && d.l() && d.db() {
        return Err(gp_sel(sel));
    }
    if !d.present() {
        return Err(fault(NP, sel_error(sel)));
    }
    Ok(f)
}

/// Checks the SS a return to privilege `rpl` loads: null only when returning to 64-bit code
/// at RPL < 3 (else #GP(0)); #GP(sel) for RPL/DPL != `rpl` or not writable data; #SS(sel)
/// not present.
fn check_return_ss(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    sel: u16,
    rpl: u8,
    to64: bool,
) -> Result<(Segment, Option<(u64, u8)>), Exception> {
    if is_null(sel) {
        if to64 && rpl != 3 {
            return Ok((
                Segment {
                    selector: sel,
                    ..null_ss(rpl)
                },
                None,
            ));
        }
        return Err(gp0());
    }
    let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
    if (sel & 3) as u8 != rpl || !f.desc.writable() || f.desc.dpl() != rpl {
        return Err(gp_sel(sel));
    }
    if !f.desc.present() {
        return Err(fault(SS, sel_error(sel)));
    }
    Ok((f.desc.segment(sel), f.accessed_mark()))
}

/// After a return to an outer level: ES, DS, FS, GS holding data or non-conforming code with
/// DPL < the new CPL become null (SDM RET/IRET). Null or unusable registers are left alone
/// (FS/GS bases set through the MSRs survive).
pub fn nullify_outer(cpu: &mut CpuState, cpl: u8) {
    for s in [&mut cpu.es, &mut cpu.ds, &mut cpu.fs, &mut cpu.gs] {
        if s.unusable || is_null(s.selector) {
            continue;
        }
        let data_or_nc = s.s && (s.type_ & 8 == 0 || s.type_ & 4 == 0);
        if data_or_nc && s.dpl < cpl {
            s.selector = 0;
            s.unusable = true;
            s.present = false;
        }
    }
}

fn retf(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let bytes: usize = match insn.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfd | Code::Retfd_imm16 => 4,
        _ => 8,
    };
    let imm = if insn.op_count() > 0 {
        u64::from(insn.immediate16())
    } else {
        0
    };
    let mut st = Stack::current(cpu);
    let ip = st.pop(mem, bytes)? & op_mask(bytes);
    let sel = st.pop(mem, bytes)? as u16;
    if !protected(cpu) {
        let cs = unprotected_segment(cpu, SegReg::Cs, sel);
        if ip > u64::from(cs.limit) {
            return Err(gp0());
        }
        st.skip(imm);
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = ip;
        return Ok(Effect::Next);
    }
    let cpl = cpu.cpl();
    let f = check_return_cs(cpu, mem, sel)?;
    let rpl = (sel & 3) as u8;
    let cs = code_segment(&f, sel, rpl);
    check_target(cpu, &cs, ip)?;
    st.skip(imm);
    if rpl == cpl {
        write_marks(mem, f.accessed_mark().as_slice())?;
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = ip;
        return Ok(Effect::Next);
    }
    // Return to an outer level: SS:ESP follow the parameters.
    let new_sp = st.pop(mem, bytes)?;
    let ss_sel = st.pop(mem, bytes)? as u16;
    let to64 = long_mode(cpu) && cs.l;
    let (ss, ss_mark) = check_return_ss(cpu, mem, ss_sel, rpl, to64)?;
    let rsp = outer_rsp(
        cpu.gpr[reg::RSP],
        new_sp.wrapping_add(imm),
        bytes,
        &ss,
        to64,
    );
    let mut marks: Vec<(u64, u8)> = f.accessed_mark().into_iter().collect();
    marks.extend(ss_mark);
    write_marks(mem, &marks)?;
    cpu.cs = cs;
    cpu.ss = ss;
    cpu.gpr[reg::RSP] = rsp;
    cpu.rip = ip;
    nullify_outer(cpu, rpl);
    Ok(Effect::Next)
}

/// The stack pointer after a return to an outer level: the popped value (plus RET's
/// immediate) at the new stack's width; a 16-bit operand size replaces only SP.
fn outer_rsp(old: u64, popped: u64, bytes: usize, ss: &Segment, to64: bool) -> u64 {
    if to64 {
        popped
    } else if bytes == 2 || !ss.db {
        (old & !0xffff) | (popped & 0xffff)
    } else {
        popped & 0xffff_ffff
    }
}

/// EFLAGS after IRET pops `popped` at privilege `cpl` (SDM IRET): IOPL, VIF and VIP only at
/// CPL 0, IF only when CPL <= IOPL, VM never here; a 16-bit IRET changes only FLAGS.
pub fn iret_flags(old: u64, popped: u64, bytes: usize, cpl: u8) -> u64 {
    use rflags::*;
    let mut w = CF | PF | AF | ZF | SF | TF | DF | OF | NT | RF | AC | ID;
    if cpl == 0 {
        w |= IOPL | VIF | VIP;
    }
    if u64::from(cpl) <= (old & IOPL) >> 12 {
        w |= IF;
    }
    if bytes == 2 {
        w &= 0xffff;
    }
    (old & !w) | (popped & w) | FIXED1
}

fn iret(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let bytes: usize = match insn.code() {
        Code::Iretw => 2,
        Code::Iretd => 4,
        _ => 8,
    };
    match cpu.mode() {
        CpuMode::Real => iret_unprotected(cpu, mem, bytes, false)?,
        CpuMode::Virtual8086 => {
            if cpu.rflags & rflags::IOPL != rflags::IOPL {
                return Err(gp0());
            }
            iret_unprotected(cpu, mem, bytes, true)?
        }
        _ => iret_protected(cpu, mem, insn, bytes)?,
    }
    cpu.events.nmi_masked = false;
    Ok(Effect::Next)
}

/// IRET in real mode, or in virtual-8086 mode with IOPL 3 (IOPL, VM, VIF, VIP kept there).
fn iret_unprotected(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    bytes: usize,
    v86: bool,
) -> Result<(), Exception> {
    let mut st = Stack::current(cpu);
    let ip = st.pop(mem, bytes)?;
    let sel = st.pop(mem, bytes)? as u16;
    let fl = st.pop(mem, bytes)?;
    let cs = unprotected_segment(cpu, SegReg::Cs, sel);
    if ip > u64::from(cs.limit) {
        return Err(gp0());
    }
    // SDM IRET real mode: EFLAGS = (temp AND 257FD5H) OR (EFLAGS AND 1A0000H).
    let mut w: u64 = if bytes == 2 { 0x7fd5 } else { 0x25_7fd5 };
    if v86 {
        w &= !rflags::IOPL;
    }
    cpu.rflags = (cpu.rflags & !w) | (fl & w) | rflags::FIXED1;
    cpu.cs = cs;
    cpu.gpr[reg::RSP] = st.rsp;
    cpu.rip = ip & op_mask(bytes);
    Ok(())
}

fn iret_protected(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
    bytes: usize,
) -> Result<(), Exception> {
    let lma = long_mode(cpu);
    if cpu.rflags & rflags::NT != 0 {
        if lma {
            return Err(gp0());
        }
        log::warn!("IRET with NT=1 (task return) is not supported");
        return Err(Exception::Unimplemented(insn.mnemonic()));
    }
    let cpl = cpu.cpl();
    let mut st = Stack::current(cpu);
    let ip = st.pop(mem, bytes)? & op_mask(bytes);
    let sel = st.pop(mem, bytes)? as u16;
    let fl = st.pop(mem, bytes)?;
    if !lma && bytes != 2 && fl & rflags::VM != 0 && cpl == 0 {
        log::warn!("IRET to virtual-8086 mode is not supported");
        return Err(Exception::Unimplemented(insn.mnemonic()));
    }
    let f = check_return_cs(cpu, mem, sel)?;
    let rpl = (sel & 3) as u8;
    let cs = code_segment(&f, sel, rpl);
    check_target(cpu, &cs, ip)?;
    let flags = iret_flags(cpu.rflags, fl, bytes, cpl);
    let mut marks: Vec<(u64, u8)> = f.accessed_mark().into_iter().collect();
    // 64-bit mode always pops SS:RSP; elsewhere only a return to an outer level does.
    if rpl > cpl || cpu.mode() == CpuMode::Long64 {
        let new_sp = st.pop(mem, bytes)?;
        let ss_sel = st.pop(mem, bytes)? as u16;
        let to64 = lma && cs.l;
        let (ss, ss_mark) = check_return_ss(cpu, mem, ss_sel, rpl, to64)?;
        marks.extend(ss_mark);
        let rsp = outer_rsp(cpu.gpr[reg::RSP], new_sp, bytes, &ss, to64);
        write_marks(mem, &marks)?;
        cpu.cs = cs;
        cpu.ss = ss;
        cpu.gpr[reg::RSP] = rsp;
        cpu.rip = ip;
        cpu.rflags = flags;
        nullify_outer(cpu, rpl);
    } else {
        write_marks(mem, &marks)?;
        cpu.cs = cs;
        cpu.gpr[reg::RSP] = st.rsp;
        cpu.rip = ip;
        cpu.rflags = flags;
    }
    Ok(())
}

/// LLDT and LTR (SDM): CPL 0 only; the selector must name an LDT (type 2) or an available
/// TSS (1/9; only 9 in long mode) in the GDT; 16-byte descriptors in long mode (canonical
/// base, zero upper type). LTR marks the TSS busy in memory and in TR.
fn load_system_register(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if !protected(cpu) {
        return Err(ud());
    }
    if cpu.cpl() != 0 {
        return Err(gp0());
    }
    let ltr = insn.mnemonic() == Mnemonic::Ltr;
    let sel = read_sel(cpu, mem, insn, 0)?;
    if is_null(sel) {
        if ltr {
            return Err(gp0());
        }
        cpu.ldtr = Segment {
            selector: sel,
            unusable: true,
            present: false,
            ..cpu.ldtr
        };
        cpu.rip = insn.next_ip();
        return Ok(Effect::Next);
    }
    if sel & 4 != 0 {
        return Err(gp_sel(sel));
    }
    let lma = long_mode(cpu);
    let f = fetch(cpu, mem, sel, lma)?.ok_or(gp_sel(sel))?;
    let d = f.desc;
    let type_ok = match (ltr, d.type_()) {
        (false, 2) => true,
        (true, 9) => true,
        (true, 1) => !lma,
        _ => false,
    };
    if d.s() || !type_ok || (lma && (d.hi_type() != 0 || !canonical(d.base()))) {
        return Err(gp_sel(sel));
    }
    if !d.present() {
        return Err(fault(NP, sel_error(sel)));
    }
    let mut seg = d.segment(sel);
    if ltr {
        let mark = f.busy_mark();
        write_marks(mem, &[mark])?;
        seg.type_ |= 2;
        cpu.tr = seg;
    } else {
        cpu.ldtr = seg;
    }
    cpu.rip = insn.next_ip();
    Ok(Effect::Next)
}

/// SLDT and STR: 16 bits to memory, zero-extended into a register.
fn store_system_register(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if !protected(cpu) {
        return Err(ud());
    }
    if cpu.cr4 & CR4_UMIP != 0 && cpu.cpl() > 0 {
        return Err(gp0());
    }
    let sel = if insn.mnemonic() == Mnemonic::Str {
        cpu.tr.selector
    } else {
        cpu.ldtr.selector
    };
    write_op(cpu, mem, insn, 0, u64::from(sel), false)?;
    cpu.rip = insn.next_ip();
    Ok(Effect::Next)
}

/// What LAR/LSL/VERR/VERW find for `sel`: `Some(value)` when the check passes (ZF=1). Bad
/// selectors give `None`; only memory faults of the table read are errors.
fn access_value(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    m: Mnemonic,
    sel: u16,
) -> Result<Option<u64>, Exception> {
    if is_null(sel) {
        return Ok(None);
    }
    let lma = long_mode(cpu);
    let Some(mut f) = fetch(cpu, mem, sel, false)? else {
        return Ok(None);
    };
    if !f.desc.s() && lma {
        match fetch(cpu, mem, sel, true)? {
            Some(w) if w.desc.hi_type() == 0 => f = w,
            _ => return Ok(None),
        }
    }
    let d = f.desc;
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let priv_ok = d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
    if !priv_ok {
        return Ok(None);
    }
    let t = d.type_();
    Ok(match m {
        Mnemonic::Lar => {
            let ok = d.s()
                || if lma {
                    matches!(t, 2 | 9 | 0xb | 0xc)
                } else {
                    matches!(t, 1..=5 | 9 | 0xb | 0xc)
                };
            ok.then_some((d.lo >> 32) & 0x00f0_ff00)
        }
        Mnemonic::Lsl => {
            let ok = d.s()
                || if lma {
                    matches!(t, 2 | 9 | 0xb)
                } else {
                    matches!(t, 1 | 2 | 3 | 9 | 0xb)
                };
            ok.then_some(u64::from(d.limit()))
        }
        Mnemonic::Verr => d.readable().then_some(0),
        _ => d.writable().then_some(0),
    })
}

/// LAR, LSL, VERR, VERW: ZF says whether the selector passes; LAR/LSL write the destination
/// only then.
fn access_check(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if !protected(cpu) {
        return Err(ud());
    }
    let m = insn.mnemonic();
    let writes = matches!(m, Mnemonic::Lar | Mnemonic::Lsl);
    let sel = read_sel(cpu, mem, insn, if writes { 1 } else { 0 })?;
    let found = access_value(cpu, mem, m, sel)?;
    if let (true, Some(v)) = (writes, found) {
        write_op(cpu, mem, insn, 0, v, false)?;
    }
    if found.is_some() {
        cpu.rflags |= rflags::ZF;
    } else {
        cpu.rflags &= !rflags::ZF;
    }
    cpu.rip = insn.next_ip();
    Ok(Effect::Next)
}

/// ARPL r/m16, r16: raises the destination's RPL to the source's (ZF=1), else ZF=0.
fn arpl(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if !protected(cpu) || cpu.mode() == CpuMode::Long64 {
        return Err(ud());
    }
    let dst = read_sel(cpu, mem, insn, 0)?;
    let src = read_sel(cpu, mem, insn, 1)?;
    if dst & 3 < src & 3 {
        write_op(cpu, mem, insn, 0, u64::from((dst & !3) | (src & 3)), true)?;
        cpu.rflags |= rflags::ZF;
    } else {
        cpu.rflags &= !rflags::ZF;
    }
    cpu.rip = insn.next_ip();
    Ok(Effect::Next)
}
