//! FXSAVE/FXRSTOR (64-bit layout with REX.W, 32-bit layout otherwise) and LDMXCSR/STMXCSR.

use super::{fault, gp0, mem_operand, need_mem, NM};
use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::{ctl, CpuMode, CpuState, FpuState};
use iced_x86::{Instruction, Mnemonic};

/// The MXCSR bits this CPU implements (FXSAVE's MXCSR_MASK): flags, DAZ, masks, RC, FZ.
pub const MXCSR_MASK: u32 = 0xffff;

/// The FXSAVE image of `f`: `wide` = 64-bit layout (REX.W), `nxmm` XMM registers (0 when
/// CR4.OSFXSR = 0, 8 outside 64-bit mode, 16 in it). Only the first `160 + 16 * nxmm` bytes
/// are meaningful (the rest of the area is not written).
pub fn image(f: &FpuState, wide: bool, nxmm: usize) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[6..8].copy_from_slice(&(f.fop & 0x7ff).to_le_bytes());
    if wide {
        b[8..16].copy_from_slice(&f.fip.to_le_bytes());
        b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        // FIP/FDP offsets and the selector slots (bits 32-47); the rest reserved.
        b[8..14].copy_from_slice(&f.fip.to_le_bytes()[..6]);
        b[16..22].copy_from_slice(&f.fdp.to_le_bytes()[..6]);
    }
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, r) in f.st.iter().enumerate() {
        b[32 + 16 * i..42 + 16 * i].copy_from_slice(&r[..10]);
    }
    for (i, x) in f.xmm.iter().take(nxmm).enumerate() {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(x);
    }
    b
}

/// Loads an FXSAVE image into `f` (see [`image`]); #GP(0) for reserved MXCSR bits.
pub fn load_image(
    f: &mut FpuState,
    b: &[u8; 512],
    wide: bool,
    nxmm: usize,
) -> Result<(), Exception> {
    let g16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let g64 = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(gp0());
    }
    f.fcw = g16(0);
    f.fsw = g16(2);
    f.ftw = b[4];
    f.fop = g16(6) & 0x7ff;
    if wide {
        f.fip = g64(8);
        f.fdp = g64(16);
    } else {
        f.fip = g64(8) & 0xffff_ffff_ffff;
        f.fdp = g64(16) & 0xffff_ffff_ffff;
    }
    f.mxcsr = mxcsr;
    for (i, r) in f.st.iter_mut().enumerate() {
        *r = [0; 16];
        r[..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
    }
    for (i, x) in f.xmm.iter_mut().take(nxmm).enumerate() {
        x.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
    Ok(())
}

/// How many XMM registers FXSAVE/FXRSTOR transfer in the current mode.
fn xmm_count(cpu: &CpuState) -> usize {
    if cpu.cr4 & ctl::CR4_OSFXSR == 0 {
        0
    } else if cpu.mode() == CpuMode::Long64 {
        16
    } else {
        8
    }
}

/// The checks FXSAVE and FXRSTOR share: #NM on CR0.EM or TS, #GP(0) unless 16-byte aligned.
fn fx_checks(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<u64, Exception> {
    if cpu.cr0 & (ctl::CR0_EM | ctl::CR0_TS) != 0 {
        return Err(fault(NM));
    }
    let lin = need_mem(mem_operand(cpu, mem, insn)?)?;
    if lin & 15 != 0 {
        return Err(gp0());
    }
    Ok(lin)
}

/// FXSAVE / FXSAVE64.
pub(super) fn fxsave(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    let lin = fx_checks(cpu, mem, insn)?;
    let n = xmm_count(cpu);
    let b = image(&cpu.fpu, insn.mnemonic() == Mnemonic::Fxsave64, n);
    mem.write(lin, &b[..160 + 16 * n])
}

/// FXRSTOR / FXRSTOR64.
pub(super) fn fxrstor(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    let lin = fx_checks(cpu, mem, insn)?;
    let n = xmm_count(cpu);
    let mut b = [0u8; 512];
    mem.read(lin, &mut b[..160 + 16 * n])?;
    let mut f = cpu.fpu.clone();
    load_image(&mut f, &b, insn.mnemonic() == Mnemonic::Fxrstor64, n)?;
    cpu.fpu = f;
    Ok(())
}

/// LDMXCSR / STMXCSR.
pub(super) fn mxcsr(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    insn: &Instruction,
) -> Result<(), Exception> {
    super::sse::sse_checks(cpu)?;
    let lin = need_mem(mem_operand(cpu, mem, insn)?)?;
    if insn.mnemonic() == Mnemonic::Stmxcsr {
        return mem.write(lin, &cpu.fpu.mxcsr.to_le_bytes());
    }
    let mut b = [0u8; 4];
    mem.read(lin, &mut b)?;
    let v = u32::from_le_bytes(b);
    if v & !MXCSR_MASK != 0 {
        return Err(gp0());
    }
    cpu.fpu.mxcsr = v;
    Ok(())
}
