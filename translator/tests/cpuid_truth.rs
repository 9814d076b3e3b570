//! CPUID tells the truth: the model advertises exactly what the BT implements.
//!
//! - One table ([`INSTRUCTION_FEATURES`]) drives both the CPUID bits and the decoder's #UD gate.
//! - Every advertised feature has an instruction that executes through the engine (and the
//!   monitor, for the instructions it runs).
//! - Instructions of features the model does not advertise raise #UD through the engine at
//!   their RIP with the state unchanged, under every tier policy, in the middle of a block and
//!   as its first instruction.
//! - BMI1 (advertised): known answers, the AMD host as oracle, and both tiers agreeing.

mod common;

use common::{operand_pairs, Rng, CODE, STACK};
use iced_x86::code_asm::*;
use iced_x86::{CpuidFeature, Decoder, DecoderError, DecoderOptions, Instruction};
use ringzero_translator::engine::{Engine, StopReason, TierPolicy};
use ringzero_translator::interp::{self, run_block};
use ringzero_translator::jit::{run_compiled, Jit};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::flags::ARITH;
use ringzero_translator::sem::{Exception, UD};
use ringzero_translator::state::{ctl, msr, reg, rflags, CpuState, Segment};
use ringzero_translator::system::cpuid::{
    implemented, CpuModel, CpuidGate, Feature, Requirement, DEFAULT_GATE, INSTRUCTION_FEATURES,
};
use ringzero_translator::system::{self, SystemBus};

/// Both tiers (an adaptive policy runs one of them per block too).
const POLICIES: [TierPolicy; 2] = [TierPolicy::InterpreterOnly, TierPolicy::JitAlways];
const MEM: usize = 0x10000;
/// Data the memory operands point at (RSI, RDI; 64-byte aligned for FXSAVE/CMPXCHG16B).
const DATA: u64 = 0x4000;

/// A CPU in `bits` mode (16 = real mode at CS = 0) with the FPU/SSE enabled and every GPR
/// pointing into the data area, and memory holding `code` at CODE.
fn machine(bits: u32, code: &[u8]) -> (CpuState, FlatMem) {
    let mut c = common::cpu(bits);
    if bits == 16 {
        c.cs = Segment::real_mode(0);
    }
    c.cr0 = (c.cr0 | ctl::CR0_NE) & !(ctl::CR0_CD | ctl::CR0_NW);
    c.cr4 |= ctl::CR4_OSFXSR;
    for (i, r) in c.gpr.iter_mut().enumerate() {
        *r = DATA + 0x40 * i as u64;
    }
    c.gpr[reg::RSP] = STACK;
    c.gpr[reg::RSI] = DATA;
    c.gpr[reg::RDI] = DATA + 0x100;
    let mut m = FlatMem::new(0, MEM);
    for i in (DATA as usize..DATA as usize + 0x800).step_by(8) {
        m.bytes[i..i + 8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9).to_le_bytes());
    }
    m.write(CODE, code).unwrap();
    (c, m)
}

