//! Translator benchmarks: translation cost per guest instruction and hot-loop execution speed
//! for each tier.
//!
//! `cargo bench -p ringzero-translator --bench translate`. Throughput is in guest instructions:
//! `translate/*` reports instructions translated per second (its inverse is the cost per
//! instruction), `hot_loop/*` guest instructions executed per second. The hot loop is one
//! 10-instruction block (ALU, LEA, IMUL, shifts, a load and a store, DEC + JNZ) re-entered
//! through `run_block` / `run_compiled` once per iteration, as a dispatcher without chaining
//! would: every iteration pays the block's entry and exit (register spills, flag folding).
//!
//! The engine benchmarks run through [`Engine::run`] (code cache, dispatch, tier-up):
//! - `engine_hot_loop/*`: the same hot loop, with and without successor memos (chaining);
//! - `demo_kernel/*`: the demo guest's ring-3 compute kernel (~32 M guest instructions, checksum
//!   asserted once) from a fresh engine per run — translation included — under each policy,
//!   plus `native`: the same bytes called directly in this process (mapped RWX at their guest
//!   addresses, the final `int3` patched to `ret`), the baseline for "≤ 2× native";
//! - `adaptive_threshold/*`: the kernel under `Adaptive` with thresholds from 1 to 100 000;
//! - `block_reuse/<policy>/<runs>`: 200 distinct 7-instruction blocks, each run `runs` times,
//!   under each policy: where compiling starts to pay (the lower side of the threshold).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iced_x86::code_asm::*;
use ringzero_translator::engine::{demo_kernel, Engine, StopReason, TierPolicy};
use ringzero_translator::interp::run_block;
use ringzero_translator::jit::{decode_block, run_compiled, Jit};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::state::{ctl, reg, CpuState, Segment};
use std::hint::black_box;

const CODE: u64 = 0x1000;
/// Loop iterations per measured run of `hot_loop`.
const ITERATIONS: u64 = 1_000_000;

fn cpu64() -> CpuState {
    let mut c = CpuState::default();
    c.cr0 |= ctl::CR0_PE | ctl::CR0_PG;
    c.cr4 |= ctl::CR4_PAE;
    c.efer = ctl::EFER_LME | ctl::EFER_LMA;
    c.cs = Segment::code64(0x10);
    c.ss = Segment::flat32(0x18, false);
    c.ds = Segment::flat32(0x18, false);
    c.rip = CODE;
    c.gpr[reg::RSP] = 0x8000;
    c.gpr[reg::RSI] = 0x3000;
    c
}

/// The 10-instruction loop body; the block is the whole loop.
fn hot_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.add(rax, rbx)?;
    a.xor(rbx, rax)?;
    a.lea(rdx, qword_ptr(rax + rbx * 2 + 7))?;
    a.imul_3(rdx, rdx, 3)?;
    a.rol(rbx, 5)?;
    a.add(rdi, qword_ptr(rsi))?;
    a.mov(qword_ptr(rsi + 8), rdx)?;
    a.adc(r8, rdx)?;
    a.dec(rcx)?;
    a.jne(top)
}

/// A straight-line block of 31 ALU/memory instructions ending in a jump (translation cost).
fn straight(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for _ in 0..3 {
        a.add(rax, rbx)?;
        a.sub(ecx, 5)?;
        a.adc(rdx, qword_ptr(rsi + 8))?;
        a.shl(r8, 3)?;
        a.cmp(r9d, r10d)?;
        a.setb(r11b)?;
        a.mov(qword_ptr(rsi), rax)?;
        a.imul_2(r12, r13)?;
        a.lea(r14, qword_ptr(r15 + rax * 4))?;
        a.inc(ebx)?;
    }
    a.jmp(0x1000u64)
}

fn setup(build: fn(&mut CodeAssembler) -> Result<(), IcedError>) -> (CpuState, FlatMem) {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut a).expect("assemble");
    let bytes = a.assemble(CODE).expect("assemble");
    let mut mem = FlatMem::new(0, 0x10000);
    mem.write(CODE, &bytes).expect("code fits");
    (cpu64(), mem)
}

fn translate(c: &mut Criterion) {
    let (cpu, mut mem) = setup(straight);
    let n = decode_block(&cpu, &mut mem, 64).expect("decodes").len();
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("interp_decode", n), |b| {
        b.iter(|| black_box(decode_block(black_box(&cpu), &mut mem, 64)))
    });
    let mut jit = Jit::new().expect("host ISA");
    g.bench_function(BenchmarkId::new("cranelift_compile", n), |b| {
        b.iter(|| {
            let insns = decode_block(black_box(&cpu), &mut mem, 64).expect("decodes");
            black_box(jit.compile_block(&insns, &cpu).expect("compiles"))
        })
    });
    g.finish();
}

