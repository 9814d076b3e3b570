//! Exception and interrupt delivery through the IVT (real mode) or the IDT (protected and long
//! mode), with the privilege switch through the TSS, IST stacks, #DF and triple fault.
//!
//! [`deliver`] computes the whole frame and every check first, then writes memory (the frame,
//! descriptor accessed bits), then the registers: a fault during delivery leaves `CpuState` as
//! it was, and is itself delivered by the nested-fault rules (SDM Vol. 3 §6.15, table 6-5):
//! contributory (#DE, #TS, #NP, #SS, #GP) after contributory, or contributory/#PF after #PF,
//! becomes #DF(0); anything during #DF delivery is a triple fault; otherwise the new fault is
//! delivered instead. A #PF during delivery sets CR2 to its address before it (or #DF) is
//! delivered; CR2 is otherwise the caller's.
//!
//! Error codes of faults raised while delivering an event that is not a software interrupt
//! (exceptions, external interrupts, NMI, INT1) have EXT (bit 0) set (SDM §6.13). The IDT-entry
//! error codes are `vector * 8 + 2 (+ EXT)`.
//!
//! RIP in the state is the value pushed: the faulting instruction for faults, the next one
//! for traps and INT n. For fault-class exceptions (all but #DB, NMI, #BP, #OF, #DF, #MC) the
//! pushed RFLAGS image has RF set, as the CPU does (SDM §17.3.1.1), so the re-executed
//! instruction is not hit by an instruction breakpoint again.
//!
//! Memory contexts: the IVT/IDT/GDT/TSS are read with [`GuestMem::read_system`]; frames pushed
//! to a stack of CPL < 3 use [`GuestMem::write_system`] (the memory's CPL context is still the
//! interrupted one; the new stack is a supervisor stack), a same-level frame at CPL 3 uses
//! [`GuestMem::write`].
//!
//! Not modelled (each fails delivery with a logged error, which [`deliver`] reports as
//! [`TripleFault`]): delivery from virtual-8086 mode, and anything other than a guest exception
//! arising during delivery (unbacked memory). Task gates in the IDT raise #GP(vector*8+2+EXT)
//! with a log warning: task switching is not modelled (Linux does not use it). Stack-segment
//! limits of the pushes are not checked.

use super::segment::descriptor::{
    canonical, fault, fetch, gp0, gp_sel, inner_stack_segment, is_null, null_ss, read_sys,
    sel_error, tss_slot64, tss_stack_legacy, wrap, write_marks, Descriptor, Fetched, Stack, DF, NP,
};
use super::segment::{code_segment, real_segment, SegReg};
use super::{Event, EventKind};
use crate::mem::GuestMem;
use crate::sem::{Exception, GP, PF, SS};
use crate::state::{ctl, reg, rflags, CpuMode, CpuState, Segment};
use iced_x86::Mnemonic;

/// Delivery could not complete: the CPU shuts down (triple fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("triple fault")]
pub struct TripleFault;

/// Exception classes for the double-fault rules (SDM Vol. 3 table 6-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

fn class(vector: u8) -> Class {
    match vector {
        0 | 10..=13 => Class::Contributory,
        PF => Class::PageFault,
        DF => Class::DoubleFault,
        _ => Class::Benign,
    }
}

/// EXT for faults raised while delivering `ev`: set unless it is a software interrupt.
fn ext_bit(ev: &Event) -> u32 {
    u32::from(!matches!(
        ev.kind,
        EventKind::Software | EventKind::SoftwareException
    ))
}

/// Delivers `event` through the IVT or IDT; clears `halted`, and an NMI blocks further NMIs
/// until IRET. `Err(TripleFault)` when delivery fails for good (see the module docs).
pub fn deliver(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    event: Event,
) -> Result<(), TripleFault> {
    let rip = cpu.rip;
    deliver_from(cpu, mem, event, rip)
}

