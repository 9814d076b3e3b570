//! Exception and interrupt delivery (`system::delivery::deliver`) in real, protected and long
//! mode: exact frames, stack switches through the TSS and IST, error codes, #DF, triple fault.

mod system_common;

use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::Exception;
use ringzero_translator::state::{reg, rflags, CpuState, Segment};
use ringzero_translator::system::delivery::{deliver, TripleFault};
use ringzero_translator::system::{Event, EventKind};
use system_common::*;

fn event(vector: u8, error: Option<u32>, kind: EventKind) -> Event {
    Event {
        vector,
        error,
        kind,
    }
}

fn idt32(mem: &mut FlatMem, vector: u8, sel: u16, off: u64, access: u8) {
    put(
        mem,
        IDT + 8 * u64::from(vector),
        gate_desc(sel, off, access, 0)[0],
        8,
    );
}

fn idt64(mem: &mut FlatMem, vector: u8, sel: u16, off: u64, access: u8, ist: u8) {
    let g = gate_desc(sel, off, access, ist);
    put(mem, IDT + 16 * u64::from(vector), g[0], 8);
    put(mem, IDT + 16 * u64::from(vector) + 8, g[1], 8);
}

fn frame(mem: &mut FlatMem, at: u64, n: usize, size: usize) -> Vec<u64> {
    (0..n)
        .map(|i| get(mem, at + (i * size) as u64, size))
        .collect()
}

/// Memory with a hole where every access is a page fault (error: W bit for writes).
struct HoleMem {
    inner: FlatMem,
    hole: std::ops::Range<u64>,
}

impl HoleMem {
    fn check(&self, addr: u64, len: usize, write: bool) -> Result<(), Exception> {
        let end = addr + len as u64;
        if addr < self.hole.end && end > self.hole.start {
            return Err(Exception::PageFault {
                linear: addr.max(self.hole.start),
                error: if write { 2 } else { 0 },
            });
        }
        Ok(())
    }
}

impl GuestMem for HoleMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        self.check(addr, buf.len(), false)?;
        self.inner.read(addr, buf)
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
        self.check(addr, data.len(), true)?;
        self.inner.write(addr, data)
    }
}

#[test]
fn real_mode_ivt_frame() {
    let mut cpu = CpuState::default();
    let mut mem = FlatMem::new(0, 0x40000);
    put(&mut mem, 0x21 * 4, 0x2000_1234, 4);
    cpu.cs = Segment {
        type_: 0xb,
        ..Segment::real_mode(0x100)
    };
    cpu.rip = 0x10;
    cpu.ss = Segment::real_mode(0x3000);
    cpu.gpr[reg::RSP] = 0x100;
    cpu.rflags = rflags::FIXED1 | rflags::IF | rflags::TF | rflags::CF;
    cpu.halted = true;
    deliver(&mut cpu, &mut mem, event(0x21, None, EventKind::External)).unwrap();
    assert_eq!(
        (cpu.cs.selector, cpu.cs.base, cpu.rip),
        (0x2000, 0x20000, 0x1234)
    );
    assert_eq!(cpu.gpr[reg::RSP], 0xfa);
    assert_eq!(frame(&mut mem, 0x300fa, 3, 2), vec![0x10, 0x100, 0x303]);
    assert_eq!(cpu.rflags, rflags::FIXED1 | rflags::CF);
    assert!(!cpu.halted);
}

#[test]
fn real_mode_ivt_limit_escalates_to_gp_then_triple_fault() {
    let mut cpu = CpuState::default();
    let mut mem = FlatMem::new(0, 0x40000);
    put(&mut mem, 13 * 4, 0x0700_0000, 4);
    cpu.gpr[reg::RSP] = 0x1000;
    cpu.idtr.limit = 0x3f; // vectors 0-15
    deliver(&mut cpu, &mut mem, event(0x20, None, EventKind::External)).unwrap();
    assert_eq!(cpu.cs.selector, 0x700, "#GP handler");
    let mut cpu = CpuState::default();
    cpu.gpr[reg::RSP] = 0x1000;
    cpu.idtr.limit = 0x1f; // vectors 0-7: #GP and #DF are beyond it
    assert_eq!(
        deliver(&mut cpu, &mut mem, event(0x20, None, EventKind::External)),
        Err(TripleFault)
    );
}

