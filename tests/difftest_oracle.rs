//! The difftest hardware oracle (KVM at ring 3) and the case generator, with known answers.

mod common;

use iced_x86::OpKind;
use ringzero::difftest::gen::{decode, generate, memory_operand_address, Family};
use ringzero::difftest::oracle::Oracle;
use ringzero::difftest::report::compare;
use ringzero::difftest::{Case, DifftestError, Mode, CODE_BASE, DATA_BASE, DATA_SIZE, STACK_TOP};
use ringzero_translator::state::FpuState;

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
        fpu: FpuState::default(),
    }
}

/// An 80-bit register image of `v` (exact for the values these tests use).
fn f80(v: f64) -> [u8; 16] {
    let bits = v.to_bits();
    let sign = (bits >> 63) as u16;
    let exp = ((bits >> 52) & 0x7ff) as u16;
    let mut out = [0u8; 16];
    if v != 0.0 {
        let sig = (1u64 << 63) | ((bits & ((1 << 52) - 1)) << 11);
        out[..8].copy_from_slice(&sig.to_le_bytes());
        out[8..10].copy_from_slice(&((sign << 15) | (exp - 1023 + 16383)).to_le_bytes());
    } else {
        out[8..10].copy_from_slice(&(sign << 15).to_le_bytes());
    }
    out
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
            // The floating-point families add #MF (16), #XM (19) and #GP for misaligned
            // 16-byte SSE operands.
            assert!(
                matches!(v, 0 | 6 | 13 | 16 | 17 | 19),
                "case {i}: vector {v}"
            );
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

#[test]
fn fpu_state_goes_in_and_comes_back_exactly() {
    let Some(mut o) = oracle("fpu_state_goes_in_and_comes_back_exactly") else {
        return;
    };
    // A lone int3: the x87/SSE state set through KVM_SET_XSAVE is what KVM_GET_XSAVE reports,
    // MXCSR with DAZ/FTZ/rounding included (KVM_GET_FPU would say 0 there).
    let mut c = case(&[0xcc], &[], 0);
    c.fpu.fcw = 0x0c7f;
    c.fpu.fsw = 5 << 11 | 0x4100 | 0x21;
    c.fpu.ftw = 0b1110_0000;
    c.fpu.st[0] = f80(1.5);
    c.fpu.st[1] = f80(-2.0);
    c.fpu.st[7][..10].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // a denormal
    c.fpu.xmm[15] = [0xab; 16];
    c.fpu.mxcsr = 0xffc0 & !0x1000 | 0x3;
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, None);
    let (e, a) = (&c.fpu, &out.fpu);
    assert_eq!(
        (a.fcw, a.fsw, a.ftw, a.mxcsr),
        (e.fcw, e.fsw, e.ftw, e.mxcsr)
    );
    assert_eq!(a.st, e.st);
    assert_eq!(a.xmm, e.xmm);
}

#[test]
fn x87_arithmetic_runs_on_the_cpu() {
    let Some(mut o) = oracle("x87_arithmetic_runs_on_the_cpu") else {
        return;
    };
    // fld1; fadd st, st(0); fstp qword [rbx]; fnstsw ax; int3
    let mut c = case(
        &[0xd9, 0xe8, 0xd8, 0xc0, 0xdd, 0x1b, 0xdf, 0xe0, 0xcc],
        &[(3, DATA_BASE + 0x100)],
        0,
    );
    c.fpu.fsw = 3 << 11;
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, None);
    assert_eq!(&out.data[0x100..0x108], &2.0f64.to_le_bytes());
    // Pushed to R2 and popped: TOP back to 3, tags empty, the register keeps its value.
    assert_eq!((out.fpu.fsw >> 11) & 7, 3);
    assert_eq!(
        out.regs[0] & 0x3800,
        3 << 11,
        "fnstsw ax (after the pop) saw TOP = 3"
    );
    assert_eq!(out.fpu.ftw, 0);
    assert_eq!(out.fpu.st[7], f80(2.0));
}

#[test]
fn unmasked_sse_divide_by_zero_is_xm_with_the_destination_unchanged() {
    let Some(mut o) = oracle("unmasked_sse_divide_by_zero_is_xm") else {
        return;
    };
    // divss xmm0, xmm1; int3 with ZM clear: #XM (19) at the divss, ZE set, xmm0 unchanged.
    let mut c = case(&[0xf3, 0x0f, 0x5e, 0xc1, 0xcc], &[], 0);
    c.fpu.mxcsr = 0x1f80 & !0x200;
    c.fpu.xmm[0][..4].copy_from_slice(&1.0f32.to_le_bytes());
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, Some((19, None)));
    assert_eq!(out.rip, CODE_BASE);
    assert_eq!(out.fpu.mxcsr, c.fpu.mxcsr | 0x4);
    assert_eq!(out.fpu.xmm, c.fpu.xmm);
    // Masked: the infinity is written and the flag set.
    c.fpu.mxcsr = 0x1f80;
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, None);
    assert_eq!(&out.fpu.xmm[0][..4], &f32::INFINITY.to_le_bytes());
    assert_eq!(out.fpu.mxcsr, 0x1f84);
}

#[test]
fn pending_x87_exception_is_mf_at_the_next_waiting_instruction() {
    let Some(mut o) = oracle("pending_x87_exception_is_mf") else {
        return;
    };
    // fnstsw ax (no-wait: runs); fwait: #MF (16) there, state unchanged.
    let mut c = case(&[0xdf, 0xe0, 0x9b, 0xcc], &[], 0);
    c.fpu.fcw = 0x037b; // ZM clear
    c.fpu.fsw = 0x8084 | 0x4000; // B, ES, ZE, C3
    let out = o.run(&c).unwrap();
    assert_eq!(out.exception, Some((16, None)));
    assert_eq!(out.rip, CODE_BASE + 2);
    assert_eq!(out.regs[0] & 0xffff, 0xc084);
    assert_eq!(out.fpu.fsw, c.fpu.fsw);
}
