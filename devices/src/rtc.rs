//! MC146818-compatible CMOS real-time clock and NVRAM at ports 0x70/0x71.
//!
//! Linux reads the wall-clock time here at boot (`mc146818_get_time`, which waits for UIP to
//! clear) and firmware-style code reads the memory size bytes. The time comes from a [`Clock`]
//! (the host's wall clock by default) plus an offset the guest can change by setting the time;
//! the guest second boundary stays aligned with the host's, which is what the UIP bit is
//! modelled from (set during the last 244 µs of each second).
//!
//! Port 0x70 (offset 0) is the index port: bits 0-6 select one of 128 bytes, bit 7 masks NMI
//! (kept, see [`CmosRtc::nmi_masked`]). Port 0x71 (offset 1) reads/writes the selected byte.
//!
//! Interrupts (IRQ 8): the periodic, alarm and update-ended flags of register C are computed
//! from the clock whenever the device is accessed or [`CmosRtc::poll`] is called; the line is
//! asserted while IRQF is set and released when the guest reads register C. A guest that
//! enables an RTC interrupt only gets it on time if the integrator calls `poll` often enough
//! (for example on every vCPU exit or from a timer thread). The alarm is compared against at
//! most the last [`ALARM_LOOKBACK_SECONDS`] seconds that went by between two checks.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::InterruptLine;

/// Conventional I/O port base of the RTC.
pub const RTC_PORT: u16 = 0x70;
/// Size of the RTC's port range (index and data).
pub const RTC_PORT_LEN: u64 = 2;
/// Start of the 32-bit MMIO hole: RAM beyond this much lives above 4 GiB (matches the machine's
/// guest memory layout, which the CMOS memory-size bytes must describe).
pub const LOW_RAM_LIMIT: u64 = 0xc000_0000;
/// How many past seconds an alarm check looks at when the device was not polled for a while.
pub const ALARM_LOOKBACK_SECONDS: u64 = 64;

const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const A_DIVIDER_MASK: u8 = 0x70;
const A_RATE_MASK: u8 = 0x0f;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

