//! The translation log (`ringzero run --translation-log PATH`, BT only): every guest block the
//! translator decodes and what it became — the interpreter's decoded instructions, then, once
//! hot, the host machine code Cranelift emitted for it (disassembled), or why the JIT refused.
//!
//! Text for people, one record per translation event:
//!
//! ```text
//! decode  block 0x1000 (phys 0x1000): 3 instructions, 9 bytes
//!     0x1000  b801000000  mov eax, 0x1
//!     ...
//! compile block 0x1000 (phys 0x1000) after 1500 runs: 3 of 3 instructions -> 112 bytes of host code
//!     0x7f12a4c01000  55  push rbp
//!     ...
//! refuse  block 0x2000 (phys 0x2000): <reason>
//! ```

use std::fmt::Write as _;
use std::io::Write;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction};
use ringzero_translator::engine::{CacheKey, TranslationLog};

use super::{formatter, Syntax};

/// Writes translation records as text.
pub struct TranslationLogWriter {
    out: Box<dyn Write + Send>,
    formatter: Box<dyn Formatter>,
    line: String,
    /// The first write error (later records are dropped; reported by [`Self::finish`]).
    error: Option<std::io::Error>,
}

impl TranslationLogWriter {
    /// A log writing to `out` with `syntax` disassembly.
    pub fn new(out: Box<dyn Write + Send>, syntax: Syntax) -> Self {
        TranslationLogWriter {
            out,
            formatter: formatter(syntax),
            line: String::new(),
            error: None,
        }
    }

    fn emit(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(self.line.as_bytes()) {
                log::warn!("translation log: {e}; no further records");
                self.error = Some(e);
            }
        }
        self.line.clear();
    }

    fn insns(
        &mut self,
        linear_base: u64,
        insns: &[Instruction],
        bytes: impl Fn(&Instruction) -> String,
    ) {
        let mut asm = String::new();
        for i in insns {
            asm.clear();
            self.formatter.format(i, &mut asm);
            let _ = writeln!(
                self.line,
                "    {:#x}  {:<30} {asm}",
                linear_base.wrapping_add(i.ip()),
                bytes(i)
            );
        }
    }
}

impl TranslationLog for TranslationLogWriter {
    fn decoded(&mut self, key: &CacheKey, linear: u64, insns: &[Instruction], bytes: &[u8]) {
        let size: usize = insns.iter().map(Instruction::len).sum();
        let _ = writeln!(
            self.line,
            "decode  block {linear:#x} (phys {:#x}, {}-bit, cpl {}): {} instructions, {size} bytes",
            key.phys,
            key.block.code_bits,
            key.block.cpl,
            insns.len()
        );
        let base = linear.wrapping_sub(key.block.start);
        let start = key.block.start;
        self.insns(base, insns, |i| {
            let at = i.ip().wrapping_sub(start) as usize;
            let mut hex = String::new();
            for b in bytes.get(at..at + i.len()).unwrap_or_default() {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        });
        self.emit();
    }

    fn compiled(
        &mut self,
        key: &CacheKey,
        insns: &[Instruction],
        compiled: usize,
        runs: u64,
        host: &[u8],
    ) {
        let _ = writeln!(
            self.line,
            "compile block {:#x} (phys {:#x}) after {runs} runs: {compiled} of {} instructions -> {} bytes of host code",
            key.block.start,
            key.phys,
            insns.len(),
            host.len()
        );
        let mut d = Decoder::with_ip(64, host, host.as_ptr() as u64, DecoderOptions::NONE);
        let mut asm = String::new();
        while d.can_decode() {
            let at = d.position();
            let i = d.decode();
            asm.clear();
            self.formatter.format(&i, &mut asm);
            let mut hex = String::new();
            for b in host.get(at..at + i.len()).unwrap_or_default() {
                let _ = write!(hex, "{b:02x}");
            }
            let _ = writeln!(self.line, "    {:#x}  {hex:<30} {asm}", i.ip());
        }
        self.emit();
    }

    fn refused(&mut self, key: &CacheKey, why: &str) {
        let _ = writeln!(
            self.line,
            "refuse  block {:#x} (phys {:#x}): stays interpreted: {why}",
            key.block.start, key.phys
        );
        self.emit();
    }
}

impl Drop for TranslationLogWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
