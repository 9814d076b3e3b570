//! MMX, SSE and SSE2: data movement and shuffles in software, arithmetic, compares and
//! conversions on the host ([`super::host::run`]).

use super::host::{self, HostOp};
use super::{fault, gp0, gpr_operand, mem_operand, mf_pending, read_gpr, write_gpr, MF, NM, XM};
use crate::interp::Interp;
use crate::mem::GuestMem;
use crate::sem::operand::{linear, segment_of, Gpr};
use crate::sem::{Exception, UD};
use crate::state::{ctl, rflags, CpuState, FpuState};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// MXCSR exception flags.
const IE: u32 = 1;
const DE: u32 = 2;
const ZE: u32 = 4;
const OE: u32 = 8;
const UE: u32 = 16;
const PE: u32 = 32;
/// MXCSR flush-to-zero.
const FTZ: u32 = 1 << 15;

/// The checks of every instruction that uses XMM registers or MXCSR: CR0.EM → #UD,
/// CR4.OSFXSR = 0 → #UD, CR0.TS → #NM.
pub(super) fn sse_checks(cpu: &CpuState) -> Result<(), Exception> {
    if cpu.cr0 & ctl::CR0_EM != 0 || cpu.cr4 & ctl::CR4_OSFXSR == 0 {
        return Err(fault(UD));
    }
    if cpu.cr0 & ctl::CR0_TS != 0 {
        return Err(fault(NM));
    }
    Ok(())
}

/// A register operand of an SSE/MMX instruction.
#[derive(Debug, Clone, Copy)]
enum Opnd {
    Xmm(usize),
    Mm(usize),
    Gpr(Gpr),
    Mem,
    Imm(u64),
}

fn opnd(insn: &Instruction, i: u32) -> Result<Opnd, Exception> {
    Ok(match insn.op_kind(i) {
        OpKind::Register => {
            let r = insn.op_register(i);
            if r.is_xmm() {
                Opnd::Xmm(r.number())
            } else if r.is_mm() {
                Opnd::Mm(r.number())
            } else if let Some(g) = gpr_operand(insn, i) {
                Opnd::Gpr(g)
            } else {
                return Err(Exception::Unimplemented(insn.mnemonic()));
            }
        }
        OpKind::Memory => Opnd::Mem,
        OpKind::Immediate8 => Opnd::Imm(u64::from(insn.immediate8())),
        _ => return Err(Exception::Unimplemented(insn.mnemonic())),
    })
}

/// Rotates the x87 registers so TOP = 0 and marks every tag valid: what every MMX
/// instruction does before it runs (SDM Vol. 1 §9.5.1).
fn mmx_enter(f: &mut FpuState) {
    let t = usize::from((f.fsw >> 11) & 7);
    let old = f.st;
    for (i, r) in f.st.iter_mut().enumerate() {
        *r = old[(i + 8 - t) & 7];
    }
    f.fsw &= !(7 << 11);
    f.ftw = 0xff;
}

/// One instruction's work: a working copy of the FP state and the pending writes, committed
/// only when everything succeeded.
struct Ctx<'a> {
    insn: &'a Instruction,
    f: FpuState,
    gprs: [u64; 16],
    cr4: u64,
    rflags_in: u64,
    /// The memory operand's linear address, if any.
    lin: Option<u64>,
    /// The memory operand's value when it is a source (zero-extended).
    mval: [u8; 16],
    store: Option<(u64, [u8; 16], usize)>,
    gpr: Option<(Gpr, u64)>,
    rflags: Option<u64>,
    /// MXCSR flags an unmasked-exception fault sets.
    xm_flags: u32,
}

fn lo64(v: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_le_bytes(b)
}

fn from64(x: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&x.to_le_bytes());
    v
}

fn zext(v: &[u8; 16], n: usize) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..n].copy_from_slice(&v[..n]);
    r
}

