//! The execution engine against the interpreter stepped one instruction at a time: same final
//! state under every tier policy (loops, calls, faults, budgets), tier-up by counts, and
//! invalidation of changed code; plus the demo's compute kernel end to end.

mod common;

use common::{cpu, CODE, STACK};
use iced_x86::code_asm::*;
use ringzero_translator::engine::{demo_kernel, Engine, EngineExit, StopReason, TierPolicy};
use ringzero_translator::interp;
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::Exception;
use ringzero_translator::state::reg;
use ringzero_translator::CpuState;

/// The policies every equivalence test runs under (a threshold of 3 makes tier-up happen
/// mid-run in the short tests).
const POLICIES: [TierPolicy; 3] = [
    TierPolicy::InterpreterOnly,
    TierPolicy::JitAlways,
    TierPolicy::Adaptive { threshold: 3 },
];

/// Where test data lives.
const DATA: u64 = 0x4000;

fn assemble(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> FlatMem {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut a).expect("assemble");
    let bytes = a.assemble(CODE).expect("assemble");
    let mut mem = FlatMem::new(0, 0x10000);
    mem.write(CODE, &bytes).expect("code fits");
    mem
}

/// Steps the interpreter instruction by instruction, as the reference.
fn reference(cpu: &mut CpuState, mem: &mut FlatMem, budget: u64) -> (u64, Option<Exception>) {
    let mut n = 0;
    while n < budget {
        match interp::step(cpu, mem) {
            Ok(()) => n += 1,
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

fn exception_of(exit: &EngineExit) -> Option<Exception> {
    match exit.reason {
        StopReason::Budget | StopReason::StopPoint => None,
        StopReason::Exception(e) => Some(e),
    }
}

/// Runs `mem`'s code from `start` under every policy and the stepping reference; asserts
/// identical state, memory, instruction counts and exceptions. Returns the reference result.
fn check_equivalent(start: &CpuState, mem: &FlatMem, budget: u64) -> (CpuState, Option<Exception>) {
    let mut want_cpu = start.clone();
    let mut want_mem = mem.clone();
    let (want_n, want_exc) = reference(&mut want_cpu, &mut want_mem, budget);
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        let mut c = start.clone();
        let mut m = mem.clone();
        let exit = engine.run(&mut c, &mut m, budget);
        assert_eq!(c, want_cpu, "{policy:?}: CPU state");
        assert!(m == want_mem, "{policy:?}: memory differs");
        assert_eq!(exit.executed, want_n, "{policy:?}: instructions");
        assert_eq!(exception_of(&exit), want_exc, "{policy:?}: exception");
        assert_eq!(engine.stats().jit_errors, 0, "{policy:?}: JIT errors");
        let s = engine.stats();
        assert_eq!(s.insns_interpreted + s.insns_compiled, exit.executed);
        match policy {
            TierPolicy::InterpreterOnly => assert_eq!(s.insns_compiled, 0),
            TierPolicy::JitAlways => assert!(s.insns_compiled > 0, "{s:?}"),
            TierPolicy::Adaptive { .. } => {}
        }
    }
    (want_cpu, want_exc)
}

/// A loop with two paths and memory traffic, ending in `int3`.
fn branchy_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut odd = a.create_label();
    let mut join = a.create_label();
    a.mov(rsi, DATA)?;
    a.mov(ecx, 50u32)?;
    a.mov(rax, 0x1234_5678_9abc_def0u64)?;
    a.set_label(&mut top)?;
    a.test(cl, 1)?;
    a.jnz(odd)?;
    a.add(rax, rcx)?;
    a.rol(rax, 7)?;
    a.jmp(join)?;
    a.set_label(&mut odd)?;
    a.imul_3(rax, rax, 0x1f)?;
    a.xor(qword_ptr(rsi), rax)?;
    a.set_label(&mut join)?;
    a.adc(rdx, qword_ptr(rsi))?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.int3()
}

/// The address of the first instruction with mnemonic `m` in the code at [`CODE`].
fn address_of(mem: &mut FlatMem, m: iced_x86::Mnemonic) -> u64 {
    let mut c = cpu(64);
    loop {
        let insn = interp::decode(&c, mem).expect("decodes");
        if insn.mnemonic() == m {
            return insn.ip();
        }
        c.rip = insn.next_ip();
    }
}

#[test]
fn stop_points_stop_before_every_execution_of_their_instruction() {
    let mut mem = assemble(branchy_loop);
    // `adc` starts a block on the even path (after `jmp join`) and sits inside the odd path's
    // block: both must stop.
    let join = address_of(&mut mem, iced_x86::Mnemonic::Adc);
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        engine.set_stop_points(vec![(join, join + 1)]);
        let (mut c, mut m) = (cpu(64), mem.clone());
        let mut stops = 0;
        let mut total = 0;
        let end = loop {
            let exit = engine.run(&mut c, &mut m, 1_000_000);
            total += exit.executed;
            match exit.reason {
                StopReason::StopPoint => {
                    assert_eq!(c.rip, join, "{policy:?}");
                    stops += 1;
                }
                other => break other,
            }
        };
        assert_eq!(stops, 50, "{policy:?}: once per iteration");
        assert_eq!(end, StopReason::Exception(Exception::cpu(3)));
        let (mut r, mut rm) = (cpu(64), mem.clone());
        let (n, _) = reference(&mut r, &mut rm, 1_000_000);
        assert_eq!(total, n, "{policy:?}");
        assert_eq!(c, r, "{policy:?}");
        // Clearing the stop points lets the whole loop run in one call.
        engine.set_stop_points(Vec::new());
        let (mut c2, mut m2) = (cpu(64), mem.clone());
        assert_eq!(
            engine.run(&mut c2, &mut m2, 1_000_000).reason,
            StopReason::Exception(Exception::cpu(3))
        );
    }
}

