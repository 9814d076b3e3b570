//! Descriptor-table fixtures shared by the `system_segment` and `system_delivery` tests: one
//! GDT (with a TSS, an LDT, call gates, a task gate), a TSS and stacks in a [`FlatMem`].
#![allow(dead_code)] // each test crate uses a different subset

use iced_x86::{Decoder, DecoderOptions};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::Exception;
use ringzero_translator::state::{ctl, reg, rflags, CpuState, DescriptorTable, Segment};
use ringzero_translator::system::{segment, Effect};

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x3000;
pub const LDT: u64 = 0x4000;
pub const CODE: u64 = 0x5000;
/// Ring-3 stack top.
pub const STACK3: u64 = 0x8000;
/// Ring-0 stack top (TSS ESP0/RSP0).
pub const STACK0: u64 = 0x9000;
/// IST1 (deliberately not 16-aligned).
pub const IST1: u64 = 0xa008;
pub const MEM: usize = 0x10000;

pub const KCODE32: u16 = 0x08;
pub const KDATA: u16 = 0x10;
pub const UCODE32: u16 = 0x18;
pub const UDATA: u16 = 0x20;
pub const KCODE64: u16 = 0x28;
pub const UCODE64: u16 = 0x30;
/// 16-byte TSS descriptor (0x38 and 0x40).
pub const TSS_SEL: u16 = 0x38;
pub const NP_DATA: u16 = 0x48;
pub const LDT_SEL: u16 = 0x50;
pub const CODE16: u16 = 0x58;
/// Execute-only code.
pub const XO_CODE: u16 = 0x60;
/// 32-bit call gate, DPL 3, to KCODE32:0x5100 with 2 parameters.
pub const CALLGATE32: u16 = 0x68;
pub const CONFORMING: u16 = 0x70;
pub const TASKGATE: u16 = 0x78;
/// 64-bit call gate (16 bytes), DPL 3, to KCODE64:0x6000.
pub const CALLGATE64: u16 = 0x80;
/// Read-only data, DPL 3.
pub const UDATA_RO: u16 = 0x90;
/// 16-bit data (B=0), DPL 0.
pub const KDATA16: u16 = 0x98;
pub const GDT_LIMIT: u16 = 0x9f;

