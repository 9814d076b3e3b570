//! The Intel 8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61.
//!
//! Under KVM the in-kernel PIT is used; the binary-translation backend uses this model. Its
//! state is computed lazily from a [`TimeSource`] (host monotonic time, or an injected clock for
//! deterministic tests and lockstep runs), clocked at [`PIT_FREQUENCY_HZ`]:
//!
//! - Every counter remembers the clock tick its count was loaded at; count and OUT at any moment
//!   follow from the elapsed ticks, so a periodic channel 0 (mode 2 or 3) has its edges at
//!   exactly `load + k * N` ticks and never drifts, however irregularly it is polled.
//! - Channel 0's OUT drives IRQ 0. The CPU loop calls [`Pit8254::poll`] (cheaply gated by
//!   [`SharedPit::deadline_ns`]); each poll that finds one or more rising edges of OUT since the
//!   last one pulses the line (raise, then lower), which an edge-triggered PIC latches. Edges
//!   missed by a late poll coalesce into one, as they would in the PIC's IRR anyway. A halted CPU
//!   sleeps until [`Pit8254::next_event_ns`].
//! - Guest port accesses deliver due edges first, so reprogramming never loses a tick that was
//!   already due under the old programming.
//!
//! Modes 0-5 follow the 8254 datasheet for OUT, gate and reload behaviour. Simplifications,
//! all invisible to PC software we know of: counting starts at the write (not one clock later;
//! the null-count status bit does clear one clock later), the count read back in mode 3 is
//! approximate within a half-period, a new mode 3 count takes effect at the end of the period
//! rather than the half-period, and counts of 1 in modes 2 and 3 (illegal) act as 2. BCD
//! counting is implemented. Port 0x61: bit 0 gate of channel 2, bit 1 speaker data enable,
//! bits 2-3 NMI enables (stored only), bit 4 refresh toggle (flips on every read, as QEMU does),
//! bit 5 channel 2 OUT; bits 6-7 (NMI sources) read 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bus::{lock, read_bytewise, write_bytewise, Bus, BusDevice, BusError};
use crate::irq::InterruptLine;

/// The PIT input clock, Hz.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// First PIT port (counter 0); counters at +0..+2, control word at +3.
pub const PIT_PORT: u16 = 0x40;
/// Length of the PIT port range.
pub const PIT_PORT_LEN: u64 = 4;
/// The NMI status and control port (speaker, channel 2 gate).
pub const PORT_61: u16 = 0x61;
/// Length of the port 0x61 range.
pub const PORT_61_LEN: u64 = 1;

const NS_PER_SEC: u128 = 1_000_000_000;

/// A source of monotonic time in nanoseconds, shared by timer devices.
pub trait TimeSource: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// Host monotonic time, counted from the clock's creation.
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    /// Creates a clock reading 0 now.
    pub fn new() -> Arc<Self> {
        Arc::new(HostClock {
            origin: Instant::now(),
        })
    }
}

impl TimeSource for HostClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: for tests, replay and lockstep.
#[derive(Default)]
pub struct ManualClock {
    ns: AtomicU64,
}

impl ManualClock {
    /// Creates a clock reading `ns`.
    pub fn new(ns: u64) -> Arc<Self> {
        Arc::new(ManualClock {
            ns: AtomicU64::new(ns),
        })
    }

    /// Sets the time (callers keep it monotonic; the PIT ignores steps backwards).
    pub fn set(&self, ns: u64) {
        self.ns.store(ns, Ordering::SeqCst);
    }

    /// Moves the time forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl TimeSource for ManualClock {
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }
}

/// PIT clock ticks elapsed at `ns` (ticks happen at `ceil(k * 1e9 / f)` ns).
pub fn ns_to_ticks(ns: u64) -> u64 {
    let t = u128::from(ns) * u128::from(PIT_FREQUENCY_HZ) / NS_PER_SEC;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// The first nanosecond at which `ticks` ticks have elapsed.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let f = u128::from(PIT_FREQUENCY_HZ);
    let ns = (u128::from(ticks) * NS_PER_SEC).div_ceil(f);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Where a counter's counting element stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No count loaded since the control word (or mode 1/5 waiting for its trigger).
    Idle,
    /// Counting `n` clocks (1..=65536) since tick `start`.
    Counting { start: u64, n: u64 },
    /// Gate low stopped counting after `elapsed` clocks (modes 0, 2, 3, 4).
    Paused { elapsed: u64, n: u64 },
}

