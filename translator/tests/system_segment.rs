//! Segment loads, far transfers through call gates, RETF/IRET and the descriptor-table
//! instructions of `system::segment`, against descriptor tables built in guest memory.

mod system_common;

use ringzero_translator::sem::Exception;
use ringzero_translator::state::{ctl, reg, rflags, CpuState, Segment};
use ringzero_translator::system::Effect;
use system_common::*;

#[test]
fn real_mode_loads_keep_limit_and_attributes() {
    let mut cpu = CpuState::default();
    let mut mem = ringzero_translator::mem::FlatMem::new(0, MEM);
    cpu.ds.limit = 0xffff_ffff; // "unreal" cache left by protected mode
    cpu.ds.g = true;
    cpu.gpr[reg::RAX] = 0x1234;
    assert_eq!(run(&mut cpu, &mut mem, &[0x8e, 0xd8]), Ok(Effect::Next)); // mov ds, ax
    assert_eq!((cpu.ds.selector, cpu.ds.base), (0x1234, 0x12340));
    assert_eq!((cpu.ds.limit, cpu.ds.g), (0xffff_ffff, true));
    assert_eq!(cpu.rip, 2);
    assert_eq!(run(&mut cpu, &mut mem, &[0x8e, 0xd0]), Ok(Effect::Shadow)); // mov ss, ax
    assert_eq!(cpu.ss.base, 0x12340);
}

#[test]
fn real_mode_far_call_retf_and_iret() {
    let mut cpu = CpuState::default();
    let mut mem = ringzero_translator::mem::FlatMem::new(0, 0x40000);
    cpu.cs = Segment {
        type_: 0xb,
        ..Segment::real_mode(0x100)
    };
    cpu.rip = 0x10;
    cpu.ss = Segment::real_mode(0x2000);
    cpu.gpr[reg::RSP] = 0x100;
    // call 0x1234:0x5678
    run(&mut cpu, &mut mem, &[0x9a, 0x78, 0x56, 0x34, 0x12]).unwrap();
    assert_eq!(
        (cpu.cs.selector, cpu.cs.base, cpu.rip),
        (0x1234, 0x12340, 0x5678)
    );
    assert_eq!(cpu.cs.type_, 0xb);
    assert_eq!(cpu.gpr[reg::RSP], 0xfc);
    assert_eq!(get(&mut mem, 0x200fc, 2), 0x15); // return IP
    assert_eq!(get(&mut mem, 0x200fe, 2), 0x100); // return CS
    run(&mut cpu, &mut mem, &[0xcb]).unwrap(); // retf
    assert_eq!(
        (cpu.cs.selector, cpu.rip, cpu.gpr[reg::RSP]),
        (0x100, 0x15, 0x100)
    );
    // iret: pops IP, CS, FLAGS (all flags writable in real mode).
    put(&mut mem, 0x200fa, 0x0042, 2);
    put(&mut mem, 0x200fc, 0x0300, 2);
    put(&mut mem, 0x200fe, 0x3ad7, 2);
    cpu.gpr[reg::RSP] = 0xfa;
    run(&mut cpu, &mut mem, &[0xcf]).unwrap();
    assert_eq!(
        (cpu.cs.selector, cpu.cs.base, cpu.rip),
        (0x300, 0x3000, 0x42)
    );
    assert_eq!(cpu.rflags, 0x3ad7 & 0x7fd5 | 2);
    assert_eq!(cpu.gpr[reg::RSP], 0x100);
}

