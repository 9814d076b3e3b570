//! The instruction trace (`ringzero run --trace insn`): one record per executed guest
//! instruction, for people (text) or programs (JSON Lines).
//!
//! A record holds the instruction count (1-based), CPL, CPU mode, CS:RIP, the instruction's
//! bytes, its disassembly (Intel syntax by default, AT&T with `--syntax att`) and every
//! register it changed with old and new values. Exceptions and interrupts delivered between
//! instructions are records of their own. The schema of the JSON form is in `docs/trace.md`.
//!
//! Tracing costs nothing when off: the BT backend checks for a tracer once per slice of
//! instructions, and only a traced run steps one instruction at a time.

use std::fmt::Write as _;
use std::io::{self, Write};

use iced_x86::{Formatter, GasFormatter, Instruction, IntelFormatter};
use ringzero_translator::{CpuMode, CpuState};

/// Output format of the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line (schema in docs/trace.md).
    Jsonl,
}

/// Assembly syntax of the disassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Syntax {
    /// Intel syntax (`mov eax, 1`).
    Intel,
    /// AT&T syntax (`mov $1, %eax`).
    Att,
}

/// One register an instruction changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterWrite {
    /// Register name (lowercase, as in the disassembly).
    pub name: &'static str,
    /// Value before the instruction.
    pub old: u64,
    /// Value after it.
    pub new: u64,
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Every architectural register that differs between `before` and `after` (RIP excluded: the
/// record's address and the next record's give it).
pub fn written_registers(before: &CpuState, after: &CpuState) -> Vec<RegisterWrite> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, old: u64, new: u64| {
        if old != new {
            out.push(RegisterWrite { name, old, new });
        }
    };
    for (i, name) in GPR_NAMES.iter().enumerate() {
        check(name, before.gpr[i], after.gpr[i]);
    }
    check("rflags", before.rflags, after.rflags);
    let segs = [
        ("es", &before.es, &after.es),
        ("cs", &before.cs, &after.cs),
        ("ss", &before.ss, &after.ss),
        ("ds", &before.ds, &after.ds),
        ("fs", &before.fs, &after.fs),
        ("gs", &before.gs, &after.gs),
        ("ldtr", &before.ldtr, &after.ldtr),
        ("tr", &before.tr, &after.tr),
    ];
    for (name, b, a) in segs {
        check(name, u64::from(b.selector), u64::from(a.selector));
    }
    check("fs.base", before.fs.base, after.fs.base);
    check("gs.base", before.gs.base, after.gs.base);
    check("gdtr.base", before.gdtr.base, after.gdtr.base);
    check("idtr.base", before.idtr.base, after.idtr.base);
    check("cr0", before.cr0, after.cr0);
    check("cr2", before.cr2, after.cr2);
    check("cr3", before.cr3, after.cr3);
    check("cr4", before.cr4, after.cr4);
    check("cr8", before.cr8, after.cr8);
    check("efer", before.efer, after.efer);
    check(
        "mxcsr",
        u64::from(before.fpu.mxcsr),
        u64::from(after.fpu.mxcsr),
    );
    check("fcw", u64::from(before.fpu.fcw), u64::from(after.fpu.fcw));
    check("fsw", u64::from(before.fpu.fsw), u64::from(after.fpu.fsw));
    out
}

/// Short name of a CPU mode for trace records.
pub fn mode_name(mode: CpuMode) -> &'static str {
    match mode {
        CpuMode::Real => "real",
        CpuMode::Virtual8086 => "v86",
        CpuMode::Protected => "protected",
        CpuMode::Compat => "compat",
        CpuMode::Long64 => "long64",
    }
}

/// An exception or interrupt as the trace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// `exception`, `interrupt` (external), `software_interrupt`, `nmi` or `triple_fault`.
    pub what: &'static str,
    /// Vector.
    pub vector: u8,
    /// Error code pushed, if any.
    pub error: Option<u32>,
    /// CS selector where it happened.
    pub cs: u16,
    /// RIP where it happened (the faulting instruction, or the next one for traps and
    /// interrupts).
    pub rip: u64,
    /// CR2 for page faults.
    pub cr2: Option<u64>,
}

/// Writes trace records to a sink.
pub struct Tracer {
    out: Box<dyn Write + Send>,
    format: TraceFormat,
    formatter: Box<dyn Formatter>,
    count: u64,
    line: String,
    asm: String,
}

impl Tracer {
    /// A tracer writing `format` records with `syntax` disassembly to `out`.
    pub fn new(out: Box<dyn Write + Send>, format: TraceFormat, syntax: Syntax) -> Self {
        let mut formatter: Box<dyn Formatter> = match syntax {
            Syntax::Intel => Box::new(IntelFormatter::new()),
            Syntax::Att => Box::new(GasFormatter::new()),
        };
        formatter
            .options_mut()
            .set_space_after_operand_separator(true);
        formatter.options_mut().set_hex_prefix("0x");
        formatter.options_mut().set_hex_suffix("");
        formatter.options_mut().set_uppercase_hex(false);
        formatter
            .options_mut()
            .set_small_hex_numbers_in_decimal(false);
        Tracer {
            out,
            format,
            formatter,
            count: 0,
            line: String::new(),
            asm: String::new(),
        }
    }