/// One 8254 counter.
#[derive(Debug, Clone)]
struct Counter {
    /// Operating mode 0..=5 (6 and 7 folded onto 2 and 3).
    mode: u8,
    /// The M2..M0 bits as programmed, for the status byte.
    mode_bits: u8,
    /// RW bits: 1 LSB only, 2 MSB only, 3 LSB then MSB.
    access: u8,
    bcd: bool,
    /// The count register as written (raw, BCD digits when `bcd`).
    count_reg: u16,
    /// A count has been written since the control word.
    armed: bool,
    gate: bool,
    phase: Phase,
    /// For modes 2/3: a new count `n` that takes over at tick `at` (the end of the period).
    pending: Option<(u64, u64)>,
    /// Null count reads 1 until this tick.
    null_until: u64,
    write_msb_next: bool,
    write_lsb: u8,
    read_msb_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Counter {
            mode: 0,
            mode_bits: 0,
            access: 3,
            bcd: false,
            count_reg: 0,
            armed: false,
            gate,
            phase: Phase::Idle,
            pending: None,
            null_until: u64::MAX,
            write_msb_next: false,
            write_lsb: 0,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
        }
    }

    /// The count modulus: 65536 binary, 10000 BCD.
    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    /// The initial count `N` the count register holds (0 means the modulus).
    fn initial_count(&self) -> u64 {
        let raw = u64::from(self.count_reg);
        let value = if self.bcd {
            (0..4).fold(0, |acc, i| acc + ((raw >> (4 * i)) & 0xf) * 10u64.pow(i))
        } else {
            raw
        };
        let n = if value == 0 { self.modulus() } else { value };
        if matches!(self.mode, 2 | 3) {
            n.max(2)
        } else {
            n
        }
    }

    /// The phase in effect at tick `t`, with a pending mode 2/3 reload applied once due.
    fn phase_at(&self, t: u64) -> Phase {
        match (self.phase, self.pending) {
            (Phase::Counting { .. }, Some((at, n))) if t >= at => Phase::Counting { start: at, n },
            (phase, _) => phase,
        }
    }

    /// Applies a due pending reload permanently.
    fn normalize(&mut self, t: u64) {
        if self.pending.is_some_and(|(at, _)| t >= at) {
            self.phase = self.phase_at(t);
            self.pending = None;
        }
    }

    /// (elapsed clocks, N) at tick `t`, if the counting element is loaded.
    fn elapsed(&self, t: u64) -> Option<(u64, u64)> {
        match self.phase_at(t) {
            Phase::Idle => None,
            Phase::Counting { start, n } => Some((t.saturating_sub(start), n)),
            Phase::Paused { elapsed, n } => Some((elapsed, n)),
        }
    }

    fn out(&self, t: u64) -> bool {
        let paused = matches!(self.phase, Phase::Paused { .. });
        let Some((d, n)) = self.elapsed(t) else {
            // After a control word OUT is low in mode 0 and high in every other mode.
            return self.mode != 0;
        };
        match self.mode {
            0 | 1 => d >= n,
            2 => paused || d % n != n - 1,
            3 => paused || d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// The counting element's value (binary) at tick `t`.
    fn count(&self, t: u64) -> u64 {
        let m = self.modulus();
        let Some((d, n)) = self.elapsed(t) else {
            return self.initial_count() % m;
        };
        let value = match self.mode {
            2 => n - d % n,
            3 => {
                let phase = d % n;
                let half = n.div_ceil(2);
                let into_half = if phase < half { phase } else { phase - half };
                (n & !1).saturating_sub(2 * into_half).max(2)
            }
            _ => n + m - d % m,
        };
        value % m
    }

    /// The count as the guest reads it (BCD-encoded in BCD mode).
    fn count_value(&self, t: u64) -> u16 {
        let c = self.count(t);
        let encoded = if self.bcd {
            (0..4).fold(0, |acc, i| acc | (((c / 10u64.pow(i)) % 10) << (4 * i)))
        } else {
            c
        };
        encoded as u16
    }

    fn status(&self, t: u64) -> u8 {
        u8::from(self.out(t)) << 7
            | u8::from(t < self.null_until) << 6
            | self.access << 4
            | self.mode_bits << 1
            | u8::from(self.bcd)
    }

    /// The first tick after `after` at which OUT rises, under the current programming.
    fn next_rising_edge(&self, after: u64) -> Option<u64> {
        let Phase::Counting { start, n } = self.phase_at(after) else {
            return None;
        };
        let d = after.checked_sub(start)?;
        match self.mode {
            0 | 1 => (d < n).then(|| start + n),
            2 | 3 => start.checked_add((d / n + 1).checked_mul(n)?),
            _ => (d < n + 1).then(|| start + n + 1),
        }
    }

    fn control_word(&mut self, access: u8, mode_bits: u8, bcd: bool) {
        self.access = access;
        self.mode_bits = mode_bits;
        self.mode = if mode_bits >= 6 {
            mode_bits - 4
        } else {
            mode_bits
        };
        self.bcd = bcd;
        self.armed = false;
        self.phase = Phase::Idle;
        self.pending = None;
        self.null_until = u64::MAX;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
    }

    /// A complete count was written at tick `t`.
    fn load(&mut self, value: u16, t: u64) {
        self.normalize(t);
        self.count_reg = value;
        let first = !self.armed;
        self.armed = true;
        let n = self.initial_count();
        match self.mode {
            0 | 4 => {
                self.null_until = t + 1;
                self.phase = if self.gate {
                    Phase::Counting { start: t, n }
                } else {
                    Phase::Paused { elapsed: 0, n }
                };
            }
            1 | 5 => {
                // Takes effect at the next gate trigger.
                self.null_until = u64::MAX;
            }
            _ => match self.phase {
                Phase::Counting { start, n: old } if !first => {
                    let at = start + ((t - start.min(t)) / old + 1) * old;
                    self.pending = Some((at, n));
                    self.null_until = at;
                }
                Phase::Paused { elapsed, .. } if !first => {
                    self.phase = Phase::Paused { elapsed, n };
                }
                _ => {
                    self.null_until = t + 1;
                    self.phase = if self.gate {
                        Phase::Counting { start: t, n }
                    } else {
                        Phase::Paused { elapsed: 0, n }
                    };
                }
            },
        }
    }

    fn set_gate(&mut self, gate: bool, t: u64) {
        self.normalize(t);
        let rising = gate && !self.gate;
        let falling = !gate && self.gate;
        self.gate = gate;
        match (self.mode, self.phase) {
            (0 | 4, Phase::Paused { elapsed, n }) if rising => {
                self.phase = Phase::Counting {
                    start: t.saturating_sub(elapsed),
                    n,
                };
            }
            (0 | 2 | 3 | 4, Phase::Counting { start, n }) if falling => {
                self.phase = Phase::Paused {
                    elapsed: t - start.min(t),
                    n,
                };
            }
            (1 | 2 | 3 | 5, _) if rising && self.armed => {
                // Trigger: (re)load the count register and start counting.
                self.null_until = self.null_until.min(t + 1);
                self.phase = Phase::Counting {
                    start: t,
                    n: self.initial_count(),
                };
            }
            _ => {}
        }
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.count_value(t));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(t));
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, latched) = match self.latched_count {
            Some(v) => (v, true),
            None => (self.count_value(t), false),
        };
        let [lo, hi] = value.to_le_bytes();
        let (byte, done) = match self.access {
            1 => (lo, true),
            2 => (hi, true),
            _ => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    (lo, false)
                } else {
                    (hi, true)
                }
            }
        };
        if latched && done {
            self.latched_count = None;
        }
        byte
    }

    fn write(&mut self, value: u8, t: u64) {
        match self.access {
            1 => self.load(u16::from(value), t),
            2 => self.load(u16::from(value) << 8, t),
            _ if !self.write_msb_next => {
                self.write_lsb = value;
                self.write_msb_next = true;
                if self.mode == 0 {
                    // Writing the first byte stops a mode 0 count and drops OUT.
                    self.normalize(t);
                    self.phase = Phase::Idle;
                }
            }
            _ => {
                self.write_msb_next = false;
                self.load(u16::from_le_bytes([self.write_lsb, value]), t);
            }
        }
    }
}

