//! The difftest hardware oracle (KVM at ring 3) and the case generator, with known answers.

mod common;

use iced_x86::OpKind;
use ringzero::difftest::gen::{decode, generate, memory_operand_address, Family};
use ringzero::difftest::oracle::Oracle;
use ringzero::difftest::report::compare;
use ringzero::difftest::{Case, DifftestError, Mode, CODE_BASE, DATA_BASE, DATA_SIZE, STACK_TOP};

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

fn case(code: &[u8], set: &[(usize, u64)], rflags: u64) -> Case {
    let mut regs = [0u64; 16];
    regs[4] = STACK_TOP;
    for &(r, v) in set {
        regs[r] = v;
    }
    Case {
        code: code.to_vec(),
        regs,
        rflags,
        data: (0..DATA_SIZE).map(|i| (i * 7) as u8).collect(),
    }
}

fn oracle(test: &str) -> Option<Oracle> {
    if !common::kvm_or_skip(test) {
        return None;
    }
    Some(Oracle::new(Mode::Long64).expect("64-bit oracle"))
}

#[test]
fn add_gives_the_sum_and_exact_flags() {
    let Some(mut o) = oracle("add_gives_the_sum_and_exact_flags") else {
        return;
    };
    // add rax, rbx; int3 — 0x7fff_ffff_ffff_ffff + 1: signed overflow, sign set, AF from bit 3.
    let c = case(
        &[0x48, 0x01, 0xd8, 0xcc],
        &[(0, i64::MAX as u64), (3, 1)],
        CF,
    );
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, None);
    assert_eq!(out.rip, CODE_BASE + 3);
    assert_eq!(out.regs[0], 0x8000_0000_0000_0000);
    assert_eq!(out.regs[3], 1);
    assert_eq!(out.regs[4], STACK_TOP);
    assert_eq!(
        out.rflags & (CF | PF | AF | ZF | SF | OF),
        OF | SF | AF | PF
    );
    assert_eq!(out.data, c.data);
    // add eax, ebx with a carry out of bit 31 and a zero result: the upper half is cleared.
    let c = case(
        &[0x01, 0xd8, 0xcc],
        &[(0, 0xdead_0000_ffff_ffff), (3, 1)],
        0,
    );
    let out = o.run(&c).unwrap();
    assert_eq!(out.regs[0], 0);
    assert_eq!(
        out.rflags & (CF | PF | AF | ZF | SF | OF),
        CF | PF | AF | ZF
    );
}

#[test]
fn div_by_zero_is_vector_0_with_state_unchanged() {
    let Some(mut o) = oracle("div_by_zero_is_vector_0_with_state_unchanged") else {
        return;
    };
    // nop; div rbx (rbx = 0); int3
    let c = case(&[0x90, 0x48, 0xf7, 0xf3, 0xcc], &[(0, 5), (2, 7)], ZF | CF);
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, Some((0, None)));
    assert_eq!(out.rip, CODE_BASE + 1, "RIP at the div");
    assert_eq!(out.regs, c.regs);
    assert_eq!(out.rflags & 0xfff, c.entry_rflags() & 0xfff);
}

#[test]
fn ud2_is_vector_6_and_a_store_shows_in_the_data() {
    let Some(mut o) = oracle("ud2_is_vector_6_and_a_store_shows_in_the_data") else {
        return;
    };
    let out = o.run(&case(&[0x0f, 0x0b, 0xcc], &[], 0)).unwrap();
    assert_eq!(out.exception, Some((6, None)));
    assert_eq!(out.rip, CODE_BASE);

    // mov [rbx + 0x10], rax; int3
    let c = case(
        &[0x48, 0x89, 0x43, 0x10, 0xcc],
        &[(0, 0x1122_3344_5566_7788), (3, DATA_BASE + 0x100)],
        0,
    );
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, None);
    let mut want = c.data.clone();
    want[0x110..0x118].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(out.data, want);

    // A store outside the data region is a #PF with a user-mode write error code (U=1, W=1, P=0).
    let c = case(&[0x48, 0x89, 0x03, 0xcc], &[(3, 0x30_0000)], 0);
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, Some((14, Some(0b110))));
    // push/pop go to the stack page inside the data region.
    let c = case(&[0x53, 0x58, 0xcc], &[(3, 0xabcd)], 0);
    let out = o.run(&c).unwrap();
    assert_eq!(out.regs[0], 0xabcd);
    assert_eq!(out.regs[4], STACK_TOP);
    let off = (STACK_TOP - 8 - DATA_BASE) as usize;
    assert_eq!(out.data[off..off + 8], 0xabcdu64.to_le_bytes());
}