fn execute(c: &mut Criterion) {
    let (cpu, mut mem) = setup(hot_loop);
    let insns = decode_block(&cpu, &mut mem, 64).expect("decodes");
    let n = insns.len() as u64;
    let mut jit = Jit::new().expect("host ISA");
    let block = jit.compile_block(&insns, &cpu).expect("compiles");
    assert_eq!(block.len, insns.len());
    eprintln!(
        "hot loop: {n} instructions, {} bytes of host code",
        block.code_size
    );
    let mut g = c.benchmark_group("hot_loop");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n * ITERATIONS));
    g.bench_function("interp", |b| {
        b.iter(|| {
            let mut c = cpu.clone();
            c.gpr[reg::RCX] = ITERATIONS;
            while c.rip == CODE {
                let exit = run_block(&mut c, &mut mem, &insns);
                debug_assert!(exit.exception.is_none());
            }
            black_box(c.gpr[reg::RAX])
        })
    });
    g.bench_function("cranelift", |b| {
        b.iter(|| {
            let mut c = cpu.clone();
            c.gpr[reg::RCX] = ITERATIONS;
            while c.rip == CODE {
                let exit = run_compiled(&mut c, &mut mem, &block);
                debug_assert!(exit.exception.is_none());
            }
            black_box(c.gpr[reg::RAX])
        })
    });
    g.finish();
}

/// Guest instructions the demo kernel executes (counted once in setup).
fn demo_kernel_run(policy: TierPolicy) -> (u64, CpuState) {
    let mut engine = Engine::with_policy(policy).expect("host ISA");
    let mut cpu = demo_kernel::entry_state();
    let mut mem = demo_kernel::memory();
    let exit = engine.run(&mut cpu, &mut mem, u64::MAX);
    debug_assert!(matches!(exit.reason, StopReason::Exception(_)));
    (exit.executed, cpu)
}

fn engine_hot_loop(c: &mut Criterion) {
    let (cpu, mut mem) = setup(hot_loop);
    let n = decode_block(&cpu, &mut mem, 64).expect("decodes").len() as u64;
    let mut g = c.benchmark_group("engine_hot_loop");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n * ITERATIONS));
    for (name, policy, chaining) in [
        ("interp_memo", TierPolicy::InterpreterOnly, true),
        ("interp_hashmap", TierPolicy::InterpreterOnly, false),
        ("jit_memo", TierPolicy::JitAlways, true),
        ("jit_hashmap", TierPolicy::JitAlways, false),
    ] {
        let mut engine = Engine::with_policy(policy).expect("host ISA");
        engine.set_chaining(chaining);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut c = cpu.clone();
                c.gpr[reg::RCX] = ITERATIONS;
                // The loop falls into zeroed memory (add [rax], al) after its last iteration:
                // stop at the loop's exit instead.
                engine.run(&mut c, &mut mem, n * ITERATIONS);
                black_box(c.gpr[reg::RAX])
            })
        });
    }
    g.finish();
}

fn demo(c: &mut Criterion) {
    let (n, end) = demo_kernel_run(TierPolicy::InterpreterOnly);
    assert_eq!(end.gpr[reg::RAX], demo_kernel::EXPECTED_CHECKSUM);
    eprintln!("demo kernel: {n} guest instructions");
    let mut g = c.benchmark_group("demo_kernel");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    for (name, policy) in [
        ("interp", TierPolicy::InterpreterOnly),
        ("jit_always", TierPolicy::JitAlways),
        ("adaptive", TierPolicy::default()),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(demo_kernel_run(policy))));
    }
    match native::Kernel::map() {
        Ok(kernel) => {
            assert_eq!(kernel.run(), demo_kernel::EXPECTED_CHECKSUM);
            g.bench_function("native", |b| b.iter(|| black_box(kernel.run())));
        }
        Err(e) => eprintln!("demo_kernel/native skipped: {e}"),
    }
    g.finish();

    let mut g = c.benchmark_group("adaptive_threshold");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    for threshold in [1u64, 100, 500, 1000, 2000, 5000, 20_000, 100_000] {
        g.bench_function(BenchmarkId::from_parameter(threshold), |b| {
            b.iter(|| black_box(demo_kernel_run(TierPolicy::Adaptive { threshold })))
        });
    }
    g.finish();
}

/// The demo kernel run natively in this process: its bytes mapped RWX at their guest address
/// (the code uses absolute data addresses), entered with `call`, the final `int3` patched to
/// `ret`. Ring 3 user code on the host CPU is what KVM runs it as, minus the VM exits (it
/// makes none).
mod native {
    use ringzero_translator::engine::demo_kernel;

    /// The mapped kernel.
    pub struct Kernel {
        entry: u64,
    }

