//! Helpers shared by the translator's integration tests: CPU setups per mode, the edge values
//! and the seeded generator the per-instruction cases draw their inputs from.
#![allow(dead_code)] // each test crate uses a different subset

use ringzero_translator::state::{ctl, reg, CpuState, Segment};

/// Where test code is assembled.
pub const CODE: u64 = 0x1000;
/// Initial stack pointer.
pub const STACK: u64 = 0x8000;

/// A CPU in 64-bit long mode, 32-bit protected mode (flat segments) or real mode (`bits` 16),
/// with RIP = [`CODE`] and RSP = [`STACK`].
pub fn cpu(bits: u32) -> CpuState {
    let mut c = CpuState::default();
    match bits {
        64 => {
            c.cr0 |= ctl::CR0_PE | ctl::CR0_PG;
            c.cr4 |= ctl::CR4_PAE;
            c.efer = ctl::EFER_LME | ctl::EFER_LMA;
            c.cs = Segment::code64(0x10);
            c.ss = Segment::flat32(0x18, false);
            c.ds = Segment::flat32(0x18, false);
        }
        32 => {
            c.cr0 |= ctl::CR0_PE;
            c.cs = Segment::flat32(0x08, true);
            c.ss = Segment::flat32(0x10, false);
            c.ds = Segment::flat32(0x10, false);
            c.es = Segment::flat32(0x10, false);
        }
        _ => {}
    }
    c.rip = CODE;
    c.gpr[reg::RSP] = STACK;
    c
}

/// xorshift64: a reproducible input stream.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Operand values at the width boundaries where carries, overflows and sign changes happen.
pub const EDGES: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
];

/// The (a, b) operand pairs of a case: every pair of edges, each edge with all ones, then
/// `random` pairs from a stream seeded by `seed`.
pub fn operand_pairs(seed: u64, random: usize) -> Vec<(u64, u64)> {
    let mut rng = Rng(seed);
    let mut inputs = Vec::new();
    for &a in &EDGES {
        for &b in &EDGES {
            inputs.push((a, b));
        }
        inputs.push((a, u64::MAX));
    }
    for _ in 0..random {
        inputs.push((rng.next(), rng.next()));
    }
    inputs
}