impl Ctx<'_> {
    fn op(&self, i: u32) -> Result<Opnd, Exception> {
        opnd(self.insn, i)
    }

    /// Reads operand `i` as 16 bytes (MMX, GPR and memory values zero-extended).
    fn src(&self, i: u32) -> Result<[u8; 16], Exception> {
        Ok(match self.op(i)? {
            Opnd::Xmm(n) => *self.f.xmm.get(n).ok_or(Exception::Internal("xmm index"))?,
            Opnd::Mm(n) => zext(self.f.st.get(n).ok_or(Exception::Internal("mm index"))?, 8),
            Opnd::Gpr(g) => {
                let v = self.gprs.get(g.index).copied().unwrap_or(0);
                let v = if g.high { v >> 8 } else { v };
                let v = if g.bits >= 64 {
                    v
                } else {
                    v & ((1u64 << g.bits) - 1)
                };
                from64(v)
            }
            Opnd::Mem => self.mval,
            Opnd::Imm(x) => from64(x),
        })
    }

    /// Writes operand 0: XMM (all 16 bytes), MMX (low 8, exponent all ones), GPR (low 8
    /// bytes), memory (`size` bytes).
    fn set_dst(&mut self, v: [u8; 16], size: usize) -> Result<(), Exception> {
        match self.op(0)? {
            Opnd::Xmm(n) => {
                *self
                    .f
                    .xmm
                    .get_mut(n)
                    .ok_or(Exception::Internal("xmm index"))? = v
            }
            Opnd::Mm(n) => {
                let r = self
                    .f
                    .st
                    .get_mut(n)
                    .ok_or(Exception::Internal("mm index"))?;
                *r = [0; 16];
                r[..8].copy_from_slice(&v[..8]);
                r[8] = 0xff;
                r[9] = 0xff;
            }
            Opnd::Gpr(g) => self.gpr = Some((g, lo64(&v))),
            Opnd::Mem => {
                let lin = self
                    .lin
                    .ok_or(Exception::Internal("fpu: no memory operand"))?;
                self.store = Some((lin, v, size.min(16)));
            }
            Opnd::Imm(_) => return Err(Exception::Internal("fpu: immediate destination")),
        }
        Ok(())
    }

    fn dst_is_mem(&self) -> bool {
        self.insn.op0_kind() == OpKind::Memory
    }

    fn src_is_mem(&self) -> bool {
        (1..self.insn.op_count()).any(|i| self.insn.op_kind(i) == OpKind::Memory)
    }

    /// Applies the MXCSR rules to the flags a host operation raised: masked ones are
    /// recorded, unmasked ones fault (#XM, or #UD without CR4.OSXMMEXCPT). `inputs` (the
    /// operation and its operands) lets an unmasked overflow or underflow be looked at lane
    /// by lane.
    ///
    /// The flags a fault sets (SDM Vol. 1 §11.5.3, measured on the host): an unmasked
    /// pre-computation exception (IE, DE, ZE) in any lane sets the pre-computation flags of
    /// every lane and nothing else; otherwise every lane's flags are set as when masked,
    /// except that a lane whose overflow or underflow is unmasked sets OE or UE without PE.
    fn numeric(
        &mut self,
        mut raised: u32,
        result: &[u8; 16],
        lanes: Lanes,
        inputs: Option<(HostOp, &[u8; 16], &[u8; 16])>,
    ) -> Result<(), Exception> {
        let masks = (self.f.mxcsr >> 7) & 0x3f;
        // With UM = 0 a tiny result is an underflow even when exact; the masked host run
        // reports underflow only when inexact.
        if masks & UE == 0 && raised & UE == 0 && lanes.any_denormal(result) {
            raised |= UE;
        }
        let unmasked = raised & !masks;
        if unmasked == 0 {
            self.f.mxcsr |= raised;
            return Ok(());
        }
        let pre = raised & (IE | DE | ZE);
        self.xm_flags = if pre & !masks != 0 {
            pre
        } else if unmasked & (OE | UE) != 0 {
            inputs
                .and_then(|(op, a, b)| lanes.fault_flags(op, a, b, self.f.mxcsr))
                .unwrap_or(raised & !PE)
        } else {
            raised
        };
        Err(fault(if self.cr4 & ctl::CR4_OSXMMEXCPT != 0 {
            XM
        } else {
            UD
        }))
    }

    /// A two-operand host operation on operand 0 (XMM or MMX) and operand 1.
    fn host2(&mut self, op: HostOp) -> Result<(), Exception> {
        let a_in = self.src(0)?;
        let b = self.src(1)?;
        let mut a = a_in;
        let mut g = 0;
        let raised = host::run(op, &mut a, &b, self.f.mxcsr, &mut g);
        let lanes = Lanes::of(self.insn.mnemonic());
        self.numeric(raised, &a, lanes, Some((op, &a_in, &b)))?;
        self.set_dst(a, 16)
    }
}