#[test]
fn protected_same_privilege_fault_with_error_code() {
    let (mut cpu, mut mem) = machine(false);
    idt32(&mut mem, 13, KCODE32, 0x5100, 0x8e);
    cpu.rflags = rflags::FIXED1 | rflags::IF;
    deliver(
        &mut cpu,
        &mut mem,
        event(13, Some(0x18), EventKind::Exception),
    )
    .unwrap();
    assert_eq!((cpu.cs.selector, cpu.rip), (KCODE32, 0x5100));
    assert_eq!(cpu.gpr[reg::RSP], STACK0 - 16);
    assert_eq!(
        frame(&mut mem, STACK0 - 16, 4, 4),
        vec![0x18, CODE, u64::from(KCODE32), 0x202 | rflags::RF]
    );
    assert_eq!(cpu.rflags, rflags::FIXED1, "interrupt gate clears IF");
}

#[test]
fn protected_ring3_interrupt_switches_to_tss_stack() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    idt32(&mut mem, 0x20, KCODE32, 0x5200, 0x8f); // trap gate
    cpu.rflags = rflags::FIXED1 | rflags::IF | rflags::NT | rflags::TF;
    deliver(&mut cpu, &mut mem, event(0x20, None, EventKind::External)).unwrap();
    assert_eq!((cpu.cs.selector, cpu.cpl(), cpu.rip), (KCODE32, 0, 0x5200));
    assert_eq!((cpu.ss.selector, cpu.gpr[reg::RSP]), (KDATA, STACK0 - 20));
    assert_eq!(
        frame(&mut mem, STACK0 - 20, 5, 4),
        vec![
            CODE,
            u64::from(UCODE32 | 3),
            0x202 | rflags::NT | rflags::TF,
            STACK3,
            u64::from(UDATA | 3)
        ]
    );
    assert_eq!(
        cpu.rflags,
        rflags::FIXED1 | rflags::IF,
        "trap gate keeps IF"
    );
    assert_eq!(get(&mut mem, GDT + 0x10 + 5, 1), 0x93, "SS0 accessed");
}

#[test]
fn protected_16_bit_gate_pushes_words() {
    let (mut cpu, mut mem) = machine(false);
    idt32(&mut mem, 14, CODE16, 0x1_2345, 0x86); // 16-bit interrupt gate: offset truncated
    cpu.rip = 0x1_0042;
    cpu.rflags = rflags::FIXED1;
    deliver(
        &mut cpu,
        &mut mem,
        event(14, Some(0x7), EventKind::Exception),
    )
    .unwrap();
    assert_eq!((cpu.cs.selector, cpu.rip), (CODE16, 0x2345));
    assert_eq!(cpu.gpr[reg::RSP], STACK0 - 8);
    assert_eq!(
        frame(&mut mem, STACK0 - 8, 4, 2),
        vec![7, 0x0042, u64::from(KCODE32), 0x2]
    );
}

#[test]
fn software_interrupt_checks_gate_dpl() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    idt32(&mut mem, 13, KCODE32, 0x5100, 0x8e);
    idt32(&mut mem, 0x80, KCODE32, 0x5800, 0x8e); // DPL 0
    let before = cpu.clone();
    deliver(&mut cpu, &mut mem, event(0x80, None, EventKind::Software)).unwrap();
    assert_eq!(cpu.rip, 0x5100, "#GP instead");
    assert_eq!(get(&mut mem, STACK0 - 24, 4), 0x80 * 8 + 2, "no EXT");
    // An external interrupt through the same gate is fine; so is INT n through a DPL-3 gate.
    let mut cpu = before.clone();
    deliver(&mut cpu, &mut mem, event(0x80, None, EventKind::External)).unwrap();
    assert_eq!(cpu.rip, 0x5800);
    idt32(&mut mem, 0x80, KCODE32, 0x5800, 0xee);
    let mut cpu = before;
    deliver(&mut cpu, &mut mem, event(0x80, None, EventKind::Software)).unwrap();
    assert_eq!(cpu.rip, 0x5800);
}