/// The 8254 with its three counters and port 0x61.
pub struct Pit8254 {
    time: Arc<dyn TimeSource>,
    irq0: Arc<dyn InterruptLine>,
    counters: [Counter; 3],
    /// Port 0x61 bits 0-3 as written.
    port61: u8,
    refresh_toggle: bool,
    /// Channel 0 edges up to this tick have been delivered.
    delivered_to: u64,
    /// Latest tick observed, so a clock stepping back cannot run the counters backwards.
    last_tick: u64,
    /// IRQ 0 pulses sent, for statistics.
    pulses: u64,
}

impl Pit8254 {
    /// Creates the PIT reading time from `time` and pulsing `irq0` for channel 0's OUT.
    pub fn new(time: Arc<dyn TimeSource>, irq0: Arc<dyn InterruptLine>) -> Self {
        let now = ns_to_ticks(time.now_ns());
        Pit8254 {
            time,
            irq0,
            // Channels 0 and 1 have their gates tied high; channel 2's comes from port 0x61.
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port61: 0,
            refresh_toggle: false,
            delivered_to: now,
            last_tick: now,
            pulses: 0,
        }
    }

    fn now_tick(&mut self) -> u64 {
        let t = ns_to_ticks(self.time.now_ns()).max(self.last_tick);
        self.last_tick = t;
        t
    }

