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

// ---- Chaining: compiled blocks jumping straight into their successors' compiled code ----

/// Total block executions of `mem`'s code from `start` as the interpreter-only engine
/// dispatches them (every block execution is a dispatch there).
fn interpreted_dispatches(start: &CpuState, mem: &FlatMem, budget: u64) -> u64 {
    let mut engine = Engine::with_policy(TierPolicy::InterpreterOnly).expect("engine");
    let (mut c, mut m) = (start.clone(), mem.clone());
    engine.run(&mut c, &mut m, budget);
    engine.stats().dispatches
}

#[test]
fn loops_chain_in_compiled_code() {
    let mem = assemble(branchy_loop);
    check_equivalent(&cpu(64), &mem, 1_000_000);
    let blocks = interpreted_dispatches(&cpu(64), &mem, 1_000_000);
    let mut engine = Engine::with_policy(TierPolicy::JitAlways).expect("engine");
    let (mut c, mut m) = (cpu(64), mem.clone());
    engine.run(&mut c, &mut m, 1_000_000);
    let s = engine.stats();
    // Every block execution is either a dispatch or a jump in compiled code; once each exit's
    // cell is linked (after its first return), the loop never comes back to the dispatcher.
    assert_eq!(s.dispatches + s.chained, blocks, "{s:?}");
    assert!(s.chained > 10 * s.dispatches, "{s:?}");
    // Turning the memos off also turns chaining off: every block is dispatched.
    let mut plain = Engine::with_policy(TierPolicy::JitAlways).expect("engine");
    plain.set_chaining(false);
    let (mut c2, mut m2) = (cpu(64), mem.clone());
    plain.run(&mut c2, &mut m2, 1_000_000);
    assert_eq!(plain.stats().chained, 0);
    assert_eq!(plain.stats().dispatches, blocks);
    assert_eq!(c2, c);
}

#[test]
fn budgets_are_exact_across_chains() {
    let mem = assemble(branchy_loop);
    let warm = |policy| {
        // A finished run links every cell, so the measured runs chain from their start.
        let mut e = Engine::with_policy(policy).expect("engine");
        let (mut c, mut m) = (cpu(64), mem.clone());
        e.run(&mut c, &mut m, 1_000_000);
        e
    };
    for policy in [TierPolicy::JitAlways, TierPolicy::Adaptive { threshold: 1 }] {
        for n in [1u64, 3, 9, 63, 64, 65, 100, 137] {
            let mut once = warm(policy);
            let (mut c1, mut m1) = (cpu(64), mem.clone());
            let e1 = once.run(&mut c1, &mut m1, 2 * n);
            let mut twice = warm(policy);
            let before = twice.stats().chained;
            let (mut c2, mut m2) = (cpu(64), mem.clone());
            let a = twice.run(&mut c2, &mut m2, n);
            assert_eq!(
                (a.executed, a.reason),
                (n, StopReason::Budget),
                "{policy:?} n={n}"
            );
            let b = twice.run(&mut c2, &mut m2, n);
            assert_eq!(a.executed + b.executed, e1.executed, "{policy:?} n={n}");
            assert_eq!(b.reason, e1.reason);
            assert_eq!(c1, c2, "{policy:?} n={n}");
            assert!(m1 == m2);
            let (mut c3, mut m3) = (cpu(64), mem.clone());
            let (want, _) = reference(&mut c3, &mut m3, 2 * n);
            assert_eq!((c1.clone(), e1.executed), (c3, want), "{policy:?} n={n}");
            if n >= 64 {
                assert!(twice.stats().chained > before, "{policy:?} n={n}");
            }
        }
    }
}

