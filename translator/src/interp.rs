//! The first execution tier: an interpreter that runs the shared semantics on plain `u64`s.
//!
//! [`Interp`] implements [`Emitter`] directly over a [`CpuState`] and a [`GuestMem`]: every
//! emitter operation is evaluated at once. Lazy flags live in the interpreter between the
//! instructions of one [`run_block`] call and are folded into `cpu.rflags` before it returns,
//! so callers always see complete RFLAGS. A faulting instruction leaves the state as it was
//! before it (the semantics order writes after every check; the interpreter restores the lazy
//! flag descriptor), with RIP at the instruction, or after it for traps (#BP).

use crate::mem::GuestMem;
use crate::sem::{self, flags, BinOp, Emitter, Exception, FlagState, Seg, UnOp, UD};
use crate::state::{CpuMode, CpuState};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

/// Longest x86 instruction in bytes.
const MAX_INSN_LEN: usize = 15;

/// An [`Emitter`] that computes: the interpreter tier.
pub struct Interp<'a> {
    /// The CPU being run.
    pub cpu: &'a mut CpuState,
    /// Guest memory.
    pub mem: &'a mut dyn GuestMem,
    flags: FlagState<u64>,
    jump: Option<u64>,
    code_bits: u32,
    stack_bits: u32,
    cpl: u8,
    alignment_checks: bool,
    /// A store of the current block hit a page holding translations (self-modifying code).
    code_written: bool,
}

impl<'a> Interp<'a> {
    /// An interpreter for `cpu` in its current mode, with RFLAGS as the flag state.
    pub fn new(cpu: &'a mut CpuState, mem: &'a mut dyn GuestMem) -> Self {
        let code_bits = cpu.code_bits();
        let stack_bits = if code_bits == 64 {
            64
        } else if cpu.mode() != CpuMode::Real && cpu.mode() != CpuMode::Virtual8086 && cpu.ss.db {
            32
        } else {
            16
        };
        let cpl = cpu.cpl();
        let alignment_checks = sem::alignment_checks(cpu);
        Interp {
            cpu,
            mem,
            flags: FlagState::Materialized,
            jump: None,
            code_bits,
            stack_bits,
            cpl,
            alignment_checks,
            code_written: false,
        }
    }

    /// Executes one decoded instruction at `cpu.rip` (its `ip()` must be the current RIP).
    pub fn execute(&mut self, insn: &Instruction) -> Result<(), Exception> {
        let saved = self.flags;
        self.jump = None;
        match sem::execute(self, insn) {
            Ok(()) => {
                self.cpu.rip = self.jump.unwrap_or_else(|| insn.next_ip());
                Ok(())
            }
            Err(exc) => {
                self.flags = saved;
                if exc.is_trap() {
                    self.cpu.rip = insn.next_ip();
                }
                Err(exc)
            }
        }
    }

    /// Folds lazy flags into `cpu.rflags`.
    pub fn sync_flags(&mut self) {
        flags::materialize(self);
    }
}

