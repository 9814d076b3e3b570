//! A scratch device for the project's test images, modelled on QEMU's `pc-testdev`.
//!
//! Two independent port ranges:
//! - a 32-bit latch at [`TEST_LATCH_PORT`] (`0xe0..0xe4`): any access of any size at any offset
//!   reads or writes the latch bytes it covers, so a test can check port I/O widths and offsets;
//! - interrupt-line ports at [`TEST_IRQ_PORT`] (`0x2000..0x2018`): writing `v` to `0x2000 + n`
//!   drives line `n` (0..=23) of the machine's interrupt controller to `v != 0`, reading returns
//!   the level last driven. Test kernels use it to raise any ISA/IOAPIC line on demand.
//!
//! The halves share no state, so [`TestDevice`] is just the pair; each half is registered as
//! its own bus device (see [`TestDevice::register`]).

use std::sync::{Arc, Mutex};

use crate::bus::{read_bytewise, write_bytewise, Bus, BusDevice, BusError};
use crate::irq::IrqSink;

/// The conventional base port of the scratch latch.
pub const TEST_LATCH_PORT: u16 = 0xe0;
/// The size of the latch range in ports.
pub const TEST_LATCH_LEN: u64 = 4;
/// The conventional base port of the interrupt-line ports.
pub const TEST_IRQ_PORT: u16 = 0x2000;
/// The number of interrupt lines (and ports) the device drives.
pub const TEST_IRQ_LINES: usize = 24;

/// The 32-bit scratch latch: bytes read back as written.
#[derive(Debug, Default)]
pub struct TestLatch {
    bytes: [u8; 4],
}

impl TestLatch {
    /// Creates a latch holding zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latch value (little-endian over its four ports).
    pub fn value(&self) -> u32 {
        u32::from_le_bytes(self.bytes)
    }
}

impl BusDevice for TestLatch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Bytes beyond the latch (an access running past 0xe3) read as an empty port would.
        read_bytewise(offset, TEST_LATCH_LEN, data, |r| {
            self.bytes.get(r as usize).copied().unwrap_or(0xff)
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, TEST_LATCH_LEN, data, |r, v| {
            if let Some(slot) = self.bytes.get_mut(r as usize) {
                *slot = v;
            }
        });
    }
}

/// The interrupt-line ports: port `n` drives line `n` of an [`IrqSink`].
pub struct TestIrqLines {
    sink: Arc<dyn IrqSink>,
    levels: [bool; TEST_IRQ_LINES],
}

impl TestIrqLines {
    /// Creates the ports driving `sink`; every line starts deasserted (nothing is driven yet).
    pub fn new(sink: Arc<dyn IrqSink>) -> Self {
        TestIrqLines {
            sink,
            levels: [false; TEST_IRQ_LINES],
        }
    }

    /// The level last driven on line `n` (false for lines that do not exist).
    pub fn level(&self, n: usize) -> bool {
        self.levels.get(n).copied().unwrap_or(false)
    }
}

impl BusDevice for TestIrqLines {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Each byte of a wider access is the port at that address, i.e. the next line.
        read_bytewise(offset, TEST_IRQ_LINES as u64, data, |n| {
            u8::from(self.level(n as usize))
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, TEST_IRQ_LINES as u64, data, |n, v| {
            let level = v != 0;
            if let Some(slot) = self.levels.get_mut(n as usize) {
                *slot = level;
            }
            log::trace!("test device: irq line {n} -> {level}");
            // Lines are 0..24, so the cast is exact.
            self.sink.set_irq(n as u32, level);
        });
    }
}

/// The test device: the scratch latch and the interrupt-line ports.
pub struct TestDevice {
    /// The latch, to be registered at [`TEST_LATCH_PORT`] with length [`TEST_LATCH_LEN`].
    pub latch: TestLatch,
    /// The line ports, to be registered at [`TEST_IRQ_PORT`] with length [`TEST_IRQ_LINES`].
    pub irq_lines: TestIrqLines,
}

impl TestDevice {
    /// Creates the device; its interrupt lines drive `sink` (the machine's interrupt controller).
    pub fn new(sink: Arc<dyn IrqSink>) -> Self {
        TestDevice {
            latch: TestLatch::new(),
            irq_lines: TestIrqLines::new(sink),
        }
    }

    /// Registers both halves on a port-I/O bus at their conventional ports.
    pub fn register(self, bus: &mut Bus) -> Result<(), BusError> {
        bus.insert(
            u64::from(TEST_LATCH_PORT),
            TEST_LATCH_LEN,
            Arc::new(Mutex::new(self.latch)),
        )?;
        bus.insert(
            u64::from(TEST_IRQ_PORT),
            TEST_IRQ_LINES as u64,
            Arc::new(Mutex::new(self.irq_lines)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;

    #[derive(Default)]
    struct RecordingSink {
        calls: Mutex<Vec<(u32, bool)>>,
    }

    impl IrqSink for RecordingSink {
        fn set_irq(&self, irq: u32, level: bool) {
            self.calls.lock().unwrap().push((irq, level));
        }
    }

    #[test]
    fn latch_reads_back_any_width_at_any_offset() {
        let mut l = TestLatch::new();
        l.write(0, &0x1234_5678u32.to_le_bytes());
        let mut b = [0u8; 1];
        l.read(2, &mut b);
        assert_eq!(b, [0x34]);
        l.write(1, &[0xaa, 0xbb]);
        assert_eq!(l.value(), 0x12bb_aa78);
        let mut w = [0u8; 2];
        l.read(2, &mut w);
        assert_eq!(w, [0xbb, 0x12]);
        let mut d = [0u8; 4];
        l.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x12bb_aa78);
    }

    #[test]
    fn latch_access_past_end_is_clipped() {
        let mut l = TestLatch::new();
        l.write(3, &[1, 2, 3, 4]);
        assert_eq!(l.value(), 0x0100_0000);
        let mut d = [0u8; 4];
        l.read(3, &mut d);
        assert_eq!(d, [1, 0xff, 0xff, 0xff]);
        l.write(u64::MAX, &[9]);
        assert_eq!(l.value(), 0x0100_0000);
    }

    #[test]
    fn irq_ports_drive_sink_and_read_back_levels() {
        let sink = Arc::new(RecordingSink::default());
        let mut d = TestIrqLines::new(sink.clone());
        d.write(5, &[1]);
        d.write(23, &[0x80]);
        d.write(5, &[0]);
        d.write(24, &[1]); // no such line
        assert_eq!(
            *sink.calls.lock().unwrap(),
            vec![(5, true), (23, true), (5, false)]
        );
        let mut b = [0xee];
        d.read(23, &mut b);
        assert_eq!(b, [1]);
        d.read(5, &mut b);
        assert_eq!(b, [0]);
        let mut w = [0u8; 2];
        d.read(22, &mut w);
        assert_eq!(w, [0, 1]);
    }

    #[test]
    fn register_puts_both_ranges_on_the_bus() {
        let sink = Arc::new(RecordingSink::default());
        let mut bus = Bus::new(BusKind::Pio);
        TestDevice::new(sink.clone()).register(&mut bus).unwrap();
        bus.write(0xe0, &0xdead_beefu32.to_le_bytes());
        let mut b = [0u8; 1];
        bus.read(0xe3, &mut b);
        assert_eq!(b, [0xde]);
        bus.write(0x2004, &[1]);
        bus.read(0x2004, &mut b);
        assert_eq!(b, [1]);
        assert!(bus.contains(0x2017));
        assert!(!bus.contains(0x2018));
        assert_eq!(*sink.calls.lock().unwrap(), vec![(4, true)]);
    }
}