#[test]
fn compat_mode_is_refused_when_the_hypervisor_emulates_it() {
    if !common::kvm_or_skip("compat_mode_is_refused_when_the_hypervisor_emulates_it") {
        return;
    }
    // On hardware KVM compatibility mode is native and the oracle works; under PVM it is emulated
    // and must be refused, never silently used as "the CPU".
    match Oracle::new(Mode::Compat32) {
        Ok(mut o) => {
            // dec eax (0x48 is REX in 64-bit mode, so this proves compatibility mode); int3
            let out = o.run(&case(&[0x48, 0xcc], &[(0, 5)], 0)).unwrap();
            assert_eq!(out.regs[0], 4);
            assert_eq!(out.exception, None);
        }
        Err(DifftestError::NotNative(why)) => eprintln!("compat oracle refused: {why}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn generator_is_deterministic() {
    for f in Family::ALL {
        for mode in [Mode::Long64, Mode::Compat32] {
            for i in 0..20 {
                let a = generate(42, i, mode, Some(f));
                let b = generate(42, i, mode, Some(f));
                assert_eq!(a, b);
            }
        }
    }
    assert_ne!(
        generate(1, 0, Mode::Long64, None).code,
        generate(2, 0, Mode::Long64, None).code
    );
}

#[test]
fn generated_cases_decode_and_address_only_the_data_region() {
    for mode in [Mode::Long64, Mode::Compat32] {
        for i in 0..3000 {
            let c = generate(7, i, mode, None);
            assert_eq!(c.data.len() as u64, DATA_SIZE);
            assert_eq!(c.regs[4], STACK_TOP);
            assert_eq!(c.code.last(), Some(&0xcc), "case {i} ends with int3");
            let insns = decode(&c, mode);
            let mut len = 0;
            for insn in &insns {
                assert!(!insn.is_invalid(), "case {i}: undecodable {:02x?}", c.code);
                len += insn.len();
                if insn.mnemonic() == iced_x86::Mnemonic::Lea
                    || insn.mnemonic() == iced_x86::Mnemonic::Nop
                {
                    continue;
                }
                for op in 0..insn.op_count() {
                    if insn.op_kind(op) != OpKind::Memory {
                        continue;
                    }
                    let addr = memory_operand_address(insn, op, &c.regs)
                        .expect("address computable")
                        & mode.width_mask();
                    let size = insn.memory_size().size() as u64;
                    assert!(
                        addr >= DATA_BASE && addr + size <= DATA_BASE + DATA_SIZE,
                        "case {i} ({mode:?}): {insn} accesses {addr:#x}"
                    );
                }
            }
            assert_eq!(len, c.code.len());
        }
    }
}

#[test]
fn a_thousand_generated_cases_run_on_the_oracle() {
    let Some(mut o) = oracle("a_thousand_generated_cases_run_on_the_oracle") else {
        return;
    };
    let start = std::time::Instant::now();
    let mut faults = 0;
    let n = 1000u64;
    for i in 0..n {
        let c = generate(2024, i, Mode::Long64, None);
        let out = o
            .run(&c)
            .unwrap_or_else(|e| panic!("case {i}: host error {e}"));
        if let Some((v, _)) = out.exception {
            faults += 1;
            // Only the exceptions generated code can raise: #DE, #UD, #GP (cmpxchg16b
            // alignment), #AC (popf setting AC, then a misaligned access).
            assert!(matches!(v, 0 | 6 | 13 | 17), "case {i}: vector {v}");
        }
        // The oracle agrees with itself (the comparison machinery has no false positives).
        assert!(compare(&c, Mode::Long64, &out, &out).agrees());
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "difftest oracle: {n} cases in {secs:.3} s = {:.0} cases/s ({faults} ended in an exception)",
        n as f64 / secs
    );
}