#[test]
fn faults_in_chained_blocks_use_that_blocks_exception_table() {
    // Block A's table holds #GP(0) (the canonical check of its load) at index 0, block B's
    // holds #DE at index 0: a #DE raised in B after a chain from A must not read A's table.
    let mem = assemble(|a| {
        let mut top = a.create_label();
        let mut second = a.create_label();
        a.mov(ecx, 6u32)?;
        a.mov(rsi, DATA)?;
        // The loop's first block is entered by the dispatcher once all links are made (A
        // here), so the fault is in B, reached through a chain.
        a.jmp(top)?;
        a.set_label(&mut top)?;
        a.mov(r8, qword_ptr(rsi))?;
        a.mov(eax, 1000u32)?;
        a.xor(edx, edx)?;
        a.dec(ecx)?;
        a.jmp(second)?;
        a.set_label(&mut second)?;
        a.div(ecx)?;
        a.add(rbx, rax)?;
        a.jmp(top)
    });
    let (end, exc) = check_equivalent(&cpu(64), &mem, 1000);
    assert_eq!(exc, Some(Exception::cpu(0)));
    assert_eq!(end.rip, {
        let mut m = mem.clone();
        address_of(&mut m, iced_x86::Mnemonic::Div)
    });
    let mut engine = Engine::with_policy(TierPolicy::JitAlways).expect("engine");
    let (mut c, mut m) = (cpu(64), mem.clone());
    let exit = engine.run(&mut c, &mut m, 1000);
    assert_eq!(exit.reason, StopReason::Exception(Exception::cpu(0)));
    assert_eq!(c, end);
    assert!(engine.stats().chained >= 8, "{:?}", engine.stats());

    // A memory fault (reported through the run's context) in a self-chaining block.
    let mem = assemble(|a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.set_label(&mut top)?;
        a.add(rax, 5)?;
        a.mov(rdx, qword_ptr(rsi))?;
        a.add(rsi, 0x1000)?;
        a.jmp(top)
    });
    let (end, exc) = check_equivalent(&cpu(64), &mem, 1000);
    assert!(matches!(exc, Some(Exception::Memory(_))), "{exc:?}");
    let mut engine = Engine::with_policy(TierPolicy::JitAlways).expect("engine");
    let (mut c, mut m) = (cpu(64), mem.clone());
    let exit = engine.run(&mut c, &mut m, 1000);
    assert_eq!(exception_of(&exit), exc);
    assert_eq!(c, end);
    assert_eq!(c.gpr[reg::RSI], 0x10000);
    assert!(engine.stats().chained >= 10, "{:?}", engine.stats());
}

/// Guest memory with a remappable linear → physical page map (identity unless remapped) that
/// reports stores into watched code pages, as the full-system memory does.
#[derive(Clone, PartialEq)]
struct PagedMem {
    ram: FlatMem,
    remap: std::collections::HashMap<u64, u64>,
    watched: std::collections::HashSet<u64>,
    writes: Vec<u64>,
}

impl PagedMem {
    fn new(ram: FlatMem) -> Self {
        PagedMem {
            ram,
            remap: Default::default(),
            watched: Default::default(),
            writes: Vec::new(),
        }
    }

    fn phys(&self, linear: u64) -> u64 {
        let page = linear >> 12;
        (self.remap.get(&page).copied().unwrap_or(page) << 12) | (linear & 0xfff)
    }
}

impl GuestMem for PagedMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Exception> {
        for (i, b) in (0u64..).zip(buf.iter_mut()) {
            let mut one = [0u8];
            self.ram.read(self.phys(addr.wrapping_add(i)), &mut one)?;
            *b = one[0];
        }
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Exception> {
        for (i, b) in (0u64..).zip(data) {
            let p = self.phys(addr.wrapping_add(i));
            self.ram.write(p, &[*b])?;
            if self.watched.contains(&(p >> 12)) && !self.writes.contains(&(p >> 12)) {
                self.writes.push(p >> 12);
            }
        }
        Ok(())
    }

    fn code_phys(&mut self, addr: u64) -> Result<u64, Exception> {
        Ok(self.phys(addr))
    }

    fn watch_code_page(&mut self, phys_page: u64) {
        self.watched.insert(phys_page);
    }

    fn code_write_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    fn take_code_writes(&mut self, pages: &mut Vec<u64>) -> bool {
        if self.writes.is_empty() {
            return false;
        }
        pages.append(&mut self.writes);
        true
    }
}

/// Writes code assembled for linear `at` to guest-physical `phys` of `ram`.
fn place(
    ram: &mut FlatMem,
    at: u64,
    phys: u64,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut a).expect("assemble");
    let bytes = a.assemble(at).expect("assemble");
    ram.write(phys, &bytes).expect("code fits");
}

/// `B` at `0x3000`: `mov eax, value; dec ecx; jnz CODE; int3`.
fn second_block(value: u32) -> impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError> {
    move |a| {
        a.mov(eax, value)?;
        a.dec(ecx)?;
        a.jnz(CODE)?;
        a.int3()
    }
}

