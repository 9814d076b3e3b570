//! Known-answer tests of the monitor's privileged-instruction executor
//! (`system::privileged::execute`): success paths, precise faults, mode transitions, the TSS
//! I/O permission bitmap, string I/O, fast system calls and software interrupts.

mod common;

use common::{cpu, CODE};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use ringzero_translator::mem::FlatMem;
use ringzero_translator::sem::Exception;
use ringzero_translator::state::{ctl, msr, reg, rflags, CpuMode, CpuState, Segment};
use ringzero_translator::system::{privileged, Effect, Event, EventKind, SystemBus, TlbFlush};
use std::collections::VecDeque;

/// A bus that records every access and answers port reads from a queue (0xffff_ffff after).
#[derive(Default)]
struct RecBus {
    inputs: VecDeque<u32>,
    ins: Vec<(u16, u8)>,
    outs: Vec<(u16, u8, u32)>,
    tsc: u64,
    tsc_writes: Vec<u64>,
}

impl SystemBus for RecBus {
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.ins.push((port, size));
        self.inputs.pop_front().unwrap_or(u32::MAX)
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.outs.push((port, size, value));
    }
    fn tsc(&mut self) -> u64 {
        self.tsc
    }
    fn set_tsc(&mut self, value: u64) {
        self.tsc_writes.push(value);
    }
}

/// A machine: CPU, 64 KiB of memory at 0 and a recording bus.
struct M {
    cpu: CpuState,
    mem: FlatMem,
    bus: RecBus,
}

fn m(bits: u32) -> M {
    M {
        cpu: cpu(bits),
        mem: FlatMem::new(0, 0x10000),
        bus: RecBus::default(),
    }
}

fn gp0() -> Exception {
    Exception::Cpu {
        vector: 13,
        error: Some(0),
    }
}

fn ud() -> Exception {
    Exception::cpu(6)
}

impl M {
    fn decode(&self, bytes: &[u8]) -> Instruction {
        let bits = self.cpu.code_bits();
        let mut d = Decoder::with_ip(bits, bytes, self.cpu.rip, DecoderOptions::NONE);
        let i = d.decode();
        assert_ne!(
            i.mnemonic(),
            Mnemonic::INVALID,
            "{bytes:02x?} in {bits}-bit mode"
        );
        assert_eq!(i.len(), bytes.len(), "{bytes:02x?} decodes to {i}");
        i
    }

    /// Runs `bytes` at RIP.
    fn run(&mut self, bytes: &[u8]) -> Result<Effect, Exception> {
        let insn = self.decode(bytes);
        privileged::execute(&mut self.cpu, &mut self.mem, &mut self.bus, &insn)
    }

    /// Runs `bytes` expecting success with `effect` and RIP after the instruction.
    fn ok(&mut self, bytes: &[u8], effect: Effect) {
        let next = self.cpu.rip + bytes.len() as u64;
        assert_eq!(self.run(bytes), Ok(effect), "{bytes:02x?}");
        assert_eq!(self.cpu.rip, next, "{bytes:02x?}: RIP");
    }

    /// Runs `bytes` expecting `exc` with CPU and memory unchanged.
    fn fault(&mut self, bytes: &[u8], exc: Exception) {
        let (cpu, mem) = (self.cpu.clone(), self.mem.clone());
        assert_eq!(self.run(bytes), Err(exc), "{bytes:02x?}");
        assert_eq!(self.cpu, cpu, "{bytes:02x?}: state changed by a fault");
        assert_eq!(self.mem, mem, "{bytes:02x?}: memory changed by a fault");
    }

    fn user(&mut self) {
        self.cpu.cs.dpl = 3;
        self.cpu.cs.selector |= 3;
        self.cpu.ss.dpl = 3;
        self.cpu.ss.selector |= 3;
    }

    fn poke(&mut self, addr: u64, bytes: &[u8]) {
        let a = addr as usize;
        self.mem.bytes[a..a + bytes.len()].copy_from_slice(bytes);
    }

    fn peek(&self, addr: u64, len: usize) -> &[u8] {
        &self.mem.bytes[addr as usize..addr as usize + len]
    }
}

const MOV_CR0_EAX: [u8; 3] = [0x0f, 0x22, 0xc0];
const MOV_CR3_RAX: [u8; 3] = [0x0f, 0x22, 0xd8];
const MOV_CR4_RAX: [u8; 3] = [0x0f, 0x22, 0xe0];

// ---- control registers -------------------------------------------------------------------

#[test]
fn cr0_enters_protected_mode_from_real_mode() {
    let mut t = m(16);
    t.cpu.gpr[reg::RAX] = (t.cpu.cr0 | ctl::CR0_PE) & !(ctl::CR0_CD | ctl::CR0_NW) | (1 << 7);
    t.ok(&MOV_CR0_EAX, Effect::Flush(TlbFlush::All));
    // Reserved bit 7 is ignored, ET stays 1.
    assert_eq!(t.cpu.cr0, ctl::CR0_PE | ctl::CR0_ET);
    // Rewriting the same value changes nothing translation-relevant.
    t.cpu.gpr[reg::RAX] = t.cpu.cr0 | ctl::CR0_TS;
    t.ok(&MOV_CR0_EAX, Effect::Next);
}

#[test]
fn cr0_invalid_combinations_fault() {
    let mut t = m(32);
    t.cpu.gpr[reg::RAX] = ctl::CR0_PG | ctl::CR0_ET; // PG without PE
    t.fault(&MOV_CR0_EAX, gp0());
    t.cpu.gpr[reg::RAX] = ctl::CR0_PE | ctl::CR0_NW; // NW without CD
    t.fault(&MOV_CR0_EAX, gp0());
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = t.cpu.cr0 | (1 << 32);
    t.fault(&MOV_CR0_EAX, gp0());
    t.user();
    t.cpu.gpr[reg::RAX] = t.cpu.cr0;
    t.fault(&MOV_CR0_EAX, gp0());
    t.fault(&[0x0f, 0x20, 0xc0], gp0()); // mov rax, cr0
}

