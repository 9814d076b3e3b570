//! PC device models for ringzero, behind one bus trait, shared by every backend.
//!
//! Each device lives in its own module and is tested at register level. Devices reach the rest
//! of the machine only through [`bus::BusDevice`], [`irq::InterruptLine`] and
//! [`control::MachineControl`].

#![warn(missing_docs)]

pub mod acpi_pm;
pub mod bus;
pub mod control;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod terminal;
pub mod test_device;
pub mod uart;

pub use bus::{Bus, BusDevice, BusError, BusKind, SharedDevice};
pub use control::{MachineControl, MachineEvent};
pub use irq::{InterruptLine, IrqSink, LatchedLine, SinkLine};
