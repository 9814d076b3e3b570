//! The memory an instruction reads and writes, for trace records: linear and physical address,
//! size and value of every data access.
//!
//! The accesses come from the instruction itself (iced-x86's instruction info: explicit memory
//! operands, stack pushes and pops, string operands; one element of a REP string instruction)
//! evaluated on the registers before it runs, translated through the guest's page tables
//! without side effects, and read from RAM: read values before the instruction runs, written
//! values after. Both backends use this one definition, so their traces agree. Device memory
//! (MMIO) is never read for the trace (a read could have side effects): its value is absent.
//! System accesses (descriptor tables, paging structures, interrupt frames) are not listed.

use iced_x86::{Instruction, InstructionInfoFactory, OpAccess, Register};
use ringzero_translator::jit::fetch_linear;
use ringzero_translator::mmu::{walk, Access, PagingContext, PhysMem};
use ringzero_translator::{CpuMode, CpuState};

use crate::memory::GuestMemory;

/// Most bytes of a value a record shows (FXSAVE areas and the like are cut).
pub const MAX_VALUE_BYTES: usize = 64;

/// Guest RAM as the trace reads it: never device memory.
pub trait TraceMemory {
    /// Fills `buf` from guest-physical `phys`; false when any byte is not RAM.
    fn read_ram(&self, phys: u64, buf: &mut [u8]) -> bool;
}

impl TraceMemory for GuestMemory {
    fn read_ram(&self, phys: u64, buf: &mut [u8]) -> bool {
        self.read(phys, buf).is_ok()
    }
}

/// One data access of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemAccess {
    /// A write (else a read).
    pub write: bool,
    /// Linear address of the first byte.
    pub linear: u64,
    /// Physical address of the first byte (`None`: the page is not mapped).
    pub phys: Option<u64>,
    /// Size in bytes.
    pub size: u32,
    /// The value (little-endian bytes, at most [`MAX_VALUE_BYTES`]); `None` when it is not
    /// RAM or not mapped.
    pub value: Option<Vec<u8>>,
}

/// Physical memory for a side-effect-free page walk: RAM only, writes (A/D bits) dropped.
struct ReadOnly<'a>(&'a dyn TraceMemory);

impl PhysMem for ReadOnly<'_> {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        if !self.0.read_ram(addr, buf) {
            buf.fill(0xff);
        }
    }

    fn write_phys(&mut self, _addr: u64, _data: &[u8]) {}
}

/// The value of `reg` (or a segment register's base) in `cpu`, for address computation.
fn register_value(cpu: &CpuState, reg: Register) -> Option<u64> {
    let flat = cpu.mode() == CpuMode::Long64;
    let seg = |s: &ringzero_translator::state::Segment| if flat { 0 } else { s.base };
    Some(match reg {
        Register::ES => seg(&cpu.es),
        Register::CS => seg(&cpu.cs),
        Register::SS => seg(&cpu.ss),
        Register::DS => seg(&cpu.ds),
        Register::FS => cpu.fs.base,
        Register::GS => cpu.gs.base,
        Register::RIP | Register::EIP => cpu.rip,
        r if r.is_gpr() => {
            let full = *cpu.gpr.get(r.full_register().number())?;
            if r.is_gpr8() && (Register::AH..=Register::BH).contains(&r) {
                (cpu.gpr.get(r.number() - 4).copied()? >> 8) & 0xff
            } else {
                match r.size() {
                    1 => full & 0xff,
                    2 => full & 0xffff,
                    4 => full & 0xffff_ffff,
                    _ => full,
                }
            }
        }
        _ => return None,
    })
}

/// Reads `len` bytes at `linear` through the page tables of `ctx` (page by page).
fn read_linear(
    ram: &dyn TraceMemory,
    ctx: &PagingContext,
    linear: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let at = linear.wrapping_add(done as u64) & ctx.linear_mask();
        let phys = translate(ram, ctx, at)?;
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(len - done);
        if !ram.read_ram(phys, out.get_mut(done..done + n)?) {
            return None;
        }
        done += n;
    }
    Some(out)
}

