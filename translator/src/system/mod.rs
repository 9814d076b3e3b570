//! The full-system half of the translator: what the monitor does when the tiers stop.
//!
//! The tiers run unprivileged, non-sensitive code. Every privileged or sensitive instruction
//! (control and debug registers, descriptor tables, segment loads, far transfers, port I/O,
//! interrupt flag, HLT, MSRs, CPUID, time stamps, fast system calls, software interrupts) is
//! rewritten into a trap: the semantics returns [`Exception::System`] with the state precise at
//! the instruction's start, and the monitor runs it here with [`execute`], counting it by
//! [`TrapKind`]. Faults and interrupts are delivered through the IVT/IDT by [`delivery`].
//!
//! Modules:
//! - [`segment`]: descriptor tables, segment loads with their checks, far JMP/CALL/RET through
//!   call gates, IRET, LLDT/LTR/SLDT/STR, LAR/LSL/VERR/VERW, ARPL.
//! - [`delivery`]: exception and interrupt delivery in real, protected and long mode (IVT, IDT
//!   gates, privilege switches through the TSS, IST, error codes, #DF, triple fault).
//! - [`privileged`]: the rest of the system instructions (CRs, DRs, GDTR/IDTR, port I/O with
//!   IOPL and the TSS bitmap, CLI/STI, HLT, MSRs, CPUID, RDTSC, INVLPG, SYSCALL/SYSRET,
//!   SYSENTER/SYSEXIT, SWAPGS, INT n/INT3/INTO/INT1).
//! - [`cpuid`]: the CPU model the BT advertises (and so implements).
//! - [`msr`]: the model-specific registers RDMSR/WRMSR reach.

pub mod cpuid;
pub mod delivery;
pub mod msr;
pub mod privileged;
pub mod segment;

use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::CpuState;
use iced_x86::{CpuidFeature, Instruction, Mnemonic, OpKind, Register};

/// Why the monitor ran a guest instruction itself, in one vocabulary counted per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrapKind {
    /// IN, OUT, INS, OUTS.
    PortIo,
    /// MOV to or from CR0/CR2/CR3/CR4/CR8, LMSW, SMSW, CLTS.
    ControlRegister,
    /// MOV to or from DR0-DR7.
    DebugRegister,
    /// RDMSR, WRMSR.
    Msr,
    /// CPUID.
    Cpuid,
    /// RDTSC, RDTSCP, RDPMC.
    TimeStamp,
    /// HLT.
    Halt,
    /// CLI, STI.
    InterruptFlag,
    /// LGDT, LIDT, SGDT, SIDT, LLDT, SLDT, LTR, STR.
    DescriptorTable,
    /// MOV/POP to a segment register, PUSH of one, LDS/LES/LFS/LGS/LSS, LAR/LSL/VERR/VERW, ARPL.
    SegmentLoad,
    /// Far JMP, far CALL, far RET.
    FarTransfer,
    /// IRET/IRETD/IRETQ.
    InterruptReturn,
    /// INT n, INT3, INTO, INT1.
    SoftwareInterrupt,
    /// SYSCALL, SYSRET, SYSENTER, SYSEXIT, SWAPGS.
    FastSystemCall,
    /// INVLPG, WBINVD, INVD.
    CacheTlb,
    /// x87, MMX, SSE instructions run by the monitor's floating-point unit.
    FloatingPoint,
    /// Anything else the monitor runs (XGETBV, MONITOR/MWAIT, ...).
    Other,
}

impl TrapKind {
    /// Every kind, in display order.
    pub const ALL: [TrapKind; 17] = [
        TrapKind::PortIo,
        TrapKind::ControlRegister,
        TrapKind::DebugRegister,
        TrapKind::Msr,
        TrapKind::Cpuid,
        TrapKind::TimeStamp,
        TrapKind::Halt,
        TrapKind::InterruptFlag,
        TrapKind::DescriptorTable,
        TrapKind::SegmentLoad,
        TrapKind::FarTransfer,
        TrapKind::InterruptReturn,
        TrapKind::SoftwareInterrupt,
        TrapKind::FastSystemCall,
        TrapKind::CacheTlb,
        TrapKind::FloatingPoint,
        TrapKind::Other,
    ];