#[test]
fn protected_data_load_sets_accessed_bit() {
    let (mut cpu, mut mem) = machine(false);
    cpu.ds = Segment::default();
    cpu.gpr[reg::RAX] = u64::from(KDATA);
    assert_eq!(run(&mut cpu, &mut mem, &[0x8e, 0xd8]), Ok(Effect::Next));
    assert_eq!(cpu.ds, flat_data(KDATA, 3, 0));
    assert_eq!(get(&mut mem, GDT + 0x10 + 5, 1), 0x93);
    // LDT selector with RPL 3.
    cpu.gpr[reg::RAX] = 0x0f;
    run(&mut cpu, &mut mem, &[0x8e, 0xc0]).unwrap(); // mov es, ax
    assert_eq!(
        (cpu.es.base, cpu.es.limit, cpu.es.dpl),
        (0x1234_0000, 0xfff, 3)
    );
    // Null into DS: unusable, no fault.
    cpu.gpr[reg::RAX] = 3;
    run(&mut cpu, &mut mem, &[0x8e, 0xd8]).unwrap();
    assert!(cpu.ds.unusable);
    assert_eq!(cpu.ds.selector, 3);
}

#[test]
fn protected_load_faults_are_precise() {
    let (mut cpu, mut mem) = machine(false);
    let mov_ds = [0x8e, 0xd8];
    let mov_ss = [0x8e, 0xd0];
    cpu.gpr[reg::RAX] = u64::from(GDT_LIMIT + 1) | 3; // beyond the GDT
    faults(&mut cpu, &mut mem, &mov_ds, gp(0xa0));
    cpu.gpr[reg::RAX] = 0x14; // TI=1, beyond the LDT limit? no: index 2 is inside, null descriptor
    faults(&mut cpu, &mut mem, &mov_ds, gp(0x14));
    cpu.gpr[reg::RAX] = u64::from(NP_DATA);
    faults(&mut cpu, &mut mem, &mov_ds, np(u32::from(NP_DATA)));
    cpu.gpr[reg::RAX] = u64::from(XO_CODE);
    faults(&mut cpu, &mut mem, &mov_ds, gp(u32::from(XO_CODE)));
    cpu.gpr[reg::RAX] = u64::from(KDATA | 3); // RPL 3 > DPL 0
    faults(&mut cpu, &mut mem, &mov_ds, gp(u32::from(KDATA)));
    // Conforming readable code ignores RPL/CPL.
    cpu.gpr[reg::RAX] = u64::from(CONFORMING | 3);
    run(&mut cpu, &mut mem, &mov_ds).unwrap();
    cpu.rip = CODE;
    // SS: null, RPL != CPL, read-only, DPL != CPL, code.
    cpu.gpr[reg::RAX] = 0;
    faults(&mut cpu, &mut mem, &mov_ss, gp(0));
    cpu.gpr[reg::RAX] = u64::from(KDATA | 1);
    faults(&mut cpu, &mut mem, &mov_ss, gp(u32::from(KDATA)));
    cpu.gpr[reg::RAX] = u64::from(UDATA);
    faults(&mut cpu, &mut mem, &mov_ss, gp(u32::from(UDATA)));
    cpu.gpr[reg::RAX] = u64::from(KCODE32);
    faults(&mut cpu, &mut mem, &mov_ss, gp(u32::from(KCODE32)));
    cpu.gpr[reg::RAX] = u64::from(NP_DATA);
    faults(&mut cpu, &mut mem, &mov_ss, ss(u32::from(NP_DATA)));
    // Ring 3 may not load ring-0 data.
    to_ring3(&mut cpu, false);
    cpu.gpr[reg::RAX] = u64::from(KDATA | 3);
    faults(&mut cpu, &mut mem, &mov_ds, gp(u32::from(KDATA)));
    cpu.gpr[reg::RAX] = u64::from(UDATA_RO | 3);
    run(&mut cpu, &mut mem, &mov_ds).unwrap();
    assert_eq!(cpu.ds.type_, 1);
}

