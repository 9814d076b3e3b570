//! The ringzero binary translator (x86 → Cranelift) and the architectural CPU state it runs on.
//!
//! Status: this crate holds [`CpuState`], shared by both backends. The translator proper
//! (decode, two tiers, code cache, MMU) is tracked in the project's translator issues and lands
//! in increments in modules added here.

#![warn(missing_docs)]

pub mod state;

pub use state::{CpuMode, CpuState, DescriptorTable, FpuState, PendingEvents, Segment};
