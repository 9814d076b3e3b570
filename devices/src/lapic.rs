//! The local APIC in xAPIC mode (Intel SDM Vol. 3, ch. 11), for the binary-translation backend.
//!
//! Under KVM the in-kernel local APIC is used; this model serves one CPU (APIC ID 0) under the
//! binary translator. The CPU loop asks [`SharedLapic::has_pending_vector`] at block boundaries
//! (lock-free), runs [`LocalApic::acknowledge`] when IF = 1, takes NMIs with
//! [`LocalApic::take_nmi`], maps CR8 onto [`LocalApic::cr8`] / [`LocalApic::set_cr8`], and polls
//! the timer once the clock reaches [`SharedLapic::deadline_ns`]. Choices where the SDM leaves
//! room (most of them follow KVM, the other backend, so guests see one machine):
//!
//! - **MMIO accesses.** Registers are 32 bits wide at 16-byte strides. A read of 1, 2, 4 or 8
//!   bytes returns the bytes of the 16-byte slot image `[register, 0, 0, 0]` at the access
//!   offset (so narrow reads of a register's bytes work and the slot's upper 12 bytes read 0). A
//!   write takes effect only if it is 4 bytes wide at the start of a slot; other writes are
//!   dropped with a debug log (the SDM calls narrower accesses model-specific; KVM drops them too).
//!   Accessing a reserved slot sets ESR bit 7 (illegal register address) and reads 0. Writes to
//!   read-only registers are ignored.
//! - **Timer clock.** The timer counts a 1 GHz bus clock ([`LAPIC_BUS_FREQUENCY_HZ`], as KVM and
//!   QEMU), divided by the divide configuration: one count per `divisor` ns. Linux calibrates
//!   the rate against the PIT, so any stable value works. The count is computed from a
//!   [`TimeSource`]: expiry `k` of a count loaded at `t0` is at exactly `t0 + k * count *
//!   divisor`, so a periodic timer never drifts; expiries missed by a late poll coalesce into one
//!   interrupt. TSC-deadline mode is not advertised in CPUID, so LVT timer bit 18 is reserved and
//!   reads 0: mode 2 acts as one-shot, mode 3 as periodic (KVM's `timer_mode_mask` does the
//!   same). A divide-configuration change keeps the current count and counts on at the new rate;
//!   an LVT timer mode change keeps the count and does not replay expiries already past.
//! - **Reset state** is what firmware leaves for the OS: software-disabled (SVR = 0xFF), every
//!   LVT masked except LINT0 = ExtINT unmasked (MP-spec virtual-wire mode), as KVM resets its
//!   BSP, since this machine has no BIOS to program it.
//! - **Virtual wire rule** ([`LocalApic::extint_enabled`]): the 8259's INTR reaches the CPU when
//!   the APIC is hardware-disabled (IA32_APIC_BASE\[11\] = 0: "functionally equivalent to a
//!   processor without an on-chip APIC", SDM 11.4.3), or LINT0 is unmasked with delivery mode
//!   ExtINT (MP spec 3.6.2.2), or an ExtINT message from the I/O APIC is outstanding. Software
//!   disable alone does not open the wire: it masks LINT0 like every LVT (SDM 11.4.7.2; this is
//!   why Linux re-enables the APIC before restoring virtual-wire mode). This is KVM's rule.
//! - **Software-disabled** (SVR bit 8 = 0): writing it sets every LVT mask bit and LVT writes
//!   keep the mask set; fixed and lowest-priority interrupts are not accepted (NMI is); requests
//!   already in IRR stay deliverable (SDM 11.4.7.2: "held and require masking or handling").
//! - **IPIs** (one CPU): fixed / lowest-priority / NMI IPIs reach this APIC when the shorthand
//!   is self or all-including-self, or the destination matches (physical ID or 0xFF; logical
//!   flat or cluster model against LDR/DFR). INIT, SIPI and SMI, and anything addressed only to
//!   other CPUs, are dropped with a debug log. A fixed IPI with vector < 16 sets ESR bit 5 and is
//!   not sent. Delivery status always reads idle.
//! - **Illegal vectors**: accepting a vector below 16 sets ESR bit 6 instead of IRR. A new error
//!   raises the LVT error interrupt when it is unmasked. ESR reads the errors latched by the last
//!   ESR write.
//! - **EOI**: clears the highest ISR bit; if that vector's TMR bit is set (accepted as
//!   level-triggered) the EOI is broadcast: [`SharedLapic`] calls its EOI listener (the I/O APIC)
//!   after releasing its lock. EOI-broadcast suppression is not advertised.
//!
//! Lock order: the I/O APIC may call into the local APIC while holding its own lock; the local
//! APIC never calls out while holding its lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::{fill_le, le_value, lock, Bus, BusDevice, BusError};
use crate::pit::TimeSource;

/// Physical address of the local APIC's register page.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Length of the register page.
pub const LAPIC_SIZE: u64 = 0x1000;
/// The bus clock the timer counts (before the divider): 1 GHz, one clock per nanosecond.
pub const LAPIC_BUS_FREQUENCY_HZ: u64 = 1_000_000_000;
/// The version register: version 0x14 (integrated xAPIC), max LVT entry 5, no EOI suppression.
pub const LAPIC_VERSION: u32 = 0x0005_0014;

/// Register offsets in the page.
mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0a0;
    pub const EOI: u32 = 0x0b0;
    pub const RRD: u32 = 0x0c0;
    pub const LDR: u32 = 0x0d0;
    pub const DFR: u32 = 0x0e0;
    pub const SVR: u32 = 0x0f0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// Index of each LVT in [`LocalApic::lvt`].
/// CMCI first, then the six at 0x320-0x370 in address order (timer, thermal, performance
/// counters, LINT0, LINT1, error).
const LVT_CMCI: usize = 0;
const LVT_TIMER: usize = 1;
const LVT_LINT0: usize = 4;
const LVT_ERROR: usize = 6;
const LVT_COUNT: usize = 7;

/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer periodic mode (bit 17; bit 18, TSC-deadline, is not implemented).
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// LINT0 as left for the OS: ExtINT, unmasked (virtual wire).
const LINT0_VIRTUAL_WIRE: u32 = 0x700;

/// Writable bits of each LVT, by index.
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0001_07ff, // CMCI: vector, delivery mode, mask
    0x0003_00ff, // timer: vector, mask, periodic
    0x0001_07ff, // thermal
    0x0001_07ff, // performance counters
    0x0001_a7ff, // LINT0: + polarity, trigger (remote IRR is read-only)
    0x0001_a7ff, // LINT1
    0x0001_00ff, // error: vector, mask
];

/// SVR: spurious vector, APIC software enable, focus processor checking.
const SVR_WRITABLE: u32 = 0x3ff;
const SVR_ENABLE: u32 = 1 << 8;
/// ICR low: vector, delivery mode, destination mode, level, trigger mode, shorthand.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;

