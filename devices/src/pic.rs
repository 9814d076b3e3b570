//! The PC's cascaded pair of Intel 8259A programmable interrupt controllers, plus the PIIX ELCR.
//!
//! Under KVM the in-kernel PIC is used; the binary-translation backend uses this model: devices
//! drive its inputs through [`IrqSink`], the CPU loop asks [`Pic8259Pair::has_pending_interrupt`]
//! (the INTR pin) at block boundaries and runs [`Pic8259Pair::acknowledge`] (the INTA cycle) to
//! get the vector. Behaviour follows the 8259A datasheet; where it leaves room, QEMU and Bochs
//! were consulted:
//!
//! - Edge-triggered inputs latch the rising edge in IRR until the INTA cycle (as QEMU and KVM do),
//!   so a device may pulse a line (raise then lower at once). Level-triggered inputs (ICW1.LTIM,
//!   or the line's ELCR bit) follow the line: if it drops before INTA, the request vanishes and
//!   the INTA cycle returns the spurious vector (IR7 of that chip).
//! - Cascade: the slave's INT output drives master input 2 (when master ICW3 says so). A spurious
//!   slave request gives the slave's IR7 vector (IRQ 15) with master ISR bit 2 set, as on real
//!   hardware, which is why Linux EOIs the master for a spurious IRQ 15.
//! - ISA IRQ 2 does not exist on the bus: a device driving line 2 reaches IRQ 9 (PC/AT wiring).
//! - ICW4.µPM = 0 (8080 mode), ICW1.ADI and buffered mode have no meaning on a PC; they are
//!   stored and ignored. Special fully nested mode is implemented.
//! - Special mask mode: any unmasked request whose IR is not itself in service is eligible.
//!
//! Sharing: the pair is one object reachable from three port ranges and from every device's
//! interrupt line. [`SharedPic`] holds it behind a mutex; [`SharedPic::register`] puts three
//! small [`PicPorts`] handles on the bus (0x20, 0xA0, 0x4D0) and [`SharedPic::irq_sink`] is the
//! `Arc<dyn IrqSink>` to wire devices to. Lock order: a device may call into the PIC while
//! holding its own lock; the PIC never calls out while holding its lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bus::{lock, read_bytewise, write_bytewise, Bus, BusDevice, BusError};
use crate::irq::IrqSink;

/// Command port of the master 8259.
pub const PIC_MASTER_PORT: u16 = 0x20;
/// Command port of the slave 8259.
pub const PIC_SLAVE_PORT: u16 = 0xa0;
/// First of the two ELCR (edge/level control) ports.
pub const PIC_ELCR_PORT: u16 = 0x4d0;
/// Length of each of the three port ranges.
pub const PIC_PORTS_LEN: u64 = 2;

/// Where the initialization sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    /// Initialized: port 1 writes are OCW1.
    Ready,
    /// ICW1 seen, ICW2 next.
    Icw2,
    /// ICW3 next.
    Icw3,
    /// ICW4 next.
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic8259 {
    is_master: bool,
    /// Current input line levels.
    lines: u8,
    /// Rising edges latched on edge-triggered inputs.
    edge_latch: u8,
    isr: u8,
    imr: u8,
    /// The IR number with the highest priority is `lowest_priority + 1` (mod 8).
    lowest_priority: u8,
    vector_base: u8,
    icw3: u8,
    elcr: u8,
    elcr_mask: u8,
    ltim: bool,
    single: bool,
    icw4_needed: bool,
    init: InitState,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
}

impl Pic8259 {
    fn new(is_master: bool) -> Self {
        Pic8259 {
            is_master,
            lines: 0,
            edge_latch: 0,
            isr: 0,
            imr: 0,
            lowest_priority: 7,
            // Real-mode BIOS values, so a guest that skips initialization still gets sane vectors.
            vector_base: if is_master { 0x08 } else { 0x70 },
            icw3: if is_master { 0x04 } else { 0x02 },
            elcr: 0,
            // PIIX: IRQ 0, 1, 2, 8 and 13 are always edge-triggered.
            elcr_mask: if is_master { 0xf8 } else { 0xde },
            ltim: false,
            single: false,
            icw4_needed: true,
            init: InitState::Ready,
            auto_eoi: false,
            rotate_on_aeoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
        }
    }