#[test]
fn null_ss_only_in_64_bit_mode_below_ring_3() {
    let (mut cpu, mut mem) = machine(true);
    cpu.gpr[reg::RAX] = 0;
    assert_eq!(run(&mut cpu, &mut mem, &[0x8e, 0xd0]), Ok(Effect::Shadow));
    assert!(cpu.ss.unusable);
    cpu.rip = CODE;
    cpu.gpr[reg::RAX] = 1; // RPL != CPL
    faults(&mut cpu, &mut mem, &[0x8e, 0xd0], gp(0));
    to_ring3(&mut cpu, true);
    cpu.gpr[reg::RAX] = 3;
    faults(&mut cpu, &mut mem, &[0x8e, 0xd0], gp(0));
}

#[test]
fn mov_from_sreg_push_pop_lss() {
    let (mut cpu, mut mem) = machine(false);
    cpu.gpr[reg::RAX] = 0xffff_ffff_ffff_ffff;
    run(&mut cpu, &mut mem, &[0x8c, 0xd8]).unwrap(); // mov eax, ds
    assert_eq!(cpu.gpr[reg::RAX], u64::from(KDATA));
    cpu.gpr[reg::RBX] = 0x7000;
    put(&mut mem, 0x7000, 0xaaaa_aaaa, 4);
    run(&mut cpu, &mut mem, &[0x8c, 0x1b]).unwrap(); // mov [ebx], ds
    assert_eq!(get(&mut mem, 0x7000, 4), 0xaaaa_0000 | u64::from(KDATA));
    // push fs (32-bit slot, zero-extended), pop ds
    put(&mut mem, STACK0 - 4, 0xffff_ffff, 4);
    run(&mut cpu, &mut mem, &[0x0f, 0xa0]).unwrap();
    assert_eq!(cpu.gpr[reg::RSP], STACK0 - 4);
    assert_eq!(get(&mut mem, STACK0 - 4, 4), u64::from(KDATA));
    put(&mut mem, STACK0 - 4, u64::from(UDATA_RO), 4);
    cpu.ds = Segment::default();
    // RPL 0 < DPL 3 read-only data: allowed.
    run(&mut cpu, &mut mem, &[0x1f]).unwrap();
    assert_eq!((cpu.ds.selector, cpu.gpr[reg::RSP]), (UDATA_RO, STACK0));
    // pop ss into a 16-bit stack: the pointer moves at the old (32-bit) width.
    put(&mut mem, STACK0 - 4, u64::from(KDATA16), 4);
    cpu.gpr[reg::RSP] = STACK0 - 4;
    assert_eq!(run(&mut cpu, &mut mem, &[0x17]), Ok(Effect::Shadow));
    assert_eq!(
        (cpu.ss.selector, cpu.ss.db, cpu.gpr[reg::RSP]),
        (KDATA16, false, STACK0)
    );
    // A faulting pop leaves ESP.
    put(&mut mem, STACK0 - 4, u64::from(NP_DATA), 4);
    cpu.gpr[reg::RSP] = STACK0 - 4;
    faults(&mut cpu, &mut mem, &[0x1f], np(u32::from(NP_DATA)));
    // lss esp, [ebx]
    cpu.ss = Segment::flat32(KDATA, false);
    put(&mut mem, 0x7000, 0x1234_5678, 4);
    put(&mut mem, 0x7004, u64::from(KDATA), 2);
    assert_eq!(
        run(&mut cpu, &mut mem, &[0x0f, 0xb2, 0x23]),
        Ok(Effect::Shadow)
    );
    assert_eq!((cpu.gpr[reg::RSP], cpu.ss.selector), (0x1234_5678, KDATA));
}