fn asm(bits: u32, build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    build(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Decodes `bytes` with iced alone (no gate): the instruction must be a valid encoding.
fn decode_raw(bits: u32, bytes: &[u8]) -> Instruction {
    let mut d = Decoder::with_ip(bits, bytes, CODE, DecoderOptions::NONE);
    let insn = d.decode();
    assert_eq!(
        d.last_error(),
        DecoderError::None,
        "{bytes:02x?} is not an encoding"
    );
    insn
}

struct Bus;
impl SystemBus for Bus {
    fn port_in(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn port_out(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn tsc(&mut self) -> u64 {
        0x1234_5678
    }
    fn set_tsc(&mut self, _value: u64) {}
}

/// Runs the one instruction at CS:RIP as the BT does: the engine, then the monitor's executor
/// for a system (or x87/SSE) instruction.
fn run_insn(policy: TierPolicy, cpu: &mut CpuState, mem: &mut FlatMem) -> Result<(), Exception> {
    ENGINES.with(|engines| {
        let mut engines = engines.borrow_mut();
        let i = POLICIES.iter().position(|&p| p == policy).unwrap();
        let engine = &mut engines[i];
        // Every case puts other code at CODE: start from an empty translation cache.
        engine.flush();
        run_on(engine, cpu, mem)
    })
}

thread_local! {
    /// One engine per policy and test thread (a JIT is costly to create).
    static ENGINES: std::cell::RefCell<Vec<Engine>> = std::cell::RefCell::new(
        POLICIES.iter().map(|&p| Engine::with_policy(p).unwrap()).collect()
    );
}

fn run_on(engine: &mut Engine, cpu: &mut CpuState, mem: &mut FlatMem) -> Result<(), Exception> {
    let exit = engine.run(cpu, mem, 1);
    match exit.reason {
        StopReason::Budget | StopReason::StopPoint => {
            assert_eq!(exit.executed, 1);
            Ok(())
        }
        StopReason::Exception(Exception::System(_)) => {
            let insn = interp::decode(cpu, mem)?;
            system::execute(cpu, mem, &mut Bus, &insn).map(|_| ())
        }
        StopReason::Exception(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// One table: CPUID bits, `supports` and the gate agree.

#[test]
fn gate_supports_and_cpuid_bits_come_from_one_table() {
    let model = CpuModel::default();
    assert_eq!(CpuidGate::of(&model), DEFAULT_GATE);
    for f in CpuidFeature::values() {
        let in_table = INSTRUCTION_FEATURES.iter().any(|&(c, _)| c == f);
        assert_eq!(DEFAULT_GATE.allows(f), model.supports(f), "{f:?}");
        if !in_table {
            assert!(!DEFAULT_GATE.allows(f), "{f:?} is not in the table");
        }
    }
    for &(c, r) in INSTRUCTION_FEATURES.iter() {
        match r {
            Requirement::Baseline => assert!(DEFAULT_GATE.allows(c), "{c:?}"),
            Requirement::Bit(feat) => {
                // Advertised ⇔ the CPUID bit is set ⇔ the gate lets the instructions through.
                let l = feat.location();
                let bit = model.cpuid(l.leaf, 0)[l.reg] >> l.bit & 1 == 1;
                assert!(bit, "{feat:?} CPUID bit");
                assert!(DEFAULT_GATE.allows(c), "{c:?}");
                let mut without = CpuModel::default();
                without.features.retain(|&g| g != feat);
                assert_eq!(without.cpuid(l.leaf, 0)[l.reg] >> l.bit & 1, 0, "{feat:?}");
                assert!(!CpuidGate::of(&without).allows(c), "{c:?} without {feat:?}");
                assert!(!without.supports(c), "{c:?} without {feat:?}");
            }
        }
    }
}

#[test]
fn cpuid_instruction_reports_the_model_through_the_monitor() {
    for (leaf, sub) in [(1u32, 0u32), (7, 0), (7, 1), (0x8000_0001, 0)] {
        let (mut cpu, mut mem) = machine(64, &[0x0f, 0xa2]);
        cpu.gpr[reg::RAX] = u64::from(leaf);
        cpu.gpr[reg::RCX] = u64::from(sub);
        run_insn(TierPolicy::InterpreterOnly, &mut cpu, &mut mem).unwrap();
        let want = CpuModel::default().cpuid(leaf, sub);
        assert_eq!(cpu.gpr[reg::RBX] as u32, want[1], "leaf {leaf:#x}.{sub}");
        assert_eq!(cpu.gpr[reg::RCX] as u32, want[2], "leaf {leaf:#x}.{sub}");
    }
    // BMI1 is the only structured extended feature; leaf 1 ECX has no SSE3/SSSE3/SSE4/AVX/
    // XSAVE/RDRAND, leaf 1 EDX no CLFSH.
    let m = CpuModel::default();
    assert_eq!(m.cpuid(7, 0)[1], 1 << 3);
    assert_eq!(
        m.cpuid(1, 0)[2] & (1 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 26 | 1 << 28),
        0
    );
    assert_eq!(m.cpuid(1, 0)[3] & 1 << 19, 0);
    assert_eq!(m.cpuid(0x8000_0001, 0)[2] & 1 << 8, 1 << 8, "3DNowPrefetch");
}

// ---------------------------------------------------------------------------------------------
// Every advertised feature has an instruction that executes.

/// Features that are modes, paging or platform facilities rather than instructions.
fn instructionless(f: Feature) -> bool {
    use Feature as F;
    match f {
        F::De | F::Pse | F::Pae | F::Apic | F::Mtrr | F::Pge | F::Pat | F::Nx | F::Pdpe1gb => true,
        F::Fpu
        | F::Tsc
        | F::Msr
        | F::Cx8
        | F::Sep
        | F::Cmov
        | F::Mmx
        | F::Fxsr
        | F::Sse
        | F::Sse2
        | F::Cx16
        | F::Movbe
        | F::Popcnt
        | F::Syscall
        | F::Rdtscp
        | F::Lm
        | F::LahfLm
        | F::Abm
        | F::Prefetchw
        | F::Bmi1 => false,
    }
}

/// A sample instruction of `f`: (mode bits, bytes, setup).
fn sample(f: Feature) -> (u32, Vec<u8>, fn(&mut CpuState)) {
    use Feature as F;
    fn none(_: &mut CpuState) {}
    let (bits, bytes, setup): (u32, &[u8], fn(&mut CpuState)) = match f {
        F::Fpu => (64, &[0xd9, 0xe8], none), // fld1
        F::Tsc => (64, &[0x0f, 0x31], none), // rdtsc
        F::Msr => (64, &[0x0f, 0x32], |c| c.gpr[reg::RCX] = 0xc000_0080), // rdmsr EFER
        F::Cx8 => (64, &[0x0f, 0xc7, 0x0e], none), // cmpxchg8b [rsi]
        F::Sep => (32, &[0x0f, 0x34], |c| {
            c.set_msr(msr::SYSENTER_CS, 0x08);
            c.set_msr(msr::SYSENTER_EIP, 0x2000);
        }), // sysenter
        F::Cmov => (64, &[0x0f, 0x44, 0xc1], none), // cmove eax, ecx
        F::Mmx => (64, &[0x0f, 0xfc, 0xc1], none), // paddb mm0, mm1
        F::Fxsr => (64, &[0x0f, 0xae, 0x06], none), // fxsave [rsi]
        F::Sse => (64, &[0x0f, 0x58, 0xc1], none), // addps xmm0, xmm1
        F::Sse2 => (64, &[0x66, 0x0f, 0xd4, 0xc1], none), // paddq xmm0, xmm1
        F::Cx16 => (64, &[0x48, 0x0f, 0xc7, 0x0e], none), // cmpxchg16b [rsi]
        F::Movbe => (64, &[0x0f, 0x38, 0xf0, 0x06], none), // movbe eax, [rsi]
        F::Popcnt => (64, &[0xf3, 0x0f, 0xb8, 0xc1], none), // popcnt eax, ecx
        F::Syscall => (64, &[0x0f, 0x05], |c| {
            c.efer |= ctl::EFER_SCE;
            c.set_msr(msr::LSTAR, 0x2000);
        }),
        F::Rdtscp => (64, &[0x0f, 0x01, 0xf9], none),
        F::Lm => (64, &[0x48, 0x63, 0xc1], none), // movsxd rax, ecx
        F::LahfLm => (64, &[0x9f], none),         // lahf in 64-bit mode
        F::Abm => (64, &[0xf3, 0x0f, 0xbd, 0xc1], none), // lzcnt eax, ecx
        F::Prefetchw => (64, &[0x0f, 0x0d, 0x0e], none), // prefetchw [rsi]
        F::Bmi1 => (64, &[0xc4, 0xe2, 0x70, 0xf2, 0xc2], none), // andn eax, ecx, edx
        _ => unreachable!("{f:?} has no instruction"),
    };
    (bits, bytes.to_vec(), setup)
}

#[test]
fn every_advertised_feature_has_an_instruction_that_executes() {
    for f in Feature::ADVERTISED {
        if instructionless(f) {
            continue;
        }
        let (bits, bytes, setup) = sample(f);
        let insn = decode_raw(bits, &bytes);
        // The sample really exercises `f` (LAHF in 64-bit mode has no iced feature of its own).
        if f != Feature::LahfLm {
            assert!(
                insn.cpuid_features().iter().any(|&c| INSTRUCTION_FEATURES
                    .iter()
                    .any(|&(t, r)| t == c && r == Requirement::Bit(f))),
                "{f:?}: {insn} has features {:?}",
                insn.cpuid_features()
            );
        }
        assert!(implemented(&insn), "{f:?}: {insn}");
        for policy in POLICIES {
            let (mut cpu, mut mem) = machine(bits, &bytes);
            setup(&mut cpu);
            let start = cpu.clone();
            run_insn(policy, &mut cpu, &mut mem)
                .unwrap_or_else(|e| panic!("{f:?}: {insn} under {policy:?}: {e}"));
            assert_ne!(cpu, start, "{f:?}: {insn} changed nothing");
            assert_ne!(cpu.rip, start.rip, "{f:?}: {insn} did not retire");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instructions of unadvertised features raise #UD.

type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Unadvertised instructions (64-bit mode), assembled by iced.
const UNADVERTISED: &[(&str, Build)] = &[
    ("avx vaddps", |c| c.vaddps(ymm0, ymm1, ymm2)),
    ("avx vzeroupper", |c| c.vzeroupper()),
    ("avx2 vpaddd", |c| c.vpaddd(ymm0, ymm1, ymm2)),
    ("avx512 vaddps", |c| c.vaddps(zmm0, zmm1, zmm2)),
    ("fma", |c| c.vfmadd132ps(xmm0, xmm1, xmm2)),
    ("f16c", |c| c.vcvtph2ps(xmm0, xmm1)),
    ("bmi2 shlx", |c| c.shlx(eax, edx, ecx)),
    ("bmi2 pdep", |c| c.pdep(rax, rbx, rcx)),
    ("bmi2 mulx", |c| c.mulx(rax, rbx, rcx)),
    ("bmi2 rorx", |c| c.rorx(eax, ecx, 3)),
    ("tbm blcfill", |c| c.blcfill(eax, ecx)),
    ("adx adcx", |c| c.adcx(eax, ecx)),
    ("adx adox", |c| c.adox(rax, rcx)),
    ("sse3 addsubps", |c| c.addsubps(xmm0, xmm1)),
    ("sse3 haddps", |c| c.haddps(xmm0, xmm1)),
    ("sse3 movddup", |c| c.movddup(xmm0, xmm1)),
    ("sse3 lddqu", |c| c.lddqu(xmm0, xmmword_ptr(rsi))),
    ("sse3 fisttp", |c| c.fisttp(dword_ptr(rsi))),
    ("ssse3 pshufb", |c| c.pshufb(xmm0, xmm1)),
    ("sse4.1 ptest", |c| c.ptest(xmm0, xmm1)),
    ("sse4.1 pminsd", |c| c.pminsd(xmm0, xmm1)),
    ("sse4.1 pextrw m16", |c| c.pextrw(word_ptr(rsi), xmm0, 1)),
    ("sse4.2 crc32", |c| c.crc32(eax, ecx)),
    ("sse4.2 pcmpestri", |c| c.pcmpestri(xmm0, xmm1, 0)),
    ("sse4a extrq", |c| c.extrq(xmm0, xmm1)),
    ("aes", |c| c.aesenc(xmm0, xmm1)),
    ("pclmulqdq", |c| c.pclmulqdq(xmm0, xmm1, 0)),
    ("sha", |c| c.sha1rnds4(xmm0, xmm1, 0)),
    ("rdrand", |c| c.rdrand(eax)),
    ("rdseed", |c| c.rdseed(rax)),
    ("xsave", |c| c.xsave(ptr(rsi))),
    ("xrstor", |c| c.xrstor(ptr(rsi))),
    ("xgetbv", |c| c.xgetbv()),
    ("clflush", |c| c.clflush(byte_ptr(rsi))),
    ("clflushopt", |c| c.clflushopt(byte_ptr(rsi))),
    ("clwb", |c| c.clwb(byte_ptr(rsi))),
    ("fsgsbase", |c| c.rdfsbase(rax)),
    ("rdpid", |c| c.rdpid(rax)),
    ("smap clac", |c| c.clac()),
    ("rtm xend", |c| c.xend()),
    ("pku rdpkru", |c| c.rdpkru()),
    ("vmx vmcall", |c| c.vmcall()),
    ("svm vmmcall", |c| c.vmmcall()),
    ("invpcid", |c| c.invpcid(rax, xmmword_ptr(rsi))),
    ("clzero", |c| c.clzero()),
    ("rdpru", |c| c.rdpru()),
    ("wbnoinvd", |c| c.wbnoinvd()),
    ("serialize", |c| c.serialize()),
    ("movdiri", |c| c.movdiri(dword_ptr(rsi), eax)),
    ("3dnow femms", |c| c.femms()),
    ("3dnow pfadd", |c| c.pfadd(mm0, mm1)),
    ("rsm", |c| c.rsm()),
];

/// Unadvertised encodings given as bytes (64-bit mode).
const UNADVERTISED_BYTES: &[(&str, &[u8])] = &[
    ("monitor", &[0x0f, 0x01, 0xc8]),
    ("mwait", &[0x0f, 0x01, 0xc9]),
    ("cet incsspd", &[0xf3, 0x0f, 0xae, 0xe8]),
    ("cet saveprevssp", &[0xf3, 0x0f, 0x01, 0xea]),
    ("cet wrssd", &[0x0f, 0x38, 0xf6, 0x06]),
    // AMD: a register operand of 0F 0D is #UD (iced reads it as a reserved NOP).
    ("0f 0d register form", &[0x0f, 0x0d, 0xc0]),
];

/// Asserts `insn_bytes` raises #UD through the engine at its RIP with nothing changed, both
/// after two NOPs of the same block and as the first instruction of a block.
fn assert_ud(name: &str, bits: u32, insn_bytes: &[u8], setup: fn(&mut CpuState)) {
    let mut code = vec![0x90, 0x90];
    code.extend_from_slice(insn_bytes);
    code.push(0xcc);
    for policy in POLICIES {
        let (mut cpu, mut mem) = machine(bits, &code);
        setup(&mut cpu);
        let mut want = cpu.clone();
        want.rip = CODE + 2;
        let want_mem = mem.clone();
        let exit = ENGINES.with(|engines| {
            let mut engines = engines.borrow_mut();
            let i = POLICIES.iter().position(|&p| p == policy).unwrap();
            engines[i].flush();
            engines[i].run(&mut cpu, &mut mem, 100)
        });
        let ud = StopReason::Exception(Exception::cpu(UD));
        assert_eq!(exit.reason, ud, "{name} under {policy:?}");
        assert_eq!(exit.executed, 2, "{name} under {policy:?}");
        assert_eq!(cpu, want, "{name} under {policy:?}: state changed");
        assert!(mem == want_mem, "{name} under {policy:?}: memory changed");
        // Again from the instruction itself: it is the block's first instruction now.
        let exit = ENGINES.with(|engines| {
            let i = POLICIES.iter().position(|&p| p == policy).unwrap();
            engines.borrow_mut()[i].run(&mut cpu, &mut mem, 100)
        });
        assert_eq!(exit.reason, ud, "{name} (first) under {policy:?}");
        assert_eq!(exit.executed, 0, "{name} (first) under {policy:?}");
        assert_eq!(cpu, want, "{name} (first) under {policy:?}: state changed");
        assert!(mem == want_mem, "{name} (first) under {policy:?}");
    }
}

fn no_setup(_: &mut CpuState) {}

#[test]
fn unadvertised_instructions_raise_ud_at_their_rip_with_state_unchanged() {
    let built = UNADVERTISED
        .iter()
        .map(|&(name, build)| (name, asm(64, build)));
    let given = UNADVERTISED_BYTES.iter().map(|&(n, b)| (n, b.to_vec()));
    for (name, bytes) in built.chain(given) {
        let insn = decode_raw(64, &bytes);
        assert!(!implemented(&insn), "{name}: {insn} passes the gate");
        assert_ud(name, 64, &bytes, no_setup);
    }
}

#[test]
fn vex_is_ud_in_real_and_virtual_8086_mode_but_runs_in_16_bit_protected_mode() {
    // andn eax, ecx, edx: C4 E2 70 F2 C2 (in real mode C4 with a register ModRM is LES: #UD).
    let andn = [0xc4, 0xe2, 0x70, 0xf2, 0xc2];
    assert_ud("vex in real mode", 16, &andn, no_setup);
    assert_ud("vex in virtual-8086 mode", 16, &andn, |c| {
        c.cr0 |= ctl::CR0_PE;
        c.rflags |= rflags::VM;
        c.cs = Segment {
            dpl: 3,
            ..Segment::real_mode(0)
        };
        c.ss = Segment {
            dpl: 3,
            ..Segment::real_mode(0)
        };
    });
    let (mut cpu, mut mem) = machine(16, &andn);
    cpu.cr0 |= ctl::CR0_PE;
    cpu.cs = Segment {
        db: false,
        ..Segment::flat32(0x08, true)
    };
    cpu.gpr[reg::RCX] = 0xf0f0;
    cpu.gpr[reg::RDX] = 0xffff_ffff;
    run_insn(TierPolicy::InterpreterOnly, &mut cpu, &mut mem).unwrap();
    assert_eq!(cpu.gpr[reg::RAX], 0xffff_0f0f);
    assert_eq!(cpu.rip, CODE + 5);
}

#[test]
fn invalid_vex_forms_of_bmi1_are_ud() {
    for (name, bytes) in [
        ("vex.l=1", &[0xc4u8, 0xe2, 0x74, 0xf2, 0xc2][..]),
        ("66 + vex", &[0x66, 0xc4, 0xe2, 0x70, 0xf2, 0xc2]),
        ("f3 + vex", &[0xf3, 0xc4, 0xe2, 0x70, 0xf2, 0xc2]),
        ("rex + vex", &[0x48, 0xc4, 0xe2, 0x70, 0xf2, 0xc2]),
        ("lock + vex", &[0xf0, 0xc4, 0xe2, 0x70, 0xf2, 0xc2]),
        ("f3 /0 (no blsx)", &[0xc4, 0xe2, 0x78, 0xf3, 0xc1]),
        ("f3 /4 (no blsx)", &[0xc4, 0xe2, 0x78, 0xf3, 0xe1]),
    ] {
        assert_ud(name, 64, bytes, no_setup);
    }
}

#[test]
fn hint_nops_and_prefetches_execute_as_on_amd() {
    for (name, bytes) in [
        ("endbr64", &[0xf3u8, 0x0f, 0x1e, 0xfa][..]),
        ("endbr32", &[0xf3, 0x0f, 0x1e, 0xfb]),
        (
            "rdsspq (a NOP without CET)",
            &[0xf3, 0x48, 0x0f, 0x1e, 0xc8],
        ),
        ("reserved nop 0f 19", &[0x0f, 0x19, 0xc0]),
        ("reserved nop 0f 1e", &[0x0f, 0x1e, 0xc8]),
        ("reserved nop 0f 18 /4", &[0x0f, 0x18, 0x26]),
        ("mpx bndmk encoding", &[0xf3, 0x0f, 0x1b, 0x06]),
        ("cldemote encoding", &[0x0f, 0x1c, 0x06]),
        ("prefetchit0 encoding", &[0x0f, 0x18, 0x3d, 0, 0, 0, 0]),
        ("multi-byte nop", &[0x0f, 0x1f, 0x44, 0, 0]),
        ("prefetch", &[0x0f, 0x0d, 0x06]),
        ("prefetchw", &[0x0f, 0x0d, 0x0e]),
        ("0f 0d /2 (AMD: prefetch)", &[0x0f, 0x0d, 0x16]),
        ("0f 0d /7", &[0x0f, 0x0d, 0x3e]),
    ] {
        let insn = decode_raw(64, bytes);
        assert!(implemented(&insn), "{name}: {insn}");
        for policy in POLICIES {
            let (mut cpu, mut mem) = machine(64, bytes);
            // A hint never touches memory: point the operand outside guest memory.
            cpu.gpr[reg::RSI] = 0x7fff_0000_0000;
            let mut want = cpu.clone();
            want.rip = CODE + bytes.len() as u64;
            run_insn(policy, &mut cpu, &mut mem).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cpu, want, "{name} under {policy:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BMI1 semantics.

/// Runs `code` from `cpu` through the interpreter: (rax, arithmetic flags).
fn interp_run(bits: u32, code: &[u8], a: u64, b: u64, c: u64, flags: u64) -> (u64, u64) {
    let (mut cpu, mut mem) = machine(bits, code);
    cpu.gpr[reg::RAX] = 0x5555_5555_5555_5555;
    cpu.gpr[reg::RBX] = a;
    cpu.gpr[reg::RCX] = b;
    cpu.gpr[reg::RDX] = c;
    cpu.rflags = rflags::FIXED1 | (flags & ARITH);
    while cpu.rip != CODE + code.len() as u64 {
        interp::step(&mut cpu, &mut mem).unwrap();
    }
    (cpu.gpr[reg::RAX], cpu.rflags & ARITH)
}

const CF: u64 = rflags::CF;
const PF: u64 = rflags::PF;
const AF: u64 = rflags::AF;
const ZF: u64 = rflags::ZF;
const SF: u64 = rflags::SF;
const OF: u64 = rflags::OF;

#[test]
fn bmi1_known_answers() {
    // (name, build, rbx, rcx, want rax, want flags) with rax = 0x5555.. before and all six
    // flags set before (none of them survives). Values from the SDM's operation sections;
    // the undefined flags as the AMD host sets them (AF = 0 and PF = parity, BEXTR AF = 1,
    // SF = 0).
    let cases: &[(&str, Build, u64, u64, u64, u64)] = &[
        (
            "andn64",
            |c| c.andn(rax, rbx, rcx),
            0xff00,
            0xffff,
            0xff,
            PF,
        ),
        (
            "andn64 zero",
            |c| c.andn(rax, rbx, rcx),
            u64::MAX,
            0x1234,
            0,
            ZF | PF,
        ),
        (
            "andn64 sign",
            |c| c.andn(rax, rbx, rcx),
            0,
            1 << 63,
            1 << 63,
            SF | PF,
        ),
        // 32-bit: upper halves ignored, the result zero-extends into RAX.
        (
            "andn32",
            |c| c.andn(eax, ebx, ecx),
            1 << 32,
            0xffff_ffff_0000_0001,
            1,
            0,
        ),
        (
            "andn32 sign",
            |c| c.andn(eax, ebx, ecx),
            0,
            0x8000_0000,
            0x8000_0000,
            SF | PF,
        ),
        (
            "bextr",
            |c| c.bextr(rax, rbx, rcx),
            0x1234_5678_9abc_def0,
            0x0804,
            0xef,
            AF,
        ),
        // Only control bits 15:0 count.
        (
            "bextr ctl",
            |c| c.bextr(rax, rbx, rcx),
            0x1234_5678_9abc_def0,
            0xffff_0000_0804,
            0xef,
            AF,
        ),
        (
            "bextr len 0",
            |c| c.bextr(rax, rbx, rcx),
            u64::MAX,
            0x0010,
            0,
            ZF | AF | PF,
        ),
        (
            "bextr start 64",
            |c| c.bextr(rax, rbx, rcx),
            u64::MAX,
            0x0140,
            0,
            ZF | AF | PF,
        ),
        (
            "bextr len 64",
            |c| c.bextr(rax, rbx, rcx),
            u64::MAX,
            0x4000,
            u64::MAX,
            AF | PF,
        ),
        (
            "bextr past top",
            |c| c.bextr(rax, rbx, rcx),
            1 << 63,
            0x3f3f,
            1,
            AF,
        ),
        (
            "bextr32 start 63",
            |c| c.bextr(eax, ebx, ecx),
            1 << 63,
            0x3f3f,
            0,
            ZF | AF | PF,
        ),
        (
            "bextr32 len 32",
            |c| c.bextr(eax, ebx, ecx),
            u64::MAX,
            0x2004,
            0x0fff_ffff,
            AF | PF,
        ),
        ("blsi zero", |c| c.blsi(rax, rbx), 0, 0, 0, ZF | PF),
        ("blsi", |c| c.blsi(rax, rbx), 0xff00, 0, 0x100, CF | PF),
        (
            "blsi top",
            |c| c.blsi(rax, rbx),
            1 << 63,
            0,
            1 << 63,
            CF | SF | PF,
        ),
        (
            "blsi32 upper ignored",
            |c| c.blsi(eax, ebx),
            1 << 32,
            0,
            0,
            ZF | PF,
        ),
        (
            "blsmsk zero",
            |c| c.blsmsk(rax, rbx),
            0,
            0,
            u64::MAX,
            CF | SF | PF,
        ),
        ("blsmsk", |c| c.blsmsk(rax, rbx), 2, 0, 3, PF),
        (
            "blsmsk32 zero",
            |c| c.blsmsk(eax, ebx),
            1 << 32,
            0,
            0xffff_ffff,
            CF | SF | PF,
        ),
        ("blsr zero", |c| c.blsr(rax, rbx), 0, 0, 0, CF | ZF | PF),
        ("blsr one", |c| c.blsr(rax, rbx), 1, 0, 0, ZF | PF),
        ("blsr", |c| c.blsr(rax, rbx), 0xff00, 0, 0xfe00, PF),
        (
            "blsr32",
            |c| c.blsr(eax, ebx),
            0x1234_5678_9abc_def0,
            0,
            0x9abc_dee0,
            SF,
        ),
        // TZCNT (F3 0F BC) is TZCNT, not BSF: a zero source gives the width and CF = 1.
        ("tzcnt zero", |c| c.tzcnt(rax, rbx), 0, 0, 64, CF | OF),
        ("tzcnt", |c| c.tzcnt(rax, rbx), 0x80, 0, 7, OF),
        ("tzcnt low bit", |c| c.tzcnt(rax, rbx), 1, 0, 0, ZF | OF),
        (
            "tzcnt16 zero",
            |c| c.tzcnt(ax, bx),
            1 << 16,
            0,
            0x5555_5555_5555_0010,
            CF | OF,
        ),
    ];
    for &(name, build, b, c, want, want_flags) in cases {
        let code = asm(64, build);
        let got = interp_run(64, &code, b, c, 0, ARITH);
        assert_eq!(got, (want, want_flags), "{name}: rbx={b:#x} rcx={c:#x}");
    }
}

#[test]
fn bmi1_memory_operands_and_32_bit_mode() {
    // andn eax, ecx, [esi]; bextr eax, [esi], ecx; blsr eax, [esi] in 32-bit protected mode,
    // and VEX.W1 is ignored there (the 32-bit form runs).
    let (mut cpu, mut mem) = machine(32, &asm(32, |c| c.andn(eax, ecx, dword_ptr(esi)))[..]);
    mem.write(DATA, &0x0ff0_f00fu32.to_le_bytes()).unwrap();
    cpu.gpr[reg::RCX] = 0xffff_0000;
    run_insn(TierPolicy::JitAlways, &mut cpu, &mut mem).unwrap();
    assert_eq!(cpu.gpr[reg::RAX], 0xf00f);
    let w1 = [0xc4, 0xe2, 0xf0, 0xf2, 0xc2]; // andn eax, ecx, edx with VEX.W1
    let (mut cpu, mut mem) = machine(32, &w1);
    cpu.gpr[reg::RCX] = 0x0000_ffff;
    cpu.gpr[reg::RDX] = 0x1234_5678;
    run_insn(TierPolicy::InterpreterOnly, &mut cpu, &mut mem).unwrap();
    assert_eq!(cpu.gpr[reg::RAX], 0x1234_0000);
    // A faulting memory operand leaves everything unchanged.
    let code = asm(64, |c| c.blsr(rax, qword_ptr(rsi)));
    for policy in POLICIES {
        let (mut cpu, mut mem) = machine(64, &code);
        cpu.gpr[reg::RSI] = 0x8000_0000_0000_0000; // non-canonical: #GP(0)
        let want = cpu.clone();
        let err = run_insn(policy, &mut cpu, &mut mem).unwrap_err();
        assert!(
            matches!(err, Exception::Cpu { vector: 13, .. }),
            "{policy:?}: {err:?}"
        );
        assert_eq!(cpu, want);
    }
}

/// BMI1 forms the host-oracle and tier-equivalence tests run (rax = op(rbx, rcx)).
const BMI1_FORMS: &[(&str, Build)] = &[
    ("andn64", |c| c.andn(rax, rbx, rcx)),
    ("andn32", |c| c.andn(eax, ebx, ecx)),
    ("bextr64", |c| c.bextr(rax, rbx, rcx)),
    ("bextr32", |c| c.bextr(eax, ebx, ecx)),
    ("blsi64", |c| c.blsi(rax, rbx)),
    ("blsi32", |c| c.blsi(eax, ebx)),
    ("blsmsk64", |c| c.blsmsk(rax, rbx)),
    ("blsmsk32", |c| c.blsmsk(eax, ebx)),
    ("blsr64", |c| c.blsr(rax, rbx)),
    ("blsr32", |c| c.blsr(eax, ebx)),
    ("tzcnt64", |c| c.tzcnt(rax, rbx)),
    ("tzcnt32", |c| c.tzcnt(eax, ebx)),
    ("tzcnt16", |c| c.tzcnt(ax, bx)),
];

/// The host runs `form` with rbx = a, rcx = b and RFLAGS = flags: (rax, arithmetic flags).
#[cfg(target_arch = "x86_64")]
fn host(form: &str, a: u64, b: u64, flags: u64) -> (u64, u64) {
    use std::arch::asm;
    macro_rules! nat {
        ($t:literal) => {{
            let mut f = flags | 2;
            let mut r: u64 = 0x5555_5555_5555_5555;
            // SAFETY: the template only touches the named registers and its own stack slot.
            unsafe {
                asm!("push {f}", "popfq", $t, "pushfq", "pop {f}",
                    r = inout(reg) r, a = in(reg) a, b = in(reg) b, f = inout(reg) f);
            }
            let _ = b;
            (r, f & ARITH)
        }};
    }
    match form {
        "andn64" => nat!("andn {r}, {a}, {b} /* {b} */"),
        "andn32" => nat!("andn {r:e}, {a:e}, {b:e}"),
        "bextr64" => nat!("bextr {r}, {a}, {b}"),
        "bextr32" => nat!("bextr {r:e}, {a:e}, {b:e}"),
        "blsi64" => nat!("blsi {r}, {a} /* {b} */"),
        "blsi32" => nat!("blsi {r:e}, {a:e} /* {b} */"),
        "blsmsk64" => nat!("blsmsk {r}, {a} /* {b} */"),
        "blsmsk32" => nat!("blsmsk {r:e}, {a:e} /* {b} */"),
        "blsr64" => nat!("blsr {r}, {a} /* {b} */"),
        "blsr32" => nat!("blsr {r:e}, {a:e} /* {b} */"),
        "tzcnt64" => nat!("tzcnt {r}, {a} /* {b} */"),
        "tzcnt32" => nat!("tzcnt {r:e}, {a:e} /* {b} */"),
        "tzcnt16" => nat!("tzcnt {r:x}, {a:x} /* {b} */"),
        _ => unreachable!("{form}"),
    }
}

/// Whether the host is an AMD CPU with BMI1 (the model's own undefined-flag choices are
/// AMD's; elsewhere only the defined flags are compared).
#[cfg(target_arch = "x86_64")]
fn host_kind() -> (bool, bool) {
    let v = std::arch::x86_64::__cpuid(0);
    let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    (amd, std::arch::is_x86_feature_detected!("bmi1"))
}

/// The flags a form defines (the rest are compared only against an AMD host).
fn defined_flags(form: &str) -> u64 {
    match &form[..form.len() - 2] {
        "andn" | "blsi" | "blsr" => CF | ZF | SF | OF,
        "blsmsk" => CF | ZF | SF | OF,
        "bextr" => CF | ZF | OF,
        _ => CF | ZF, // tzcnt
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn bmi1_matches_the_host_cpu() {
    let (amd, bmi1) = host_kind();
    assert!(
        bmi1,
        "the test host must have BMI1 (the BT's CI runs on AMD Zen)"
    );
    let mut n = 0;
    for &(form, build) in BMI1_FORMS {
        let code = asm(64, build);
        let mask = if amd { ARITH } else { defined_flags(form) };
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ form.len() as u64);
        for (a, b) in operand_pairs(rng.next(), 200) {
            // BEXTR controls: small starts and lengths, and random ones.
            let b = if form.starts_with("bextr") && rng.next() & 1 == 0 {
                (b & 0xffff_ffff_ffff_0000) | (b & 0x7f7f)
            } else {
                b
            };
            for flags in [0, ARITH] {
                let want = host(form, a, b, flags);
                let got = interp_run(64, &code, a, b, 0, flags);
                assert_eq!(got.0, want.0, "{form} a={a:#x} b={b:#x}: result");
                assert_eq!(
                    got.1 & mask,
                    want.1 & mask,
                    "{form} a={a:#x} b={b:#x} flags in {flags:#x}"
                );
                n += 1;
            }
        }
    }
    assert!(n > 5000);
}

#[test]
fn bmi1_tiers_agree() {
    let mut jit = Jit::new().unwrap();
    // Each form followed by flag consumers, so lazy and materialized flags both cross the
    // instruction, plus memory-operand forms.
    let mut cases: Vec<(String, Vec<u8>)> = BMI1_FORMS
        .iter()
        .map(|&(name, build)| {
            let code = asm(64, |c| {
                build(c)?;
                c.setb(dl)?;
                c.sete(dh)?;
                c.cmovs(r8, rax)?;
                c.pushfq()?;
                c.pop(r9)
            });
            (name.to_string(), code)
        })
        .collect();
    let mem_forms: &[(&str, Build)] = &[
        ("andn mem", |c| c.andn(rax, rbx, qword_ptr(rsi))),
        ("bextr mem", |c| c.bextr(eax, dword_ptr(rsi + 4), ecx)),
        ("blsi mem", |c| c.blsi(rax, qword_ptr(rsi))),
        ("blsmsk mem", |c| c.blsmsk(eax, dword_ptr(rsi))),
        ("blsr mem then adc", |c| {
            c.blsr(rax, qword_ptr(rsi))?;
            c.adc(rcx, rax)
        }),
        ("tzcnt mem", |c| c.tzcnt(rax, qword_ptr(rsi))),
    ];
    for &(name, build) in mem_forms {
        cases.push((name.to_string(), asm(64, build)));
    }
    for (name, code) in &cases {
        let (c0, m0) = machine(64, code);
        let insns: Vec<Instruction> = {
            let mut d = Decoder::with_ip(64, code, CODE, DecoderOptions::NONE);
            std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect()
        };
        let block = jit.compile_block(&insns, &c0).unwrap();
        assert_eq!(block.len, insns.len(), "{name}: whole case compiled");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for (a, b) in operand_pairs(rng.next(), 60) {
            let mut cpu = c0.clone();
            cpu.gpr[reg::RBX] = a;
            cpu.gpr[reg::RCX] = if name.starts_with("bextr") {
                b & 0x7f7f
            } else {
                b
            };
            cpu.gpr[reg::RAX] = rng.next();
            cpu.rflags = rflags::FIXED1 | (rng.next() & ARITH);
            let mut mem = m0.clone();
            mem.write(DATA, &a.to_le_bytes()).unwrap();
            mem.write(DATA + 8, &b.to_le_bytes()).unwrap();
            let (mut ci, mut mi) = (cpu.clone(), mem.clone());
            let ei = run_block(&mut ci, &mut mi, &insns);
            let (mut cj, mut mj) = (cpu.clone(), mem.clone());
            let ej = run_compiled(&mut cj, &mut mj, &block);
            assert_eq!(ej, ei, "{name} a={a:#x} b={b:#x}: exits differ");
            assert_eq!(ei.exception, None, "{name}");
            assert_eq!(
                cj, ci,
                "{name} a={a:#x} b={b:#x}: state differs (jit vs interp)"
            );
            assert!(mj == mi, "{name}: memory differs");
        }
    }
}