/// A two-block loop: `A` at [`CODE`] (`inc rdx; jmp 0x3000`) and `B` ([`second_block`]),
/// with B's bytes at physical `b_phys`.
fn two_block_loop(b_phys: u64) -> PagedMem {
    let mut ram = FlatMem::new(0, 0x10000);
    place(&mut ram, CODE, CODE, |a| {
        a.inc(rdx)?;
        a.jmp(0x3000u64)
    });
    place(&mut ram, 0x3000, b_phys, second_block(1));
    PagedMem::new(ram)
}

fn run_loop(engine: &mut Engine, mem: &mut PagedMem, iterations: u64) -> CpuState {
    let mut c = cpu(64);
    c.gpr[reg::RCX] = iterations;
    let exit = engine.run(&mut c, mem, 100_000);
    assert_eq!(exit.reason, StopReason::Exception(Exception::cpu(3)));
    assert_eq!(exit.executed, 5 * iterations);
    assert_eq!(c.gpr[reg::RDX], iterations);
    c
}

#[test]
fn rewritten_chain_target_runs_its_new_code() {
    for policy in [TierPolicy::JitAlways, TierPolicy::Adaptive { threshold: 2 }] {
        let mut mem = two_block_loop(0x3000);
        let mut engine = Engine::with_policy(policy).expect("engine");
        assert_eq!(run_loop(&mut engine, &mut mem, 100).gpr[reg::RAX], 1);
        let chained = engine.stats().chained;
        assert!(chained > 150, "{policy:?}: {:?}", engine.stats());
        // A store into B's code between runs (a device, the monitor): reported as a code
        // write, so the next run drops B, and A's link to the old B must not be followed.
        mem.write(0x3001, &2u32.to_le_bytes()).expect("in memory");
        assert_eq!(
            run_loop(&mut engine, &mut mem, 100).gpr[reg::RAX],
            2,
            "{policy:?}"
        );
        assert!(engine.stats().blocks_invalidated >= 1);
        assert!(
            engine.stats().chained > chained + 150,
            "{policy:?}: relinked"
        );
    }
}

#[test]
fn guest_stores_into_a_chained_successor_are_seen() {
    // A rewrites B's immediate with the loop counter every iteration, then jumps to B.
    let mut ram = FlatMem::new(0, 0x10000);
    place(&mut ram, CODE, CODE, |a| {
        a.mov(dword_ptr(0x3001), ecx)?;
        a.jmp(0x3000u64)
    });
    place(&mut ram, 0x3000, 0x3000, |a| {
        a.mov(eax, 0u32)?;
        a.add(rbx, rax)?;
        a.dec(ecx)?;
        a.jnz(CODE)?;
        a.int3()
    });
    let mem = PagedMem::new(ram);
    let start = {
        let mut c = cpu(64);
        c.gpr[reg::RCX] = 40;
        c
    };
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        let (mut c, mut m) = (start.clone(), mem.clone());
        let exit = engine.run(&mut c, &mut m, 10_000);
        assert_eq!(exit.reason, StopReason::Exception(Exception::cpu(3)));
        assert_eq!(exit.executed, 6 * 40);
        assert_eq!(c.gpr[reg::RBX], (1..=40).sum::<u64>(), "{policy:?}");
        assert_eq!(engine.stats().jit_errors, 0);
    }
    // A block that only sometimes stores into code: its link is made (and current) when the
    // store comes, so the link must be refused because the store hit a code page. At
    // ECX = 20 A writes 20 into B's immediate (before: into data). A is cut after the store
    // (4 instructions), so it leaves through its chainable fall-through exit right after it.
    let mut ram = FlatMem::new(0, 0x10000);
    place(&mut ram, CODE, CODE, |a| {
        a.mov(rdi, DATA)?;
        a.cmp(ecx, 20)?;
        a.cmove(rdi, r9)?;
        a.mov(dword_ptr(rdi), ecx)?;
        a.jmp(0x3000u64)
    });
    place(&mut ram, 0x3000, 0x3000, |a| {
        a.mov(eax, 0u32)?;
        a.add(rbx, rax)?;
        a.dec(ecx)?;
        a.jnz(CODE)?;
        a.int3()
    });
    let mem = PagedMem::new(ram);
    for policy in POLICIES {
        let mut engine = Engine::with_policy(policy).expect("engine");
        engine.set_max_block_insns(4);
        let (mut c, mut m) = (start.clone(), mem.clone());
        c.gpr[reg::R9] = 0x3001;
        let exit = engine.run(&mut c, &mut m, 10_000);
        assert_eq!(exit.reason, StopReason::Exception(Exception::cpu(3)));
        assert_eq!(c.gpr[reg::RBX], 20 * 20, "{policy:?}");
        if policy == TierPolicy::JitAlways {
            assert!(engine.stats().chained > 30, "{:?}", engine.stats());
        }
    }
}

