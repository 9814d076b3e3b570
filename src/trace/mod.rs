//! The instruction trace (`ringzero run --trace insn`): one record per executed guest
//! instruction, for people (text) or programs (JSON Lines).
//!
//! A record holds the instruction count (1-based, counting every instruction of the run),
//! CPL, CPU mode, CS:RIP, the instruction's bytes, its disassembly (Intel syntax by default,
//! AT&T with `--syntax att`), every register it changed with old and new values, and the
//! memory it read and wrote ([`memory`]). Exceptions and interrupts delivered between
//! instructions are records of their own. [`filter`] selects what is recorded; the
//! translation log ([`translations`]) is a separate file. The schema of the JSON form is in
//! `docs/trace.md`.
//!
//! Both backends produce the same records: the BT steps its engine one instruction at a time
//! while the filter may admit the next instruction and runs at full speed (stopping at the
//! filter's addresses) otherwise; KVM single-steps the guest. Tracing costs nothing when off.

use std::fmt::Write as _;
use std::io::{self, Write};

use iced_x86::{Formatter, GasFormatter, Instruction, IntelFormatter};
use ringzero_translator::jit::fetch_linear;
use ringzero_translator::{CpuMode, CpuState};

pub mod filter;
pub mod kvm_step;
pub mod memory;
pub mod translations;

use filter::FilterState;
pub use filter::{AddressRange, CountWindow, CplFilter, Plan, TraceFilter, Trigger};
pub use memory::{MemAccess, TraceMemory};

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
    /// CPL where it happened (before delivery).
    pub cpl: u8,
}

/// An instruction the filter admitted, between [`Tracer::begin`] and [`Tracer::finish`].
pub struct Pending {
    n: u64,
    before: Box<CpuState>,
    insn: Instruction,
    bytes: [u8; 15],
    len: usize,
    mem: Vec<MemAccess>,
    trap: Option<&'static str>,
}

impl Pending {
    /// Marks the instruction as run by the monitor, trapped out of translated code (the BT's
    /// trap kind, as `--stats` names it).
    pub fn set_trap(&mut self, kind: &'static str) {
        self.trap = Some(kind);
    }
}

/// Writes trace records to a sink.
pub struct Tracer {
    out: Box<dyn Write + Send>,
    format: TraceFormat,
    formatter: Box<dyn Formatter>,
    filter: TraceFilter,
    state: FilterState,
    /// Stop after this many instruction records (`--trace-limit`).
    limit: Option<u64>,
    /// The count of the last instruction that ran (recorded or not; events follow it).
    last: u64,
    records: u64,
    line: String,
    asm: String,
}

impl Tracer {
    /// A tracer writing `format` records with `syntax` disassembly to `out`, recording every
    /// instruction.
    pub fn new(out: Box<dyn Write + Send>, format: TraceFormat, syntax: Syntax) -> Self {
        Tracer {
            out,
            format,
            formatter: formatter(syntax),
            filter: TraceFilter::default(),
            state: FilterState::recording(),
            limit: None,
            last: 0,
            records: 0,
            line: String::new(),
            asm: String::new(),
        }
    }

    /// Records only what `filter` admits.
    pub fn with_filter(mut self, filter: TraceFilter) -> Self {
        self.state = filter.initial_state();
        self.filter = filter;
        self
    }

    /// Stops recording after `limit` instruction records.
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    /// Instruction records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether nothing will be recorded any more (stop trigger fired, window passed).
    pub fn done(&self) -> bool {
        self.state.stopped
    }

    /// What the backend should do before instruction number `n` (1-based) at `linear`, `cpl`.
    pub fn plan(&self, n: u64, linear: u64, cpl: u8) -> Plan {
        self.filter.plan(&self.state, n, linear, cpl)
    }

    /// The linear ranges a full-speed run must stop at (see [`TraceFilter::stop_points`]).
    pub fn stop_points(&self) -> Vec<(u64, u64)> {
        self.filter.stop_points(&self.state)
    }

