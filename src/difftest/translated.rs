//! Runs a difftest [`Case`] under the binary translator, producing the same [`Outcome`] the
//! hardware oracle does, so the two can be compared field by field.
//!
//! Memory is one flat window from [`CODE_BASE`] to the end of the data region, laid out as the
//! oracle lays it out: the code, then `int3` filling the code page, and the data region.

use iced_x86::Mnemonic;
use ringzero_translator::interp;
use ringzero_translator::mem::FlatMem;
use ringzero_translator::sem::Exception;

use super::{Case, Mode, Outcome, CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};

/// Which translator tier runs the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The first tier: pre-decoded instructions run by the interpreter.
    Interpreter,
}

impl Tier {
    /// Every tier, in the order difftest runs them.
    pub const ALL: [Tier; 1] = [Tier::Interpreter];

    /// Short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Interpreter => "bt-interp",
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

/// Runs `case` under `tier` from the same entry state the oracle uses.
pub fn run(case: &Case, mode: Mode, tier: Tier) -> Result<Outcome, TranslatorGap> {
    let Tier::Interpreter = tier;
    let mut mem = FlatMem::new(CODE_BASE, (DATA_BASE + DATA_SIZE - CODE_BASE) as usize);
    let code_page = &mut mem.bytes[..CODE_SIZE as usize];
    code_page.fill(0xcc);
    let n = case.code.len().min(code_page.len());
    code_page[..n].copy_from_slice(&case.code[..n]);
    let data_off = (DATA_BASE - CODE_BASE) as usize;
    let d = case.data.len().min(DATA_SIZE as usize);
    mem.bytes[data_off..data_off + d].copy_from_slice(&case.data[..d]);

    let mut cpu = case.entry_state(mode);
    let mut exception = None;
    let mut steps = 0u64;
    while cpu.rip != case.end_rip() {
        if steps == MAX_STEPS {
            return Err(TranslatorGap::Runaway);
        }
        steps += 1;
        match interp::step(&mut cpu, &mut mem) {
            Ok(()) => {}
            Err(Exception::Cpu { vector, error }) => {
                exception = Some((vector, error));
                break;
            }
            Err(Exception::Unimplemented(m)) => return Err(TranslatorGap::Unimplemented(m)),
            Err(Exception::Memory(f)) => return Err(TranslatorGap::Memory(f.to_string())),
            Err(e) => return Err(TranslatorGap::Internal(e.to_string())),
        }
    }
    Ok(Outcome {
        regs: cpu.gpr,
        rip: cpu.rip,
        rflags: cpu.rflags,
        data: mem.bytes[data_off..data_off + DATA_SIZE as usize].to_vec(),
        exception,
    })
}
