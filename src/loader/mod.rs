//! (being written)
pub mod bzimage;
pub mod flat;
pub mod multiboot;
