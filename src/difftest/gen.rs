//! Deterministic random test cases: valid instruction sequences with random state.
//!
//! `generate(seed, index, mode, family)` depends on nothing else, so case N of seed S can be
//! reproduced on its own. Instructions come from iced-x86's opcode tables: every legacy-encoded
//! form of a family's mnemonics valid in the mode, with operands filled by kind (registers of
//! the right size, immediates biased to edge values, memory operands inside the data region).
//!
//! Invariants every case keeps (checked per instruction with iced-x86's instruction info, and
//! the instruction is redrawn when one fails):
//! - a few "reserved" registers are never written: RSP (outside the stack family), the pointer
//!   and index registers that memory operands are built from, and family-specific ones (RSI, RDI
//!   and RCX for strings), so every memory address is known from the initial state;
//! - every memory access lands in the data region ([`DATA_BASE`], [`DATA_SIZE`]);
//! - no instruction reads a flag that an earlier instruction left undefined (so undefined flags
//!   never leak into registers; only RFLAGS needs masking, see [`super::flags`]);
//! - control flow only goes forward, and the one loop form has a small constant count, so every
//!   case terminates at its final `int3`.

use iced_x86::{
    Code, Encoder, EncodingKind, FlowControl, Instruction, InstructionInfoFactory, MemoryOperand,
    Mnemonic, OpAccess, OpCodeOperandKind as K, Register, RepPrefixKind,
};

use super::flags::{defined_flags, eflags_from_iced, undefined_flags};
use super::{Case, Mode, DATA_BASE, DATA_SIZE, FS_BASE, GS_BASE, STACK_TOP};
use ringzero_translator::state::rflags;

/// Family names accepted by `--family`.
pub const FAMILY_NAMES: &[&str] = &[
    "alu",
    "shift",
    "muldiv",
    "bit",
    "stack",
    "control",
    "string",
    "cmov_setcc",
    "misc",
];

/// An instruction family: what a case's instructions are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// mov/movzx/movsx/lea/xchg/bswap/movbe, add..xor, inc/dec/neg/not, xadd/cmpxchg.
    Alu,
    /// shl/shr/sar/rol/ror/rcl/rcr/shld/shrd by 1, immediate and CL.
    Shift,
    /// mul/imul/div/idiv and the sign extensions cbw..cqo.
    MulDiv,
    /// bt/bts/btr/btc, bsf/bsr, tzcnt/lzcnt/popcnt.
    Bit,
    /// push/pop/pushf/popf/enter/leave with ALU filler.
    Stack,
    /// jcc/jmp/call/ret/loop/jrcxz, forward only.
    Control,
    /// movs/stos/lods/cmps/scas with rep prefixes and DF.
    String,
    /// setcc/cmovcc after flag producers.
    CmovSetcc,
    /// lahf/sahf, clc/stc/cmc, nops, xlat, cmpxchg8b/16b, BCD adjusts (32-bit), ud2.
    Misc,
}

impl Family {
    /// All families in `FAMILY_NAMES` order.
    pub const ALL: [Family; 9] = [
        Family::Alu,
        Family::Shift,
        Family::MulDiv,
        Family::Bit,
        Family::Stack,
        Family::Control,
        Family::String,
        Family::CmovSetcc,
        Family::Misc,
    ];

    /// The family called `name`.
    pub fn from_name(name: &str) -> Option<Family> {
        FAMILY_NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| Family::ALL.get(i).copied())
    }

    /// The family's `--family` name.
    pub fn name(self) -> &'static str {
        FAMILY_NAMES
            .get(Family::ALL.iter().position(|f| *f == self).unwrap_or(0))
            .copied()
            .unwrap_or("alu")
    }

    /// Mnemonics drawn through the generic opcode-table builder.
    fn mnemonics(self) -> &'static [Mnemonic] {
        use Mnemonic as M;
        match self {
            Family::Alu | Family::Stack | Family::Control => &[
                M::Mov,
                M::Movzx,
                M::Movsx,
                M::Movsxd,
                M::Lea,
                M::Xchg,
                M::Bswap,
                M::Movbe,
                M::Add,
                M::Adc,
                M::Sub,
                M::Sbb,
                M::Cmp,
                M::And,
                M::Or,
                M::Xor,
                M::Test,
                M::Inc,
                M::Dec,
                M::Neg,
                M::Not,
                M::Xadd,
                M::Cmpxchg,
            ],
            Family::Shift => &[
                M::Shl,
                M::Shr,
                M::Sar,
                M::Rol,
                M::Ror,
                M::Rcl,
                M::Rcr,
                M::Shld,
                M::Shrd,
            ],
            Family::MulDiv => &[
                M::Mul,
                M::Imul,
                M::Div,
                M::Idiv,
                M::Cbw,
                M::Cwde,
                M::Cdqe,
                M::Cwd,
                M::Cdq,
                M::Cqo,
            ],
            Family::Bit => &[
                M::Bt,
                M::Bts,
                M::Btr,
                M::Btc,
                M::Bsf,
                M::Bsr,
                M::Tzcnt,
                M::Lzcnt,
                M::Popcnt,
            ],
            Family::String => &[M::Add, M::Sub, M::Cmp, M::Mov, M::Xor],
            Family::CmovSetcc => &[
                M::Add,
                M::Sub,
                M::Cmp,
                M::Test,
                M::Adc,
                M::Sbb,
                M::Neg,
                M::Inc,
                M::Dec,
                M::Cmovo,
                M::Cmovno,
                M::Cmovb,
                M::Cmovae,
                M::Cmove,
                M::Cmovne,
                M::Cmovbe,
                M::Cmova,
                M::Cmovs,
                M::Cmovns,
                M::Cmovp,
                M::Cmovnp,
                M::Cmovl,
                M::Cmovge,
                M::Cmovle,
                M::Cmovg,
                M::Seto,
                M::Setno,
                M::Setb,
                M::Setae,
                M::Sete,
                M::Setne,
                M::Setbe,
                M::Seta,
                M::Sets,
                M::Setns,
                M::Setp,
                M::Setnp,
                M::Setl,
                M::Setge,
                M::Setle,
                M::Setg,
            ],
            Family::Misc => &[
                M::Lahf,
                M::Sahf,
                M::Clc,
                M::Stc,
                M::Cmc,
                M::Nop,
                M::Pause,
                M::Cmpxchg8b,
                M::Cmpxchg16b,
                M::Daa,
                M::Das,
                M::Aaa,
                M::Aas,
                M::Aam,
                M::Aad,
                M::Ud2,
                M::Add,
                M::Sub,
            ],
        }
    }
}