#[test]
fn not_present_gate_gives_np_with_idt_and_ext_bits() {
    let (mut cpu, mut mem) = machine(false);
    idt32(&mut mem, 11, KCODE32, 0x5300, 0x8e);
    idt32(&mut mem, 0x30, KCODE32, 0x5800, 0x0e); // P = 0
    deliver(&mut cpu, &mut mem, event(0x30, None, EventKind::External)).unwrap();
    assert_eq!(cpu.rip, 0x5300);
    assert_eq!(get(&mut mem, STACK0 - 16, 4), 0x30 * 8 + 2 + 1);
    // Benign #UD, then contributory #NP: delivered serially, not #DF.
    let (mut cpu, mut mem2) = machine(false);
    idt32(&mut mem2, 11, KCODE32, 0x5300, 0x8e);
    idt32(&mut mem2, 6, KCODE32, 0x5000, 0x0e); // P = 0
    deliver(&mut cpu, &mut mem2, event(6, None, EventKind::Exception)).unwrap();
    assert_eq!(cpu.rip, 0x5300);
    assert_eq!(get(&mut mem2, STACK0 - 16, 4), 6 * 8 + 2 + 1);
    // Task gates are not followed: #GP(vector*8+2+EXT).
    idt32(&mut mem, 13, KCODE32, 0x5100, 0x8e);
    put(
        &mut mem,
        IDT + 8 * 0x31,
        gate_desc(TSS_SEL, 0, 0x85, 0)[0],
        8,
    );
    let (mut cpu, _) = machine(false);
    deliver(&mut cpu, &mut mem, event(0x31, None, EventKind::External)).unwrap();
    assert_eq!(cpu.rip, 0x5100);
    assert_eq!(get(&mut mem, STACK0 - 16, 4), 0x31 * 8 + 3);
}

#[test]
fn contributory_during_contributory_is_double_fault_then_triple() {
    let (mut cpu, mut mem) = machine(false);
    idt32(&mut mem, 13, NP_DATA, 0x5100, 0x8e); // handler selector names data: #GP(sel)
    idt32(&mut mem, 8, KCODE32, 0x5400, 0x8e);
    deliver(&mut cpu, &mut mem, event(13, Some(0), EventKind::Exception)).unwrap();
    assert_eq!(cpu.rip, 0x5400, "#DF handler");
    assert_eq!(get(&mut mem, STACK0 - 16, 4), 0, "#DF error code 0");
    let (mut cpu, _) = machine(false);
    idt32(&mut mem, 8, KCODE32, 0x5400, 0x0e); // #DF gate not present
    assert_eq!(
        deliver(&mut cpu, &mut mem, event(13, Some(0), EventKind::Exception)),
        Err(TripleFault)
    );
}

#[test]
fn long_mode_ring3_to_ring0_on_ist() {
    let (mut cpu, mut mem) = machine(true);
    to_ring3(&mut cpu, true);
    idt64(&mut mem, 2, KCODE64, 0xffff_ffff_8000_1000, 0x8e, 1);
    cpu.rflags = rflags::FIXED1 | rflags::IF;
    cpu.halted = true;
    deliver(&mut cpu, &mut mem, event(2, None, EventKind::Nmi)).unwrap();
    let top = IST1 & !0xf;
    assert_eq!(
        (cpu.cs.selector, cpu.cpl(), cpu.rip),
        (KCODE64, 0, 0xffff_ffff_8000_1000)
    );
    assert_eq!(cpu.gpr[reg::RSP], top - 40);
    assert!(cpu.ss.unusable && cpu.ss.selector == 0 && cpu.ss.dpl == 0);
    assert_eq!(
        frame(&mut mem, top - 40, 5, 8),
        vec![
            CODE,
            u64::from(UCODE64 | 3),
            0x202,
            STACK3,
            u64::from(UDATA | 3)
        ]
    );
    assert_eq!(cpu.rflags, rflags::FIXED1);
    assert!(cpu.events.nmi_masked && !cpu.halted);
}