    /// Delivers channel 0's rising edges due by tick `t` (one pulse however many were due).
    fn catch_up(&mut self, t: u64) {
        let due = self.counters[0]
            .next_rising_edge(self.delivered_to)
            .is_some_and(|edge| edge <= t);
        if due {
            self.irq0.set_level(true);
            self.irq0.set_level(false);
            self.pulses += 1;
        }
        self.delivered_to = self.delivered_to.max(t);
        for c in &mut self.counters {
            c.normalize(t);
        }
    }

    /// Delivers any IRQ 0 edge that is due and returns [`Self::next_event_ns`].
    pub fn poll(&mut self) -> Option<u64> {
        let t = self.now_tick();
        self.catch_up(t);
        self.next_event_ns()
    }

    /// When (in the time source's nanoseconds) channel 0's OUT next rises, i.e. when the next
    /// IRQ 0 is due; `None` if channel 0 will not fire under its current programming.
    pub fn next_event_ns(&self) -> Option<u64> {
        self.counters[0]
            .next_rising_edge(self.delivered_to)
            .map(ticks_to_ns)
    }

    /// The number of IRQ 0 pulses delivered so far.
    pub fn irq0_pulses(&self) -> u64 {
        self.pulses
    }

    /// Channel `ch`'s OUT now (false for a nonexistent channel).
    pub fn out(&mut self, ch: usize) -> bool {
        let t = self.now_tick();
        self.counters.get(ch).is_some_and(|c| c.out(t))
    }

    /// Reads PIT register `reg` (0..=3: counters 0-2, control word).
    pub fn read_register(&mut self, reg: u8) -> u8 {
        let t = self.now_tick();
        self.catch_up(t);
        match self.counters.get_mut(usize::from(reg)) {
            Some(c) => c.read(t),
            // The control word register is write-only.
            None => 0,
        }
    }

    /// Writes PIT register `reg` (0..=3).
    pub fn write_register(&mut self, reg: u8, value: u8) {
        let t = self.now_tick();
        self.catch_up(t);
        if let Some(c) = self.counters.get_mut(usize::from(reg)) {
            c.write(value, t);
            return;
        }
        if reg != 3 {
            return;
        }
        let select = value >> 6;
        let access = (value >> 4) & 3;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, c) in self.counters.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    c.latch_count(t);
                }
                if value & 0x10 == 0 {
                    c.latch_status(t);
                }
            }
        } else if let Some(c) = self.counters.get_mut(usize::from(select)) {
            if access == 0 {
                c.latch_count(t);
            } else {
                c.control_word(access, (value >> 1) & 7, value & 1 != 0);
            }
        }
    }

    /// Reads port 0x61.
    pub fn read_port61(&mut self) -> u8 {
        let t = self.now_tick();
        self.catch_up(t);
        let toggle = self.refresh_toggle;
        self.refresh_toggle = !toggle;
        (self.port61 & 0x0f) | u8::from(toggle) << 4 | u8::from(self.counters[2].out(t)) << 5
    }

    /// Writes port 0x61 (bit 0 drives channel 2's gate).
    pub fn write_port61(&mut self, value: u8) {
        let t = self.now_tick();
        self.catch_up(t);
        self.port61 = value & 0x0f;
        self.counters[2].set_gate(value & 1 != 0, t);
    }
}

/// A [`Pit8254`] shared between its two port ranges and the CPU loop.
#[derive(Clone)]
pub struct SharedPit {
    pit: Arc<Mutex<Pit8254>>,
    /// Cached [`Pit8254::next_event_ns`] (`u64::MAX` for none), readable without the lock.
    deadline: Arc<AtomicU64>,
}