#[test]
fn cr0_activates_and_leaves_long_mode() {
    // 32-bit protected mode, EFER.LME = 1.
    let mut t = m(32);
    t.cpu.efer = ctl::EFER_LME;
    t.cpu.gpr[reg::RAX] = t.cpu.cr0 | ctl::CR0_PG;
    t.fault(&MOV_CR0_EAX, gp0()); // PAE off
    t.cpu.cr4 = ctl::CR4_PAE;
    t.ok(&MOV_CR0_EAX, Effect::Flush(TlbFlush::All));
    assert_eq!(t.cpu.efer, ctl::EFER_LME | ctl::EFER_LMA);
    assert_eq!(t.cpu.mode(), CpuMode::Compat);
    // Clearing PAE in long mode is refused.
    t.cpu.gpr[reg::RAX] = 0;
    t.fault(&MOV_CR4_RAX, gp0());
    // Paging off from compatibility mode leaves long mode.
    t.cpu.gpr[reg::RAX] = t.cpu.cr0 & !ctl::CR0_PG;
    t.ok(&MOV_CR0_EAX, Effect::Flush(TlbFlush::All));
    assert_eq!(t.cpu.efer, ctl::EFER_LME);
    assert_eq!(t.cpu.mode(), CpuMode::Protected);
    // ... but not from 64-bit mode.
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = t.cpu.cr0 & !ctl::CR0_PG;
    t.fault(&MOV_CR0_EAX, gp0());
}

#[test]
fn cr4_supported_bits_and_flushes() {
    let mut t = m(64);
    let pae = ctl::CR4_PAE;
    for bad in [
        ctl::CR4_VME,
        ctl::CR4_PVI,
        ctl::CR4_OSXSAVE,
        ctl::CR4_SMEP,
        ctl::CR4_FSGSBASE,
        1 << 17, // PCIDE
        1 << 12, // LA57
    ] {
        t.cpu.gpr[reg::RAX] = pae | bad;
        t.fault(&MOV_CR4_RAX, gp0());
    }
    t.cpu.gpr[reg::RAX] = pae | ctl::CR4_PGE;
    t.ok(&MOV_CR4_RAX, Effect::Flush(TlbFlush::All));
    t.cpu.gpr[reg::RAX] = pae | ctl::CR4_PGE | ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT | ctl::CR4_TSD;
    t.ok(&MOV_CR4_RAX, Effect::Next);
    t.cpu.gpr[reg::RAX] = pae | ctl::CR4_OSFXSR | ctl::CR4_DE | ctl::CR4_PCE | ctl::CR4_MCE;
    t.ok(&MOV_CR4_RAX, Effect::Flush(TlbFlush::All));
    assert_eq!(
        t.cpu.cr4,
        pae | ctl::CR4_OSFXSR | ctl::CR4_DE | ctl::CR4_PCE | ctl::CR4_MCE
    );
    // Read back.
    t.cpu.gpr[reg::RBX] = 0;
    t.ok(&[0x0f, 0x20, 0xe3], Effect::Next); // mov rbx, cr4
    assert_eq!(t.cpu.gpr[reg::RBX], t.cpu.cr4);
}

#[test]
fn cr3_and_cr2() {
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = 0xff_ffff_f000;
    t.ok(&MOV_CR3_RAX, Effect::Flush(TlbFlush::NonGlobal));
    assert_eq!(t.cpu.cr3, 0xff_ffff_f000);
    t.cpu.gpr[reg::RAX] = 1 << 40; // above MAXPHYADDR
    t.fault(&MOV_CR3_RAX, gp0());
    t.cpu.gpr[reg::RAX] = 1 << 63;
    t.fault(&MOV_CR3_RAX, gp0());
    t.cpu.gpr[reg::RDX] = 0xffff_8000_dead_b000;
    t.ok(&[0x0f, 0x22, 0xd2], Effect::Next); // mov cr2, rdx
    assert_eq!(t.cpu.cr2, 0xffff_8000_dead_b000);
    t.ok(&[0x0f, 0x20, 0xd1], Effect::Next); // mov rcx, cr2
    assert_eq!(t.cpu.gpr[reg::RCX], 0xffff_8000_dead_b000);
    // 32-bit code moves 32 bits.
    let mut t = m(32);
    t.cpu.gpr[reg::RAX] = 0xdead_beef_0010_1000;
    t.ok(&MOV_CR3_RAX, Effect::Flush(TlbFlush::NonGlobal));
    assert_eq!(t.cpu.cr3, 0x0010_1000);
    t.cpu.cr2 = 0x1_2345_6789;
    t.cpu.gpr[reg::RCX] = u64::MAX;
    t.ok(&[0x0f, 0x20, 0xd1], Effect::Next); // mov ecx, cr2
    assert_eq!(t.cpu.gpr[reg::RCX], 0x2345_6789);
}

#[test]
fn cr8_only_in_64bit_mode() {
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = 0xa;
    t.ok(&[0x44, 0x0f, 0x22, 0xc0], Effect::Next); // mov cr8, rax
    assert_eq!(t.cpu.cr8, 0xa);
    t.ok(&[0x44, 0x0f, 0x20, 0xc3], Effect::Next); // mov rbx, cr8
    assert_eq!(t.cpu.gpr[reg::RBX], 0xa);
    t.cpu.gpr[reg::RAX] = 0x10;
    t.fault(&[0x44, 0x0f, 0x22, 0xc0], gp0());
    // Outside 64-bit mode CR8 does not exist (AMD's LOCK MOV CR0 alias is not advertised; iced
    // does not decode it either): an instruction decoded as 64-bit code faults in compat mode.
    let insn = t.decode(&[0x44, 0x0f, 0x22, 0xc0]);
    t.cpu.cs = Segment::flat32(0x08, true);
    let before = t.cpu.clone();
    assert_eq!(
        privileged::execute(&mut t.cpu, &mut t.mem, &mut t.bus, &insn),
        Err(ud())
    );
    assert_eq!(t.cpu, before);
}

// ---- debug registers ---------------------------------------------------------------------