/// How long before the end of a second the update-in-progress bit is set.
const UIP_WINDOW_NS: u64 = 244_000;
const NS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A source of wall-clock time, injectable so tests control time.
pub trait Clock: Send {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The host's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> Duration {
        // A host clock before 1970 is a misconfigured host; report the epoch rather than fail.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A calendar date and time of day (UTC), as the RTC registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2024.
    pub year: i64,
    /// Month, 1-12.
    pub month: u8,
    /// Day of the month, 1-31.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// Second, 0-59.
    pub second: u8,
    /// Day of the week, 1 = Sunday … 7 = Saturday (the RTC's convention).
    pub weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Shift the year to start in March so the leap day is the last day of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl DateTime {
    /// Breaks Unix time `secs` down into a UTC date and time.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Unix time of this date and time; out-of-range fields carry over as `mktime` does.
    pub fn to_unix(&self) -> i64 {
        let month = i64::from(self.month.clamp(1, 12));
        days_from_civil(self.year, month, i64::from(self.day)) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10 % 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    // Invalid BCD nibbles from a guest simply produce odd values, as on the real chip.
    (v >> 4) * 10 + (v & 0x0f)
}

/// The MC146818 RTC with its 128 bytes of CMOS RAM.
pub struct CmosRtc {
    /// Selected byte (bits 0-6 of the last index write).
    index: u8,
    /// Bit 7 of the last index write.
    nmi_masked: bool,
    /// CMOS RAM; the time registers hold the guest's values only while the clock is stopped.
    ram: [u8; 128],
    /// Guest time = host time + this many seconds (the sub-second phase follows the host).
    offset_secs: i64,
    /// Host time (ns since the epoch) up to which interrupt flags have been computed.
    last_check_ns: u64,
    clock: Box<dyn Clock>,
    irq: Arc<dyn InterruptLine>,
    irq_level: bool,
}

impl CmosRtc {
    /// Creates the RTC on the host clock, describing `ram_bytes` of guest RAM in the CMOS.
    pub fn new(ram_bytes: u64, irq: Arc<dyn InterruptLine>) -> Self {
        Self::with_clock(ram_bytes, irq, Box::new(HostClock))
    }

    /// Creates the RTC on an explicit clock (tests, deterministic runs).
    pub fn with_clock(ram_bytes: u64, irq: Arc<dyn InterruptLine>, clock: Box<dyn Clock>) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[usize::from(REG_B)] = B_24H; // BCD, 24-hour
        ram[usize::from(REG_D)] = D_VRT;
        fill_memory_size(&mut ram, ram_bytes);
        let now = clock.now();
        CmosRtc {
            index: 0,
            nmi_masked: false,
            ram,
            offset_secs: 0,
            last_check_ns: duration_ns(now),
            clock,
            irq,
            irq_level: false,
        }
    }

    /// Whether the guest's last index write set bit 7 (NMI disabled).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// Brings the interrupt flags up to date with the clock and drives IRQ 8 accordingly.
    pub fn poll(&mut self) {
        let now = self.now_ns();
        self.update_flags(now);
    }

    /// The guest's current date and time as the clock registers describe it.
    pub fn guest_time(&self) -> DateTime {
        if self.running() {
            DateTime::from_unix(self.guest_secs(self.now_ns()))
        } else {
            self.time_from_ram()
        }
    }

    fn now_ns(&self) -> u64 {
        duration_ns(self.clock.now())
    }

    fn reg(&self, r: u8) -> u8 {
        self.ram[usize::from(r & 0x7f)]
    }

    fn set_reg(&mut self, r: u8, v: u8) {
        self.ram[usize::from(r & 0x7f)] = v;
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_BINARY != 0
    }

    /// The time registers advance: SET is clear and the divider is in a counting state.
    fn running(&self) -> bool {
        Self::running_with(self.reg(REG_A), self.reg(REG_B))
    }

    fn running_with(a: u8, b: u8) -> bool {
        b & B_SET == 0 && a & A_DIVIDER_MASK <= 0x20
    }

    fn guest_secs(&self, host_ns: u64) -> i64 {
        ((host_ns / NS_PER_SEC) as i64).saturating_add(self.offset_secs)
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = hour >= 12;
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if pm { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & 0x7f) % 12;
        if v & 0x80 != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    /// The byte a clock register reads for date/time `t`.
    fn time_register(&self, r: u8, t: &DateTime) -> u8 {
        match r {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_DAY_OF_WEEK => self.encode(t.weekday),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
            _ => self.reg(r),
        }
    }

    fn is_time_register(r: u8) -> bool {
        matches!(
            r,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_DAY_OF_WEEK
                | REG_DAY_OF_MONTH
                | REG_MONTH
                | REG_YEAR
                | REG_CENTURY
        )
    }

    /// Copies the running time into the clock registers (the clock is about to stop).
    fn latch_time_to_ram(&mut self) {
        let t = DateTime::from_unix(self.guest_secs(self.now_ns()));
        for r in [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY_OF_WEEK,
            REG_DAY_OF_MONTH,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ] {
            let v = self.time_register(r, &t);
            self.set_reg(r, v);
        }
    }

    fn time_from_ram(&self) -> DateTime {
        let century = i64::from(self.decode(self.reg(REG_CENTURY)));
        DateTime {
            year: century * 100 + i64::from(self.decode(self.reg(REG_YEAR))),
            month: self.decode(self.reg(REG_MONTH)),
            day: self.decode(self.reg(REG_DAY_OF_MONTH)),
            hour: self.decode_hour(self.reg(REG_HOURS)),
            minute: self.decode(self.reg(REG_MINUTES)),
            second: self.decode(self.reg(REG_SECONDS)),
            weekday: self.decode(self.reg(REG_DAY_OF_WEEK)),
        }
    }

    /// Restarts the clock from the time the guest left in the registers.
    fn start_from_ram(&mut self) {
        let host_secs = (self.now_ns() / NS_PER_SEC) as i64;
        self.offset_secs = self.time_from_ram().to_unix().saturating_sub(host_secs);
        log::debug!("rtc: guest set time to {:?}", self.time_from_ram());
    }

    fn uip(&self) -> bool {
        self.running() && NS_PER_SEC - self.now_ns() % NS_PER_SEC <= UIP_WINDOW_NS
    }

    /// Periodic interrupt period for rate select `rs` (32.768 kHz time base), if enabled.
    fn periodic_ns(&self) -> Option<u64> {
        let rs = u32::from(self.reg(REG_A) & A_RATE_MASK);
        let exp = match rs {
            0 => return None,
            // Rates 1 and 2 repeat rates 8 and 9 on the 32.768 kHz time base.
            1 | 2 => rs + 7,
            _ => rs - 1,
        };
        Some(((1u64 << exp) * NS_PER_SEC) / 32_768)
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let t = DateTime::from_unix(secs);
        let matches = |alarm: u8, now: u8| alarm & 0xc0 == 0xc0 || alarm == now;
        matches(self.reg(REG_SECONDS_ALARM), self.encode(t.second))
            && matches(self.reg(REG_MINUTES_ALARM), self.encode(t.minute))
            && matches(self.reg(REG_HOURS_ALARM), self.encode_hour(t.hour))
    }

    /// Sets PF/AF/UF for everything that happened up to host time `now`, then IRQF and the line.
    fn update_flags(&mut self, now: u64) {
        let last = self.last_check_ns;
        if now < last {
            // The host clock stepped back: restart event tracking from here.
            self.last_check_ns = now;
        } else if now > last {
            let mut flags = 0;
            if self.reg(REG_A) & A_DIVIDER_MASK <= 0x20 {
                if let Some(period) = self.periodic_ns() {
                    if now / period > last / period {
                        flags |= C_PF;
                    }
                }
            }
            let (last_sec, now_sec) = (last / NS_PER_SEC, now / NS_PER_SEC);
            if self.running() && now_sec > last_sec {
                flags |= C_UF;
                let first = now_sec
                    .saturating_sub(ALARM_LOOKBACK_SECONDS - 1)
                    .max(last_sec + 1);
                if (first..=now_sec)
                    .any(|s| self.alarm_matches((s as i64).saturating_add(self.offset_secs)))
                {
                    flags |= C_AF;
                }
            }
            let c = self.reg(REG_C) | flags;
            self.set_reg(REG_C, c);
            self.last_check_ns = now;
        }
        self.update_irqf();
    }

    fn update_irqf(&mut self) {
        let b = self.reg(REG_B);
        let mut c = self.reg(REG_C) & !C_IRQF;
        let enabled = (b & B_PIE != 0 && c & C_PF != 0)
            || (b & B_AIE != 0 && c & C_AF != 0)
            || (b & B_UIE != 0 && c & C_UF != 0);
        if enabled {
            c |= C_IRQF;
        }
        self.set_reg(REG_C, c);
        if enabled != self.irq_level {
            self.irq_level = enabled;
            self.irq.set_level(enabled);
        }
    }

    fn read_data(&mut self) -> u8 {
        let r = self.index;
        match r {
            REG_A => {
                let a = self.reg(REG_A) & !A_UIP;
                if self.uip() {
                    a | A_UIP
                } else {
                    a
                }
            }
            REG_C => {
                let c = self.reg(REG_C);
                self.set_reg(REG_C, 0);
                self.update_irqf();
                c
            }
            REG_D => D_VRT,
            _ if Self::is_time_register(r) && self.running() => {
                let t = DateTime::from_unix(self.guest_secs(self.now_ns()));
                self.time_register(r, &t)
            }
            _ => self.reg(r),
        }
    }

    fn write_data(&mut self, v: u8) {
        let r = self.index;
        match r {
            REG_A => self.write_control(v & !A_UIP, self.reg(REG_B)),
            REG_B => {
                // Setting SET stops updates and, per the datasheet, clears UIE.
                let v = if v & B_SET != 0 { v & !B_UIE } else { v };
                self.write_control(self.reg(REG_A), v);
                self.update_irqf();
            }
            REG_C | REG_D => log::debug!("rtc: write {v:#x} to read-only register {r:#x}"),
            _ if Self::is_time_register(r) && self.running() => {
                // A running clock takes the new field at once, keeping the others.
                self.latch_time_to_ram();
                self.set_reg(r, v);
                self.start_from_ram();
            }
            _ => self.set_reg(r, v),
        }
    }

    /// Writes registers A and B, stopping or restarting the clock as they demand.
    fn write_control(&mut self, a: u8, b: u8) {
        let was_running = self.running();
        let will_run = Self::running_with(a, b);
        if was_running && !will_run {
            self.latch_time_to_ram();
        }
        self.set_reg(REG_A, a);
        self.set_reg(REG_B, b);
        if !was_running && will_run {
            self.start_from_ram();
        }
    }

    fn access_read(&mut self, offset: u64) -> u8 {
        match offset {
            1 => self.read_data(),
            // The index port is write-only; QEMU reads it as 0xff.
            _ => 0xff,
        }
    }

    fn access_write(&mut self, offset: u64, v: u8) {
        match offset {
            0 => {
                self.index = v & 0x7f;
                self.nmi_masked = v & 0x80 != 0;
            }
            1 => self.write_data(v),
            _ => {}
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Fills the memory-size bytes the way QEMU's `pc` machine does.
fn fill_memory_size(ram: &mut [u8; 128], ram_bytes: u64) {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let below_4g = ram_bytes.min(LOW_RAM_LIMIT);
    let above_4g = ram_bytes - below_4g;
    let mut put = |lo: usize, bytes: &[u8]| {
        if let Some(dst) = ram.get_mut(lo..lo + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    // Base memory in KiB (at most 640).
    let base = (below_4g / KIB).min(640) as u16;
    put(0x15, &base.to_le_bytes());
    // Extended memory above 1 MiB in KiB, saturating at 0xffff; mirrored at 0x30.
    let ext = (below_4g.saturating_sub(MIB) / KIB).min(0xffff) as u16;
    put(0x17, &ext.to_le_bytes());
    put(0x30, &ext.to_le_bytes());
    // Memory between 16 MiB and 4 GiB in 64 KiB units.
    let mid = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
    put(0x34, &mid.to_le_bytes());
    // Memory above 4 GiB in 64 KiB units, three bytes.
    let high = (above_4g / (64 * KIB)).min(0xff_ffff) as u32;
    put(0x5b, &high.to_le_bytes()[..3]);
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.poll();
        // A wide access is split into byte cycles on consecutive ports, as on the ISA bus.
        read_bytewise(offset, RTC_PORT_LEN, data, |r| self.access_read(r));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.poll();
        write_bytewise(offset, RTC_PORT_LEN, data, |r, v| self.access_write(r, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves by hand (ns since the epoch).
    #[derive(Clone)]
    struct TestClock(Arc<AtomicU64>);

    impl TestClock {
        fn at(secs: u64, ns: u64) -> Self {
            TestClock(Arc::new(AtomicU64::new(secs * NS_PER_SEC + ns)))
        }
        fn set(&self, secs: u64, ns: u64) {
            self.0.store(secs * NS_PER_SEC + ns, Ordering::SeqCst);
        }
        fn advance_ns(&self, ns: u64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const T0: u64 = 1_709_214_307;

    fn rtc_at(secs: u64, ns: u64) -> (CmosRtc, TestClock, Arc<LatchedLine>) {
        let clock = TestClock::at(secs, ns);
        let line = LatchedLine::new();
        let rtc = CmosRtc::with_clock(128 << 20, line.clone(), Box::new(clock.clone()));
        (rtc, clock, line)
    }

    fn rd(rtc: &mut CmosRtc, reg: u8) -> u8 {
        rtc.write(0, &[reg]);
        let mut b = [0];
        rtc.read(1, &mut b);
        b[0]
    }

    fn wr(rtc: &mut CmosRtc, reg: u8, v: u8) {
        rtc.write(0, &[reg]);
        rtc.write(1, &[v]);
    }

    #[test]
    fn calendar_conversion_round_trips() {
        let t = DateTime::from_unix(T0 as i64);
        assert_eq!(
            t,
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 13,
                minute: 45,
                second: 7,
                weekday: 5
            }
        );
        assert_eq!(t.to_unix(), T0 as i64);
        assert_eq!(DateTime::from_unix(0).weekday, 5);
        assert_eq!(DateTime::from_unix(0).year, 1970);
        // 2000-03-01 00:00:00 (after a leap day in a century leap year).
        let t = DateTime::from_unix(951_868_800);
        assert_eq!((t.year, t.month, t.day), (2000, 3, 1));
        for s in [-86_400i64, 0, 951_782_399, 4_102_444_800, T0 as i64] {
            assert_eq!(DateTime::from_unix(s).to_unix(), s);
        }
    }

    #[test]
    fn reads_host_time_in_bcd_24h_by_default() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x07);
        assert_eq!(rd(&mut rtc, REG_MINUTES), 0x45);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x13);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_WEEK), 0x05);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_MONTH), 0x29);
        assert_eq!(rd(&mut rtc, REG_MONTH), 0x02);
        assert_eq!(rd(&mut rtc, REG_YEAR), 0x24);
        assert_eq!(rd(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(rd(&mut rtc, REG_D), 0x80);
        assert_eq!(rd(&mut rtc, REG_B), 0x02);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        wr(&mut rtc, REG_B, B_BINARY | B_24H);
        assert_eq!(rd(&mut rtc, REG_HOURS), 13);
        assert_eq!(rd(&mut rtc, REG_YEAR), 24);
        assert_eq!(rd(&mut rtc, REG_CENTURY), 20);
        wr(&mut rtc, REG_B, B_BINARY);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x80 | 1);
        wr(&mut rtc, REG_B, 0);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x81);
        // Midnight is 12 AM, noon is 12 PM.
        let (mut rtc, _, _) = rtc_at(T0 - 13 * 3600, 0);
        wr(&mut rtc, REG_B, 0);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x12);
        let (mut rtc, _, _) = rtc_at(T0 - 3600, 0);
        wr(&mut rtc, REG_B, 0);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x92);
    }

    #[test]
    fn time_advances_with_the_clock() {
        let (mut rtc, clock, _) = rtc_at(T0, 0);
        clock.set(T0 + 60, 0);
        assert_eq!(rd(&mut rtc, REG_MINUTES), 0x46);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x07);
    }

