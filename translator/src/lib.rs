//! The ringzero binary translator (x86 → Cranelift) and the architectural CPU state it runs on.
//!
//! Status: this crate holds [`CpuState`], shared by both backends, and the first increment of
//! the translator: the instruction semantics written once over an emitter trait ([`sem`]), the
//! guest-memory interface ([`mem`]), the interpreter tier ([`interp`]) that runs them, and the
//! Cranelift tier ([`jit`]) that compiles blocks of the same semantics to host code and returns
//! the same [`interp::BlockExit`]. The code cache, dispatch loop, tier-up and MMU land in later
//! increments.

#![warn(missing_docs)]

pub mod interp;
pub mod jit;
pub mod mem;
pub mod sem;
pub mod state;

pub use state::{CpuMode, CpuState, DescriptorTable, FpuState, PendingEvents, Segment};
