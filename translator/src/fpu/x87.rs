//! x87 instructions: control instructions and environment/state images in software, every
//! computation on the host x87 unit ([`super::host::x87`]).

use super::host::{self, FxArea};
use super::{
    fault, mem_operand, mf_pending, need_mem, sync_es, write_gpr, FSW_B, FSW_ES, FSW_FLAGS, MF, NM,
};
use crate::mem::GuestMem;
use crate::sem::operand::gpr_of;
use crate::sem::Exception;
use crate::state::{ctl, rflags, CpuMode, CpuState, FpuState};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// Executes an x87 instruction (RIP is advanced by the caller).
pub(super) fn execute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    if m == M::Wait {
        if cpu.cr0 & ctl::CR0_TS != 0 && cpu.cr0 & ctl::CR0_MP != 0 {
            return Err(fault(NM));
        }
        return if mf_pending(cpu) {
            Err(fault(MF))
        } else {
            Ok(())
        };
    }
    if cpu.cr0 & (ctl::CR0_EM | ctl::CR0_TS) != 0 {
        return Err(fault(NM));
    }
    let waits = !matches!(
        m,
        M::Fninit
            | M::Fnclex
            | M::Fnstsw
            | M::Fnstcw
            | M::Fnstenv
            | M::Fnsave
            | M::Fneni
            | M::Fndisi
            | M::Fnsetpm
    );
    if waits && mf_pending(cpu) {
        return Err(fault(MF));
    }
    let mo = mem_operand(cpu, mem, insn)?;
    match m {
        M::Fninit | M::Finit => {
            init(&mut cpu.fpu);
            Ok(())
        }
        // 287 mode switches: no-ops on every later FPU.
        M::Fneni | M::Feni | M::Fndisi | M::Fdisi | M::Fnsetpm | M::Fsetpm => Ok(()),
        M::Fldcw => {
            let mut b = [0u8; 2];
            mem.read(need_mem(mo)?, &mut b)?;
            cpu.fpu.fcw = u16::from_le_bytes(b);
            sync_es(&mut cpu.fpu);
            Ok(())
        }
        M::Fnstcw | M::Fstcw => mem.write(need_mem(mo)?, &cpu.fpu.fcw.to_le_bytes()),
        M::Fnstsw | M::Fstsw => {
            if insn.op0_kind() == OpKind::Register {
                let g = gpr_of(insn.op0_register()).ok_or(Exception::Unimplemented(m))?;
                let v = u64::from(cpu.fpu.fsw);
                write_gpr(cpu, g, v);
                Ok(())
            } else {
                mem.write(need_mem(mo)?, &cpu.fpu.fsw.to_le_bytes())
            }
        }
        M::Fnclex | M::Fclex => {
            cpu.fpu.fsw &= !(FSW_FLAGS | FSW_ES | FSW_B);
            Ok(())
        }
        M::Fnstenv | M::Fstenv => {
            let fmt = EnvFormat::of(cpu, insn);
            let img = store_env(&cpu.fpu, fmt);
            mem.write(need_mem(mo)?, &img[..fmt.len()])?;
            // FSTENV masks every exception after saving.
            cpu.fpu.fcw |= 0x3f;
            sync_es(&mut cpu.fpu);
            Ok(())
        }
        M::Fldenv => {
            let fmt = EnvFormat::of(cpu, insn);
            let mut img = [0u8; 28];
            mem.read(need_mem(mo)?, &mut img[..fmt.len()])?;
            load_env(&mut cpu.fpu, fmt, &img);
            Ok(())
        }
        M::Fnsave | M::Fsave => {
            let fmt = EnvFormat::of(cpu, insn);
            let mut img = [0u8; 108];
            img[..28].copy_from_slice(&store_env(&cpu.fpu, fmt));
            let n = fmt.len();
            for (i, r) in cpu.fpu.st.iter().enumerate() {
                img[n + 10 * i..n + 10 * i + 10].copy_from_slice(&r[..10]);
            }
            mem.write(need_mem(mo)?, &img[..n + 80])?;
            init(&mut cpu.fpu);
            Ok(())
        }
        M::Frstor => {
            let fmt = EnvFormat::of(cpu, insn);
            let n = fmt.len();
            let mut img = [0u8; 108];
            mem.read(need_mem(mo)?, &mut img[..n + 80])?;
            let mut f = cpu.fpu.clone();
            for (i, r) in f.st.iter_mut().enumerate() {
                *r = [0; 16];
                r[..10].copy_from_slice(&img[n + 10 * i..n + 10 * i + 10]);
            }
            let mut env = [0u8; 28];
            env[..n].copy_from_slice(&img[..n]);
            load_env(&mut f, fmt, &env);
            cpu.fpu = f;
            Ok(())
        }
        _ => compute(cpu, mem, insn, mo),
    }
}

/// FNINIT: control word 0x37F, everything else clear and every register empty.
fn init(f: &mut FpuState) {
    f.fcw = 0x37f;
    f.fsw = 0;
    f.ftw = 0;
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
}