#[test]
fn debug_registers_store_with_fixed_bits() {
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = 0xffff_8000_0000_1000;
    t.ok(&[0x0f, 0x23, 0xc0], Effect::Next); // mov dr0, rax
    assert_eq!(t.cpu.dr[0], 0xffff_8000_0000_1000);
    t.cpu.gpr[reg::RAX] = 0xffff_ffff;
    t.ok(&[0x0f, 0x23, 0xf8], Effect::Next); // mov dr7, rax
    assert_eq!(t.cpu.dr7, 0xffff_27ff);
    t.cpu.gpr[reg::RAX] = 0;
    t.ok(&[0x0f, 0x23, 0xf0], Effect::Next); // mov dr6, rax
    assert_eq!(t.cpu.dr6, 0xffff_0ff0);
    // DR4/DR5 alias DR6/DR7 while CR4.DE is clear.
    t.cpu.gpr[reg::RAX] = 0x1;
    t.ok(&[0x0f, 0x23, 0xe0], Effect::Next); // mov dr4, rax
    assert_eq!(t.cpu.dr6, 0xffff_0ff1);
    t.ok(&[0x0f, 0x21, 0xe9], Effect::Next); // mov rcx, dr5
    assert_eq!(t.cpu.gpr[reg::RCX], 0xffff_27ff);
    t.cpu.cr4 |= ctl::CR4_DE;
    t.fault(&[0x0f, 0x23, 0xe0], ud());
    t.fault(&[0x0f, 0x21, 0xe9], ud());
    // Upper halves of DR6/DR7 are reserved.
    t.cpu.gpr[reg::RAX] = 1 << 32;
    t.fault(&[0x0f, 0x23, 0xf8], gp0());
    t.fault(&[0x0f, 0x23, 0xf0], gp0());
    t.user();
    t.fault(&[0x0f, 0x21, 0xc0], gp0());
}

// ---- descriptor tables, MSW ----------------------------------------------------------------

#[test]
fn lgdt_lidt_sgdt_sidt() {
    let mut t = m(64);
    t.poke(
        0x2000,
        &[0x7f, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x80, 0xff, 0xff],
    );
    t.cpu.gpr[reg::RAX] = 0x2000;
    t.ok(&[0x0f, 0x01, 0x10], Effect::Next); // lgdt [rax]
    assert_eq!(
        (t.cpu.gdtr.base, t.cpu.gdtr.limit),
        (0xffff_8000_0000_1000, 0x7f)
    );
    t.ok(&[0x0f, 0x01, 0x18], Effect::Next); // lidt [rax]
    assert_eq!(t.cpu.idtr, t.cpu.gdtr);
    t.cpu.gpr[reg::RAX] = 0x3000;
    t.user(); // SGDT is not privileged (no UMIP)
    t.ok(&[0x0f, 0x01, 0x00], Effect::Next); // sgdt [rax]
    assert_eq!(t.peek(0x3000, 10), t.peek(0x2000, 10));
    t.fault(&[0x0f, 0x01, 0x10], gp0());
    // A non-canonical base is refused.
    let mut t = m(64);
    t.poke(0x2000, &[0xff, 0xff, 0, 0, 0, 0, 0, 0x80, 0, 0]);
    t.cpu.gpr[reg::RAX] = 0x2000;
    t.fault(&[0x0f, 0x01, 0x10], gp0());
    // An operand outside memory faults precisely.
    t.cpu.gpr[reg::RAX] = 0xffff8;
    t.fault(
        &[0x0f, 0x01, 0x10],
        Exception::Memory(ringzero_translator::mem::MemFault {
            addr: 0xffff8,
            len: 10,
            write: false,
        }),
    );
    // 32-bit mode: 4-byte base; a 16-bit operand size keeps 24 bits.
    let mut t = m(32);
    t.poke(0x2000, &[0xff, 0x07, 0x78, 0x56, 0x34, 0x12]);
    t.cpu.gpr[reg::RBX] = 0x2000;
    t.ok(&[0x0f, 0x01, 0x1b], Effect::Next); // lidt [ebx]
    assert_eq!((t.cpu.idtr.base, t.cpu.idtr.limit), (0x1234_5678, 0x7ff));
    t.ok(&[0x66, 0x0f, 0x01, 0x13], Effect::Next); // o16 lgdt [ebx]
    assert_eq!((t.cpu.gdtr.base, t.cpu.gdtr.limit), (0x34_5678, 0x7ff));
    t.cpu.gpr[reg::RBX] = 0x2100;
    t.ok(&[0x0f, 0x01, 0x0b], Effect::Next); // sidt [ebx]
    assert_eq!(t.peek(0x2100, 6), &[0xff, 0x07, 0x78, 0x56, 0x34, 0x12]);
    // Register forms do not exist.
    assert_ne!(t.decode(&[0x0f, 0x01, 0xd0]).mnemonic(), Mnemonic::Lgdt);
}

#[test]
fn smsw_lmsw_clts() {
    let mut t = m(32);
    t.cpu.cr0 = ctl::CR0_PE | ctl::CR0_ET | ctl::CR0_TS | ctl::CR0_PG;
    t.user();
    t.cpu.gpr[reg::RAX] = u64::MAX;
    t.ok(&[0x0f, 0x01, 0xe0], Effect::Next); // smsw eax
    assert_eq!(t.cpu.gpr[reg::RAX], t.cpu.cr0);
    t.cpu.gpr[reg::RBX] = 0x2000;
    t.poke(0x2000, &[0xaa; 4]);
    t.ok(&[0x0f, 0x01, 0x23], Effect::Next); // smsw [ebx]: 16 bits
    assert_eq!(t.peek(0x2000, 4), &[0x19, 0x00, 0xaa, 0xaa]);
    t.fault(&[0x0f, 0x06], gp0()); // clts at CPL 3
    t.fault(&[0x0f, 0x01, 0xf0], gp0()); // lmsw ax at CPL 3
    let mut t = m(32);
    t.cpu.cr0 = ctl::CR0_PE | ctl::CR0_ET | ctl::CR0_TS;
    t.ok(&[0x0f, 0x06], Effect::Next);
    assert_eq!(t.cpu.cr0, ctl::CR0_PE | ctl::CR0_ET);
    // LMSW loads MP/EM/TS and cannot clear PE; upper bits of the source are ignored.
    t.cpu.gpr[reg::RAX] = 0xfff0 | 0xe;
    t.ok(&[0x0f, 0x01, 0xf0], Effect::Next); // lmsw ax
    assert_eq!(t.cpu.cr0, ctl::CR0_PE | ctl::CR0_ET | 0xe);
    t.poke(0x2000, &[0x00, 0x00]);
    t.cpu.gpr[reg::RBX] = 0x2000;
    t.ok(&[0x0f, 0x01, 0x33], Effect::Next); // lmsw [ebx]
    assert_eq!(t.cpu.cr0, ctl::CR0_PE | ctl::CR0_ET);
    // From real mode LMSW can set PE.
    let mut t = m(16);
    t.cpu.gpr[reg::RAX] = 1;
    t.ok(&[0x0f, 0x01, 0xf0], Effect::Flush(TlbFlush::All));
    assert_ne!(t.cpu.cr0 & ctl::CR0_PE, 0);
}

// ---- port I/O ------------------------------------------------------------------------------

