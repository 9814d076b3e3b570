//! The ringzero binary translator (x86 → Cranelift) and the architectural CPU state it runs on.
//!
//! Status: this crate holds [`CpuState`], shared by both backends, and the first increment of
//! the translator: the instruction semantics written once over an emitter trait ([`sem`]), the
//! guest-memory interface ([`mem`]), the interpreter tier ([`interp`]) that runs them, and the
//! Cranelift tier ([`jit`]) that compiles blocks of the same semantics to host code and returns
//! the same [`interp::BlockExit`]. The execution [`engine`] caches decoded blocks, dispatches
//! them with successor memos instead of hash lookups on the hot path, and compiles a block once
//! its measured execution count reaches the tier-up threshold. Every instruction the difftest
//! generator produces in 64-bit mode agrees with the real CPU on both tiers (`ringzero
//! difftest`). Not yet: the system instructions and traps, the MMU, self-modifying-code
//! detection, the instruction trace, and x87/SSE (see the translator issues).

#![warn(missing_docs)]

pub mod engine;
pub mod fpu;
pub mod interp;
pub mod jit;
pub mod mem;
pub mod mmu;
pub mod sem;
pub mod state;
pub mod system;

pub use state::{CpuMode, CpuState, DescriptorTable, FpuState, PendingEvents, Segment};