/// The physical address of `linear` (no access checks, no side effects).
fn translate(ram: &dyn TraceMemory, ctx: &PagingContext, linear: u64) -> Option<u64> {
    if !ctx.paging() {
        return Some(linear);
    }
    // A supervisor read sees every present mapping; the rights do not matter for the record.
    let mut sup = *ctx;
    sup.cpl = 0;
    walk(&mut ReadOnly(ram), &sup, linear, Access::Read, true)
        .ok()
        .map(|t| t.phys)
}

/// Up to 15 instruction bytes at CS:RIP of `cpu` through its page tables (fewer when the
/// next page is not mapped; empty when the first is not), for decoding the next instruction
/// from outside the CPU (the KVM trace).
pub fn fetch_bytes(cpu: &CpuState, ram: &dyn TraceMemory) -> Vec<u8> {
    let ctx = PagingContext::of(cpu);
    let linear = fetch_linear(cpu);
    let first = (0x1000 - (linear & 0xfff)).min(15) as usize;
    let mut out = read_linear(ram, &ctx, linear, first).unwrap_or_default();
    if out.len() == first && first < 15 {
        if let Some(rest) = read_linear(ram, &ctx, linear.wrapping_add(first as u64), 15 - first) {
            out.extend_from_slice(&rest);
        }
    }
    out
}

/// `len` bytes at `linear` read through the page tables of `cpu` (supervisor view, no side
/// effects); `None` when any byte is unmapped or not RAM. For reading descriptor tables and
/// interrupt frames from outside the CPU (the KVM trace).
pub fn read_linear_bytes(
    cpu: &CpuState,
    ram: &dyn TraceMemory,
    linear: u64,
    len: usize,
) -> Option<Vec<u8>> {
    read_linear(ram, &PagingContext::of(cpu), linear, len)
}

/// The data accesses `insn` makes from state `before`, with the values of its reads.
pub fn accesses(insn: &Instruction, before: &CpuState, ram: &dyn TraceMemory) -> Vec<MemAccess> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    let ctx = PagingContext::of(before);
    let mut out = Vec::new();
    for m in info.used_memory() {
        let (read, write) = match m.access() {
            OpAccess::Read | OpAccess::CondRead => (true, false),
            OpAccess::Write | OpAccess::CondWrite => (false, true),
            OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
            _ => continue,
        };
        // REP string operands have no size in the instruction info (the count is dynamic):
        // a step moves one element, of the instruction's operand size.
        let size = match m.memory_size().size() {
            0 => insn.memory_size().size(),
            s => s,
        };
        if size == 0 {
            continue;
        }
        let Some(linear) = m.try_virtual_address(0, |r, _, _| register_value(before, r)) else {
            continue;
        };
        let linear = linear & ctx.linear_mask();
        let phys = translate(ram, &ctx, linear);
        let shown = size.min(MAX_VALUE_BYTES);
        if read {
            out.push(MemAccess {
                write: false,
                linear,
                phys,
                size: size as u32,
                value: read_linear(ram, &ctx, linear, shown),
            });
        }
        if write {
            out.push(MemAccess {
                write: true,
                linear,
                phys,
                size: size as u32,
                value: None,
            });
        }
    }
    out
}