    /// mmap(2) through a raw system call (the crate has no libc dependency).
    fn mmap_fixed(addr: u64, len: u64) -> Result<(), String> {
        const SYS_MMAP: u64 = 9;
        const PROT_RWX: u64 = 7;
        // MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE: fail rather than clobber.
        const FLAGS: u64 = 0x02 | 0x20 | 0x10_0000;
        let ret: u64;
        // SAFETY: mmap with MAP_FIXED_NOREPLACE never replaces an existing mapping.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_MMAP => ret,
                in("rdi") addr,
                in("rsi") len,
                in("rdx") PROT_RWX,
                in("r10") FLAGS,
                in("r8") u64::MAX,
                in("r9") 0u64,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret == addr {
            Ok(())
        } else {
            Err(format!("mmap({addr:#x}, {len:#x}) failed: {}", ret as i64))
        }
    }

    impl Kernel {
        /// Maps the user page and copies the patched kernel into it.
        pub fn map() -> Result<Self, String> {
            let code = demo_kernel::CODE;
            // `int3; ud2` ends the kernel's main path.
            let at = code
                .windows(3)
                .position(|w| w == [0xcc, 0x0f, 0x0b])
                .ok_or("no int3; ud2 in the kernel")?;
            mmap_fixed(demo_kernel::MEM_BASE, demo_kernel::MEM_SIZE as u64)?;
            let mut bytes = code.to_vec();
            bytes[at] = 0xc3; // ret
                              // SAFETY: the range was just mapped writable for us and is MEM_SIZE bytes long.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    demo_kernel::LOAD_ADDR as *mut u8,
                    bytes.len(),
                );
            }
            Ok(Kernel {
                entry: demo_kernel::LOAD_ADDR,
            })
        }

        /// Runs the kernel once; returns its checksum.
        pub fn run(&self) -> u64 {
            let rax: u64;
            // SAFETY: the kernel touches only its data page and balanced stack pushes; rbx
            // (reserved by the compiler) is saved around it, the rest are clobbers.
            unsafe {
                std::arch::asm!(
                    "push rbx",
                    "call {f}",
                    "pop rbx",
                    f = in(reg) self.entry,
                    out("rax") rax,
                    clobber_abi("C"),
                );
            }
            rax
        }
    }
}

/// Distinct blocks in `block_reuse`.
const REUSE_BLOCKS: u64 = 200;
/// Instructions per pass over them (6 ALU + JMP each, DEC + JNZ closing the pass).
const REUSE_PASS_INSNS: u64 = REUSE_BLOCKS * 7 + 2;

/// `REUSE_BLOCKS` blocks chained by jumps, looped `r15` times, then `int3`.
fn reuse_chain(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut labels: Vec<CodeLabel> = (0..=REUSE_BLOCKS).map(|_| a.create_label()).collect();
    for i in 0..REUSE_BLOCKS as usize {
        a.set_label(&mut labels[i])?;
        a.add(rax, i as i32 + 1)?;
        a.xor(rbx, rax)?;
        a.lea(rcx, qword_ptr(rax + rbx * 2))?;
        a.imul_3(rdx, rcx, 7)?;
        a.rol(rbx, 3)?;
        a.sub(rax, rdx)?;
        a.jmp(labels[i + 1])?;
    }
    a.set_label(&mut labels[REUSE_BLOCKS as usize])?;
    a.dec(r15)?;
    a.jnz(labels[0])?;
    a.int3()
}

fn block_reuse(c: &mut Criterion) {
    let (cpu, mem) = setup(reuse_chain);
    for policy in [TierPolicy::InterpreterOnly, TierPolicy::JitAlways] {
        let mut engine = Engine::with_policy(policy).expect("host ISA");
        let (mut c, mut m) = (cpu.clone(), mem.clone());
        c.gpr[reg::R15] = 2;
        let exit = engine.run(&mut c, &mut m, u64::MAX);
        assert_eq!(exit.executed, 2 * REUSE_PASS_INSNS, "{policy:?}: {exit:?}");
        // The chain, the DEC + JNZ block, INT3, and one block split at the 4 KiB boundary.
        let blocks = engine.stats().blocks_decoded;
        assert_eq!(blocks, REUSE_BLOCKS + 3, "{policy:?}: {:?}", engine.stats());
    }
    let mut g = c.benchmark_group("block_reuse");
    g.sample_size(10);
    for runs in [10u64, 100, 1000, 3000, 10_000] {
        g.throughput(Throughput::Elements(REUSE_PASS_INSNS * runs));
        for (name, policy) in [
            ("interp", TierPolicy::InterpreterOnly),
            ("jit_always", TierPolicy::JitAlways),
            ("adaptive", TierPolicy::default()),
        ] {
            g.bench_function(BenchmarkId::new(name, runs), |b| {
                b.iter(|| {
                    let mut engine = Engine::with_policy(policy).expect("host ISA");
                    let mut c = cpu.clone();
                    let mut m = mem.clone();
                    c.gpr[reg::R15] = runs;
                    black_box(engine.run(&mut c, &mut m, u64::MAX));
                    black_box(c.gpr[reg::RAX])
                })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    translate,
    execute,
    engine_hot_loop,
    demo,
    block_reuse
);
criterion_main!(benches);