    /// Inputs currently level-triggered.
    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xff
        } else {
            self.elcr
        }
    }

    /// The interrupt request register as software sees it.
    fn irr(&self) -> u8 {
        let level = self.level_mask();
        (self.edge_latch & !level) | (self.lines & level)
    }

    fn set_line(&mut self, ir: u8, level: bool) {
        let bit = 1u8 << (ir & 7);
        if level && self.lines & bit == 0 && self.level_mask() & bit == 0 {
            self.edge_latch |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// Priority rank (0 = highest) of the highest-priority bit set in `bits`, as an IR number.
    fn highest(&self, bits: u8) -> Option<u8> {
        (1..=8u8)
            .map(|i| (self.lowest_priority + i) & 7)
            .find(|ir| bits & (1 << ir) != 0)
    }

    fn rank(&self, ir: u8) -> u8 {
        ir.wrapping_sub(self.lowest_priority).wrapping_sub(1) & 7
    }

    /// The IR this chip would present on INTA now, if any (its INT output is high).
    fn pending(&self) -> Option<u8> {
        let requests = self.irr() & !self.imr;
        if self.special_mask {
            return self.highest(requests & !self.isr);
        }
        let candidate = self.highest(requests)?;
        let mut in_service = self.isr;
        if self.special_fully_nested && self.is_master {
            // A slave request may nest inside another one from the same slave.
            in_service &= !(1 << 2);
        }
        match self.highest(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(candidate) => None,
            _ => Some(candidate),
        }
    }

    /// The INTA cycle for `ir`: moves the request to service.
    fn ack(&mut self, ir: u8) {
        let bit = 1u8 << ir;
        self.edge_latch &= !bit;
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.lowest_priority = ir;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// Poll command read: acknowledges like INTA and reports `0x80 | ir`, or 0.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(ir) => {
                self.ack(ir);
                0x80 | ir
            }
            None => 0,
        }
    }

    fn read(&mut self, port: u8) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        match (port, self.read_isr) {
            (0, true) => self.isr,
            (0, false) => self.irr(),
            _ => self.imr,
        }
    }

    fn write(&mut self, port: u8, value: u8) {
        match (port, self.init) {
            (0, _) if value & 0x10 != 0 => self.icw1(value),
            (0, _) if value & 0x08 != 0 => self.ocw3(value),
            (0, _) => self.ocw2(value),
            (_, InitState::Ready) => self.imr = value,
            (_, InitState::Icw2) => {
                // x86 mode: the low three bits come from the IR number.
                self.vector_base = value & 0xf8;
                self.init = if !self.single {
                    InitState::Icw3
                } else if self.icw4_needed {
                    InitState::Icw4
                } else {
                    InitState::Ready
                };
            }
            (_, InitState::Icw3) => {
                self.icw3 = value;
                self.init = if self.icw4_needed {
                    InitState::Icw4
                } else {
                    InitState::Ready
                };
            }
            (_, InitState::Icw4) => {
                if value & 0x01 == 0 {
                    log::debug!("8259: ICW4 selects 8080 mode; treated as 8086 mode");
                }
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init = InitState::Ready;
            }
        }
    }

    fn icw1(&mut self, value: u8) {
        self.edge_latch = 0;
        self.isr = 0;
        self.imr = 0;
        self.lowest_priority = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.ltim = value & 0x08 != 0;
        self.single = value & 0x02 != 0;
        self.icw4_needed = value & 0x01 != 0;
        // Without ICW4 its functions are all zero.
        self.auto_eoi = false;
        self.rotate_on_aeoi = false;
        self.special_fully_nested = false;
        self.init = InitState::Icw2;
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            0b001 => {
                if let Some(ir) = self.highest(self.isr) {
                    self.isr &= !(1 << ir);
                }
            }
            0b011 => self.isr &= !(1 << level),
            0b101 => {
                if let Some(ir) = self.highest(self.isr) {
                    self.isr &= !(1 << ir);
                    self.lowest_priority = ir;
                }
            }
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            0b111 => {
                self.isr &= !(1 << level);
                self.lowest_priority = level;
            }
            0b110 => self.lowest_priority = level,
            _ => {} // 0b010: no operation
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & 0x02 != 0 {
            self.read_isr = value & 0x01 != 0;
        }
        if value & 0x04 != 0 {
            self.poll = true;
        }
        if value & 0x40 != 0 {
            self.special_mask = value & 0x20 != 0;
        }
    }

    fn set_elcr(&mut self, value: u8) {
        let old_level = self.level_mask();
        self.elcr = value & self.elcr_mask;
        // Inputs that just became edge-triggered start with no latched edge.
        let new_edge = old_level & !self.level_mask();
        self.edge_latch &= !new_edge;
    }
}

