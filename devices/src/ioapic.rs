//! The Intel 82093AA I/O APIC (24 pins), for the binary-translation backend, and the ISA IRQ
//! fan-out that drives it together with the 8259 pair.
//!
//! Under KVM the in-kernel IOAPIC is used. Here devices drive pins through [`IrqSink`]; the I/O
//! APIC turns them into [`ApicMessage`]s for the local APIC ([`ApicBus`]). Pin numbering: pin n
//! is GSI n, and the MADT (src/acpi.rs) maps ISA IRQ n to GSI n with no remapping (its overrides,
//! for the SCI and PCI INTx IRQs, change only polarity and trigger mode, which the OS programs
//! into the redirection entries), so ISA IRQ n drives pin n. Pins 16-23 have no ISA source.
//! ISA line 2 reaches pin 2 (the PIC model routes it to its IRQ 9; nothing drives line 2).
//!
//! Behaviour (82093AA datasheet, with KVM where the datasheet is silent):
//! - IOREGSEL (+0x00, 8 bits) selects the register IOWIN (+0x10) reaches: ID (0x00, bits 24-27),
//!   version (0x01: 0x0017_0011, version 0x11, max redirection entry 23), arbitration (0x02,
//!   reads the ID), redirection entry n at 0x10 + 2n (low half) and 0x11 + 2n (high half).
//!   Other indexes read 0 and ignore writes. Reads of any width return the bytes of the
//!   addressed 32-bit register at the offset (0 beyond it); a write narrower than 4 bytes to
//!   IOWIN is merged into the selected register; any write at +0x00 sets IOREGSEL from its
//!   first byte. Other offsets read 0 and ignore writes.
//! - Redirection entries reset masked (0x1_0000). Writable: vector, delivery mode, destination
//!   mode, polarity, trigger mode, mask, destination (bits 56-63). Delivery status (bit 12)
//!   reads 0: messages are delivered at once. Remote IRR (bit 14) is read-only.
//! - Inputs: the pin's signal is the driven level, inverted when the entry is active-low.
//!   Edge-triggered: a rising edge of the signal on an unmasked pin sends one message; edges on
//!   a masked pin are lost (the datasheet: "ignored, not delivered or held pending").
//!   Level-triggered: while the signal is asserted, the pin is unmasked and remote IRR is clear,
//!   a message is sent and remote IRR set; an EOI for the entry's vector clears remote IRR and
//!   sends again if the signal is still asserted. Unmasking an asserted level pin, or writing
//!   its entry, re-evaluates it; switching an entry to edge clears remote IRR. Reprogramming
//!   polarity does not count as an edge.
//! - Messages carry the entry's delivery mode; the local APIC acts on fixed, lowest priority
//!   (one CPU: the matching one), NMI and ExtINT (see `lapic`), and drops SMI and INIT.

use std::sync::{Arc, Mutex, Weak};

use crate::bus::{fill_le, le_value, lock, Bus, BusDevice, BusError};
use crate::irq::IrqSink;
use crate::lapic::{ApicBus, ApicMessage, DeliveryMode, SharedLapic};

/// Physical address of the I/O APIC's registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Length of the MMIO range claimed (a page, as the chipset decodes it).
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of input pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// The version register: version 0x11, max redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

/// Offset of IOWIN in the range.
const IOWIN: u64 = 0x10;

const RTE_MASKED: u64 = 1 << 16;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_LOGICAL: u64 = 1 << 11;
/// Vector, delivery mode, destination mode, polarity, trigger mode, mask, destination.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// The 82093AA I/O APIC.
pub struct IoApic {
    apic: Arc<dyn ApicBus>,
    /// ID register bits 24-27.
    id: u8,
    ioregsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// Levels as the devices drive them (bit n = pin n, true = asserted), before polarity.
    lines: u32,
}

impl IoApic {
    /// Creates the I/O APIC in its reset state (ID 0, all entries masked), sending messages to
    /// `apic`.
    pub fn new(apic: Arc<dyn ApicBus>) -> Self {
        IoApic {
            apic,
            id: 0,
            ioregsel: 0,
            redirection: [RTE_MASKED; IOAPIC_PINS],
            lines: 0,
        }
    }

    /// Returns the registers to their reset state (input levels are kept: they are wires).
    pub fn reset(&mut self) {
        self.id = 0;
        self.ioregsel = 0;
        self.redirection = [RTE_MASKED; IOAPIC_PINS];
    }

