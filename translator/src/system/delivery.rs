//! Exception and interrupt delivery (being written).

use super::Event;
use crate::mem::GuestMem;
use crate::state::CpuState;

/// Delivery could not complete: the CPU shuts down (triple fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("triple fault")]
pub struct TripleFault;

/// Delivers `event` through the IVT or IDT.
pub fn deliver(
    _cpu: &mut CpuState,
    _mem: &mut dyn GuestMem,
    _event: Event,
) -> Result<(), TripleFault> {
    Err(TripleFault)
}