#[test]
fn long_mode_ring3_page_fault_uses_rsp0_and_pushes_error() {
    let (mut cpu, mut mem) = machine(true);
    to_ring3(&mut cpu, true);
    idt64(&mut mem, 14, KCODE64, 0x6000, 0x8e, 0);
    cpu.rflags = rflags::FIXED1;
    deliver(&mut cpu, &mut mem, event(14, Some(6), EventKind::Exception)).unwrap();
    assert_eq!(cpu.gpr[reg::RSP], STACK0 - 48);
    assert_eq!(
        frame(&mut mem, STACK0 - 48, 6, 8),
        vec![
            6,
            CODE,
            u64::from(UCODE64 | 3),
            2 | rflags::RF,
            STACK3,
            u64::from(UDATA | 3)
        ]
    );
    assert_eq!(cpu.rflags, rflags::FIXED1, "RF cleared in the handler");
}

#[test]
fn long_mode_same_privilege_aligns_and_keeps_ss() {
    let (mut cpu, mut mem) = machine(true);
    idt64(&mut mem, 0x40, KCODE64, 0x6100, 0x8f, 0);
    cpu.gpr[reg::RSP] = 0x7ff8;
    cpu.rflags = rflags::FIXED1 | rflags::IF;
    deliver(&mut cpu, &mut mem, event(0x40, None, EventKind::Software)).unwrap();
    assert_eq!(cpu.gpr[reg::RSP], 0x7ff0 - 40);
    assert_eq!(
        frame(&mut mem, 0x7ff0 - 40, 5, 8),
        vec![CODE, u64::from(KCODE64), 0x202, 0x7ff8, u64::from(KDATA)]
    );
    assert_eq!(
        (cpu.ss.selector, cpu.rflags),
        (KDATA, rflags::FIXED1 | rflags::IF)
    );
}

#[test]
fn long_mode_gate_checks() {
    let (cpu0, mut mem) = machine(true);
    idt64(&mut mem, 13, KCODE64, 0x6000, 0x8e, 0);
    // A gate to 32-bit code: #GP(selector + EXT) delivered to the #GP handler.
    idt64(&mut mem, 0x41, KCODE32, 0x6100, 0x8e, 0);
    let mut cpu = cpu0.clone();
    deliver(&mut cpu, &mut mem, event(0x41, None, EventKind::External)).unwrap();
    assert_eq!(cpu.rip, 0x6000);
    assert_eq!(get(&mut mem, STACK0 - 48, 8), u64::from(KCODE32) + 1);
    // A 32-bit gate type in the IDT: #GP(vector*8+2+EXT).
    put(
        &mut mem,
        IDT + 16 * 0x42,
        gate_desc(KCODE64, 0x6100, 0x86, 0)[0],
        8,
    );
    let mut cpu = cpu0.clone();
    deliver(&mut cpu, &mut mem, event(0x42, None, EventKind::External)).unwrap();
    assert_eq!(get(&mut mem, STACK0 - 48, 8), 0x42 * 8 + 3);
    // Non-canonical handler address: #GP(EXT).
    idt64(&mut mem, 0x43, KCODE64, 0x0000_8000_0000_0000, 0x8e, 0);
    let mut cpu = cpu0.clone();
    deliver(&mut cpu, &mut mem, event(0x43, None, EventKind::External)).unwrap();
    assert_eq!(get(&mut mem, STACK0 - 48, 8), 1);
    // Vector beyond the IDT limit.
    let mut cpu = cpu0;
    cpu.idtr.limit = 16 * 0x44 - 1;
    deliver(&mut cpu, &mut mem, event(0x44, None, EventKind::External)).unwrap();
    assert_eq!(get(&mut mem, STACK0 - 48, 8), 0x44 * 8 + 3);
}

