//! Comparing two outcomes of one case, printing a divergence, and shrinking the reproducer.
//!
//! The comparison is the contract of `ringzero difftest`: every GPR, RIP, RFLAGS (less the
//! flags the manuals leave undefined, see [`super::flags`]), every byte of the data region, and
//! the exception. In 32-bit mode only the low halves of EAX..EDI and EIP are architectural: the
//! SDM (Vol. 1, 3.4.1.1) leaves the upper halves undefined outside 64-bit mode.

use std::fmt::Write as _;

use iced_x86::{Encoder, Formatter, Instruction, IntelFormatter};
use ringzero_translator::state::{rflags, FpuState};

use super::flags::{sequence_undefined_flags, sequence_undefined_fsw};
use super::gen::{decode, is_branch};
use super::{Case, Mode, Outcome, CODE_BASE, DATA_BASE};

/// The RFLAGS bits a case can observe and change at ring 3 (CF..OF, DF, AC, ID, NT, TF).
const COMPARED_FLAGS: u64 = 0x0000_0000_0026_4fd5;

/// Register names in encoding order.
pub const REG_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// The result of comparing an outcome against the oracle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Flags not compared because the manuals leave them undefined here.
    pub masked_flags: u64,
    /// x87 condition codes (FSW bits 8-10, 14) not compared: left undefined by the last x87
    /// instruction that wrote them (see [`super::flags::fsw_condition_codes`]).
    pub masked_fsw: u16,
    /// One line per differing field (empty: the outcomes agree).
    pub differences: Vec<String>,
}

impl Comparison {
    /// Whether the outcomes agree.
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares `actual` against the oracle's `expected` outcome of `case`.
pub fn compare(case: &Case, mode: Mode, expected: &Outcome, actual: &Outcome) -> Comparison {
    let insns = decode(case, mode);
    let masked_flags = sequence_undefined_flags(&insns, case.regs[1], expected.rip);
    let masked_fsw = sequence_undefined_fsw(&insns, expected.rip);
    let mut differences = Vec::new();
    let nregs = if mode == Mode::Long64 { 16 } else { 8 };
    let w = mode.width_mask();
    for (i, name) in REG_NAMES.iter().enumerate().take(nregs) {
        let (e, a) = (expected.regs[i] & w, actual.regs[i] & w);
        if e != a {
            differences.push(format!("{name}: expected {e:#x}, got {a:#x}"));
        }
    }
    if expected.rip & w != actual.rip & w {
        differences.push(format!(
            "rip: expected {:#x}, got {:#x}",
            expected.rip & w,
            actual.rip & w
        ));
    }
    let keep = COMPARED_FLAGS & !masked_flags;
    if expected.rflags & keep != actual.rflags & keep {
        differences.push(format!(
            "rflags: expected {:#x} [{}], got {:#x} [{}] (differing: {})",
            expected.rflags,
            flag_names(expected.rflags),
            actual.rflags,
            flag_names(actual.rflags),
            flag_names((expected.rflags ^ actual.rflags) & keep)
        ));
    }
    if expected.exception != actual.exception {
        differences.push(format!(
            "exception: expected {}, got {}",
            exception_text(expected.exception),
            exception_text(actual.exception)
        ));
    }
    let bytes: Vec<usize> = expected
        .data
        .iter()
        .zip(actual.data.iter())
        .enumerate()
        .filter(|(_, (e, a))| e != a)
        .map(|(i, _)| i)
        .collect();
    if expected.data.len() != actual.data.len() {
        differences.push(format!(
            "data: expected {} bytes, got {}",
            expected.data.len(),
            actual.data.len()
        ));
    }
    for &i in bytes.iter().take(16) {
        differences.push(format!(
            "mem[{:#x}]: expected {:#04x}, got {:#04x}",
            DATA_BASE + i as u64,
            expected.data[i],
            actual.data[i]
        ));
    }
    if bytes.len() > 16 {
        differences.push(format!("... {} differing bytes in all", bytes.len()));
    }
    compare_fpu(&expected.fpu, &actual.fpu, masked_fsw, &mut differences);
    Comparison {
        masked_flags,
        masked_fsw,
        differences,
    }
}

/// The 80-bit register image (sign/exponent word and significand) as one hex number.
fn st_hex(st: &[u8; 16]) -> String {
    let se = u16::from_le_bytes([st[8], st[9]]);
    let mut sig = [0u8; 8];
    sig.copy_from_slice(&st[..8]);
    format!("{se:04x}:{:016x}", u64::from_le_bytes(sig))
}

/// An XMM register as two 64-bit halves, high first.
fn xmm_hex(x: &[u8; 16]) -> String {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&x[..8]);
    hi.copy_from_slice(&x[8..]);
    format!(
        "{:016x}_{:016x}",
        u64::from_le_bytes(hi),
        u64::from_le_bytes(lo)
    )
}