/// Fills in the values of the writes in `list` from memory after the instruction ran (state
/// `after`; the addresses were computed before).
pub fn fill_writes(list: &mut [MemAccess], before: &CpuState, ram: &dyn TraceMemory) {
    let ctx = PagingContext::of(before);
    for a in list.iter_mut().filter(|a| a.write) {
        let shown = (a.size as usize).min(MAX_VALUE_BYTES);
        a.value = read_linear(ram, &ctx, a.linear, shown);
        if a.phys.is_none() {
            // The instruction may have mapped it (rare); report what it is now.
            a.phys = translate(ram, &ctx, a.linear);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::cell::RefCell;

    /// 64 KiB of flat RAM.
    struct Ram(RefCell<Vec<u8>>);

    impl TraceMemory for Ram {
        fn read_ram(&self, phys: u64, buf: &mut [u8]) -> bool {
            let m = self.0.borrow();
            let Some(src) = m.get(phys as usize..phys as usize + buf.len()) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }
    }

    fn decode(bytes: &[u8], ip: u64) -> Instruction {
        Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode()
    }

    fn long_mode() -> CpuState {
        let mut c = CpuState::default();
        c.cr0 |= ringzero_translator::state::ctl::CR0_PE;
        c.efer |=
            ringzero_translator::state::ctl::EFER_LMA | ringzero_translator::state::ctl::EFER_LME;
        c.cs.l = true;
        c
    }

    #[test]
    fn explicit_stack_and_rip_relative_operands() {
        let ram = Ram(RefCell::new(vec![0; 0x10000]));
        ram.0.borrow_mut()[0x2000..0x2008].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        let mut cpu = long_mode();
        cpu.gpr[3] = 0x1ff8; // rbx
        cpu.gpr[4] = 0x8000; // rsp
                             // mov rax, [rbx+8]
        let a = accesses(&decode(&[0x48, 0x8b, 0x43, 0x08], 0x1000), &cpu, &ram);
        assert_eq!(
            a,
            [MemAccess {
                write: false,
                linear: 0x2000,
                phys: Some(0x2000),
                size: 8,
                value: Some(0x1122_3344_5566_7788u64.to_le_bytes().to_vec()),
            }]
        );
        // push rax: an 8-byte write below RSP.
        let a = accesses(&decode(&[0x50], 0x1000), &cpu, &ram);
        assert_eq!(a.len(), 1);
        assert!(a[0].write);
        assert_eq!((a[0].linear, a[0].size), (0x7ff8, 8));
        // mov eax, [rip+0xffa] at 0x1000 (6 bytes): 0x2000.
        let a = accesses(&decode(&[0x8b, 0x05, 0xfa, 0x0f, 0, 0], 0x1000), &cpu, &ram);
        assert_eq!((a[0].linear, a[0].size), (0x2000, 4));
        // add [rbx+8], al: read then write.
        let mut a = accesses(&decode(&[0x00, 0x43, 0x08], 0x1000), &cpu, &ram);
        assert_eq!(a.iter().map(|a| a.write).collect::<Vec<_>>(), [false, true]);
        ram.0.borrow_mut()[0x2000] = 0x99;
        fill_writes(&mut a, &cpu, &ram);
        assert_eq!(a[1].value, Some(vec![0x99]));
        assert_eq!(a[0].value, Some(vec![0x88]));
        // lea touches no memory; outside RAM there is no value.
        assert!(accesses(&decode(&[0x48, 0x8d, 0x43, 0x08], 0x1000), &cpu, &ram).is_empty());
        cpu.gpr[3] = 0x10_0000;
        let a = accesses(&decode(&[0x48, 0x8b, 0x43, 0x08], 0x1000), &cpu, &ram);
        assert_eq!(a[0].value, None);
    }

    #[test]
    fn instruction_bytes_are_fetched_at_cs_rip() {
        let ram = Ram(RefCell::new(vec![0; 0x10000]));
        ram.0.borrow_mut()[0x1100..0x1110].copy_from_slice(&[7; 16]);
        let mut cpu = CpuState::default(); // real mode
        cpu.cs.base = 0x1000;
        cpu.rip = 0x100;
        assert_eq!(fetch_bytes(&cpu, &ram), [7; 15]);
        cpu.rip = 0xeffc; // 4 bytes before the end of RAM
        assert_eq!(fetch_bytes(&cpu, &ram).len(), 4, "cut at the end of RAM");
        cpu.rip = 0xf000;
        assert!(fetch_bytes(&cpu, &ram).is_empty(), "beyond RAM");
    }

    #[test]
    fn segment_bases_apply_outside_long_mode() {
        let ram = Ram(RefCell::new(vec![0; 0x10000]));
        let mut cpu = CpuState::default(); // real mode
        cpu.ds.base = 0x1000;
        cpu.gpr[3] = 0x10;
        // mov ax, [bx] (16-bit code)
        let insn = Decoder::with_ip(16, &[0x8b, 0x07], 0, DecoderOptions::NONE).decode();
        let a = accesses(&insn, &cpu, &ram);
        assert_eq!((a[0].linear, a[0].size), (0x1010, 2));
    }
}