#[test]
fn far_jmp_and_call_to_code_segments() {
    let (mut cpu, mut mem) = machine(false);
    // jmp 0x58:0x1234 (16-bit code segment)
    run(&mut cpu, &mut mem, &[0xea, 0x34, 0x12, 0, 0, 0x58, 0]).unwrap();
    assert_eq!(
        (cpu.cs.selector, cpu.cs.db, cpu.rip),
        (CODE16, false, 0x1234)
    );
    assert_eq!(cpu.code_bits(), 16);
    cpu.cs = Segment::flat32(KCODE32, true);
    cpu.rip = CODE;
    // beyond the 16-bit segment's limit
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 1, 0, 0x58, 0], gp(0));
    // to data, to a non-present segment, to DPL 3 code from ring 0
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 0, 0, 0x10, 0], gp(0x10));
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 0, 0, 0x1b, 0], gp(0x18));
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 0, 0, 0, 0], gp(0));
    // task gate and TSS targets: #GP(selector), task switches are not modelled
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 0, 0, 0x78, 0], gp(0x78));
    faults(&mut cpu, &mut mem, &[0xea, 0, 0, 0, 0, 0x38, 0], gp(0x38));
    // call 0x08:0x5555 pushes CS and the return EIP.
    run(&mut cpu, &mut mem, &[0x9a, 0x55, 0x55, 0, 0, 0x08, 0]).unwrap();
    assert_eq!((cpu.rip, cpu.gpr[reg::RSP]), (0x5555, STACK0 - 8));
    assert_eq!(get(&mut mem, STACK0 - 8, 4), CODE + 7);
    assert_eq!(get(&mut mem, STACK0 - 4, 4), u64::from(KCODE32));
    // Conforming DPL-0 code from ring 3: CPL stays 3.
    to_ring3(&mut cpu, false);
    cpu.rip = CODE;
    run(&mut cpu, &mut mem, &[0xea, 0, 1, 0, 0, 0x70, 0]).unwrap();
    assert_eq!((cpu.cs.selector, cpu.cpl()), (CONFORMING | 3, 3));
}

#[test]
fn call_gate_to_ring0_copies_parameters_and_retf_returns_outward() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    cpu.ds = Segment {
        dpl: 0,
        ..Segment::flat32(KDATA, false)
    }; // will be nulled on return
    cpu.fs = Segment {
        selector: 0,
        unusable: true,
        base: 0x7777,
        ..Segment::default()
    };
    put(&mut mem, STACK3, 0x1111_1111, 4); // parameter 0
    put(&mut mem, STACK3 + 4, 0x2222_2222, 4); // parameter 1
                                               // call 0x6b:0 (the offset is ignored for gates)
    run(&mut cpu, &mut mem, &[0x9a, 0, 0, 0, 0, 0x6b, 0]).unwrap();
    assert_eq!((cpu.cs.selector, cpu.cpl(), cpu.rip), (KCODE32, 0, 0x5100));
    assert_eq!((cpu.ss.selector, cpu.gpr[reg::RSP]), (KDATA, STACK0 - 24));
    let frame: Vec<u64> = (0..6)
        .map(|i| get(&mut mem, STACK0 - 24 + 4 * i, 4))
        .collect();
    assert_eq!(
        frame,
        vec![
            CODE + 7,
            u64::from(UCODE32 | 3),
            0x1111_1111,
            0x2222_2222,
            STACK3,
            u64::from(UDATA | 3)
        ]
    );
    assert_eq!(get(&mut mem, GDT + 0x10 + 5, 1), 0x93, "SS0 accessed bit");
    // retf 8 back to ring 3, dropping the parameters on both stacks.
    cpu.rip = 0x5100;
    run(&mut cpu, &mut mem, &[0xca, 0x08, 0x00]).unwrap();
    assert_eq!(
        (cpu.cs.selector, cpu.cpl(), cpu.rip),
        (UCODE32 | 3, 3, CODE + 7)
    );
    assert_eq!(
        (cpu.ss.selector, cpu.gpr[reg::RSP]),
        (UDATA | 3, STACK3 + 8)
    );
    assert!(cpu.ds.unusable && cpu.ds.selector == 0, "DPL-0 DS nulled");
    assert_eq!(cpu.es.selector, UDATA | 3, "DPL-3 ES kept");
    assert_eq!(cpu.fs.base, 0x7777, "null FS untouched");
}