/// [`deliver`] for an event raised by an instruction that starts at `insn_rip` (INT n, INT3,
/// INTO, INT1, whose frame holds the next RIP): a fault while delivering it is a fault of that
/// instruction, so its frame holds `insn_rip` (SDM Vol. 2 INT n: "the saved instruction pointer
/// points to the INT instruction" when delivery faults).
pub fn deliver_from(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    event: Event,
    insn_rip: u64,
) -> Result<(), TripleFault> {
    let mut ev = event;
    // Escalation ends after at most three steps (fault, #DF, shutdown); the bound is a guard.
    for _ in 0..8 {
        let exc = match deliver_once(cpu, mem, &ev) {
            Ok(()) => {
                cpu.halted = false;
                if event.kind == EventKind::Nmi {
                    cpu.events.nmi_masked = true;
                }
                return Ok(());
            }
            Err(exc) => exc,
        };
        let (vector, error) = match exc {
            Exception::Cpu { vector, error } => (vector, error.map(|e| e | ext_bit(&ev))),
            Exception::PageFault { linear, error } => {
                cpu.cr2 = linear;
                (PF, Some(error))
            }
            other => {
                log::error!("delivery of vector {} failed: {other}", ev.vector);
                return Err(TripleFault);
            }
        };
        log::debug!(
            "fault {vector} ({error:?}) while delivering vector {}",
            ev.vector
        );
        if matches!(
            ev.kind,
            EventKind::Software | EventKind::SoftwareException | EventKind::PrivilegedSoftware
        ) {
            cpu.rip = insn_rip;
        }
        let first = if ev.kind == EventKind::Exception {
            class(ev.vector)
        } else {
            Class::Benign
        };
        ev = match (first, class(vector)) {
            (Class::DoubleFault, _) => return Err(TripleFault),
            (Class::Contributory, Class::Contributory)
            | (Class::PageFault, Class::Contributory | Class::PageFault) => Event {
                vector: DF,
                error: Some(0),
                kind: EventKind::Exception,
            },
            _ => Event {
                vector,
                error,
                kind: EventKind::Exception,
            },
        };
    }
    Err(TripleFault)
}

fn deliver_once(cpu: &mut CpuState, mem: &mut dyn GuestMem, ev: &Event) -> Result<(), Exception> {
    match cpu.mode() {
        CpuMode::Real => deliver_real(cpu, mem, ev),
        CpuMode::Virtual8086 => {
            log::error!("interrupt delivery from virtual-8086 mode is not supported");
            Err(Exception::Unimplemented(Mnemonic::Int))
        }
        _ if cpu.efer & ctl::EFER_LMA != 0 => deliver_long(cpu, mem, ev),
        _ => deliver_protected(cpu, mem, ev),
    }
}

/// Real mode: IVT entry at IDTR.base + vector * 4 (#GP beyond the IDTR limit), push FLAGS, CS,
/// IP, clear IF, TF, AC (SDM INT n, REAL-ADDRESS-MODE). No error code is pushed.
fn deliver_real(cpu: &mut CpuState, mem: &mut dyn GuestMem, ev: &Event) -> Result<(), Exception> {
    let off = u64::from(ev.vector) * 4;
    if off + 3 > u64::from(cpu.idtr.limit) {
        return Err(gp0());
    }
    let entry = read_sys(mem, wrap(cpu, cpu.idtr.base.wrapping_add(off)), 4)?;
    let mut st = Stack::current(cpu);
    st.push(cpu.rflags & 0xffff, 2)?;
    st.push(u64::from(cpu.cs.selector), 2)?;
    st.push(cpu.rip & 0xffff, 2)?;
    st.commit(mem)?;
    cpu.cs = real_segment(cpu, SegReg::Cs, (entry >> 16) as u16);
    cpu.rip = entry & 0xffff;
    cpu.gpr[reg::RSP] = st.rsp;
    cpu.rflags &= !(rflags::IF | rflags::TF | rflags::AC);
    Ok(())
}