/// ESR: a fixed IPI was sent with a vector below 16.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR: an interrupt with a vector below 16 was received.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR: a reserved register was accessed.
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// Delivery mode of an interrupt message, LVT entry or redirection entry (3-bit field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector, to the destination's IRR.
    Fixed,
    /// 001: the vector, to the lowest-priority destination.
    LowestPriority,
    /// 010: system management interrupt.
    Smi,
    /// 100: non-maskable interrupt.
    Nmi,
    /// 101: INIT.
    Init,
    /// 110: start-up IPI.
    StartUp,
    /// 111: the external (8259) controller supplies the vector.
    ExtInt,
    /// 011: reserved.
    Reserved,
}

impl DeliveryMode {
    /// Decodes the low three bits of `bits`.
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// An interrupt message on the APIC bus (from the I/O APIC or an IPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicMessage {
    /// Interrupt vector (ignored for NMI, INIT, ExtINT).
    pub vector: u8,
    /// How the destination handles the message.
    pub mode: DeliveryMode,
    /// Logical (true) or physical (false) destination mode.
    pub logical: bool,
    /// Destination APIC ID (physical) or logical destination mask.
    pub destination: u8,
    /// Level-triggered: the destination sets TMR and broadcasts its EOI.
    pub level_triggered: bool,
}

/// Where interrupt messages go: the local APIC(s) of the machine.
pub trait ApicBus: Send + Sync {
    /// Delivers `msg` to every local APIC its destination selects.
    fn deliver(&self, msg: &ApicMessage);
}

/// The timer's counting state.
#[derive(Debug, Clone, Copy, Default)]
struct Timer {
    /// Initial count register; 0 stops the timer.
    initial: u32,
    /// Divide configuration register as written (bits 0, 1, 3).
    divide_config: u32,
    /// log2 of the divisor.
    shift: u32,
    /// Counts elapsed (since the initial count was written) at `base_ns`.
    base_ticks: u64,
    /// Time from which `base_ticks` is counted on at the current divisor.
    base_ns: u64,
    /// Expiries (counts reaching 0) already delivered or dropped since the initial count.
    expiries: u64,
}

impl Timer {
    fn ticks_at(&self, now: u64) -> u64 {
        self.base_ticks
            .saturating_add(now.saturating_sub(self.base_ns) >> self.shift)
    }

    /// Expiries that have happened by `now` under the given mode.
    fn expiries_due(&self, now: u64, periodic: bool) -> u64 {
        if self.initial == 0 {
            return 0;
        }
        let n = self.ticks_at(now) / u64::from(self.initial);
        if periodic {
            n
        } else {
            n.min(1)
        }
    }

    fn current_count(&self, now: u64, periodic: bool) -> u32 {
        let initial = u64::from(self.initial);
        if initial == 0 {
            return 0;
        }
        let ticks = self.ticks_at(now);
        let left = if periodic {
            initial - ticks % initial
        } else {
            initial.saturating_sub(ticks)
        };
        u32::try_from(left).unwrap_or(0)
    }

    /// When the next expiry is due, if any.
    fn next_expiry_ns(&self, periodic: bool) -> Option<u64> {
        if self.initial == 0 || (!periodic && self.expiries >= 1) {
            return None;
        }
        let target = self
            .expiries
            .checked_add(1)?
            .checked_mul(u64::from(self.initial))?;
        let ticks = target.checked_sub(self.base_ticks)?;
        let ns = u128::from(ticks) << self.shift;
        u64::try_from(u128::from(self.base_ns) + ns).ok()
    }
}

/// Bit `v` of a 256-bit register held as eight 32-bit words.
fn bit_set(r: &mut [u32; 8], v: u8, on: bool) {
    let (w, b) = (usize::from(v >> 5), v & 31);
    if on {
        r[w] |= 1 << b;
    } else {
        r[w] &= !(1 << b);
    }
}