#[test]
fn in_out_forms_and_widths() {
    let mut t = m(32);
    t.cpu.gpr[reg::RAX] = 0x1111_2222_3333_4444;
    t.bus.inputs.extend([0xab, 0xcdef, 0x1234_5678]);
    t.ok(&[0xe4, 0x60], Effect::Next); // in al, 0x60
    assert_eq!(t.cpu.gpr[reg::RAX], 0x1111_2222_3333_44ab);
    t.cpu.gpr[reg::RDX] = 0xffff_0cf8;
    t.ok(&[0x66, 0xed], Effect::Next); // in ax, dx
    assert_eq!(t.cpu.gpr[reg::RAX], 0x1111_2222_3333_cdef);
    t.ok(&[0xed], Effect::Next); // in eax, dx: zero-extends
    assert_eq!(t.cpu.gpr[reg::RAX], 0x1234_5678);
    assert_eq!(t.bus.ins, vec![(0x60, 1), (0xcf8, 2), (0xcf8, 4)]);
    t.ok(&[0xe6, 0x80], Effect::Next); // out 0x80, al
    t.ok(&[0xee], Effect::Next); // out dx, al
    t.ok(&[0x66, 0xef], Effect::Next); // out dx, ax
    t.ok(&[0xe7, 0x70], Effect::Next); // out 0x70, eax
    assert_eq!(
        t.bus.outs,
        vec![
            (0x80, 1, 0x78),
            (0xcf8, 1, 0x78),
            (0xcf8, 2, 0x5678),
            (0x70, 4, 0x1234_5678)
        ]
    );
}

/// A 32-bit CPL 3 CPU with IOPL 0 and a TSS at 0x3000 whose bitmap (at TSS+0x68) allows only
/// port 0x3f8 and ports 0x60-0x67.
fn tss_machine() -> M {
    let mut t = m(32);
    t.user();
    let limit = 0x68 + 0x2000; // the whole bitmap plus the terminating byte
    t.cpu.tr = Segment {
        selector: 0x28,
        base: 0x3000,
        limit,
        type_: 0xb,
        s: false,
        present: true,
        ..Segment::default()
    };
    t.poke(0x3066, &[0x68, 0x00]);
    for b in &mut t.mem.bytes[0x3068..0x3068 + 0x2001] {
        *b = 0xff;
    }
    t.mem.bytes[0x3068 + 0x3f8 / 8] = 0xfe;
    t.mem.bytes[0x3068 + 0x60 / 8] = 0x00;
    t
}

#[test]
fn io_permission_bitmap() {
    let mut t = tss_machine();
    t.cpu.gpr[reg::RDX] = 0x3f8;
    t.ok(&[0xee], Effect::Next); // out dx, al: allowed
    t.fault(&[0x66, 0xef], gp0()); // out dx, ax touches 0x3f9
    t.cpu.gpr[reg::RDX] = 0x3f9;
    t.fault(&[0xee], gp0());
    t.ok(&[0xe5, 0x64], Effect::Next); // in eax, 0x64: 0x64-0x67 allowed
    t.fault(&[0xe5, 0x66], gp0()); // 0x66-0x69 crosses into denied ports
    t.ok(&[0xe4, 0x67], Effect::Next);
    // IOPL 3 bypasses the bitmap.
    t.cpu.rflags |= rflags::IOPL;
    t.cpu.gpr[reg::RDX] = 0x3f9;
    t.ok(&[0xee], Effect::Next);
    // CPL 0 <= IOPL 0 needs no bitmap either.
    let mut t = tss_machine();
    t.cpu.cs.dpl = 0;
    t.cpu.tr.limit = 0x10;
    t.ok(&[0xe4, 0x71], Effect::Next);
    // A byte of the bitmap beyond the TSS limit denies the access.
    let mut t = tss_machine();
    t.cpu.tr.limit = 0x68 + 0x3f8 / 8; // the second byte read lies beyond the limit
    t.cpu.gpr[reg::RDX] = 0x3f8;
    t.fault(&[0xee], gp0());
    t.cpu.tr.limit += 1;
    t.ok(&[0xee], Effect::Next);
    // A 16-bit TSS has no bitmap; nor does a TSS shorter than 0x68 bytes.
    let mut t = tss_machine();
    t.cpu.tr.type_ = 3;
    t.fault(&[0xe4, 0x60], gp0());
    let mut t = tss_machine();
    t.cpu.tr.limit = 0x66;
    t.fault(&[0xe4, 0x60], gp0());
    // Virtual-8086 mode always consults the bitmap, even at IOPL 3.
    let mut t = tss_machine();
    t.cpu.rflags |= rflags::VM | rflags::IOPL;
    t.cpu.gpr[reg::RDX] = 0x3f9;
    t.fault(&[0xee], gp0());
    t.cpu.gpr[reg::RDX] = 0x3f8;
    t.ok(&[0xee], Effect::Next);
    // Real mode never does.
    let mut t = m(16);
    t.ok(&[0xe4, 0x71], Effect::Next);
    assert_eq!(t.bus.outs.len() + t.bus.ins.len(), 1);
}

#[test]
fn rep_outsb_and_insw_with_direction() {
    let mut t = m(32);
    t.poke(0x2000, b"hello");
    t.cpu.gpr[reg::RSI] = 0x2000;
    t.cpu.gpr[reg::RCX] = 5;
    t.cpu.gpr[reg::RDX] = 0x3f8;
    t.ok(&[0xf3, 0x6e], Effect::Next); // rep outsb
    let sent: Vec<u8> = t.bus.outs.iter().map(|&(_, _, v)| v as u8).collect();
    assert_eq!(sent, b"hello");
    assert!(t.bus.outs.iter().all(|&(p, s, _)| (p, s) == (0x3f8, 1)));
    assert_eq!((t.cpu.gpr[reg::RSI], t.cpu.gpr[reg::RCX]), (0x2005, 0));
    // rep insw backwards (DF = 1) into ES:EDI.
    t.cpu.rflags |= rflags::DF;
    t.cpu.gpr[reg::RDI] = 0x3004;
    t.cpu.gpr[reg::RCX] = 3;
    t.bus.inputs.extend([0x1111, 0x2222, 0x3333]);
    t.ok(&[0xf3, 0x66, 0x6d], Effect::Next);
    assert_eq!(t.peek(0x3000, 6), &[0x33, 0x33, 0x22, 0x22, 0x11, 0x11]);
    assert_eq!((t.cpu.gpr[reg::RDI], t.cpu.gpr[reg::RCX]), (0x2ffe, 0));
    // A zero count does nothing (no port access).
    let before = t.bus.ins.len();
    t.ok(&[0xf3, 0x66, 0x6d], Effect::Next);
    assert_eq!(t.bus.ins.len(), before);
    // Without REP: one element, rCX untouched.
    t.cpu.rflags &= !rflags::DF;
    t.cpu.gpr[reg::RCX] = 7;
    t.cpu.gpr[reg::RSI] = 0x2000;
    t.ok(&[0x6f], Effect::Next); // outsd
    assert_eq!(t.bus.outs.last(), Some(&(0x3f8, 4, 0x6c6c_6568)));
    assert_eq!((t.cpu.gpr[reg::RSI], t.cpu.gpr[reg::RCX]), (0x2004, 7));
}

