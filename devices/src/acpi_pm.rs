//! ACPI fixed power-management hardware: the PM1a event and control blocks and the PM timer.
//!
//! This is what lets a guest OS power the machine off through ACPI (`poweroff` in Linux): the
//! OS reads `SLP_TYPa` for S5 from the DSDT's `\_S5_` package and writes
//! `SLP_TYP << 10 | SLP_EN` to `PM1a_CNT`; the device then posts [`MachineEvent::PowerOff`].
//! The port layout is the one QEMU's PIIX4 PM function uses (base 0x600), described to the
//! guest by the FADT that `ringzero::acpi` writes:
//!
//! ```text
//! port    size  register   ACPI 6.5 §4.8.3
//! 0x600   2     PM1_STS    status, write 1 to clear
//! 0x602   2     PM1_EN     enables: which status bits raise the SCI
//! 0x604   2     PM1_CNT    SCI_EN (reads 1), BM_RLD, GBL_RLS, SLP_TYP, SLP_EN
//! 0x606   2     -          unclaimed inside the range: reads all-ones, writes ignored
//! 0x608   4     PM_TMR     24-bit free-running counter at 3.579545 MHz
//! ```
//!
//! The hardware is always in ACPI mode (`SCI_EN` = 1, FADT `SMI_CMD` = 0), so there is no SMI
//! handshake. Only S5 (soft-off) is a real sleep state here; a request for another sleep type
//! is logged and the machine "wakes" at once (`WAK_STS` set) so a guest waiting for the
//! transition back to the working state does not spin forever.
//!
//! The SCI is a level-triggered line: asserted while any status bit in `PM1_STS` has its enable
//! bit set in `PM1_EN`. The timer's `TMR_STS` is computed lazily from a [`TimeSource`] on each
//! access and in [`AcpiPm::poll`]; a machine that wants the timer-carry SCI on time (Linux never
//! enables it) polls at [`AcpiPm::next_event_ns`].

use std::sync::Arc;

use crate::bus::{read_bytewise, BusDevice};
use crate::control::{MachineControl, MachineEvent};
use crate::irq::InterruptLine;
use crate::pit::TimeSource;

/// First port of the PM register range (the PM1a event block).
pub const PM_BASE_PORT: u16 = 0x600;
/// Length of the whole PM register range registered on the port bus (0x600-0x60b).
pub const PM_PORT_LEN: u64 = 12;
/// Port of the PM1a event block (`PM1_STS` then `PM1_EN`): FADT `PM1a_EVT_BLK`.
pub const PM1A_EVT_PORT: u16 = PM_BASE_PORT;
/// Length in bytes of the PM1a event block: FADT `PM1_EVT_LEN`.
pub const PM1_EVT_LEN: u8 = 4;
/// Port of the PM1a control block (`PM1_CNT`): FADT `PM1a_CNT_BLK`.
pub const PM1A_CNT_PORT: u16 = PM_BASE_PORT + 4;
/// Length in bytes of the PM1a control block: FADT `PM1_CNT_LEN`.
pub const PM1_CNT_LEN: u8 = 2;
/// Port of the PM timer: FADT `PM_TMR_BLK`.
pub const PM_TMR_PORT: u16 = PM_BASE_PORT + 8;
/// Length in bytes of the PM timer block: FADT `PM_TMR_LEN`.
pub const PM_TMR_LEN: u8 = 4;
/// The ISA IRQ the SCI is wired to: FADT `SCI_INT` (as on PIIX4 and QEMU).
pub const SCI_IRQ: u8 = 9;
/// The `SLP_TYP` value that means S5 (soft-off); the DSDT's `\_S5_` package declares it.
pub const SLP_TYP_S5: u8 = 5;
/// Frequency of the PM timer in Hz (ACPI: 3.579545 MHz).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Width of the PM timer counter in bits (FADT flag `TMR_VAL_EXT` clear: 24 bits).
pub const PM_TIMER_BITS: u32 = 24;

/// Register offsets inside the PM range.
const OFF_STS: u64 = 0;
const OFF_EN: u64 = 2;
const OFF_CNT: u64 = 4;
const OFF_TMR: u64 = 8;