    /// Instruction number `n` (1-based in the run) is about to run in state `before`: returns
    /// what [`Tracer::finish`] needs when the filter admits it (reading the memory it will
    /// read now), or `None`. `bytes` are its encoding; `ram` the guest's RAM.
    pub fn begin(
        &mut self,
        n: u64,
        before: &CpuState,
        insn: &Instruction,
        bytes: &[u8],
        ram: &dyn TraceMemory,
    ) -> Option<Pending> {
        let linear = fetch_linear(before);
        if !self.filter.admit(&mut self.state, n, linear, before.cpl()) {
            return None;
        }
        let mut b = [0u8; 15];
        let len = bytes.len().min(15);
        b[..len].copy_from_slice(&bytes[..len]);
        Some(Pending {
            n,
            before: Box::new(before.clone()),
            insn: *insn,
            bytes: b,
            len,
            mem: memory::accesses(insn, before, ram),
            trap: None,
        })
    }

    /// Notes that instruction number `n` ran, recorded or not (events are placed after it).
    pub fn ran(&mut self, n: u64) {
        self.last = n;
    }

    /// Writes the record of an instruction [`Tracer::begin`] admitted, which completed with
    /// state `after` (an instruction that faulted has no record: drop its `Pending`).
    pub fn finish(
        &mut self,
        p: Pending,
        after: &CpuState,
        ram: &dyn TraceMemory,
    ) -> io::Result<()> {
        let Pending {
            n,
            before,
            insn,
            bytes,
            len,
            mut mem,
            trap,
        } = p;
        let (mode_to, cpl_to) = (after.mode(), after.cpl());
        let mode_switch = (mode_to != before.mode()).then(|| mode_name(mode_to));
        let cpl_switch = (cpl_to != before.cpl()).then_some(cpl_to);
        self.last = n;
        self.records += 1;
        if self.limit.is_some_and(|l| self.records >= l) {
            self.state.stopped = true;
        }
        memory::fill_writes(&mut mem, &before, ram);
        let bytes = &bytes[..len];
        self.asm.clear();
        self.formatter.format(&insn, &mut self.asm);
        let writes = written_registers(&before, after);
        let mode = mode_name(before.mode());
        self.line.clear();
        let l = &mut self.line;
        match self.format {
            TraceFormat::Text => {
                let _ = write!(
                    l,
                    "{n:>10} {} {:<9} {:04x}:{:016x} ",
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
                for m in &mem {
                    let _ = write!(l, " {}[{:#x}", if m.write { "W" } else { "R" }, m.linear);
                    if let Some(p) = m.phys.filter(|&p| p != m.linear) {
                        let _ = write!(l, " p{p:#x}");
                    }
                    let _ = write!(l, " {}]=", m.size);
                    match &m.value {
                        Some(v) => push_value(l, v),
                        None => l.push('?'),
                    }
                }
                if let Some(c) = cpl_switch {
                    let _ = write!(l, " cpl:{}->{c}", before.cpl());
                }
                if let Some(m) = mode_switch {
                    let _ = write!(l, " mode:{mode}->{m}");
                }
                if let Some(t) = trap {
                    let _ = write!(l, " trap:{t}");
                }
            }
            TraceFormat::Jsonl => {
                let _ = write!(
                    l,
                    "{{\"type\":\"insn\",\"n\":{n},\"cpl\":{},\"mode\":\"{mode}\",\"cs\":{},\"rip\":\"{:#x}\",\"bytes\":\"",
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
                l.push_str("],\"mem\":[");
                for (i, m) in mem.iter().enumerate() {
                    if i > 0 {
                        l.push(',');
                    }
                    let _ = write!(
                        l,
                        "{{\"op\":\"{}\",\"linear\":\"{:#x}\",\"phys\":",
                        if m.write { "w" } else { "r" },
                        m.linear
                    );
                    match m.phys {
                        Some(p) => {
                            let _ = write!(l, "\"{p:#x}\"");
                        }
                        None => l.push_str("null"),
                    }
                    let _ = write!(l, ",\"size\":{},\"value\":", m.size);
                    match &m.value {
                        Some(v) => {
                            l.push('"');
                            push_value(l, v);
                            l.push('"');
                        }
                        None => l.push_str("null"),
                    }
                    l.push('}');
                }
                l.push(']');
                if let Some(c) = cpl_switch {
                    let _ = write!(l, ",\"cpl_to\":{c}");
                }
                if let Some(m) = mode_switch {
                    let _ = write!(l, ",\"mode_to\":\"{m}\"");
                }
                if let Some(t) = trap {
                    let _ = write!(l, ",\"trap\":\"{t}\"");
                }
                l.push('}');
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Records an exception or interrupt delivered after the last instruction that ran, if
    /// the filter admits it.
    pub fn event(&mut self, e: &TraceEvent) -> io::Result<()> {
        if !self
            .filter
            .admit_event(&self.state, self.last, e.rip, e.cpl)
        {
            return Ok(());
        }
        self.line.clear();
        let l = &mut self.line;
        let what = e.what;
        let vector = e.vector;
        match self.format {
            TraceFormat::Text => {
                let _ = write!(
                    l,
                    "{:>10} {what} vector={vector}",
                    format!("@{}", self.last)
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
                    "{{\"type\":\"{what}\",\"after\":{},\"vector\":{vector},\"cs\":{},\"rip\":\"{:#x}\",\"cpl\":{}",
                    self.last, e.cs, e.rip, e.cpl
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

/// The disassembler for `syntax`, set up as the trace prints instructions.
pub fn formatter(syntax: Syntax) -> Box<dyn Formatter> {
    let mut formatter: Box<dyn Formatter> = match syntax {
        Syntax::Intel => Box::new(IntelFormatter::new()),
        Syntax::Att => Box::new(GasFormatter::new()),
    };
    let o = formatter.options_mut();
    o.set_space_after_operand_separator(true);
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_small_hex_numbers_in_decimal(false);
    formatter
}

/// Appends a value: a little-endian number (`0x...`) up to 8 bytes, else the bytes in memory
/// order.
fn push_value(l: &mut String, v: &[u8]) {
    if v.len() <= 8 {
        let mut b = [0u8; 8];
        b[..v.len()].copy_from_slice(v);
        let _ = write!(l, "{:#x}", u64::from_le_bytes(b));
    } else {
        for b in v {
            let _ = write!(l, "{b:02x}");
        }
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

    /// No RAM at all.
    struct NoRam;

    impl TraceMemory for NoRam {
        fn read_ram(&self, _phys: u64, _buf: &mut [u8]) -> bool {
            false
        }
    }

    /// Records one instruction as number `n`.
    fn record(
        t: &mut Tracer,
        n: u64,
        before: &CpuState,
        after: &CpuState,
        insn: &Instruction,
        bytes: &[u8],
    ) {
        if let Some(p) = t.begin(n, before, insn, bytes, &NoRam) {
            t.finish(p, after, &NoRam).unwrap();
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
            record(&mut t, 1, &before, &after, &insn, &bytes);
            let s = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert!(s.contains(want), "{s}");
            assert!(s.contains("b801000000"), "{s}");
            assert!(s.contains("rax=0x0->0x1"), "{s}");
            assert!(s.starts_with("         1 0 real"), "{s}");
        }
        let sink = Shared::default();
        let mut t = Tracer::new(Box::new(sink.clone()), TraceFormat::Jsonl, Syntax::Intel);
        record(&mut t, 1, &before, &after, &insn, &bytes);
        t.event(&TraceEvent {
            what: "exception",
            vector: 14,
            error: Some(2),
            cs: 0,
            rip: 0,
            cr2: Some(0),
            cpl: 0,
        })
        .unwrap();
        let s = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(
            lines[0],
            "{\"type\":\"insn\",\"n\":1,\"cpl\":0,\"mode\":\"real\",\"cs\":0,\"rip\":\"0x0\",\
             \"bytes\":\"b801000000\",\"asm\":\"mov eax, 0x1\",\"writes\":[{\"reg\":\"rax\",\
             \"old\":\"0x0\",\"new\":\"0x1\"}],\"mem\":[]}"
        );
        assert_eq!(
            lines[1],
            "{\"type\":\"exception\",\"after\":1,\"vector\":14,\"cs\":0,\"rip\":\"0x0\",\
             \"cpl\":0,\"error\":\"0x2\",\"cr2\":\"0x0\"}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000a\"");
    }
}
