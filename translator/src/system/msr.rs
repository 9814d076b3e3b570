//! The model-specific registers the BT implements (RDMSR/WRMSR), with their reserved bits.
//!
//! Values live in [`CpuState`] (EFER, APIC_BASE and the FS/GS bases in their fields, the rest in
//! `cpu.msrs` through [`CpuState::set_msr`]); an MSR never written reads its reset value. The
//! time-stamp counter is the machine's ([`SystemBus::tsc`]). Any other index, or a write that
//! sets a reserved bit, is #GP(0), as on the CPU [`super::cpuid`] describes.
//!
//! The set covers what Linux 6.1 reads without `rdmsr_safe` on an AMD family 0Fh CPU: the
//! MTRRs (capabilities, default type, variable and fixed ranges), SYSCFG (read by the K8 MTRR
//! code), PAT, APIC_BASE, EFER and the system-call MSRs; plus the machine-check registers of a
//! CPU without banks, the microcode patch level and DEBUGCTL.
//!
//! Stored but without effect: DEBUGCTL (LBR, BTF), SYSCFG, MISC_ENABLE, the MTRRs and PAT
//! (the BT caches nothing by memory type).

use super::{Effect, SystemBus, TlbFlush};
use crate::sem::{Exception, GP};
use crate::state::{ctl, CpuState};

/// MSR indices beyond the ones [`crate::state::msr`] lists.
#[allow(missing_docs)]
pub mod index {
    pub use crate::state::msr::*;
    /// IA32_BIOS_SIGN_ID on Intel, PATCH_LEVEL on AMD.
    pub const UCODE_REV: u32 = 0x8b;
    pub const MTRRCAP: u32 = 0xfe;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const DEBUGCTL: u32 = 0x1d9;
    /// First variable-range MTRR (PHYSBASE0); PHYSMASKn is PHYSBASEn + 1.
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    pub const MTRR_FIX_64K_00000: u32 = 0x250;
    pub const MTRR_FIX_16K_80000: u32 = 0x258;
    pub const MTRR_FIX_16K_A0000: u32 = 0x259;
    /// First of eight 4K fixed-range MTRRs (C0000..F8000).
    pub const MTRR_FIX_4K_C0000: u32 = 0x268;
    /// AMD SYSCFG.
    pub const SYSCFG: u32 = 0xc001_0010;
}

use index::*;

/// Number of variable-range MTRR pairs (MTRRcap.VCNT).
pub const MTRR_VARIABLE: u32 = 8;
/// MTRRcap: 8 variable ranges, fixed ranges supported (bit 8), write-combining (bit 10).
pub const MTRRCAP_VALUE: u64 = 0x500 | MTRR_VARIABLE as u64;
/// PAT after reset: WB, WT, UC-, UC repeated.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// MISC_ENABLE as the BT reports it: fast strings, no BTS, no PEBS.
pub const MISC_ENABLE_RESET: u64 = 0x1801;
/// MAXPHYADDR of the model.
pub const PHYS_BITS: u32 = 40;

/// IA32_APIC_BASE bits: BSP flag (read-only), global enable, base address.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE global enable.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

fn gp() -> Exception {
    Exception::Cpu {
        vector: GP,
        error: Some(0),
    }
}

/// Bits at or above MAXPHYADDR.
fn above_phys() -> u64 {
    !0u64 << PHYS_BITS
}

fn is_canonical(v: u64) -> bool {
    ((v << 16) as i64 >> 16) as u64 == v
}