/// Bits of `PM1_STS` and `PM1_EN` (ACPI 6.5 tables 4.16 and 4.17).
pub mod pm1 {
    /// Timer carry: the counter's top bit changed.
    pub const TMR: u16 = 1 << 0;
    /// Bus master activity (status only; never set here).
    pub const BM: u16 = 1 << 4;
    /// Global lock released by the firmware (never set here: there is no firmware).
    pub const GBL: u16 = 1 << 5;
    /// Power button pressed.
    pub const PWRBTN: u16 = 1 << 8;
    /// Sleep button pressed.
    pub const SLPBTN: u16 = 1 << 9;
    /// RTC alarm.
    pub const RTC: u16 = 1 << 10;
    /// PCIe wake (status) / PCIe wake disable (enable register).
    pub const PCIEXP_WAKE: u16 = 1 << 14;
    /// Woken from a sleep state (status only).
    pub const WAK: u16 = 1 << 15;
    /// Status bits that exist (the rest are reserved and read 0).
    pub const STS_MASK: u16 = TMR | BM | GBL | PWRBTN | SLPBTN | RTC | PCIEXP_WAKE | WAK;
    /// Enable bits that exist and hold what the guest writes.
    pub const EN_MASK: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC | PCIEXP_WAKE;
    /// Status bits whose enable bit routes them to the SCI.
    pub const SCI_SOURCES: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
}

/// Bits of `PM1_CNT` (ACPI 6.5 table 4.18).
pub mod pm1_cnt {
    /// The hardware raises SCIs rather than SMIs; always 1 here.
    pub const SCI_EN: u16 = 1 << 0;
    /// Bus-master requests move the CPU from C3 to C0 (stored, no effect).
    pub const BM_RLD: u16 = 1 << 1;
    /// OS releases the global lock to the firmware (write-only; no firmware to tell).
    pub const GBL_RLS: u16 = 1 << 2;
    /// Shift of the 3-bit sleep type field.
    pub const SLP_TYP_SHIFT: u32 = 10;
    /// The sleep type field.
    pub const SLP_TYP: u16 = 7 << SLP_TYP_SHIFT;
    /// Enter the sleep state in `SLP_TYP` (write-only, reads 0).
    pub const SLP_EN: u16 = 1 << 13;
}

/// The PM1a event/control blocks and PM timer of the machine's ACPI fixed hardware.
pub struct AcpiPm {
    control: Arc<MachineControl>,
    sci: Arc<dyn InterruptLine>,
    time: Arc<dyn TimeSource>,
    /// `PM1_STS`.
    status: u16,
    /// `PM1_EN`.
    enable: u16,
    /// The stored bits of `PM1_CNT` (`BM_RLD`, `SLP_TYP`).
    control_reg: u16,
    /// Half-periods of the timer's top bit already reflected in `TMR_STS`.
    timer_carries_seen: u64,
    /// Level last driven on the SCI line.
    sci_level: bool,
}

impl AcpiPm {
    /// Creates the device at power-on state; S5 requests go to `control`, the SCI to `sci`.
    pub fn new(
        control: Arc<MachineControl>,
        sci: Arc<dyn InterruptLine>,
        time: Arc<dyn TimeSource>,
    ) -> Self {
        let timer_carries_seen = timer_ticks(time.now_ns()) >> (PM_TIMER_BITS - 1);
        AcpiPm {
            control,
            sci,
            time,
            status: 0,
            enable: 0,
            control_reg: 0,
            timer_carries_seen,
            sci_level: false,
        }
    }

    /// Presses the power button: sets `PWRBTN_STS` (an SCI if the guest enabled `PWRBTN_EN`).
    pub fn press_power_button(&mut self) {
        self.refresh_timer();
        self.status |= pm1::PWRBTN;
        self.update_sci();
    }

    /// Brings `TMR_STS` and the SCI up to date with the clock.
    pub fn poll(&mut self) {
        self.refresh_timer();
        self.update_sci();
    }

    /// When the next timer-carry SCI is due, if the guest enabled it and it is not pending.
    pub fn next_event_ns(&self) -> Option<u64> {
        if self.enable & pm1::TMR == 0 || self.status & pm1::TMR != 0 {
            return None;
        }
        let next_tick = self
            .timer_carries_seen
            .checked_add(1)?
            .checked_mul(1 << (PM_TIMER_BITS - 1))?;
        Some(ticks_to_ns(next_tick))
    }

    /// The current `PM_TMR` value.
    fn timer_value(&self) -> u32 {
        (timer_ticks(self.time.now_ns()) & ((1 << PM_TIMER_BITS) - 1)) as u32
    }

    /// Sets `TMR_STS` if the counter's top bit changed since the last look.
    fn refresh_timer(&mut self) {
        let carries = timer_ticks(self.time.now_ns()) >> (PM_TIMER_BITS - 1);
        if carries > self.timer_carries_seen {
            self.status |= pm1::TMR;
            self.timer_carries_seen = carries;
        }
    }