impl SharedPit {
    /// Wraps `pit` for sharing.
    pub fn new(pit: Pit8254) -> Self {
        let deadline = pit.next_event_ns().unwrap_or(u64::MAX);
        SharedPit {
            pit: Arc::new(Mutex::new(pit)),
            deadline: Arc::new(AtomicU64::new(deadline)),
        }
    }

    /// Runs `f` on the locked PIT, then refreshes the cached deadline.
    pub fn with<R>(&self, f: impl FnOnce(&mut Pit8254) -> R) -> R {
        let mut pit = lock(&self.pit);
        let result = f(&mut pit);
        let deadline = pit.next_event_ns().unwrap_or(u64::MAX);
        self.deadline.store(deadline, Ordering::SeqCst);
        result
    }

    /// When the next IRQ 0 is due (`u64::MAX` if never), without taking the lock: the CPU
    /// loop polls only once its clock has reached this.
    pub fn deadline_ns(&self) -> u64 {
        self.deadline.load(Ordering::SeqCst)
    }

    /// Delivers a due IRQ 0 edge; returns the next deadline (see [`Pit8254::poll`]).
    pub fn poll(&self) -> Option<u64> {
        self.with(Pit8254::poll)
    }

    /// The bus device for the range at `base` ([`PIT_PORT`] or [`PORT_61`]).
    pub fn ports(&self, base: u16) -> PitPorts {
        PitPorts {
            pit: self.clone(),
            base,
        }
    }

    /// Registers 0x40 (length 4) and 0x61 (length 1) on a port-I/O bus.
    pub fn register(&self, bus: &mut Bus) -> Result<(), BusError> {
        bus.insert(
            u64::from(PIT_PORT),
            PIT_PORT_LEN,
            Arc::new(Mutex::new(self.ports(PIT_PORT))),
        )?;
        bus.insert(
            u64::from(PORT_61),
            PORT_61_LEN,
            Arc::new(Mutex::new(self.ports(PORT_61))),
        )
    }
}

/// One port range of a [`SharedPit`] as a bus device.
pub struct PitPorts {
    pit: SharedPit,
    base: u16,
}

impl PitPorts {
    /// The length of this port range.
    fn len(&self) -> u64 {
        if self.base == PORT_61 {
            PORT_61_LEN
        } else {
            PIT_PORT_LEN
        }
    }

    fn read_port(pit: &mut Pit8254, port: u16) -> u8 {
        match port {
            PORT_61 => pit.read_port61(),
            _ => pit.read_register(port.wrapping_sub(PIT_PORT) as u8),
        }
    }

    fn write_port(pit: &mut Pit8254, port: u16, value: u8) {
        match port {
            PORT_61 => pit.write_port61(value),
            _ => pit.write_register(port.wrapping_sub(PIT_PORT) as u8, value),
        }
    }
}

