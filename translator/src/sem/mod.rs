//! The x86 instruction semantics, written once and shared by every execution tier.
//!
//! Each instruction is a generic function over an [`Emitter`]: the interpreter tier
//! ([`crate::interp`]) implements it with plain `u64` values, the Cranelift tier will implement it
//! by emitting IR. All x86 knowledge (operand widths, partial registers, flags, fault checks)
//! lives here; an emitter only provides 64-bit lane operations, registers, memory and structured
//! control flow. Arithmetic flags are lazy ([`flags`]).
//!
//! # Precise exceptions
//! A fault must leave the architectural state exactly as at the start of the instruction. The
//! rule every semantics function follows: **all checks that can fault (#DE, #GP/#SS for
//! non-canonical addresses, #AC, memory accesses) happen before the first architectural
//! write**, and the writes come in the order memory stores, then general registers, then flags,
//! then RIP. Instructions with several stores (CALL = push + jump, XCHG with memory, ENTER,
//! CMPXCHG16B) resolve and check every address and load every input first, so only the first
//! store can fault. Lazy-flag descriptors are emitter-side data and are restored by the tier on
//! a fault. One deliberate exception, matching the CPU: ENTER's #AC on a misaligned new stack
//! top comes after the frame is stored (registers are still unchanged).
//!
//! Every data access goes through [`operand::load`]/[`operand::store`], which hold the #AC
//! check (CR0.AM and CPL 3 at translation time, [`Emitter::alignment_checks`]; RFLAGS.AC at
//! run time).
//!
//! # Coverage (this increment)
//! - Data: MOV (GPR forms), MOVZX, MOVSX, MOVSXD, LEA, XCHG, BSWAP, MOVBE, XLAT, CMOVcc, SETcc.
//! - ALU: ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST, INC, DEC, NEG, NOT.
//! - Exchanges: XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B (#GP(0) unless 16-byte aligned); LOCK is
//!   accepted (one CPU: atomic by construction).
//! - Shifts: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD (count masking, counts 0 and 1).
//! - MUL, IMUL (1/2/3 operands), DIV, IDIV (#DE on zero divisor and quotient overflow).
//! - Control: JMP, Jcc, CALL, RET (near, relative, indirect, `ret imm16`), JRCXZ/JECXZ/JCXZ,
//!   LOOP/LOOPE/LOOPNE; #GP(0) on a non-canonical target, checked before any write.
//! - Stack: PUSH, POP (GPR, memory, immediate), PUSHA/POPA, ENTER (any nesting level), LEAVE,
//!   PUSHF, POPF
//!   (CPL/IOPL rules for IF and IOPL; virtual-8086 POPF not modelled).
//! - Strings: MOVS, STOS, LODS, CMPS, SCAS with REP/REPE/REPNE, DF and 16/32/64-bit address
//!   sizes, one element per execution ([`string`]).
//! - Misc: CBW/CWDE/CDQE, CWD/CDQ/CQO, LAHF, SAHF, SALC (outside 64-bit mode), CLI (IOPL
//!   rule; STI stays a trap for its interrupt shadow), CLC, STC, CMC, CLD, STD, NOP, PAUSE,
//!   PREFETCH/PREFETCHW (hints), ENDBR32/ENDBR64/RDSSP (NOPs without CET), UD2
//!   (#UD), INT3 (#BP as a trap: RIP after the instruction).
//! - Bits: BT/BTS/BTR/BTC (register and memory, memory bit offsets beyond the operand), BSF,
//!   BSR, TZCNT, LZCNT, POPCNT; BMI1: ANDN, BEXTR, BLSI, BLSMSK, BLSR ([`bmi`]).
//! - BCD: DAA, DAS, AAA, AAS, AAM (#DE for base 0), AAD, outside 64-bit mode ([`bcd`]).
//! - #AC alignment checks on every data access (stack, strings, explicit operands).
//!
//! Everything else returns [`Exception::Unimplemented`] with the mnemonic, so gaps are visible.
//! Left for the next increments: segment-register moves and pushes, far transfers, the system
//! instructions (trapped to the monitor), segment limit checks, LOCK atomicity for SMP.

pub mod alu;
pub mod atomic;
pub mod bcd;
pub mod bits;
pub mod bmi;
pub mod control;
pub mod data;
pub mod emit;
pub mod flags;
pub mod misc;
pub mod muldiv;
pub mod operand;
pub mod shift;
pub mod stack;
pub mod string;

pub use emit::{BinOp, Emitter, Seg, UnOp};
pub use flags::{CcOp, Flag, FlagState, Lazy};