/// Memory types valid in an MTRR: UC, WC, WT, WP, WB.
fn mtrr_type_ok(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// Memory types valid in a PAT entry: the MTRR types and UC- (7).
fn pat_type_ok(t: u64) -> bool {
    mtrr_type_ok(t) || t == 7
}

fn bytes_ok(v: u64, ok: fn(u64) -> bool) -> bool {
    (0..8).all(|i| ok((v >> (i * 8)) & 0xff))
}

fn is_fixed_mtrr(index: u32) -> bool {
    matches!(
        index,
        MTRR_FIX_64K_00000 | MTRR_FIX_16K_80000 | MTRR_FIX_16K_A0000
    ) || (MTRR_FIX_4K_C0000..MTRR_FIX_4K_C0000 + 8).contains(&index)
}

fn is_variable_mtrr(index: u32) -> bool {
    (MTRR_PHYS_BASE0..MTRR_PHYS_BASE0 + 2 * MTRR_VARIABLE).contains(&index)
}

/// Reads MSR `index` (RDMSR), or #GP(0) if the model has no such MSR.
pub fn read(cpu: &CpuState, bus: &mut dyn SystemBus, index: u32) -> Result<u64, Exception> {
    let stored = |reset: u64| cpu.msr(index).unwrap_or(reset);
    Ok(match index {
        TSC => bus.tsc(),
        EFER | APIC_BASE | FS_BASE | GS_BASE => stored(0),
        MTRRCAP => MTRRCAP_VALUE,
        MCG_CAP | MCG_STATUS => 0,
        PAT => stored(PAT_RESET),
        MISC_ENABLE => stored(MISC_ENABLE_RESET),
        UCODE_REV | DEBUGCTL | SYSCFG | MTRR_DEF_TYPE | SYSENTER_CS | SYSENTER_ESP
        | SYSENTER_EIP | STAR | LSTAR | CSTAR | SFMASK | KERNEL_GS_BASE | TSC_AUX => stored(0),
        i if is_fixed_mtrr(i) || is_variable_mtrr(i) => stored(0),
        _ => return Err(gp()),
    })
}

/// Writes MSR `index` (WRMSR): #GP(0) for unknown MSRs, read-only ones and reserved bits,
/// leaving `cpu` unchanged. Changing EFER.NXE flushes every cached translation.
pub fn write(
    cpu: &mut CpuState,
    bus: &mut dyn SystemBus,
    index: u32,
    value: u64,
) -> Result<Effect, Exception> {
    let check = |ok: bool| if ok { Ok(()) } else { Err(gp()) };
    let mut effect = Effect::Next;
    let stored = match index {
        TSC => {
            bus.set_tsc(value);
            return Ok(Effect::Next);
        }
        EFER => {
            let writable = ctl::EFER_SCE | ctl::EFER_LME | ctl::EFER_NXE;
            // LMA is read-only: the written bit is ignored.
            check(value & !(writable | ctl::EFER_LMA) == 0)?;
            let new = (value & writable) | (cpu.efer & ctl::EFER_LMA);
            let changed = new ^ cpu.efer;
            check(!(changed & ctl::EFER_LME != 0 && cpu.cr0 & ctl::CR0_PG != 0))?;
            if changed & ctl::EFER_NXE != 0 {
                effect = Effect::Flush(TlbFlush::All);
            }
            new
        }
        APIC_BASE => {
            let valid = APIC_BASE_BSP | APIC_BASE_ENABLE | (!0xfffu64 & !above_phys());
            check(value & !valid == 0)?;
            (value & !APIC_BASE_BSP) | (cpu.apic_base & APIC_BASE_BSP)
        }
        MTRRCAP | MCG_CAP => return Err(gp()),
        MCG_STATUS => {
            check(value == 0)?;
            return Ok(Effect::Next);
        }
        // The patch level reads 0; the write (Intel's "load the revision") is ignored.
        UCODE_REV => return Ok(Effect::Next),
        DEBUGCTL => {
            check(value & !3 == 0)?;
            value
        }
        PAT => {
            check(bytes_ok(value, pat_type_ok))?;
            value
        }
        MTRR_DEF_TYPE => {
            check(value & !0xcff == 0 && mtrr_type_ok(value & 0xff))?;
            value
        }
        i if is_fixed_mtrr(i) => {
            check(bytes_ok(value, mtrr_type_ok))?;
            value
        }
        i if is_variable_mtrr(i) => {
            if (i - MTRR_PHYS_BASE0) & 1 == 0 {
                check(value & (above_phys() | 0xf00) == 0 && mtrr_type_ok(value & 0xff))?;
            } else {
                check(value & (above_phys() | 0x7ff) == 0)?;
            }
            value
        }
        MISC_ENABLE | SYSCFG | STAR => value,
        // AMD's SYSENTER MSRs are 32 bits wide (Linux relies on the truncation of EIP).
        SYSENTER_CS | SYSENTER_ESP | SYSENTER_EIP => value & 0xffff_ffff,
        // SFMASK bits 63:32 are reserved and ignored.
        SFMASK => value & 0xffff_ffff,
        LSTAR | CSTAR | FS_BASE | GS_BASE | KERNEL_GS_BASE => {
            check(is_canonical(value))?;
            value
        }
        TSC_AUX => {
            check(value >> 32 == 0)?;
            value
        }
        _ => return Err(gp()),
    };
    cpu.set_msr(index, stored);
    Ok(effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus whose TSC is a plain counter.
    #[derive(Default)]
    struct Tsc(u64);
    impl SystemBus for Tsc {
        fn port_in(&mut self, _: u16, _: u8) -> u32 {
            0
        }
        fn port_out(&mut self, _: u16, _: u8, _: u32) {}
        fn tsc(&mut self) -> u64 {
            self.0
        }
        fn set_tsc(&mut self, v: u64) {
            self.0 = v;
        }
    }

    fn rejects(index: u32, value: u64) {
        let mut cpu = CpuState::default();
        let before = cpu.clone();
        assert_eq!(
            write(&mut cpu, &mut Tsc::default(), index, value),
            Err(gp()),
            "{index:#x} <- {value:#x}"
        );
        assert_eq!(cpu, before);
    }

    fn accepts(index: u32, value: u64) -> CpuState {
        let mut cpu = CpuState::default();
        write(&mut cpu, &mut Tsc::default(), index, value).unwrap();
        cpu
    }

    #[test]
    fn reset_values_and_unknown_msrs() {
        let cpu = CpuState::default();
        let mut bus = Tsc(1234);
        assert_eq!(read(&cpu, &mut bus, TSC), Ok(1234));
        assert_eq!(read(&cpu, &mut bus, MTRRCAP), Ok(0x508));
        assert_eq!(read(&cpu, &mut bus, PAT), Ok(PAT_RESET));
        assert_eq!(read(&cpu, &mut bus, MTRR_DEF_TYPE), Ok(0));
        assert_eq!(read(&cpu, &mut bus, 0x20f), Ok(0));
        assert_eq!(read(&cpu, &mut bus, APIC_BASE), Ok(0xfee0_0900));
        for bad in [0x17, 0x210, 0x6e0, 0x48, 0xc001_0015, 0x4000_0000] {
            assert_eq!(read(&cpu, &mut bus, bad), Err(gp()), "{bad:#x}");
        }
        rejects(0x1234, 0);
    }

    #[test]
    fn tsc_write_goes_to_the_bus() {
        let mut cpu = CpuState::default();
        let mut bus = Tsc(5);
        write(&mut cpu, &mut bus, TSC, 99).unwrap();
        assert_eq!(bus.0, 99);
        assert!(cpu.msrs.is_empty());
    }

    #[test]
    fn efer_rules() {
        rejects(EFER, 1 << 12); // SVME: not advertised
        rejects(EFER, 1 << 1);
        // LMA is ignored on write.
        assert_eq!(
            accepts(EFER, ctl::EFER_LMA | ctl::EFER_SCE).efer,
            ctl::EFER_SCE
        );
        // LME cannot change while paging is on.
        let mut cpu = CpuState::default();
        cpu.cr0 |= ctl::CR0_PE | ctl::CR0_PG;
        let before = cpu.clone();
        let r = write(&mut cpu, &mut Tsc::default(), EFER, ctl::EFER_LME);
        assert_eq!((r, &cpu), (Err(gp()), &before));
        // ... but NXE can, and flushes.
        assert_eq!(
            write(&mut cpu, &mut Tsc::default(), EFER, ctl::EFER_NXE),
            Ok(Effect::Flush(TlbFlush::All))
        );
        assert_eq!(
            write(&mut cpu, &mut Tsc::default(), EFER, ctl::EFER_NXE | 1),
            Ok(Effect::Next)
        );
    }

    #[test]
    fn apic_base_rules() {
        rejects(APIC_BASE, 0xfee0_0900 | (1 << 10)); // x2APIC not advertised
        rejects(APIC_BASE, 1 << 40);
        rejects(APIC_BASE, 0xfee0_0001);
        // BSP is read-only; base and enable are writable.
        assert_eq!(accepts(APIC_BASE, 0xfec0_0000).apic_base, 0xfec0_0100);
    }

    #[test]
    fn memory_type_registers() {
        rejects(PAT, 0x0007_0406_0007_0402); // type 2 is reserved
        rejects(PAT, 0x0007_0406_0007_0408);
        assert_eq!(
            accepts(PAT, 0x0007_0106_0007_0406).msr(PAT),
            Some(0x0007_0106_0007_0406)
        );
        rejects(MTRR_DEF_TYPE, 0xc07);
        rejects(MTRR_DEF_TYPE, 0x1c06);
        assert_eq!(
            accepts(MTRR_DEF_TYPE, 0xc06).msr(MTRR_DEF_TYPE),
            Some(0xc06)
        );
        rejects(MTRR_FIX_4K_C0000 + 7, 0x0606_0606_0606_0603);
        accepts(MTRR_FIX_64K_00000, 0x0606_0606_0606_0606);
        rejects(0x200, 0x8000_0006 | (1 << 40));
        rejects(0x200, 0x106);
        rejects(0x201, 0x1_ffff_f800 | 1);
        accepts(0x201, 0xff_ffff_f800);
        rejects(MTRRCAP, 0x508);
    }

    #[test]
    fn system_call_msrs() {
        rejects(LSTAR, 0x0000_8000_0000_0000);
        rejects(KERNEL_GS_BASE, 0x1234_0000_0000_0000);
        rejects(GS_BASE, 0x0000_8000_0000_0000);
        assert_eq!(
            accepts(GS_BASE, 0xffff_8000_0000_0000).gs.base,
            0xffff_8000_0000_0000
        );
        assert_eq!(
            accepts(SYSENTER_EIP, 0xffff_ffff_8100_0000).msr(SYSENTER_EIP),
            Some(0x8100_0000)
        );
        rejects(TSC_AUX, 1 << 32);
        accepts(TSC_AUX, 0xffff_ffff);
        rejects(MCG_STATUS, 1);
        accepts(MCG_STATUS, 0);
        rejects(DEBUGCTL, 4);
    }
}
