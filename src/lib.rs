//! ringzero: one x86 machine model, run by binary translation or by KVM.
//!
//! - [`memory`]: guest RAM; [`loader`]: bzImage, Multiboot and flat images;
//! - [`vcpu`]: the backend contract and exit vocabulary; [`kvm`]: the KVM backend;
//!   [`bt`]: the binary-translation backend; [`trace`]: the instruction trace;
//! - [`machine`]: devices wired to buses and the run loop; [`cli`]: the command line.

#![warn(missing_docs)]

pub mod acpi;
pub mod bt;
pub mod cli;
pub mod difftest;
pub mod images;
pub mod kvm;
pub mod loader;
pub mod lockstep;
pub mod machine;
pub mod memory;
pub mod trace;
pub mod vcpu;

pub use memory::{GuestMemory, MemoryError};