#[test]
fn call_gate_checks() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    // RPL above the gate DPL is fine (3 <= 3); a DPL-0 gate is not reachable from ring 3.
    gdt(&mut mem, 0xa0, gate_desc(KCODE32, 0x5100, 0x8c, 0)[0]);
    cpu.gdtr.limit = 0xa7;
    faults(&mut cpu, &mut mem, &[0x9a, 0, 0, 0, 0, 0xa3, 0], gp(0xa0));
    // A JMP through a gate to a more privileged non-conforming segment.
    faults(
        &mut cpu,
        &mut mem,
        &[0xea, 0, 0, 0, 0, 0x6b, 0],
        gp(u32::from(KCODE32)),
    );
    // A TSS whose ESP0 slot is beyond its limit: #TS(TR).
    cpu.tr.limit = 8;
    faults(
        &mut cpu,
        &mut mem,
        &[0x9a, 0, 0, 0, 0, 0x6b, 0],
        ts(u32::from(TSS_SEL)),
    );
    cpu.tr.limit = 0x67;
    // SS0 not present: #SS(SS0).
    put(&mut mem, TSS + 8, u64::from(NP_DATA), 2);
    faults(
        &mut cpu,
        &mut mem,
        &[0x9a, 0, 0, 0, 0, 0x6b, 0],
        ss(u32::from(NP_DATA)),
    );
    put(&mut mem, TSS + 8, 0, 2);
    faults(&mut cpu, &mut mem, &[0x9a, 0, 0, 0, 0, 0x6b, 0], ts(0));
}

#[test]
fn long_mode_call_gate_from_ring3_and_retfq() {
    let (mut cpu, mut mem) = machine(true);
    to_ring3(&mut cpu, true);
    cpu.gpr[reg::RBX] = 0x7000;
    put(&mut mem, 0x7000, 0xdead_beef, 8);
    put(&mut mem, 0x7008, u64::from(CALLGATE64 | 3), 2);
    run(&mut cpu, &mut mem, &[0x48, 0xff, 0x1b]).unwrap(); // call far [rbx] (m16:64)
    assert_eq!((cpu.cs.selector, cpu.cpl(), cpu.rip), (KCODE64, 0, 0x6000));
    assert!(cpu.ss.unusable);
    assert_eq!(cpu.ss.selector, 0);
    assert_eq!(cpu.gpr[reg::RSP], STACK0 - 32);
    let frame: Vec<u64> = (0..4)
        .map(|i| get(&mut mem, STACK0 - 32 + 8 * i, 8))
        .collect();
    assert_eq!(
        frame,
        vec![
            CODE + 3,
            u64::from(UCODE64 | 3),
            STACK3,
            u64::from(UDATA | 3)
        ]
    );
    cpu.rip = 0x6000;
    run(&mut cpu, &mut mem, &[0x48, 0xcb]).unwrap(); // retfq
    assert_eq!(
        (cpu.cs.selector, cpu.cpl(), cpu.rip),
        (UCODE64 | 3, 3, CODE + 3)
    );
    assert_eq!((cpu.ss.selector, cpu.gpr[reg::RSP]), (UDATA | 3, STACK3));
}

