//! Translator benchmarks: translation cost per guest instruction and hot-loop execution speed
//! for each tier.
//!
//! `cargo bench -p ringzero-translator --bench translate`. Throughput is in guest instructions:
//! `translate/*` reports instructions translated per second (its inverse is the cost per
//! instruction), `hot_loop/*` guest instructions executed per second. The hot loop is one
//! 10-instruction block (ALU, LEA, IMUL, shifts, a load and a store, DEC + JNZ) re-entered
//! through `run_block` / `run_compiled` once per iteration, as a dispatcher without chaining
//! would: every iteration pays the block's entry and exit (register spills, flag folding).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iced_x86::code_asm::*;
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

criterion_group!(benches, translate, execute);
criterion_main!(benches);