/// The x87/SSE part of an initial state: control/status words, the stack registers (with their
/// tags: `v` valid, `-` empty) and the non-zero XMM registers.
fn write_fpu_state(s: &mut String, f: &FpuState) {
    let top = (f.fsw >> 11) & 7;
    let _ = writeln!(
        s,
        "  fcw={:#06x} fsw={:#06x} (top {top}) ftw={:#04x} mxcsr={:#x}",
        f.fcw, f.fsw, f.ftw, f.mxcsr
    );
    for (i, st) in f.st.iter().enumerate() {
        // The abridged tag word is by physical register: ST(i) is R((TOP + i) mod 8).
        let phys = (usize::from(top) + i) & 7;
        let tag = if f.ftw >> phys & 1 == 1 { 'v' } else { '-' };
        let _ = write!(s, "  st({i})={}{tag}", st_hex(st));
        if i % 4 == 3 {
            s.push('\n');
        }
    }
    for (i, x) in f.xmm.iter().enumerate() {
        if *x != [0; 16] {
            let _ = writeln!(s, "  xmm{i}={}", xmm_hex(x));
        }
    }
}

/// Compares the x87/MMX/SSE state: ST0-7 (the 80 bits FXSAVE stores, in stack order; bytes
/// 10-15 of each slot are reserved), FCW, FSW less `masked_fsw`, the abridged tag word,
/// XMM0-15 and MXCSR. FOP, FIP and FDP are not compared (see docs/difftest.md: AMD CPUs keep
/// them only while an exception is pending, and the BT does not model FCS/FDS).
fn compare_fpu(e: &FpuState, a: &FpuState, masked_fsw: u16, d: &mut Vec<String>) {
    for i in 0..8 {
        if e.st[i][..10] != a.st[i][..10] {
            d.push(format!(
                "st({i}): expected {}, got {}",
                st_hex(&e.st[i]),
                st_hex(&a.st[i])
            ));
        }
    }
    if e.fcw != a.fcw {
        d.push(format!("fcw: expected {:#06x}, got {:#06x}", e.fcw, a.fcw));
    }
    if (e.fsw ^ a.fsw) & !masked_fsw != 0 {
        d.push(format!(
            "fsw: expected {:#06x}, got {:#06x} (differing: {:#06x}; masked {:#06x})",
            e.fsw,
            a.fsw,
            (e.fsw ^ a.fsw) & !masked_fsw,
            masked_fsw
        ));
    }
    if e.ftw != a.ftw {
        d.push(format!("ftw: expected {:#04x}, got {:#04x}", e.ftw, a.ftw));
    }
    for i in 0..16 {
        if e.xmm[i] != a.xmm[i] {
            d.push(format!(
                "xmm{i}: expected {}, got {}",
                xmm_hex(&e.xmm[i]),
                xmm_hex(&a.xmm[i])
            ));
        }
    }
    if e.mxcsr != a.mxcsr {
        d.push(format!(
            "mxcsr: expected {:#x}, got {:#x}",
            e.mxcsr, a.mxcsr
        ));
    }
}