#[test]
fn iret_protected_same_and_outer_privilege() {
    let (mut cpu, mut mem) = machine(false);
    cpu.events.nmi_masked = true;
    // Same privilege: EIP, CS, EFLAGS.
    let sp = STACK0 - 12;
    put(&mut mem, sp, 0x4444, 4);
    put(&mut mem, sp + 4, u64::from(KCODE32), 4);
    put(&mut mem, sp + 8, 0x3202 | rflags::NT, 4); // IOPL 3, IF, NT
    cpu.gpr[reg::RSP] = sp;
    run(&mut cpu, &mut mem, &[0xcf]).unwrap();
    assert_eq!(
        (cpu.rip, cpu.gpr[reg::RSP], cpu.rflags),
        (0x4444, STACK0, 0x3202 | rflags::NT)
    );
    assert!(!cpu.events.nmi_masked);
    // NT=1: a task return is not modelled.
    cpu.rip = CODE;
    cpu.gpr[reg::RSP] = sp;
    faults(
        &mut cpu,
        &mut mem,
        &[0xcf],
        Exception::Unimplemented(iced_x86::Mnemonic::Iretd),
    );
    // To ring 3, with IOPL 0: the popped IOPL and IF apply (CPL 0 writes both).
    cpu.rflags = rflags::FIXED1;
    let sp = STACK0 - 20;
    for (i, v) in [
        0x4000,
        u64::from(UCODE32 | 3),
        0x0202,
        STACK3,
        u64::from(UDATA | 3),
    ]
    .into_iter()
    .enumerate()
    {
        put(&mut mem, sp + 4 * i as u64, v, 4);
    }
    cpu.gpr[reg::RSP] = sp;
    run(&mut cpu, &mut mem, &[0xcf]).unwrap();
    assert_eq!((cpu.cpl(), cpu.rip, cpu.gpr[reg::RSP]), (3, 0x4000, STACK3));
    assert_eq!(cpu.rflags, 0x0202);
    assert!(cpu.ds.unusable, "DPL-0 data nulled on the way out");
    // At ring 3 with IOPL 0, IRET cannot change IF or IOPL.
    let sp = STACK3 - 12;
    put(&mut mem, sp, 0x4100, 4);
    put(&mut mem, sp + 4, u64::from(UCODE32 | 3), 4);
    put(&mut mem, sp + 8, 0x3001, 4);
    cpu.gpr[reg::RSP] = sp;
    run(&mut cpu, &mut mem, &[0xcf]).unwrap();
    assert_eq!(cpu.rflags, 0x0203);
    // Returning inward is #GP(selector).
    put(&mut mem, sp, 0x4100, 4);
    put(&mut mem, sp + 4, u64::from(KCODE32), 4);
    cpu.gpr[reg::RSP] = sp;
    faults(&mut cpu, &mut mem, &[0xcf], gp(u32::from(KCODE32)));
}

#[test]
fn iretq_pops_ss_rsp_always_and_checks_canonical_rip() {
    let (mut cpu, mut mem) = machine(true);
    let sp = STACK0 - 40;
    let frame = [0x6000, u64::from(KCODE64), 0x2, 0x7777_0000, 0];
    for (i, v) in frame.into_iter().enumerate() {
        put(&mut mem, sp + 8 * i as u64, v, 8);
    }
    cpu.gpr[reg::RSP] = sp;
    run(&mut cpu, &mut mem, &[0x48, 0xcf]).unwrap();
    assert_eq!((cpu.rip, cpu.gpr[reg::RSP]), (0x6000, 0x7777_0000));
    assert!(cpu.ss.unusable, "null SS at CPL 0 in 64-bit mode");
    // Non-canonical RIP: #GP(0), nothing changes.
    put(&mut mem, sp, 0x0000_8000_0000_0000, 8);
    cpu.gpr[reg::RSP] = sp;
    cpu.rip = CODE;
    faults(&mut cpu, &mut mem, &[0x48, 0xcf], gp(0));
    // To ring 3 with a null SS: #GP(0).
    put(&mut mem, sp, 0x6000, 8);
    put(&mut mem, sp + 8, u64::from(UCODE64 | 3), 8);
    faults(&mut cpu, &mut mem, &[0x48, 0xcf], gp(0));
    // To ring-3 compatibility mode.
    put(&mut mem, sp + 8, u64::from(UCODE32 | 3), 8);
    put(&mut mem, sp + 32, u64::from(UDATA | 3), 8);
    run(&mut cpu, &mut mem, &[0x48, 0xcf]).unwrap();
    assert_eq!(
        (cpu.cpl(), cpu.code_bits(), cpu.ss.selector),
        (3, 32, UDATA | 3)
    );
    // NT=1 in long mode is #GP(0).
    let (mut cpu, mut mem) = machine(true);
    cpu.rflags |= rflags::NT;
    faults(&mut cpu, &mut mem, &[0x48, 0xcf], gp(0));
}