#[test]
fn page_fault_during_page_fault_delivery_is_double_fault_with_cr2() {
    let (mut cpu, mem) = machine(true);
    let mut mem = HoleMem {
        inner: mem,
        hole: 0x6000..0x7000,
    };
    idt64(&mut mem.inner, 14, KCODE64, 0x6800, 0x8e, 0);
    idt64(&mut mem.inner, 8, KCODE64, 0x6900, 0x8e, 1);
    cpu.gpr[reg::RSP] = 0x7000;
    cpu.cr2 = 0x1234;
    deliver(&mut cpu, &mut mem, event(14, Some(0), EventKind::Exception)).unwrap();
    assert_eq!(cpu.rip, 0x6900, "#DF handler");
    assert_eq!(cpu.cr2, 0x6ff8, "CR2 of the fault during delivery");
    let top = IST1 & !0xf;
    assert_eq!(get(&mut mem.inner, top - 48, 8), 0, "#DF error code");
    assert_eq!(
        get(&mut mem.inner, top - 16, 8),
        0x7000,
        "the interrupted RSP"
    );
}

#[test]
fn page_fault_during_external_interrupt_is_delivered_as_page_fault() {
    let (mut cpu, mem) = machine(true);
    let mut mem = HoleMem {
        inner: mem,
        hole: 0x6000..0x7000,
    };
    idt64(&mut mem.inner, 0x20, KCODE64, 0x6800, 0x8e, 0);
    idt64(&mut mem.inner, 14, KCODE64, 0x6900, 0x8e, 1);
    cpu.gpr[reg::RSP] = 0x7000;
    deliver(&mut cpu, &mut mem, event(0x20, None, EventKind::External)).unwrap();
    assert_eq!((cpu.rip, cpu.cr2), (0x6900, 0x6ff8));
    let top = IST1 & !0xf;
    assert_eq!(get(&mut mem.inner, top - 48, 8), 2, "#PF error: write");
}

#[test]
fn fault_during_double_fault_delivery_is_triple_fault() {
    let (mut cpu, mem) = machine(true);
    let mut mem = HoleMem {
        inner: mem,
        hole: 0x6000..0x7000,
    };
    idt64(&mut mem.inner, 14, KCODE64, 0x6800, 0x8e, 0);
    idt64(&mut mem.inner, 8, KCODE64, 0x6900, 0x8e, 0); // #DF on the same broken stack
    cpu.gpr[reg::RSP] = 0x7000;
    assert_eq!(
        deliver(&mut cpu, &mut mem, event(14, Some(0), EventKind::Exception)),
        Err(TripleFault)
    );
}

#[test]
fn fault_delivering_int_n_is_a_fault_of_the_int_instruction() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    idt32(&mut mem, 13, KCODE32, 0x5100, 0x8e);
    idt32(&mut mem, 0x80, KCODE32, 0x5800, 0x8e); // DPL 0: INT 0x80 from ring 3 is #GP
    let int_at = cpu.rip;
    cpu.rip = int_at + 2; // INT n pushes the next RIP when it succeeds
    ringzero_translator::system::delivery::deliver_from(
        &mut cpu,
        &mut mem,
        event(0x80, None, EventKind::Software),
        int_at,
    )
    .unwrap();
    assert_eq!(cpu.rip, 0x5100, "#GP");
    assert_eq!(get(&mut mem, STACK0 - 24, 4), 0x80 * 8 + 2);
    assert_eq!(
        get(&mut mem, STACK0 - 20, 4),
        int_at,
        "the #GP frame holds the INT instruction's address"
    );
}
