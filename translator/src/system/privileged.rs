//! Privileged and sensitive instructions other than segmentation, run by the monitor.
//!
//! Every executor checks everything that can fault before its first architectural write, so an
//! `Err` leaves the [`CpuState`] exactly as it was (the one exception is documented at
//! [`string_io`]: earlier elements of a REP INS/OUTS stay done, as on the CPU). On success RIP
//! is past the instruction unless the instruction transfers control (SYSCALL, SYSRET,
//! SYSENTER, SYSEXIT) or is a REP string I/O instruction with elements left.
//!
//! The CPU is the AMD model of [`super::cpuid`]: SYSCALL/SYSRET in every protected mode with
//! CSTAR for compatibility mode and no canonical check of RCX on SYSRET; SYSENTER/SYSEXIT in
//! legacy mode only (#UD in long mode). Privilege checks come first: #UD for an instruction
//! invalid in the mode or not advertised, then #GP(0) for CPL > 0 where the manuals require it.
//!
//! Not modelled (stated, not guessed): hardware breakpoints (DR0-DR7 are stored, nothing
//! triggers; DR7.GD does not raise #DB), VME/PVI (not advertised: CLI/STI/INT n in
//! virtual-8086 mode follow IOPL only), segment limit checks on memory operands (as in the
//! tiers), and AMD SYSRET's "SS attributes unchanged" quirk (SS is reloaded flat with DPL 3,
//! which Linux's X86_BUG_SYSRET_SS_ATTRS workaround never notices).

use super::cpuid::{CpuModel, Feature};
use super::msr::{self, APIC_BASE_ENABLE};
use super::{Effect, Event, EventKind, SystemBus, TlbFlush};
use crate::interp::Interp;
use crate::mem::GuestMem;
use crate::sem::operand::{self, gpr_of, Gpr};
use crate::sem::{self, Exception, AC, GP, SS, UD};
use crate::state::{ctl, msr as idx, reg, rflags, CpuMode, CpuState, Segment};
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};
use std::sync::OnceLock;

/// #BR, BOUND range exceeded.
pub const BR: u8 = 5;
/// #DB, debug (INT1).
pub const DB: u8 = 1;

/// Elements of a REP INS/OUTS done per call before the monitor gets a chance to look at
/// interrupts (RIP stays on the instruction while elements remain).
pub const REP_IO_BATCH: u64 = 4096;

/// The CPU model CPUID reports.
pub fn model() -> &'static CpuModel {
    static MODEL: OnceLock<CpuModel> = OnceLock::new();
    MODEL.get_or_init(CpuModel::default)
}

/// Executes a privileged or sensitive instruction (see the module docs).
pub fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Mov => mov_special(cpu, insn),
        M::Lgdt | M::Lidt => load_table(cpu, mem, insn),
        M::Sgdt | M::Sidt => store_table(cpu, mem, insn),
        M::Smsw => smsw(cpu, mem, insn),
        M::Lmsw => lmsw(cpu, mem, insn),
        M::Clts => {
            cpl0(cpu)?;
            cpu.cr0 &= !ctl::CR0_TS;
            done(cpu, insn, Effect::Next)
        }
        M::In | M::Out => port_io(cpu, mem, bus, insn),
        M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            string_io(cpu, mem, bus, insn)
        }
        M::Cli | M::Sti => interrupt_flag(cpu, insn),
        M::Hlt => {
            cpl0(cpu)?;
            done(cpu, insn, Effect::Halt)
        }
        M::Rdmsr => {
            cpl0(cpu)?;
            let v = msr::read(cpu, bus, cpu.gpr[reg::RCX] as u32)?;
            set_edx_eax(cpu, v);
            done(cpu, insn, Effect::Next)
        }
        M::Wrmsr => {
            cpl0(cpu)?;
            let v = (cpu.gpr[reg::RDX] << 32) | (cpu.gpr[reg::RAX] & 0xffff_ffff);
            let effect = msr::write(cpu, bus, cpu.gpr[reg::RCX] as u32, v)?;
            done(cpu, insn, effect)
        }
        M::Cpuid => cpuid(cpu, insn),
        M::Rdtsc | M::Rdtscp => rdtsc(cpu, bus, insn),
        // No performance counter exists, so every counter index is invalid.
        M::Rdpmc => Err(gp0()),
        M::Invlpg => invlpg(cpu, mem, insn),
        M::Wbinvd | M::Invd => {
            cpl0(cpu)?;
            done(cpu, insn, Effect::Next)
        }
        M::Syscall => syscall(cpu, insn),
        M::Sysret | M::Sysretq => sysret(cpu, insn),
        M::Sysenter => sysenter(cpu),
        M::Sysexit | M::Sysexitq => sysexit(cpu),
        M::Swapgs => swapgs(cpu, insn),
        M::Int => {
            // Without VME, INT n in virtual-8086 mode is IOPL-sensitive.
            if cpu.mode() == CpuMode::Virtual8086 && iopl(cpu) < 3 {
                return Err(gp0());
            }
            deliver(cpu, insn, insn.immediate8(), EventKind::Software)
        }
        M::Int3 => deliver(cpu, insn, sem::BP, EventKind::SoftwareException),
        M::Into => {
            if cpu.mode() == CpuMode::Long64 {
                return Err(ud());
            }
            if cpu.rflags & rflags::OF != 0 {
                deliver(cpu, insn, sem::OF, EventKind::SoftwareException)
            } else {
                done(cpu, insn, Effect::Next)
            }
        }
        M::Int1 => deliver(cpu, insn, DB, EventKind::PrivilegedSoftware),
        M::Bound => bound(cpu, mem, insn),
        // Not advertised by the model: invalid opcodes.
        M::Xgetbv
        | M::Xsetbv
        | M::Monitor
        | M::Mwait
        | M::Monitorx
        | M::Mwaitx
        | M::Rdfsbase
        | M::Rdgsbase
        | M::Wrfsbase
        | M::Wrgsbase
        | M::Rdrand
        | M::Rdseed
        | M::Rdpid => Err(ud()),
        m => Err(Exception::Unimplemented(m)),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn gp0() -> Exception {
    Exception::Cpu {
        vector: GP,
        error: Some(0),
    }
}