#[test]
fn loops_match_the_stepping_interpreter_under_every_policy() {
    let mem = assemble(branchy_loop);
    let (end, exc) = check_equivalent(&cpu(64), &mem, 1_000_000);
    assert_eq!(exc, Some(Exception::cpu(3)), "ends at int3");
    assert_ne!(end.gpr[reg::RAX], 0x1234_5678_9abc_def0);
}

#[test]
fn calls_and_returns_match() {
    let mem = assemble(|a| {
        let mut func = a.create_label();
        let mut top = a.create_label();
        let mut done = a.create_label();
        a.mov(ebx, 20u32)?;
        a.set_label(&mut top)?;
        a.call(func)?;
        a.dec(ebx)?;
        a.jnz(top)?;
        a.jmp(done)?;
        a.set_label(&mut func)?;
        a.push(rbx)?;
        a.lea(rax, qword_ptr(rax + rbx * 4 + 1))?;
        a.pop(rcx)?;
        a.ret()?;
        a.set_label(&mut done)?;
        a.int3()
    });
    let (end, _) = check_equivalent(&cpu(64), &mem, 10_000);
    assert_eq!(end.gpr[reg::RSP], STACK);
    assert_eq!(end.gpr[reg::RAX], (1..=20).map(|b| 4 * b + 1).sum::<u64>());
}

#[test]
fn fault_mid_block_is_precise() {
    // The fourth iteration loads from just past the 64 KiB of memory: a memory fault with the
    // state at the faulting load (after the loop has been compiled under Adaptive{3}).
    let mem = assemble(|a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.set_label(&mut top)?;
        a.add(rax, 5)?;
        a.mov(rdx, qword_ptr(rsi))?;
        a.add(rsi, 0x4000)?;
        a.jmp(top)
    });
    let (end, exc) = check_equivalent(&cpu(64), &mem, 1000);
    assert!(matches!(exc, Some(Exception::Memory(_))), "{exc:?}");
    assert_eq!(end.gpr[reg::RSI], DATA + 3 * 0x4000);
    assert_eq!(end.gpr[reg::RAX], 20);
}

