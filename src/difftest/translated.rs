//! Runs a difftest [`Case`] under the binary translator, producing the same [`Outcome`] the
//! hardware oracle does, so the two can be compared field by field.
//!
//! Memory is one flat window from [`CODE_BASE`] to the end of the data region, laid out as the
//! oracle lays it out: the code, then `int3` filling the code page, and the data region.

use iced_x86::Mnemonic;
use ringzero_translator::engine::{Engine, StopReason, TierPolicy};
use ringzero_translator::mem::FlatMem;
use ringzero_translator::sem::{Exception, BP};
use ringzero_translator::{fpu, interp, system};

use super::{Case, Mode, Outcome, CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};

/// Which translator tier runs the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The first tier: pre-decoded instructions run by the interpreter.
    Interpreter,
    /// The second tier: blocks compiled to host code by Cranelift (forced for every block).
    Jit,
}

impl Tier {
    /// Every tier, in the order difftest runs them.
    pub const ALL: [Tier; 2] = [Tier::Interpreter, Tier::Jit];

    /// Short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Interpreter => "bt-interp",
            Tier::Jit => "bt-jit",
        }
    }
}

/// Why the translator could not produce an outcome comparable with the oracle's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslatorGap {
    /// The case uses an instruction the translator does not implement yet.
    #[error("the translator does not implement {0:?} yet")]
    Unimplemented(Mnemonic),
    /// An access left the case's memory (the generator never produces one).
    #[error("access outside the case's memory: {0}")]
    Memory(String),
    /// The case ran more than [`MAX_STEPS`] instructions without finishing.
    #[error("no end after {MAX_STEPS} instructions")]
    Runaway,
    /// The translator reported an internal inconsistency.
    #[error("translator internal error: {0}")]
    Internal(String),
}

/// Instruction budget per case (the generator's loops are short and bounded).
pub const MAX_STEPS: u64 = 100_000;

/// Runs cases through the translator's execution engine, one engine per tier (interpreter only,
/// every block compiled), so the dispatcher and code cache are checked along with the semantics.
pub struct TranslatedRunner {
    interp: Engine,
    jit: Engine,
}

impl TranslatedRunner {
    /// Creates the two engines (and the Cranelift JIT).
    pub fn new() -> Result<Self, TranslatorGap> {
        let engine =
            |p| Engine::with_policy(p).map_err(|e| TranslatorGap::Internal(format!("engine: {e}")));
        Ok(TranslatedRunner {
            interp: engine(TierPolicy::InterpreterOnly)?,
            jit: engine(TierPolicy::JitAlways)?,
        })
    }

    /// Runs `case` under `tier` from the same entry state the oracle uses.
    pub fn run(&mut self, case: &Case, mode: Mode, tier: Tier) -> Result<Outcome, TranslatorGap> {
        let engine = match tier {
            Tier::Interpreter => &mut self.interp,
            Tier::Jit => &mut self.jit,
        };
        // Every case puts new code at the same address.
        engine.flush();
        let mut mem = case_memory(case);
        let mut cpu = case.entry_state(mode);
        let reason = run_with_fpu(engine, &mut cpu, &mut mem)?;
        let exception = match reason {
            StopReason::Budget | StopReason::StopPoint => return Err(TranslatorGap::Runaway),
            // The terminating int3 (a trap: RIP after it) is the normal end; report it as the
            // oracle does, at the int3 with no exception.
            StopReason::Exception(Exception::Cpu { vector: BP, .. })
                if cpu.rip == case.end_rip() + 1 =>
            {
                cpu.rip = case.end_rip();
                None
            }
            StopReason::Exception(Exception::Cpu { vector, error }) => Some((vector, error)),
            StopReason::Exception(Exception::Unimplemented(m)) => {
                return Err(TranslatorGap::Unimplemented(m))
            }
            StopReason::Exception(Exception::Memory(f)) => {
                return Err(TranslatorGap::Memory(f.to_string()))
            }
            StopReason::Exception(e) => return Err(TranslatorGap::Internal(e.to_string())),
        };
        let data_off = (DATA_BASE - CODE_BASE) as usize;
        Ok(Outcome {
            regs: cpu.gpr,
            rip: cpu.rip,
            rflags: cpu.rflags,
            data: mem.bytes[data_off..data_off + DATA_SIZE as usize].to_vec(),
            exception,
            fpu: cpu.fpu,
        })
    }
}

/// Runs the engine, executing the x87/MMX/SSE instructions it stops before as the full-system
/// monitor does (`fpu::execute`, the executor `system::execute` hands them to), until a stop
/// that is not one of those. Returns that stop.
fn run_with_fpu(
    engine: &mut Engine,
    cpu: &mut ringzero_translator::CpuState,
    mem: &mut FlatMem,
) -> Result<StopReason, TranslatorGap> {
    let mut steps = 0u64;
    loop {
        let exit = engine.run(cpu, mem, MAX_STEPS.saturating_sub(steps));
        steps += exit.executed;
        let StopReason::Exception(Exception::System(m)) = exit.reason else {
            return Ok(exit.reason);
        };
        let insn = match interp::decode(cpu, mem) {
            Ok(i) => i,
            Err(e) => return Ok(StopReason::Exception(e)),
        };
        if !system::is_floating_point(&insn) {
            // The cases hold no other system instruction; one here is a generator bug.
            return Err(TranslatorGap::Internal(format!(
                "stopped for system instruction {m:?}"
            )));
        }
        if let Err(e) = fpu::execute(cpu, mem, &insn) {
            return Ok(StopReason::Exception(e));
        }
        steps += 1;
        if steps >= MAX_STEPS {
            return Ok(StopReason::Budget);
        }
    }
}

/// The case's memory as the oracle lays it out.
fn case_memory(case: &Case) -> FlatMem {
    let mut mem = FlatMem::new(CODE_BASE, (DATA_BASE + DATA_SIZE - CODE_BASE) as usize);
    let code_page = &mut mem.bytes[..CODE_SIZE as usize];
    code_page.fill(0xcc);
    let n = case.code.len().min(code_page.len());
    code_page[..n].copy_from_slice(&case.code[..n]);
    let data_off = (DATA_BASE - CODE_BASE) as usize;
    let d = case.data.len().min(DATA_SIZE as usize);
    mem.bytes[data_off..data_off + d].copy_from_slice(&case.data[..d]);
    mem
}