use crate::mem::MemFault;
use crate::state::{ctl, CpuState};
use iced_x86::{Instruction, Mnemonic};

/// Whether `cpu`'s data accesses are alignment-checked when RFLAGS.AC is set: CR0.AM = 1 and
/// CPL = 3 (SDM Vol. 3 §6.15). The translation-time half of [`Emitter::alignment_checks`].
pub fn alignment_checks(cpu: &CpuState) -> bool {
    cpu.cr0 & ctl::CR0_AM != 0 && cpu.cpl() == 3
}

/// #DE, divide error.
pub const DE: u8 = 0;
/// #BP, breakpoint (INT3), a trap.
pub const BP: u8 = 3;
/// #OF, overflow (INTO), a trap.
pub const OF: u8 = 4;
/// #UD, invalid opcode.
pub const UD: u8 = 6;
/// #SS, stack-segment fault.
pub const SS: u8 = 12;
/// #GP, general protection.
pub const GP: u8 = 13;
/// #PF, page fault.
pub const PF: u8 = 14;
/// #AC, alignment check (error code 0).
pub const AC: u8 = 17;

/// Why an instruction did not complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exception {
    /// An architectural exception for the guest (vector and error code).
    #[error("guest exception {vector} (error code {error:?})")]
    Cpu {
        /// Exception vector.
        vector: u8,
        /// Error code pushed with it, if the vector has one.
        error: Option<u32>,
    },
    /// A page fault: the linear address for CR2 and the #PF error code (SDM Vol. 3 §4.7).
    #[error("page fault at {linear:#x} (error code {error:#x})")]
    PageFault {
        /// The linear address that could not be accessed.
        linear: u64,
        /// The #PF error code (P, W/R, U/S, RSVD, I/D bits).
        error: u32,
    },
    /// A privileged or sensitive instruction the monitor executes ([`crate::system`]): the
    /// tiers stop before it with the state precise at its start.
    #[error("system instruction {0:?} (executed by the monitor)")]
    System(Mnemonic),
    /// The translator does not implement this instruction yet.
    #[error("instruction not implemented: {0:?}")]
    Unimplemented(Mnemonic),
    /// A guest-physical access that nothing backs (the monitor decides what it means).
    #[error(transparent)]
    Memory(#[from] MemFault),
    /// A semantics bug the tier detected; never caused by guest input.
    #[error("translator internal error: {0}")]
    Internal(&'static str),
}

impl Exception {
    /// A guest exception without error code.
    pub fn cpu(vector: u8) -> Self {
        Exception::Cpu {
            vector,
            error: None,
        }
    }

    /// Whether this is a trap, reported with RIP after the instruction (#BP, #OF).
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Exception::Cpu {
                vector: BP | OF,
                ..
            }
        )
    }
}

/// Executes (or, in a compiling tier, emits) one decoded instruction.
///
/// Falls through to the next instruction unless the semantics called [`Emitter::set_rip`].
/// A privileged or sensitive instruction ([`crate::system::is_system`]) gives
/// [`Exception::System`] before any change: the monitor runs it.
pub fn execute<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    match dispatch(e, insn) {
        // Only the error path pays for the classification: every system instruction either
        // has no arm below or fails operand resolution (segment/control/debug registers)
        // before its first write; far JMP/CALL are caught in their arms.
        Err(Exception::Unimplemented(m)) if crate::system::is_system(insn) => {
            Err(Exception::System(m))
        }
        r => r,
    }
}