    #[test]
    fn uip_is_set_in_last_244us_of_a_second() {
        let (mut rtc, clock, _) = rtc_at(T0, 500_000_000);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        clock.set(T0, NS_PER_SEC - 200_000);
        assert_eq!(rd(&mut rtc, REG_A), 0xa6);
        clock.set(T0, NS_PER_SEC - 300_000);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        // The guest cannot write UIP, and no update is in progress while SET is on.
        wr(&mut rtc, REG_A, 0xa6);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        clock.set(T0, NS_PER_SEC - 100_000);
        wr(&mut rtc, REG_B, B_SET | B_24H);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
    }

    #[test]
    fn set_bit_freezes_and_guest_time_then_advances() {
        let (mut rtc, clock, _) = rtc_at(T0, 0);
        wr(&mut rtc, REG_B, B_SET | B_24H);
        clock.set(T0 + 5, 0);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x07, "frozen while SET");
        // Guest sets 1999-12-31 23:59:58 (BCD).
        for (r, v) in [
            (REG_SECONDS, 0x58),
            (REG_MINUTES, 0x59),
            (REG_HOURS, 0x23),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_MONTH, 0x12),
            (REG_YEAR, 0x99),
            (REG_CENTURY, 0x19),
        ] {
            wr(&mut rtc, r, v);
        }
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x58);
        wr(&mut rtc, REG_B, B_24H);
        clock.set(T0 + 8, 0);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x01);
        assert_eq!(rd(&mut rtc, REG_MINUTES), 0x00);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x00);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_MONTH), 0x01);
        assert_eq!(rd(&mut rtc, REG_MONTH), 0x01);
        assert_eq!(rd(&mut rtc, REG_YEAR), 0x00);
        assert_eq!(rd(&mut rtc, REG_CENTURY), 0x20);
        // Saturday, 2000-01-01.
        assert_eq!(rd(&mut rtc, REG_DAY_OF_WEEK), 0x07);
    }

    #[test]
    fn writing_one_field_while_running_keeps_the_others() {
        let (mut rtc, clock, _) = rtc_at(T0, 0);
        wr(&mut rtc, REG_MINUTES, 0x10);
        clock.set(T0 + 1, 0);
        assert_eq!(rd(&mut rtc, REG_MINUTES), 0x10);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x08);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x13);
    }

    #[test]
    fn garbage_time_from_guest_does_not_panic() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        wr(&mut rtc, REG_B, B_SET);
        for r in 0..=0x7f {
            wr(&mut rtc, r, 0xff);
        }
        wr(&mut rtc, REG_B, 0);
        for r in 0..=0x7f {
            rd(&mut rtc, r);
        }
        let _ = rtc.guest_time();
    }

    #[test]
    fn nvram_bytes_and_nmi_mask() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        wr(&mut rtc, 0x40, 0x5a);
        assert_eq!(rd(&mut rtc, 0x40), 0x5a);
        assert!(!rtc.nmi_masked());
        rtc.write(0, &[0x80 | 0x40]);
        assert!(rtc.nmi_masked());
        let mut b = [0];
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x5a);
        rtc.read(0, &mut b);
        assert_eq!(b[0], 0xff);
        // A 16-bit write to 0x70 selects the index and writes the data port.
        rtc.write(0, &[0x41, 0x77]);
        assert!(!rtc.nmi_masked());
        assert_eq!(rd(&mut rtc, 0x41), 0x77);
    }

    #[test]
    fn register_d_and_c_are_read_only() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        wr(&mut rtc, REG_D, 0);
        assert_eq!(rd(&mut rtc, REG_D), 0x80);
        wr(&mut rtc, REG_C, 0xff);
        assert_eq!(rd(&mut rtc, REG_C), 0);
    }

    #[test]
    fn memory_size_bytes_as_qemu() {
        let (mut rtc, _, _) = rtc_at(T0, 0);
        // 128 MiB: 640 KiB base, extended saturates at 0xffff KiB, 112 MiB above 16 MiB.
        assert_eq!((rd(&mut rtc, 0x15), rd(&mut rtc, 0x16)), (0x80, 0x02));
        assert_eq!((rd(&mut rtc, 0x17), rd(&mut rtc, 0x18)), (0xff, 0xff));
        assert_eq!((rd(&mut rtc, 0x30), rd(&mut rtc, 0x31)), (0xff, 0xff));
        assert_eq!((rd(&mut rtc, 0x34), rd(&mut rtc, 0x35)), (0x00, 0x07));
        assert_eq!(rd(&mut rtc, 0x5b), 0);
        // 32 MiB: 31 MiB extended = 0x7c00 KiB, 16 MiB above 16 MiB = 0x100 units.
        let rtc = CmosRtc::with_clock(32 << 20, LatchedLine::new(), Box::new(TestClock::at(T0, 0)));
        assert_eq!(&rtc.ram[0x17..0x19], &[0x00, 0x7c]);
        assert_eq!(&rtc.ram[0x30..0x32], &[0x00, 0x7c]);
        assert_eq!(&rtc.ram[0x34..0x36], &[0x00, 0x01]);
        let big = LOW_RAM_LIMIT + (1 << 30);
        let rtc = CmosRtc::with_clock(big, LatchedLine::new(), Box::new(TestClock::at(T0, 0)));
        assert_eq!(&rtc.ram[0x17..0x19], &[0xff, 0xff]);
        assert_eq!(&rtc.ram[0x34..0x36], &(0xbf00u16).to_le_bytes());
        // 1 GiB above 4 GiB = 0x4000 units of 64 KiB.
        assert_eq!(&rtc.ram[0x5b..0x5e], &[0x00, 0x40, 0x00]);
    }

    #[test]
    fn update_interrupt_raises_irq8_until_c_is_read() {
        let (mut rtc, clock, line) = rtc_at(T0, 100);
        wr(&mut rtc, REG_A, 0x20); // no periodic flag to muddy register C
        wr(&mut rtc, REG_B, B_UIE | B_24H);
        assert!(!line.level());
        clock.set(T0 + 1, 5);
        rtc.poll();
        assert!(line.level());
        assert_eq!(rd(&mut rtc, REG_C), C_IRQF | C_UF);
        assert!(!line.level());
        assert_eq!(rd(&mut rtc, REG_C), 0);
    }

    #[test]
    fn flags_set_without_enable_raise_irq_once_enabled() {
        let (mut rtc, clock, line) = rtc_at(T0, 100);
        wr(&mut rtc, REG_A, 0x20);
        clock.set(T0 + 1, 5);
        rtc.poll();
        assert!(!line.level());
        wr(&mut rtc, REG_B, B_UIE | B_24H);
        assert!(line.level());
        // Setting SET clears UIE and thereby IRQF.
        wr(&mut rtc, REG_B, B_SET | B_UIE | B_24H);
        assert_eq!(rd(&mut rtc, REG_B), B_SET | B_24H);
        assert!(!line.level());
        assert_eq!(rd(&mut rtc, REG_C), C_UF);
    }

    #[test]
    fn periodic_interrupt_at_selected_rate() {
        let (mut rtc, clock, line) = rtc_at(T0, 0);
        // Rate 15: 500 ms.
        wr(&mut rtc, REG_A, 0x2f);
        wr(&mut rtc, REG_B, B_PIE | B_24H);
        clock.advance_ns(400_000_000);
        rtc.poll();
        assert!(!line.level());
        clock.advance_ns(200_000_000);
        rtc.poll();
        assert!(line.level());
        assert_eq!(rd(&mut rtc, REG_C) & (C_IRQF | C_PF), C_IRQF | C_PF);
        // Rate 0 disables the periodic flag.
        wr(&mut rtc, REG_A, 0x20);
        clock.advance_ns(2 * NS_PER_SEC);
        rtc.poll();
        assert_eq!(rd(&mut rtc, REG_C) & C_PF, 0);
    }

    #[test]
    fn alarm_interrupt_with_dont_care_fields() {
        let (mut rtc, clock, line) = rtc_at(T0, 0);
        wr(&mut rtc, REG_A, 0x20);
        wr(&mut rtc, REG_SECONDS_ALARM, 0x10);
        wr(&mut rtc, REG_MINUTES_ALARM, 0xc0);
        wr(&mut rtc, REG_HOURS_ALARM, 0xff);
        wr(&mut rtc, REG_B, B_AIE | B_24H);
        clock.set(T0 + 2, 0); // :09
        rtc.poll();
        assert!(!line.level());
        clock.set(T0 + 3, 0); // :10
        rtc.poll();
        assert!(line.level());
        assert_eq!(rd(&mut rtc, REG_C), C_IRQF | C_AF | C_UF);
        // Skipping past the alarm second between two polls still reports it.
        clock.set(T0 + 62, 0); // next minute :09
        rtc.poll();
        clock.set(T0 + 65, 0); // :12
        rtc.poll();
        assert!(line.level());
    }
}