/// xorshift64* (Vigna): small, fast, good enough for test generation, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for case `index` of `seed` (the pair is mixed with splitmix64).
    pub fn new(seed: u64, index: u64) -> Rng {
        let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.get(self.below(items.len() as u64) as usize).copied()
    }

    /// A value of `bits` bits biased towards edge cases (0, 1, -1, min, max, bits-1, bits, ...).
    pub fn edge(&mut self, bits: u32) -> u64 {
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let sign = 1u64 << (bits.clamp(1, 64) - 1);
        let v = match self.below(12) {
            0 => 0,
            1 => 1,
            2 => mask,
            3 => sign,
            4 => sign - 1,
            5 => u64::from(bits - 1),
            6 => u64::from(bits),
            7 => self.below(64),
            8 => mask ^ self.below(16),
            _ => self.next_u64(),
        };
        v & mask
    }
}

/// GPRs in encoding order at each size (index = register number).
const R64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];
const R32: [Register; 16] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::ESP,
    Register::EBP,
    Register::ESI,
    Register::EDI,
    Register::R8D,
    Register::R9D,
    Register::R10D,
    Register::R11D,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];
const R16: [Register; 16] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::SP,
    Register::BP,
    Register::SI,
    Register::DI,
    Register::R8W,
    Register::R9W,
    Register::R10W,
    Register::R11W,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
const R8: [Register; 16] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::SPL,
    Register::BPL,
    Register::SIL,
    Register::DIL,
    Register::R8L,
    Register::R9L,
    Register::R10L,
    Register::R11L,
    Register::R12L,
    Register::R13L,
    Register::R14L,
    Register::R15L,
];
const R8_HIGH: [Register; 4] = [Register::AH, Register::CH, Register::DH, Register::BH];

/// The GPR number (0..16) a register belongs to.
pub fn gpr_index(r: Register) -> Option<usize> {
    let full = r.full_register();
    R64.iter().position(|x| *x == full)
}

/// The value of register `r` (any size, AH..BH included) given the 16 full registers.
pub fn register_value(r: Register, regs: &[u64; 16]) -> Option<u64> {
    let idx = gpr_index(r)?;
    let full = *regs.get(idx)?;
    if R8_HIGH.contains(&r) {
        return Some((full >> 8) & 0xff);
    }
    Some(match r.size() {
        1 => full & 0xff,
        2 => full & 0xffff,
        4 => full & 0xffff_ffff,
        _ => full,
    })
}

/// The linear address of memory access `element`-th of `insn`'s explicit memory operand, from
/// the case's initial registers and the entry segment bases.
pub fn memory_operand_address(insn: &Instruction, operand: u32, regs: &[u64; 16]) -> Option<u64> {
    insn.virtual_address(operand, 0, |r, _, _| segment_or_gpr(r, regs))
}

fn segment_or_gpr(r: Register, regs: &[u64; 16]) -> Option<u64> {
    match r {
        Register::FS => Some(FS_BASE),
        Register::GS => Some(GS_BASE),
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        _ => register_value(r, regs),
    }
}

/// Margin kept between generated addresses and the data region's edges.
const MARGIN: u64 = 0x40;

/// One instruction of a case being built, with its forward branch target if any.
#[derive(Clone)]
struct Item {
    insn: Instruction,
    /// Index of the target item (`items.len()` = the final `int3`).
    target: Option<usize>,
}

/// State of one case under construction.
struct Builder {
    mode: Mode,
    family: Family,
    rng: Rng,
    regs: [u64; 16],
    /// Bit i set: GPR i must not be written.
    reserved: u16,
    /// The pointer register (memory operands' base) and the index register.
    ptr: usize,
    idx: usize,
    /// Flags left undefined by the instructions so far.
    undef: u64,
    /// CL at this point if still the initial value.
    cl: Option<u8>,
    items: Vec<Item>,
    /// Item ranges (first, last, owner) that only their owner (a call or loop) may branch into.
    protected: Vec<(usize, usize, usize)>,
    factory: InstructionInfoFactory,
    codes: &'static [Code],
}