impl Emitter for Interp<'_> {
    type V = u64;

    fn imm(&mut self, v: u64) -> u64 {
        v
    }

    fn bin(&mut self, op: BinOp, a: u64, b: u64) -> u64 {
        let sh = (b & 63) as u32;
        match op {
            BinOp::Add => a.wrapping_add(b),
            BinOp::Sub => a.wrapping_sub(b),
            BinOp::And => a & b,
            BinOp::Or => a | b,
            BinOp::Xor => a ^ b,
            BinOp::Shl => a << sh,
            BinOp::Shr => a >> sh,
            BinOp::Sar => ((a as i64) >> sh) as u64,
            BinOp::Mul => a.wrapping_mul(b),
            BinOp::UMulHi => ((u128::from(a) * u128::from(b)) >> 64) as u64,
            BinOp::SMulHi => ((i128::from(a as i64) * i128::from(b as i64)) >> 64) as u64,
            // Division by zero never reaches an emitter (the semantics raises #DE first); the
            // checked forms keep a semantics bug from becoming a host panic.
            BinOp::UDiv => a.checked_div(b).unwrap_or(0),
            BinOp::URem => a.checked_rem(b).unwrap_or(0),
            BinOp::SDiv => (a as i64).checked_div(b as i64).unwrap_or(0) as u64,
            BinOp::SRem => (a as i64).checked_rem(b as i64).unwrap_or(0) as u64,
            BinOp::Eq => u64::from(a == b),
            BinOp::Ne => u64::from(a != b),
            BinOp::Ult => u64::from(a < b),
            BinOp::Ule => u64::from(a <= b),
            BinOp::Slt => u64::from((a as i64) < (b as i64)),
        }
    }

    fn un(&mut self, op: UnOp, a: u64) -> u64 {
        match op {
            UnOp::Not => !a,
            UnOp::Neg => a.wrapping_neg(),
            UnOp::Popcnt => u64::from(a.count_ones()),
            UnOp::Ctz => u64::from(a.trailing_zeros()),
            UnOp::Clz => u64::from(a.leading_zeros()),
            UnOp::Bswap => a.swap_bytes(),
        }
    }

    fn select(&mut self, c: u64, a: u64, b: u64) -> u64 {
        if c != 0 {
            a
        } else {
            b
        }
    }

    fn div_wide(&mut self, signed: bool, hi: u64, lo: u64, d: u64) -> (u64, u64, u64) {
        match crate::sem::muldiv::divide_wide(signed, hi, lo, d) {
            Some((q, r)) => (q, r, 0),
            None => (0, 0, 1),
        }
    }

    fn gpr(&mut self, r: usize) -> u64 {
        self.cpu.gpr.get(r).copied().unwrap_or(0)
    }

    fn set_gpr(&mut self, r: usize, v: u64) {
        if let Some(g) = self.cpu.gpr.get_mut(r) {
            *g = v;
        }
    }

    fn rflags(&mut self) -> u64 {
        self.cpu.rflags
    }

    fn set_rflags(&mut self, v: u64) {
        self.cpu.rflags = v;
    }

    fn flag_state(&self) -> FlagState<u64> {
        self.flags
    }

    fn set_flag_state(&mut self, s: FlagState<u64>) {
        self.flags = s;
    }

    fn seg_base(&mut self, s: Seg) -> u64 {
        match s {
            Seg::Es => self.cpu.es.base,
            Seg::Cs => self.cpu.cs.base,
            Seg::Ss => self.cpu.ss.base,
            Seg::Ds => self.cpu.ds.base,
            Seg::Fs => self.cpu.fs.base,
            Seg::Gs => self.cpu.gs.base,
        }
    }

    fn seg_selector(&mut self, s: Seg) -> u64 {
        u64::from(match s {
            Seg::Es => self.cpu.es.selector,
            Seg::Cs => self.cpu.cs.selector,
            Seg::Ss => self.cpu.ss.selector,
            Seg::Ds => self.cpu.ds.selector,
            Seg::Fs => self.cpu.fs.selector,
            Seg::Gs => self.cpu.gs.selector,
        })
    }

    fn set_rip(&mut self, target: u64) {
        self.jump = Some(target);
    }

    fn string_bulk(
        &mut self,
        op: crate::mem::StringOp,
        size: u8,
        src: u64,
        dst: u64,
        count: u64,
        value: u64,
    ) -> u64 {
        self.mem.string_bulk(op, size, src, dst, count, value)
    }

    fn load(&mut self, addr: u64, size: u8) -> Result<u64, Exception> {
        let mut buf = [0u8; 8];
        let n = usize::from(size).min(8);
        self.mem.read(addr, &mut buf[..n])?;
        Ok(u64::from_le_bytes(buf))
    }

    fn load_rmw(&mut self, addr: u64, size: u8) -> Result<u64, Exception> {
        let mut buf = [0u8; 8];
        let n = usize::from(size).min(8);
        self.mem.read_for_write(addr, &mut buf[..n])?;
        Ok(u64::from_le_bytes(buf))
    }

    fn store(&mut self, addr: u64, v: u64, size: u8) -> Result<(), Exception> {
        let n = usize::from(size).min(8);
        self.mem.write(addr, &v.to_le_bytes()[..n])?;
        if self.mem.code_write_pending() {
            self.code_written = true;
        }
        Ok(())
    }

    fn raise(&mut self, cond: u64, exc: Exception) -> Result<(), Exception> {
        if cond != 0 {
            Err(exc)
        } else {
            Ok(())
        }
    }

    fn if_then<F>(&mut self, cond: u64, then: F) -> Result<(), Exception>
    where
        F: FnOnce(&mut Self) -> Result<(), Exception>,
    {
        if cond != 0 {
            then(self)
        } else {
            Ok(())
        }
    }

    fn code_bits(&self) -> u32 {
        self.code_bits
    }

    fn stack_bits(&self) -> u32 {
        self.stack_bits
    }

    fn cpl(&self) -> u8 {
        self.cpl
    }

    fn alignment_checks(&self) -> bool {
        self.alignment_checks
    }
}