    /// Redirection entry `pin` (all 64 bits), or `None` past the last pin.
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// Whether pin `pin`'s input, after polarity, is asserted.
    fn signal(&self, pin: usize) -> bool {
        let level = self.lines & (1 << pin) != 0;
        level != (self.redirection[pin] & RTE_ACTIVE_LOW != 0)
    }

    /// Drives input `pin` to `level` (true = asserted by the device); pins past 23 are ignored.
    pub fn set_pin(&mut self, pin: usize, level: bool) {
        if pin >= IOAPIC_PINS {
            log::debug!("ioapic: ignoring nonexistent pin {pin}");
            return;
        }
        let before = self.signal(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let after = self.signal(pin);
        let entry = self.redirection[pin];
        if entry & RTE_LEVEL != 0 {
            self.service_level(pin);
        } else if after && !before && entry & RTE_MASKED == 0 {
            self.send(pin);
        }
    }

    /// Sends a level pin's message if it is asserted, unmasked and not awaiting EOI.
    fn service_level(&mut self, pin: usize) {
        let entry = self.redirection[pin];
        if entry & (RTE_MASKED | RTE_REMOTE_IRR) == 0 && entry & RTE_LEVEL != 0 && self.signal(pin)
        {
            self.redirection[pin] |= RTE_REMOTE_IRR;
            self.send(pin);
        }
    }

    fn send(&self, pin: usize) {
        let e = self.redirection[pin];
        let msg = ApicMessage {
            vector: e as u8,
            mode: DeliveryMode::from_bits((e >> 8) as u32),
            logical: e & RTE_LOGICAL != 0,
            destination: (e >> 56) as u8,
            level_triggered: e & RTE_LEVEL != 0,
        };
        if matches!(
            msg.mode,
            DeliveryMode::Smi | DeliveryMode::Init | DeliveryMode::StartUp | DeliveryMode::Reserved
        ) {
            log::debug!("ioapic: pin {pin} sends {:?}", msg.mode);
        }
        self.apic.deliver(&msg);
    }

    /// An EOI broadcast for `vector`: clears remote IRR of the level entries with that vector
    /// and re-sends those still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let e = self.redirection[pin];
            if e as u8 == vector && e & RTE_LEVEL != 0 && e & RTE_REMOTE_IRR != 0 {
                self.redirection[pin] &= !RTE_REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }

    /// Reads the register `index` selects (as through IOWIN).
    pub fn read_indexed(&self, index: u8) -> u32 {
        match index {
            0x00 | 0x02 => u32::from(self.id) << 24,
            0x01 => IOAPIC_VERSION,
            0x10..=0x3f => {
                let e = self.redirection[usize::from(index - 0x10) / 2];
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes the register `index` selects (as through IOWIN).
    pub fn write_indexed(&mut self, index: u8, value: u32) {
        match index {
            0x00 => self.id = ((value >> 24) & 0xf) as u8,
            0x10..=0x3f => {
                let pin = usize::from(index - 0x10) / 2;
                let old = self.redirection[pin];
                let merged = if index & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut e = (merged & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                if e & RTE_LEVEL == 0 {
                    e &= !RTE_REMOTE_IRR;
                }
                self.redirection[pin] = e;
                self.service_level(pin);
            }
            _ => log::debug!("ioapic: write {value:#x} to read-only register {index:#x}"),
        }
    }

    /// IOREGSEL as last written.
    pub fn ioregsel(&self) -> u8 {
        self.ioregsel
    }

    /// A guest read of `data.len()` bytes at `offset` (see the module docs).
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let (base, value) = match offset {
            0x00..=0x03 => (0, u32::from(self.ioregsel)),
            0x10..=0x13 => (IOWIN, self.read_indexed(self.ioregsel)),
            _ => {
                log::debug!("ioapic: read at unknown offset {offset:#x}");
                data.fill(0);
                return;
            }
        };
        let mut image = [0u8; 4];
        fill_le(&mut image, u64::from(value));
        let start = (offset - base) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = image.get(start + i).copied().unwrap_or(0);
        }
    }

    /// A guest write of `data.len()` bytes at `offset` (see the module docs).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0x00 => {
                if let Some(&b) = data.first() {
                    self.ioregsel = b;
                }
            }
            0x10..=0x13 => {
                let index = self.ioregsel;
                let mut image = [0u8; 4];
                fill_le(&mut image, u64::from(self.read_indexed(index)));
                let start = (offset - IOWIN) as usize;
                for (i, &b) in data.iter().enumerate() {
                    if let Some(slot) = image.get_mut(start + i) {
                        *slot = b;
                    }
                }
                self.write_indexed(index, le_value(&image) as u32);
            }
            _ => log::debug!("ioapic: write {data:02x?} at unknown offset {offset:#x}"),
        }
    }
}

