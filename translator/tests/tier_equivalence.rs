//! Tier equivalence: the interpreter (`run_block`) and the Cranelift tier (`run_compiled`) give
//! identical final CpuState, memory, executed counts and exceptions from identical inputs.
//!
//! Per-instruction families use the operand pairs of the host-oracle tests (edge values and a
//! seeded stream, from `common`) over random registers, flags and memory; the programs mirror
//! the interpreter's known-answer tests and run block by block as a dispatcher would, including
//! faults in the middle of a block and lazy flags that cross instructions.

use iced_x86::code_asm::*;
use iced_x86::Instruction;
use ringzero_translator::interp::{run_block, BlockExit};
use ringzero_translator::jit::{decode_block, run_compiled, Jit, JitError};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::{flags::ARITH, Exception, DE, GP};
use ringzero_translator::state::{reg, rflags, CpuState, Segment};

mod common;
use common::{cpu, operand_pairs, Rng, CODE, STACK};

type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Guest memory size; data lives at 0x3000.., the stack below 0x8000.
const MEM: usize = 0x10000;
/// A data area whose address is placed in RSI/RDI for memory-operand forms.
const DATA: u64 = 0x3000;

fn assemble(bits: u32, build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    build(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Decodes every instruction of `bytes` (assembled at CODE) for `cpu`'s mode.
fn decode_all(cpu: &CpuState, bytes: &[u8]) -> Vec<Instruction> {
    let mut d =
        iced_x86::Decoder::with_ip(cpu.code_bits(), bytes, CODE, iced_x86::DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

/// Runs `insns` under both tiers from the same state and asserts identical results.
fn same(
    what: &str,
    jit_block: &ringzero_translator::jit::CompiledBlock,
    insns: &[Instruction],
    cpu: &CpuState,
    mem: &FlatMem,
) -> (CpuState, FlatMem, BlockExit) {
    let prefix = &insns[..jit_block.len];
    let (mut ci, mut mi) = (cpu.clone(), mem.clone());
    let ei = run_block(&mut ci, &mut mi, prefix);
    let (mut cj, mut mj) = (cpu.clone(), mem.clone());
    let ej = run_compiled(&mut cj, &mut mj, jit_block);
    assert_eq!(ej, ei, "{what}: exits differ (jit vs interp) from {cpu:x?}");
    assert_eq!(cj, ci, "{what}: CpuState differs (jit vs interp)");
    assert!(mj == mi, "{what}: memory differs (jit vs interp)");
    (ci, mi, ei)
}

/// A random initial state: rax = a, rbx = rcx = b, rdx random, RSI/RDI at DATA, random flags.
fn state(bits: u32, rng: &mut Rng, a: u64, b: u64, carry: bool) -> CpuState {
    let mut c = cpu(bits);
    for r in &mut c.gpr {
        *r = rng.next();
    }
    c.gpr[reg::RAX] = a;
    c.gpr[reg::RBX] = b;
    c.gpr[reg::RCX] = b;
    c.gpr[reg::RSP] = STACK;
    c.gpr[reg::RSI] = DATA;
    c.gpr[reg::RDI] = DATA + 0x100;
    c.rflags = (rng.next() & ARITH) | rflags::FIXED1 | if carry { rflags::CF } else { 0 };
    c
}

fn memory(rng: &mut Rng) -> FlatMem {
    let mut m = FlatMem::new(0, MEM);
    for i in (DATA as usize..DATA as usize + 0x400).step_by(8) {
        m.bytes[i..i + 8].copy_from_slice(&rng.next().to_le_bytes());
    }
    m
}

/// Compiles each case once and runs it from many states under both tiers.
fn family(cases: &[(&str, Build)], small_b: bool, pairs: usize) {
    let mut jit = Jit::new().unwrap();
    for (name, build) in cases {
        let bytes = assemble(64, build);
        let mut mem = memory(&mut Rng(7));
        mem.write(CODE, &bytes).unwrap();
        let c0 = cpu(64);
        let insns = decode_all(&c0, &bytes);
        let block = jit.compile_block(&insns, &c0).unwrap();
        assert_eq!(block.len, insns.len(), "{name}: whole case compiled");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for (i, &(a, b)) in operand_pairs(rng.next(), pairs).iter().enumerate() {
            let b = if small_b { b % 80 } else { b };
            let c = state(64, &mut rng, a, b, i % 2 == 1);
            mem.bytes[DATA as usize..DATA as usize + 8].copy_from_slice(&a.to_le_bytes());
            same(
                &format!("{name} a={a:#x} b={b:#x}"),
                &block,
                &insns,
                &c,
                &mem,
            );
        }
    }
}

#[test]
fn alu_family() {
    let cases: &[(&str, Build)] = &[
        ("add8", |c| c.add(al, bl)),
        ("add16", |c| c.add(ax, bx)),
        ("add32", |c| c.add(eax, ebx)),
        ("add64", |c| c.add(rax, rbx)),
        ("adc8", |c| c.adc(al, bl)),
        ("adc16", |c| c.adc(ax, bx)),
        ("adc32", |c| c.adc(eax, ebx)),
        ("adc64", |c| c.adc(rax, rbx)),
        ("sub8", |c| c.sub(al, bl)),
        ("sub16", |c| c.sub(ax, bx)),
        ("sub32", |c| c.sub(eax, ebx)),
        ("sub64", |c| c.sub(rax, rbx)),
        ("sbb8", |c| c.sbb(al, bl)),
        ("sbb16", |c| c.sbb(ax, bx)),
        ("sbb32", |c| c.sbb(eax, ebx)),
        ("sbb64", |c| c.sbb(rax, rbx)),
        ("cmp8", |c| c.cmp(al, bl)),
        ("cmp32", |c| c.cmp(eax, ebx)),
        ("cmp64", |c| c.cmp(rax, rbx)),
        ("and8", |c| c.and(al, bl)),
        ("and32", |c| c.and(eax, ebx)),
        ("or16", |c| c.or(ax, bx)),
        ("or64", |c| c.or(rax, rbx)),
        ("xor8", |c| c.xor(al, bl)),
        ("xor32", |c| c.xor(eax, ebx)),
        ("test16", |c| c.test(ax, bx)),
        ("test64", |c| c.test(rax, rbx)),
        ("inc8", |c| c.inc(al)),
        ("inc16", |c| c.inc(ax)),
        ("inc32", |c| c.inc(eax)),
        ("inc64", |c| c.inc(rax)),
        ("dec8", |c| c.dec(al)),
        ("dec32", |c| c.dec(eax)),
        ("dec64", |c| c.dec(rax)),
        ("neg8", |c| c.neg(al)),
        ("neg16", |c| c.neg(ax)),
        ("neg32", |c| c.neg(eax)),
        ("neg64", |c| c.neg(rax)),
        ("not8", |c| c.not(al)),
        ("not32", |c| c.not(eax)),
        ("add32_imm", |c| c.add(eax, -5)),
        ("sub64_imm", |c| c.sub(rax, 0x7fff_ffff)),
        ("and16_imm8", |c| c.and(ax, -2)),
        ("ah_bh", |c| c.add(ah, bh)),
        ("add_mem64", |c| c.add(qword_ptr(rsi), rbx)),
        ("sbb_mem8", |c| c.sbb(byte_ptr(rsi + 3), bl)),
        ("xor_reg_mem32", |c| c.xor(ebx, dword_ptr(rsi))),
        ("neg_mem16", |c| c.neg(word_ptr(rsi + 1))),
    ];
    family(cases, false, 300);
}

#[test]
fn shift_family() {
    let cases: &[(&str, Build)] = &[
        ("shl8", |c| c.shl(al, cl)),
        ("shl16", |c| c.shl(ax, cl)),
        ("shl32", |c| c.shl(eax, cl)),
        ("shl64", |c| c.shl(rax, cl)),
        ("shr8", |c| c.shr(al, cl)),
        ("shr16", |c| c.shr(ax, cl)),
        ("shr32", |c| c.shr(eax, cl)),
        ("shr64", |c| c.shr(rax, cl)),
        ("sar8", |c| c.sar(al, cl)),
        ("sar16", |c| c.sar(ax, cl)),
        ("sar32", |c| c.sar(eax, cl)),
        ("sar64", |c| c.sar(rax, cl)),
        ("shl32_1", |c| c.shl(eax, 1)),
        ("shr8_1", |c| c.shr(al, 1)),
        ("sar64_1", |c| c.sar(rax, 1)),
        ("shl16_0", |c| c.shl(ax, 0)),
        ("shl32_0", |c| c.shl(eax, 0)),
        ("ror32_0", |c| c.ror(eax, 0)),
        ("rcl32_0", |c| c.rcl(eax, 0)),
        ("shld32_0", |c| c.shld(eax, ebx, 0)),
        ("shr64_63", |c| c.shr(rax, 63)),
        ("shl8_9", |c| c.shl(al, 9)),
        ("rol8", |c| c.rol(al, cl)),
        ("rol16", |c| c.rol(ax, cl)),
        ("rol32", |c| c.rol(eax, cl)),
        ("rol64", |c| c.rol(rax, cl)),
        ("ror8", |c| c.ror(al, cl)),
        ("ror16", |c| c.ror(ax, cl)),
        ("ror32", |c| c.ror(eax, cl)),
        ("ror64", |c| c.ror(rax, cl)),
        ("rol8_1", |c| c.rol(al, 1)),
        ("ror32_1", |c| c.ror(eax, 1)),
        ("rcl8", |c| c.rcl(al, cl)),
        ("rcl16", |c| c.rcl(ax, cl)),
        ("rcl32", |c| c.rcl(eax, cl)),
        ("rcl64", |c| c.rcl(rax, cl)),
        ("rcr8", |c| c.rcr(al, cl)),
        ("rcr16", |c| c.rcr(ax, cl)),
        ("rcr32", |c| c.rcr(eax, cl)),
        ("rcr64", |c| c.rcr(rax, cl)),
        ("rcl64_1", |c| c.rcl(rax, 1)),
        ("rcr16_1", |c| c.rcr(ax, 1)),
        ("shld32", |c| c.shld(eax, ebx, cl)),
        ("shld64", |c| c.shld(rax, rbx, cl)),
        ("shrd32", |c| c.shrd(eax, ebx, cl)),
        ("shrd64", |c| c.shrd(rax, rbx, cl)),
        ("shld16_1", |c| c.shld(ax, bx, 1)),
        ("shrd32_1", |c| c.shrd(eax, ebx, 1)),
        ("shl_mem32", |c| c.shl(dword_ptr(rsi), cl)),
        ("rcr_mem8", |c| c.rcr(byte_ptr(rsi), cl)),
    ];
    family(cases, true, 200);
}

#[test]
fn multiply_and_divide_family() {
    let cases: &[(&str, Build)] = &[
        ("mul8", |c| c.mul(bl)),
        ("mul16", |c| c.mul(bx)),
        ("mul32", |c| c.mul(ebx)),
        ("mul64", |c| c.mul(rbx)),
        ("imul8", |c| c.imul(bl)),
        ("imul16", |c| c.imul(bx)),
        ("imul32", |c| c.imul(ebx)),
        ("imul64", |c| c.imul(rbx)),
        ("imul16_2", |c| c.imul_2(ax, bx)),
        ("imul32_2", |c| c.imul_2(eax, ebx)),
        ("imul64_2", |c| c.imul_2(rax, rbx)),
        ("imul32_3", |c| c.imul_3(eax, ebx, -300)),
        ("imul64_3", |c| c.imul_3(rax, rbx, 0x12345)),
        // Division: random rdx makes most wide cases overflow (#DE), edges give the rest.
        ("div8", |c| c.div(bl)),
        ("div16", |c| c.div(bx)),
        ("div32", |c| c.div(ebx)),
        ("div64", |c| c.div(rbx)),
        ("idiv8", |c| c.idiv(bl)),
        ("idiv16", |c| c.idiv(bx)),
        ("idiv32", |c| c.idiv(ebx)),
        ("idiv64", |c| c.idiv(rbx)),
        ("div64_mem", |c| c.div(qword_ptr(rsi + 8))),
        // cqo/cdq first so the wide divisions mostly succeed.
        ("cqo_idiv64", |c| {
            c.cqo()?;
            c.idiv(rbx)
        }),
        ("cdq_idiv32", |c| {
            c.cdq()?;
            c.idiv(ebx)
        }),
        ("xor_div64", |c| {
            c.xor(edx, edx)?;
            c.div(rbx)
        }),
    ];
    family(cases, false, 300);
}

#[test]
fn bits_data_and_condition_family() {
    let cases: &[(&str, Build)] = &[
        ("bt32", |c| c.bt(eax, ebx)),
        ("bts64", |c| c.bts(rax, rbx)),
        ("btr16", |c| c.btr(ax, bx)),
        ("btc32_imm", |c| c.btc(eax, 37)),
        ("bt_mem", |c| c.bt(dword_ptr(rsi + 0x80), ebx)),
        ("bsf32", |c| c.bsf(eax, ebx)),
        ("bsr64", |c| c.bsr(rax, rbx)),
        ("bsf16", |c| c.bsf(ax, bx)),
        ("tzcnt32", |c| c.tzcnt(eax, ebx)),
        ("lzcnt64", |c| c.lzcnt(rax, rbx)),
        ("popcnt16", |c| c.popcnt(ax, bx)),
        ("bswap32", |c| c.bswap(eax)),
        ("bswap64", |c| c.bswap(rax)),
        ("movzx", |c| c.movzx(eax, bl)),
        ("movsx", |c| c.movsx(rax, bx)),
        ("movsxd", |c| c.movsxd(rax, ebx)),
        ("xchg_mem", |c| c.xchg(qword_ptr(rsi), rbx)),
        ("lea", |c| c.lea(eax, dword_ptr(ebx + ecx * 2 + 0x10))),
        ("cbw_cwde_cdqe_cqo", |c| {
            c.cbw()?;
            c.cwde()?;
            c.cdqe()?;
            c.cqo()
        }),
        ("cmp_setl_setbe_seto_setp", |c| {
            c.cmp(rax, rbx)?;
            c.setl(dl)?;
            c.setbe(dh)?;
            c.seto(sil)?;
            c.setp(dil)
        }),
        ("sub_cmovg_cmovs", |c| {
            c.sub(eax, ebx)?;
            c.cmovg(edx, ecx)?;
            c.cmovs(r8, rax)
        }),
        ("add_setc_seta", |c| {
            c.add(al, bl)?;
            c.setb(dl)?;
            c.seta(dh)
        }),
        ("lahf_sahf_cmc", |c| {
            c.cmp(eax, ebx)?;
            c.lahf()?;
            c.cmc()?;
            c.sahf()
        }),
        ("pushf_popf", |c| {
            c.sub(rax, rbx)?;
            c.pushfq()?;
            c.pop(rdx)?;
            c.push(rax)?;
            c.popfq()
        }),
    ];
    family(cases, false, 200);
}

/// Runs the program from CODE to `end` block by block as a dispatcher would, both tiers from
/// the same state at every block, and returns the final state and the exception if any.
fn run_program(
    jit: &mut Jit,
    name: &str,
    mut c: CpuState,
    mut mem: FlatMem,
    end: u64,
) -> (CpuState, FlatMem, Option<Exception>) {
    for _ in 0..1000 {
        if c.rip == end {
            return (c, mem, None);
        }
        let mut insns = decode_block(&c, &mut mem, 32).unwrap();
        // The program ends at `end`; the zeroed bytes after it are not part of it.
        let cut = insns.iter().position(|i| i.ip() == end);
        insns.truncate(cut.unwrap_or(insns.len()));
        let exit = match jit.compile_block(&insns, &c) {
            Ok(block) => same(name, &block, &insns, &c, &mem),
            Err(JitError::Unsupported(exc)) => {
                // The dispatcher runs it in the interpreter, which reports it.
                let e = run_block(&mut c, &mut mem, &insns[..1]);
                assert_eq!(e.exception, Some(exc), "{name}");
                return (c, mem, e.exception);
            }
            Err(e) => panic!("{name}: {e}"),
        };
        (c, mem) = (exit.0, exit.1);
        if let Some(e) = exit.2.exception {
            return (c, mem, Some(e));
        }
    }
    panic!("{name}: no progress");
}

fn program(
    bits: u32,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (CpuState, FlatMem, u64) {
    let bytes = assemble(bits, build);
    let mut mem = FlatMem::new(0, MEM);
    mem.write(CODE, &bytes).unwrap();
    (cpu(bits), mem, CODE + bytes.len() as u64)
}

#[test]
fn lazy_flags_cross_instructions_in_one_block() {
    // cmp; jcc not taken falls into the rest of the block; adc chains read the previous CF.
    let mut jit = Jit::new().unwrap();
    let (mut c, mem, end) = program(64, |a| {
        let mut skip = a.create_label();
        a.cmp(rax, rbx)?;
        a.jb(skip)?;
        a.add(rax, rcx)?;
        a.adc(rdx, rbx)?;
        a.adc(r8d, 0)?;
        a.sbb(r9w, r10w)?;
        a.set_label(&mut skip)?;
        a.setg(r11b)?;
        a.inc(r12)?; // keeps CF of the sbb
        a.adc(r13, 0)
    });
    let mut rng = Rng(99);
    for (a, b) in operand_pairs(5, 200) {
        for r in &mut c.gpr {
            *r = rng.next();
        }
        c.gpr[reg::RAX] = a;
        c.gpr[reg::RBX] = b;
        c.gpr[reg::RSP] = STACK;
        c.rflags = (rng.next() & ARITH) | rflags::FIXED1;
        let insns = decode_block(&c, &mut mem.clone(), 32).unwrap();
        // The jb ends the decoded block; compile the whole run (fall-through continues).
        let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
        assert!(insns.len() < all.len());
        let block = jit.compile_block(&all, &c).unwrap();
        assert_eq!(block.len, all.len());
        let (_, _, exit) = same("lazy chain", &block, &all, &c, &mem);
        assert!(exit.executed == 2 || exit.executed == all.len(), "{exit:?}");
    }
}

#[test]
fn faults_mid_block_keep_earlier_effects_only() {
    let mut jit = Jit::new().unwrap();
    // #DE at the third instruction: the first two are kept, the div changes nothing.
    let (mut c, mem, end) = program(64, |a| {
        a.add(rsi, 5)?;
        a.cmp(eax, ebx)?;
        a.div(rcx)?;
        a.mov(edi, 1)
    });
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    let block = jit.compile_block(&all, &c).unwrap();
    c.gpr[reg::RAX] = 5;
    c.gpr[reg::RBX] = 5;
    c.gpr[reg::RCX] = 0;
    c.gpr[reg::RSI] = 10;
    let (after, _, exit) = same("div0 mid-block", &block, &all, &c, &mem);
    assert_eq!(exit.executed, 2);
    assert_eq!(exit.exception, Some(Exception::cpu(DE)));
    assert_eq!(after.gpr[reg::RSI], 15);
    assert_eq!(after.rip, all[2].ip());
    assert_eq!(after.rflags, rflags::FIXED1 | rflags::ZF | rflags::PF);
    // And when it does not fault the whole block runs.
    c.gpr[reg::RCX] = 7;
    c.gpr[reg::RDX] = 0;
    let (_, _, exit) = same("div ok", &block, &all, &c, &mem);
    assert_eq!((exit.executed, exit.exception), (4, None));

    // Memory faults (store to unbacked memory, load from it) and #GP on a non-canonical
    // address, each after writes by earlier instructions with lazy flags pending.
    let builds: &[Build] = &[
        |a| {
            a.sub(rax, rbx)?;
            a.push(rax)?;
            a.add(qword_ptr(0x20000), 1)
        },
        |a| {
            a.xor(rcx, rax)?;
            a.mov(rdx, qword_ptr(rbx))
        },
        |a| {
            a.inc(rax)?;
            a.mov(qword_ptr(rdx), rax)
        },
        |a| {
            a.shl(rax, 3)?;
            a.call(rbx)
        },
        |a| {
            a.neg(rax)?;
            a.ud2()
        },
        |a| {
            a.neg(rax)?;
            a.int3()?;
            a.nop()
        },
    ];
    for (i, build) in builds.iter().enumerate() {
        let (mut c, mem, end) = program(64, build);
        let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
        let block = jit.compile_block(&all, &c).unwrap();
        c.gpr[reg::RAX] = 0x1234;
        c.gpr[reg::RBX] = 0x0000_8000_0000_0000 | (i as u64);
        c.gpr[reg::RDX] = 0x30000;
        let (_, _, exit) = same(&format!("fault case {i}"), &block, &all, &c, &mem);
        assert!(exit.exception.is_some(), "case {i}: {exit:?}");
        assert_eq!(
            exit.executed,
            all.len() - 1 - usize::from(i == 5),
            "case {i}"
        );
    }
    let gp = Exception::Cpu {
        vector: GP,
        error: Some(0),
    };
    let (mut c, mem, end) = program(64, |a| {
        a.shl(rax, 3)?;
        a.call(rbx)
    });
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    let block = jit.compile_block(&all, &c).unwrap();
    c.gpr[reg::RBX] = 0x1234_5678_9abc_def0;
    let (_, _, exit) = same("call non-canonical", &block, &all, &c, &mem);
    assert_eq!(exit.exception, Some(gp));
}

#[test]
fn programs_from_the_known_answer_tests() {
    let mut jit = Jit::new().unwrap();
    type Setup = fn(&mut CpuState, &mut FlatMem);
    let programs: Vec<(&str, u32, Build, Setup)> = vec![
        (
            "partial registers",
            64,
            |c| {
                c.mov(rax, 0x1111_2222_3333_4444u64)?;
                c.mov(ah, 0x12)?;
                c.mov(rbx, -1i64)?;
                c.add(bh, ah)?;
                c.mov(cx, 0xbeef)?;
                c.mov(edx, -1)?;
                c.movzx(esi, ah)?;
                c.movsx(edi, bh)?;
                c.mov(r8b, 0x80)?;
                c.movsxd(r9, r8d)
            },
            |c, _| {
                c.gpr[reg::RCX] = 0xaaaa_aaaa_aaaa_aaaa;
                c.gpr[reg::R8] = 0x7fff_ff00;
            },
        ),
        (
            "memory operands and fs base",
            64,
            |c| {
                c.mov(qword_ptr(0x3000), rbx)?;
                c.add(qword_ptr(rcx + rdx * 4 + 0x10), 5)?;
                c.mov(rsi, qword_ptr(0x3000))?;
                c.mov(r10, qword_ptr(0x20).fs())?;
                c.xchg(qword_ptr(0x3008), r11)?;
                c.lea(r12, qword_ptr(rcx + rdx * 8 - 1))?;
                c.lea(r13d, dword_ptr(ecx + edx))
            },
            |c, m| {
                c.gpr[reg::RBX] = 0x1234_5678_9abc_def0;
                c.gpr[reg::RCX] = 0x2000 - 0x510;
                c.gpr[reg::RDX] = 0x140;
                c.gpr[reg::R11] = 77;
                c.fs.base = 0x4000;
                m.write(0x4020, &0x55u64.to_le_bytes()).unwrap();
                m.write(0x3008, &99u64.to_le_bytes()).unwrap();
            },
        ),
        (
            "push pop forms",
            64,
            |c| {
                c.push(rbx)?;
                c.push(ax)?;
                c.push(-2)?;
                c.pop(rcx)?;
                c.pop(dx)?;
                c.push(qword_ptr(0x3000))?;
                c.pop(qword_ptr(rsp + 8))?;
                c.push(rsp)?;
                c.pop(rsi)
            },
            |c, m| {
                c.gpr[reg::RBX] = 0x1111;
                c.gpr[reg::RAX] = 0xabcd;
                m.write(0x3000, &0x77u64.to_le_bytes()).unwrap();
            },
        ),
        (
            "call ret imm",
            64,
            |c| {
                let mut f = c.create_label();
                let mut done = c.create_label();
                c.push(1)?;
                c.call(f)?;
                c.jmp(done)?;
                c.set_label(&mut f)?;
                c.mov(rax, qword_ptr(rsp))?;
                c.ret_1(8)?;
                c.set_label(&mut done)?;
                c.nop()
            },
            |_, _| {},
        ),
        (
            "loop and jrcxz",
            64,
            |c| {
                let mut top = c.create_label();
                let mut out = c.create_label();
                c.set_label(&mut top)?;
                c.inc(rax)?;
                c.add(rdx, rax)?;
                c.loop_(top)?;
                c.jrcxz(out)?;
                c.ud2()?;
                c.set_label(&mut out)?;
                c.nop()
            },
            |c, _| c.gpr[reg::RCX] = 40,
        ),
        (
            "flag instructions",
            64,
            |c| {
                c.cmp(eax, ebx)?;
                c.lahf()?;
                c.mov(cl, ah)?;
                c.cmc()?;
                c.std()?;
                c.pushfq()?;
                c.pop(rdx)?;
                c.mov(ah, 0xd5)?;
                c.sahf()?;
                c.cld()?;
                c.push(0x0cd5)?;
                c.popfq()
            },
            |c, _| {
                c.gpr[reg::RAX] = 1;
                c.gpr[reg::RBX] = 2;
            },
        ),
        (
            "popf at cpl3",
            64,
            |c| {
                c.push(0x3000 | 0x200 | 0x1)?;
                c.popfq()
            },
            |c, _| {
                c.cs.dpl = 3;
                c.rflags = rflags::FIXED1 | rflags::IF;
            },
        ),
        (
            "bit tests in memory",
            64,
            |c| {
                c.bts(dword_ptr(0x3010), ecx)?;
                c.bt(dword_ptr(0x3010), edx)?;
                c.btc(word_ptr(0x3010), 17)?;
                c.setb(al)
            },
            |c, m| {
                c.gpr[reg::RCX] = 100;
                c.gpr[reg::RDX] = u64::MAX;
                m.write(0x300c, &0x8000_0000u32.to_le_bytes()).unwrap();
            },
        ),
        (
            "shift by zero and rotates",
            64,
            |c| {
                c.cmp(eax, ebx)?;
                c.shl(edx, cl)?;
                c.rol(si, cl)?;
                c.mov(edi, 0x81)?;
                c.ror(dil, 9)?;
                c.rcl(r8b, 9)
            },
            |c, _| {
                c.gpr[reg::RAX] = 1;
                c.gpr[reg::RBX] = 2;
                c.gpr[reg::RCX] = 32;
                c.gpr[reg::RDX] = 0xffff_ffff_0000_0001;
                c.gpr[reg::RSI] = 0x1234_0002;
                c.gpr[reg::R8] = 0x5a;
            },
        ),
        (
            "protected mode 32-bit",
            32,
            |c| {
                c.push(eax)?;
                c.push(ax)?;
                c.pop(bx)?;
                c.mov(ecx, dword_ptr(0x100))?;
                c.call(dword_ptr(0x104))
            },
            |c, m| {
                c.ds.base = 0x3000;
                c.gpr[reg::RAX] = 0xcafe_f00d;
                c.gpr[reg::RBX] = 0xffff_0000;
                m.write(0x3100, &0x4444u32.to_le_bytes()).unwrap();
                m.write(0x3104, &0x2000u32.to_le_bytes()).unwrap();
                m.write(0x2000, &[0x0f, 0xa2]).unwrap(); // cpuid: unimplemented, stops there
            },
        ),
        (
            "real mode 16-bit",
            16,
            |c| {
                c.mov(ax, word_ptr(bx + si + 2))?;
                c.lea(dx, word_ptr(bx + si - 1))?;
                c.push(ax)?;
                c.cwd()?;
                c.div(bx)
            },
            |c, m| {
                c.ds = Segment::real_mode(0x300);
                c.ss = Segment::real_mode(0x0);
                c.gpr[reg::RBX] = 0xfff0;
                c.gpr[reg::RSI] = 0x10;
                m.write(0x3002, &0x8123u16.to_le_bytes()).unwrap();
            },
        ),
    ];
    for (name, bits, build, setup) in programs {
        let (mut c, mut mem, end) = program(bits, build);
        setup(&mut c, &mut mem);
        let (ci, mi, ei) = {
            // The interpreter alone, instruction by instruction, as the reference end state.
            let (mut c, mut mem) = (c.clone(), mem.clone());
            let mut exc = None;
            for _ in 0..1000 {
                if c.rip == end {
                    break;
                }
                if let Err(e) = ringzero_translator::interp::step(&mut c, &mut mem) {
                    exc = Some(e);
                    break;
                }
            }
            (c, mem, exc)
        };
        let (cj, mj, ej) = run_program(&mut jit, name, c, mem, end);
        assert_eq!(
            (cj, ej),
            (ci, ei),
            "{name}: blockwise both-tier run vs stepping"
        );
        assert!(mj == mi, "{name}: memory");
    }
}

#[test]
fn unimplemented_first_instruction_is_refused() {
    let mut jit = Jit::new().unwrap();
    let (c, mem, end) = program(64, |a| {
        a.cpuid()?;
        a.nop()
    });
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    match jit.compile_block(&all, &c) {
        Err(JitError::Unsupported(Exception::System(m))) => {
            assert_eq!(m, iced_x86::Mnemonic::Cpuid)
        }
        other => panic!("{other:?}"),
    }
    // After one compilable instruction the block stops before it.
    let (c, mem, end) = program(64, |a| {
        a.inc(eax)?;
        a.cpuid()
    });
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    let block = jit.compile_block(&all, &c).unwrap();
    assert_eq!(block.len, 1);
    let (after, _, exit) = same("prefix", &block, &all, &c, &mem);
    assert_eq!((exit.executed, exit.exception), (1, None));
    assert_eq!(after.rip, all[1].ip());
}

#[test]
fn block_from_another_mode_does_not_run() {
    let mut jit = Jit::new().unwrap();
    let (c, mem, end) = program(64, |a| a.inc(eax));
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    let block = jit.compile_block(&all, &c).unwrap();
    let mut c3 = c.clone();
    c3.cs.dpl = 3;
    let mut m = mem.clone();
    let exit = run_compiled(&mut c3, &mut m, &block);
    assert!(matches!(exit.exception, Some(Exception::Internal(_))));
    assert_eq!(exit.executed, 0);
    let mut elsewhere = c.clone();
    elsewhere.rip += 1;
    let exit = run_compiled(&mut elsewhere, &mut m, &block);
    assert_eq!((exit.executed, exit.exception), (0, None));
}

#[test]
fn flags_survive_a_following_instruction_that_writes_no_flags() {
    // Found by `ringzero difftest --seed 20261123 --family alu --start 56`: adc r15d, r10d
    // (0 + 8, CF clear) then lea must leave PF clear (0x08 has odd parity).
    let mut jit = Jit::new().unwrap();
    let (mut c, mem, end) = program(64, |a| {
        a.adc(r15d, r10d)?;
        a.lea(r15d, dword_ptr(rcx + r8 - 0x22))
    });
    c.gpr[reg::R15] = 0;
    c.gpr[reg::R10] = 8;
    c.gpr[reg::RCX] = 0x21_1006;
    c.gpr[reg::R8] = 0xffff_ffff_ffff_ffd2;
    c.rflags = 0x2d6;
    let (c, _, exc) = run_program(&mut jit, "adc then lea", c, mem, end);
    assert_eq!(exc, None);
    assert_eq!(c.rflags & ARITH, 0, "rflags {:#x}", c.rflags);
}

/// `c` at CPL 3 with CR0.AM set (alignment checks armed; RFLAGS.AC decides at run time).
fn user_with_am(c: &mut CpuState) {
    c.cs.dpl = 3;
    c.cs.selector |= 3;
    c.ss.dpl = 3;
    c.ss.selector |= 3;
    c.cr0 |= ringzero_translator::state::ctl::CR0_AM;
}

#[test]
fn alignment_checks_in_both_tiers() {
    let mut jit = Jit::new().unwrap();
    let ac = Exception::Cpu {
        vector: ringzero_translator::sem::AC,
        error: Some(0),
    };
    // POPF sets AC inside the block; the misaligned load after it faults, the one before not.
    let (mut c, mem, end) = program(64, |a| {
        a.mov(rdx, qword_ptr(rsi))?;
        a.add(rdx, 1)?;
        a.push(rbx)?;
        a.popfq()?;
        a.mov(eax, dword_ptr(rdi))?;
        a.mov(ecx, 1)
    });
    user_with_am(&mut c);
    let all = decode_all(&c, &mem.bytes[CODE as usize..end as usize]);
    let block = jit.compile_block(&all, &c).unwrap();
    assert_eq!(block.len, all.len());
    for (rdi_value, new_flags, faults) in [
        (0x3002u64, rflags::AC | rflags::CF, true),
        (0x3004, rflags::AC, false),
        (0x3002, rflags::ZF, false),
    ] {
        let mut c = c.clone();
        c.gpr[reg::RSI] = 0x3001;
        c.gpr[reg::RDI] = rdi_value;
        c.gpr[reg::RBX] = new_flags | rflags::FIXED1;
        let (after, _, exit) = same("ac after popf", &block, &all, &c, &mem);
        if faults {
            assert_eq!((exit.executed, exit.exception), (4, Some(ac)));
            assert_eq!(after.rip, all[4].ip());
            assert_eq!(after.rflags, rflags::FIXED1 | rflags::AC | rflags::CF);
        } else {
            assert_eq!((exit.executed, exit.exception), (all.len(), None));
        }
    }
    // A block compiled without the checks does not run on a CPU that needs them.
    let (c0, mem0, end0) = program(64, |a| a.mov(eax, dword_ptr(rdi)));
    let mut c3 = c0.clone();
    user_with_am(&mut c3);
    c3.cr0 &= !ringzero_translator::state::ctl::CR0_AM;
    let all = decode_all(&c3, &mem0.bytes[CODE as usize..end0 as usize]);
    let block = jit.compile_block(&all, &c3).unwrap();
    let mut armed = c3.clone();
    armed.cr0 |= ringzero_translator::state::ctl::CR0_AM;
    let exit = run_compiled(&mut armed, &mut mem0.clone(), &block);
    assert!(matches!(exit.exception, Some(Exception::Internal(_))));
}

#[test]
fn exchange_family() {
    let cases: &[(&str, Build)] = &[
        ("xadd8", |c| c.xadd(al, bl)),
        ("xadd16", |c| c.xadd(ax, bx)),
        ("xadd32 same", |c| c.xadd(eax, eax)),
        ("xadd64 mem", |c| c.lock().xadd(qword_ptr(rsi), rbx)),
        ("cmpxchg8 high", |c| c.cmpxchg(ah, bl)),
        ("cmpxchg16", |c| c.cmpxchg(cx, bx)),
        ("cmpxchg32", |c| c.cmpxchg(ecx, ebx)),
        ("cmpxchg64", |c| c.cmpxchg(rcx, rbx)),
        ("cmpxchg32 mem", |c| c.lock().cmpxchg(dword_ptr(rsi), ebx)),
        ("cmpxchg64 mem", |c| c.cmpxchg(qword_ptr(rsi), rbx)),
        ("cmpxchg then jz", |c| {
            c.cmpxchg(qword_ptr(rsi), rbx)?;
            c.setz(dl)?;
            c.adc(rdx, 0)
        }),
        ("cmpxchg8b", |c| c.lock().cmpxchg8b(qword_ptr(rsi))),
        ("cmpxchg16b", |c| c.cmpxchg16b(xmmword_ptr(rsi))),
        ("cmpxchg16b misaligned", |c| {
            c.cmpxchg16b(xmmword_ptr(rsi + 8))
        }),
        ("movbe16", |c| c.movbe(bx, word_ptr(rsi))),
        ("movbe32", |c| c.movbe(ebx, dword_ptr(rsi + 1))),
        ("movbe64 store", |c| c.movbe(qword_ptr(rdi), rax)),
    ];
    family(cases, false, 100);
}

#[test]
fn enter_and_xlat_family() {
    let cases: &[(&str, Build)] = &[
        ("enter 0", |c| c.enter(0x18u32, 0u32)),
        ("enter 1", |c| c.enter(3u32, 1u32)),
        ("enter 3 leave", |c| {
            c.mov(rbp, rsi)?;
            c.add(rbp, 0x40)?;
            c.enter(0x20u32, 3u32)?;
            c.mov(rax, qword_ptr(rsp + 0x20))?;
            c.leave()
        }),
        ("enter overlap", |c| {
            c.mov(rbp, rsp)?;
            c.enter(0u32, 4u32)
        }),
        ("xlat", |c| {
            c.mov(rbx, rsi)?;
            c.xlatb()
        }),
    ];
    family(cases, false, 50);
}

#[test]
fn string_family_block_by_block() {
    let mut jit = Jit::new().unwrap();
    let builds: &[(&str, Build)] = &[
        ("rep movsb overlap", |c| {
            c.lea(rdi, qword_ptr(rsi + 3))?;
            c.rep().movsb()
        }),
        ("std rep movsw", |c| {
            c.std()?;
            c.rep().movsw()?;
            c.cld()
        }),
        ("rep stosq then add", |c| {
            c.rep().stosq()?;
            c.add(rax, rdi)
        }),
        ("lods", |c| {
            c.lodsb()?;
            c.lodsd()?;
            c.lodsw()
        }),
        ("repe cmpsd", |c| {
            c.cmp(eax, ebx)?;
            c.repe().cmpsd()?;
            c.setb(dl)
        }),
        ("repne scasb", |c| c.repne().scasb()),
        ("repne scasq", |c| c.repne().scasq()),
        ("movsq no rep", |c| c.movsq()),
    ];
    for (name, build) in builds {
        let (c0, mut mem, end) = program(64, build);
        let mut rng = Rng(0x5eed ^ name.len() as u64);
        for i in 0..40 {
            let a = rng.next() % 256;
            let mut c = state(64, &mut rng, a, 0, i % 2 == 0);
            c.rip = c0.rip;
            c.gpr[reg::RCX] = rng.next() % 24;
            if i % 3 == 0 {
                c.gpr[reg::RAX] &= 0xff;
            }
            for b in mem.bytes[DATA as usize..DATA as usize + 0x300].iter_mut() {
                *b = (rng.next() % 4) as u8;
            }
            let (ci, mi, ei) = run_program(&mut jit, name, c.clone(), mem.clone(), end);
            // The same program stepped by the interpreter alone.
            let (mut c_step, mut m_step) = (c.clone(), mem.clone());
            let mut e_step = None;
            for _ in 0..10_000 {
                if c_step.rip == end {
                    break;
                }
                if let Err(e) = ringzero_translator::interp::step(&mut c_step, &mut m_step) {
                    e_step = Some(e);
                    break;
                }
            }
            assert_eq!((ci, ei), (c_step, e_step), "{name} #{i}");
            assert!(mi == m_step, "{name} #{i}: memory");
        }
    }
}

#[test]
fn bcd_family_in_32_bit_mode() {
    let mut jit = Jit::new().unwrap();
    let builds: &[(&str, Build)] = &[
        ("add daa", |c| {
            c.add(al, bl)?;
            c.daa()
        }),
        ("sub das", |c| {
            c.sub(al, bl)?;
            c.das()
        }),
        ("adc aaa", |c| {
            c.adc(al, bl)?;
            c.aaa()
        }),
        ("sbb aas", |c| {
            c.sbb(al, bl)?;
            c.aas()
        }),
        ("aam aad", |c| {
            c.aam(10)?;
            c.aad(7)?;
            c.aam(16)
        }),
        ("aam 0", |c| {
            c.inc(eax)?;
            c.aam(0)
        }),
    ];
    for (name, build) in builds {
        let (c0, mem, end) = program(32, build);
        let mut rng = Rng(0xbcd ^ name.len() as u64);
        for (a, b) in operand_pairs(rng.next(), 150) {
            let mut c = c0.clone();
            for r in c.gpr.iter_mut().take(8) {
                *r = rng.next() & 0xffff_ffff;
            }
            c.gpr[reg::RAX] = a & 0xffff_ffff;
            c.gpr[reg::RBX] = b & 0xffff_ffff;
            c.gpr[reg::RSP] = STACK;
            c.rflags = (rng.next() & ARITH) | rflags::FIXED1;
            run_program(&mut jit, name, c, mem.clone(), end);
        }
    }
}
