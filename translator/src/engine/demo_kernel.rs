//! The demo guest's ring-3 compute kernel as a standalone workload for the engine.
//!
//! `test-images/demo/demo.S` section `.user` (extracted by this crate's `build.rs`): ring 0
//! copies it to [`LOAD_ADDR`] and `iretq`s to it at CPL 3 with RSP = [`STACK_TOP`]; it fills
//! and hashes 4096 words at [`DATA_ADDR`] (~32 M guest instructions), leaves the checksum in RAX,
//! reads CS into EDI and executes `int3` to return to ring 0. [`entry_state`] and [`memory`]
//! recreate that entry (flat guest-physical memory: the demo maps 2-4 MiB 1:1 for ring 3), so
//! the benchmark, the tests and anyone comparing tiers run exactly the code the demo runs.

use crate::mem::{FlatMem, GuestMem};
use crate::state::{ctl, reg, CpuState, Segment};

/// The kernel's bytes, linked to run at [`LOAD_ADDR`].
pub const CODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo_user.bin"));
/// Where the demo copies the kernel and enters it (the user page).
pub const LOAD_ADDR: u64 = 0x20_0000;
/// The kernel's data: 4096 32-bit words.
pub const DATA_ADDR: u64 = 0x21_0000;
/// Top of the ring-3 stack.
pub const STACK_TOP: u64 = 0x40_0000;
/// Base of the guest memory window [`memory`] returns (the demo's user 2 MiB page).
pub const MEM_BASE: u64 = 0x20_0000;
/// Size of that window.
pub const MEM_SIZE: usize = 0x20_0000;
/// The checksum the kernel leaves in RAX (`test-images/demo/checksum.py`).
pub const EXPECTED_CHECKSUM: u64 = 0x3278_8a79_dc7f_32f8;
/// The demo's ring-3 64-bit code selector (GDT 0x38, RPL 3).
pub const USER_CS: u16 = 0x3b;
/// The demo's ring-3 data/stack selector (GDT 0x30, RPL 3).
pub const USER_SS: u16 = 0x33;

/// The CPU as the demo's `iretq` leaves it: 64-bit long mode, CPL 3, RIP = [`LOAD_ADDR`],
/// RSP = [`STACK_TOP`], RFLAGS = 0x202; other GPRs are zero (the kernel sets all it reads).
pub fn entry_state() -> CpuState {
    let mut c = CpuState::default();
    c.cr0 |= ctl::CR0_PE | ctl::CR0_PG;
    c.cr4 |= ctl::CR4_PAE;
    c.efer = ctl::EFER_LME | ctl::EFER_LMA;
    c.cs = Segment {
        dpl: 3,
        ..Segment::code64(USER_CS)
    };
    let data = Segment {
        dpl: 3,
        ..Segment::flat32(USER_SS, false)
    };
    c.ss = data;
    c.ds = data;
    c.es = data;
    c.rip = LOAD_ADDR;
    c.rflags = 0x202;
    c.gpr[reg::RSP] = STACK_TOP;
    c
}

/// The user page with the kernel loaded at [`LOAD_ADDR`] and everything else zero.
pub fn memory() -> FlatMem {
    let mut mem = FlatMem::new(MEM_BASE, MEM_SIZE);
    // The kernel is a few hundred bytes: it always fits the 2 MiB window.
    if let Err(f) = mem.write(LOAD_ADDR, CODE) {
        log::error!("demo kernel does not fit its window: {f}");
    }
    mem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_extracted_and_starts_with_its_first_instruction() {
        // user_entry: mov ebx, USER_BUF (bb 00 00 21 00).
        assert_eq!(CODE.get(..5), Some(&[0xbb, 0x00, 0x00, 0x21, 0x00][..]));
        assert!(CODE.len() < 0x1000, "kernel is {} bytes", CODE.len());
        let cpu = entry_state();
        assert_eq!(cpu.cpl(), 3);
        assert_eq!(cpu.code_bits(), 64);
    }
}