/// An [`IoApic`] shared between the MMIO bus, the devices' interrupt lines and the local
/// APIC's EOI broadcasts. Lock order: I/O APIC, then local APIC.
#[derive(Clone)]
pub struct SharedIoApic {
    inner: Arc<Mutex<IoApic>>,
}

impl SharedIoApic {
    /// Wraps `ioapic` for sharing.
    pub fn new(ioapic: IoApic) -> Self {
        SharedIoApic {
            inner: Arc::new(Mutex::new(ioapic)),
        }
    }

    /// Runs `f` on the locked I/O APIC.
    pub fn with<R>(&self, f: impl FnOnce(&mut IoApic) -> R) -> R {
        f(&mut lock(&self.inner))
    }

    /// Delivers an EOI broadcast; see [`IoApic::eoi`].
    pub fn eoi(&self, vector: u8) {
        self.with(|io| io.eoi(vector));
    }

    /// Makes `lapic` forward its level-triggered EOIs here (holding only a weak reference, so
    /// the two handles do not keep each other alive).
    pub fn connect_eoi(&self, lapic: &SharedLapic) {
        let weak: Weak<Mutex<IoApic>> = Arc::downgrade(&self.inner);
        lapic.set_eoi_listener(Arc::new(move |vector| {
            if let Some(inner) = weak.upgrade() {
                lock(&inner).eoi(vector);
            }
        }));
    }

    /// The I/O APIC as an interrupt sink (input n = pin n = GSI n).
    pub fn irq_sink(&self) -> Arc<dyn IrqSink> {
        Arc::new(self.clone())
    }

    /// The MMIO bus device.
    pub fn mmio(&self) -> IoApicMmio {
        IoApicMmio {
            ioapic: self.clone(),
        }
    }

    /// Registers the range at [`IOAPIC_BASE`] (length [`IOAPIC_SIZE`]) on an MMIO bus.
    pub fn register(&self, bus: &mut Bus) -> Result<(), BusError> {
        bus.insert(IOAPIC_BASE, IOAPIC_SIZE, Arc::new(Mutex::new(self.mmio())))
    }
}

impl IrqSink for SharedIoApic {
    fn set_irq(&self, irq: u32, level: bool) {
        match usize::try_from(irq) {
            Ok(pin) if pin < IOAPIC_PINS => self.with(|io| io.set_pin(pin, level)),
            _ => log::debug!("ioapic: ignoring nonexistent irq {irq}"),
        }
    }
}

/// The registers of a [`SharedIoApic`] as a bus device.
pub struct IoApicMmio {
    ioapic: SharedIoApic,
}

impl BusDevice for IoApicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.ioapic.with(|io| io.mmio_read(offset, data));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.ioapic.with(|io| io.mmio_write(offset, data));
    }
}

/// The board wiring of ISA IRQ lines: each line drives both the 8259 pair (lines 0-15) and the
/// I/O APIC pin of the same number (lines 0-23), so devices get one [`IrqSink`].
pub struct IsaIrqRouter {
    pic: Arc<dyn IrqSink>,
    ioapic: Arc<dyn IrqSink>,
}

impl IsaIrqRouter {
    /// Wires lines to `pic` (e.g. `SharedPic::irq_sink`) and `ioapic`.
    pub fn new(pic: Arc<dyn IrqSink>, ioapic: Arc<dyn IrqSink>) -> Self {
        IsaIrqRouter { pic, ioapic }
    }
}