    fn control_value(&self) -> u16 {
        pm1_cnt::SCI_EN | self.control_reg
    }

    fn update_sci(&mut self) {
        let level = self.status & self.enable & pm1::SCI_SOURCES != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    /// Handles a write of `value` to `PM1_CNT`, with `mask` the bits whose bytes were written.
    fn write_control(&mut self, value: u16, mask: u16) {
        let stored = pm1_cnt::BM_RLD | pm1_cnt::SLP_TYP;
        self.control_reg = (self.control_reg & !(mask & stored)) | (value & mask & stored);
        if value & mask & pm1_cnt::GBL_RLS != 0 {
            log::debug!("acpi pm: GBL_RLS written; there is no firmware to hand the lock to");
        }
        if value & mask & pm1_cnt::SLP_EN == 0 {
            return;
        }
        let slp_typ = ((self.control_reg & pm1_cnt::SLP_TYP) >> pm1_cnt::SLP_TYP_SHIFT) as u8;
        if slp_typ == SLP_TYP_S5 {
            log::info!("acpi pm: guest entered S5 (SLP_TYP={slp_typ}): powering off");
            self.control.request(MachineEvent::PowerOff);
        } else {
            // Only S5 is declared in the DSDT. Wake at once rather than leave a guest polling
            // WAK_STS forever.
            log::warn!("acpi pm: sleep type {slp_typ} is not supported; waking immediately");
            self.status |= pm1::WAK;
        }
    }

    /// The register bytes at `offset` for a read; `None` where nothing is decoded.
    fn read_byte(&self, offset: u64, timer: u32) -> Option<u8> {
        let byte = |v: u64, lane: u64| (v >> (8 * lane)) as u8;
        match offset {
            OFF_STS..=1 => Some(byte(self.status.into(), offset - OFF_STS)),
            OFF_EN..=3 => Some(byte(self.enable.into(), offset - OFF_EN)),
            OFF_CNT..=5 => Some(byte(self.control_value().into(), offset - OFF_CNT)),
            OFF_TMR..=11 => Some(byte(timer.into(), offset - OFF_TMR)),
            _ => None,
        }
    }
}

/// PM timer ticks elapsed at `ns` on the device's clock.
fn timer_ticks(ns: u64) -> u64 {
    let t = u128::from(ns) * u128::from(PM_TIMER_HZ) / 1_000_000_000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// The first nanosecond at which `ticks` timer ticks have elapsed.
fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.refresh_timer();
        self.update_sci();
        let timer = self.timer_value();
        read_bytewise(offset, PM_PORT_LEN, data, |o| {
            self.read_byte(o, timer).unwrap_or(0xff)
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.refresh_timer();
        // Gather the bytes per register first: a 32-bit write at 0 writes PM1_STS and PM1_EN
        // at once, and a byte write must leave the other byte of a register alone.
        let (mut sts_clear, mut en, mut en_mask, mut cnt, mut cnt_mask) = (0u16, 0, 0, 0, 0);
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let lane = |base: u64| 8 * (o - base) as u32;
            let v = u16::from(b);
            match o {
                OFF_STS..=1 => sts_clear |= v << lane(OFF_STS),
                OFF_EN..=3 => {
                    en |= v << lane(OFF_EN);
                    en_mask |= 0xff << lane(OFF_EN);
                }
                OFF_CNT..=5 => {
                    cnt |= v << lane(OFF_CNT);
                    cnt_mask |= 0xff << lane(OFF_CNT);
                }
                OFF_TMR..=11 => log::debug!("acpi pm: write to the read-only PM timer ignored"),
                _ => log::debug!("acpi pm: write to undecoded offset {o:#x} ignored"),
            }
        }
        self.status &= !(sts_clear & pm1::STS_MASK);
        let en_mask = en_mask & pm1::EN_MASK;
        self.enable = (self.enable & !en_mask) | (en & en_mask);
        if cnt_mask != 0 {
            self.write_control(cnt, cnt_mask);
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use crate::pit::ManualClock;

    struct Rig {
        pm: AcpiPm,
        control: Arc<MachineControl>,
        sci: Arc<LatchedLine>,
        clock: Arc<ManualClock>,
    }

    fn rig() -> Rig {
        let control = MachineControl::new();
        let sci = LatchedLine::new();
        let clock = ManualClock::new(0);
        let pm = AcpiPm::new(control.clone(), sci.clone(), clock.clone());
        Rig {
            pm,
            control,
            sci,
            clock,
        }
    }

    fn rd(pm: &mut AcpiPm, port: u16, size: usize) -> u64 {
        let mut d = vec![0u8; size];
        pm.read(u64::from(port - PM_BASE_PORT), &mut d);
        crate::bus::le_value(&d)
    }

    fn wr(pm: &mut AcpiPm, port: u16, size: usize, value: u64) {
        let mut d = vec![0u8; size];
        crate::bus::fill_le(&mut d, value);
        pm.write(u64::from(port - PM_BASE_PORT), &d);
    }

    const S5_SLEEP: u64 = ((SLP_TYP_S5 as u64) << 10) | pm1_cnt::SLP_EN as u64;

    #[test]
    fn power_on_state_is_acpi_mode_with_nothing_pending() {
        let mut r = rig();
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2), 0, "PM1_STS");
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT + 2, 2), 0, "PM1_EN");
        assert_eq!(rd(&mut r.pm, PM1A_CNT_PORT, 2), 1, "PM1_CNT: SCI_EN only");
        assert!(!r.sci.level());
        assert_eq!(r.control.take(), None);
    }

    #[test]
    fn slp_en_with_s5_type_powers_off() {
        let mut r = rig();
        wr(&mut r.pm, PM1A_CNT_PORT, 2, S5_SLEEP);
        assert_eq!(r.control.take(), Some(MachineEvent::PowerOff));
    }

    #[test]
    fn acpica_two_step_sequence_powers_off_on_the_second_write_only() {
        let mut r = rig();
        // ACPICA: read PM1_CNT, clear SLP_TYP|SLP_EN, write SLP_TYP, then write SLP_TYP|SLP_EN.
        let cnt = rd(&mut r.pm, PM1A_CNT_PORT, 2);
        let with_type = cnt | (u64::from(SLP_TYP_S5) << 10);
        wr(&mut r.pm, PM1A_CNT_PORT, 2, with_type);
        assert_eq!(r.control.take(), None);
        assert_eq!(
            rd(&mut r.pm, PM1A_CNT_PORT, 2),
            with_type,
            "SLP_TYP is kept"
        );
        wr(
            &mut r.pm,
            PM1A_CNT_PORT,
            2,
            with_type | u64::from(pm1_cnt::SLP_EN),
        );
        assert_eq!(r.control.take(), Some(MachineEvent::PowerOff));
    }

    #[test]
    fn a_byte_write_to_the_high_byte_of_pm1_cnt_sleeps() {
        let mut r = rig();
        // SLP_TYP=5 at bits 10-12 and SLP_EN at bit 13 are bits 2-5 of the high byte.
        wr(&mut r.pm, PM1A_CNT_PORT + 1, 1, 0x34);
        assert_eq!(r.control.take(), Some(MachineEvent::PowerOff));
    }

    #[test]
    fn slp_en_and_gbl_rls_read_zero_and_sci_en_ignores_writes() {
        let mut r = rig();
        wr(
            &mut r.pm,
            PM1A_CNT_PORT,
            2,
            0xffff & !pm1_cnt::SLP_EN as u64,
        );
        let v = rd(&mut r.pm, PM1A_CNT_PORT, 2) as u16;
        assert_eq!(v, pm1_cnt::SCI_EN | pm1_cnt::BM_RLD | pm1_cnt::SLP_TYP);
        wr(&mut r.pm, PM1A_CNT_PORT, 2, 0);
        assert_eq!(rd(&mut r.pm, PM1A_CNT_PORT, 2), 1, "SCI_EN stays set");
        assert_eq!(r.control.take(), None);
    }

    #[test]
    fn other_sleep_types_are_ignored_and_wake_at_once() {
        let mut r = rig();
        for typ in (0..8u64).filter(|&t| t != u64::from(SLP_TYP_S5)) {
            wr(&mut r.pm, PM1A_CNT_PORT, 2, (typ << 10) | 1 << 13);
            assert_eq!(r.control.take(), None, "SLP_TYP {typ}");
            assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2) as u16, pm1::WAK);
            wr(&mut r.pm, PM1A_EVT_PORT, 2, u64::from(pm1::WAK));
            assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2), 0);
        }
        assert!(!r.sci.level(), "WAK_STS is not an SCI source");
    }

    #[test]
    fn status_bits_are_write_one_to_clear() {
        let mut r = rig();
        r.pm.press_power_button();
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2) as u16, pm1::PWRBTN);
        wr(&mut r.pm, PM1A_EVT_PORT, 2, 0);
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2) as u16, pm1::PWRBTN);
        wr(&mut r.pm, PM1A_EVT_PORT, 2, u64::from(!pm1::PWRBTN));
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2) as u16, pm1::PWRBTN);
        // The high byte alone clears it.
        wr(&mut r.pm, PM1A_EVT_PORT + 1, 1, 0x01);
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2), 0);
    }

    #[test]
    fn enable_register_keeps_defined_bits_and_global_lock_enable_sticks() {
        let mut r = rig();
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, 0xffff);
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT + 2, 2) as u16, pm1::EN_MASK);
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 1, 0);
        assert_eq!(
            rd(&mut r.pm, PM1A_EVT_PORT + 2, 2) as u16,
            pm1::EN_MASK & 0xff00,
            "a byte write leaves the other byte"
        );
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, u64::from(pm1::GBL));
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT + 2, 2) as u16, pm1::GBL);
    }

    #[test]
    fn a_dword_access_at_the_event_block_covers_status_and_enable() {
        let mut r = rig();
        r.pm.press_power_button();
        wr(&mut r.pm, PM1A_EVT_PORT, 4, u64::from(pm1::PWRBTN) << 16);
        assert_eq!(
            rd(&mut r.pm, PM1A_EVT_PORT, 4),
            u64::from(pm1::PWRBTN) | u64::from(pm1::PWRBTN) << 16
        );
    }

    #[test]
    fn power_button_raises_the_sci_only_when_enabled_until_cleared() {
        let mut r = rig();
        r.pm.press_power_button();
        assert!(!r.sci.level());
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, u64::from(pm1::PWRBTN));
        assert!(r.sci.level(), "enabling a pending event raises the SCI");
        wr(&mut r.pm, PM1A_EVT_PORT, 2, u64::from(pm1::PWRBTN));
        assert!(!r.sci.level());
        r.pm.press_power_button();
        assert!(r.sci.level());
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, 0);
        assert!(!r.sci.level(), "disabling drops the SCI");
    }

    #[test]
    fn pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() {
        let mut r = rig();
        assert_eq!(rd(&mut r.pm, PM_TMR_PORT, 4), 0);
        r.clock.set(1_000_000_000);
        assert_eq!(rd(&mut r.pm, PM_TMR_PORT, 4), PM_TIMER_HZ);
        r.clock.set(10_000_000_000);
        assert_eq!(
            rd(&mut r.pm, PM_TMR_PORT, 4),
            (10 * PM_TIMER_HZ) & 0xff_ffff
        );
        assert_eq!(rd(&mut r.pm, PM_TMR_PORT + 3, 1), 0, "bits 24-31 read 0");
        wr(&mut r.pm, PM_TMR_PORT, 4, 0);
        assert_eq!(
            rd(&mut r.pm, PM_TMR_PORT, 4),
            (10 * PM_TIMER_HZ) & 0xff_ffff
        );
    }

    #[test]
    fn timer_carry_sets_tmr_sts_and_raises_the_sci_when_enabled() {
        let mut r = rig();
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, u64::from(pm1::TMR));
        let due = r.pm.next_event_ns().expect("carry pending");
        assert_eq!(due, ticks_to_ns(1 << 23));
        r.clock.set(due - 1);
        r.pm.poll();
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2), 0);
        assert!(!r.sci.level());
        r.clock.set(due);
        r.pm.poll();
        assert!(r.sci.level());
        assert_eq!(rd(&mut r.pm, PM1A_EVT_PORT, 2) as u16, pm1::TMR);
        assert_eq!(r.pm.next_event_ns(), None, "already pending");
        wr(&mut r.pm, PM1A_EVT_PORT, 2, u64::from(pm1::TMR));
        assert!(!r.sci.level());
        assert_eq!(r.pm.next_event_ns(), Some(ticks_to_ns(2 << 23)));
        wr(&mut r.pm, PM1A_EVT_PORT + 2, 2, 0);
        assert_eq!(r.pm.next_event_ns(), None, "not enabled");
    }

    #[test]
    fn undecoded_bytes_read_all_ones_and_ignore_writes() {
        let mut r = rig();
        wr(&mut r.pm, PM_BASE_PORT + 6, 2, 0x1234);
        assert_eq!(rd(&mut r.pm, PM_BASE_PORT + 6, 2), 0xffff);
        let mut d = [0u8; 4];
        r.pm.read(PM_PORT_LEN - 2, &mut d);
        assert_eq!(d[2..], [0xff, 0xff], "past the range");
        r.pm.write(u64::MAX, &[0xff, 0xff]);
        r.pm.read(u64::MAX, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(r.control.take(), None);
    }
}