/// The master/slave 8259A pair of a PC, with the PIIX ELCR.
#[derive(Debug, Clone)]
pub struct Pic8259Pair {
    master: Pic8259,
    slave: Pic8259,
}

impl Default for Pic8259Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic8259Pair {
    /// Creates the pair in its power-on state (all inputs edge-triggered and unmasked).
    pub fn new() -> Self {
        Pic8259Pair {
            master: Pic8259::new(true),
            slave: Pic8259::new(false),
        }
    }

    /// Whether master IR `ir` is wired to the slave.
    fn cascades(&self, ir: u8) -> bool {
        !self.master.single && self.master.icw3 & (1 << ir) != 0 && ir == 2
    }

    /// Recomputes the slave's INT output into master input 2.
    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending().is_some();
        self.master.set_line(2, slave_int);
    }

    /// Drives ISA IRQ line `irq` (0..=15) to `level`. Line 2 is routed to IRQ 9 (PC/AT wiring).
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0 | 1 | 3..=7 => self.master.set_line(irq, level),
            2 | 9 => self.slave.set_line(1, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => log::debug!("8259: ignoring nonexistent irq {irq}"),
        }
        self.update_cascade();
    }

    /// The INTR output: whether the CPU should run an INTA cycle (if IF allows).
    pub fn has_pending_interrupt(&self) -> bool {
        // The master's IR2 input is kept equal to the slave's INT output on every change.
        self.master.pending().is_some()
    }

    /// The INTA cycle: returns the vector and moves the request into service.
    ///
    /// Without a request (it vanished, or was masked, after INTR was seen) the chip answers
    /// with its IR7 vector and sets no ISR bit: the spurious interrupt 7 (or 15 via the slave).
    pub fn acknowledge(&mut self) -> u8 {
        let Some(ir) = self.master.pending() else {
            log::debug!("8259: spurious IRQ 7");
            return self.master.vector_base | 7;
        };
        self.master.ack(ir);
        let vector = if self.cascades(ir) {
            match self.slave.pending() {
                Some(sir) => {
                    self.slave.ack(sir);
                    self.slave.vector_base | sir
                }
                None => {
                    log::debug!("8259: spurious IRQ 15");
                    self.slave.vector_base | 7
                }
            }
        } else {
            self.master.vector_base | ir
        };
        // Drop and re-evaluate the cascade line: a slave that still requests after its INTA
        // presents a fresh edge to the master.
        self.master.set_line(2, false);
        self.update_cascade();
        vector
    }

    /// Reads the register at `port` (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1); others read 0xFF.
    pub fn read_port(&mut self, port: u16) -> u8 {
        let value = match port {
            0x20 | 0x21 => self.master.read((port & 1) as u8),
            0xa0 | 0xa1 => self.slave.read((port & 1) as u8),
            0x4d0 => self.master.elcr,
            0x4d1 => self.slave.elcr,
            _ => 0xff,
        };
        // A poll read acknowledges a request, so outputs may change.
        self.update_cascade();
        value
    }

    /// Writes `value` to the register at `port`; writes to other ports are ignored.
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x20 | 0x21 => self.master.write((port & 1) as u8, value),
            0xa0 | 0xa1 => self.slave.write((port & 1) as u8, value),
            0x4d0 => self.master.set_elcr(value),
            0x4d1 => self.slave.set_elcr(value),
            _ => log::debug!("8259: write {value:#x} to unknown port {port:#x}"),
        }
        self.update_cascade();
    }

    /// The vector the master presents for IR0 (ICW2), for logs and tests.
    pub fn master_vector_base(&self) -> u8 {
        self.master.vector_base
    }

    /// The vector the slave presents for IR0 (ICW2), for logs and tests.
    pub fn slave_vector_base(&self) -> u8 {
        self.slave.vector_base
    }
}