#[test]
fn a_new_translation_epoch_breaks_chains() {
    let mut mem = two_block_loop(0x5000);
    mem.remap.insert(3, 5);
    place(&mut mem.ram, 0x3000, 0x6000, second_block(2));
    for policy in [TierPolicy::JitAlways, TierPolicy::Adaptive { threshold: 2 }] {
        let mut engine = Engine::with_policy(policy).expect("engine");
        mem.remap.insert(3, 5);
        engine.new_translation_epoch();
        assert_eq!(run_loop(&mut engine, &mut mem, 100).gpr[reg::RAX], 1);
        // Remap B's linear page (a page-table change). Until the monitor starts a new epoch
        // (CR3 write, INVLPG), links keep the old mapping, as a TLB would.
        mem.remap.insert(3, 6);
        assert_eq!(
            run_loop(&mut engine, &mut mem, 100).gpr[reg::RAX],
            1,
            "{policy:?}"
        );
        engine.new_translation_epoch();
        let chained = engine.stats().chained;
        assert_eq!(
            run_loop(&mut engine, &mut mem, 100).gpr[reg::RAX],
            2,
            "{policy:?}"
        );
        assert!(
            engine.stats().chained > chained + 150,
            "{policy:?}: relinked"
        );
    }
}

/// REP STOS/MOVS over the full-system memory: the bulk path (several pages, a misaligned
/// start, a copy whose source and destination overlap) leaves exactly the state of the
/// element-by-element path under every policy; only the instruction count differs.
#[test]
fn bulk_string_instructions_match_the_element_path() {
    use ringzero_translator::mmu::{SystemMem, VecPhys};
    let mem = assemble(|a| {
        a.mov(rdi, 0x3003u64)?;
        a.mov(rcx, 5000u64)?;
        a.mov(eax, 0x1122_3344u32)?;
        a.rep().stosd()?;
        a.mov(rsi, 0x3003u64)?;
        a.mov(rdi, 0x9001u64)?;
        a.mov(rcx, 9000u64)?;
        a.rep().movsb()?;
        // Overlapping, destination below the source (bulk), then above it (element path).
        a.mov(rsi, 0x9101u64)?;
        a.mov(rdi, 0x9001u64)?;
        a.mov(rcx, 700u64)?;
        a.rep().movsq()?;
        a.mov(rsi, 0x9001u64)?;
        a.mov(rdi, 0x9011u64)?;
        a.mov(rcx, 300u64)?;
        a.rep().movsb()?;
        a.int3()
    });
    let image = {
        let mut m = mem.clone();
        let mut b = vec![0u8; 0x200];
        m.read(CODE, &mut b).expect("code");
        b
    };
    for policy in POLICIES {
        let run = |precise: bool| {
            let mut phys = VecPhys::new(0x10_0000);
            phys.bytes_mut()[CODE as usize..CODE as usize + image.len()].copy_from_slice(&image);
            let mut m = SystemMem::new(Box::new(phys));
            m.set_precise_strings(precise);
            // The memory keeps its initial context (paging off, CPL 0): linear = physical.
            let mut c = cpu(64);
            let mut engine = Engine::with_policy(policy).expect("engine");
            let mut total = 0;
            let end = loop {
                let exit = engine.run(&mut c, &mut m, 1_000_000);
                total += exit.executed;
                if exit.reason != StopReason::Budget {
                    break exit.reason;
                }
            };
            assert_eq!(end, StopReason::Exception(Exception::cpu(3)), "{policy:?}");
            let mut bytes = vec![0u8; 0x8000];
            m.read(0x3000, &mut bytes).expect("data");
            (c, bytes, total)
        };
        let (bulk_cpu, bulk_mem, bulk_n) = run(false);
        let (elem_cpu, elem_mem, elem_n) = run(true);
        assert_eq!(bulk_cpu, elem_cpu, "{policy:?}");
        assert!(bulk_mem == elem_mem, "{policy:?}: memory differs");
        assert!(
            bulk_n < elem_n / 10,
            "{policy:?}: {bulk_n} vs {elem_n} instructions"
        );
        assert_eq!(bulk_cpu.gpr[reg::RCX], 0);
    }
}
