//! The interpreter tier checked against the host CPU, instruction by instruction.
//!
//! Each case runs one instruction natively (inline `asm!` between `popfq` and `pushfq`) and
//! through the interpreter from the same registers and flags, over edge values and a seeded
//! pseudo-random stream, and compares the destination and the six arithmetic flags. The host is
//! the ground truth, including for flags the manuals leave undefined unless a case masks them.
#![cfg(target_arch = "x86_64")]

use iced_x86::code_asm::*;
use ringzero_translator::interp::step;
use ringzero_translator::mem::FlatMem;
use ringzero_translator::sem::flags::ARITH;
use ringzero_translator::state::{reg, rflags, CpuState};
use std::arch::asm;

mod common;
use common::{operand_pairs, Rng, CODE};

fn cpu64() -> CpuState {
    common::cpu(64)
}

/// Runs one instruction built by `build` with rax = a, rbx = rcx = b, rdx = d: (rax, rdx, rflags).
fn interp(
    build: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>,
    a: u64,
    b: u64,
    d: u64,
    f: u64,
) -> (u64, u64, u64) {
    let mut asm = CodeAssembler::new(64).unwrap();
    build(&mut asm).unwrap();
    let bytes = asm.assemble(CODE).unwrap();
    let mut mem = FlatMem::new(0, 0x10000);
    mem.bytes[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(&bytes);
    let mut cpu = cpu64();
    cpu.gpr[reg::RAX] = a;
    cpu.gpr[reg::RBX] = b;
    cpu.gpr[reg::RCX] = b;
    cpu.gpr[reg::RDX] = d;
    cpu.rflags = f;
    while cpu.rip != CODE + bytes.len() as u64 {
        step(&mut cpu, &mut mem).unwrap();
    }
    (cpu.gpr[reg::RAX], cpu.gpr[reg::RDX], cpu.rflags)
}

/// Native run of `$t` with {a} = a (in/out), {b} = b, rcx = b, rdx = d (in/out): (a, d, rflags).
macro_rules! nat {
    ($($t:literal),+) => {
        |a: u64, b: u64, d: u64, f: u64| -> (u64, u64, u64) {
            let mut a = a;
            let mut d = d;
            let out: u64;
            // SAFETY: the template only touches the named registers and the stack slot it pushes.
            unsafe {
                asm!("push {f}", "popfq", $($t,)+ "pushfq", "pop {f}", "/* {b} */",
                    a = inout(reg) a, b = in(reg) b, f = inout(reg) f => out,
                    in("rcx") b, inout("rdx") d);
            }
            (a, d, out)
        }
    };
}

/// Native run with the operand in rax (MUL/IMUL one-operand and friends), {b} = b.
macro_rules! nat_acc {
    ($($t:literal),+) => {
        |a: u64, b: u64, d: u64, f: u64| -> (u64, u64, u64) {
            let mut a = a;
            let mut d = d;
            let out: u64;
            // SAFETY: as above; rax and rdx are declared.
            unsafe {
                asm!("push {f}", "popfq", $($t,)+ "pushfq", "pop {f}", "/* {b} */",
                    b = in(reg) b, f = inout(reg) f => out,
                    inout("rax") a, inout("rdx") d);
            }
            (a, d, out)
        }
    };
}

type Native = fn(u64, u64, u64, u64) -> (u64, u64, u64);
type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Compares interpreter and host on edge values and random inputs; `undefined` flags are masked.
fn check(name: &str, native: Native, build: Build, undefined: u64, small_b: bool) {
    let seed = 0x9e37_79b9_7f4a_7c15 ^ name.len() as u64;
    let inputs = operand_pairs(seed, 3000);
    // The flags and rdx stream continues after the operand pairs, as it always has.
    let mut rng = Rng(seed);
    for _ in 0..2 * 3000 {
        rng.next();
    }
    for (i, &(a, b)) in inputs.iter().enumerate() {
        let b = if small_b { b % 80 } else { b };
        let d = rng.next();
        let f = (rng.next() & ARITH) | rflags::FIXED1 | if i % 2 == 0 { 0 } else { rflags::CF };
        let want = native(a, b, d, f);
        let got = interp(&build, a, b, d, f);
        let mask = !(undefined) & (ARITH | rflags::FIXED1 | rflags::DF);
        assert_eq!(
            (got.0, got.1, got.2 & mask),
            (want.0, want.1, want.2 & mask),
            "{name}: a={a:#x} b={b:#x} d={d:#x} flags={f:#x}: interp (rax, rdx, flags) vs host"
        );
    }
}

const OF: u64 = rflags::OF;
const SF: u64 = rflags::SF;
const ZF: u64 = rflags::ZF;
const AF: u64 = rflags::AF;
const PF: u64 = rflags::PF;
const CF: u64 = rflags::CF;

#[test]
fn alu_matches_host() {
    let cases: &[(&str, Native, Build)] = &[
        ("add8", nat!("add {a:l}, {b:l}"), |c| c.add(al, bl)),
        ("add16", nat!("add {a:x}, {b:x}"), |c| c.add(ax, bx)),
        ("add32", nat!("add {a:e}, {b:e}"), |c| c.add(eax, ebx)),
        ("add64", nat!("add {a}, {b}"), |c| c.add(rax, rbx)),
        ("adc8", nat!("adc {a:l}, {b:l}"), |c| c.adc(al, bl)),
        ("adc16", nat!("adc {a:x}, {b:x}"), |c| c.adc(ax, bx)),
        ("adc32", nat!("adc {a:e}, {b:e}"), |c| c.adc(eax, ebx)),
        ("adc64", nat!("adc {a}, {b}"), |c| c.adc(rax, rbx)),
        ("sub8", nat!("sub {a:l}, {b:l}"), |c| c.sub(al, bl)),
        ("sub16", nat!("sub {a:x}, {b:x}"), |c| c.sub(ax, bx)),
        ("sub32", nat!("sub {a:e}, {b:e}"), |c| c.sub(eax, ebx)),
        ("sub64", nat!("sub {a}, {b}"), |c| c.sub(rax, rbx)),
        ("sbb8", nat!("sbb {a:l}, {b:l}"), |c| c.sbb(al, bl)),
        ("sbb16", nat!("sbb {a:x}, {b:x}"), |c| c.sbb(ax, bx)),
        ("sbb32", nat!("sbb {a:e}, {b:e}"), |c| c.sbb(eax, ebx)),
        ("sbb64", nat!("sbb {a}, {b}"), |c| c.sbb(rax, rbx)),
        ("cmp8", nat!("cmp {a:l}, {b:l}"), |c| c.cmp(al, bl)),
        ("cmp32", nat!("cmp {a:e}, {b:e}"), |c| c.cmp(eax, ebx)),
        ("cmp64", nat!("cmp {a}, {b}"), |c| c.cmp(rax, rbx)),
        ("and8", nat!("and {a:l}, {b:l}"), |c| c.and(al, bl)),
        ("and32", nat!("and {a:e}, {b:e}"), |c| c.and(eax, ebx)),
        ("or16", nat!("or {a:x}, {b:x}"), |c| c.or(ax, bx)),
        ("or64", nat!("or {a}, {b}"), |c| c.or(rax, rbx)),
        ("xor8", nat!("xor {a:l}, {b:l}"), |c| c.xor(al, bl)),
        ("xor32", nat!("xor {a:e}, {b:e}"), |c| c.xor(eax, ebx)),
        ("test16", nat!("test {a:x}, {b:x}"), |c| c.test(ax, bx)),
        ("test64", nat!("test {a}, {b}"), |c| c.test(rax, rbx)),
        ("inc8", nat!("inc {a:l}"), |c| c.inc(al)),
        ("inc16", nat!("inc {a:x}"), |c| c.inc(ax)),
        ("inc32", nat!("inc {a:e}"), |c| c.inc(eax)),
        ("inc64", nat!("inc {a}"), |c| c.inc(rax)),
        ("dec8", nat!("dec {a:l}"), |c| c.dec(al)),
        ("dec32", nat!("dec {a:e}"), |c| c.dec(eax)),
        ("dec64", nat!("dec {a}"), |c| c.dec(rax)),
        ("neg8", nat!("neg {a:l}"), |c| c.neg(al)),
        ("neg16", nat!("neg {a:x}"), |c| c.neg(ax)),
        ("neg32", nat!("neg {a:e}"), |c| c.neg(eax)),
        ("neg64", nat!("neg {a}"), |c| c.neg(rax)),
        ("not8", nat!("not {a:l}"), |c| c.not(al)),
        ("not32", nat!("not {a:e}"), |c| c.not(eax)),
        ("add32_imm", nat!("add {a:e}, -5"), |c| c.add(eax, -5)),
        ("sub64_imm", nat!("sub {a}, 0x7fffffff"), |c| {
            c.sub(rax, 0x7fff_ffff)
        }),
        ("and16_imm8", nat!("and {a:x}, -2"), |c| c.and(ax, -2)),
    ];
    for (name, n, b) in cases {
        check(name, *n, *b, 0, false);
    }
}

#[test]
fn shifts_match_host() {
    // AF after a shift by a non-zero count is undefined (SDM SAL/SAR/SHL/SHR); OF is defined
    // only for a count of 1 (shifts, rotates, SHLD/SHRD).
    let cases: &[(&str, Native, Build, u64)] = &[
        ("shl8", nat!("shl {a:l}, cl"), |c| c.shl(al, cl), AF | OF),
        ("shl16", nat!("shl {a:x}, cl"), |c| c.shl(ax, cl), AF | OF),
        ("shl32", nat!("shl {a:e}, cl"), |c| c.shl(eax, cl), AF | OF),
        ("shl64", nat!("shl {a}, cl"), |c| c.shl(rax, cl), AF | OF),
        ("shr8", nat!("shr {a:l}, cl"), |c| c.shr(al, cl), AF | OF),
        ("shr16", nat!("shr {a:x}, cl"), |c| c.shr(ax, cl), AF | OF),
        ("shr32", nat!("shr {a:e}, cl"), |c| c.shr(eax, cl), AF | OF),
        ("shr64", nat!("shr {a}, cl"), |c| c.shr(rax, cl), AF | OF),
        ("sar8", nat!("sar {a:l}, cl"), |c| c.sar(al, cl), AF | OF),
        ("sar16", nat!("sar {a:x}, cl"), |c| c.sar(ax, cl), AF | OF),
        ("sar32", nat!("sar {a:e}, cl"), |c| c.sar(eax, cl), AF | OF),
        ("sar64", nat!("sar {a}, cl"), |c| c.sar(rax, cl), AF | OF),
        ("shl32_1", nat!("shl {a:e}, 1"), |c| c.shl(eax, 1), AF),
        ("shr8_1", nat!("shr {a:l}, 1"), |c| c.shr(al, 1), AF),
        ("sar64_1", nat!("sar {a}, 1"), |c| c.sar(rax, 1), AF),
        ("shl16_0", nat!("shl {a:x}, 0"), |c| c.shl(ax, 0), 0),
        ("shl32_0", nat!("shl {a:e}, 0"), |c| c.shl(eax, 0), 0),
        ("ror32_0", nat!("ror {a:e}, 0"), |c| c.ror(eax, 0), 0),
        ("rcl32_0", nat!("rcl {a:e}, 0"), |c| c.rcl(eax, 0), 0),
        (
            "shld32_0",
            nat!("shld {a:e}, {b:e}, 0"),
            |c| c.shld(eax, ebx, 0),
            0,
        ),
        ("shr64_63", nat!("shr {a}, 63"), |c| c.shr(rax, 63), AF | OF),
        ("shl8_9", nat!("shl {a:l}, 9"), |c| c.shl(al, 9), AF | OF),
        ("rol8", nat!("rol {a:l}, cl"), |c| c.rol(al, cl), OF),
        ("rol16", nat!("rol {a:x}, cl"), |c| c.rol(ax, cl), OF),
        ("rol32", nat!("rol {a:e}, cl"), |c| c.rol(eax, cl), OF),
        ("rol64", nat!("rol {a}, cl"), |c| c.rol(rax, cl), OF),
        ("ror8", nat!("ror {a:l}, cl"), |c| c.ror(al, cl), OF),
        ("ror16", nat!("ror {a:x}, cl"), |c| c.ror(ax, cl), OF),
        ("ror32", nat!("ror {a:e}, cl"), |c| c.ror(eax, cl), OF),
        ("ror64", nat!("ror {a}, cl"), |c| c.ror(rax, cl), OF),
        ("rol8_1", nat!("rol {a:l}, 1"), |c| c.rol(al, 1), 0),
        ("ror32_1", nat!("ror {a:e}, 1"), |c| c.ror(eax, 1), 0),
        ("rcl8", nat!("rcl {a:l}, cl"), |c| c.rcl(al, cl), OF),
        ("rcl16", nat!("rcl {a:x}, cl"), |c| c.rcl(ax, cl), OF),
        ("rcl32", nat!("rcl {a:e}, cl"), |c| c.rcl(eax, cl), OF),
        ("rcl64", nat!("rcl {a}, cl"), |c| c.rcl(rax, cl), OF),
        ("rcr8", nat!("rcr {a:l}, cl"), |c| c.rcr(al, cl), OF),
        ("rcr16", nat!("rcr {a:x}, cl"), |c| c.rcr(ax, cl), OF),
        ("rcr32", nat!("rcr {a:e}, cl"), |c| c.rcr(eax, cl), OF),
        ("rcr64", nat!("rcr {a}, cl"), |c| c.rcr(rax, cl), OF),
        ("rcl64_1", nat!("rcl {a}, 1"), |c| c.rcl(rax, 1), 0),
        ("rcr16_1", nat!("rcr {a:x}, 1"), |c| c.rcr(ax, 1), 0),
        (
            "shld32",
            nat!("shld {a:e}, {b:e}, cl"),
            |c| c.shld(eax, ebx, cl),
            AF | OF,
        ),
        (
            "shld64",
            nat!("shld {a}, {b}, cl"),
            |c| c.shld(rax, rbx, cl),
            AF | OF,
        ),
        (
            "shrd32",
            nat!("shrd {a:e}, {b:e}, cl"),
            |c| c.shrd(eax, ebx, cl),
            AF | OF,
        ),
        (
            "shrd64",
            nat!("shrd {a}, {b}, cl"),
            |c| c.shrd(rax, rbx, cl),
            AF | OF,
        ),
        (
            "shld16_1",
            nat!("shld {a:x}, {b:x}, 1"),
            |c| c.shld(ax, bx, 1),
            AF,
        ),
        (
            "shrd32_1",
            nat!("shrd {a:e}, {b:e}, 1"),
            |c| c.shrd(eax, ebx, 1),
            AF,
        ),
    ];
    for (name, n, b, undef) in cases {
        check(name, *n, *b, *undef, true);
    }
}

#[test]
fn multiply_matches_host() {
    let cases: &[(&str, Native, Build)] = &[
        ("mul8", nat_acc!("mul {b:l}"), |c| c.mul(bl)),
        ("mul16", nat_acc!("mul {b:x}"), |c| c.mul(bx)),
        ("mul32", nat_acc!("mul {b:e}"), |c| c.mul(ebx)),
        ("mul64", nat_acc!("mul {b}"), |c| c.mul(rbx)),
        ("imul8", nat_acc!("imul {b:l}"), |c| c.imul(bl)),
        ("imul16", nat_acc!("imul {b:x}"), |c| c.imul(bx)),
        ("imul32", nat_acc!("imul {b:e}"), |c| c.imul(ebx)),
        ("imul64", nat_acc!("imul {b}"), |c| c.imul(rbx)),
        ("imul16_2", nat!("imul {a:x}, {b:x}"), |c| c.imul_2(ax, bx)),
        ("imul32_2", nat!("imul {a:e}, {b:e}"), |c| {
            c.imul_2(eax, ebx)
        }),
        ("imul64_2", nat!("imul {a}, {b}"), |c| c.imul_2(rax, rbx)),
        ("imul32_3", nat!("imul {a:e}, {b:e}, -300"), |c| {
            c.imul_3(eax, ebx, -300)
        }),
        ("imul64_3", nat!("imul {a}, {b}, 0x12345"), |c| {
            c.imul_3(rax, rbx, 0x12345)
        }),
    ];
    // SF, ZF, AF, PF are undefined after MUL/IMUL (SDM MUL, IMUL "Flags Affected").
    for (name, n, b) in cases {
        check(name, *n, *b, SF | ZF | AF | PF, false);
    }
}

#[test]
fn bit_instructions_match_host() {
    let cases: &[(&str, Native, Build, u64, bool)] = &[
        (
            "bt32",
            nat!("bt {a:e}, {b:e}"),
            |c| c.bt(eax, ebx),
            OF | SF | AF | PF,
            true,
        ),
        (
            "bts64",
            nat!("bts {a}, {b}"),
            |c| c.bts(rax, rbx),
            OF | SF | AF | PF,
            true,
        ),
        (
            "btr16",
            nat!("btr {a:x}, {b:x}"),
            |c| c.btr(ax, bx),
            OF | SF | AF | PF,
            true,
        ),
        (
            "btc32",
            nat!("btc {a:e}, {b:e}"),
            |c| c.btc(eax, ebx),
            OF | SF | AF | PF,
            true,
        ),
        (
            "bsf32",
            nat!("bsf {a:e}, {b:e}"),
            |c| c.bsf(eax, ebx),
            CF | OF | SF | AF | PF,
            false,
        ),
        (
            "bsf64",
            nat!("bsf {a}, {b}"),
            |c| c.bsf(rax, rbx),
            CF | OF | SF | AF | PF,
            false,
        ),
        (
            "bsr16",
            nat!("bsr {a:x}, {b:x}"),
            |c| c.bsr(ax, bx),
            CF | OF | SF | AF | PF,
            false,
        ),
        (
            "bsr32",
            nat!("bsr {a:e}, {b:e}"),
            |c| c.bsr(eax, ebx),
            CF | OF | SF | AF | PF,
            false,
        ),
        (
            "tzcnt32",
            nat!("tzcnt {a:e}, {b:e}"),
            |c| c.tzcnt(eax, ebx),
            OF | SF | AF | PF,
            false,
        ),
        (
            "tzcnt16",
            nat!("tzcnt {a:x}, {b:x}"),
            |c| c.tzcnt(ax, bx),
            OF | SF | AF | PF,
            false,
        ),
        (
            "lzcnt64",
            nat!("lzcnt {a}, {b}"),
            |c| c.lzcnt(rax, rbx),
            OF | SF | AF | PF,
            false,
        ),
        (
            "lzcnt16",
            nat!("lzcnt {a:x}, {b:x}"),
            |c| c.lzcnt(ax, bx),
            OF | SF | AF | PF,
            false,
        ),
        (
            "popcnt32",
            nat!("popcnt {a:e}, {b:e}"),
            |c| c.popcnt(eax, ebx),
            0,
            false,
        ),
        ("bswap32", nat!("bswap {a:e}"), |c| c.bswap(eax), 0, false),
        ("bswap64", nat!("bswap {a}"), |c| c.bswap(rax), 0, false),
    ];
    for (name, n, b, undef, small) in cases {
        check(name, *n, *b, *undef, *small);
    }
}

#[test]
fn conditions_match_host() {
    // Every condition code after a compare, through SETcc and CMOVcc.
    let cases: &[(&str, Native, Build)] = &[
        ("cmp_seta", nat!("cmp {a:e}, {b:e}", "seta {a:l}"), |c| {
            c.cmp(eax, ebx)?;
            c.seta(al)
        }),
        ("cmp_setl", nat!("cmp {a}, {b}", "setl {a:l}"), |c| {
            c.cmp(rax, rbx)?;
            c.setl(al)
        }),
        ("cmp_setle", nat!("cmp {a:x}, {b:x}", "setle {a:l}"), |c| {
            c.cmp(ax, bx)?;
            c.setle(al)
        }),
        ("cmp_setg", nat!("cmp {a:l}, {b:l}", "setg {a:l}"), |c| {
            c.cmp(al, bl)?;
            c.setg(al)
        }),
        ("cmp_setge", nat!("cmp {a:e}, {b:e}", "setge {a:l}"), |c| {
            c.cmp(eax, ebx)?;
            c.setge(al)
        }),
        ("cmp_setbe", nat!("cmp {a}, {b}", "setbe {a:l}"), |c| {
            c.cmp(rax, rbx)?;
            c.setbe(al)
        }),
        ("add_seto", nat!("add {a:e}, {b:e}", "seto {a:l}"), |c| {
            c.add(eax, ebx)?;
            c.seto(al)
        }),
        ("add_setp", nat!("add {a:e}, {b:e}", "setp {a:l}"), |c| {
            c.add(eax, ebx)?;
            c.setp(al)
        }),
        ("sub_sets", nat!("sub {a}, {b}", "sets {a:l}"), |c| {
            c.sub(rax, rbx)?;
            c.sets(al)
        }),
        ("adc_setb", nat!("adc {a:x}, {b:x}", "setb {a:l}"), |c| {
            c.adc(ax, bx)?;
            c.setb(al)
        }),
        ("sbb_setbe", nat!("sbb {a:l}, {b:l}", "setbe {a:l}"), |c| {
            c.sbb(al, bl)?;
            c.setbe(al)
        }),
        ("dec_setle", nat!("dec {a:e}", "setle {a:l}"), |c| {
            c.dec(eax)?;
            c.setle(al)
        }),
        (
            "cmovl32",
            nat!("cmp {a:e}, {b:e}", "cmovl {a:e}, {b:e}"),
            |c| {
                c.cmp(eax, ebx)?;
                c.cmovl(eax, ebx)
            },
        ),
        ("cmovg64", nat!("cmp {a}, {b}", "cmovg {a}, {b}"), |c| {
            c.cmp(rax, rbx)?;
            c.cmovg(rax, rbx)
        }),
        (
            "cmovnb16",
            nat!("cmp {a:x}, {b:x}", "cmovnb {a:x}, {b:x}"),
            |c| {
                c.cmp(ax, bx)?;
                c.cmovae(ax, bx)
            },
        ),
        (
            "cmovp32",
            nat!("test {a:e}, {b:e}", "cmovp {a:e}, {b:e}"),
            |c| {
                c.test(eax, ebx)?;
                c.cmovp(eax, ebx)
            },
        ),
    ];
    for (name, n, b) in cases {
        check(name, *n, *b, 0, false);
    }
}

/// Whether DIV/IDIV of rdx:rax (ax for bytes) by `b` at width `w` raises #DE.
fn divide_faults(signed: bool, w: u32, a: u64, d: u64, b: u64) -> bool {
    let m = |v: u64| if w == 64 { v } else { v & ((1u64 << w) - 1) };
    let (hi, lo) = if w == 8 {
        ((a >> 8) & 0xff, a & 0xff)
    } else {
        (m(d), m(a))
    };
    let n = (u128::from(hi) << w) | u128::from(lo);
    if m(b) == 0 {
        return true;
    }
    if signed {
        let sn = ((n << (128 - 2 * w)) as i128) >> (128 - 2 * w);
        let sb = ((u128::from(m(b)) << (128 - w)) as i128) >> (128 - w);
        let q = sn / sb;
        let lim = 1i128 << (w - 1);
        !(-lim..lim).contains(&q)
    } else {
        (n / u128::from(m(b))) >> w != 0
    }
}

#[test]
fn divide_matches_host() {
    // All six flags are undefined after DIV/IDIV; the interpreter leaves them unchanged.
    let cases: &[(&str, Native, Build, bool, u32)] = &[
        ("div8", nat_acc!("div {b:l}"), |c| c.div(bl), false, 8),
        ("div16", nat_acc!("div {b:x}"), |c| c.div(bx), false, 16),
        ("div32", nat_acc!("div {b:e}"), |c| c.div(ebx), false, 32),
        ("div64", nat_acc!("div {b}"), |c| c.div(rbx), false, 64),
        ("idiv8", nat_acc!("idiv {b:l}"), |c| c.idiv(bl), true, 8),
        ("idiv16", nat_acc!("idiv {b:x}"), |c| c.idiv(bx), true, 16),
        ("idiv32", nat_acc!("idiv {b:e}"), |c| c.idiv(ebx), true, 32),
        ("idiv64", nat_acc!("idiv {b}"), |c| c.idiv(rbx), true, 64),
    ];
    let mut rng = Rng(12345);
    for (name, native, build, signed, w) in cases {
        let mut checked = 0;
        for i in 0..20000 {
            let a = rng.next();
            // Small high halves and divisors so that many cases do not overflow.
            let d = if i % 2 == 0 {
                rng.next() >> (64 - w / 2)
            } else {
                u64::MAX
            };
            let b = rng.next() >> (i % 64);
            if divide_faults(*signed, *w, a, d, b) {
                continue;
            }
            checked += 1;
            let f = rflags::FIXED1;
            let want = native(a, b, d, f);
            let got = interp(build, a, b, d, f);
            assert_eq!(
                (got.0, got.1),
                (want.0, want.1),
                "{name}: a={a:#x} b={b:#x} d={d:#x}"
            );
        }
        assert!(checked > 1000, "{name}: only {checked} non-faulting cases");
    }
}

#[test]
fn sign_extensions_match_host() {
    let cases: &[(&str, Native, Build)] = &[
        ("cbw", nat_acc!("cbw"), |c| c.cbw()),
        ("cwde", nat_acc!("cwde"), |c| c.cwde()),
        ("cdqe", nat_acc!("cdqe"), |c| c.cdqe()),
        ("cwd", nat_acc!("cwd"), |c| c.cwd()),
        ("cdq", nat_acc!("cdq"), |c| c.cdq()),
        ("cqo", nat_acc!("cqo"), |c| c.cqo()),
    ];
    for (name, n, b) in cases {
        check(name, *n, *b, 0, false);
    }
}