#[test]
fn divide_error_mid_loop_is_precise() {
    let mem = assemble(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 6u32)?;
        a.set_label(&mut top)?;
        a.mov(eax, 1000u32)?;
        a.xor(edx, edx)?;
        a.dec(ecx)?;
        a.div(ecx)?;
        a.add(rbx, rax)?;
        a.jmp(top)
    });
    let (end, exc) = check_equivalent(&cpu(64), &mem, 1000);
    assert_eq!(exc, Some(Exception::cpu(0)));
    assert_eq!(end.gpr[reg::RCX], 0);
    assert_eq!(
        end.gpr[reg::RBX],
        1000 / 5 + 1000 / 4 + 1000 / 3 + 1000 / 2 + 1000
    );
}

#[test]
fn budget_exhaustion_is_resumable() {
    let mem = assemble(branchy_loop);
    for policy in POLICIES {
        for n in [1u64, 2, 7, 13, 50] {
            let mut once = Engine::with_policy(policy).expect("engine");
            let (mut c1, mut m1) = (cpu(64), mem.clone());
            let e1 = once.run(&mut c1, &mut m1, 2 * n);
            let mut twice = Engine::with_policy(policy).expect("engine");
            let (mut c2, mut m2) = (cpu(64), mem.clone());
            let a = twice.run(&mut c2, &mut m2, n);
            assert_eq!(a.reason, StopReason::Budget);
            assert_eq!(a.executed, n);
            let b = twice.run(&mut c2, &mut m2, n);
            assert_eq!(a.executed + b.executed, e1.executed, "{policy:?} n={n}");
            assert_eq!(b.reason, e1.reason);
            assert_eq!(c1, c2, "{policy:?} n={n}");
            assert!(m1 == m2);
            // And both equal the stepping reference.
            let (mut c3, mut m3) = (cpu(64), mem.clone());
            reference(&mut c3, &mut m3, 2 * n);
            assert_eq!(c1, c3, "{policy:?} n={n}");
        }
    }
}

#[test]
fn adaptive_tiers_up_at_the_threshold() {
    let mem = assemble(branchy_loop);
    let mut engine = Engine::with_policy(TierPolicy::Adaptive { threshold: 10 }).expect("engine");
    let (mut c, mut m) = (cpu(64), mem.clone());
    engine.run(&mut c, &mut m, 1_000_000);
    let s = engine.stats().clone();
    // Blocks: entry (3 movs + test/jnz), even path, odd path, join, int3. The three loop
    // blocks run 25-50 times and tier up; the entry and the int3 block run once.
    assert!(s.tier_ups >= 3, "{s:?}");
    assert_eq!(s.tier_ups, s.blocks_compiled);
    assert!(s.insns_compiled > 0 && s.insns_interpreted > 0, "{s:?}");
    assert!(s.chain_hits > s.cache_hits, "{s:?}");
    // A threshold above every count compiles nothing.
    let mut cold = Engine::with_policy(TierPolicy::Adaptive { threshold: 1000 }).expect("engine");
    let (mut c, mut m) = (cpu(64), mem);
    cold.run(&mut c, &mut m, 1_000_000);
    assert_eq!(cold.stats().tier_ups, 0);
    assert_eq!(cold.stats().insns_compiled, 0);
}