/// Generates case `index` of `seed` for `mode`, drawing from `family` (or a random family per
/// case when `None`).
pub fn generate(seed: u64, index: u64, mode: Mode, family: Option<Family>) -> Case {
    let mut rng = Rng::new(seed, index);
    let family = family.unwrap_or_else(|| {
        let f = rng.below(Family::ALL.len() as u64) as usize;
        Family::ALL.get(f).copied().unwrap_or(Family::Alu)
    });
    let mut b = Builder::new(mode, family, rng);
    b.fill();
    let code = b.encode();
    let mut rflags = b.rng.next_u64() & super::RFLAGS_CASE_BITS;
    if family != Family::String {
        rflags &= !rflags::DF;
    }
    let mut data = vec![0u8; DATA_SIZE as usize];
    for chunk in data.chunks_mut(8) {
        let v = match b.rng.below(8) {
            0 => 0,
            1 => u64::MAX,
            _ => b.rng.next_u64(),
        };
        for (i, byte) in chunk.iter_mut().enumerate() {
            *byte = (v >> (8 * i)) as u8;
        }
    }
    Case {
        code,
        regs: b.regs,
        rflags,
        data,
    }
}

/// [`family_codes`], computed once per family and mode (scanning iced's tables is slow).
fn cached_family_codes(family: Family, mode: Mode) -> &'static [Code] {
    static TABLES: std::sync::OnceLock<Vec<Vec<Code>>> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        Family::ALL
            .iter()
            .flat_map(|f| [Mode::Long64, Mode::Compat32].map(|m| family_codes(*f, m)))
            .collect()
    });
    let f = Family::ALL.iter().position(|x| *x == family).unwrap_or(0);
    let m = usize::from(mode == Mode::Compat32);
    tables.get(f * 2 + m).map(Vec::as_slice).unwrap_or(&[])
}

/// Codes of `family` usable in `mode` whose operands the builder knows how to fill.
fn family_codes(family: Family, mode: Mode) -> Vec<Code> {
    let wanted = family.mnemonics();
    Code::values()
        .filter(|c| {
            let info = c.op_code();
            info.is_instruction()
                && info.encoding() == EncodingKind::Legacy
                // Forms that need a special decoder option (486 A-step CMPXCHG, ...) are not
                // what current CPUs decode.
                && info.decoder_option() == iced_x86::DecoderOptions::NONE
                && wanted.contains(&c.mnemonic())
                && match mode {
                    Mode::Long64 => info.mode64(),
                    Mode::Compat32 => info.mode32(),
                }
                && info.op_kinds().iter().all(|k| supported_kind(*k))
        })
        .collect()
}

fn supported_kind(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_opcode
            | K::r16_rm
            | K::r32_reg
            | K::r32_opcode
            | K::r32_rm
            | K::r64_reg
            | K::r64_opcode
            | K::r64_rm
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
    )
}

/// An operand value before the instruction is created.
#[derive(Clone, Copy)]
enum Op {
    Reg(Register),
    Mem(MemoryOperand),
    U32(u32),
    I32(i32),
    U64(u64),
}