/// "CF ZF ..." for the arithmetic and control flags set in `f`.
pub fn flag_names(f: u64) -> String {
    let names = [
        (rflags::CF, "CF"),
        (rflags::PF, "PF"),
        (rflags::AF, "AF"),
        (rflags::ZF, "ZF"),
        (rflags::SF, "SF"),
        (rflags::TF, "TF"),
        (rflags::DF, "DF"),
        (rflags::OF, "OF"),
        (rflags::NT, "NT"),
        (rflags::AC, "AC"),
        (rflags::ID, "ID"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(" ")
}

fn exception_text(e: Option<(u8, Option<u32>)>) -> String {
    match e {
        None => "none (reached the final int3)".into(),
        Some((v, None)) => format!("vector {v}"),
        Some((v, Some(code))) => format!("vector {v} error code {code:#x}"),
    }
}

/// Intel-syntax disassembly of the case, one instruction per line with address and bytes.
pub fn disassemble(case: &Case, mode: Mode) -> String {
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    for insn in decode(case, mode) {
        let mut text = String::new();
        f.format(&insn, &mut text);
        let start = (insn.ip() - CODE_BASE) as usize;
        let bytes = case
            .code
            .get(start..start + insn.len())
            .map(hex)
            .unwrap_or_default();
        let _ = writeln!(out, "  {:#010x}  {:<30} {}", insn.ip(), bytes, text);
    }
    out
}

/// Bytes as lowercase hex pairs separated by spaces.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command that reruns case `index` alone (`--family` only when the case's family was
/// chosen on the command line; otherwise the generator picks it from the seed and index).
pub fn rerun_command(seed: u64, index: u64, mode: Mode, family: Option<&str>) -> String {
    let family = family.map(|f| format!(" --family {f}")).unwrap_or_default();
    format!(
        "ringzero difftest --seed {seed} --mode {}{family} --start {index} --cases 1",
        mode.bitness()
    )
}

/// The full divergence report: how to rerun it, the code, the initial state, both final states
/// side by side with differing fields marked, and the flags that were masked.
#[allow(clippy::too_many_arguments)]
pub fn format_divergence(
    seed: u64,
    index: u64,
    family: Option<&str>,
    case: &Case,
    mode: Mode,
    expected: (&str, &Outcome),
    actual: (&str, &Outcome),
    cmp: &Comparison,
) -> String {
    let (en, e) = expected;
    let (an, a) = actual;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "DIVERGENCE seed={seed} case={index} mode={} family={}",
        mode.bitness(),
        family.unwrap_or("any")
    );
    let _ = writeln!(s, "  rerun: {}", rerun_command(seed, index, mode, family));
    let _ = writeln!(s, "code ({} bytes): {}", case.code.len(), hex(&case.code));
    s.push_str(&disassemble(case, mode));
    let _ = writeln!(s, "initial state:");
    for (i, name) in REG_NAMES.iter().enumerate() {
        let _ = write!(s, "  {name:>3}={:#018x}", case.regs[i]);
        if i % 4 == 3 {
            s.push('\n');
        }
    }
    let _ = writeln!(
        s,
        "  rflags={:#x} [{}]",
        case.entry_rflags(),
        flag_names(case.entry_rflags())
    );
    if case.fpu != FpuState::default() {
        write_fpu_state(&mut s, &case.fpu);
    }
    let _ = writeln!(s, "final states:   {en:<20} {an:<20}");
    let w = mode.width_mask();
    let row = |s: &mut String, name: &str, x: u64, y: u64, differs: bool| {
        let mark = if differs { "  <<<" } else { "" };
        let _ = writeln!(s, "  {name:>7}  {x:#020x} {y:#020x}{mark}");
    };
    for (i, name) in REG_NAMES.iter().enumerate() {
        row(
            &mut s,
            name,
            e.regs[i],
            a.regs[i],
            e.regs[i] & w != a.regs[i] & w,
        );
    }
    row(&mut s, "rip", e.rip, a.rip, e.rip & w != a.rip & w);
    let keep = COMPARED_FLAGS & !cmp.masked_flags;
    row(
        &mut s,
        "rflags",
        e.rflags,
        a.rflags,
        e.rflags & keep != a.rflags & keep,
    );
    let _ = writeln!(
        s,
        "  exception {:<20} {:<20}{}",
        exception_text(e.exception),
        exception_text(a.exception),
        if e.exception != a.exception {
            "  <<<"
        } else {
            ""
        }
    );
    if cmp.masked_flags != 0 {
        let _ = writeln!(
            s,
            "masked (undefined per the SDM for the last writer): {}",
            flag_names(cmp.masked_flags)
        );
    }
    let _ = writeln!(s, "differences:");
    for d in &cmp.differences {
        let _ = writeln!(s, "  {d}");
    }
    s
}

/// Re-encodes `insns` from [`CODE_BASE`] followed by `int3`; `None` if one cannot be encoded.
fn reencode(insns: &[Instruction], mode: Mode) -> Option<Vec<u8>> {
    let mut enc = Encoder::new(mode.bitness());
    let mut ip = CODE_BASE;
    for i in insns {
        ip += enc.encode(i, ip).ok()? as u64;
    }
    let mut code = enc.take_buffer();
    code.push(0xcc);
    Some(code)
}

/// Shrinks a diverging case by dropping instructions one at a time while `still_diverges`
/// holds. Cases with branches are returned unchanged (dropping an instruction would move the
/// targets). RIP-relative operands keep their absolute target when re-encoded.
pub fn minimize(case: &Case, mode: Mode, mut still_diverges: impl FnMut(&Case) -> bool) -> Case {
    let mut insns = decode(case, mode);
    // The final int3 is the terminator, not part of the sequence.
    if insns.last().map(|i| i.code()) == Some(iced_x86::Code::Int3) {
        insns.pop();
    }
    if insns.iter().any(is_branch) {
        return case.clone();
    }
    let mut best = case.clone();
    let mut i = 0;
    while i < insns.len() && insns.len() > 1 {
        let mut fewer = insns.clone();
        fewer.remove(i);
        let candidate = reencode(&fewer, mode).map(|code| Case {
            code,
            ..best.clone()
        });
        match candidate {
            Some(c) if still_diverges(&c) => {
                insns = fewer;
                best = c;
            }
            _ => i += 1,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difftest::DATA_SIZE;

    fn case(code: &[u8]) -> Case {
        Case {
            code: code.to_vec(),
            regs: [0; 16],
            rflags: 0,
            data: vec![0; DATA_SIZE as usize],
            fpu: FpuState::default(),
        }
    }

    fn outcome(rax: u64, rflags: u64) -> Outcome {
        let mut regs = [0; 16];
        regs[0] = rax;
        Outcome {
            regs,
            rip: CODE_BASE + 3,
            rflags,
            data: vec![0; DATA_SIZE as usize],
            exception: None,
            fpu: FpuState::default(),
        }
    }

    #[test]
    fn mul_masks_its_undefined_flags_but_not_cf() {
        // mul rbx; int3
        let c = case(&[0x48, 0xf7, 0xe3, 0xcc]);
        let e = outcome(1, 0x202);
        let a = outcome(1, 0x202 | rflags::ZF | rflags::SF);
        assert!(compare(&c, Mode::Long64, &e, &a).agrees());
        let a = outcome(1, 0x202 | rflags::CF);
        let cmp = compare(&c, Mode::Long64, &e, &a);
        assert!(!cmp.agrees());
        let text = format_divergence(
            1,
            2,
            Some("muldiv"),
            &c,
            Mode::Long64,
            ("kvm", &e),
            ("bt", &a),
            &cmp,
        );
        assert!(text.contains("mul rbx"), "{text}");
        assert!(
            text.contains(
                "rerun: ringzero difftest --seed 1 --mode 64 --family muldiv --start 2 --cases 1"
            ),
            "{text}"
        );
        assert_eq!(
            rerun_command(9, 4, Mode::Long64, None),
            "ringzero difftest --seed 9 --mode 64 --start 4 --cases 1"
        );
        assert!(text.contains("<<<"), "{text}");
        assert!(text.contains("--seed 1"), "{text}");
    }

    #[test]
    fn compat_mode_compares_low_halves_only() {
        let c = case(&[0x01, 0xd8, 0xcc]);
        let e = outcome(0x1_0000_0005, 0x202);
        let a = outcome(0x5, 0x202);
        assert!(compare(&c, Mode::Compat32, &e, &a).agrees());
        assert!(!compare(&c, Mode::Long64, &e, &a).agrees());
    }

    #[test]
    fn fpu_state_is_compared_except_undefined_condition_codes() {
        // fadd st, st(1); int3 — C0, C2, C3 undefined afterwards, C1 defined.
        let c = case(&[0xd8, 0xc1, 0xcc]);
        let e = outcome(0, 0x202);
        let mut a = outcome(0, 0x202);
        a.fpu.fsw |= 0x4500;
        assert!(compare(&c, Mode::Long64, &e, &a).agrees());
        a.fpu.fsw |= 0x0200;
        let cmp = compare(&c, Mode::Long64, &e, &a);
        assert_eq!(cmp.masked_fsw, 0x4500);
        assert!(cmp.differences[0].starts_with("fsw:"), "{cmp:?}");
        let mut a = outcome(0, 0x202);
        a.fpu.st[3][9] = 0x80;
        a.fpu.st[3][12] = 0x55; // reserved bytes are not compared
        a.fpu.xmm[15][0] = 1;
        a.fpu.mxcsr |= 0x20;
        a.fpu.ftw = 1;
        let d = compare(&c, Mode::Long64, &e, &a).differences;
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d[0].contains("st(3): expected 0000:0000000000000000, got 8000:"));
        assert!(d.iter().any(|l| l.starts_with("xmm15:")));
    }

    #[test]
    fn minimizer_drops_irrelevant_instructions() {
        // nop; add rax, rbx; nop; int3 — "diverges" while the add is present.
        let c = case(&[0x90, 0x48, 0x01, 0xd8, 0x90, 0xcc]);
        let m = minimize(&c, Mode::Long64, |k| {
            k.code.windows(3).any(|w| w == [0x48, 0x01, 0xd8])
        });
        assert_eq!(m.code, vec![0x48, 0x01, 0xd8, 0xcc]);
    }
}