    /// Instructions recorded so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Records one executed instruction: `before` is the state at its start, `after` the state
    /// once it completed.
    pub fn instruction(
        &mut self,
        before: &CpuState,
        after: &CpuState,
        insn: &Instruction,
        bytes: &[u8],
    ) -> io::Result<()> {
        self.count += 1;
        self.asm.clear();
        self.formatter.format(insn, &mut self.asm);
        let writes = written_registers(before, after);
        let mode = mode_name(before.mode());
        self.line.clear();
        let l = &mut self.line;
        match self.format {
            TraceFormat::Text => {
                let _ = write!(
                    l,
                    "{:>10} {} {:<9} {:04x}:{:016x} ",
                    self.count,
                    before.cpl(),
                    mode,
                    before.cs.selector,
                    before.rip
                );
                let mut hex = String::new();
                for b in bytes {
                    let _ = write!(hex, "{b:02x}");
                }
                let _ = write!(l, "{hex:<30} {:<40}", self.asm);
                for w in &writes {
                    let _ = write!(l, " {}={:#x}->{:#x}", w.name, w.old, w.new);
                }
            }
            TraceFormat::Jsonl => {
                let _ = write!(
                    l,
                    "{{\"type\":\"insn\",\"n\":{},\"cpl\":{},\"mode\":\"{mode}\",\"cs\":{},\"rip\":\"{:#x}\",\"bytes\":\"",
                    self.count,
                    before.cpl(),
                    before.cs.selector,
                    before.rip
                );
                for b in bytes {
                    let _ = write!(l, "{b:02x}");
                }
                l.push_str("\",\"asm\":");
                json_string(l, &self.asm);
                l.push_str(",\"writes\":[");
                for (i, w) in writes.iter().enumerate() {
                    if i > 0 {
                        l.push(',');
                    }
                    let _ = write!(
                        l,
                        "{{\"reg\":\"{}\",\"old\":\"{:#x}\",\"new\":\"{:#x}\"}}",
                        w.name, w.old, w.new
                    );
                }
                l.push_str("]}");
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Records an exception or interrupt delivered after the instructions counted so far.
    pub fn event(&mut self, e: &TraceEvent) -> io::Result<()> {
        self.line.clear();
        let l = &mut self.line;
        let what = e.what;
        let vector = e.vector;
        match self.format {
            TraceFormat::Text => {
                let _ = write!(
                    l,
                    "{:>10} {what} vector={vector}",
                    format!("@{}", self.count)
                );
                if let Some(err) = e.error {
                    let _ = write!(l, " error={err:#x}");
                }
                if let Some(cr2) = e.cr2 {
                    let _ = write!(l, " cr2={cr2:#x}");
                }
                let _ = write!(l, " at {:04x}:{:016x}", e.cs, e.rip);
            }
            TraceFormat::Jsonl => {
                let _ = write!(
                    l,
                    "{{\"type\":\"{what}\",\"after\":{},\"vector\":{vector},\"cs\":{},\"rip\":\"{:#x}\"",
                    self.count, e.cs, e.rip
                );
                if let Some(err) = e.error {
                    let _ = write!(l, ",\"error\":\"{err:#x}\"");
                }
                if let Some(cr2) = e.cr2 {
                    let _ = write!(l, ",\"cr2\":\"{cr2:#x}\"");
                }
                l.push('}');
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Flushes buffered records.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::sync::{Arc, Mutex};

    /// A sink tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mov_eax_1() -> (Instruction, Vec<u8>) {
        let bytes = vec![0xb8, 1, 0, 0, 0];
        let insn = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE).decode();
        (insn, bytes)
    }

    #[test]
    fn written_registers_lists_exactly_the_changes() {
        let a = CpuState::default();
        let mut b = a.clone();
        b.gpr[0] = 5;
        b.rflags |= 1;
        b.rip = 9;
        let w = written_registers(&a, &b);
        let names: Vec<_> = w.iter().map(|w| w.name).collect();
        assert_eq!(names, ["rax", "rflags"]);
        assert_eq!((w[0].old, w[0].new), (0, 5));
    }

    #[test]
    fn text_and_jsonl_records() {
        let (insn, bytes) = mov_eax_1();
        let before = CpuState::default();
        let mut after = before.clone();
        after.gpr[0] = 1;
        for (format, syntax, want) in [
            (TraceFormat::Text, Syntax::Intel, "mov eax, 0x1"),
            (TraceFormat::Text, Syntax::Att, "mov $0x1, %eax"),
        ] {
            let sink = Shared::default();
            let mut t = Tracer::new(Box::new(sink.clone()), format, syntax);
            t.instruction(&before, &after, &insn, &bytes).unwrap();
            let s = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert!(s.contains(want), "{s}");
            assert!(s.contains("b801000000"), "{s}");
            assert!(s.contains("rax=0x0->0x1"), "{s}");
            assert!(s.starts_with("         1 0 real"), "{s}");
        }
        let sink = Shared::default();
        let mut t = Tracer::new(Box::new(sink.clone()), TraceFormat::Jsonl, Syntax::Intel);
        t.instruction(&before, &after, &insn, &bytes).unwrap();
        t.event(&TraceEvent {
            what: "exception",
            vector: 14,
            error: Some(2),
            cs: 0,
            rip: 0,
            cr2: Some(0),
        })
        .unwrap();
        let s = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(
            lines[0],
            "{\"type\":\"insn\",\"n\":1,\"cpl\":0,\"mode\":\"real\",\"cs\":0,\"rip\":\"0x0\",\
             \"bytes\":\"b801000000\",\"asm\":\"mov eax, 0x1\",\"writes\":[{\"reg\":\"rax\",\
             \"old\":\"0x0\",\"new\":\"0x1\"}]}"
        );
        assert_eq!(
            lines[1],
            "{\"type\":\"exception\",\"after\":1,\"vector\":14,\"cs\":0,\"rip\":\"0x0\",\
             \"error\":\"0x2\",\"cr2\":\"0x0\"}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000a\"");
    }
}
