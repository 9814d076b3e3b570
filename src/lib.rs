//! ringzero: one x86 machine model, run by binary translation or by KVM.

pub mod images;
pub mod loader;
pub mod memory;

pub use memory::{GuestMemory, MemoryError};