    /// Stable snake_case name for `--stats` and JSON.
    pub fn name(self) -> &'static str {
        match self {
            TrapKind::PortIo => "port_io",
            TrapKind::ControlRegister => "control_register",
            TrapKind::DebugRegister => "debug_register",
            TrapKind::Msr => "msr",
            TrapKind::Cpuid => "cpuid",
            TrapKind::TimeStamp => "time_stamp",
            TrapKind::Halt => "halt",
            TrapKind::InterruptFlag => "interrupt_flag",
            TrapKind::DescriptorTable => "descriptor_table",
            TrapKind::SegmentLoad => "segment_load",
            TrapKind::FarTransfer => "far_transfer",
            TrapKind::InterruptReturn => "interrupt_return",
            TrapKind::SoftwareInterrupt => "software_interrupt",
            TrapKind::FastSystemCall => "fast_system_call",
            TrapKind::CacheTlb => "cache_tlb",
            TrapKind::FloatingPoint => "floating_point",
            TrapKind::Other => "other",
        }
    }
}

/// The machine as the system instructions see it: I/O ports and the time-stamp counter.
pub trait SystemBus {
    /// Reads `size` (1, 2 or 4) bytes from I/O port `port`.
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    /// Writes the low `size` (1, 2 or 4) bytes of `value` to I/O port `port`.
    fn port_out(&mut self, port: u16, size: u8, value: u32);
    /// The guest's time-stamp counter now.
    fn tsc(&mut self) -> u64;
    /// The guest wrote IA32_TSC: the counter continues from `value`.
    fn set_tsc(&mut self, value: u64);
}

/// How an event entered the CPU: decides the gate DPL check, what RIP the frame holds and how
/// a fault during delivery escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A CPU exception (fault or trap; RIP in the state is already the one to push).
    Exception,
    /// A maskable external interrupt from the interrupt controller.
    External,
    /// A non-maskable interrupt.
    Nmi,
    /// INT n: the gate's DPL must be >= CPL, else #GP(vector * 8 + 2).
    Software,
    /// INT3 and INTO: like INT n for the DPL check, but an exception for the guest.
    SoftwareException,
    /// INT1 (ICEBP): #DB without the DPL check.
    PrivilegedSoftware,
}

/// An exception or interrupt to deliver through the IVT or IDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Vector (0-255).
    pub vector: u8,
    /// Error code to push, if the vector has one.
    pub error: Option<u32>,
    /// How it arose.
    pub kind: EventKind,
}

impl Event {
    /// The event a guest exception raised by an instruction becomes (#PF's CR2 is the
    /// monitor's to set before delivery). `None` for exceptions that are not guest events.
    pub fn from_exception(exc: &Exception) -> Option<Event> {
        match *exc {
            Exception::Cpu { vector, error } => Some(Event {
                vector,
                error,
                kind: EventKind::Exception,
            }),
            Exception::PageFault { error, .. } => Some(Event {
                vector: crate::sem::PF,
                error: Some(error),
                kind: EventKind::Exception,
            }),
            _ => None,
        }
    }
}

/// Which cached translations of linear addresses a system instruction made stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbFlush {
    /// Everything, global pages included (CR4.PGE/PAE/PSE changes, CR0.PG/WP changes).
    All,
    /// Everything except global pages (a MOV to CR3).
    NonGlobal,
    /// The page holding this linear address (INVLPG).
    Page(u64),
}

/// What the monitor must do after a system instruction completed (RIP is past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more: go on.
    Next,
    /// Interrupts (and debug traps) are inhibited until after the next instruction: STI that
    /// set IF, MOV SS, POP SS.
    Shadow,
    /// HLT: wait for an interrupt (or NMI) before going on.
    Halt,
    /// Drop these cached linear translations, then go on.
    Flush(TlbFlush),
    /// Deliver this event now (INT n, INT3, INTO, INT1); RIP is past the instruction.
    Deliver(Event),
}

