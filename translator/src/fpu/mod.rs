//! x87, MMX and SSE/SSE2 (being written).

use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::CpuState;
use iced_x86::Instruction;

/// Executes an x87/MMX/SSE instruction at `cpu.rip`.
pub fn execute(
    _cpu: &mut CpuState,
    _mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    Err(Exception::Unimplemented(insn.mnemonic()))
}