/// TOP, from the status word.
fn top(f: &FpuState) -> usize {
    usize::from((f.fsw >> 11) & 7)
}

/// The 2-bit tag a non-empty register's contents give (SDM Vol. 1 §8.1.7).
fn classify(r: &[u8; 16]) -> u16 {
    let mant = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7fff;
    match exp {
        0x7fff => 2,
        0 if mant == 0 => 1,
        0 => 2,
        _ if mant >> 63 == 0 => 2,
        _ => 0,
    }
}

/// The full tag word (physical order, 2 bits per register) FSTENV and FSAVE store.
pub(super) fn full_tag_word(f: &FpuState) -> u16 {
    let t = top(f);
    (0..8).fold(0u16, |tw, phys| {
        let tag = if f.ftw & (1 << phys) == 0 {
            3
        } else {
            classify(&f.st[(phys + 8 - t) & 7])
        };
        tw | (tag << (2 * phys))
    })
}

/// The abridged (FXSAVE) form of a full tag word: 1 = not empty.
fn abridge(tw: u16) -> u8 {
    (0..8).fold(0u8, |a, phys| {
        if (tw >> (2 * phys)) & 3 != 3 {
            a | (1 << phys)
        } else {
            a
        }
    })
}

/// Which of the four x87 environment layouts an instruction uses (SDM Vol. 1 §8.1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EnvFormat {
    /// 32-bit operand size: the 28-byte layout (else 14 bytes).
    wide: bool,
    /// Real-address or virtual-8086 mode layout.
    real: bool,
    /// 64-bit mode: the selector slots are zero.
    long: bool,
}

impl EnvFormat {
    fn of(cpu: &CpuState, insn: &Instruction) -> EnvFormat {
        use iced_x86::MemorySize as S;
        EnvFormat {
            wide: !matches!(insn.memory_size(), S::FpuEnv14 | S::FpuState94),
            real: matches!(cpu.mode(), CpuMode::Real | CpuMode::Virtual8086),
            long: cpu.mode() == CpuMode::Long64,
        }
    }

    fn len(self) -> usize {
        if self.wide {
            28
        } else {
            14
        }
    }
}

/// The environment image (first `fmt.len()` bytes meaningful).
fn store_env(f: &FpuState, fmt: EnvFormat) -> [u8; 28] {
    let mut b = [0u8; 28];
    let tw = full_tag_word(f);
    let fop = u32::from(f.fop & 0x7ff);
    let sel = |v: u64| if fmt.long { 0 } else { (v >> 32) as u16 };
    let put16 =
        |b: &mut [u8; 28], at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    if fmt.wide {
        put16(&mut b, 0, f.fcw);
        put16(&mut b, 4, f.fsw);
        put16(&mut b, 8, tw);
        if fmt.real {
            put16(&mut b, 12, f.fip as u16);
            let hi = ((f.fip as u32 >> 16) << 12) | fop;
            b[16..20].copy_from_slice(&hi.to_le_bytes());
            put16(&mut b, 20, f.fdp as u16);
            let hi = (f.fdp as u32 >> 16) << 12;
            b[24..28].copy_from_slice(&hi.to_le_bytes());
        } else {
            b[12..16].copy_from_slice(&(f.fip as u32).to_le_bytes());
            put16(&mut b, 16, sel(f.fip));
            put16(&mut b, 18, fop as u16);
            b[20..24].copy_from_slice(&(f.fdp as u32).to_le_bytes());
            put16(&mut b, 24, sel(f.fdp));
        }
    } else {
        put16(&mut b, 0, f.fcw);
        put16(&mut b, 2, f.fsw);
        put16(&mut b, 4, tw);
        put16(&mut b, 6, f.fip as u16);
        put16(&mut b, 10, f.fdp as u16);
        if fmt.real {
            put16(
                &mut b,
                8,
                ((((f.fip >> 16) & 0xf) as u16) << 12) | fop as u16,
            );
            put16(&mut b, 12, (((f.fdp >> 16) & 0xf) as u16) << 12);
        } else {
            put16(&mut b, 8, sel(f.fip));
            put16(&mut b, 12, sel(f.fdp));
        }
    }
    b
}

/// Loads an environment image into `f` (FLDENV, FRSTOR); ES follows the loaded flags.
fn load_env(f: &mut FpuState, fmt: EnvFormat, b: &[u8; 28]) {
    let g16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let g32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let sel = |v: u16| if fmt.long { 0 } else { u64::from(v) << 32 };
    let tw;
    if fmt.wide {
        f.fcw = g16(0);
        f.fsw = g16(4);
        tw = g16(8);
        if fmt.real {
            f.fip = u64::from(g16(12)) | (u64::from(g32(16) >> 12) << 16);
            f.fop = (g32(16) & 0x7ff) as u16;
            f.fdp = u64::from(g16(20)) | (u64::from(g32(24) >> 12) << 16);
        } else {
            f.fip = u64::from(g32(12)) | sel(g16(16));
            f.fop = g16(18) & 0x7ff;
            f.fdp = u64::from(g32(20)) | sel(g16(24));
        }
    } else {
        f.fcw = g16(0);
        f.fsw = g16(2);
        tw = g16(4);
        if fmt.real {
            f.fip = u64::from(g16(6)) | (u64::from(g16(8) >> 12) << 16);
            f.fop = g16(8) & 0x7ff;
            f.fdp = u64::from(g16(10)) | (u64::from(g16(12) >> 12) << 16);
        } else {
            f.fip = u64::from(g16(6)) | sel(g16(8));
            f.fdp = u64::from(g16(10)) | sel(g16(12));
        }
    }
    f.ftw = abridge(tw);
    sync_es(f);
}