impl IrqSink for IsaIrqRouter {
    fn set_irq(&self, irq: u32, level: bool) {
        if irq < 16 {
            self.pic.set_irq(irq, level);
        }
        if irq < IOAPIC_PINS as u32 {
            self.ioapic.set_irq(irq, level);
        } else {
            log::debug!("irq router: ignoring nonexistent irq {irq}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::irq::{line, InterruptLine};
    use crate::lapic::{LocalApic, LAPIC_BASE};
    use crate::pic::SharedPic;
    use crate::pit::ManualClock;

    /// Records every message sent.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<ApicMessage>>);

    impl ApicBus for Recorder {
        fn deliver(&self, msg: &ApicMessage) {
            self.0.lock().unwrap().push(*msg);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<ApicMessage> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn recorded() -> (Arc<Recorder>, IoApic) {
        let rec = Arc::new(Recorder::default());
        let io = IoApic::new(rec.clone());
        (rec, io)
    }

    fn write_rte(io: &mut IoApic, pin: u8, value: u64) {
        io.write_indexed(0x11 + 2 * pin, (value >> 32) as u32);
        io.write_indexed(0x10 + 2 * pin, value as u32);
    }

    fn fixed(vector: u8, level: bool) -> ApicMessage {
        ApicMessage {
            vector,
            mode: DeliveryMode::Fixed,
            logical: false,
            destination: 0,
            level_triggered: level,
        }
    }

    #[test]
    fn registers_through_ioregsel_and_iowin() {
        let (_, io) = recorded();
        let shared = SharedIoApic::new(io);
        let mut bus = Bus::new(BusKind::Mmio);
        shared.register(&mut bus).unwrap();
        let rd = |index: u8| {
            bus.write(IOAPIC_BASE, &u32::from(index).to_le_bytes());
            let mut d = [0u8; 4];
            bus.read(IOAPIC_BASE + 0x10, &mut d);
            u32::from_le_bytes(d)
        };
        assert_eq!(rd(0x00), 0);
        assert_eq!(rd(0x01), 0x0017_0011);
        assert_eq!(rd(0x02), 0);
        for pin in 0..24u8 {
            assert_eq!(rd(0x10 + 2 * pin), 0x0001_0000, "pin {pin} masked");
            assert_eq!(rd(0x11 + 2 * pin), 0);
        }
        assert_eq!(rd(0x40), 0);
        let mut d = [0u8; 4];
        bus.read(IOAPIC_BASE, &mut d);
        assert_eq!(d, [0x40, 0, 0, 0], "IOREGSEL reads back");
        // ID: bits 24-27 writable; version read-only; arbitration follows the ID.
        bus.write(IOAPIC_BASE, &[0x00]);
        bus.write(IOAPIC_BASE + 0x10, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd(0x00), 0x0f00_0000);
        assert_eq!(rd(0x02), 0x0f00_0000);
        bus.write(IOAPIC_BASE, &[0x01]);
        bus.write(IOAPIC_BASE + 0x10, &0u32.to_le_bytes());
        assert_eq!(rd(0x01), 0x0017_0011);
        // Redirection entry round trip: read-only bits 12 and 14 stay clear, reserved bits 0.
        bus.write(IOAPIC_BASE, &[0x10 + 2 * 5]);
        bus.write(IOAPIC_BASE + 0x10, &0xffff_ffffu32.to_le_bytes());
        bus.write(IOAPIC_BASE, &[0x11 + 2 * 5]);
        bus.write(IOAPIC_BASE + 0x10, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd(0x10 + 2 * 5), 0x0001_afff);
        assert_eq!(rd(0x11 + 2 * 5), 0xff00_0000);
        assert_eq!(
            shared.with(|io| io.redirection_entry(5)),
            Some(0xff00_0000_0001_afff)
        );
        // A byte write to IOWIN merges into the selected register.
        bus.write(IOAPIC_BASE, &[0x10 + 2 * 5]);
        bus.write(IOAPIC_BASE + 0x10, &[0x42]);
        assert_eq!(rd(0x10 + 2 * 5), 0x0001_af42);
        let mut b = [0u8; 1];
        bus.write(IOAPIC_BASE, &[0x01]);
        bus.read(IOAPIC_BASE + 0x12, &mut b);
        assert_eq!(b, [0x17], "byte 2 of the version register");
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only_when_unmasked() {
        let (rec, mut io) = recorded();
        io.set_pin(4, true);
        io.set_pin(4, false);
        write_rte(&mut io, 4, 0x34);
        assert!(rec.take().is_empty(), "masked edge is lost, not latched");
        io.set_pin(4, true);
        io.set_pin(4, true);
        io.set_pin(4, false);
        assert_eq!(rec.take(), vec![fixed(0x34, false)]);
        io.set_pin(4, true);
        assert_eq!(rec.take().len(), 1);
        // Active low: the device's deassertion is the asserting edge.
        io.set_pin(4, false);
        write_rte(&mut io, 4, 0x2034);
        assert!(rec.take().is_empty(), "polarity change is no edge");
        io.set_pin(4, true);
        assert!(rec.take().is_empty());
        io.set_pin(4, false);
        assert_eq!(rec.take(), vec![fixed(0x34, false)]);
    }

    #[test]
    fn level_pin_remote_irr_and_eoi() {
        let (rec, mut io) = recorded();
        write_rte(&mut io, 9, 0x0000_0000_0000_8049);
        io.set_pin(9, true);
        assert_eq!(rec.take(), vec![fixed(0x49, true)]);
        assert_eq!(
            io.read_indexed(0x10 + 18) & (1 << 14),
            1 << 14,
            "remote IRR"
        );
        io.set_pin(9, false);
        io.set_pin(9, true);
        assert!(rec.take().is_empty(), "remote IRR holds off re-delivery");
        io.eoi(0x48);
        assert!(rec.take().is_empty(), "other vector");
        io.eoi(0x49);
        assert_eq!(rec.take(), vec![fixed(0x49, true)], "still asserted: again");
        io.set_pin(9, false);
        io.eoi(0x49);
        assert!(rec.take().is_empty());
        assert_eq!(io.read_indexed(0x10 + 18) & (1 << 14), 0);
        // Remote IRR cannot be written.
        io.write_indexed(0x10 + 18, 0x0000_c049);
        assert_eq!(io.read_indexed(0x10 + 18), 0x0000_8049);
    }

    #[test]
    fn masked_level_pin_delivers_when_unmasked() {
        let (rec, mut io) = recorded();
        write_rte(&mut io, 10, 0x0001_804a);
        io.set_pin(10, true);
        assert!(rec.take().is_empty());
        io.write_indexed(0x10 + 20, 0x0000_804a);
        assert_eq!(rec.take(), vec![fixed(0x4a, true)]);
        // Switching to edge clears remote IRR.
        io.write_indexed(0x10 + 20, 0x0000_004a);
        assert_eq!(io.read_indexed(0x10 + 20), 0x4a);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn message_fields_follow_the_entry() {
        let (rec, mut io) = recorded();
        write_rte(&mut io, 1, 0x0300_0000_0000_0931); // lowest priority, logical, dest 3
        write_rte(&mut io, 2, 0x0000_0000_0000_0400); // NMI
        write_rte(&mut io, 3, 0x0000_0000_0000_0700); // ExtINT
        io.set_pin(1, true);
        io.set_pin(2, true);
        io.set_pin(3, true);
        let m = rec.take();
        assert_eq!(
            m[0],
            ApicMessage {
                vector: 0x31,
                mode: DeliveryMode::LowestPriority,
                logical: true,
                destination: 3,
                level_triggered: false,
            }
        );
        assert_eq!(m[1].mode, DeliveryMode::Nmi);
        assert_eq!(m[2].mode, DeliveryMode::ExtInt);
        io.set_pin(24, true);
        assert!(rec.take().is_empty());
    }

    /// The whole path: device line -> router -> I/O APIC -> local APIC -> EOI -> I/O APIC.
    #[test]
    fn router_drives_pic_and_ioapic_end_to_end() {
        let clock = ManualClock::new(0);
        let lapic = SharedLapic::new(LocalApic::new(clock));
        let ioapic = SharedIoApic::new(IoApic::new(Arc::new(lapic.clone())));
        ioapic.connect_eoi(&lapic);
        let pic = SharedPic::default();
        let router: Arc<dyn IrqSink> =
            Arc::new(IsaIrqRouter::new(pic.irq_sink(), ioapic.irq_sink()));
        let mut bus = Bus::new(BusKind::Mmio);
        lapic.register(&mut bus).unwrap();
        ioapic.register(&mut bus).unwrap();
        bus.write(LAPIC_BASE + 0xf0, &0x1ffu32.to_le_bytes());
        // Pin 11 level, vector 0x5b, physical destination 0.
        bus.write(IOAPIC_BASE, &[0x10 + 22]);
        bus.write(IOAPIC_BASE + 0x10, &0x0000_805bu32.to_le_bytes());

        let irq11: Arc<dyn InterruptLine> = line(&router, 11);
        irq11.set_level(true);
        assert!(pic.has_pending_interrupt(), "the 8259 sees the line too");
        assert!(lapic.has_pending_vector());
        assert_eq!(lapic.acknowledge(), Some(0x5b));
        // Handler runs, device keeps the line up: the EOI re-delivers.
        bus.write(LAPIC_BASE + 0xb0, &0u32.to_le_bytes());
        assert_eq!(lapic.pending_vector(), Some(0x5b));
        assert_eq!(lapic.acknowledge(), Some(0x5b));
        irq11.set_level(false);
        bus.write(LAPIC_BASE + 0xb0, &0u32.to_le_bytes());
        assert_eq!(lapic.pending_vector(), None);
        assert_eq!(ioapic.with(|io| io.read_indexed(0x10 + 22)) & (1 << 14), 0);

        // Line 20 exists only on the I/O APIC; line 30 nowhere.
        router.set_irq(20, true);
        router.set_irq(30, true);
        assert_eq!(
            ioapic.with(|io| io.lines),
            1 << 20,
            "line 11 dropped, 20 up"
        );
    }
}