fn bit_test(r: &[u32; 8], v: u8) -> bool {
    r[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

/// The highest vector set in a 256-bit register.
fn highest(r: &[u32; 8]) -> Option<u8> {
    (0..8usize)
        .rev()
        .find(|&w| r[w] != 0)
        .map(|w| (w as u8) * 32 + (31 - r[w].leading_zeros() as u8))
}

/// One local APIC.
pub struct LocalApic {
    time: Arc<dyn TimeSource>,
    /// Latest time observed, so a clock stepping back cannot run the timer backwards.
    last_ns: u64,
    hw_enabled: bool,
    /// ID register (APIC ID in bits 24-31).
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as software reads it (latched by the last ESR write).
    esr: u32,
    /// Errors detected since the last ESR write.
    esr_pending: u32,
    lvt: [u32; LVT_COUNT],
    icr_low: u32,
    icr_high: u32,
    timer: Timer,
    nmi_pending: bool,
    /// An ExtINT message from the I/O APIC awaits the CPU's INTA cycle to the 8259.
    extint_request: bool,
    /// An EOI for a level-triggered vector, to broadcast to the I/O APIC.
    eoi_broadcast: Option<u8>,
}

impl LocalApic {
    /// Creates the APIC (ID 0) in its reset state, reading time from `time`.
    pub fn new(time: Arc<dyn TimeSource>) -> Self {
        let now = time.now_ns();
        let mut apic = LocalApic {
            time,
            last_ns: now,
            hw_enabled: true,
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            lvt: [0; LVT_COUNT],
            icr_low: 0,
            icr_high: 0,
            timer: Timer::default(),
            nmi_pending: false,
            extint_request: false,
            eoi_broadcast: None,
        };
        apic.reset();
        apic
    }

    /// Resets every register to the state the OS finds after firmware (see the module docs).
    /// The APIC ID and the hardware-enable state are kept.
    pub fn reset(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xffff_ffff;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.lvt[LVT_LINT0] = LINT0_VIRTUAL_WIRE;
        self.icr_low = 0;
        self.icr_high = 0;
        self.timer = Timer::default();
        self.nmi_pending = false;
        self.extint_request = false;
        self.eoi_broadcast = None;
    }

    fn now(&mut self) -> u64 {
        let t = self.time.now_ns().max(self.last_ns);
        self.last_ns = t;
        t
    }

    /// Whether the APIC is globally enabled (IA32_APIC_BASE bit 11).
    pub fn hardware_enabled(&self) -> bool {
        self.hw_enabled
    }

    /// Sets IA32_APIC_BASE bit 11. Disabling returns the APIC to its reset state (SDM 11.4.3:
    /// "prior initialization ... may be lost"); while disabled it accepts nothing, presents no
    /// interrupt, its page reads all-ones and ignores writes, and the 8259 drives INTR directly.
    pub fn set_hardware_enabled(&mut self, enabled: bool) {
        if self.hw_enabled && !enabled {
            self.reset();
        }
        self.hw_enabled = enabled;
    }

    /// Whether SVR bit 8 (APIC software enable) is set.
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The APIC ID (ID register bits 24-31).
    pub fn apic_id(&self) -> u8 {
        (self.id >> 24) as u8
    }

    /// The task-priority register (bits 7-0).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Writes the task-priority register.
    pub fn set_tpr(&mut self, v: u8) {
        self.tpr = u32::from(v);
    }

    /// CR8 as MOV from CR8 reads it: TPR\[7:4\].
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr() >> 4)
    }

    /// MOV to CR8: TPR\[7:4\] = CR8\[3:0\], TPR\[3:0\] = 0.
    pub fn set_cr8(&mut self, cr8: u64) {
        self.set_tpr(((cr8 & 0xf) as u8) << 4);
    }

    /// The processor-priority register (SDM 11.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        let tpr = self.tpr();
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The spurious-interrupt vector (SVR bits 7-0).
    pub fn spurious_vector(&self) -> u8 {
        self.svr as u8
    }

    /// Records an error in ESR and raises the LVT error interrupt if it is unmasked.
    fn signal_error(&mut self, bit: u32) {
        self.esr_pending |= bit;
        let lvt = self.lvt[LVT_ERROR];
        let vector = lvt as u8;
        // An illegal error vector only records the error again, without recursing.
        if lvt & LVT_MASKED == 0 {
            if vector < 16 {
                self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.accept(vector, false);
            }
        }
    }

    /// Accepts a fixed interrupt: sets IRR (and TMR for level-triggered, clears it for edge).
    ///
    /// Vectors 0-15 are illegal: ESR bit 6 is set instead. A software-disabled or
    /// hardware-disabled APIC accepts nothing.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        if !self.hw_enabled || !self.software_enabled() {
            log::debug!("lapic: disabled, dropping vector {vector:#x}");
            return;
        }
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        bit_set(&mut self.irr, vector, true);
        bit_set(&mut self.tmr, vector, level_triggered);
    }

    /// Sets the pending-NMI flag (an NMI message or IPI).
    pub fn raise_nmi(&mut self) {
        if self.hw_enabled {
            self.nmi_pending = true;
        }
    }

    /// Takes the pending NMI, if any (the CPU delivers it regardless of IF).
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi_pending)
    }

    /// Whether an NMI is pending.
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// The vector the APIC presents to the CPU: the highest IRR vector whose priority class
    /// is above the PPR's class. The CPU takes it when IF = 1.
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.hw_enabled {
            return None;
        }
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The interrupt-acknowledge cycle: moves the pending vector from IRR to ISR and returns it.
    /// If nothing is deliverable any more (TPR raised, request taken), returns the spurious
    /// vector without touching ISR. `None` only when the APIC is hardware-disabled.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.hw_enabled {
            return None;
        }
        match self.pending_vector() {
            Some(v) => {
                bit_set(&mut self.irr, v, false);
                bit_set(&mut self.isr, v, true);
                Some(v)
            }
            None => {
                log::debug!("lapic: spurious interrupt");
                Some(self.spurious_vector())
            }
        }
    }

    /// An EOI: clears the highest ISR bit and returns its vector if it was accepted as
    /// level-triggered (TMR set), i.e. the EOI to broadcast to the I/O APIC.
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest(&self.isr)?;
        bit_set(&mut self.isr, v, false);
        bit_test(&self.tmr, v).then_some(v)
    }

    /// Takes the EOI broadcast left by an EOI register write, if any.
    pub fn take_eoi_broadcast(&mut self) -> Option<u8> {
        self.eoi_broadcast.take()
    }

    /// Whether the 8259's INTR reaches the CPU (the virtual-wire rule in the module docs).
    pub fn extint_enabled(&self) -> bool {
        let lint0 = self.lvt[LVT_LINT0];
        !self.hw_enabled
            || (lint0 & LVT_MASKED == 0
                && DeliveryMode::from_bits(lint0 >> 8) == DeliveryMode::ExtInt)
            || self.extint_request
    }

    /// Tells the APIC the CPU ran the 8259 INTA cycle, consuming an I/O APIC ExtINT message.
    pub fn extint_taken(&mut self) {
        self.extint_request = false;
    }

    /// Whether `destination` in the given mode selects this APIC (xAPIC: physical ID or 0xFF
    /// broadcast; logical flat or cluster model per DFR, 0xFF broadcast).
    pub fn matches_destination(&self, destination: u8, logical: bool) -> bool {
        if destination == 0xff {
            return true;
        }
        if !logical {
            return destination == self.apic_id();
        }
        let ldr = (self.ldr >> 24) as u8;
        match self.dfr >> 28 {
            0xf => ldr & destination != 0,
            0x0 => {
                let cluster = destination >> 4;
                (cluster == ldr >> 4 || cluster == 0xf) && (destination & ldr & 0xf) != 0
            }
            model => {
                log::debug!("lapic: unknown destination model {model:#x}");
                false
            }
        }
    }

    /// Receives an interrupt message; returns whether its destination selected this APIC.
    pub fn deliver(&mut self, msg: &ApicMessage) -> bool {
        if !self.hw_enabled || !self.matches_destination(msg.destination, msg.logical) {
            return false;
        }
        self.receive(msg.mode, msg.vector, msg.level_triggered);
        true
    }

    /// Acts on a message already known to be for this APIC.
    fn receive(&mut self, mode: DeliveryMode, vector: u8, level_triggered: bool) {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(vector, level_triggered)
            }
            DeliveryMode::Nmi => self.raise_nmi(),
            DeliveryMode::ExtInt => self.extint_request = true,
            other => log::debug!("lapic: ignoring {other:?} message (vector {vector:#x})"),
        }
    }

    /// Sends the IPI the ICR describes (a write to ICR low).
    fn send_ipi(&mut self) {
        let icr = self.icr_low;
        let vector = icr as u8;
        let mode = DeliveryMode::from_bits(icr >> 8);
        let logical = icr & (1 << 11) != 0;
        let level_asserted = icr & (1 << 14) != 0;
        let level_triggered = icr & (1 << 15) != 0;
        let destination = (self.icr_high >> 24) as u8;
        if mode == DeliveryMode::Init && !level_asserted && level_triggered {
            // INIT level de-assert: a synchronisation message with no effect on an xAPIC.
            return;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR);
            return;
        }
        let to_self = match (icr >> 18) & 3 {
            0 => self.matches_destination(destination, logical),
            1 | 2 => true,
            _ => false,
        };
        if !to_self {
            log::debug!("lapic: {mode:?} IPI (vector {vector:#x}) to other CPUs dropped: one CPU");
            return;
        }
        match mode {
            DeliveryMode::Init | DeliveryMode::StartUp | DeliveryMode::Smi => {
                log::debug!("lapic: {mode:?} IPI to self ignored");
            }
            _ => self.receive(mode, vector, level_triggered),
        }
    }

    /// Brings the timer up to `now`: delivers (or drops, if masked) expiries that are due.
    fn sync_timer(&mut self, now: u64) {
        let periodic = self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC != 0;
        let due = self.timer.expiries_due(now, periodic);
        if due > self.timer.expiries {
            self.timer.expiries = due;
            let lvt = self.lvt[LVT_TIMER];
            if lvt & LVT_MASKED == 0 {
                self.accept(lvt as u8, false);
            }
        }
    }

    /// Delivers a timer interrupt that is due.
    pub fn poll(&mut self) {
        let now = self.now();
        self.sync_timer(now);
    }

    /// When the timer next raises an interrupt (in the time source's ns), if it will.
    pub fn deadline_ns(&self) -> Option<u64> {
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED != 0 {
            return None;
        }
        self.timer.next_expiry_ns(lvt & LVT_TIMER_PERIODIC != 0)
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        let value = value & 0xb;
        let index = (value & 3) | ((value >> 1) & 4);
        // 0b000 divides by 2, ..., 0b110 by 128, 0b111 by 1.
        let shift = (index + 1) & 7;
        let t = &mut self.timer;
        t.base_ticks = t.ticks_at(now);
        t.base_ns = now;
        t.shift = shift;
        t.divide_config = value;
    }

    fn write_lvt(&mut self, index: usize, value: u32, now: u64) {
        let mut v = value & LVT_WRITABLE[index] | (self.lvt[index] & !LVT_WRITABLE[index]);
        if !self.software_enabled() {
            v |= LVT_MASKED;
        }
        self.lvt[index] = v;
        if index == LVT_TIMER {
            // Expiries already past under the old mode are not replayed under the new one.
            let periodic = v & LVT_TIMER_PERIODIC != 0;
            let due = self.timer.expiries_due(now, periodic);
            self.timer.expiries = self.timer.expiries.max(due);
        }
    }

    /// Which LVT a register offset names.
    fn lvt_index(offset: u32) -> Option<usize> {
        match offset {
            reg::LVT_CMCI => Some(LVT_CMCI),
            reg::LVT_TIMER..=reg::LVT_ERROR => {
                Some(LVT_TIMER + ((offset - reg::LVT_TIMER) >> 4) as usize)
            }
            _ => None,
        }
    }

    /// Reads the 32-bit register at `offset` (a multiple of 16 within the page).
    pub fn read_register(&mut self, offset: u32) -> u32 {
        let now = self.now();
        self.sync_timer(now);
        let word = ((offset >> 4) & 7) as usize;
        match offset {
            reg::ID => self.id,
            reg::VERSION => LAPIC_VERSION,
            reg::TPR => self.tpr,
            reg::APR | reg::EOI | reg::RRD => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr | 0x0fff_ffff,
            reg::SVR => self.svr,
            reg::ISR..=0x170 => self.isr[word],
            reg::TMR..=0x1f0 => self.tmr[word],
            reg::IRR..=0x270 => self.irr[word],
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::TIMER_INITIAL => self.timer.initial,
            reg::TIMER_CURRENT => {
                let periodic = self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC != 0;
                self.timer.current_count(now, periodic)
            }
            reg::TIMER_DIVIDE => self.timer.divide_config,
            _ => match Self::lvt_index(offset) {
                Some(i) => self.lvt[i],
                None => {
                    log::debug!("lapic: read of reserved register {offset:#x}");
                    self.signal_error(ESR_ILLEGAL_REGISTER);
                    0
                }
            },
        }
    }

    /// Writes the 32-bit register at `offset` (a multiple of 16 within the page).
    pub fn write_register(&mut self, offset: u32, value: u32) {
        let now = self.now();
        self.sync_timer(now);
        match offset {
            reg::ID => self.id = value & 0xff00_0000,
            reg::TPR => self.tpr = value & 0xff,
            reg::EOI => {
                if let Some(v) = self.eoi() {
                    self.eoi_broadcast = Some(v);
                }
            }
            reg::LDR => self.ldr = value & 0xff00_0000,
            reg::DFR => self.dfr = value | 0x0fff_ffff,
            reg::SVR => {
                self.svr = value & SVR_WRITABLE;
                if !self.software_enabled() {
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                self.send_ipi();
            }
            reg::ICR_HIGH => self.icr_high = value & 0xff00_0000,
            reg::TIMER_INITIAL => {
                self.timer.initial = value;
                self.timer.base_ticks = 0;
                self.timer.base_ns = now;
                self.timer.expiries = 0;
            }
            reg::TIMER_DIVIDE => self.write_divide(value, now),
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::TIMER_CURRENT | 0x100..=0x270 => {
                log::debug!("lapic: write {value:#x} to read-only register {offset:#x} ignored");
            }
            _ => match Self::lvt_index(offset) {
                Some(i) => self.write_lvt(i, value, now),
                None => {
                    log::debug!("lapic: write {value:#x} to reserved register {offset:#x}");
                    self.signal_error(ESR_ILLEGAL_REGISTER);
                }
            },
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the page (see the module docs).
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.hw_enabled {
            data.fill(0xff);
            return;
        }
        let slot = offset & !0xf & (LAPIC_SIZE - 1);
        let value = self.read_register(slot as u32);
        let mut image = [0u8; 16];
        fill_le(&mut image[..4], u64::from(value));
        let start = (offset & 0xf) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = image.get(start + i).copied().unwrap_or(0);
        }
    }

    /// A guest write of `data.len()` bytes at `offset` in the page (see the module docs).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if !self.hw_enabled {
            return;
        }
        if data.len() != 4 || offset & 0xf != 0 {
            log::debug!(
                "lapic: dropped {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        }
        self.write_register((offset & (LAPIC_SIZE - 1)) as u32, le_value(data) as u32);
    }
}

