//! The [`Emitter`] trait: the primitive 64-bit operations every tier implements.
//!
//! The semantics functions in [`crate::sem`] are generic over an emitter and hold all x86
//! knowledge. An emitter only knows 64-bit integer lanes, guest registers, guest memory and
//! structured control flow, so the interpreter (values are `u64`) and the Cranelift tier (values
//! are IR `Value`s in a `FunctionBuilder`) implement the same trait. Every method therefore has a
//! direct Cranelift counterpart; nothing lets the semantics branch in Rust on a run-time value.

use super::flags::FlagState;
use super::Exception;

/// A two-operand operation on 64-bit lanes.
///
/// Shift and rotate amounts are taken modulo 64 (as Cranelift and the host do); the semantics
/// masks x86 counts before using them. Comparisons yield 0 or 1. Division by zero and
/// `i64::MIN / -1` never reach an emitter: the semantics raises #DE first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// Wrapping addition.
    Add,
    /// Wrapping subtraction.
    Sub,
    /// Bitwise and.
    And,
    /// Bitwise or.
    Or,
    /// Bitwise exclusive or.
    Xor,
    /// Logical shift left.
    Shl,
    /// Logical shift right.
    Shr,
    /// Arithmetic shift right.
    Sar,
    /// Low 64 bits of the product.
    Mul,
    /// High 64 bits of the unsigned 128-bit product.
    UMulHi,
    /// High 64 bits of the signed 128-bit product.
    SMulHi,
    /// Unsigned quotient.
    UDiv,
    /// Unsigned remainder.
    URem,
    /// Signed quotient (truncating).
    SDiv,
    /// Signed remainder (sign of the dividend).
    SRem,
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// Unsigned `a < b`.
    Ult,
    /// Unsigned `a <= b`.
    Ule,
    /// Signed `a < b`.
    Slt,
}

/// A one-operand operation on 64-bit lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// Bitwise complement.
    Not,
    /// Two's complement negation.
    Neg,
    /// Number of set bits.
    Popcnt,
    /// Number of trailing zero bits (64 for zero).
    Ctz,
    /// Number of leading zero bits (64 for zero).
    Clz,
    /// Byte swap of all eight bytes.
    Bswap,
}

/// The segment registers whose bases address memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
}

/// Primitive operations one execution tier provides to the shared instruction semantics.
///
/// Translation-time facts (`code_bits`, `cpl`, `stack_bits`) are constants for one translation
/// and part of a translation's cache key; everything else is a run-time value of type `V`.
pub trait Emitter {
    /// A 64-bit value: `u64` in the interpreter, a Cranelift `Value` in the compiler.
    type V: Copy;

