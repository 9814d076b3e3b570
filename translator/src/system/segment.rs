//! Segmentation: descriptor tables, segment loads, far transfers, IRET (being written).

use super::Effect;
use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::CpuState;
use iced_x86::Instruction;

/// Whether [`execute`] is the executor for `insn`.
pub fn handles(_insn: &Instruction) -> bool {
    false
}

/// Executes a segmentation instruction.
pub fn execute(
    _cpu: &mut CpuState,
    _mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    Err(Exception::Unimplemented(insn.mnemonic()))
}