type Callback = Arc<dyn Fn() + Send + Sync>;
type EoiListener = Arc<dyn Fn(u8) + Send + Sync>;

struct LapicShared {
    apic: Mutex<LocalApic>,
    /// Cached [`LocalApic::pending_vector`]`.is_some()`.
    vector_pending: AtomicBool,
    /// Cached [`LocalApic::nmi_pending`].
    nmi: AtomicBool,
    /// Cached [`LocalApic::extint_enabled`].
    extint: AtomicBool,
    /// Cached [`LocalApic::deadline_ns`] (`u64::MAX` for none).
    deadline: AtomicU64,
    notifier: Mutex<Option<Callback>>,
    eoi_listener: Mutex<Option<EoiListener>>,
}

/// A [`LocalApic`] shared between the MMIO bus, the I/O APIC and the CPU loop.
#[derive(Clone)]
pub struct SharedLapic {
    inner: Arc<LapicShared>,
}

impl SharedLapic {
    /// Wraps `apic` for sharing.
    pub fn new(apic: LocalApic) -> Self {
        let shared = SharedLapic {
            inner: Arc::new(LapicShared {
                vector_pending: AtomicBool::new(false),
                nmi: AtomicBool::new(false),
                extint: AtomicBool::new(false),
                deadline: AtomicU64::new(u64::MAX),
                apic: Mutex::new(apic),
                notifier: Mutex::new(None),
                eoi_listener: Mutex::new(None),
            }),
        };
        shared.with(|_| ());
        shared
    }