fn ud() -> Exception {
    Exception::cpu(UD)
}

/// #GP(0) unless CPL is 0 (virtual-8086 mode is CPL 3).
fn cpl0(cpu: &CpuState) -> Result<(), Exception> {
    if cpu.cpl() == 0 {
        Ok(())
    } else {
        Err(gp0())
    }
}

fn iopl(cpu: &CpuState) -> u8 {
    ((cpu.rflags & rflags::IOPL) >> 12) as u8
}

/// Completes an instruction that falls through.
fn done(cpu: &mut CpuState, insn: &Instruction, effect: Effect) -> Result<Effect, Exception> {
    cpu.rip = insn.next_ip();
    Ok(effect)
}

fn deliver(
    cpu: &mut CpuState,
    insn: &Instruction,
    vector: u8,
    kind: EventKind,
) -> Result<Effect, Exception> {
    done(
        cpu,
        insn,
        Effect::Deliver(Event {
            vector,
            error: None,
            kind,
        }),
    )
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn gpr(r: Register) -> Result<Gpr, Exception> {
    gpr_of(r).ok_or(Exception::Internal(
        "system operand is not a general register",
    ))
}

/// Reads a general register operand, zero-extended.
fn read_reg(cpu: &CpuState, r: Register) -> Result<u64, Exception> {
    let g = gpr(r)?;
    let v = cpu.gpr.get(g.index).copied().unwrap_or(0);
    Ok(if g.high {
        (v >> 8) & 0xff
    } else {
        v & mask(g.bits)
    })
}

/// Writes a general register operand with the partial-register rules.
fn write_reg(cpu: &mut CpuState, r: Register, v: u64) -> Result<(), Exception> {
    let g = gpr(r)?;
    write_gpr(cpu, g, v);
    Ok(())
}

fn write_gpr(cpu: &mut CpuState, g: Gpr, v: u64) {
    let Some(slot) = cpu.gpr.get_mut(g.index) else {
        return;
    };
    *slot = match (g.bits, g.high) {
        (64, _) => v,
        (32, _) => v & 0xffff_ffff,
        (bits, high) => {
            let shift = if high { 8 } else { 0 };
            let field = mask(bits) << shift;
            (*slot & !field) | ((v << shift) & field)
        }
    };
}

/// Writes the low `bits` of register `index`.
fn write_bits(cpu: &mut CpuState, index: usize, bits: u32, v: u64) {
    write_gpr(
        cpu,
        Gpr {
            index,
            bits,
            high: false,
        },
        v,
    );
}

/// EDX:EAX = `v` (32-bit writes: the upper halves are cleared).
fn set_edx_eax(cpu: &mut CpuState, v: u64) {
    cpu.gpr[reg::RAX] = v & 0xffff_ffff;
    cpu.gpr[reg::RDX] = v >> 32;
}

fn is_canonical(v: u64) -> bool {
    ((v << 16) as i64 >> 16) as u64 == v
}

/// The linear address of `insn`'s explicit memory operand (segment base, canonical check).
fn mem_linear(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<u64, Exception> {
    let mut it = Interp::new(cpu, mem);
    operand::mem_linear(&mut it, insn, None)
}

// ---------------------------------------------------------------------------------------------
// Control and debug registers

/// Which control register an iced register is, if any.
fn cr_number(r: Register) -> Option<u32> {
    r.is_cr().then(|| r as u32 - Register::CR0 as u32)
}

fn dr_number(r: Register) -> Option<u32> {
    r.is_dr().then(|| r as u32 - Register::DR0 as u32)
}

/// MOV to or from a control or debug register.
fn mov_special(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    if insn.op0_kind() != OpKind::Register || insn.op1_kind() != OpKind::Register {
        return Err(Exception::Unimplemented(insn.mnemonic()));
    }
    if let Some(n) = cr_number(dst) {
        check_cr(cpu, n)?;
        let v = read_reg(cpu, src)?;
        let effect = write_cr(cpu, n, v)?;
        done(cpu, insn, effect)
    } else if let Some(n) = cr_number(src) {
        check_cr(cpu, n)?;
        let v = match n {
            0 => cpu.cr0,
            2 => cpu.cr2,
            3 => cpu.cr3,
            4 => cpu.cr4,
            _ => cpu.cr8,
        };
        write_reg(cpu, dst, v)?;
        done(cpu, insn, Effect::Next)
    } else if let Some(n) = dr_number(dst) {
        let n = check_dr(cpu, n)?;
        let v = read_reg(cpu, src)?;
        write_dr(cpu, n, v)?;
        done(cpu, insn, Effect::Next)
    } else if let Some(n) = dr_number(src) {
        let n = check_dr(cpu, n)?;
        let v = match n {
            0..=3 => cpu.dr[n as usize],
            6 => cpu.dr6,
            _ => cpu.dr7,
        };
        write_reg(cpu, dst, v)?;
        done(cpu, insn, Effect::Next)
    } else {
        // Segment-register moves belong to the segmentation executor.
        Err(Exception::Unimplemented(insn.mnemonic()))
    }
}

/// #UD for control registers that do not exist (CR8 outside 64-bit mode: the AMD LOCK MOV CR0
/// alias is not advertised), then #GP(0) for CPL > 0.
fn check_cr(cpu: &CpuState, n: u32) -> Result<(), Exception> {
    match n {
        0 | 2 | 3 | 4 => {}
        8 if cpu.mode() == CpuMode::Long64 => {}
        _ => return Err(ud()),
    }
    cpl0(cpu)
}

/// #UD for DR8-DR15, #GP(0) for CPL > 0, #UD for DR4/DR5 with CR4.DE; DR4/DR5 alias DR6/DR7.
fn check_dr(cpu: &CpuState, n: u32) -> Result<u32, Exception> {
    if n > 7 {
        return Err(ud());
    }
    cpl0(cpu)?;
    match n {
        4 | 5 if cpu.cr4 & ctl::CR4_DE != 0 => Err(ud()),
        4 | 5 => Ok(n + 2),
        _ => Ok(n),
    }
}

/// CR0 bits that exist (the other low bits are reserved and ignored on write).
const CR0_BITS: u64 = ctl::CR0_PE
    | ctl::CR0_MP
    | ctl::CR0_EM
    | ctl::CR0_TS
    | ctl::CR0_ET
    | ctl::CR0_NE
    | ctl::CR0_WP
    | ctl::CR0_AM
    | ctl::CR0_NW
    | ctl::CR0_CD
    | ctl::CR0_PG;

/// CR4 bits the model supports (VME/PVI are not advertised; nothing newer either).
pub const CR4_SUPPORTED: u64 = ctl::CR4_TSD
    | ctl::CR4_DE
    | ctl::CR4_PSE
    | ctl::CR4_PAE
    | ctl::CR4_MCE
    | ctl::CR4_PGE
    | ctl::CR4_PCE
    | ctl::CR4_OSFXSR
    | ctl::CR4_OSXMMEXCPT;

/// Bits of CR3 above MAXPHYADDR (reserved in long mode).
const CR3_RESERVED_LONG: u64 = !0u64 << msr::PHYS_BITS;

fn write_cr(cpu: &mut CpuState, n: u32, v: u64) -> Result<Effect, Exception> {
    match n {
        0 => write_cr0(cpu, v),
        2 => {
            cpu.cr2 = v;
            Ok(Effect::Next)
        }
        3 => {
            if cpu.efer & ctl::EFER_LMA != 0 && v & CR3_RESERVED_LONG != 0 {
                return Err(gp0());
            }
            cpu.cr3 = v;
            Ok(Effect::Flush(TlbFlush::NonGlobal))
        }
        4 => {
            if v & !CR4_SUPPORTED != 0 || (cpu.efer & ctl::EFER_LMA != 0 && v & ctl::CR4_PAE == 0) {
                return Err(gp0());
            }
            let changed = cpu.cr4 ^ v;
            cpu.cr4 = v;
            Ok(
                if changed & (ctl::CR4_PGE | ctl::CR4_PAE | ctl::CR4_PSE) != 0 {
                    Effect::Flush(TlbFlush::All)
                } else {
                    Effect::Next
                },
            )
        }
        _ => {
            // CR8: the task priority, bits 3:0.
            if v & !0xf != 0 {
                return Err(gp0());
            }
            cpu.cr8 = v;
            Ok(Effect::Next)
        }
    }
}

/// MOV to CR0 with the mode-transition rules (SDM Vol. 3 §2.5, §9.8.5; APM Vol. 2 §14.6).
fn write_cr0(cpu: &mut CpuState, v: u64) -> Result<Effect, Exception> {
    if v >> 32 != 0 {
        return Err(gp0());
    }
    // ET is hardwired to 1 on every x86-64 CPU.
    let new = (v & CR0_BITS) | ctl::CR0_ET;
    let old = cpu.cr0;
    if (new & ctl::CR0_PG != 0 && new & ctl::CR0_PE == 0)
        || (new & ctl::CR0_NW != 0 && new & ctl::CR0_CD == 0)
    {
        return Err(gp0());
    }
    let mut efer = cpu.efer;
    let paging_on = old & ctl::CR0_PG == 0 && new & ctl::CR0_PG != 0;
    let paging_off = old & ctl::CR0_PG != 0 && new & ctl::CR0_PG == 0;
    if paging_on && efer & ctl::EFER_LME != 0 {
        // Activating long mode needs PAE paging and must not start from an L=1 code segment.
        if cpu.cr4 & ctl::CR4_PAE == 0 || cpu.cs.l {
            return Err(gp0());
        }
        efer |= ctl::EFER_LMA;
    }
    if paging_off && efer & ctl::EFER_LMA != 0 {
        // Leaving long mode is only possible from compatibility mode.
        if cpu.mode() == CpuMode::Long64 {
            return Err(gp0());
        }
        efer &= !ctl::EFER_LMA;
    }
    cpu.cr0 = new;
    cpu.efer = efer;
    Ok(
        if (old ^ new) & (ctl::CR0_PG | ctl::CR0_WP | ctl::CR0_PE) != 0 {
            Effect::Flush(TlbFlush::All)
        } else {
            Effect::Next
        },
    )
}

/// DR6 bits software can write (B0-B3, BD, BS, BT); the others read as fixed values.
const DR6_WRITABLE: u64 = 0xe00f;
/// DR6 bits that read as 1.
const DR6_FIXED1: u64 = 0xffff_0ff0;
/// DR7 bits software can write (L0-G3, LE, GE, GD, R/W and LEN fields).
const DR7_WRITABLE: u64 = 0xffff_23ff;
/// DR7 bit 10 reads as 1.
const DR7_FIXED1: u64 = 0x400;

fn write_dr(cpu: &mut CpuState, n: u32, v: u64) -> Result<(), Exception> {
    match n {
        0..=3 => cpu.dr[n as usize] = v,
        6 | 7 if v >> 32 != 0 => return Err(gp0()),
        6 => cpu.dr6 = (v & DR6_WRITABLE) | DR6_FIXED1,
        _ => cpu.dr7 = (v & DR7_WRITABLE) | DR7_FIXED1,
    }
    Ok(())
}

/// LMSW: loads CR0 bits 3:0 (PE can be set, never cleared).
fn lmsw(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    cpl0(cpu)?;
    let v = {
        let mut it = Interp::new(cpu, mem);
        let l = operand::loc(&mut it, insn, 0)?;
        l.read(&mut it, 16)?
    };
    let old = cpu.cr0;
    let new = (old & !0xe) | (v & 0xf) | (old & ctl::CR0_PE);
    cpu.cr0 = new;
    let effect = if (old ^ new) & ctl::CR0_PE != 0 {
        Effect::Flush(TlbFlush::All)
    } else {
        Effect::Next
    };
    done(cpu, insn, effect)
}

/// SMSW: stores CR0 (16 bits to memory, the operand size to a register). Not privileged: UMIP
/// is not advertised.
fn smsw(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let cr0 = cpu.cr0;
    {
        let mut it = Interp::new(cpu, mem);
        let l = operand::loc(&mut it, insn, 0)?;
        l.write(&mut it, cr0)?;
    }
    done(cpu, insn, Effect::Next)
}

// ---------------------------------------------------------------------------------------------
// Descriptor-table registers

fn is_16bit_table_op(insn: &Instruction) -> bool {
    matches!(
        insn.code(),
        Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 | Code::Sgdt_m1632_16 | Code::Sidt_m1632_16
    )
}

/// LGDT/LIDT: CPL 0, a memory operand; 6 bytes (24-bit base with a 16-bit operand size) or 10
/// bytes in 64-bit mode, where the base must be canonical.
fn load_table(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if insn.op0_kind() != OpKind::Memory {
        return Err(ud());
    }
    cpl0(cpu)?;
    let addr = mem_linear(cpu, mem, insn)?;
    let long = cpu.mode() == CpuMode::Long64;
    let mut buf = [0u8; 10];
    let len = if long { 10 } else { 6 };
    mem.read(addr, &mut buf[..len])?;
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut base = [0u8; 8];
    base[..len - 2].copy_from_slice(&buf[2..len]);
    let mut base = u64::from_le_bytes(base);
    if long && !is_canonical(base) {
        return Err(gp0());
    }
    if is_16bit_table_op(insn) {
        base &= 0xff_ffff;
    }
    let table = crate::state::DescriptorTable { base, limit };
    if insn.mnemonic() == Mnemonic::Lgdt {
        cpu.gdtr = table;
    } else {
        cpu.idtr = table;
    }
    done(cpu, insn, Effect::Next)
}

/// SGDT/SIDT: limit then base (8 bytes in 64-bit mode, else 4; with a 16-bit operand size the
/// high byte is stored as 0, as the SDM specifies). Not privileged: UMIP is not advertised.
fn store_table(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if insn.op0_kind() != OpKind::Memory {
        return Err(ud());
    }
    let addr = mem_linear(cpu, mem, insn)?;
    let table = if insn.mnemonic() == Mnemonic::Sgdt {
        cpu.gdtr
    } else {
        cpu.idtr
    };
    let len = if cpu.mode() == CpuMode::Long64 { 10 } else { 6 };
    let base = if is_16bit_table_op(insn) {
        table.base & 0xff_ffff
    } else {
        table.base
    };
    let mut buf = [0u8; 10];
    buf[..2].copy_from_slice(&table.limit.to_le_bytes());
    buf[2..].copy_from_slice(&base.to_le_bytes());
    mem.write(addr, &buf[..len])?;
    done(cpu, insn, Effect::Next)
}

// ---------------------------------------------------------------------------------------------
// Port I/O

/// Whether the current task may access `size` bytes at `port` (SDM Vol. 1 §19.5): always in
/// real mode and when CPL <= IOPL outside virtual-8086 mode; otherwise the TSS I/O permission
/// bitmap decides. #GP(0) when refused.
pub fn check_io(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    port: u16,
    size: u8,
) -> Result<(), Exception> {
    let mode = cpu.mode();
    if mode == CpuMode::Real || (mode != CpuMode::Virtual8086 && cpu.cpl() <= iopl(cpu)) {
        return Ok(());
    }
    let tr = &cpu.tr;
    // Only a 32/64-bit TSS (available 9 or busy 0xb) has a bitmap.
    if tr.s || !matches!(tr.type_, 9 | 0xb) || tr.limit < 0x67 || tr.unusable {
        return Err(gp0());
    }
    let long = cpu.efer & ctl::EFER_LMA != 0;
    let at = |off: u64| {
        let a = tr.base.wrapping_add(off);
        if long {
            a
        } else {
            a & 0xffff_ffff
        }
    };
    let mut w = [0u8; 2];
    mem.read_system(at(0x66), &mut w)?;
    let offset = u64::from(u16::from_le_bytes(w)) + u64::from(port / 8);
    // The CPU reads two bytes of the bitmap; both must lie within the TSS limit.
    if offset + 1 > u64::from(tr.limit) {
        return Err(gp0());
    }
    mem.read_system(at(offset), &mut w)?;
    let bits = u16::from_le_bytes(w) >> (port & 7);
    if bits & ((1u16 << size) - 1) != 0 {
        return Err(gp0());
    }
    Ok(())
}

/// IN and OUT with an imm8 or DX port.
fn port_io(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let is_in = insn.mnemonic() == Mnemonic::In;
    let (port_op, data_op) = if is_in { (1, 0) } else { (0, 1) };
    let port = match insn.op_kind(port_op) {
        OpKind::Immediate8 => u16::from(insn.immediate8()),
        _ => cpu.gpr[reg::RDX] as u16,
    };
    let data = insn.op_register(data_op);
    let size = data.size() as u8;
    check_io(cpu, mem, port, size)?;
    if is_in {
        let v = bus.port_in(port, size);
        write_reg(cpu, data, u64::from(v))?;
    } else {
        let v = read_reg(cpu, data)?;
        bus.port_out(port, size, v as u32);
    }
    done(cpu, insn, Effect::Next)
}

/// The address size of a string instruction from its implicit memory operand.
fn string_address_bits(insn: &Instruction) -> Option<u32> {
    (0..insn.op_count()).find_map(|i| match insn.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(16),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(32),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(64),
        _ => None,
    })
}

/// The segment base of `seg` as the linear address computation uses it.
fn seg_base(cpu: &CpuState, seg: Register) -> (u64, bool) {
    let s: &Segment = match seg {
        Register::ES => &cpu.es,
        Register::CS => &cpu.cs,
        Register::SS => &cpu.ss,
        Register::FS => &cpu.fs,
        Register::GS => &cpu.gs,
        _ => &cpu.ds,
    };
    (s.base, seg == Register::SS)
}

/// seg:ea as a linear address: 64-bit mode adds only FS/GS bases and checks the canonical form
/// (#SS(0) for SS), other modes wrap at 4 GiB.
fn linear(cpu: &CpuState, seg: Register, ea: u64) -> Result<u64, Exception> {
    let (base, stack) = seg_base(cpu, seg);
    if cpu.mode() == CpuMode::Long64 {
        let a = if matches!(seg, Register::FS | Register::GS) {
            ea.wrapping_add(base)
        } else {
            ea
        };
        if !is_canonical(a) {
            return Err(Exception::Cpu {
                vector: if stack { SS } else { GP },
                error: Some(0),
            });
        }
        Ok(a)
    } else {
        Ok(ea.wrapping_add(base) & 0xffff_ffff)
    }
}

/// #AC(0) for a misaligned element when alignment checking is on (CR0.AM, CPL 3, RFLAGS.AC).
fn check_alignment(cpu: &CpuState, addr: u64, size: u8) -> Result<(), Exception> {
    if size > 1
        && sem::alignment_checks(cpu)
        && cpu.rflags & rflags::AC != 0
        && addr & (u64::from(size) - 1) != 0
    {
        return Err(Exception::Cpu {
            vector: AC,
            error: Some(0),
        });
    }
    Ok(())
}

/// INS and OUTS, with REP.
///
/// The I/O permission check comes first (also for a zero count). A REP form runs up to
/// [`REP_IO_BATCH`] elements per call: when the count is exhausted RIP moves past the
/// instruction, otherwise it stays on it (the monitor re-executes it after looking at
/// interrupts) and rCX/rSI/rDI hold the progress. A fault in the first element of a call is
/// returned with the state unchanged; a fault in a later one ends the call successfully with
/// the earlier elements done and RIP on the instruction, so re-execution raises it precisely.
/// INS probes its destination (read and write back) before reading the port, so a page fault
/// never loses a port read.
fn string_io(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let unimpl = Exception::Unimplemented(insn.mnemonic());
    let is_in = matches!(
        insn.mnemonic(),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd
    );
    let abits = string_address_bits(insn).ok_or(unimpl)?;
    let size = insn.memory_size().size() as u8;
    if !matches!(size, 1 | 2 | 4) {
        return Err(unimpl);
    }
    let port = cpu.gpr[reg::RDX] as u16;
    check_io(cpu, mem, port, size)?;
    let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let amask = mask(abits);
    let step = if cpu.rflags & rflags::DF != 0 {
        (u64::from(size)).wrapping_neg()
    } else {
        u64::from(size)
    };
    let n = usize::from(size);
    let (index, seg) = if is_in {
        (reg::RDI, Register::ES)
    } else {
        (reg::RSI, insn.memory_segment())
    };
    let mut first = true;
    for _ in 0..REP_IO_BATCH {
        if rep && cpu.gpr[reg::RCX] & amask == 0 {
            return done(cpu, insn, Effect::Next);
        }
        let ea = cpu.gpr[index] & amask;
        let element = (|| -> Result<(), Exception> {
            let addr = linear(cpu, seg, ea)?;
            check_alignment(cpu, addr, size)?;
            let mut buf = [0u8; 4];
            mem.read(addr, &mut buf[..n])?;
            if is_in {
                mem.write(addr, &buf[..n])?;
                let v = bus.port_in(port, size);
                mem.write(addr, &v.to_le_bytes()[..n])?;
            } else {
                bus.port_out(port, size, u32::from_le_bytes(buf));
            }
            Ok(())
        })();
        match element {
            Ok(()) => {}
            Err(e) if first => return Err(e),
            // Earlier elements are done: stop here, the re-execution faults precisely.
            Err(_) => return Ok(Effect::Next),
        }
        first = false;
        write_bits(cpu, index, abits, ea.wrapping_add(step));
        if !rep {
            return done(cpu, insn, Effect::Next);
        }
        let count = cpu.gpr[reg::RCX] & amask;
        write_bits(cpu, reg::RCX, abits, count.wrapping_sub(1));
    }
    if cpu.gpr[reg::RCX] & amask == 0 {
        return done(cpu, insn, Effect::Next);
    }
    Ok(Effect::Next)
}

// ---------------------------------------------------------------------------------------------
// Interrupt flag, CPUID, time stamps, TLB

/// CLI/STI: real mode always; protected mode when CPL <= IOPL; virtual-8086 mode when IOPL is
/// 3 (VME/PVI are not advertised); else #GP(0). STI that sets IF opens an interrupt shadow.
fn interrupt_flag(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    let allowed = match cpu.mode() {
        CpuMode::Real => true,
        CpuMode::Virtual8086 => iopl(cpu) == 3,
        _ => cpu.cpl() <= iopl(cpu),
    };
    if !allowed {
        return Err(gp0());
    }
    if insn.mnemonic() == Mnemonic::Cli {
        cpu.rflags &= !rflags::IF;
        return done(cpu, insn, Effect::Next);
    }
    let was_set = cpu.rflags & rflags::IF != 0;
    cpu.rflags |= rflags::IF;
    done(
        cpu,
        insn,
        if was_set {
            Effect::Next
        } else {
            Effect::Shadow
        },
    )
}

/// CPUID from [`model`]; the APIC bit reads 0 while IA32_APIC_BASE disables the APIC.
fn cpuid(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    let leaf = cpu.gpr[reg::RAX] as u32;
    let sub = cpu.gpr[reg::RCX] as u32;
    let mut r = model().cpuid(leaf, sub);
    if cpu.apic_base & APIC_BASE_ENABLE == 0 && (leaf == 1 || leaf == 0x8000_0001) {
        r[3] &= !(1 << Feature::Apic.location().bit);
    }
    for (i, v) in [reg::RAX, reg::RBX, reg::RCX, reg::RDX].into_iter().zip(r) {
        cpu.gpr[i] = u64::from(v);
    }
    done(cpu, insn, Effect::Next)
}

/// RDTSC/RDTSCP: #GP(0) when CR4.TSD is set and CPL > 0; RDTSCP also loads ECX = TSC_AUX.
fn rdtsc(
    cpu: &mut CpuState,
    bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    let rdtscp = insn.mnemonic() == Mnemonic::Rdtscp;
    if rdtscp && !model().has(Feature::Rdtscp) {
        return Err(ud());
    }
    if cpu.cr4 & ctl::CR4_TSD != 0 && cpu.cpl() != 0 {
        return Err(gp0());
    }
    let aux = cpu.msr(idx::TSC_AUX).unwrap_or(0) & 0xffff_ffff;
    set_edx_eax(cpu, bus.tsc());
    if rdtscp {
        cpu.gpr[reg::RCX] = aux;
    }
    done(cpu, insn, Effect::Next)
}

/// INVLPG: CPL 0; the linear address of the operand (no memory access). A non-canonical
/// address invalidates nothing and does not fault.
fn invlpg(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if insn.op0_kind() != OpKind::Memory {
        return Err(ud());
    }
    cpl0(cpu)?;
    let ea = {
        let mut it = Interp::new(cpu, mem);
        operand::effective_address(&mut it, insn, None)?
    };
    match linear(cpu, insn.memory_segment(), ea) {
        Ok(a) => done(cpu, insn, Effect::Flush(TlbFlush::Page(a))),
        Err(_) => done(cpu, insn, Effect::Next),
    }
}

// ---------------------------------------------------------------------------------------------
// Fast system calls

/// A flat 4 GiB code segment of privilege `dpl`, 64-bit (L=1) or 32-bit.
fn flat_code(selector: u16, dpl: u8, long: bool) -> Segment {
    let s = if long {
        Segment::code64(selector)
    } else {
        Segment::flat32(selector, true)
    };
    Segment { dpl, ..s }
}

/// A flat 4 GiB writable data (stack) segment of privilege `dpl`.
fn flat_data(selector: u16, dpl: u8) -> Segment {
    Segment {
        dpl,
        ..Segment::flat32(selector, false)
    }
}

/// RFLAGS bits that exist (bit 1 reads as 1).
const RFLAGS_DEFINED: u64 = 0x003f_7fd5;

/// SYSCALL (AMD): 64-bit and compatibility mode enter 64-bit CS:LSTAR/CSTAR saving RIP in RCX
/// and RFLAGS (RF clear) in R11, masking RFLAGS with SFMASK; legacy mode enters 32-bit
/// CS:STAR[31:0] saving EIP in ECX and clearing VM, IF, RF.
fn syscall(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    if cpu.efer & ctl::EFER_SCE == 0 {
        return Err(ud());
    }
    let star = cpu.msr(idx::STAR).unwrap_or(0);
    let cs_sel = ((star >> 32) as u16) & 0xfffc;
    let ss_sel = cs_sel.wrapping_add(8) & 0xfffc;
    let next = insn.next_ip();
    if cpu.efer & ctl::EFER_LMA != 0 {
        let target = if cpu.mode() == CpuMode::Long64 {
            cpu.msr(idx::LSTAR).unwrap_or(0)
        } else {
            cpu.msr(idx::CSTAR).unwrap_or(0)
        };
        let sfmask = cpu.msr(idx::SFMASK).unwrap_or(0);
        cpu.gpr[reg::RCX] = next;
        cpu.gpr[reg::R11] = cpu.rflags & !rflags::RF;
        cpu.rflags = (cpu.rflags & !sfmask & !rflags::RF) | rflags::FIXED1;
        cpu.cs = flat_code(cs_sel, 0, true);
        cpu.ss = flat_data(ss_sel, 0);
        cpu.rip = target;
    } else {
        cpu.gpr[reg::RCX] = next & 0xffff_ffff;
        cpu.rflags &= !(rflags::VM | rflags::IF | rflags::RF);
        cpu.cs = flat_code(cs_sel, 0, false);
        cpu.ss = flat_data(ss_sel, 0);
        cpu.rip = star & 0xffff_ffff;
    }
    Ok(Effect::Next)
}

/// SYSRET (AMD): #UD without EFER.SCE, #GP(0) outside protected mode or at CPL > 0. From
/// 64-bit mode, REX.W returns to 64-bit code at RCX (not checked for canonical form: on AMD the
/// #GP is raised by the fetch at CPL 3) with RFLAGS = R11 (RF, VM clear); otherwise to 32-bit
/// code at ECX. From legacy or compatibility mode it returns to 32-bit code and sets IF.
fn sysret(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    if cpu.efer & ctl::EFER_SCE == 0 {
        return Err(ud());
    }
    if cpu.cr0 & ctl::CR0_PE == 0 || cpu.cpl() != 0 {
        return Err(gp0());
    }
    let base = (cpu.msr(idx::STAR).unwrap_or(0) >> 48) as u16;
    let ss_sel = base.wrapping_add(8) | 3;
    if cpu.mode() == CpuMode::Long64 {
        if insn.code() == Code::Sysretq {
            cpu.cs = flat_code(base.wrapping_add(16) | 3, 3, true);
            cpu.rip = cpu.gpr[reg::RCX];
        } else {
            cpu.cs = flat_code(base | 3, 3, false);
            cpu.rip = cpu.gpr[reg::RCX] & 0xffff_ffff;
        }
        cpu.rflags =
            (cpu.gpr[reg::R11] & RFLAGS_DEFINED & !(rflags::RF | rflags::VM)) | rflags::FIXED1;
    } else {
        cpu.cs = flat_code(base | 3, 3, false);
        cpu.rip = cpu.gpr[reg::RCX] & 0xffff_ffff;
        cpu.rflags |= rflags::IF;
    }
    cpu.ss = flat_data(ss_sel, 3);
    Ok(Effect::Next)
}

/// SYSENTER (AMD: legacy mode only): #UD in long mode, #GP(0) in real mode or with a null
/// SYSENTER_CS; enters flat 32-bit CS:SYSENTER_EIP, SS:SYSENTER_ESP at CPL 0, clearing VM,
/// IF and RF.
fn sysenter(cpu: &mut CpuState) -> Result<Effect, Exception> {
    if cpu.efer & ctl::EFER_LMA != 0 {
        return Err(ud());
    }
    let cs = cpu.msr(idx::SYSENTER_CS).unwrap_or(0) as u16;
    if cpu.cr0 & ctl::CR0_PE == 0 || cs & 0xfffc == 0 {
        return Err(gp0());
    }
    let esp = cpu.msr(idx::SYSENTER_ESP).unwrap_or(0) & 0xffff_ffff;
    let eip = cpu.msr(idx::SYSENTER_EIP).unwrap_or(0) & 0xffff_ffff;
    cpu.rflags &= !(rflags::VM | rflags::IF | rflags::RF);
    cpu.cs = flat_code(cs & 0xfffc, 0, false);
    cpu.ss = flat_data(cs.wrapping_add(8) & 0xfffc, 0);
    cpu.gpr[reg::RSP] = esp;
    cpu.rip = eip;
    Ok(Effect::Next)
}

/// SYSEXIT (AMD: legacy mode only): #UD in long mode, #GP(0) in real mode, at CPL > 0 or with
/// a null SYSENTER_CS; returns to flat 32-bit code at CPL 3 with EIP = EDX, ESP = ECX.
fn sysexit(cpu: &mut CpuState) -> Result<Effect, Exception> {
    if cpu.efer & ctl::EFER_LMA != 0 {
        return Err(ud());
    }
    let cs = cpu.msr(idx::SYSENTER_CS).unwrap_or(0) as u16;
    if cpu.cr0 & ctl::CR0_PE == 0 || cpu.cpl() != 0 || cs & 0xfffc == 0 {
        return Err(gp0());
    }
    cpu.cs = flat_code(cs.wrapping_add(16) | 3, 3, false);
    cpu.ss = flat_data(cs.wrapping_add(24) | 3, 3);
    cpu.gpr[reg::RSP] = cpu.gpr[reg::RCX] & 0xffff_ffff;
    cpu.rip = cpu.gpr[reg::RDX] & 0xffff_ffff;
    Ok(Effect::Next)
}

/// SWAPGS: 64-bit mode only (#UD), CPL 0 (#GP(0)); exchanges GS.base and KERNEL_GS_BASE.
fn swapgs(cpu: &mut CpuState, insn: &Instruction) -> Result<Effect, Exception> {
    if cpu.mode() != CpuMode::Long64 {
        return Err(ud());
    }
    cpl0(cpu)?;
    let kernel = cpu.msr(idx::KERNEL_GS_BASE).unwrap_or(0);
    let user = cpu.gs.base;
    cpu.set_msr(idx::KERNEL_GS_BASE, user);
    cpu.gs.base = kernel;
    done(cpu, insn, Effect::Next)
}

// ---------------------------------------------------------------------------------------------
// BOUND

/// BOUND: #UD in 64-bit mode; #BR when the signed index is below the lower or above the upper
/// bound read from memory.
fn bound(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if cpu.mode() == CpuMode::Long64 || insn.op1_kind() != OpKind::Memory {
        return Err(ud());
    }
    let bits = if insn.code() == Code::Bound_r16_m1616 {
        16
    } else {
        32
    };
    let addr = mem_linear(cpu, mem, insn)?;
    let n = (bits / 8) as usize;
    let mut buf = [0u8; 8];
    mem.read(addr, &mut buf[..2 * n])?;
    let sext = |v: u64| ((v << (64 - bits)) as i64) >> (64 - bits);
    let field = |i: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&buf[i * n..(i + 1) * n]);
        sext(u64::from_le_bytes(b))
    };
    let index = sext(read_reg(cpu, insn.op0_register())?);
    if index < field(0) || index > field(1) {
        return Err(Exception::cpu(BR));
    }
    done(cpu, insn, Effect::Next)
}