/// Whether the monitor, not the tiers, executes `insn` (the tiers raise [`Exception::System`]).
pub fn is_system(insn: &Instruction) -> bool {
    use Mnemonic as M;
    if is_floating_point(insn) {
        return true;
    }
    match insn.mnemonic() {
        M::Mov | M::Push | M::Pop => (0..insn.op_count()).any(|i| {
            insn.op_kind(i) == OpKind::Register && is_special_register(insn.op_register(i))
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
        | M::In
        | M::Out
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Outsb
        | M::Outsw
        | M::Outsd
        | M::Cli
        | M::Sti
        | M::Hlt
        | M::Lgdt
        | M::Lidt
        | M::Sgdt
        | M::Sidt
        | M::Lldt
        | M::Sldt
        | M::Ltr
        | M::Str
        | M::Smsw
        | M::Lmsw
        | M::Clts
        | M::Invlpg
        | M::Wbinvd
        | M::Invd
        | M::Rdmsr
        | M::Wrmsr
        | M::Cpuid
        | M::Rdtsc
        | M::Rdtscp
        | M::Rdpmc
        | M::Syscall
        | M::Sysret
        | M::Sysretq
        | M::Sysenter
        | M::Sysexit
        | M::Sysexitq
        | M::Swapgs
        | M::Int
        | M::Into
        | M::Int1
        | M::Lds
        | M::Les
        | M::Lfs
        | M::Lgs
        | M::Lss
        | M::Lar
        | M::Lsl
        | M::Verr
        | M::Verw
        | M::Arpl
        | M::Xgetbv
        | M::Xsetbv
        | M::Monitor
        | M::Mwait
        | M::Rdfsbase
        | M::Rdgsbase
        | M::Wrfsbase
        | M::Wrgsbase
        | M::Rdrand
        | M::Rdseed
        | M::Rdpid
        | M::Bound => true,
        _ => false,
    }
}

/// Segment, control and debug registers: operands that make MOV/PUSH/POP a system instruction.
fn is_special_register(r: Register) -> bool {
    r.is_segment_register() || r.is_cr() || r.is_dr()
}

/// Whether `insn` is an x87, MMX or SSE-family instruction (run by the monitor's FPU).
pub fn is_floating_point(insn: &Instruction) -> bool {
    use CpuidFeature as F;
    insn.cpuid_features().iter().any(|f| {
        matches!(
            f,
            F::FPU
                | F::FPU287
                | F::FPU387
                | F::MMX
                | F::SSE
                | F::SSE2
                | F::SSE3
                | F::SSSE3
                | F::SSE4_1
                | F::SSE4_2
                | F::FXSR
        )
    }) || matches!(insn.mnemonic(), Mnemonic::Wait)
}

/// The trap kind `insn` is counted as.
pub fn trap_kind(insn: &Instruction) -> TrapKind {
    use Mnemonic as M;
    if is_floating_point(insn) {
        return TrapKind::FloatingPoint;
    }
    match insn.mnemonic() {
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            TrapKind::PortIo
        }
        M::Smsw | M::Lmsw | M::Clts => TrapKind::ControlRegister,
        M::Mov | M::Push | M::Pop => {
            let regs: Vec<Register> = (0..insn.op_count())
                .filter(|&i| insn.op_kind(i) == OpKind::Register)
                .map(|i| insn.op_register(i))
                .collect();
            if regs.iter().any(|r| r.is_cr()) {
                TrapKind::ControlRegister
            } else if regs.iter().any(|r| r.is_dr()) {
                TrapKind::DebugRegister
            } else {
                TrapKind::SegmentLoad
            }
        }
        M::Rdmsr | M::Wrmsr => TrapKind::Msr,
        M::Cpuid => TrapKind::Cpuid,
        M::Rdtsc | M::Rdtscp | M::Rdpmc => TrapKind::TimeStamp,
        M::Hlt => TrapKind::Halt,
        M::Cli | M::Sti => TrapKind::InterruptFlag,
        M::Lgdt | M::Lidt | M::Sgdt | M::Sidt | M::Lldt | M::Sldt | M::Ltr | M::Str => {
            TrapKind::DescriptorTable
        }
        M::Lds
        | M::Les
        | M::Lfs
        | M::Lgs
        | M::Lss
        | M::Lar
        | M::Lsl
        | M::Verr
        | M::Verw
        | M::Arpl => TrapKind::SegmentLoad,
        M::Jmp | M::Call | M::Retf => TrapKind::FarTransfer,
        M::Iret | M::Iretd | M::Iretq => TrapKind::InterruptReturn,
        M::Int | M::Into | M::Int1 => TrapKind::SoftwareInterrupt,
        M::Syscall
        | M::Sysret
        | M::Sysretq
        | M::Sysenter
        | M::Sysexit
        | M::Sysexitq
        | M::Swapgs => TrapKind::FastSystemCall,
        M::Invlpg | M::Wbinvd | M::Invd => TrapKind::CacheTlb,
        _ => TrapKind::Other,
    }
}

/// Executes the system instruction `insn` at `cpu.rip`.
///
/// On success RIP is past the instruction (or at the far target) and the [`Effect`] says what
/// the monitor does next. On `Err` the state is exactly as before the instruction, and the
/// exception is the guest's to receive (or [`Exception::Unimplemented`]).
pub fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    if is_floating_point(insn) {
        crate::fpu::execute(cpu, mem, insn).map(|()| Effect::Next)
    } else if segment::handles(insn) {
        segment::execute(cpu, mem, insn)
    } else {
        privileged::execute(cpu, mem, bus, insn)
    }
}
