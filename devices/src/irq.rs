//! Interrupt lines: how a device raises an interrupt without knowing who receives it.
//!
//! Under KVM with the in-kernel irqchip a line becomes `KVM_IRQ_LINE`; under the binary
//! translator it drives the project's own 8259/IOAPIC models. Devices hold an
//! `Arc<dyn InterruptLine>` and never touch a global.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Something that accepts the level of one numbered interrupt request line.
pub trait IrqSink: Send + Sync {
    /// Sets line `irq` to `level` (true = asserted).
    fn set_irq(&self, irq: u32, level: bool);
}

/// One interrupt request line from a device to an interrupt controller.
pub trait InterruptLine: Send + Sync {
    /// Drives the line to `level` (true = asserted). Edge-triggered receivers see the rising edge.
    fn set_level(&self, level: bool);
}

/// A line bound to input `irq` of an [`IrqSink`].
pub struct SinkLine {
    sink: Arc<dyn IrqSink>,
    irq: u32,
}

impl SinkLine {
    /// Creates the line for input `irq` of `sink`.
    pub fn new(sink: Arc<dyn IrqSink>, irq: u32) -> Self {
        SinkLine { sink, irq }
    }
}

/// Input `irq` of `sink` as a shareable line, the form devices take.
pub fn line(sink: &Arc<dyn IrqSink>, irq: u32) -> Arc<dyn InterruptLine> {
    Arc::new(SinkLine::new(Arc::clone(sink), irq))
}

impl InterruptLine for SinkLine {
    fn set_level(&self, level: bool) {
        self.sink.set_irq(self.irq, level);
    }
}

/// A line connected to nothing, which remembers its level (for tests and unwired devices).
#[derive(Default)]
pub struct LatchedLine {
    level: AtomicBool,
}

impl LatchedLine {
    /// Creates a deasserted line.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The level last driven.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
}

impl InterruptLine for LatchedLine {
    fn set_level(&self, level: bool) {
        self.level.store(level, Ordering::SeqCst);
    }
}