fn dispatch<E: Emitter>(e: &mut E, insn: &Instruction) -> Result<(), Exception> {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Jmp | M::Call if insn.is_jmp_far_indirect() || insn.is_call_far_indirect() => {
            Err(Exception::System(insn.mnemonic()))
        }
        M::Mov => data::mov(e, insn),
        M::Movzx => data::movx(e, insn, false),
        M::Movsx | M::Movsxd => data::movx(e, insn, true),
        M::Lea => data::lea(e, insn),
        M::Xchg => data::xchg(e, insn),
        M::Bswap => data::bswap(e, insn),
        M::Movbe => data::movbe(e, insn),
        M::Xadd => atomic::xadd(e, insn),
        M::Cmpxchg => atomic::cmpxchg(e, insn),
        M::Cmpxchg8b | M::Cmpxchg16b => atomic::cmpxchg_wide(e, insn),
        M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => data::cmov(e, insn),
        M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg => data::setcc(e, insn),
        M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
            alu::binary(e, insn)
        }
        M::Inc | M::Dec => alu::inc_dec(e, insn),
        M::Neg => alu::neg(e, insn),
        M::Not => alu::not(e, insn),
        M::Shl | M::Sal | M::Shr | M::Sar => shift::shift(e, insn),
        M::Rol | M::Ror => shift::rotate(e, insn),
        M::Rcl | M::Rcr => shift::rotate_carry(e, insn),
        M::Shld | M::Shrd => shift::double(e, insn),
        M::Mul | M::Imul => muldiv::mul(e, insn),
        M::Div | M::Idiv => muldiv::div(e, insn),
        M::Jmp => control::jmp(e, insn),
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => control::jcc(e, insn),
        M::Jrcxz | M::Jecxz | M::Jcxz => control::jcxz(e, insn),
        M::Loop | M::Loope | M::Loopne => control::loop_(e, insn),
        M::Call => control::call(e, insn),
        M::Ret => control::ret(e, insn),
        M::Push => stack::push(e, insn),
        M::Pop => stack::pop(e, insn),
        M::Leave => stack::leave(e, insn),
        M::Pusha | M::Pushad => stack::pusha(e, insn),
        M::Popa | M::Popad => stack::popa(e, insn),
        M::Enter => stack::enter(e, insn),
        M::Xlatb => data::xlat(e, insn),
        M::Pushf | M::Pushfd | M::Pushfq => stack::pushf(e, insn),
        M::Popf | M::Popfd | M::Popfq => stack::popf(e, insn),
        M::Cbw | M::Cwde | M::Cdqe => misc::sign_extend_acc(e, insn),
        M::Cwd | M::Cdq | M::Cqo => misc::sign_fill_dx(e, insn),
        M::Lahf => misc::lahf(e),
        M::Salc => misc::salc(e),
        M::Cli => misc::cli(e),
        M::Sahf => misc::sahf(e),
        M::Clc | M::Stc | M::Cmc | M::Cld | M::Std => misc::flag_op(e, insn),
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq => string::string(e, insn),
        M::Daa | M::Das => bcd::daa_das(e, insn),
        M::Aaa | M::Aas => bcd::aaa_aas(e, insn),
        M::Aam | M::Aad => bcd::aam_aad(e, insn),
        // PREFETCH/PREFETCHW (0F 0D) are hints: no access, no fault, no architectural effect.
        // ENDBR32/64 and RDSSP live in the hint-NOP space (0F 1E) and are NOPs on a CPU
        // without CET, which the model does not advertise (static glibc puts ENDBR64 at every
        // function entry).
        // The reserved NOPs (0F 18..1F), CLDEMOTE and PREFETCHIT0/1 are hint NOPs too, and
        // AMD runs 0F 0D /2 (iced: PREFETCHWT1) as PREFETCH; the decoder's CPUID gate
        // (`system::cpuid::CpuidGate::admits`) decides which of these encodings exist.
        M::Nop
        | M::Pause
        | M::Prefetch
        | M::Prefetchw
        | M::Prefetchwt1
        | M::Reservednop
        | M::Cldemote
        | M::Prefetchit0
        | M::Prefetchit1
        | M::Endbr32
        | M::Endbr64
        | M::Rdsspd
        | M::Rdsspq
        // Ordering and cache hints (SSE/SSE2 baseline, advertised): no architectural effect
        // for one CPU and no #NM/#UD from CR0/CR4 (SDM: only the CPUID feature gates them,
        // which the decode-time gate checked). The Linux boot executes ~430k of them; as traps
        // each cost a monitor round trip.
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2 => Ok(()),
        M::Ud0 | M::Ud1 | M::Ud2 => Err(Exception::cpu(UD)),
        M::Int3 => Err(Exception::cpu(BP)),
        M::Into | M::Int | M::Int1 => Err(Exception::System(insn.mnemonic())),
        M::Bt | M::Bts | M::Btr | M::Btc => bits::bt(e, insn),
        M::Bsf | M::Bsr => bits::bsf_bsr(e, insn),
        M::Tzcnt | M::Lzcnt => bits::tzcnt_lzcnt(e, insn),
        M::Popcnt => bits::popcnt(e, insn),
        M::Andn => bmi::andn(e, insn),
        M::Bextr => bmi::bextr(e, insn),
        M::Blsi | M::Blsmsk | M::Blsr => bmi::bls(e, insn),
        M::INVALID => Err(Exception::cpu(UD)),
        m => Err(Exception::Unimplemented(m)),
    }
}

/// Operand width in bits of operand 0 of `insn` (a register or memory operand).
pub(crate) fn width0<E: Emitter>(
    insn: &Instruction,
    loc: &operand::Loc<E::V>,
) -> Result<u32, Exception> {
    loc.bits().ok_or(Exception::Unimplemented(insn.mnemonic()))
}