fn create(code: Code, ops: &[Op]) -> Option<Instruction> {
    use Op::*;
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(a)] => Instruction::with1(code, a),
        [U32(a)] => Instruction::with1(code, a),
        [I32(a)] => Instruction::with1(code, a),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(b)] => Instruction::with2(code, a, b),
        [Reg(a), U32(b)] => Instruction::with2(code, a, b),
        [Reg(a), I32(b)] => Instruction::with2(code, a, b),
        [Reg(a), U64(b)] => Instruction::with2(code, a, b),
        [Mem(a), Reg(b)] => Instruction::with2(code, a, b),
        [Mem(a), U32(b)] => Instruction::with2(code, a, b),
        [Mem(a), I32(b)] => Instruction::with2(code, a, b),
        [Reg(a), Reg(b), Reg(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Reg(b), U32(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Reg(b), I32(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Mem(b), U32(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Mem(b), I32(c)] => Instruction::with3(code, a, b, c),
        [Mem(a), Reg(b), Reg(c)] => Instruction::with3(code, a, b, c),
        [Mem(a), Reg(b), U32(c)] => Instruction::with3(code, a, b, c),
        [Mem(a), Reg(b), I32(c)] => Instruction::with3(code, a, b, c),
        _ => return None,
    };
    r.ok()
}

/// Mnemonics that accept a `lock` prefix with a memory destination.
fn lockable(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Add
            | M::Adc
            | M::Sub
            | M::Sbb
            | M::And
            | M::Or
            | M::Xor
            | M::Inc
            | M::Dec
            | M::Neg
            | M::Not
            | M::Xadd
            | M::Cmpxchg
            | M::Bts
            | M::Btr
            | M::Btc
            | M::Cmpxchg8b
            | M::Cmpxchg16b
    )
}

impl Builder {
    fn new(mode: Mode, family: Family, mut rng: Rng) -> Builder {
        let nregs = if mode == Mode::Long64 { 16 } else { 8 };
        let mut regs = [0u64; 16];
        for r in regs.iter_mut().take(nregs) {
            *r = match mode {
                Mode::Long64 => {
                    let bits = rng.pick(&[8u32, 16, 32, 64, 64, 64]).unwrap_or(64);
                    let v = rng.edge(bits);
                    // Narrow values sometimes sign-extended, so both halves see edges.
                    if rng.chance(1, 3) && bits < 64 && v >> (bits - 1) & 1 == 1 {
                        v | (u64::MAX << bits)
                    } else {
                        v
                    }
                }
                Mode::Compat32 => rng.edge(32),
            };
        }
        regs[4] = STACK_TOP;
        let mut reserved = 1u16 << 4;
        let pick_free = |rng: &mut Rng, reserved: &mut u16| -> usize {
            loop {
                let i = rng.below(nregs as u64) as usize;
                if *reserved & (1 << i) == 0 {
                    *reserved |= 1 << i;
                    return i;
                }
            }
        };
        if family == Family::String {
            // RSI, RDI and RCX are the string registers; keep them for the string ops.
            reserved |= (1 << 1) | (1 << 6) | (1 << 7);
        }
        let ptr = pick_free(&mut rng, &mut reserved);
        let idx = pick_free(&mut rng, &mut reserved);
        regs[ptr] = DATA_BASE + 0xe00 + rng.below(0x400);
        regs[idx] = (rng.below(0x81) as i64 - 0x40) as u64;
        if mode == Mode::Compat32 {
            regs[idx] &= 0xffff_ffff;
        }
        if family == Family::String {
            regs[1] = rng.below(17);
            regs[6] = DATA_BASE + 0x400 + rng.below(0x800);
            regs[7] = DATA_BASE + 0x1000 + rng.below(0x800);
        }
        if family == Family::Stack {
            // RBP points into the stack page for enter/leave.
            reserved |= 1 << 5;
            regs[5] = STACK_TOP + 0x100 + (rng.below(0x40) & !7);
        }
        let codes = cached_family_codes(family, mode);
        Builder {
            mode,
            family,
            rng,
            cl: Some(regs[1] as u8),
            regs,
            reserved,
            ptr,
            idx,
            undef: 0,
            items: Vec::new(),
            protected: Vec::new(),
            factory: InstructionInfoFactory::new(),
            codes,
        }
    }

    fn nregs(&self) -> u64 {
        if self.mode == Mode::Long64 {
            16
        } else {
            8
        }
    }

    /// A register of `bytes` size (any GPR; the written-register check rejects reserved ones).
    fn reg(&mut self, bytes: u32) -> Register {
        let i = self.rng.below(self.nregs()) as usize;
        let table = match bytes {
            1 => {
                if self.rng.chance(1, 4) {
                    return R8_HIGH[i & 3];
                }
                if self.mode == Mode::Compat32 && i >= 4 {
                    return R8_HIGH[i & 3];
                }
                &R8
            }
            2 => &R16,
            4 => &R32,
            _ => &R64,
        };
        table[i]
    }

    /// A memory operand of `size` bytes inside the data region.
    fn mem(&mut self, size: u64) -> MemoryOperand {
        let wide = self.mode == Mode::Long64;
        let ptr = if wide { R64[self.ptr] } else { R32[self.ptr] };
        let idx = if wide { R64[self.idx] } else { R32[self.idx] };
        let disp = self.rng.below(0x101) as i64 - 0x80;
        match self.rng.below(if wide { 6 } else { 5 }) {
            0 => MemoryOperand::with_base(ptr),
            1 => MemoryOperand::with_base_displ(ptr, disp),
            2 => {
                let scale = 1 << self.rng.below(4);
                MemoryOperand::with_base_index_scale_displ_size(ptr, idx, scale, disp, 1)
            }
            3 => {
                let addr = DATA_BASE + MARGIN + self.rng.below(0x2000 - 2 * MARGIN - size);
                // A 32-bit absolute address (SIB with no base in 64-bit mode).
                MemoryOperand::with_displ(addr, 4)
            }
            4 => {
                let (seg, base) = if self.rng.chance(1, 2) {
                    (Register::FS, FS_BASE)
                } else {
                    (Register::GS, GS_BASE)
                };
                // Offsets from the segment base into the data pages (GS starts at the second).
                let room = DATA_BASE + 0x2000 - base;
                let off = MARGIN + self.rng.below(room - 2 * MARGIN - size);
                MemoryOperand::new(Register::None, Register::None, 1, off as i64, 4, false, seg)
            }
            _ => {
                let addr = DATA_BASE + MARGIN + self.rng.below(0x2000 - 2 * MARGIN - size);
                MemoryOperand::with_base_displ(Register::RIP, addr as i64)
            }
        }
    }

    fn imm(&mut self, kind: K) -> Op {
        match kind {
            K::imm8_const_1 => Op::U32(1),
            K::imm8 => Op::U32(self.rng.edge(8) as u32),
            K::imm16 => Op::U32(self.rng.edge(16) as u32),
            K::imm32 => Op::U32(self.rng.edge(32) as u32),
            K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => {
                Op::I32(self.rng.edge(8) as u8 as i8 as i32)
            }
            K::imm32sex64 => Op::I32(self.rng.edge(32) as u32 as i32),
            _ => Op::U64(self.rng.edge(64)),
        }
    }

    /// One random instruction from the family's opcode table.
    fn table_insn(&mut self) -> Option<Instruction> {
        let code = self.rng.pick(self.codes)?;
        let info = code.op_code();
        let mut ops = Vec::with_capacity(4);
        // The largest access any of these forms makes (cmpxchg16b); margins are sized for it.
        let mem_size = |_: Code| -> u64 { 16 };
        for &k in info.op_kinds() {
            let op = match k {
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                    let bytes = match k {
                        K::r8_or_mem => 1,
                        K::r16_or_mem => 2,
                        K::r32_or_mem => 4,
                        _ => 8,
                    };
                    if self.rng.chance(1, 3) {
                        let m = self.mem(mem_size(code).max(bytes));
                        Op::Mem(m)
                    } else {
                        Op::Reg(self.reg(bytes as u32))
                    }
                }
                K::mem => Op::Mem(self.mem(mem_size(code))),
                K::r8_reg | K::r8_opcode => Op::Reg(self.reg(1)),
                K::r16_reg | K::r16_opcode | K::r16_rm => Op::Reg(self.reg(2)),
                K::r32_reg | K::r32_opcode | K::r32_rm => Op::Reg(self.reg(4)),
                K::r64_reg | K::r64_opcode | K::r64_rm => Op::Reg(self.reg(8)),
                K::al => Op::Reg(Register::AL),
                K::cl => Op::Reg(Register::CL),
                K::ax => Op::Reg(Register::AX),
                K::eax => Op::Reg(Register::EAX),
                K::rax => Op::Reg(Register::RAX),
                other => self.imm(other),
            };
            ops.push(op);
        }
        // A register bit offset addresses memory beyond the operand: use the small index
        // register so the access stays inside the data region.
        if matches!(
            code.mnemonic(),
            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
        ) {
            if let [Op::Mem(_), Op::Reg(r)] = ops.as_mut_slice() {
                let table = match r.size() {
                    2 => &R16,
                    4 => &R32,
                    _ => &R64,
                };
                *r = table[self.idx];
            }
        }
        let mut insn = create(code, &ops)?;
        // 16-bit SHLD/SHRD with a count above 16 has an undefined result: keep immediates <= 16.
        if matches!(insn.mnemonic(), Mnemonic::Shld | Mnemonic::Shrd)
            && insn.op0_register().size() == 2
            || matches!(insn.mnemonic(), Mnemonic::Shld | Mnemonic::Shrd)
                && insn.memory_size().size() == 2
        {
            if insn.op_kind(2) == iced_x86::OpKind::Register {
                return None;
            }
            insn.set_immediate8(insn.immediate8() % 17);
        }
        if matches!(ops.first(), Some(Op::Mem(_)))
            && lockable(insn.mnemonic())
            && self.rng.chance(1, 4)
        {
            insn.set_has_lock_prefix(true);
        }
        Some(insn)
    }

    /// A string instruction with a random element size, prefix and segment.
    fn string_insn(&mut self) -> Option<Instruction> {
        let asz = self.mode.bitness();
        let rep = match self.rng.below(3) {
            0 => RepPrefixKind::None,
            1 => RepPrefixKind::Repe,
            _ => RepPrefixKind::Repne,
        };
        let sizes: &[u32] = if self.mode == Mode::Long64 {
            &[1, 2, 4, 8]
        } else {
            &[1, 2, 4]
        };
        let sz = self.rng.pick(sizes).unwrap_or(1);
        let seg = Register::None;
        let r = match (self.rng.below(5), sz) {
            (0, 1) => Instruction::with_movsb(asz, seg, rep),
            (0, 2) => Instruction::with_movsw(asz, seg, rep),
            (0, 4) => Instruction::with_movsd(asz, seg, rep),
            (0, _) => Instruction::with_movsq(asz, seg, rep),
            (1, 1) => Instruction::with_stosb(asz, rep),
            (1, 2) => Instruction::with_stosw(asz, rep),
            (1, 4) => Instruction::with_stosd(asz, rep),
            (1, _) => Instruction::with_stosq(asz, rep),
            (2, 1) => Instruction::with_lodsb(asz, seg, rep),
            (2, 2) => Instruction::with_lodsw(asz, seg, rep),
            (2, 4) => Instruction::with_lodsd(asz, seg, rep),
            (2, _) => Instruction::with_lodsq(asz, seg, rep),
            (3, 1) => Instruction::with_cmpsb(asz, seg, rep),
            (3, 2) => Instruction::with_cmpsw(asz, seg, rep),
            (3, 4) => Instruction::with_cmpsd(asz, seg, rep),
            (3, _) => Instruction::with_cmpsq(asz, seg, rep),
            (_, 1) => Instruction::with_scasb(asz, rep),
            (_, 2) => Instruction::with_scasw(asz, rep),
            (_, 4) => Instruction::with_scasd(asz, rep),
            (_, _) => Instruction::with_scasq(asz, rep),
        };
        r.ok()
    }

    /// A stack instruction: push/pop of registers, immediates and memory, pushf, a controlled
    /// popf, enter and leave.
    fn stack_insn(&mut self) -> Option<Vec<Instruction>> {
        let wide = self.mode == Mode::Long64;
        let one = |r: Result<Instruction, iced_x86::IcedError>| r.ok().map(|i| vec![i]);
        match self.rng.below(9) {
            0 => {
                let c = if wide { Code::Push_r64 } else { Code::Push_r32 };
                let r = if wide { R64 } else { R32 };
                one(Instruction::with1(
                    c,
                    r[self.rng.below(self.nregs()) as usize],
                ))
            }
            1 => {
                let (c, r) = if wide {
                    (Code::Pop_r64, self.reg(8))
                } else {
                    (Code::Pop_r32, self.reg(4))
                };
                one(Instruction::with1(c, r))
            }
            2 => one(Instruction::with1(Code::Push_r16, self.reg(2))),
            3 => {
                let c = if wide {
                    Code::Pushq_imm32
                } else {
                    Code::Pushd_imm32
                };
                one(Instruction::with1(c, self.rng.edge(32) as u32 as i32))
            }
            4 => {
                let c = if wide {
                    Code::Push_rm64
                } else {
                    Code::Push_rm32
                };
                let m = self.mem(8);
                one(Instruction::with1(c, m))
            }
            5 => {
                let c = if wide { Code::Pop_rm64 } else { Code::Pop_rm32 };
                let m = self.mem(8);
                one(Instruction::with1(c, m))
            }
            6 => {
                // popf only of a value we pushed: TF clear (single-step would end the case),
                // the other user-writable bits random.
                let v = (self.rng.next_u64() as u32) & !(rflags::TF as u32);
                let (pc, fc) = if wide {
                    (Code::Pushq_imm32, Code::Popfq)
                } else {
                    (Code::Pushd_imm32, Code::Popfd)
                };
                let push = Instruction::with1(pc, v as i32).ok()?;
                Some(vec![push, Instruction::with(fc)])
            }
            7 => {
                let c = if wide { Code::Pushfq } else { Code::Pushfd };
                Some(vec![Instruction::with(c)])
            }
            _ => {
                let c = if wide {
                    Code::Enterq_imm16_imm8
                } else {
                    Code::Enterd_imm16_imm8
                };
                let size = self.rng.below(0x40) as u32;
                let level = self.rng.below(4) as u32;
                let enter = Instruction::with2(c, size, level).ok()?;
                let lc = if wide { Code::Leaveq } else { Code::Leaved };
                if self.rng.chance(1, 2) {
                    Some(vec![enter, Instruction::with(lc)])
                } else {
                    Some(vec![enter])
                }
            }
        }
    }

    /// Checks the invariants for `insn` and, if they hold, commits its flag effects.
    fn accept(&mut self, insn: &Instruction, implicit_stack: bool) -> bool {
        let mut enc = Encoder::new(self.mode.bitness());
        if enc.encode(insn, 0x20_0000).is_err() {
            return false;
        }
        if implicit_stack
            && insn.op_count() > 0
            && insn.op0_kind() == iced_x86::OpKind::Register
            && matches!(gpr_index(insn.op0_register()), Some(4 | 5))
        {
            return false;
        }
        let reads = eflags_from_iced(insn.rflags_read());
        if reads & self.undef != 0 {
            return false;
        }
        let info = self.factory.info(insn);
        let mut writes_rcx = false;
        for u in info.used_registers() {
            let written = !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None | OpAccess::NoMemAccess
            );
            if !written {
                continue;
            }
            let Some(i) = gpr_index(u.register()) else {
                continue;
            };
            let stack_op = implicit_stack && (i == 4 || i == 5);
            let string_op = self.family == Family::String
                && matches!(i, 1 | 6 | 7)
                && insn.is_string_instruction();
            if self.reserved & (1 << i) != 0 && !stack_op && !string_op {
                return false;
            }
            writes_rcx |= i == 1;
        }
        for m in info.used_memory() {
            let implicit =
                matches!(m.base(), Register::RSP | Register::ESP) || insn.is_string_instruction();
            if implicit {
                continue;
            }
            let size = m.memory_size().size().max(1) as u64;
            let Some(addr) = m.virtual_address(0, |r, _, _| segment_or_gpr(r, &self.regs)) else {
                return false;
            };
            let addr = addr & self.mode.width_mask();
            // `lea` computes but does not access; everything else must stay inside.
            if insn.mnemonic() != Mnemonic::Lea
                && insn.mnemonic() != Mnemonic::Nop
                && !(addr >= DATA_BASE && addr + size <= DATA_BASE + DATA_SIZE)
            {
                return false;
            }
        }
        self.undef = (self.undef & !defined_flags(insn, self.cl)) | undefined_flags(insn, self.cl);
        if writes_rcx {
            self.cl = None;
        }
        true
    }

    fn push(&mut self, insn: Instruction, target: Option<usize>) {
        self.items.push(Item { insn, target });
    }

    /// Fills the case with 1-8 instructions of the family.
    fn fill(&mut self) {
        let n = 1 + self.rng.below(8) as usize;
        if self.family == Family::Control {
            self.fill_control(n);
            return;
        }
        let mut tries = 0;
        while self.items.len() < n && tries < 200 {
            tries += 1;
            let stack = self.family == Family::Stack && self.rng.chance(2, 3);
            let group = match self.family {
                Family::String if self.rng.chance(2, 3) => self.string_insn().map(|i| vec![i]),
                Family::Stack if stack => self.stack_insn(),
                _ => self.table_insn().map(|i| vec![i]),
            };
            let Some(group) = group else { continue };
            let saved = (self.undef, self.cl);
            if group.iter().all(|i| self.accept(i, stack)) {
                for i in group {
                    self.push(i, None);
                }
            } else {
                (self.undef, self.cl) = saved;
            }
        }
    }

    /// Forward branches over filler instructions with fully defined flags.
    fn fill_control(&mut self, n: usize) {
        let wide = self.mode == Mode::Long64;
        let mut tries = 0;
        while self.items.len() < n && tries < 200 {
            tries += 1;
            let here = self.items.len();
            // Targets are resolved at encoding time; any later item or the final int3.
            let fwd = here + 1 + self.rng.below((n - here) as u64 + 1) as usize;
            match self.rng.below(8) {
                0 | 1 => {
                    let cc = self.rng.below(16) as u32;
                    let short = self.rng.chance(1, 2);
                    let code = jcc_code(cc, short, wide);
                    if let Ok(i) = Instruction::with_branch(code, 0) {
                        if self.accept_branch(&i) {
                            self.push(i, Some(fwd));
                        }
                    }
                }
                2 => {
                    let code = match (self.rng.chance(1, 2), wide) {
                        (true, true) => Code::Jmp_rel8_64,
                        (true, false) => Code::Jmp_rel8_32,
                        (false, true) => Code::Jmp_rel32_64,
                        (false, false) => Code::Jmp_rel32_32,
                    };
                    if let Ok(i) = Instruction::with_branch(code, 0) {
                        self.push(i, Some(fwd));
                    }
                }
                3 => {
                    // call L; jmp end ... L: ...; ret  — emitted as: call +2 items (over the jmp),
                    // jmp to the end, filler, ret.
                    if here + 4 > 8 {
                        continue;
                    }
                    let (cc, jc, rc) = if wide {
                        (Code::Call_rel32_64, Code::Jmp_rel32_64, Code::Retnq)
                    } else {
                        (Code::Call_rel32_32, Code::Jmp_rel32_32, Code::Retnd)
                    };
                    let (Ok(call), Ok(jmp)) = (
                        Instruction::with_branch(cc, 0),
                        Instruction::with_branch(jc, 0),
                    ) else {
                        continue;
                    };
                    self.push(call, Some(here + 2));
                    // The jmp goes to the end of the case (resolved to the final int3).
                    self.push(jmp, Some(usize::MAX));
                    if let Some(f) = self.filler() {
                        self.push(f, None);
                    }
                    let ret = if self.rng.chance(1, 4) {
                        // ret imm16 pops extra bytes from the stack page.
                        let rc = if wide {
                            Code::Retnq_imm16
                        } else {
                            Code::Retnd_imm16
                        };
                        Instruction::with1(rc, (self.rng.below(4) * 8) as u32)
                    } else {
                        Ok(Instruction::with(rc))
                    };
                    if let Ok(r) = ret {
                        self.push(r, None);
                    }
                    self.protected.push((here + 2, self.items.len() - 1, here));
                }
                4 => {
                    // A bounded backward loop: mov ecx, k; L: filler; loop L.
                    if here + 3 > 8 || self.reserved & (1 << 1) != 0 {
                        continue;
                    }
                    let k = 1 + self.rng.below(5) as u32;
                    let Ok(mov) = Instruction::with2(Code::Mov_r32_imm32, Register::ECX, k) else {
                        continue;
                    };
                    self.push(mov, None);
                    self.cl = None;
                    let body = self.items.len();
                    // The body must not change the count.
                    let saved = self.reserved;
                    self.reserved |= 1 << 1;
                    if let Some(f) = self.filler() {
                        self.push(f, None);
                    }
                    self.reserved = saved;
                    let lc = match (self.rng.below(3), wide) {
                        (0, true) => Code::Loop_rel8_64_RCX,
                        (1, true) => Code::Loope_rel8_64_RCX,
                        (_, true) => Code::Loopne_rel8_64_RCX,
                        (0, false) => Code::Loop_rel8_32_ECX,
                        (1, false) => Code::Loope_rel8_32_ECX,
                        (_, false) => Code::Loopne_rel8_32_ECX,
                    };
                    if let Ok(l) = Instruction::with_branch(lc, 0) {
                        self.push(l, Some(body));
                        let last = self.items.len() - 1;
                        self.protected.push((body, last, last));
                    }
                }
                5 => {
                    let c = if wide {
                        Code::Jrcxz_rel8_64
                    } else {
                        Code::Jecxz_rel8_32
                    };
                    if let Ok(i) = Instruction::with_branch(c, 0) {
                        self.push(i, Some(fwd));
                    }
                }
                _ => {
                    if let Some(f) = self.filler() {
                        self.push(f, None);
                    }
                }
            }
        }
        // Resolve "end of case" targets, and move branches that would land inside a call's or
        // loop's body (skipping its setup) to just after it.
        let end = self.items.len();
        for (n, it) in self.items.iter_mut().enumerate() {
            if let Some(t) = it.target.as_mut() {
                *t = (*t).min(end);
                for &(first, last, owner) in &self.protected {
                    if n != owner && !(first..=last).contains(&n) && (first..=last).contains(t) {
                        *t = last + 1;
                    }
                }
            }
        }
    }

    fn accept_branch(&mut self, insn: &Instruction) -> bool {
        (eflags_from_iced(insn.rflags_read())) & self.undef == 0
    }

    /// An ALU instruction whose flags (if any) are all defined: keeps branch conditions
    /// meaningful in the control family.
    fn filler(&mut self) -> Option<Instruction> {
        for _ in 0..50 {
            let i = self.table_insn()?;
            if undefined_flags(&i, None) == 0
                && !matches!(
                    i.mnemonic(),
                    Mnemonic::Xchg | Mnemonic::Cmpxchg | Mnemonic::Xadd
                )
                && self.accept(&i, false)
            {
                return Some(i);
            }
        }
        None
    }

    /// Lays out the items at [`super::CODE_BASE`], resolves branch targets and encodes them,
    /// followed by the terminating `int3`.
    fn encode(&mut self) -> Vec<u8> {
        let bitness = self.mode.bitness();
        loop {
            // Pass 1: sizes (branch sizes do not depend on the target for a given code).
            let mut ips = Vec::with_capacity(self.items.len() + 1);
            let mut ip = super::CODE_BASE;
            let mut enc = Encoder::new(bitness);
            for it in &self.items {
                ips.push(ip);
                let mut i = it.insn;
                if it.target.is_some() {
                    i.set_near_branch64(ip);
                }
                let len = enc.encode(&i, ip).unwrap_or(0) as u64;
                ip += len;
            }
            ips.push(ip);
            // Pass 2: encode with targets.
            let mut out = Vec::new();
            let mut enc = Encoder::new(bitness);
            let mut bad = None;
            for (n, it) in self.items.iter().enumerate() {
                let mut i = it.insn;
                if let Some(t) = it.target {
                    i.set_near_branch64(ips.get(t).copied().unwrap_or(ip));
                }
                if enc.encode(&i, ips.get(n).copied().unwrap_or(0)).is_err() {
                    bad = Some(n);
                    break;
                }
            }
            match bad {
                None => {
                    out.extend_from_slice(&enc.take_buffer());
                    out.push(0xcc);
                    return out;
                }
                Some(n) => {
                    // A short branch out of range: drop it (rare) and lay out again.
                    self.items.remove(n);
                    for it in &mut self.items {
                        if let Some(t) = it.target.as_mut() {
                            if *t > n {
                                *t -= 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The Jcc code for condition `cc` (0..16 in encoding order).
fn jcc_code(cc: u32, short: bool, wide: bool) -> Code {
    use Code::*;
    let table64s = [
        Jo_rel8_64,
        Jno_rel8_64,
        Jb_rel8_64,
        Jae_rel8_64,
        Je_rel8_64,
        Jne_rel8_64,
        Jbe_rel8_64,
        Ja_rel8_64,
        Js_rel8_64,
        Jns_rel8_64,
        Jp_rel8_64,
        Jnp_rel8_64,
        Jl_rel8_64,
        Jge_rel8_64,
        Jle_rel8_64,
        Jg_rel8_64,
    ];
    let table64n = [
        Jo_rel32_64,
        Jno_rel32_64,
        Jb_rel32_64,
        Jae_rel32_64,
        Je_rel32_64,
        Jne_rel32_64,
        Jbe_rel32_64,
        Ja_rel32_64,
        Js_rel32_64,
        Jns_rel32_64,
        Jp_rel32_64,
        Jnp_rel32_64,
        Jl_rel32_64,
        Jge_rel32_64,
        Jle_rel32_64,
        Jg_rel32_64,
    ];
    let table32s = [
        Jo_rel8_32,
        Jno_rel8_32,
        Jb_rel8_32,
        Jae_rel8_32,
        Je_rel8_32,
        Jne_rel8_32,
        Jbe_rel8_32,
        Ja_rel8_32,
        Js_rel8_32,
        Jns_rel8_32,
        Jp_rel8_32,
        Jnp_rel8_32,
        Jl_rel8_32,
        Jge_rel8_32,
        Jle_rel8_32,
        Jg_rel8_32,
    ];
    let table32n = [
        Jo_rel32_32,
        Jno_rel32_32,
        Jb_rel32_32,
        Jae_rel32_32,
        Je_rel32_32,
        Jne_rel32_32,
        Jbe_rel32_32,
        Ja_rel32_32,
        Js_rel32_32,
        Jns_rel32_32,
        Jp_rel32_32,
        Jnp_rel32_32,
        Jl_rel32_32,
        Jge_rel32_32,
        Jle_rel32_32,
        Jg_rel32_32,
    ];
    let t = match (wide, short) {
        (true, true) => &table64s,
        (true, false) => &table64n,
        (false, true) => &table32s,
        (false, false) => &table32n,
    };
    t.get(cc as usize & 15).copied().unwrap_or(Je_rel32_64)
}

/// Decodes a case's code (up to its final `int3`) for reporting and checks.
pub fn decode(case: &Case, mode: Mode) -> Vec<Instruction> {
    let mut d = iced_x86::Decoder::with_ip(
        mode.bitness(),
        &case.code,
        super::CODE_BASE,
        iced_x86::DecoderOptions::NONE,
    );
    let mut v = Vec::new();
    while d.can_decode() {
        v.push(d.decode());
    }
    v
}

/// Whether `insn` transfers control.
pub fn is_branch(insn: &Instruction) -> bool {
    !matches!(
        insn.flow_control(),
        FlowControl::Next | FlowControl::Interrupt | FlowControl::Exception
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(1, 2).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(1, 2).next_u64(), Rng::new(1, 3).next_u64());
        let mut r = Rng::new(7, 0);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }

    #[test]
    fn every_family_has_codes_in_both_modes() {
        for f in Family::ALL {
            for m in [Mode::Long64, Mode::Compat32] {
                let n = family_codes(f, m).len();
                assert!(n > 0 || f == Family::Control, "{f:?} {m:?}");
            }
        }
        // BCD adjusts exist only outside 64-bit mode.
        let m64 = family_codes(Family::Misc, Mode::Long64);
        assert!(!m64.iter().any(|c| c.mnemonic() == Mnemonic::Daa));
        let m32 = family_codes(Family::Misc, Mode::Compat32);
        assert!(m32.iter().any(|c| c.mnemonic() == Mnemonic::Daa));
    }

    #[test]
    fn family_names_round_trip() {
        for f in Family::ALL {
            assert_eq!(Family::from_name(f.name()), Some(f));
        }
        assert_eq!(Family::from_name("nope"), None);
    }
}