#[test]
fn lldt_ltr_sldt_str() {
    let (mut cpu, mut mem) = machine(false);
    cpu.tr = Segment::default();
    cpu.gpr[reg::RAX] = u64::from(TSS_SEL);
    run(&mut cpu, &mut mem, &[0x0f, 0x00, 0xd8]).unwrap(); // ltr ax
    assert_eq!((cpu.tr.base, cpu.tr.limit, cpu.tr.type_), (TSS, 0x67, 0xb));
    assert_eq!(get(&mut mem, GDT + 0x38 + 5, 1), 0x8b, "busy in the GDT");
    // A busy TSS cannot be loaded again.
    cpu.rip = CODE;
    faults(
        &mut cpu,
        &mut mem,
        &[0x0f, 0x00, 0xd8],
        gp(u32::from(TSS_SEL)),
    );
    cpu.gpr[reg::RAX] = u64::from(KDATA);
    faults(
        &mut cpu,
        &mut mem,
        &[0x0f, 0x00, 0xd8],
        gp(u32::from(KDATA)),
    );
    cpu.gpr[reg::RAX] = u64::from(LDT_SEL);
    cpu.ldtr = Segment::default();
    run(&mut cpu, &mut mem, &[0x0f, 0x00, 0xd0]).unwrap(); // lldt ax
    assert_eq!(
        (cpu.ldtr.base, cpu.ldtr.limit, cpu.ldtr.selector),
        (LDT, 0xff, LDT_SEL)
    );
    cpu.gpr[reg::RCX] = u64::MAX;
    run(&mut cpu, &mut mem, &[0x0f, 0x00, 0xc9]).unwrap(); // str ecx
    assert_eq!(cpu.gpr[reg::RCX], u64::from(TSS_SEL));
    run(&mut cpu, &mut mem, &[0x0f, 0x00, 0xc1]).unwrap(); // sldt ecx
    assert_eq!(cpu.gpr[reg::RCX], u64::from(LDT_SEL));
    // Ring 3: LLDT is #GP(0).
    to_ring3(&mut cpu, false);
    faults(&mut cpu, &mut mem, &[0x0f, 0x00, 0xd0], gp(0));
    // Real mode: #UD.
    let mut real = CpuState::default();
    faults(&mut real, &mut mem, &[0x0f, 0x00, 0xc1], Exception::cpu(6));
}

#[test]
fn long_mode_ltr_reads_a_16_byte_descriptor() {
    let (mut cpu, mut mem) = machine(true);
    gdt(&mut mem, TSS_SEL + 8, 0xffff_8000); // base bits 32..63
    cpu.tr = Segment::default();
    cpu.gpr[reg::RAX] = u64::from(TSS_SEL);
    run(&mut cpu, &mut mem, &[0x0f, 0x00, 0xd8]).unwrap();
    assert_eq!(cpu.tr.base, 0xffff_8000_0000_0000 | TSS);
    // 16-byte descriptor beyond the limit.
    let (mut cpu, mut mem) = machine(true);
    cpu.gdtr.limit = TSS_SEL + 7;
    cpu.gpr[reg::RAX] = u64::from(TSS_SEL);
    faults(
        &mut cpu,
        &mut mem,
        &[0x0f, 0x00, 0xd8],
        gp(u32::from(TSS_SEL)),
    );
}