/// The RFLAGS image pushed for `ev` (RF set for fault-class exceptions).
fn pushed_flags(cpu: &CpuState, ev: &Event) -> u64 {
    let fault_class = ev.kind == EventKind::Exception
        && ev.vector < 32
        && !matches!(ev.vector, 1 | 2 | 3 | 4 | DF | 18);
    if fault_class {
        cpu.rflags | rflags::RF
    } else {
        cpu.rflags
    }
}

/// The IDT gate checks shared by protected and long mode: gate type (`ok_type`), the DPL
/// check of software interrupts, presence.
fn check_gate(
    cpu: &CpuState,
    ev: &Event,
    gate: &Descriptor,
    ok_type: bool,
) -> Result<(), Exception> {
    let idt_err = u32::from(ev.vector) * 8 + 2;
    if gate.s() || !ok_type {
        if !gate.s() && gate.type_() == 5 {
            log::warn!(
                "vector {} is a task gate: task switching is not supported, #GP",
                ev.vector
            );
        }
        return Err(fault(GP, idt_err));
    }
    let software = matches!(ev.kind, EventKind::Software | EventKind::SoftwareException);
    if software && gate.dpl() < cpu.cpl() {
        return Err(fault(GP, idt_err));
    }
    if !gate.present() {
        return Err(fault(NP, idt_err));
    }
    Ok(())
}