#[test]
fn invalidate_range_drops_blocks_and_new_code_runs() {
    for policy in POLICIES {
        let mut mem = assemble(|a| {
            a.mov(eax, 1u32)?;
            a.int3()
        });
        let mut engine = Engine::with_policy(policy).expect("engine");
        for _ in 0..5 {
            let mut c = cpu(64);
            engine.run(&mut c, &mut mem, 100);
            assert_eq!(c.gpr[reg::RAX], 1);
        }
        assert_eq!(engine.stats().blocks_decoded, 1);
        // Rewrite the immediate: without invalidation the cache still runs the old code.
        mem.write(CODE + 1, &2u32.to_le_bytes()).expect("in memory");
        let mut c = cpu(64);
        engine.run(&mut c, &mut mem, 100);
        assert_eq!(c.gpr[reg::RAX], 1, "{policy:?}: stale translation expected");
        // A range that misses the block drops nothing; one that covers a byte drops it.
        assert_eq!(engine.invalidate_range(CODE + 0x100, 0x1000), 0);
        assert_eq!(engine.invalidate_range(CODE - 0x10, 0x10), 0);
        assert_eq!(engine.invalidate_range(CODE + 4, 1), 1);
        assert_eq!(engine.cached_blocks(), 0);
        let mut c = cpu(64);
        engine.run(&mut c, &mut mem, 100);
        assert_eq!(
            c.gpr[reg::RAX],
            2,
            "{policy:?}: new code after invalidation"
        );
        assert_eq!(engine.stats().blocks_decoded, 2);
        assert_eq!(engine.stats().blocks_invalidated, 1);
        // A huge range takes the scanning path.
        assert_eq!(engine.invalidate_range(0, u64::MAX), 1);
    }
}

#[test]
fn undecodable_and_unbacked_code_stop_with_exceptions() {
    let mut mem = FlatMem::new(0, 0x10000);
    mem.write(CODE, &[0x0f, 0x0b]).expect("ud2 fits");
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        let mut c = cpu(64);
        let exit = engine.run(&mut c, &mut mem, 10);
        assert_eq!(exit.reason, StopReason::Exception(Exception::cpu(6)));
        assert_eq!(c.rip, CODE);
        let mut c = cpu(64);
        c.rip = 0x20000;
        let exit = engine.run(&mut c, &mut mem, 10);
        assert!(matches!(
            exit.reason,
            StopReason::Exception(Exception::Memory(_))
        ));
        assert_eq!(exit.executed, 0);
    }
}

/// The demo's ring-3 compute kernel under each policy: the documented checksum and one final
/// state for all three.
#[test]
fn demo_kernel_checksum_under_every_policy() {
    let mut finals = Vec::new();
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        let mut c = demo_kernel::entry_state();
        let mut m = demo_kernel::memory();
        let exit = engine.run(&mut c, &mut m, 100_000_000);
        assert_eq!(
            c.gpr[reg::RAX],
            demo_kernel::EXPECTED_CHECKSUM,
            "{policy:?}: {exit:?}"
        );
        // The kernel ends with `mov edi, cs; int3`: the selector read runs in the tiers, INT3
        // is #BP (a trap: RIP after it).
        assert!(
            matches!(
                exit.reason,
                StopReason::Exception(Exception::Cpu { vector: 3, .. })
            ),
            "{policy:?}: {exit:?}"
        );
        assert!(exit.executed > 30_000_000, "{exit:?}");
        assert_eq!(engine.stats().jit_errors, 0);
        finals.push((c, m, exit));
    }
    let (c0, m0, e0) = &finals[0];
    for (c, m, e) in &finals[1..] {
        assert_eq!(c, c0);
        assert!(m == m0);
        assert_eq!(e, e0);
    }
}

#[test]
fn rep_string_mid_block_matches() {
    // A REP instruction runs one element per execution with RIP staying on it, so the engine
    // re-dispatches the block that starts at it until the count is spent.
    let mem = assemble(|a| {
        a.mov(rdi, DATA)?;
        a.mov(ecx, 100u32)?;
        a.mov(al, 0x5a)?;
        a.rep().stosb()?;
        a.add(rbx, qword_ptr(DATA as i64 + 8))?;
        a.int3()
    });
    for budget in [1_000, 57] {
        let (end, _) = check_equivalent(&cpu(64), &mem, budget);
        if budget == 1_000 {
            assert_eq!(end.gpr[reg::RCX], 0);
            assert_eq!(end.gpr[reg::RBX], 0x5a5a_5a5a_5a5a_5a5a);
        }
    }
}