/// The x87 opcode byte (0xD8-0xDF) and ModRM of the instruction at RIP, fetched again: they
/// select the host encoding and are the FOP register's value.
fn opcode_modrm(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(u8, u8), Exception> {
    let long = cpu.mode() == CpuMode::Long64;
    let lin = if long {
        cpu.rip
    } else {
        cpu.cs.base.wrapping_add(cpu.rip) & 0xffff_ffff
    };
    let mut b = [0u8; 15];
    let n = insn.len().min(15);
    mem.fetch(lin, &mut b[..n])?;
    let i = b[..n]
        .iter()
        .position(|&x| {
            let prefix = matches!(
                x,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x9b
            );
            let rex = long && (0x40..=0x4f).contains(&x);
            !(prefix || rex)
        })
        .ok_or(Exception::Unimplemented(insn.mnemonic()))?;
    match (b.get(i), b.get(i + 1)) {
        (Some(&op @ 0xd8..=0xdf), Some(&modrm)) if i + 1 < n => Ok((op, modrm)),
        _ => Err(Exception::Unimplemented(insn.mnemonic())),
    }
}

/// Whether the instruction stores its memory operand.
fn is_store(insn: &Instruction) -> bool {
    use Mnemonic as M;
    insn.op0_kind() == OpKind::Memory
        && matches!(
            insn.mnemonic(),
            M::Fst | M::Fstp | M::Fist | M::Fistp | M::Fisttp | M::Fbstp
        )
}

/// Packs the x87 part of `f` into an FXSAVE image for the host.
pub(super) fn to_image(f: &FpuState) -> FxArea {
    let mut a = FxArea::default();
    a.0[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    a.0[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    a.0[4] = f.ftw;
    for (i, r) in f.st.iter().enumerate() {
        a.0[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&r[..10]);
    }
    a
}

/// A computational x87 instruction, run on the host.
fn compute(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
    mo: Option<(u64, u64)>,
) -> Result<(), Exception> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    let (opcode, modrm) = opcode_modrm(cpu, mem, insn)?;
    let size = insn.memory_size().size();
    let store = is_store(insn);
    let mut buf = [0u8; 16];
    if let Some((lin, _)) = mo {
        if size > 10 {
            return Err(Exception::Unimplemented(m));
        }
        if !store {
            mem.read(lin, &mut buf[..size])?;
        }
    }
    let old = &cpu.fpu;
    let mut img = to_image(old);
    let flags_out = host::x87(&mut img, &mut buf, opcode, modrm, cpu.rflags)
        .ok_or(Exception::Unimplemented(m))?;
    let g16 = |at: usize| u16::from_le_bytes([img.0[at], img.0[at + 1]]);
    let new_fsw = g16(2);
    let raised = new_fsw & 0x3f;
    let unmasked = raised & !old.fcw & 0x3f;
    // An unmasked invalid, denormal, divide, overflow or underflow exception leaves a memory
    // destination untouched; an unmasked precision exception does not.
    if let Some((lin, _)) = mo {
        if store && unmasked & 0x1f == 0 {
            mem.write(lin, &buf[..size])?;
        }
    }
    let mut f = old.clone();
    f.fsw = (new_fsw & !(FSW_ES | FSW_B)) | (old.fsw & FSW_FLAGS);
    sync_es(&mut f);
    f.ftw = img.0[4];
    for (i, r) in f.st.iter_mut().enumerate() {
        *r = [0; 16];
        r[..10].copy_from_slice(&img.0[32 + 16 * i..32 + 16 * i + 10]);
    }
    f.fop = (u16::from(opcode & 7) << 8) | u16::from(modrm);
    f.fip = cpu.rip;
    if let Some((_, ea)) = mo {
        f.fdp = ea;
    }
    cpu.fpu = f;
    // The host's own flags, also with an unmasked #IA: AMD CPUs write the unordered result
    // (ZF = PF = CF = 1) then, where the SDM says the flags are left alone; the BT models the
    // CPU it runs on.
    if matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip) {
        let zpc = rflags::ZF | rflags::PF | rflags::CF;
        cpu.rflags =
            (cpu.rflags & !(zpc | rflags::OF | rflags::SF | rflags::AF)) | (flags_out & zpc);
    }
    Ok(())
}