#[test]
fn string_io_address_size_and_segment_override() {
    // 16-bit addressing (0x67 in 32-bit code) wraps SI and counts with CX only.
    let mut t = m(32);
    t.mem = FlatMem::new(0, 0x20000);
    t.cpu.fs.base = 0x4000;
    t.poke(0x4000 + 0xffff, &[0x41]);
    t.poke(0x4000, &[0x42]);
    t.cpu.gpr[reg::RSI] = 0xdead_ffff;
    t.cpu.gpr[reg::RCX] = 0xffff_0002;
    t.cpu.gpr[reg::RDX] = 0x80;
    t.ok(&[0x67, 0xf3, 0x64, 0x6e], Effect::Next); // rep outsb fs:[si]
    assert_eq!(t.bus.outs, vec![(0x80, 1, 0x41), (0x80, 1, 0x42)]);
    assert_eq!(t.cpu.gpr[reg::RSI], 0xdead_0001);
    assert_eq!(t.cpu.gpr[reg::RCX], 0xffff_0000);
    // 64-bit mode: INS ignores ES base, FS override applies to OUTS.
    let mut t = m(64);
    t.cpu.es.base = 0x5000;
    t.cpu.gpr[reg::RDI] = 0x100;
    t.cpu.gpr[reg::RDX] = 0x60;
    t.bus.inputs.push_back(0x99);
    t.ok(&[0x6c], Effect::Next); // insb
    assert_eq!(t.peek(0x100, 1), &[0x99]);
    assert_eq!(t.cpu.gpr[reg::RDI], 0x101);
}