    /// Runs `f` on the locked APIC, refreshes the cached outputs, then (outside the lock) runs
    /// the notifier if an interrupt or NMI became pending and forwards an EOI broadcast.
    pub fn with<R>(&self, f: impl FnOnce(&mut LocalApic) -> R) -> R {
        let s = &self.inner;
        let (result, rose, eoi) = {
            let mut apic = lock(&s.apic);
            let result = f(&mut apic);
            let eoi = apic.take_eoi_broadcast();
            let vector = apic.pending_vector().is_some();
            let nmi = apic.nmi_pending();
            let was_vector = s.vector_pending.swap(vector, Ordering::SeqCst);
            let was_nmi = s.nmi.swap(nmi, Ordering::SeqCst);
            s.extint.store(apic.extint_enabled(), Ordering::SeqCst);
            let deadline = apic.deadline_ns().unwrap_or(u64::MAX);
            s.deadline.store(deadline, Ordering::SeqCst);
            (result, (vector && !was_vector) || (nmi && !was_nmi), eoi)
        };
        if rose {
            let notify = lock(&s.notifier).clone();
            if let Some(notify) = notify {
                notify();
            }
        }
        if let Some(vector) = eoi {
            let listener = lock(&s.eoi_listener).clone();
            match listener {
                Some(listener) => listener(vector),
                None => log::debug!("lapic: EOI broadcast for {vector:#x} with no I/O APIC"),
            }
        }
        result
    }

    /// Whether a vector is deliverable (lock-free; see [`LocalApic::pending_vector`]).
    pub fn has_pending_vector(&self) -> bool {
        self.inner.vector_pending.load(Ordering::SeqCst)
    }

    /// Whether an NMI is pending (lock-free).
    pub fn has_nmi(&self) -> bool {
        self.inner.nmi.load(Ordering::SeqCst)
    }

    /// Whether the 8259's INTR reaches the CPU (lock-free; see [`LocalApic::extint_enabled`]).
    pub fn extint_enabled(&self) -> bool {
        self.inner.extint.load(Ordering::SeqCst)
    }

    /// See [`LocalApic::pending_vector`].
    pub fn pending_vector(&self) -> Option<u8> {
        self.with(|a| a.pending_vector())
    }

    /// See [`LocalApic::acknowledge`].
    pub fn acknowledge(&self) -> Option<u8> {
        self.with(LocalApic::acknowledge)
    }

    /// See [`LocalApic::take_nmi`].
    pub fn take_nmi(&self) -> bool {
        self.with(LocalApic::take_nmi)
    }

    /// See [`LocalApic::extint_taken`].
    pub fn extint_taken(&self) {
        self.with(LocalApic::extint_taken)
    }

    /// MOV from CR8.
    pub fn cr8(&self) -> u64 {
        self.with(|a| a.cr8())
    }

    /// MOV to CR8.
    pub fn set_cr8(&self, cr8: u64) {
        self.with(|a| a.set_cr8(cr8))
    }

    /// When the timer next fires (`u64::MAX` if never), without taking the lock: the CPU loop
    /// polls once its clock has reached this.
    pub fn deadline_ns(&self) -> u64 {
        self.inner.deadline.load(Ordering::SeqCst)
    }

    /// Delivers a due timer interrupt; returns the next deadline (`u64::MAX` if none).
    pub fn poll(&self) -> u64 {
        self.with(|a| {
            a.poll();
            a.deadline_ns().unwrap_or(u64::MAX)
        })
    }

    /// Installs a callback run (outside the lock) whenever an interrupt or NMI becomes pending,
    /// e.g. to wake a halted vCPU thread.
    pub fn set_notifier(&self, notify: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.inner.notifier) = Some(notify);
    }

    /// Installs the receiver of EOI broadcasts for level-triggered vectors (the I/O APIC),
    /// called outside the lock with the vector.
    pub fn set_eoi_listener(&self, listener: Arc<dyn Fn(u8) + Send + Sync>) {
        *lock(&self.inner.eoi_listener) = Some(listener);
    }

    /// The MMIO bus device for the register page.
    pub fn mmio(&self) -> LapicMmio {
        LapicMmio { apic: self.clone() }
    }

    /// Registers the page at [`LAPIC_BASE`] (length [`LAPIC_SIZE`]) on an MMIO bus.
    pub fn register(&self, bus: &mut Bus) -> Result<(), BusError> {
        bus.insert(LAPIC_BASE, LAPIC_SIZE, Arc::new(Mutex::new(self.mmio())))
    }
}

impl ApicBus for SharedLapic {
    fn deliver(&self, msg: &ApicMessage) {
        if !self.with(|a| a.deliver(msg)) {
            log::debug!("lapic: message {msg:?} selects no APIC");
        }
    }
}

/// The register page of a [`SharedLapic`] as a bus device.
pub struct LapicMmio {
    apic: SharedLapic,
}