impl BusDevice for PitPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The 8254 sits on an 8-bit bus: wider accesses touch successive ports.
        // The ranges are at most 4 ports long, so the register offset fits in a u16.
        let base = self.base;
        read_bytewise(offset, self.len(), data, |r| {
            self.pit
                .with(|p| Self::read_port(p, base.wrapping_add(r as u16)))
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let base = self.base;
        write_bytewise(offset, self.len(), data, |r, v| {
            self.pit
                .with(|p| Self::write_port(p, base.wrapping_add(r as u16), v))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts rising edges driven on a line.
    #[derive(Default)]
    struct EdgeCounter {
        level: std::sync::atomic::AtomicBool,
        rises: AtomicUsize,
    }

    impl InterruptLine for EdgeCounter {
        fn set_level(&self, level: bool) {
            if level && !self.level.swap(true, Ordering::SeqCst) {
                self.rises.fetch_add(1, Ordering::SeqCst);
            }
            self.level.store(level, Ordering::SeqCst);
        }
    }

    impl EdgeCounter {
        fn rises(&self) -> usize {
            self.rises.load(Ordering::SeqCst)
        }
    }

    fn setup() -> (Arc<ManualClock>, Arc<EdgeCounter>, Pit8254) {
        let clock = ManualClock::new(1_000_000);
        let line = Arc::new(EdgeCounter::default());
        let pit = Pit8254::new(clock.clone(), line.clone());
        (clock, line, pit)
    }

    /// Advances the clock by exactly `ticks` PIT clocks.
    fn advance_ticks(clock: &ManualClock, ticks: u64) {
        let now = ns_to_ticks(clock.now_ns());
        clock.set(ticks_to_ns(now + ticks));
    }

    fn read_count_latched(pit: &mut Pit8254, ch: u8) -> u16 {
        pit.write_register(3, ch << 6);
        let lo = pit.read_register(ch);
        let hi = pit.read_register(ch);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn tick_conversion_round_trips() {
        for t in [0, 1, 2, 1193, 1_193_182, 123_456_789_012] {
            let ns = ticks_to_ns(t);
            assert_eq!(ns_to_ticks(ns), t);
            if ns > 0 {
                assert_eq!(ns_to_ticks(ns - 1), t - 1);
            }
        }
    }

    #[test]
    fn mode2_counts_down_and_reloads() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x34); // ch0, lohi, mode 2
        pit.write_register(0, 100);
        pit.write_register(0, 0);
        assert_eq!(read_count_latched(&mut pit, 0), 100);
        advance_ticks(&clock, 30);
        assert_eq!(read_count_latched(&mut pit, 0), 70);
        advance_ticks(&clock, 70);
        assert_eq!(read_count_latched(&mut pit, 0), 100);
        advance_ticks(&clock, 99);
        assert_eq!(read_count_latched(&mut pit, 0), 1);
        assert!(!pit.out(0), "mode 2 OUT is low while the count is 1");
        advance_ticks(&clock, 1);
        assert!(pit.out(0));
    }

    #[test]
    fn periodic_irq_every_tick_without_drift() {
        let (clock, line, mut pit) = setup();
        let start_ns = clock.now_ns();
        let start_tick = ns_to_ticks(start_ns);
        pit.write_register(3, 0x34);
        pit.write_register(0, (1193 & 0xff) as u8);
        pit.write_register(0, (1193 >> 8) as u8);
        let mut expected_tick = start_tick;
        for k in 1..=5000u64 {
            let next = pit
                .next_event_ns()
                .expect("periodic timer has a next event");
            expected_tick += 1193;
            assert_eq!(ns_to_ticks(next), expected_tick, "edge {k} on schedule");
            clock.set(next - 1);
            pit.poll();
            assert_eq!(line.rises() as u64, k - 1, "not early");
            clock.set(next);
            pit.poll();
            assert_eq!(line.rises() as u64, k, "delivered on time");
        }
        // 5000 ms of guest time at 1193 clocks per tick (1000.15 Hz).
        let elapsed = clock.now_ns() - start_ns;
        assert_eq!(elapsed, ticks_to_ns(start_tick + 5000 * 1193) - start_ns);
    }

    #[test]
    fn late_poll_coalesces_and_keeps_schedule() {
        let (clock, line, mut pit) = setup();
        let start_tick = ns_to_ticks(clock.now_ns());
        pit.write_register(3, 0x36); // mode 3
        pit.write_register(0, 0xe8);
        pit.write_register(0, 0x03); // 1000
        advance_ticks(&clock, 3500);
        pit.poll();
        assert_eq!(line.rises(), 1);
        let next = pit.next_event_ns().unwrap();
        assert_eq!(ns_to_ticks(next), start_tick + 4000);
    }

    #[test]
    fn mode0_one_shot_raises_out_and_irq_once() {
        let (clock, line, mut pit) = setup();
        pit.write_register(3, 0x30); // ch0 lohi mode 0
        assert!(!pit.out(0));
        pit.write_register(0, 10);
        pit.write_register(0, 0);
        advance_ticks(&clock, 9);
        pit.poll();
        assert!(!pit.out(0));
        assert_eq!(line.rises(), 0);
        advance_ticks(&clock, 1);
        assert_eq!(pit.poll(), None);
        assert!(pit.out(0));
        assert_eq!(line.rises(), 1);
        advance_ticks(&clock, 100_000);
        pit.poll();
        assert_eq!(line.rises(), 1);
        // The counter keeps wrapping after terminal count.
        assert_eq!(
            read_count_latched(&mut pit, 0),
            (10u64 + 65536 - 100_010 % 65536) as u16
        );
    }

    #[test]
    fn mode0_first_byte_stops_count_and_drops_out() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x30);
        pit.write_register(0, 5);
        pit.write_register(0, 0);
        advance_ticks(&clock, 10);
        assert!(pit.out(0));
        pit.write_register(0, 20);
        assert!(!pit.out(0));
        pit.write_register(0, 0);
        advance_ticks(&clock, 19);
        assert!(!pit.out(0));
        advance_ticks(&clock, 1);
        assert!(pit.out(0));
    }

    #[test]
    fn mode4_strobe_fires_after_n_plus_one() {
        let (clock, line, mut pit) = setup();
        pit.write_register(3, 0x38);
        pit.write_register(0, 50);
        pit.write_register(0, 0);
        assert!(pit.out(0));
        advance_ticks(&clock, 50);
        assert!(!pit.out(0));
        pit.poll();
        assert_eq!(line.rises(), 0);
        advance_ticks(&clock, 1);
        pit.poll();
        assert!(pit.out(0));
        assert_eq!(line.rises(), 1);
    }

    #[test]
    fn channel2_gate_out_and_port61_like_linux_calibration() {
        let (clock, _, mut pit) = setup();
        // pit_calibrate_tsc: gate high, speaker off, ch2 mode 0 binary lohi, 50 ms latch.
        let v = pit.read_port61();
        pit.write_port61((v & !0x02) | 0x01);
        pit.write_register(3, 0xb0);
        let latch = (PIT_FREQUENCY_HZ / 20) as u16;
        pit.write_register(2, latch as u8);
        pit.write_register(2, (latch >> 8) as u8);
        assert_eq!(pit.read_port61() & 0x20, 0);
        advance_ticks(&clock, u64::from(latch) - 1);
        assert_eq!(pit.read_port61() & 0x20, 0);
        advance_ticks(&clock, 1);
        assert_eq!(pit.read_port61() & 0x21, 0x21);
    }

    #[test]
    fn port61_refresh_toggles_and_bits_read_back() {
        let (_, _, mut pit) = setup();
        pit.write_port61(0x0e);
        let a = pit.read_port61();
        let b = pit.read_port61();
        assert_eq!((a ^ b) & 0x10, 0x10);
        assert_eq!(a & 0x0f, 0x0e);
        assert_eq!(a & 0xc0, 0);
    }

    #[test]
    fn live_lohi_reads_alternate_like_pit_expect_msb() {
        let (clock, _, mut pit) = setup();
        pit.write_port61(0x01);
        pit.write_register(3, 0xb0);
        pit.write_register(2, 0xff);
        pit.write_register(2, 0xff);
        advance_ticks(&clock, 0x1234);
        let lo = pit.read_register(2);
        let hi = pit.read_register(2);
        assert_eq!(u16::from_le_bytes([lo, hi]), 0xffff - 0x1234);
        advance_ticks(&clock, 0x100);
        pit.read_register(2);
        assert_eq!(pit.read_register(2), 0xec);
    }

    #[test]
    fn gate_low_pauses_mode0_and_trigger_starts_mode1() {
        let (clock, _, mut pit) = setup();
        pit.write_port61(0x01);
        pit.write_register(3, 0xb0);
        pit.write_register(2, 100);
        pit.write_register(2, 0);
        advance_ticks(&clock, 40);
        pit.write_port61(0x00);
        advance_ticks(&clock, 1000);
        assert_eq!(read_count_latched(&mut pit, 2), 60);
        pit.write_port61(0x01);
        advance_ticks(&clock, 10);
        assert_eq!(read_count_latched(&mut pit, 2), 50);

        // Mode 1: OUT high until the gate's rising edge, then low for N clocks.
        pit.write_port61(0x00);
        pit.write_register(3, 0xb2);
        pit.write_register(2, 30);
        pit.write_register(2, 0);
        advance_ticks(&clock, 100);
        assert!(pit.out(2));
        pit.write_port61(0x01);
        advance_ticks(&clock, 29);
        assert!(!pit.out(2));
        advance_ticks(&clock, 1);
        assert!(pit.out(2));
    }

    #[test]
    fn mode5_fires_one_clock_after_terminal_count_from_trigger() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0xba);
        pit.write_register(2, 8);
        pit.write_register(2, 0);
        advance_ticks(&clock, 20);
        assert!(pit.out(2));
        pit.write_port61(0x01);
        advance_ticks(&clock, 8);
        assert!(!pit.out(2));
        advance_ticks(&clock, 1);
        assert!(pit.out(2));
    }

    #[test]
    fn mode3_square_wave_and_gate_forces_out_high() {
        let (clock, _, mut pit) = setup();
        pit.write_port61(0x01);
        pit.write_register(3, 0xb6);
        pit.write_register(2, 10);
        pit.write_register(2, 0);
        let mut outs = Vec::new();
        for _ in 0..20 {
            outs.push(pit.out(2));
            advance_ticks(&clock, 1);
        }
        let expected: Vec<bool> = (0..20).map(|i| i % 10 < 5).collect();
        assert_eq!(outs, expected);
        advance_ticks(&clock, 6);
        assert!(!pit.out(2));
        pit.write_port61(0x00);
        assert!(pit.out(2));
    }

    #[test]
    fn mode2_new_count_waits_for_period_end() {
        let (clock, line, mut pit) = setup();
        let start = ns_to_ticks(clock.now_ns());
        pit.write_register(3, 0x34);
        pit.write_register(0, 100);
        pit.write_register(0, 0);
        advance_ticks(&clock, 30);
        pit.write_register(0, 50);
        pit.write_register(0, 0);
        pit.write_register(3, 0xe2); // read-back status of ch0
        assert_eq!(pit.read_register(0) & 0x40, 0x40, "null count until reload");
        assert_eq!(ns_to_ticks(pit.next_event_ns().unwrap()), start + 100);
        advance_ticks(&clock, 70);
        pit.poll();
        assert_eq!(line.rises(), 1);
        assert_eq!(ns_to_ticks(pit.next_event_ns().unwrap()), start + 150);
        assert_eq!(read_count_latched(&mut pit, 0), 50);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x34);
        pit.write_register(3, 0xe2);
        assert_eq!(
            pit.read_register(0),
            0xf4,
            "OUT high, null count, lohi, mode 2"
        );
        pit.write_register(0, 0x00);
        pit.write_register(0, 0x10);
        advance_ticks(&clock, 0x10);
        // Latch both count and status of channel 0.
        pit.write_register(3, 0xc2);
        advance_ticks(&clock, 0x100);
        assert_eq!(
            pit.read_register(0),
            0xb4,
            "status first, null count cleared"
        );
        assert_eq!(pit.read_register(0), 0xf0);
        assert_eq!(pit.read_register(0), 0x0f);
        // Latch released: the next read is live.
        assert_eq!(pit.read_register(0), 0xf0);
    }

    #[test]
    fn counter_latch_freezes_until_read_and_ignores_relatch() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x74); // ch1 lohi mode 2
        pit.write_register(1, 0);
        pit.write_register(1, 0); // 65536
        advance_ticks(&clock, 10);
        pit.write_register(3, 0x40);
        advance_ticks(&clock, 10);
        pit.write_register(3, 0x40);
        assert_eq!(pit.read_register(1), 0xf6);
        assert_eq!(pit.read_register(1), 0xff);
    }

    #[test]
    fn lsb_and_msb_only_access_modes() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x14); // ch0 LSB only, mode 2
        pit.write_register(0, 200);
        advance_ticks(&clock, 50);
        assert_eq!(pit.read_register(0), 150);
        assert_eq!(pit.read_register(0), 150);
        pit.write_register(3, 0x24); // MSB only
        pit.write_register(0, 0x02);
        advance_ticks(&clock, 0x100);
        assert_eq!(pit.read_register(0), 0x01);
    }

    #[test]
    fn bcd_counting() {
        let (clock, _, mut pit) = setup();
        pit.write_register(3, 0x31); // ch0 lohi mode 0 BCD
        pit.write_register(0, 0x00);
        pit.write_register(0, 0x10); // 1000 decimal
        advance_ticks(&clock, 1);
        assert_eq!(read_count_latched(&mut pit, 0), 0x0999);
        advance_ticks(&clock, 999);
        assert!(pit.out(0));
        advance_ticks(&clock, 1);
        assert_eq!(read_count_latched(&mut pit, 0), 0x9999);
    }

    #[test]
    fn shared_pit_on_bus_with_deadline() {
        let clock = ManualClock::new(0);
        let line = Arc::new(EdgeCounter::default());
        let pit = SharedPit::new(Pit8254::new(clock.clone(), line.clone()));
        assert_eq!(pit.deadline_ns(), u64::MAX);
        let mut bus = Bus::new(crate::bus::BusKind::Pio);
        pit.register(&mut bus).unwrap();
        bus.write(0x43, &[0x34]);
        bus.write(0x40, &[0x9c]);
        bus.write(0x40, &[0x2e]); // 11932: 100 Hz
        let deadline = pit.deadline_ns();
        assert_eq!(deadline, ticks_to_ns(11932));
        clock.set(deadline);
        assert_eq!(pit.poll(), Some(ticks_to_ns(2 * 11932)));
        assert_eq!(line.rises(), 1);
        bus.write(0x61, &[0x01]);
        let mut b = [0u8];
        bus.read(0x61, &mut b);
        assert_eq!(b[0] & 0x01, 0x01);
        bus.read(0x43, &mut b);
        assert_eq!(b, [0]);
    }
}