/// The arithmetic of an instruction that can overflow or underflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    /// Narrowing conversion (CVTSD2SS, CVTPD2PS): the source operand rounded.
    Narrow,
}

/// The floating-point lanes of an arithmetic instruction that can overflow or underflow
/// (for the exact-underflow check and the per-lane flags of a fault).
#[derive(Debug, Clone, Copy)]
enum Lanes {
    /// None: the instruction cannot overflow or underflow.
    None,
    /// `n` result lanes, each computed from the source lanes at the same index.
    Fp {
        /// What each lane computes.
        op: Arith,
        /// Result lanes are f64 (else f32).
        out64: bool,
        /// Source lanes are f64 (else f32).
        in64: bool,
        /// How many lanes.
        n: usize,
    },
}

/// Lane `k` of `v`, `w` bytes wide, zero-extended.
fn lane(v: &[u8; 16], w: usize, k: usize) -> u64 {
    let mut b = [0u8; 8];
    if let (Some(d), Some(s)) = (b.get_mut(..w), v.get(w * k..w * k + w)) {
        d.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

impl Lanes {
    fn of(m: Mnemonic) -> Lanes {
        use Arith as A;
        use Mnemonic as M;
        let (op, out64, n) = match m {
            M::Addps => (A::Add, false, 4),
            M::Subps => (A::Sub, false, 4),
            M::Mulps => (A::Mul, false, 4),
            M::Divps => (A::Div, false, 4),
            M::Addss => (A::Add, false, 1),
            M::Subss => (A::Sub, false, 1),
            M::Mulss => (A::Mul, false, 1),
            M::Divss => (A::Div, false, 1),
            M::Addpd => (A::Add, true, 2),
            M::Subpd => (A::Sub, true, 2),
            M::Mulpd => (A::Mul, true, 2),
            M::Divpd => (A::Div, true, 2),
            M::Addsd => (A::Add, true, 1),
            M::Subsd => (A::Sub, true, 1),
            M::Mulsd => (A::Mul, true, 1),
            M::Divsd => (A::Div, true, 1),
            M::Cvtpd2ps => (A::Narrow, false, 2),
            M::Cvtsd2ss => (A::Narrow, false, 1),
            _ => return Lanes::None,
        };
        let in64 = out64 || op == A::Narrow;
        Lanes::Fp { op, out64, in64, n }
    }

    /// Whether result lane `k` is a denormal.
    fn denormal(out64: bool, v: &[u8; 16], k: usize) -> bool {
        if out64 {
            let x = lane(v, 8, k);
            x & 0x7ff0_0000_0000_0000 == 0 && x & 0xf_ffff_ffff_ffff != 0
        } else {
            let x = lane(v, 4, k);
            x & 0x7f80_0000 == 0 && x & 0x7f_ffff != 0
        }
    }

    fn any_denormal(self, v: &[u8; 16]) -> bool {
        match self {
            Lanes::None => false,
            Lanes::Fp { out64, n, .. } => (0..n).any(|k| Lanes::denormal(out64, v, k)),
        }
    }

    /// The flags an instruction faulting on an unmasked overflow or underflow sets (measured
    /// on the host): each lane run alone on the host (the other source lanes 1.0, which raise
    /// nothing), a tiny exact result counted as an underflow (UM = 0); in a lane whose OE or
    /// UE is unmasked, PE tells whether the result rounded to the destination's precision
    /// with an unbounded exponent is inexact (the IEEE 754 trapped result, as for x87's
    /// unmasked #O/#U), not whether the delivered result was. Flush-to-zero is off for these
    /// runs: it has no effect with UM = 0 and would hide the tiny result.
    fn fault_flags(self, host_op: HostOp, a: &[u8; 16], b: &[u8; 16], mxcsr: u32) -> Option<u32> {
        let Lanes::Fp { op, out64, in64, n } = self else {
            return None;
        };
        let masks = (mxcsr >> 7) & 0x3f;
        let csr = if masks & UE == 0 { mxcsr & !FTZ } else { mxcsr };
        let (w, one) = if in64 {
            (8, 1.0f64.to_bits())
        } else {
            (4, u64::from(1.0f32.to_bits()))
        };
        let mut flags = 0;
        for k in 0..n {
            let (mut a, mut b) = (*a, *b);
            if n > 1 {
                for j in (0..n).filter(|&j| j != k) {
                    a[w * j..w * j + w].copy_from_slice(&one.to_le_bytes()[..w]);
                    b[w * j..w * j + w].copy_from_slice(&one.to_le_bytes()[..w]);
                }
            }
            let (x, y) = (lane(&a, w, k), lane(&b, w, k));
            let mut f = host::run(host_op, &mut a, &b, csr, &mut 0);
            if masks & UE == 0 && f & UE == 0 && Lanes::denormal(out64, &a, k) {
                f |= UE;
            }
            if f & (OE | UE) & !masks != 0 {
                f &= !PE;
                if unbounded_inexact(op, in64, out64, x, y, mxcsr)? {
                    f |= PE;
                }
            }
            flags |= f;
        }
        Some(flags)
    }
}

/// Whether `x op y` (`y` alone for [`Arith::Narrow`]), f64 or f32 operands per `in64`, rounded
/// to the precision of the result format (`out64`) with an unbounded exponent under MXCSR's
/// rounding control, is inexact. Computed on the host x87 unit with the precision control
/// of the result format: its 15-bit exponent holds every such result, so the one rounding
/// it makes is to the significand alone. `None` if the host refuses the encoding.
fn unbounded_inexact(
    op: Arith,
    in64: bool,
    out64: bool,
    x: u64,
    y: u64,
    mxcsr: u32,
) -> Option<bool> {
    const DAZ: u32 = 1 << 6;
    // Denormals-are-zero: a denormal operand is a signed zero.
    let daz = |v: u64| -> u64 {
        if mxcsr & DAZ == 0 {
            return v;
        }
        let (exp, sign) = if in64 {
            (0x7ff0_0000_0000_0000, 1u64 << 63)
        } else {
            (0x7f80_0000, 1u64 << 31)
        };
        if v & exp == 0 {
            v & sign
        } else {
            v
        }
    };
    let (x, y) = (daz(x), daz(y));
    let pc: u16 = if out64 { 2 } else { 0 };
    let rc = ((mxcsr >> 13) & 3) as u16;
    let mut img = host::FxArea::default();
    img.0[0..2].copy_from_slice(&(0x3f | (pc << 8) | (rc << 10)).to_le_bytes());
    let mut buf = [0u8; 16];
    // FLD m32 (D9 /0) or m64 (DD /0) of the first operand: exact.
    let (load, arith) = if in64 { (0xdd, 0xdc) } else { (0xd9, 0xd8) };
    let (first, second, arith, reg) = match op {
        Arith::Narrow => (y, u64::from(1.0f32.to_bits()), 0xd8, 1),
        Arith::Add => (x, y, arith, 0),
        Arith::Mul => (x, y, arith, 1),
        Arith::Sub => (x, y, arith, 4),
        Arith::Div => (x, y, arith, 6),
    };
    buf[..8].copy_from_slice(&first.to_le_bytes());
    host::x87(&mut img, &mut buf, load, 0, 0)?;
    // ST0 = ST0 op m32/m64 (D8 /r, DC /r), rounded once to the precision control.
    buf[..8].copy_from_slice(&second.to_le_bytes());
    host::x87(&mut img, &mut buf, arith, reg << 3, 0)?;
    Some(u16::from_le_bytes([img.0[2], img.0[3]]) & 0x20 != 0)
}

/// Executes an MMX/SSE/SSE2 instruction (RIP is advanced by the caller).
pub(super) fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    match m {
        // One CPU, strongly ordered memory: fences and hints have nothing to do.
        M::Lfence
        | M::Sfence
        | M::Mfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Pause
        | M::Nop => return Ok(()),
        M::Movnti => {
            let g = gpr_operand(insn, 1).ok_or(Exception::Unimplemented(m))?;
            let v = read_gpr(cpu, g);
            let lin = super::need_mem(mem_operand(cpu, mem, insn)?)?;
            return mem.write(lin, &v.to_le_bytes()[..(g.bits / 8) as usize]);
        }
        _ => {}
    }
    let regs = (0..insn.op_count())
        .filter(|&i| insn.op_kind(i) == OpKind::Register)
        .map(|i| insn.op_register(i));
    let (mut has_mm, mut has_xmm) = (false, false);
    for r in regs {
        has_mm |= r.is_mm();
        has_xmm |= r.is_xmm();
    }
    if cpu.cr0 & ctl::CR0_EM != 0 {
        return Err(fault(UD));
    }
    if (has_xmm || !has_mm) && m != M::Emms && cpu.cr4 & ctl::CR4_OSFXSR == 0 {
        return Err(fault(UD));
    }
    if cpu.cr0 & ctl::CR0_TS != 0 {
        return Err(fault(NM));
    }
    if (has_mm || m == M::Emms) && mf_pending(cpu) {
        return Err(fault(MF));
    }
    if m == M::Emms {
        // TOP = 0 (the registers keep their physical places) and every tag empty; the rest of
        // FSW stays (measured on the host).
        mmx_enter(&mut cpu.fpu);
        cpu.fpu.ftw = 0;
        return Ok(());
    }
    let mo = mem_operand(cpu, mem, insn)?;
    let size = insn.memory_size().size();
    if let Some((lin, _)) = mo {
        if size == 16 && !matches!(m, M::Movups | M::Movupd | M::Movdqu | M::Lddqu) && lin & 15 != 0
        {
            return Err(gp0());
        }
    }
    let mut ctx = Ctx {
        insn,
        f: cpu.fpu.clone(),
        gprs: cpu.gpr,
        cr4: cpu.cr4,
        rflags_in: cpu.rflags,
        lin: mo.map(|(l, _)| l),
        mval: [0; 16],
        store: None,
        gpr: None,
        rflags: None,
        xm_flags: 0,
    };
    if let Some((lin, _)) = mo {
        if insn.op0_kind() != OpKind::Memory {
            if size > 16 {
                return Err(Exception::Unimplemented(m));
            }
            mem.read(lin, &mut ctx.mval[..size])?;
        }
    }
    if has_mm {
        mmx_enter(&mut ctx.f);
    }
    let masked_store = if matches!(m, M::Maskmovdqu | M::Maskmovq) {
        Some(maskmov_target(cpu, mem, insn)?)
    } else {
        None
    };
    let r = dispatch(&mut ctx, masked_store.is_some());
    if let Err(e) = r {
        if ctx.xm_flags != 0 {
            cpu.fpu.mxcsr |= ctx.xm_flags;
            // The x87 -> MMX transition precedes the numeric fault (CVT(T)PS2PI, CVT(T)PD2PI,
            // CVTPI2PS on the host).
            if has_mm {
                mmx_enter(&mut cpu.fpu);
            }
        }
        return Err(e);
    }
    // Commit: memory first (the only step left that can fault), then registers.
    if let Some((lin, v, n)) = ctx.store {
        mem.write(lin, &v[..n])?;
    }
    if let Some(lin) = masked_store {
        let mut regs = (0..insn.op_count()).filter(|&i| insn.op_kind(i) == OpKind::Register);
        let (Some(di), Some(mi)) = (regs.next(), regs.next()) else {
            return Err(Exception::Unimplemented(m));
        };
        let data = ctx.src(di)?;
        let mask = ctx.src(mi)?;
        let n = if m == M::Maskmovq { 8 } else { 16 };
        let mut i = 0;
        while i < n {
            if mask[i] & 0x80 == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && mask[i] & 0x80 != 0 {
                i += 1;
            }
            mem.write(lin.wrapping_add(start as u64), &data[start..i])?;
        }
    }
    cpu.fpu = ctx.f;
    if let Some((g, v)) = ctx.gpr {
        write_gpr(cpu, g, v);
    }
    if let Some(f) = ctx.rflags {
        cpu.rflags = f;
    }
    Ok(())
}

/// MASKMOVDQU/MASKMOVQ's implicit destination DS:rDI (segment override allowed).
fn maskmov_target(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<u64, Exception> {
    let bits = (0..insn.op_count())
        .find_map(|i| match insn.op_kind(i) {
            OpKind::MemorySegDI => Some(16),
            OpKind::MemorySegEDI => Some(32),
            OpKind::MemorySegRDI => Some(64),
            _ => None,
        })
        .ok_or(Exception::Unimplemented(insn.mnemonic()))?;
    let rdi = cpu.gpr[crate::state::reg::RDI];
    let ea = if bits == 64 {
        rdi
    } else {
        rdi & ((1u64 << bits) - 1)
    };
    let mut it = Interp::new(cpu, mem);
    linear(&mut it, segment_of(insn), ea)
}

/// The instruction proper, on the working copy.
fn dispatch(c: &mut Ctx<'_>, masked_store: bool) -> Result<(), Exception> {
    use Mnemonic as M;
    let m = c.insn.mnemonic();
    let size = c.insn.memory_size().size();
    match m {
        _ if masked_store => Ok(()),
        M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movdqa
        | M::Movdqu
        | M::Movntps
        | M::Movntpd
        | M::Movntdq
        | M::Movntq => {
            let v = c.src(1)?;
            c.set_dst(v, size)
        }
        M::Movss | M::Movsd => {
            let n = if m == M::Movss { 4 } else { 8 };
            let s = c.src(1)?;
            if c.dst_is_mem() {
                c.set_dst(s, n)
            } else if c.src_is_mem() {
                c.set_dst(zext(&s, n), 16)
            } else {
                let mut d = c.src(0)?;
                d[..n].copy_from_slice(&s[..n]);
                c.set_dst(d, 16)
            }
        }
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd => {
            let high = matches!(m, M::Movhps | M::Movhpd);
            let s = c.src(1)?;
            if c.dst_is_mem() {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(if high { &s[8..] } else { &s[..8] });
                c.set_dst(v, 8)
            } else {
                let mut d = c.src(0)?;
                let at = if high { 8 } else { 0 };
                d[at..at + 8].copy_from_slice(&s[..8]);
                c.set_dst(d, 16)
            }
        }
        M::Movhlps | M::Movlhps => {
            let s = c.src(1)?;
            let mut d = c.src(0)?;
            if m == M::Movhlps {
                d[..8].copy_from_slice(&s[8..]);
            } else {
                d[8..].copy_from_slice(&s[..8]);
            }
            c.set_dst(d, 16)
        }
        M::Movd | M::Movq | M::Movdq2q | M::Movq2dq => {
            let w = if m == M::Movd { 4 } else { 8 };
            let v = zext(&c.src(1)?, w);
            c.set_dst(v, w)
        }
        M::Movmskps | M::Movmskpd | M::Pmovmskb => {
            let s = c.src(1)?;
            let n = match c.op(1)? {
                Opnd::Mm(_) => 8,
                _ => 16,
            };
            let (step, first) = match m {
                M::Movmskps => (4, 3),
                M::Movmskpd => (8, 7),
                _ => (1, 0),
            };
            let bits = s[..n]
                .chunks_exact(step)
                .enumerate()
                .fold(0u64, |a, (i, ch)| a | (u64::from(ch[first] >> 7) << i));
            c.set_dst(from64(bits), 8)
        }
        M::Pshufd | M::Pshuflw | M::Pshufhw | M::Pshufw => {
            let s = c.src(1)?;
            let imm = c.insn.immediate8();
            let mut d = s;
            let sel = |k: usize| usize::from((imm >> (2 * k)) & 3);
            match m {
                M::Pshufd => {
                    for k in 0..4 {
                        d[4 * k..4 * k + 4].copy_from_slice(&s[4 * sel(k)..4 * sel(k) + 4]);
                    }
                }
                M::Pshufhw => {
                    for k in 0..4 {
                        d[8 + 2 * k..10 + 2 * k]
                            .copy_from_slice(&s[8 + 2 * sel(k)..10 + 2 * sel(k)]);
                    }
                }
                _ => {
                    for k in 0..4 {
                        d[2 * k..2 * k + 2].copy_from_slice(&s[2 * sel(k)..2 * sel(k) + 2]);
                    }
                }
            }
            c.set_dst(d, 16)
        }
        M::Shufps => {
            let a = c.src(0)?;
            let b = c.src(1)?;
            let imm = c.insn.immediate8();
            let mut d = [0u8; 16];
            for k in 0..4 {
                let j = usize::from((imm >> (2 * k)) & 3);
                let from = if k < 2 { &a } else { &b };
                d[4 * k..4 * k + 4].copy_from_slice(&from[4 * j..4 * j + 4]);
            }
            c.set_dst(d, 16)
        }
        M::Shufpd => {
            let a = c.src(0)?;
            let b = c.src(1)?;
            let imm = c.insn.immediate8();
            let mut d = [0u8; 16];
            let j0 = usize::from(imm & 1) * 8;
            let j1 = usize::from((imm >> 1) & 1) * 8;
            d[..8].copy_from_slice(&a[j0..j0 + 8]);
            d[8..].copy_from_slice(&b[j1..j1 + 8]);
            c.set_dst(d, 16)
        }
        M::Pslldq | M::Psrldq => {
            let s = c.src(0)?;
            let n = usize::from(c.insn.immediate8()).min(16);
            let mut d = [0u8; 16];
            if m == M::Pslldq {
                d[n..].copy_from_slice(&s[..16 - n]);
            } else {
                d[..16 - n].copy_from_slice(&s[n..]);
            }
            c.set_dst(d, 16)
        }
        M::Pinsrw => {
            let mut d = c.src(0)?;
            let s = c.src(1)?;
            let lanes = if matches!(c.op(0)?, Opnd::Mm(_)) {
                4
            } else {
                8
            };
            let k = usize::from(c.insn.immediate8()) % lanes;
            d[2 * k..2 * k + 2].copy_from_slice(&s[..2]);
            c.set_dst(d, 16)
        }
        M::Pextrw => {
            if c.dst_is_mem() {
                return Err(Exception::Unimplemented(m)); // SSE4.1 form
            }
            let s = c.src(1)?;
            let lanes = if matches!(c.op(1)?, Opnd::Mm(_)) {
                4
            } else {
                8
            };
            let k = usize::from(c.insn.immediate8()) % lanes;
            c.set_dst(
                zext(
                    &[
                        s[2 * k],
                        s[2 * k + 1],
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                    2,
                ),
                8,
            )
        }
        M::Cmpps | M::Cmppd | M::Cmpss | M::Cmpsd => {
            let op = host::cmp_op(m, c.insn.immediate8()).ok_or(Exception::Unimplemented(m))?;
            c.host2(op)
        }
        M::Cvtsi2ss | M::Cvtsi2sd => {
            let wide = match c.op(1)? {
                Opnd::Gpr(g) => g.bits == 64,
                _ => size == 8,
            };
            let op = host::gpr_op(m, wide).ok_or(Exception::Unimplemented(m))?;
            let mut a = c.src(0)?;
            let mut g = lo64(&c.src(1)?);
            let raised = host::run(op, &mut a, &[0; 16], c.f.mxcsr, &mut g);
            c.numeric(raised, &a, Lanes::None, None)?;
            c.set_dst(a, 16)
        }
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let wide = matches!(c.op(0)?, Opnd::Gpr(g) if g.bits == 64);
            let op = host::gpr_op(m, wide).ok_or(Exception::Unimplemented(m))?;
            let b = c.src(1)?;
            let mut g = 0;
            let raised = host::run(op, &mut [0; 16], &b, c.f.mxcsr, &mut g);
            c.numeric(raised, &[0; 16], Lanes::None, None)?;
            c.set_dst(from64(g), 8)
        }
        M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => {
            let op = host::gpr_op(m, false).ok_or(Exception::Unimplemented(m))?;
            let mut a = c.src(0)?;
            let b = c.src(1)?;
            let mut g = 0;
            let raised = host::run(op, &mut a, &b, c.f.mxcsr, &mut g);
            c.numeric(raised, &[0; 16], Lanes::None, None)?;
            let zpc = rflags::ZF | rflags::PF | rflags::CF;
            let clear = zpc | rflags::OF | rflags::SF | rflags::AF;
            c.rflags = Some((c.rflags_in & !clear) | (g & zpc));
            Ok(())
        }
        M::Cvtpi2ps | M::Cvtpi2pd | M::Cvtps2pi | M::Cvttps2pi | M::Cvtpd2pi | M::Cvttpd2pi => {
            let op = host::mmx_cvt_op(m).ok_or(Exception::Unimplemented(m))?;
            let mut a = c.src(0)?;
            let b = c.src(1)?;
            let mut g = 0;
            let raised = host::run(op, &mut a, &b, c.f.mxcsr, &mut g);
            c.numeric(raised, &a, Lanes::None, None)?;
            c.set_dst(a, 16)
        }
        _ => {
            let op = match c.op(0)? {
                Opnd::Xmm(_) => host::xmm_op(m),
                Opnd::Mm(_) => host::mmx_op(m),
                _ => None,
            }
            .ok_or(Exception::Unimplemented(m))?;
            c.host2(op)
        }
    }
}
