//! Privileged and sensitive instructions other than segmentation (being written).

use super::{Effect, SystemBus};
use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::CpuState;
use iced_x86::Instruction;

/// Executes a privileged or sensitive instruction.
pub fn execute(
    _cpu: &mut CpuState,
    _mem: &mut dyn GuestMem,
    _bus: &mut dyn SystemBus,
    insn: &Instruction,
) -> Result<Effect, Exception> {
    Err(Exception::Unimplemented(insn.mnemonic()))
}
