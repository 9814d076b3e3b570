//! Runs a difftest [`Case`] under the binary translator, producing the same [`Outcome`] the
//! hardware oracle does, so the two can be compared field by field.
//!
//! Memory is one flat window from [`CODE_BASE`] to the end of the data region, laid out as the
//! oracle lays it out: the code, then `int3` filling the code page, and the data region.

use iced_x86::Mnemonic;
use ringzero_translator::interp::{self, BlockExit};
use ringzero_translator::jit::{self, Jit, JitError};
use ringzero_translator::mem::FlatMem;
use ringzero_translator::sem::Exception;
use ringzero_translator::CpuState;

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

/// Instructions per compiled block (a size cap like the translator's own).
const BLOCK_CAP: usize = 32;

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

/// Runs cases under the translator's tiers; owns the JIT (compiled code lives as long as it).
pub struct TranslatedRunner {
    jit: Jit,
}

impl TranslatedRunner {
    /// Creates the runner and its Cranelift JIT.
    pub fn new() -> Result<Self, TranslatorGap> {
        let jit = Jit::new().map_err(|e| TranslatorGap::Internal(format!("JIT setup: {e}")))?;
        Ok(TranslatedRunner { jit })
    }

    /// Runs `case` under `tier` from the same entry state the oracle uses.
    pub fn run(&mut self, case: &Case, mode: Mode, tier: Tier) -> Result<Outcome, TranslatorGap> {
        let mut mem = case_memory(case);
        let mut cpu = case.entry_state(mode);
        let mut exception = None;
        let mut steps = 0u64;
        while cpu.rip != case.end_rip() {
            if steps >= MAX_STEPS {
                return Err(TranslatorGap::Runaway);
            }
            let exit = match tier {
                Tier::Interpreter => {
                    steps += 1;
                    interp::step(&mut cpu, &mut mem).err()
                }
                Tier::Jit => {
                    let exit = self.jit_block(&mut cpu, &mut mem, case.end_rip())?;
                    steps += exit.executed.max(1) as u64;
                    exit.exception
                }
            };
            match exit {
                None => {}
                Some(Exception::Cpu { vector, error }) => {
                    exception = Some((vector, error));
                    break;
                }
                Some(Exception::Unimplemented(m)) => return Err(TranslatorGap::Unimplemented(m)),
                Some(Exception::Memory(f)) => return Err(TranslatorGap::Memory(f.to_string())),
                Some(e) => return Err(TranslatorGap::Internal(e.to_string())),
            }
        }
        let data_off = (DATA_BASE - CODE_BASE) as usize;
        Ok(Outcome {
            regs: cpu.gpr,
            rip: cpu.rip,
            rflags: cpu.rflags,
            data: mem.bytes[data_off..data_off + DATA_SIZE as usize].to_vec(),
            exception,
        })
    }

    /// Compiles the block at RIP (stopping before the terminating `int3`) and runs it; an
    /// instruction the JIT refuses as the first of a block runs in the interpreter, as the
    /// dispatcher will do.
    fn jit_block(
        &mut self,
        cpu: &mut CpuState,
        mem: &mut FlatMem,
        end_rip: u64,
    ) -> Result<BlockExit, TranslatorGap> {
        let mut insns = match jit::decode_block(cpu, mem, BLOCK_CAP) {
            Ok(i) => i,
            Err(e) => {
                return Ok(BlockExit {
                    executed: 0,
                    exception: Some(e),
                })
            }
        };
        if let Some(end) = insns.iter().position(|i| i.ip() == end_rip) {
            insns.truncate(end);
        }
        if insns.is_empty() {
            return Err(TranslatorGap::Internal("empty block before the end".into()));
        }
        match self.jit.compile_block(&insns, cpu) {
            Ok(block) => Ok(jit::run_compiled(cpu, mem, &block)),
            Err(JitError::Unsupported(_)) => Ok(match interp::step(cpu, mem) {
                Ok(()) => BlockExit {
                    executed: 1,
                    exception: None,
                },
                Err(e) => BlockExit {
                    executed: 0,
                    exception: Some(e),
                },
            }),
            Err(e) => Err(TranslatorGap::Internal(format!("JIT: {e}"))),
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