/// The handler's code segment: #GP(0) null; #GP(sel) out of bounds, not code, DPL > CPL, or
/// (long mode) not 64-bit code; #NP(sel) not present. Returns it with the new CPL (the DPL
/// for a non-conforming segment, else the CPL).
fn check_handler(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    sel: u16,
    long: bool,
) -> Result<(Fetched, u8), Exception> {
    if is_null(sel) {
        return Err(gp0());
    }
    let cpl = cpu.cpl();
    let f = fetch(cpu, mem, sel, false)?.ok_or(gp_sel(sel))?;
    let d = f.desc;
    if !d.is_code() || d.dpl() > cpl {
        return Err(gp_sel(sel));
    }
    if !d.present() {
        return Err(fault(NP, sel_error(sel)));
    }
    if long && !d.is_code64() {
        return Err(gp_sel(sel));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    Ok((f, new_cpl))
}

/// Protected mode: 8-byte interrupt/trap gates (16/32-bit), the inner stack from the
/// 32-bit (or 16-bit) TSS on a privilege change (SDM INT n, PROTECTED-MODE).
fn deliver_protected(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    ev: &Event,
) -> Result<(), Exception> {
    let v = u64::from(ev.vector);
    if v * 8 + 7 > u64::from(cpu.idtr.limit) {
        return Err(fault(GP, u32::from(ev.vector) * 8 + 2));
    }
    let lo = read_sys(mem, wrap(cpu, cpu.idtr.base.wrapping_add(v * 8)), 8)?;
    let gate = Descriptor { lo, hi: 0 };
    check_gate(cpu, ev, &gate, matches!(gate.type_(), 6 | 7 | 0xe | 0xf))?;
    let (cf, new_cpl) = check_handler(cpu, mem, gate.gate_selector(), false)?;
    let bytes: usize = if gate.type_() & 8 != 0 { 4 } else { 2 };
    let mask = if bytes == 4 { 0xffff_ffff } else { 0xffff };
    let target = gate.gate_offset() & mask;
    let cs = code_segment(&cf, gate.gate_selector(), new_cpl);
    if target > u64::from(cs.limit) {
        return Err(gp0());
    }
    let mut marks: Vec<(u64, u8)> = cf.accessed_mark().into_iter().collect();
    let inner = new_cpl < cpu.cpl();
    let (ss, mut st): (Option<Segment>, Stack) = if inner {
        let (ss_sel, esp) = tss_stack_legacy(cpu, mem, new_cpl)?;
        let sf = inner_stack_segment(cpu, mem, ss_sel, new_cpl)?;
        marks.extend(sf.accessed_mark());
        let ss = sf.desc.segment(ss_sel);
        let width = if ss.db { 32 } else { 16 };
        let mut st = Stack::new(ss.base, esp, width, true);
        st.push(u64::from(cpu.ss.selector), bytes)?;
        st.push(cpu.gpr[reg::RSP], bytes)?;
        (Some(ss), st)
    } else {
        let mut st = Stack::current(cpu);
        st.system = new_cpl < 3;
        (None, st)
    };
    st.push(pushed_flags(cpu, ev), bytes)?;
    st.push(u64::from(cpu.cs.selector), bytes)?;
    st.push(cpu.rip, bytes)?;
    if let Some(e) = ev.error {
        st.push(u64::from(e), bytes)?;
    }
    st.commit(mem)?;
    write_marks(mem, &marks)?;
    commit(cpu, cs, ss, st.rsp, target, gate.type_() & 1 == 0);
    Ok(())
}

/// Long mode: 16-byte 64-bit gates to 64-bit code, RSPn or ISTn from the 64-bit TSS, the
/// new RSP aligned down to 16, SS:RSP always pushed, null SS on a privilege change (SDM INT
/// n, IA-32E-MODE; Vol. 3 §6.14).
fn deliver_long(cpu: &mut CpuState, mem: &mut dyn GuestMem, ev: &Event) -> Result<(), Exception> {
    let v = u64::from(ev.vector);
    if v * 16 + 15 > u64::from(cpu.idtr.limit) {
        return Err(fault(GP, u32::from(ev.vector) * 8 + 2));
    }
    let at = cpu.idtr.base.wrapping_add(v * 16);
    let lo = read_sys(mem, at, 8)?;
    let hi = read_sys(mem, at.wrapping_add(8), 8)?;
    let gate = Descriptor { lo, hi };
    check_gate(cpu, ev, &gate, matches!(gate.type_(), 0xe | 0xf))?;
    let (cf, new_cpl) = check_handler(cpu, mem, gate.gate_selector(), true)?;
    let target = gate.gate_offset();
    if !canonical(target) {
        return Err(gp0());
    }
    let cs = code_segment(&cf, gate.gate_selector(), new_cpl);
    let inner = new_cpl < cpu.cpl();
    let ist = u64::from(gate.gate_ist());
    let rsp = if ist != 0 {
        tss_slot64(cpu, mem, 0x24 + 8 * (ist - 1))?
    } else if inner {
        tss_slot64(cpu, mem, 4 + 8 * u64::from(new_cpl))?
    } else {
        cpu.gpr[reg::RSP]
    };
    if !canonical(rsp) {
        return Err(fault(SS, 0));
    }
    let mut st = Stack::new(0, rsp & !0xf, 64, new_cpl < 3);
    st.push(u64::from(cpu.ss.selector), 8)?;
    st.push(cpu.gpr[reg::RSP], 8)?;
    st.push(pushed_flags(cpu, ev), 8)?;
    st.push(u64::from(cpu.cs.selector), 8)?;
    st.push(cpu.rip, 8)?;
    if let Some(e) = ev.error {
        st.push(u64::from(e), 8)?;
    }
    st.commit(mem)?;
    write_marks(mem, cf.accessed_mark().as_slice())?;
    let ss = inner.then(|| null_ss(new_cpl));
    commit(cpu, cs, ss, st.rsp, target, gate.type_() & 1 == 0);
    Ok(())
}

/// The register half of a delivery: CS, SS (on a privilege change), RSP, RIP, and RFLAGS
/// with TF, NT, RF, VM cleared (and IF for an interrupt gate).
fn commit(
    cpu: &mut CpuState,
    cs: Segment,
    ss: Option<Segment>,
    rsp: u64,
    rip: u64,
    interrupt_gate: bool,
) {
    cpu.cs = cs;
    if let Some(ss) = ss {
        cpu.ss = ss;
    }
    cpu.gpr[reg::RSP] = rsp;
    cpu.rip = rip;
    cpu.rflags &= !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if interrupt_gate {
        cpu.rflags &= !rflags::IF;
    }
}