/// Decodes the instruction at CS:RIP. Undecodable bytes give #UD; bytes that run into unbacked
/// memory give the memory fault of the first missing byte.
///
/// An instruction the advertised CPU does not have ([`crate::system::cpuid::implemented`]:
/// one of its CPUID features is not advertised) and any VEX/EVEX/XOP encoding in real or
/// virtual-8086 mode (where C4/C5/62/8F with a register ModRM are invalid LES/LDS/BOUND/POP)
/// give #UD as well, so the tiers and the monitor never see it.
pub fn decode(cpu: &CpuState, mem: &mut dyn GuestMem) -> Result<Instruction, Exception> {
    let bits = cpu.code_bits();
    let linear = if bits == 64 {
        cpu.rip
    } else {
        cpu.cs.base.wrapping_add(cpu.rip) & 0xffff_ffff
    };
    let mut buf = [0u8; MAX_INSN_LEN];
    let mut len = MAX_INSN_LEN;
    let mut missing = None;
    if mem.fetch(linear, &mut buf).is_err() {
        // Near the end of backed memory: take the bytes that exist.
        len = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            match mem.fetch(linear.wrapping_add(i as u64), std::slice::from_mut(b)) {
                Ok(()) => len += 1,
                Err(f) => {
                    missing = Some(f);
                    break;
                }
            }
        }
    }
    // The advertised CPU is an AMD: decode as AMD does (a 66h-prefixed near branch in 64-bit
    // mode has a 16-bit target and pushes 2 bytes; Intel ignores the prefix there).
    let mut decoder = Decoder::with_ip(bits, &buf[..len], cpu.rip, DecoderOptions::AMD);
    let insn = decoder.decode();
    match decoder.last_error() {
        DecoderError::None => {
            let legacy = insn.encoding() == iced_x86::EncodingKind::Legacy;
            let real = matches!(cpu.mode(), CpuMode::Real | CpuMode::Virtual8086);
            if (real && !legacy) || !crate::system::cpuid::implemented(&insn) {
                log::debug!(
                    "decode: {insn} at {:#x} does not exist on the advertised CPU: #UD",
                    cpu.rip
                );
                Err(Exception::cpu(UD))
            } else {
                Ok(insn)
            }
        }
        DecoderError::NoMoreBytes => match missing {
            Some(f) => Err(f),
            None => Err(Exception::cpu(UD)),
        },
        _ => Err(Exception::cpu(UD)),
    }
}

/// Fetches, decodes and executes one instruction; RFLAGS is complete afterwards.
pub fn step(cpu: &mut CpuState, mem: &mut dyn GuestMem) -> Result<(), Exception> {
    let insn = decode(cpu, mem)?;
    let mut it = Interp::new(cpu, mem);
    let r = it.execute(&insn);
    it.sync_flags();
    r
}

/// How a [`run_block`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExit {
    /// Instructions that completed.
    pub executed: usize,
    /// The exception that stopped the block, if any (state is at the faulting instruction).
    pub exception: Option<Exception>,
    /// A store hit a page holding translations ([`GuestMem::code_write_pending`]): the engine
    /// collects the written pages before the next dispatch.
    pub code_written: bool,
}

/// Runs pre-decoded instructions in order while RIP follows them, so cold code is decoded once.
///
/// Stops after the last one, at the first instruction whose address is not the current RIP (a
/// branch left the sequence), at an exception, or after an instruction that stored into a page
/// holding translations (the rest of the block may have been rewritten). Lazy flags carry across the instructions and
/// are folded into RFLAGS at the end.
pub fn run_block(cpu: &mut CpuState, mem: &mut dyn GuestMem, insns: &[Instruction]) -> BlockExit {
    let mut it = Interp::new(cpu, mem);
    let mut exit = BlockExit {
        executed: 0,
        exception: None,
        code_written: false,
    };
    for insn in insns {
        if insn.ip() != it.cpu.rip {
            break;
        }
        match it.execute(insn) {
            Ok(()) => {
                exit.executed += 1;
                if it.code_written {
                    break;
                }
            }
            Err(e) => {
                exit.exception = Some(e);
                break;
            }
        }
    }
    it.sync_flags();
    exit.code_written = it.code_written;
    exit
}