#[test]
fn rep_string_io_faults_are_precise() {
    // The first element faulting: nothing changes and no port is read.
    let mut t = m(32);
    t.cpu.gpr[reg::RDI] = 0x10000;
    t.cpu.gpr[reg::RCX] = 4;
    t.fault(
        &[0xf3, 0x6c],
        Exception::Memory(ringzero_translator::mem::MemFault {
            addr: 0x10000,
            len: 1,
            write: false,
        }),
    );
    assert!(t.bus.ins.is_empty());
    // A later element faulting: the earlier ones are done, RIP stays for the re-execution.
    t.cpu.gpr[reg::RDI] = 0xfffe;
    t.bus.inputs.extend([1, 2, 3]);
    assert_eq!(t.run(&[0xf3, 0x6c]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, CODE);
    assert_eq!((t.cpu.gpr[reg::RDI], t.cpu.gpr[reg::RCX]), (0x10000, 2));
    assert_eq!(t.peek(0xfffe, 2), &[1, 2]);
    assert_eq!(t.bus.ins.len(), 2);
    // The re-execution then faults with the state as it is.
    t.fault(
        &[0xf3, 0x6c],
        Exception::Memory(ringzero_translator::mem::MemFault {
            addr: 0x10000,
            len: 1,
            write: false,
        }),
    );
    // The permission check comes before anything else, even with a zero count.
    let mut t = tss_machine();
    t.cpu.gpr[reg::RDX] = 0x3f9;
    t.cpu.gpr[reg::RCX] = 0;
    t.fault(&[0xf3, 0x6e], gp0());
}

#[test]
fn long_rep_runs_in_batches() {
    let mut t = m(64);
    let n = privileged::REP_IO_BATCH + 10;
    t.cpu.gpr[reg::RCX] = n;
    t.cpu.gpr[reg::RSI] = 0;
    assert_eq!(t.run(&[0xf3, 0x6e]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, CODE); // more to do
    assert_eq!(t.cpu.gpr[reg::RCX], 10);
    t.ok(&[0xf3, 0x6e], Effect::Next);
    assert_eq!(t.bus.outs.len() as u64, n);
    assert_eq!(t.cpu.gpr[reg::RSI], n);
}

// ---- interrupt flag, HLT -------------------------------------------------------------------

#[test]
fn cli_sti_iopl_rules_and_shadow() {
    let mut t = m(32);
    t.cpu.rflags |= rflags::IF;
    t.ok(&[0xfa], Effect::Next);
    assert_eq!(t.cpu.rflags & rflags::IF, 0);
    t.ok(&[0xfb], Effect::Shadow); // 0 -> 1
    t.ok(&[0xfb], Effect::Next); // already set
    t.user();
    t.fault(&[0xfa], gp0());
    t.fault(&[0xfb], gp0());
    t.cpu.rflags |= rflags::IOPL;
    t.ok(&[0xfa], Effect::Next);
    // Virtual-8086 mode: IOPL 3 only.
    let mut t = m(16);
    t.cpu.cr0 |= ctl::CR0_PE;
    t.cpu.rflags |= rflags::VM | (2 << 12);
    t.fault(&[0xfb], gp0());
    t.cpu.rflags |= rflags::IOPL;
    t.ok(&[0xfb], Effect::Shadow);
    // Real mode: always.
    let mut t = m(16);
    t.ok(&[0xfb], Effect::Shadow);
}

#[test]
fn hlt() {
    let mut t = m(64);
    t.ok(&[0xf4], Effect::Halt);
    assert!(!t.cpu.halted); // the monitor's business
    t.user();
    t.fault(&[0xf4], gp0());
    let mut t = m(16);
    t.ok(&[0xf4], Effect::Halt);
}

// ---- MSRs, CPUID, time stamps --------------------------------------------------------------

#[test]
fn rdmsr_wrmsr() {
    let mut t = m(64);
    t.cpu.gpr[reg::RCX] = u64::from(msr::LSTAR) | (0xdead << 32); // upper ECX ignored
    t.cpu.gpr[reg::RDX] = 0xffff_ffff_ffff_8000;
    t.cpu.gpr[reg::RAX] = 0xffff_ffff_1234_5678;
    t.ok(&[0x0f, 0x30], Effect::Next);
    assert_eq!(t.cpu.msr(msr::LSTAR), Some(0xffff_8000_1234_5678));
    t.cpu.gpr[reg::RAX] = u64::MAX;
    t.cpu.gpr[reg::RDX] = u64::MAX;
    t.ok(&[0x0f, 0x32], Effect::Next);
    assert_eq!(t.cpu.gpr[reg::RAX], 0x1234_5678);
    assert_eq!(t.cpu.gpr[reg::RDX], 0xffff_8000);
    // EFER.NXE flushes; reserved bits and unknown MSRs fault.
    t.cpu.gpr[reg::RCX] = u64::from(msr::EFER);
    t.cpu.gpr[reg::RDX] = 0;
    t.cpu.gpr[reg::RAX] = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE;
    t.ok(&[0x0f, 0x30], Effect::Flush(TlbFlush::All));
    t.cpu.gpr[reg::RAX] = ctl::EFER_NXE; // clearing LME with paging on
    t.fault(&[0x0f, 0x30], gp0());
    t.cpu.gpr[reg::RCX] = 0x4b56_4d00; // a KVM paravirtual MSR: not this CPU
    t.fault(&[0x0f, 0x32], gp0());
    // TSC goes through the bus.
    t.cpu.gpr[reg::RCX] = u64::from(msr::TSC);
    t.cpu.gpr[reg::RDX] = 1;
    t.cpu.gpr[reg::RAX] = 2;
    t.ok(&[0x0f, 0x30], Effect::Next);
    assert_eq!(t.bus.tsc_writes, vec![(1 << 32) | 2]);
    t.user();
    t.fault(&[0x0f, 0x32], gp0());
    t.fault(&[0x0f, 0x30], gp0());
}

#[test]
fn cpuid_leaves() {
    let mut t = m(64);
    t.cpu.gpr[reg::RAX] = 0xffff_ffff_0000_0000;
    t.cpu.gpr[reg::RBX] = u64::MAX;
    t.user(); // not privileged
    t.ok(&[0x0f, 0xa2], Effect::Next);
    assert_eq!(t.cpu.gpr[reg::RAX], 7);
    let vendor: Vec<u8> = [reg::RBX, reg::RDX, reg::RCX]
        .iter()
        .flat_map(|&r| (t.cpu.gpr[r] as u32).to_le_bytes())
        .collect();
    assert_eq!(vendor, b"AuthenticAMD");
    assert_eq!(t.cpu.gpr[reg::RBX] >> 32, 0);
    t.cpu.gpr[reg::RAX] = 1;
    t.ok(&[0x0f, 0xa2], Effect::Next);
    assert_ne!(t.cpu.gpr[reg::RDX] & (1 << 9), 0);
    // The APIC bit follows IA32_APIC_BASE.EN.
    t.cpu.apic_base &= !(1 << 11);
    t.cpu.gpr[reg::RAX] = 1;
    t.ok(&[0x0f, 0xa2], Effect::Next);
    assert_eq!(t.cpu.gpr[reg::RDX] & (1 << 9), 0);
    t.cpu.gpr[reg::RAX] = 0x8000_0001;
    t.ok(&[0x0f, 0xa2], Effect::Next);
    assert_eq!(t.cpu.gpr[reg::RDX] & (1 << 9), 0);
    assert_ne!(t.cpu.gpr[reg::RDX] & (1 << 29), 0); // LM
}

#[test]
fn rdtsc_rdtscp_rdpmc() {
    let mut t = m(64);
    t.bus.tsc = 0x1122_3344_5566_7788;
    t.cpu.gpr[reg::RCX] = u64::MAX;
    t.cpu.set_msr(msr::TSC_AUX, 0x42);
    t.ok(&[0x0f, 0x31], Effect::Next);
    assert_eq!(
        (t.cpu.gpr[reg::RDX], t.cpu.gpr[reg::RAX]),
        (0x1122_3344, 0x5566_7788)
    );
    assert_eq!(t.cpu.gpr[reg::RCX], u64::MAX);
    t.ok(&[0x0f, 0x01, 0xf9], Effect::Next);
    assert_eq!(t.cpu.gpr[reg::RCX], 0x42);
    t.user();
    t.ok(&[0x0f, 0x31], Effect::Next);
    t.cpu.cr4 |= ctl::CR4_TSD;
    t.fault(&[0x0f, 0x31], gp0());
    t.fault(&[0x0f, 0x01, 0xf9], gp0());
    t.fault(&[0x0f, 0x33], gp0());
    let mut t = m(64);
    t.cpu.cr4 |= ctl::CR4_TSD | ctl::CR4_PCE;
    t.ok(&[0x0f, 0x31], Effect::Next); // CPL 0 ignores TSD
    t.fault(&[0x0f, 0x33], gp0()); // no counters at all
}

#[test]
fn invlpg_cache_instructions() {
    let mut t = m(64);
    t.cpu.fs.base = 0x7000_0000;
    t.cpu.gpr[reg::RAX] = 0x1234;
    t.ok(
        &[0x64, 0x0f, 0x01, 0x38],
        Effect::Flush(TlbFlush::Page(0x7000_1234)),
    );
    t.ok(&[0x0f, 0x01, 0x38], Effect::Flush(TlbFlush::Page(0x1234)));
    // A non-canonical address invalidates nothing.
    t.cpu.gpr[reg::RAX] = 0x8000_0000_0000_0000;
    t.ok(&[0x0f, 0x01, 0x38], Effect::Next);
    t.ok(&[0x0f, 0x09], Effect::Next); // wbinvd
    t.ok(&[0x0f, 0x08], Effect::Next); // invd
    t.user();
    t.fault(&[0x0f, 0x01, 0x38], gp0());
    t.fault(&[0x0f, 0x09], gp0());
    t.fault(&[0x0f, 0x08], gp0());
    let mut t = m(32);
    t.cpu.ds.base = 0x1000;
    t.cpu.gpr[reg::RAX] = 0xffff_f000;
    t.ok(&[0x0f, 0x01, 0x38], Effect::Flush(TlbFlush::Page(0)));
}

// ---- fast system calls ---------------------------------------------------------------------

/// STAR as Linux sets it: kernel CS 0x10, user base 0x23 (CS32 0x23, SS 0x2b, CS64 0x33).
const STAR: u64 = (0x23 << 48) | (0x10 << 32);

fn syscall_machine() -> M {
    let mut t = m(64);
    t.cpu.efer |= ctl::EFER_SCE;
    t.cpu.set_msr(msr::STAR, STAR);
    t.cpu.set_msr(msr::LSTAR, 0xffff_ffff_8100_0000);
    t.cpu.set_msr(msr::CSTAR, 0xffff_ffff_8100_1000);
    t.cpu.set_msr(
        msr::SFMASK,
        rflags::IF | rflags::TF | rflags::DF | rflags::AC,
    );
    t.cpu.cs = Segment {
        dpl: 3,
        ..Segment::code64(0x33)
    };
    t.cpu.ss = Segment {
        dpl: 3,
        ..Segment::flat32(0x2b, false)
    };
    t.cpu.rflags = rflags::FIXED1 | rflags::IF | rflags::DF | rflags::CF | rflags::RF;
    t.cpu.rip = 0x40_1000;
    t
}

#[test]
fn syscall_sysret_round_trip() {
    let mut t = syscall_machine();
    t.cpu.rip = CODE;
    let user_flags = t.cpu.rflags;
    assert_eq!(t.run(&[0x0f, 0x05]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, 0xffff_ffff_8100_0000);
    assert_eq!(t.cpu.gpr[reg::RCX], CODE + 2);
    assert_eq!(t.cpu.gpr[reg::R11], user_flags & !rflags::RF);
    assert_eq!(t.cpu.rflags, rflags::FIXED1 | rflags::CF);
    assert_eq!(t.cpu.cs, Segment::code64(0x10));
    assert_eq!(t.cpu.ss, Segment::flat32(0x18, false));
    assert_eq!((t.cpu.cpl(), t.cpu.mode()), (0, CpuMode::Long64));
    // Back with SYSRETQ.
    t.cpu.rip = 0xffff_ffff_8100_0040;
    t.cpu.gpr[reg::R11] |= rflags::VM | (1 << 3) | (1 << 40);
    let insn = t.decode(&[0x48, 0x0f, 0x07]);
    assert_eq!(
        privileged::execute(&mut t.cpu, &mut t.mem, &mut t.bus, &insn),
        Ok(Effect::Next)
    );
    assert_eq!(t.cpu.rip, CODE + 2);
    assert_eq!(t.cpu.rflags, user_flags & !rflags::RF);
    assert_eq!(t.cpu.cs.selector, 0x33);
    assert_eq!(t.cpu.ss.selector, 0x2b);
    assert_eq!((t.cpu.cpl(), t.cpu.mode()), (3, CpuMode::Long64));
    assert_eq!(
        (t.cpu.ss.dpl, t.cpu.ss.base, t.cpu.ss.limit),
        (3, 0, 0xffff_ffff)
    );
}

#[test]
fn sysret_to_compat_and_amd_rules() {
    let mut t = syscall_machine();
    t.cpu.cs = Segment::code64(0x10);
    t.cpu.ss = Segment::flat32(0x18, false);
    t.cpu.gpr[reg::RCX] = 0xffff_ffff_0804_8000;
    t.cpu.gpr[reg::R11] = rflags::FIXED1 | rflags::IF;
    assert_eq!(t.run(&[0x0f, 0x07]), Ok(Effect::Next)); // sysretd
    assert_eq!(t.cpu.rip, 0x0804_8000);
    assert_eq!(t.cpu.cs.selector, 0x23);
    assert_eq!(
        (t.cpu.mode(), t.cpu.cpl(), t.cpu.code_bits()),
        (CpuMode::Compat, 3, 32)
    );
    // SYSCALL from compatibility mode enters at CSTAR (AMD).
    t.cpu.rip = 0x0804_8000;
    assert_eq!(t.run(&[0x0f, 0x05]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, 0xffff_ffff_8100_1000);
    assert_eq!(t.cpu.gpr[reg::RCX], 0x0804_8002);
    assert_eq!(t.cpu.mode(), CpuMode::Long64);
    // AMD loads a non-canonical RCX without a #GP at CPL 0.
    t.cpu.gpr[reg::RCX] = 0x0000_8000_0000_0000;
    assert_eq!(t.run(&[0x48, 0x0f, 0x07]), Ok(Effect::Next));
    assert_eq!((t.cpu.rip, t.cpu.cpl()), (0x0000_8000_0000_0000, 3));
    // SYSRET at CPL 3: #GP(0); SCE clear: #UD for both.
    t.fault(&[0x48, 0x0f, 0x07], gp0());
    t.cpu.efer &= !ctl::EFER_SCE;
    t.fault(&[0x0f, 0x05], ud());
    t.fault(&[0x48, 0x0f, 0x07], ud());
}

#[test]
fn syscall_sysret_in_legacy_mode() {
    let mut t = m(32);
    t.user();
    t.cpu.efer = ctl::EFER_SCE;
    t.cpu.set_msr(msr::STAR, STAR | 0xc010_0000);
    t.cpu.rflags = rflags::FIXED1 | rflags::IF | rflags::RF | rflags::DF;
    assert_eq!(t.run(&[0x0f, 0x05]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, 0xc010_0000);
    assert_eq!(t.cpu.gpr[reg::RCX], CODE + 2);
    assert_eq!(t.cpu.rflags, rflags::FIXED1 | rflags::DF);
    assert_eq!(
        (t.cpu.cpl(), t.cpu.mode(), t.cpu.code_bits()),
        (0, CpuMode::Protected, 32)
    );
    assert_eq!(t.cpu.cs.selector, 0x10);
    assert_eq!(t.run(&[0x0f, 0x07]), Ok(Effect::Next));
    assert_eq!(t.cpu.rip, CODE + 2);
    assert_eq!(t.cpu.rflags, rflags::FIXED1 | rflags::DF | rflags::IF);
    assert_eq!(
        (t.cpu.cs.selector, t.cpu.ss.selector, t.cpu.cpl()),
        (0x23, 0x2b, 3)
    );
    // Real mode: SYSRET is #GP(0).
    let mut t = m(16);
    t.cpu.efer = ctl::EFER_SCE;
    t.fault(&[0x0f, 0x07], gp0());
}

#[test]
fn sysenter_sysexit_legacy_only() {
    let mut t = m(32);
    t.user();
    t.cpu.set_msr(msr::SYSENTER_CS, 0x60);
    t.cpu.set_msr(msr::SYSENTER_ESP, 0xc000_8000);
    t.cpu.set_msr(msr::SYSENTER_EIP, 0xc000_1000);
    t.cpu.rflags |= rflags::IF;
    assert_eq!(t.run(&[0x0f, 0x34]), Ok(Effect::Next));
    assert_eq!((t.cpu.rip, t.cpu.gpr[reg::RSP]), (0xc000_1000, 0xc000_8000));
    assert_eq!(
        (t.cpu.cs.selector, t.cpu.ss.selector, t.cpu.cpl()),
        (0x60, 0x68, 0)
    );
    assert_eq!(t.cpu.rflags & rflags::IF, 0);
    t.cpu.gpr[reg::RDX] = 0x0804_9000;
    t.cpu.gpr[reg::RCX] = 0xbfff_f000;
    assert_eq!(t.run(&[0x0f, 0x35]), Ok(Effect::Next));
    assert_eq!((t.cpu.rip, t.cpu.gpr[reg::RSP]), (0x0804_9000, 0xbfff_f000));
    assert_eq!(
        (t.cpu.cs.selector, t.cpu.ss.selector, t.cpu.cpl()),
        (0x73, 0x7b, 3)
    );
    assert!(t.cpu.cs.db && !t.cpu.cs.l);
    t.fault(&[0x0f, 0x35], gp0()); // SYSEXIT at CPL 3
    t.cpu.set_msr(msr::SYSENTER_CS, 0);
    t.fault(&[0x0f, 0x34], gp0());
    // Real mode: #GP(0). Long mode (AMD): #UD, both forms.
    let mut t = m(16);
    t.cpu.set_msr(msr::SYSENTER_CS, 0x60);
    t.fault(&[0x0f, 0x34], gp0());
    let mut t = m(64);
    t.cpu.set_msr(msr::SYSENTER_CS, 0x60);
    t.fault(&[0x0f, 0x34], ud());
    t.fault(&[0x48, 0x0f, 0x35], ud());
}

#[test]
fn swapgs() {
    let mut t = m(64);
    t.cpu.gs.base = 0x1111;
    t.cpu.set_msr(msr::KERNEL_GS_BASE, 0xffff_8880_0000_0000);
    t.ok(&[0x0f, 0x01, 0xf8], Effect::Next);
    assert_eq!(t.cpu.gs.base, 0xffff_8880_0000_0000);
    assert_eq!(t.cpu.msr(msr::KERNEL_GS_BASE), Some(0x1111));
    t.ok(&[0x0f, 0x01, 0xf8], Effect::Next);
    assert_eq!(t.cpu.gs.base, 0x1111);
    t.user();
    t.fault(&[0x0f, 0x01, 0xf8], gp0());
    // Compatibility mode: #UD (the bytes do not decode in 32-bit code; execute the 64-bit decode).
    let mut t = m(64);
    let insn = t.decode(&[0x0f, 0x01, 0xf8]);
    t.cpu.cs = Segment::flat32(0x08, true);
    let before = t.cpu.clone();
    assert_eq!(
        privileged::execute(&mut t.cpu, &mut t.mem, &mut t.bus, &insn),
        Err(ud())
    );
    assert_eq!(t.cpu, before);
}

// ---- software interrupts, BOUND, #UD ---------------------------------------------------------

fn event(vector: u8, kind: EventKind) -> Effect {
    Effect::Deliver(Event {
        vector,
        error: None,
        kind,
    })
}

#[test]
fn software_interrupts() {
    let mut t = m(64);
    t.user();
    t.ok(&[0xcd, 0x80], event(0x80, EventKind::Software));
    t.ok(&[0xf1], event(1, EventKind::PrivilegedSoftware));
    t.ok(&[0xcc], event(3, EventKind::SoftwareException));
    let mut t = m(32);
    t.ok(&[0xce], Effect::Next); // OF clear
    t.cpu.rflags |= rflags::OF;
    t.ok(&[0xce], event(4, EventKind::SoftwareException));
    // Virtual-8086 mode without VME: INT n needs IOPL 3; INT3 does not.
    let mut t = m(16);
    t.cpu.cr0 |= ctl::CR0_PE;
    t.cpu.rflags |= rflags::VM;
    t.fault(&[0xcd, 0x21], gp0());
    t.ok(&[0xcc], event(3, EventKind::SoftwareException));
    t.cpu.rflags |= rflags::IOPL;
    t.ok(&[0xcd, 0x21], event(0x21, EventKind::Software));
}

#[test]
fn into_is_invalid_in_64bit_mode() {
    // 0xCE does not decode in 64-bit mode; a 64-bit CPU handed a 32-bit decode still #UDs.
    let mut t = m(32);
    let insn = t.decode(&[0xce]);
    t.cpu = cpu(64);
    t.cpu.rflags |= rflags::OF;
    let before = t.cpu.clone();
    assert_eq!(
        privileged::execute(&mut t.cpu, &mut t.mem, &mut t.bus, &insn),
        Err(ud())
    );
    assert_eq!(t.cpu, before);
}

#[test]
fn bound() {
    let mut t = m(32);
    t.poke(0x2000, &(-5i32).to_le_bytes());
    t.poke(0x2004, &(10i32).to_le_bytes());
    t.cpu.gpr[reg::RBX] = 0x2000;
    for (v, ok) in [
        (-5i64, true),
        (10, true),
        (0, true),
        (-6, false),
        (11, false),
    ] {
        t.cpu.gpr[reg::RAX] = v as u64 & 0xffff_ffff;
        if ok {
            t.ok(&[0x62, 0x03], Effect::Next); // bound eax, [ebx]
        } else {
            t.fault(&[0x62, 0x03], Exception::cpu(5));
        }
    }
    // 16-bit form: signed words.
    t.poke(0x2000, &[0x00, 0x80, 0xff, 0x7f]);
    t.cpu.gpr[reg::RAX] = 0x8000;
    t.ok(&[0x66, 0x62, 0x03], Effect::Next);
}

#[test]
fn unadvertised_and_unknown_instructions() {
    let mut t = m(64);
    t.fault(&[0x0f, 0x01, 0xd0], ud()); // xgetbv
    t.fault(&[0x0f, 0x01, 0xd1], ud()); // xsetbv
    t.fault(&[0x0f, 0xc7, 0xf0], ud()); // rdrand eax
    t.fault(&[0xf3, 0x48, 0x0f, 0xae, 0xc0], ud()); // rdfsbase rax
    t.fault(&[0x0f, 0x01, 0xc8], ud()); // monitor
    t.fault(
        &[0x0f, 0x01, 0xc1],
        Exception::Unimplemented(Mnemonic::Vmcall),
    );
}