type IntrNotifier = Arc<dyn Fn() + Send + Sync>;

struct PicShared {
    pic: Mutex<Pic8259Pair>,
    /// Cached INTR output, so the CPU loop can check it without locking.
    intr: AtomicBool,
    /// Called (outside the lock) when INTR rises, e.g. to wake a halted vCPU thread.
    notifier: Mutex<Option<IntrNotifier>>,
}

/// A [`Pic8259Pair`] shared between the bus, the devices' interrupt lines and the CPU loop.
#[derive(Clone)]
pub struct SharedPic {
    inner: Arc<PicShared>,
}

impl Default for SharedPic {
    fn default() -> Self {
        Self::new(Pic8259Pair::new())
    }
}

impl SharedPic {
    /// Wraps `pic` for sharing.
    pub fn new(pic: Pic8259Pair) -> Self {
        let intr = pic.has_pending_interrupt();
        SharedPic {
            inner: Arc::new(PicShared {
                pic: Mutex::new(pic),
                intr: AtomicBool::new(intr),
                notifier: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` on the locked pair, then refreshes the cached INTR output.
    pub fn with<R>(&self, f: impl FnOnce(&mut Pic8259Pair) -> R) -> R {
        let (result, rose) = {
            let mut pic: MutexGuard<'_, Pic8259Pair> = lock(&self.inner.pic);
            let result = f(&mut pic);
            let intr = pic.has_pending_interrupt();
            let was = self.inner.intr.swap(intr, Ordering::SeqCst);
            (result, intr && !was)
        };
        if rose {
            let notifier = lock(&self.inner.notifier).clone();
            if let Some(notify) = notifier {
                notify();
            }
        }
        result
    }

    /// The INTR output, without taking the lock (cheap enough for every block boundary).
    pub fn has_pending_interrupt(&self) -> bool {
        self.inner.intr.load(Ordering::SeqCst)
    }

    /// The INTA cycle; see [`Pic8259Pair::acknowledge`].
    pub fn acknowledge(&self) -> u8 {
        self.with(Pic8259Pair::acknowledge)
    }

    /// Installs a callback run whenever INTR rises (outside the PIC lock).
    pub fn set_notifier(&self, notify: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.inner.notifier) = Some(notify);
    }

    /// The pair as an interrupt sink for devices' [`crate::irq::SinkLine`]s (lines 0..=15).
    pub fn irq_sink(&self) -> Arc<dyn IrqSink> {
        Arc::new(self.clone())
    }

    /// The bus device for the range starting at `base` (0x20, 0xA0 or 0x4D0, length 2).
    pub fn ports(&self, base: u16) -> PicPorts {
        PicPorts {
            pic: self.clone(),
            base,
        }
    }

    /// Registers the three port ranges (0x20, 0xA0, 0x4D0; 2 ports each) on a port-I/O bus.
    pub fn register(&self, bus: &mut Bus) -> Result<(), BusError> {
        for base in [PIC_MASTER_PORT, PIC_SLAVE_PORT, PIC_ELCR_PORT] {
            bus.insert(
                u64::from(base),
                PIC_PORTS_LEN,
                Arc::new(Mutex::new(self.ports(base))),
            )?;
        }
        Ok(())
    }
}

impl IrqSink for SharedPic {
    fn set_irq(&self, irq: u32, level: bool) {
        match u8::try_from(irq) {
            Ok(irq) if irq < 16 => self.with(|p| p.set_irq(irq, level)),
            _ => log::debug!("8259: ignoring nonexistent irq {irq}"),
        }
    }
}

/// One port range of a [`SharedPic`] as a bus device; `base` is the first port of the range.
pub struct PicPorts {
    pic: SharedPic,
    base: u16,
}

impl BusDevice for PicPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wider access covers successive 8-bit ports, as the ISA bus splits it.
        // The range is 2 ports long, so the register offset fits in a u16.
        let base = self.base;
        read_bytewise(offset, PIC_PORTS_LEN, data, |r| {
            self.pic.with(|p| p.read_port(base.wrapping_add(r as u16)))
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let base = self.base;
        write_bytewise(offset, PIC_PORTS_LEN, data, |r, v| {
            self.pic
                .with(|p| p.write_port(base.wrapping_add(r as u16), v))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs the pair as Linux and the BIOS do: vectors 0x20/0x28, cascade on IR2, 8086 mode.
    fn init(pic: &mut Pic8259Pair, icw4: u8) {
        pic.write_port(0x20, 0x11);
        pic.write_port(0x21, 0x20);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, icw4);
        pic.write_port(0xa0, 0x11);
        pic.write_port(0xa1, 0x28);
        pic.write_port(0xa1, 0x02);
        pic.write_port(0xa1, icw4);
        pic.write_port(0x21, 0x00);
        pic.write_port(0xa1, 0x00);
    }

    fn ready() -> Pic8259Pair {
        let mut pic = Pic8259Pair::new();
        init(&mut pic, 0x01);
        pic
    }

    fn eoi_master(pic: &mut Pic8259Pair) {
        pic.write_port(0x20, 0x20);
    }

    #[test]
    fn icw_sequence_sets_vectors_and_clears_mask() {
        let mut pic = Pic8259Pair::new();
        pic.write_port(0x21, 0xff);
        init(&mut pic, 0x01);
        assert_eq!(pic.master_vector_base(), 0x20);
        assert_eq!(pic.slave_vector_base(), 0x28);
        assert_eq!(pic.read_port(0x21), 0);
        // ICW1 clears IMR even without the trailing OCW1.
        pic.write_port(0x21, 0x5a);
        pic.write_port(0x20, 0x11);
        assert_eq!(pic.read_port(0x21), 0);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3() {
        let mut pic = Pic8259Pair::new();
        pic.write_port(0x20, 0x12); // single, no ICW4
        pic.write_port(0x21, 0x40);
        pic.write_port(0x21, 0xfe); // now OCW1
        assert_eq!(pic.read_port(0x21), 0xfe);
        pic.set_irq(0, true);
        assert_eq!(pic.acknowledge(), 0x40);
    }

    #[test]
    fn edge_pulse_is_latched_until_inta() {
        let mut pic = ready();
        assert!(!pic.has_pending_interrupt());
        pic.set_irq(0, true);
        pic.set_irq(0, false);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.read_port(0x20), 0x01); // IRR
        assert_eq!(pic.acknowledge(), 0x20);
        assert!(!pic.has_pending_interrupt());
        pic.write_port(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(pic.read_port(0x20), 0x01);
        eoi_master(&mut pic);
        assert_eq!(pic.read_port(0x20), 0x00);
    }

    #[test]
    fn edge_needs_a_new_rising_edge() {
        let mut pic = ready();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
        eoi_master(&mut pic);
        pic.set_irq(3, true); // still high: no new edge
        assert!(!pic.has_pending_interrupt());
        pic.set_irq(3, false);
        pic.set_irq(3, true);
        assert!(pic.has_pending_interrupt());
    }

    #[test]
    fn priority_and_nesting() {
        let mut pic = ready();
        pic.set_irq(4, true);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x21);
        // IR4 is lower priority than IR1 in service.
        assert!(!pic.has_pending_interrupt());
        pic.set_irq(0, true);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x20);
        eoi_master(&mut pic); // clears IR0
        eoi_master(&mut pic); // clears IR1
        assert_eq!(pic.acknowledge(), 0x24);
    }

    #[test]
    fn imr_masks_and_masked_request_after_intr_is_spurious() {
        let mut pic = ready();
        pic.write_port(0x21, 0x02);
        pic.set_irq(1, true);
        assert!(!pic.has_pending_interrupt());
        pic.write_port(0x21, 0x00);
        assert!(pic.has_pending_interrupt());
        pic.write_port(0x21, 0x02);
        assert_eq!(pic.acknowledge(), 0x27);
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0, "spurious sets no ISR bit");
    }

    #[test]
    fn level_request_vanishing_gives_spurious_7() {
        let mut pic = ready();
        pic.write_port(0x4d0, 0x20); // IRQ5 level
        assert_eq!(pic.read_port(0x4d0), 0x20);
        pic.set_irq(5, true);
        assert!(pic.has_pending_interrupt());
        pic.set_irq(5, false);
        assert!(!pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x27);
    }

    #[test]
    fn level_line_stays_requested_after_eoi() {
        let mut pic = ready();
        pic.write_port(0x4d1, 0x08); // IRQ11 level
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), 0x2b);
        pic.write_port(0xa0, 0x20);
        eoi_master(&mut pic);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x2b);
    }

    #[test]
    fn ltim_makes_all_inputs_level() {
        let mut pic = Pic8259Pair::new();
        pic.write_port(0x20, 0x19); // LTIM, cascade, ICW4
        pic.write_port(0x21, 0x20);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x01);
        pic.set_irq(6, true);
        pic.set_irq(6, false);
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn elcr_reserved_bits_stay_edge() {
        let mut pic = ready();
        pic.write_port(0x4d0, 0xff);
        pic.write_port(0x4d1, 0xff);
        assert_eq!(pic.read_port(0x4d0), 0xf8);
        assert_eq!(pic.read_port(0x4d1), 0xde);
    }

    #[test]
    fn cascade_through_irq2() {
        let mut pic = ready();
        pic.set_irq(12, true);
        pic.set_irq(12, false);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x2c);
        pic.write_port(0x0a0, 0x0b);
        assert_eq!(pic.read_port(0xa0), 0x10);
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0x04);
        pic.write_port(0xa0, 0x20);
        eoi_master(&mut pic);
        assert_eq!(pic.read_port(0xa0), 0);
        assert_eq!(pic.read_port(0x20), 0);
    }

    #[test]
    fn second_slave_request_after_eoi_is_delivered() {
        let mut pic = ready();
        pic.set_irq(8, true);
        pic.set_irq(14, true);
        assert_eq!(pic.acknowledge(), 0x28);
        assert!(!pic.has_pending_interrupt());
        pic.write_port(0xa0, 0x20);
        eoi_master(&mut pic);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x2e);
    }

    #[test]
    fn slave_request_masked_before_inta_is_spurious_15() {
        let mut pic = ready();
        pic.set_irq(10, true);
        assert!(pic.has_pending_interrupt());
        pic.write_port(0xa1, 0x04);
        // The master latched the edge on IR2; the slave no longer requests.
        assert_eq!(pic.acknowledge(), 0x2f);
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0x04, "master ISR2 set for spurious 15");
    }

    #[test]
    fn irq2_is_routed_to_irq9() {
        let mut pic = ready();
        pic.set_irq(2, true);
        assert_eq!(pic.acknowledge(), 0x29);
    }

    #[test]
    fn auto_eoi_sets_no_isr() {
        let mut pic = Pic8259Pair::new();
        init(&mut pic, 0x03);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0);
        pic.set_irq(4, true);
        assert!(pic.has_pending_interrupt());
    }

    #[test]
    fn specific_eoi_and_rotation() {
        let mut pic = ready();
        pic.set_irq(1, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write_port(0x20, 0x61); // specific EOI IR1
        assert_eq!(pic.acknowledge(), 0x23);
        // Rotate on non-specific EOI: IR3 becomes lowest, IR4 highest.
        pic.write_port(0x20, 0xa0);
        pic.set_irq(0, true);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), 0x25);
        // Set priority: IR6 lowest, so IR7 is highest, then IR0.
        pic.write_port(0x20, 0x60 | 5);
        pic.write_port(0x20, 0xc6);
        pic.set_irq(7, true);
        assert_eq!(pic.acknowledge(), 0x27);
        // Rotate on specific EOI of IR7: IR0 is highest again.
        pic.write_port(0x20, 0xe7);
        assert_eq!(pic.acknowledge(), 0x20);
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut pic = Pic8259Pair::new();
        init(&mut pic, 0x03);
        pic.write_port(0x20, 0x80); // set rotate in AEOI
        pic.set_irq(0, true);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x20);
        pic.set_irq(0, false);
        pic.set_irq(0, true);
        // IR0 is now lowest: IR1 wins.
        assert_eq!(pic.acknowledge(), 0x21);
        assert_eq!(pic.acknowledge(), 0x20);
    }

    #[test]
    fn poll_mode_acknowledges() {
        let mut pic = ready();
        pic.write_port(0x20, 0x0c);
        assert_eq!(pic.read_port(0x20), 0);
        pic.set_irq(6, true);
        pic.write_port(0x20, 0x0c);
        assert_eq!(pic.read_port(0x21), 0x86);
        assert!(!pic.has_pending_interrupt());
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0x40);
        // Poll is one-shot: the next port 1 read is IMR again.
        assert_eq!(pic.read_port(0x21), 0);
    }

    #[test]
    fn special_mask_mode_enables_lower_priorities() {
        let mut pic = ready();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
        pic.set_irq(5, true);
        assert!(!pic.has_pending_interrupt());
        pic.write_port(0x21, 0x08); // mask IR3
        pic.write_port(0x20, 0x68); // set special mask
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x25);
        pic.write_port(0x20, 0x48); // reset special mask
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn special_fully_nested_lets_slave_nest() {
        let mut pic = Pic8259Pair::new();
        init(&mut pic, 0x11); // SFNM on both (only the master's matters)
        pic.set_irq(12, true);
        assert_eq!(pic.acknowledge(), 0x2c);
        pic.set_irq(9, true); // higher priority on the same slave
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), 0x29);
    }

    #[test]
    fn without_sfnm_slave_cannot_nest() {
        let mut pic = ready();
        pic.set_irq(12, true);
        assert_eq!(pic.acknowledge(), 0x2c);
        pic.set_irq(9, true);
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn shared_pic_on_bus_and_as_sink() {
        let pic = SharedPic::default();
        let mut bus = Bus::new(crate::bus::BusKind::Pio);
        pic.register(&mut bus).unwrap();
        for (port, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)] {
            bus.write(port, &[v]);
        }
        for (port, v) in [(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01)] {
            bus.write(port, &[v]);
        }
        bus.write(0x4d0, &[0x00, 0x08]); // word write: ELCR1 = 0, ELCR2 = 0x08
        let mut d = [0u8; 2];
        bus.read(0x4d0, &mut d);
        assert_eq!(d, [0x00, 0x08]);
        let notified = Arc::new(AtomicBool::new(false));
        let n = notified.clone();
        pic.set_notifier(Arc::new(move || n.store(true, Ordering::SeqCst)));
        let sink = pic.irq_sink();
        sink.set_irq(4, true);
        assert!(pic.has_pending_interrupt());
        assert!(notified.load(Ordering::SeqCst));
        assert_eq!(pic.acknowledge(), 0x34);
        assert!(!pic.has_pending_interrupt());
        pic.irq_sink().set_irq(99, true); // ignored
    }
}