impl BusDevice for LapicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.apic.with(|a| a.mmio_read(offset, data));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.apic.with(|a| a.mmio_write(offset, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::pit::ManualClock;

    fn setup() -> (Arc<ManualClock>, LocalApic) {
        let clock = ManualClock::new(1_000);
        let apic = LocalApic::new(clock.clone());
        (clock, apic)
    }

    /// An APIC software-enabled with spurious vector 0xFF, as an OS sets it up.
    fn enabled() -> (Arc<ManualClock>, LocalApic) {
        let (clock, mut apic) = setup();
        apic.write_register(reg::SVR, 0x1ff);
        (clock, apic)
    }

    #[test]
    fn reset_values() {
        let (_, mut a) = setup();
        assert_eq!(a.read_register(reg::ID), 0);
        assert_eq!(a.read_register(reg::VERSION), 0x0005_0014);
        assert_eq!(a.read_register(reg::TPR), 0);
        assert_eq!(a.read_register(reg::APR), 0);
        assert_eq!(a.read_register(reg::PPR), 0);
        assert_eq!(a.read_register(reg::LDR), 0);
        assert_eq!(a.read_register(reg::DFR), 0xffff_ffff);
        assert_eq!(a.read_register(reg::SVR), 0xff);
        for off in [0x2f0, 0x320, 0x330, 0x340, 0x360, 0x370] {
            assert_eq!(a.read_register(off), 0x0001_0000, "LVT {off:#x} masked");
        }
        assert_eq!(a.read_register(0x350), 0x700, "LINT0 virtual wire");
        assert!(a.extint_enabled());
        assert_eq!(a.read_register(reg::TIMER_INITIAL), 0);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 0);
        assert_eq!(a.read_register(reg::TIMER_DIVIDE), 0);
        for i in 0..8 {
            assert_eq!(a.read_register(reg::IRR + 16 * i), 0);
            assert_eq!(a.read_register(reg::ISR + 16 * i), 0);
            assert_eq!(a.read_register(reg::TMR + 16 * i), 0);
        }
        assert_eq!(a.read_register(reg::ESR), 0);
        assert_eq!(a.deadline_ns(), None);
    }

    #[test]
    fn writable_bits_and_read_only_registers() {
        let (_, mut a) = enabled();
        a.write_register(reg::ID, 0xffff_ffff);
        assert_eq!(a.read_register(reg::ID), 0xff00_0000);
        a.write_register(reg::ID, 0);
        a.write_register(reg::TPR, 0xffff_ffff);
        assert_eq!(a.read_register(reg::TPR), 0xff);
        a.write_register(reg::TPR, 0);
        a.write_register(reg::LDR, 0x1234_5678);
        assert_eq!(a.read_register(reg::LDR), 0x1200_0000);
        a.write_register(reg::DFR, 0);
        assert_eq!(a.read_register(reg::DFR), 0x0fff_ffff);
        a.write_register(reg::SVR, 0xffff_ffff);
        assert_eq!(
            a.read_register(reg::SVR),
            0x3ff,
            "no EOI-broadcast suppression"
        );
        a.write_register(0x320, 0xffff_ffff);
        assert_eq!(
            a.read_register(0x320),
            0x0003_00ff,
            "no TSC-deadline, no status"
        );
        a.write_register(0x350, 0xffff_ffff);
        assert_eq!(
            a.read_register(0x350),
            0x0001_a7ff,
            "remote IRR, status read-only"
        );
        a.write_register(0x370, 0xffff_ffff);
        assert_eq!(a.read_register(0x370), 0x0001_00ff);
        a.write_register(reg::ICR_HIGH, 0xffff_ffff);
        assert_eq!(a.read_register(reg::ICR_HIGH), 0xff00_0000);
        a.write_register(reg::TIMER_DIVIDE, 0xffff_ffff);
        assert_eq!(a.read_register(reg::TIMER_DIVIDE), 0xb);
        for off in [
            reg::VERSION,
            reg::PPR,
            reg::IRR,
            reg::ISR + 0x70,
            reg::TIMER_CURRENT,
        ] {
            let before = a.read_register(off);
            a.write_register(off, 0xdead_beef);
            assert_eq!(a.read_register(off), before, "{off:#x} read-only");
        }
        a.write_register(reg::ESR, 0);
        assert_eq!(
            a.read_register(reg::ESR),
            0,
            "no errors from read-only writes"
        );
    }

    #[test]
    fn reserved_register_sets_esr_on_latch() {
        let (_, mut a) = enabled();
        assert_eq!(a.read_register(0x3f0), 0);
        assert_eq!(
            a.read_register(reg::ESR),
            0,
            "not visible before an ESR write"
        );
        a.write_register(reg::ESR, 0);
        assert_eq!(a.read_register(reg::ESR), ESR_ILLEGAL_REGISTER);
        a.write_register(reg::ESR, 0);
        assert_eq!(a.read_register(reg::ESR), 0);
    }

    #[test]
    fn mmio_widths_and_alignment() {
        let clock = ManualClock::new(0);
        let apic = SharedLapic::new(LocalApic::new(clock));
        let mut bus = Bus::new(BusKind::Mmio);
        apic.register(&mut bus).unwrap();
        let mut d4 = [0u8; 4];
        bus.read(LAPIC_BASE + 0x30, &mut d4);
        assert_eq!(u32::from_le_bytes(d4), 0x0005_0014);
        let mut d1 = [0u8; 1];
        bus.read(LAPIC_BASE + 0x32, &mut d1);
        assert_eq!(d1, [0x05], "byte 2 of the version register");
        let mut d2 = [0u8; 2];
        bus.read(LAPIC_BASE + 0x33, &mut d2);
        assert_eq!(d2, [0, 0], "byte 3 then the slot's reserved bytes");
        let mut d8 = [0xaau8; 8];
        bus.read(LAPIC_BASE + 0x30, &mut d8);
        assert_eq!(d8, [0x14, 0, 5, 0, 0, 0, 0, 0]);
        // Only aligned 4-byte writes take effect.
        bus.write(LAPIC_BASE + 0x80, &[0x50]);
        bus.write(LAPIC_BASE + 0x84, &0x60u32.to_le_bytes());
        bus.write(LAPIC_BASE + 0x80, &0x70u64.to_le_bytes());
        assert_eq!(apic.with(|a| a.tpr()), 0);
        bus.write(LAPIC_BASE + 0x80, &0x80u32.to_le_bytes());
        assert_eq!(apic.with(|a| a.tpr()), 0x80);
        // Hardware-disabled: the page reads all-ones and ignores writes.
        apic.with(|a| a.set_hardware_enabled(false));
        bus.read(LAPIC_BASE + 0x30, &mut d4);
        assert_eq!(d4, [0xff; 4]);
        bus.write(LAPIC_BASE + 0x80, &0x20u32.to_le_bytes());
        apic.with(|a| a.set_hardware_enabled(true));
        assert_eq!(apic.with(|a| a.tpr()), 0, "reset by the disable");
    }

    #[test]
    fn priority_ppr_and_nesting() {
        let (_, mut a) = enabled();
        a.accept(0x41, false);
        a.accept(0x3f, false);
        assert_eq!(a.pending_vector(), Some(0x41));
        a.set_tpr(0x40);
        assert_eq!(a.read_register(reg::PPR), 0x40);
        assert_eq!(a.pending_vector(), None, "class 4 not above PPR class 4");
        a.set_tpr(0x3f);
        assert_eq!(a.pending_vector(), Some(0x41));
        a.set_tpr(0);
        assert_eq!(a.acknowledge(), Some(0x41));
        assert_eq!(a.read_register(reg::ISR + 0x20), 1 << 1);
        assert_eq!(a.ppr(), 0x40);
        // 0x3f is in a lower class than the one in service.
        assert_eq!(a.pending_vector(), None);
        a.accept(0x52, false);
        assert_eq!(a.pending_vector(), Some(0x52), "higher class nests");
        assert_eq!(a.acknowledge(), Some(0x52));
        a.set_tpr(0x4f);
        assert_eq!(a.ppr(), 0x50, "ISR class wins over a lower TPR");
        a.set_tpr(0x67);
        assert_eq!(
            a.ppr(),
            0x67,
            "TPR wins when its class is at least the ISR's"
        );
        a.set_tpr(0);
        assert_eq!(a.eoi(), None);
        assert_eq!(a.ppr(), 0x40);
        assert_eq!(a.eoi(), None);
        assert_eq!(a.pending_vector(), Some(0x3f));
    }

    #[test]
    fn same_class_lower_vector_waits_for_eoi() {
        let (_, mut a) = enabled();
        a.accept(0x45, false);
        assert_eq!(a.acknowledge(), Some(0x45));
        a.accept(0x4a, false);
        assert_eq!(a.pending_vector(), None, "same class as the one in service");
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x4a));
    }

    #[test]
    fn cr8_maps_tpr_high_nibble() {
        let (_, mut a) = enabled();
        a.set_tpr(0x5a);
        assert_eq!(a.cr8(), 5);
        a.set_cr8(0x1f);
        assert_eq!(a.tpr(), 0xf0);
        assert_eq!(a.read_register(reg::TPR), 0xf0);
    }

    #[test]
    fn spurious_vector_when_nothing_deliverable() {
        let (_, mut a) = enabled();
        a.write_register(reg::SVR, 0x1e7);
        assert_eq!(a.acknowledge(), Some(0xe7));
        a.accept(0x30, false);
        a.set_tpr(0x30);
        assert_eq!(a.acknowledge(), Some(0xe7), "masked by TPR at INTA time");
        assert_eq!(
            a.read_register(reg::IRR + 0x10),
            1 << 16,
            "request still held"
        );
        assert_eq!(a.ppr(), 0x30, "no ISR bit set");
    }

    #[test]
    fn illegal_vectors_set_esr_and_error_lvt() {
        let (_, mut a) = enabled();
        a.write_register(0x370, 0xee);
        a.accept(0x0f, false);
        assert_eq!(a.pending_vector(), Some(0xee), "error interrupt");
        assert_eq!(a.read_register(reg::IRR), 0, "vector 15 never in IRR");
        a.write_register(reg::ESR, 0);
        assert_eq!(a.read_register(reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        // Self-IPI with an illegal vector: send error, nothing received.
        a.write_register(reg::ICR_LOW, 0x0004_0005);
        a.write_register(reg::ESR, 0);
        assert_eq!(a.read_register(reg::ESR), ESR_SEND_ILLEGAL_VECTOR);
        // An illegal error vector does not recurse.
        a.write_register(0x370, 0x05);
        a.accept(0x01, false);
        a.write_register(reg::ESR, 0);
        assert_eq!(a.read_register(reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn software_disable_masks_lvts_and_refuses_fixed() {
        let (_, mut a) = enabled();
        a.write_register(0x320, 0x30);
        a.write_register(0x350, 0x700);
        a.accept(0x40, false);
        a.write_register(reg::SVR, 0x0ff);
        assert_eq!(a.read_register(0x320), 0x0001_0030);
        assert_eq!(a.read_register(0x350), 0x0001_0700);
        assert!(!a.extint_enabled(), "software disable masks LINT0");
        a.write_register(0x320, 0x30);
        assert_eq!(
            a.read_register(0x320),
            0x0001_0030,
            "mask stays while disabled"
        );
        a.accept(0x50, false);
        assert_eq!(a.pending_vector(), Some(0x40), "held request, no new one");
        a.raise_nmi();
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        a.write_register(reg::SVR, 0x1ff);
        assert_eq!(a.read_register(0x320), 0x0001_0030, "re-enable keeps masks");
        a.set_hardware_enabled(false);
        assert!(a.extint_enabled(), "hardware disable opens the wire");
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.acknowledge(), None);
    }

    #[test]
    fn level_eoi_broadcast_through_shared_handle() {
        let clock = ManualClock::new(0);
        let apic = SharedLapic::new(LocalApic::new(clock));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        apic.set_eoi_listener(Arc::new(move |v| s.lock().unwrap().push(v)));
        let mut bus = Bus::new(BusKind::Mmio);
        apic.register(&mut bus).unwrap();
        bus.write(LAPIC_BASE + 0xf0, &0x1ffu32.to_le_bytes());
        apic.with(|a| {
            a.accept(0x61, true);
            a.accept(0x71, false);
        });
        assert!(apic.has_pending_vector());
        assert_eq!(apic.acknowledge(), Some(0x71));
        assert_eq!(
            apic.acknowledge(),
            Some(0xff),
            "0x61 is below the class in service"
        );
        bus.write(LAPIC_BASE + 0xb0, &0u32.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty(), "edge EOI is not broadcast");
        assert_eq!(apic.acknowledge(), Some(0x61));
        let mut d = [0u8; 4];
        bus.read(LAPIC_BASE + 0x180 + 0x30, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1 << 1, "TMR bit of 0x61");
        bus.write(LAPIC_BASE + 0xb0, &0u32.to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), vec![0x61]);
        assert!(!apic.has_pending_vector());
    }

    #[test]
    fn self_ipis() {
        let (_, mut a) = enabled();
        // Fixed, shorthand self.
        a.write_register(reg::ICR_LOW, 0x0004_0040);
        assert_eq!(a.read_register(reg::ICR_LOW) & (1 << 12), 0, "idle");
        assert_eq!(a.pending_vector(), Some(0x40));
        // Physical destination = own ID, no shorthand.
        a.write_register(reg::ICR_HIGH, 0);
        a.write_register(reg::ICR_LOW, 0x0000_0050);
        assert_eq!(a.pending_vector(), Some(0x50));
        // To APIC 1: nobody.
        a.write_register(reg::ICR_HIGH, 0x0100_0000);
        a.write_register(reg::ICR_LOW, 0x0000_0060);
        assert_eq!(a.pending_vector(), Some(0x50));
        // All excluding self: nobody.
        a.write_register(reg::ICR_LOW, 0x000c_0070);
        assert_eq!(a.pending_vector(), Some(0x50));
        // All including self.
        a.write_register(reg::ICR_LOW, 0x0008_0080);
        assert_eq!(a.pending_vector(), Some(0x80));
        // Logical flat: LDR bit 1 matches destination 0x03.
        a.write_register(reg::LDR, 0x0200_0000);
        a.write_register(reg::ICR_HIGH, 0x0300_0000);
        a.write_register(reg::ICR_LOW, 0x0000_0890);
        assert_eq!(a.pending_vector(), Some(0x90));
        a.write_register(reg::ICR_HIGH, 0x0400_0000);
        a.write_register(reg::ICR_LOW, 0x0000_08a0);
        assert_eq!(a.pending_vector(), Some(0x90), "logical mismatch");
        // NMI to self.
        a.write_register(reg::ICR_LOW, 0x0004_0400);
        assert!(a.take_nmi());
        // INIT and SIPI to self or others are ignored.
        a.write_register(reg::ICR_LOW, 0x000c_4500);
        a.write_register(reg::ICR_LOW, 0x000c_0608);
        a.write_register(reg::ICR_LOW, 0x0004_4500);
        assert!(!a.take_nmi());
        assert_eq!(a.pending_vector(), Some(0x90));
    }

    #[test]
    fn cluster_logical_destination() {
        let (_, mut a) = enabled();
        a.write_register(reg::DFR, 0x0fff_ffff);
        a.write_register(reg::LDR, 0x2100_0000); // cluster 2, member bit 0
        assert!(a.matches_destination(0x21, true));
        assert!(a.matches_destination(0x23, true));
        assert!(a.matches_destination(0xf1, true), "broadcast cluster");
        assert!(!a.matches_destination(0x31, true));
        assert!(!a.matches_destination(0x22, true));
        assert!(a.matches_destination(0xff, true));
        assert!(a.matches_destination(0, false));
        assert!(!a.matches_destination(0x21, false));
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        let (clock, mut a) = enabled();
        let t0 = clock.now_ns();
        a.write_register(reg::TIMER_DIVIDE, 0b0001); // divide by 4
        a.write_register(0x320, 0x31);
        a.write_register(reg::TIMER_INITIAL, 1000);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 1000);
        assert_eq!(a.deadline_ns(), Some(t0 + 4000));
        clock.set(t0 + 3);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 1000);
        clock.set(t0 + 4);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 999);
        clock.set(t0 + 2000);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 500);
        clock.set(t0 + 3999);
        a.poll();
        assert_eq!(a.pending_vector(), None, "not early");
        clock.set(t0 + 4000);
        a.poll();
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 0);
        assert_eq!(a.acknowledge(), Some(0x31));
        a.eoi();
        assert_eq!(a.deadline_ns(), None);
        clock.set(t0 + 100_000);
        a.poll();
        assert_eq!(a.pending_vector(), None, "one shot");
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 0);
        // Writing 0 stops a running timer.
        a.write_register(reg::TIMER_INITIAL, 10);
        a.write_register(reg::TIMER_INITIAL, 0);
        assert_eq!(a.deadline_ns(), None);
    }

    #[test]
    fn divide_configurations() {
        let expect = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (config, divisor) in expect {
            let (clock, mut a) = enabled();
            let t0 = clock.now_ns();
            a.write_register(reg::TIMER_DIVIDE, config);
            a.write_register(0x320, 0x40);
            a.write_register(reg::TIMER_INITIAL, 100);
            assert_eq!(
                a.deadline_ns(),
                Some(t0 + 100 * divisor),
                "config {config:#b}"
            );
            clock.set(t0 + 10 * divisor);
            assert_eq!(a.read_register(reg::TIMER_CURRENT), 90);
        }
    }

    #[test]
    fn divide_change_keeps_count() {
        let (clock, mut a) = enabled();
        let t0 = clock.now_ns();
        a.write_register(reg::TIMER_DIVIDE, 0b1011); // by 1
        a.write_register(0x320, 0x40);
        a.write_register(reg::TIMER_INITIAL, 1000);
        clock.set(t0 + 400);
        a.write_register(reg::TIMER_DIVIDE, 0b0000); // by 2
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 600);
        assert_eq!(a.deadline_ns(), Some(t0 + 400 + 1200));
    }

    #[test]
    fn periodic_timer_does_not_drift() {
        let (clock, mut a) = enabled();
        let t0 = clock.now_ns();
        a.write_register(reg::TIMER_DIVIDE, 0b0011); // by 16
        a.write_register(0x320, 0x0002_00ef);
        a.write_register(reg::TIMER_INITIAL, 62_500); // 1 ms
        for k in 1..=2000u64 {
            let next = a.deadline_ns().unwrap();
            assert_eq!(next, t0 + k * 1_000_000, "expiry {k} on schedule");
            // Poll late by a varying amount: the schedule must not move.
            clock.set(next + (k * 7919) % 900_000);
            a.poll();
            assert_eq!(a.acknowledge(), Some(0xef));
            a.eoi();
            let expected = 62_500 - ((k * 7919) % 900_000) / 16;
            assert_eq!(a.read_register(reg::TIMER_CURRENT) as u64, expected);
        }
        // A poll three periods late delivers one (coalesced) interrupt and keeps the grid.
        let next = a.deadline_ns().unwrap();
        clock.set(next + 2_500_000);
        a.poll();
        assert_eq!(a.acknowledge(), Some(0xef));
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0xff), "coalesced");
        assert_eq!(a.deadline_ns(), Some(next + 3_000_000));
    }

    #[test]
    fn masked_timer_counts_but_does_not_interrupt() {
        let (clock, mut a) = enabled();
        let t0 = clock.now_ns();
        a.write_register(reg::TIMER_DIVIDE, 0b1011);
        a.write_register(0x320, 0x0003_0040); // periodic, masked
        a.write_register(reg::TIMER_INITIAL, 100);
        assert_eq!(a.deadline_ns(), None);
        clock.set(t0 + 250);
        a.poll();
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.read_register(reg::TIMER_CURRENT), 50);
        a.write_register(0x320, 0x0002_0040); // unmask: no replay of masked expiries
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.deadline_ns(), Some(t0 + 300));
        // Mode 2 (TSC-deadline, not advertised) acts as one-shot.
        a.write_register(0x320, 0x0004_0040);
        assert_eq!(a.read_register(0x320), 0x40);
        a.write_register(reg::TIMER_INITIAL, 100);
        clock.set(t0 + 250 + 100);
        a.poll();
        assert_eq!(a.acknowledge(), Some(0x40));
        assert_eq!(a.deadline_ns(), None);
    }

    #[test]
    fn shared_deadline_and_notifier() {
        let clock = ManualClock::new(0);
        let apic = SharedLapic::new(LocalApic::new(clock.clone()));
        let wakes = Arc::new(AtomicU64::new(0));
        let w = wakes.clone();
        apic.set_notifier(Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(apic.deadline_ns(), u64::MAX);
        apic.with(|a| {
            a.write_register(reg::SVR, 0x1ff);
            a.write_register(reg::TIMER_DIVIDE, 0b1011);
            a.write_register(0x320, 0x20040);
            a.write_register(reg::TIMER_INITIAL, 500);
        });
        assert_eq!(apic.deadline_ns(), 500);
        clock.set(500);
        assert_eq!(apic.poll(), 1000);
        assert!(apic.has_pending_vector());
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        apic.with(|a| a.write_register(reg::ICR_LOW, 0x0004_0400));
        assert!(apic.has_nmi());
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        assert!(apic.take_nmi());
        assert!(!apic.has_nmi());
        assert!(apic.extint_enabled());
        apic.with(|a| a.write_register(0x350, 0x10700));
        assert!(!apic.extint_enabled());
    }

    #[test]
    fn messages_by_delivery_mode() {
        let (_, mut a) = enabled();
        let msg = |mode, vector, dest| ApicMessage {
            vector,
            mode,
            logical: false,
            destination: dest,
            level_triggered: true,
        };
        assert!(a.deliver(&msg(DeliveryMode::Fixed, 0x33, 0)));
        assert_eq!(a.pending_vector(), Some(0x33));
        assert_eq!(a.read_register(reg::TMR + 0x10), 1 << 19);
        assert!(!a.deliver(&msg(DeliveryMode::Fixed, 0x44, 1)));
        assert!(a.deliver(&msg(DeliveryMode::LowestPriority, 0x44, 0xff)));
        assert_eq!(a.pending_vector(), Some(0x44));
        assert!(a.deliver(&msg(DeliveryMode::Nmi, 0, 0)));
        assert!(a.take_nmi());
        a.write_register(0x350, 0x10700);
        assert!(!a.extint_enabled());
        assert!(a.deliver(&msg(DeliveryMode::ExtInt, 0, 0)));
        assert!(
            a.extint_enabled(),
            "ExtINT message opens the wire for one INTA"
        );
        a.extint_taken();
        assert!(!a.extint_enabled());
        assert!(a.deliver(&msg(DeliveryMode::Init, 0, 0)));
        assert_eq!(a.pending_vector(), Some(0x44));
    }
}