    /// A constant.
    fn imm(&mut self, v: u64) -> Self::V;
    /// A two-operand lane operation.
    fn bin(&mut self, op: BinOp, a: Self::V, b: Self::V) -> Self::V;
    /// A one-operand lane operation.
    fn un(&mut self, op: UnOp, a: Self::V) -> Self::V;
    /// `if c != 0 { a } else { b }`.
    fn select(&mut self, c: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// 128-by-64 division of `hi:lo` by `d`: (quotient, remainder, fault), with `fault` = 1 when
    /// `d` is 0 or the quotient does not fit 64 bits (signed or unsigned per `signed`); quotient
    /// and remainder are unspecified then.
    fn div_wide(
        &mut self,
        signed: bool,
        hi: Self::V,
        lo: Self::V,
        d: Self::V,
    ) -> (Self::V, Self::V, Self::V);

    /// Reads general-purpose register `r` (0..16, encoding order), all 64 bits.
    fn gpr(&mut self, r: usize) -> Self::V;
    /// Writes all 64 bits of general-purpose register `r`.
    fn set_gpr(&mut self, r: usize, v: Self::V);
    /// Reads the stored RFLAGS register (only meaningful after [`FlagState::Materialized`]).
    fn rflags(&mut self) -> Self::V;
    /// Writes the stored RFLAGS register.
    fn set_rflags(&mut self, v: Self::V);
    /// The lazy-flag descriptor of the last flag-setting operation (translation-time data).
    fn flag_state(&self) -> FlagState<Self::V>;
    /// Replaces the lazy-flag descriptor. Never called inside an [`Emitter::if_then`] body.
    fn set_flag_state(&mut self, s: FlagState<Self::V>);
    /// The cached base of segment `s`.
    fn seg_base(&mut self, s: Seg) -> Self::V;
    /// The visible selector of segment register `s` (zero-extended). Segment registers only
    /// change in the monitor, so this is constant within a block.
    fn seg_selector(&mut self, s: Seg) -> Self::V;

    /// Ends the instruction with a control transfer to `target` (instead of falling through).
    fn set_rip(&mut self, target: Self::V);

    /// Loads `size` (1, 2, 4 or 8) bytes little-endian from linear address `addr`, zero-extended.
    fn load(&mut self, addr: Self::V, size: u8) -> Result<Self::V, Exception>;
    /// Loads the destination of a read-modify-write instruction: like [`Emitter::load`], but
    /// translated for writing ([`crate::mem::GuestMem::read_for_write`]).
    fn load_rmw(&mut self, addr: Self::V, size: u8) -> Result<Self::V, Exception>;
    /// Runs up to `count` iterations of a forward REP MOVS/STOS in bulk
    /// ([`crate::mem::GuestMem::string_bulk`]); returns how many ran (0: use the element path).
    fn string_bulk(
        &mut self,
        op: crate::mem::StringOp,
        size: u8,
        src: Self::V,
        dst: Self::V,
        count: Self::V,
        value: Self::V,
    ) -> Self::V;
    /// Stores the low `size` bytes of `v` at linear address `addr`.
    fn store(&mut self, addr: Self::V, v: Self::V, size: u8) -> Result<(), Exception>;
    /// Raises `exc` when `cond` != 0; the instruction has made no architectural change yet.
    fn raise(&mut self, cond: Self::V, exc: Exception) -> Result<(), Exception>;
    /// Runs `then` only when `cond` != 0 (a conditional region in compiled code).
    fn if_then<F>(&mut self, cond: Self::V, then: F) -> Result<(), Exception>
    where
        F: FnOnce(&mut Self) -> Result<(), Exception>;

    /// Default operand and address size of the code segment: 16, 32 or 64.
    fn code_bits(&self) -> u32;
    /// Stack-pointer width: 64 in 64-bit mode, else 32 or 16 by SS.B.
    fn stack_bits(&self) -> u32;
    /// Current privilege level.
    fn cpl(&self) -> u8;
    /// Whether data accesses are alignment-checked when RFLAGS.AC is set: CR0.AM and CPL 3
    /// (SDM Vol. 3 §6.15, interrupt 17). RFLAGS.AC itself is a run-time value (POPF can change
    /// it inside a block); this part is a translation-time constant.
    fn alignment_checks(&self) -> bool;

    /// Wrapping `a + b`.
    fn add(&mut self, a: Self::V, b: Self::V) -> Self::V {
        self.bin(BinOp::Add, a, b)
    }
    /// Wrapping `a - b`.
    fn sub(&mut self, a: Self::V, b: Self::V) -> Self::V {
        self.bin(BinOp::Sub, a, b)
    }
    /// `a & b`.
    fn and(&mut self, a: Self::V, b: Self::V) -> Self::V {
        self.bin(BinOp::And, a, b)
    }
    /// `a | b`.
    fn or(&mut self, a: Self::V, b: Self::V) -> Self::V {
        self.bin(BinOp::Or, a, b)
    }
    /// `a ^ b`.
    fn xor(&mut self, a: Self::V, b: Self::V) -> Self::V {
        self.bin(BinOp::Xor, a, b)
    }
    /// `a & imm`.
    fn and_i(&mut self, a: Self::V, imm: u64) -> Self::V {
        let b = self.imm(imm);
        self.and(a, b)
    }
    /// `a | imm`.
    fn or_i(&mut self, a: Self::V, imm: u64) -> Self::V {
        let b = self.imm(imm);
        self.or(a, b)
    }
    /// `a + imm` (wrapping).
    fn add_i(&mut self, a: Self::V, imm: u64) -> Self::V {
        let b = self.imm(imm);
        self.add(a, b)
    }
    /// `a << n` for a constant `n` < 64.
    fn shl_i(&mut self, a: Self::V, n: u32) -> Self::V {
        let b = self.imm(u64::from(n));
        self.bin(BinOp::Shl, a, b)
    }
    /// `a >> n` (logical) for a constant `n` < 64.
    fn shr_i(&mut self, a: Self::V, n: u32) -> Self::V {
        let b = self.imm(u64::from(n));
        self.bin(BinOp::Shr, a, b)
    }
    /// `a == imm` as 0/1.
    fn eq_i(&mut self, a: Self::V, imm: u64) -> Self::V {
        let b = self.imm(imm);
        self.bin(BinOp::Eq, a, b)
    }
    /// `a != imm` as 0/1.
    fn ne_i(&mut self, a: Self::V, imm: u64) -> Self::V {
        let b = self.imm(imm);
        self.bin(BinOp::Ne, a, b)
    }
    /// Zero-extends the low `bits` of `a` (`bits` in 1..=64).
    fn zext(&mut self, a: Self::V, bits: u32) -> Self::V {
        if bits >= 64 {
            a
        } else {
            self.and_i(a, (1u64 << bits) - 1)
        }
    }
    /// Sign-extends the low `bits` of `a` (`bits` in 1..=64).
    fn sext(&mut self, a: Self::V, bits: u32) -> Self::V {
        if bits >= 64 {
            a
        } else {
            let up = self.shl_i(a, 64 - bits);
            let n = self.imm(u64::from(64 - bits));
            self.bin(BinOp::Sar, up, n)
        }
    }
    /// Bit `n` of `a` as 0/1.
    fn bit(&mut self, a: Self::V, n: u32) -> Self::V {
        let s = self.shr_i(a, n);
        self.and_i(s, 1)
    }
}