/// An 8-byte code/data/system descriptor; `flags` is the G(8) D(4) L(2) AVL(1) nibble.
pub fn seg_desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    u64::from(limit & 0xffff)
        | u64::from(base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | u64::from((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | u64::from(base >> 24) << 56
}

/// A gate (call/interrupt/trap/task): [low, high] halves; `count` is the parameter count or IST.
pub fn gate_desc(sel: u16, off: u64, access: u8, count: u8) -> [u64; 2] {
    [
        (off & 0xffff)
            | u64::from(sel) << 16
            | u64::from(count) << 32
            | u64::from(access) << 40
            | ((off >> 16) & 0xffff) << 48,
        off >> 32,
    ]
}

pub fn put(mem: &mut FlatMem, addr: u64, v: u64, n: usize) {
    mem.write(addr, &v.to_le_bytes()[..n]).unwrap();
}

pub fn get(mem: &mut FlatMem, addr: u64, n: usize) -> u64 {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b[..n]).unwrap();
    u64::from_le_bytes(b)
}

pub fn gdt(mem: &mut FlatMem, sel: u16, d: u64) {
    put(mem, GDT + u64::from(sel & !7), d, 8);
}

/// A flat 4 GiB data segment as the CPU caches it after loading `sel` (type with accessed).
pub fn flat_data(sel: u16, type_: u8, dpl: u8) -> Segment {
    Segment {
        selector: sel,
        base: 0,
        limit: 0xffff_ffff,
        type_,
        s: true,
        dpl,
        present: true,
        avl: false,
        l: false,
        db: true,
        g: true,
        unusable: false,
    }
}

/// Protected mode (or long mode with `long`) at CPL 0 on flat kernel segments, with the GDT,
/// TSS and LDT above loaded.
pub fn machine(long: bool) -> (CpuState, FlatMem) {
    let mut mem = FlatMem::new(0, MEM);
    gdt(&mut mem, KCODE32, seg_desc(0, 0xfffff, 0x9b, 0xc));
    gdt(&mut mem, KDATA, seg_desc(0, 0xfffff, 0x92, 0xc));
    gdt(&mut mem, UCODE32, seg_desc(0, 0xfffff, 0xfb, 0xc));
    gdt(&mut mem, UDATA, seg_desc(0, 0xfffff, 0xf3, 0xc));
    gdt(&mut mem, KCODE64, seg_desc(0, 0xfffff, 0x9b, 0xa));
    gdt(&mut mem, UCODE64, seg_desc(0, 0xfffff, 0xfb, 0xa));
    gdt(&mut mem, TSS_SEL, seg_desc(TSS as u32, 0x67, 0x89, 0));
    gdt(&mut mem, NP_DATA, seg_desc(0, 0xfffff, 0x13, 0xc));
    gdt(&mut mem, LDT_SEL, seg_desc(LDT as u32, 0xff, 0x82, 0));
    gdt(&mut mem, CODE16, seg_desc(0, 0xffff, 0x9b, 0));
    gdt(&mut mem, XO_CODE, seg_desc(0, 0xfffff, 0x99, 0xc));
    gdt(&mut mem, CALLGATE32, gate_desc(KCODE32, 0x5100, 0xec, 2)[0]);
    gdt(&mut mem, CONFORMING, seg_desc(0, 0xfffff, 0x9f, 0xc));
    gdt(&mut mem, TASKGATE, gate_desc(TSS_SEL, 0, 0xe5, 0)[0]);
    let g64 = gate_desc(KCODE64, 0x6000, 0xec, 0);
    gdt(&mut mem, CALLGATE64, g64[0]);
    gdt(&mut mem, CALLGATE64 + 8, g64[1]);
    gdt(&mut mem, UDATA_RO, seg_desc(0, 0xfffff, 0xf1, 0xc));
    gdt(&mut mem, KDATA16, seg_desc(0, 0xffff, 0x93, 0));
    // LDT entry 1 (selector 0x0c|RPL): DPL-3 data.
    put(
        &mut mem,
        LDT + 8,
        seg_desc(0x1234_0000, 0xfff, 0xf3, 0x4),
        8,
    );

    let mut cpu = CpuState::default();
    cpu.cr0 |= ctl::CR0_PE;
    cpu.gdtr = DescriptorTable {
        base: GDT,
        limit: GDT_LIMIT,
    };
    cpu.idtr = DescriptorTable {
        base: IDT,
        limit: 0xfff,
    };
    cpu.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: 0x67,
        type_: 0xb,
        s: false,
        present: true,
        ..Segment::default()
    };
    cpu.ldtr = Segment {
        selector: LDT_SEL,
        base: LDT,
        limit: 0xff,
        type_: 2,
        s: false,
        present: true,
        ..Segment::default()
    };
    let data = Segment {
        selector: KDATA,
        ..Segment::flat32(KDATA, false)
    };
    cpu.ss = data;
    cpu.ds = data;
    cpu.es = data;
    cpu.fs = data;
    cpu.gs = data;
    if long {
        cpu.cr0 |= ctl::CR0_PG;
        cpu.cr4 |= ctl::CR4_PAE;
        cpu.efer = ctl::EFER_LME | ctl::EFER_LMA;
        cpu.cs = Segment::code64(KCODE64);
        put(&mut mem, TSS + 4, STACK0, 8); // RSP0
        put(&mut mem, TSS + 0x24, IST1, 8); // IST1
    } else {
        cpu.cs = Segment::flat32(KCODE32, true);
        put(&mut mem, TSS + 4, STACK0, 4); // ESP0
        put(&mut mem, TSS + 8, u64::from(KDATA), 2); // SS0
    }
    cpu.rip = CODE;
    cpu.gpr[reg::RSP] = STACK0;
    cpu.rflags = rflags::FIXED1;
    (cpu, mem)
}

/// Switches `cpu` to ring 3 on the user segments (64-bit code with `long`).
pub fn to_ring3(cpu: &mut CpuState, long: bool) {
    cpu.cs = if long {
        Segment {
            dpl: 3,
            ..Segment::code64(UCODE64 | 3)
        }
    } else {
        Segment {
            dpl: 3,
            ..Segment::flat32(UCODE32 | 3, true)
        }
    };
    let data = Segment {
        dpl: 3,
        ..Segment::flat32(UDATA | 3, false)
    };
    cpu.ss = data;
    cpu.ds = data;
    cpu.es = data;
    cpu.gpr[reg::RSP] = STACK3;
}

/// Decodes `bytes` at CS:RIP in the CPU's mode and runs them through `segment::execute`.
pub fn run(cpu: &mut CpuState, mem: &mut FlatMem, bytes: &[u8]) -> Result<Effect, Exception> {
    let mut dec = Decoder::with_ip(cpu.code_bits(), bytes, cpu.rip, DecoderOptions::NONE);
    let insn = dec.decode();
    assert!(!insn.is_invalid(), "bytes {bytes:x?} do not decode");
    assert!(
        segment::handles(&insn),
        "{insn} is not a segmentation instruction"
    );
    segment::execute(cpu, mem, &insn)
}

/// Runs `bytes` expecting `exc`, and checks the state did not change.
pub fn faults(cpu: &mut CpuState, mem: &mut FlatMem, bytes: &[u8], exc: Exception) {
    let before = cpu.clone();
    assert_eq!(run(cpu, mem, bytes), Err(exc), "{bytes:x?}");
    assert_eq!(*cpu, before, "state changed by a faulting {bytes:x?}");
}

pub fn gp(e: u32) -> Exception {
    Exception::Cpu {
        vector: 13,
        error: Some(e),
    }
}
pub fn np(e: u32) -> Exception {
    Exception::Cpu {
        vector: 11,
        error: Some(e),
    }
}
pub fn ss(e: u32) -> Exception {
    Exception::Cpu {
        vector: 12,
        error: Some(e),
    }
}
pub fn ts(e: u32) -> Exception {
    Exception::Cpu {
        vector: 10,
        error: Some(e),
    }
}
