//! PC device models for ringzero, behind one bus trait, shared by every backend.
//!
//! Each device lives in its own module and is tested at register level. Devices reach the rest
//! of the machine only through [`bus::BusDevice`], [`irq::InterruptLine`] and
//! [`control::MachineControl`].

pub mod bus;
pub mod control;
pub mod irq;

pub use bus::{Bus, BusDevice, BusError, BusKind, SharedDevice};
pub use control::{MachineControl, MachineEvent};
pub use irq::{InterruptLine, IrqSink, LatchedLine, SinkLine};