#[test]
fn lar_lsl_verr_verw_set_zf_and_never_fault_on_selectors() {
    let (mut cpu, mut mem) = machine(false);
    to_ring3(&mut cpu, false);
    let lar = [0x0f, 0x02, 0xc1]; // lar eax, ecx
    let lsl = [0x0f, 0x03, 0xc1]; // lsl eax, ecx
    let verr = [0x0f, 0x00, 0xe1];
    let verw = [0x0f, 0x00, 0xe9];
    let mut check = |cpu: &mut CpuState, bytes: &[u8], sel: u16| -> (bool, u64) {
        cpu.rip = CODE;
        cpu.gpr[reg::RCX] = u64::from(sel);
        cpu.gpr[reg::RAX] = 0x5555;
        run(cpu, &mut mem, bytes).unwrap();
        (cpu.rflags & rflags::ZF != 0, cpu.gpr[reg::RAX])
    };
    // Access rights masked by 0x00F0FF00 (limit bits 16-19 dropped).
    assert_eq!(check(&mut cpu, &lar, UDATA | 3), (true, 0x00c0_f300));
    assert_eq!(check(&mut cpu, &lsl, UDATA | 3), (true, 0xffff_ffff));
    assert_eq!(check(&mut cpu, &lsl, 0x0f), (true, 0xfff)); // LDT data
    assert_eq!(check(&mut cpu, &lar, KDATA), (false, 0x5555)); // DPL 0 < CPL 3
    assert_eq!(check(&mut cpu, &lar, 0xfff8), (false, 0x5555)); // beyond the GDT
    assert_eq!(check(&mut cpu, &lar, 0), (false, 0x5555));
    assert_eq!(check(&mut cpu, &lar, CONFORMING), (true, 0x00c0_9f00)); // no privilege check
    assert_eq!(check(&mut cpu, &lar, CALLGATE32), (true, 0x0000_ec00));
    assert_eq!(check(&mut cpu, &lsl, CALLGATE32), (false, 0x5555)); // gates have no limit
    assert!(check(&mut cpu, &verr, UDATA_RO | 3).0);
    assert!(!check(&mut cpu, &verw, UDATA_RO | 3).0);
    assert!(check(&mut cpu, &verw, UDATA | 3).0);
    assert!(!check(&mut cpu, &verr, XO_CODE).0);
    assert!(!check(&mut cpu, &verr, CALLGATE32).0);
}

#[test]
fn arpl_raises_rpl() {
    let (mut cpu, mut mem) = machine(false);
    cpu.gpr[reg::RAX] = 0xabcd_0010;
    cpu.gpr[reg::RCX] = 0x3;
    run(&mut cpu, &mut mem, &[0x66, 0x63, 0xc8]).unwrap(); // arpl ax, cx
    assert_eq!(cpu.gpr[reg::RAX], 0xabcd_0013);
    assert_ne!(cpu.rflags & rflags::ZF, 0);
    cpu.rip = CODE;
    run(&mut cpu, &mut mem, &[0x66, 0x63, 0xc8]).unwrap();
    assert_eq!(cpu.rflags & rflags::ZF, 0);
    let mut real = CpuState::default();
    faults(&mut real, &mut mem, &[0x63, 0xc8], Exception::cpu(6));
}

#[test]
fn handles_only_segmentation_instructions() {
    use iced_x86::{Decoder, DecoderOptions};
    let yes: [&[u8]; 6] = [
        &[0x8e, 0xd8],
        &[0x0f, 0xa1],
        &[0xcb],
        &[0xcf],
        &[0x0f, 0x00, 0xd8],
        &[0xff, 0x2b],
    ];
    let no: [&[u8]; 4] = [&[0x89, 0xd8], &[0x0f, 0x22, 0xd8], &[0xc3], &[0xff, 0x23]];
    for b in yes {
        let i = Decoder::new(32, b, DecoderOptions::NONE).decode();
        assert!(ringzero_translator::system::segment::handles(&i), "{i}");
    }
    for b in no {
        let i = Decoder::new(32, b, DecoderOptions::NONE).decode();
        assert!(!ringzero_translator::system::segment::handles(&i), "{i}");
    }
    let _ = ctl::CR0_PE;
}
