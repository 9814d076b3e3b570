//! Machine-control requests that devices raise: power-off, reset, debug-exit.
//!
//! A device calls [`MachineControl::request`]; the backend checks [`MachineControl::take`]
//! after each exit it dispatches and stops the vCPU. The first request wins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Why a device asked the machine to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest powered the machine off.
    PowerOff,
    /// The guest asked for a reset (i8042 command 0xFE, or port 0xCF9).
    Reset,
    /// The guest wrote `value` to the debug-exit port; the process exits with `(value << 1) | 1`.
    DebugExit(u32),
}

/// The shared mailbox devices post machine events to.
#[derive(Default)]
pub struct MachineControl {
    pending: AtomicBool,
    event: Mutex<Option<MachineEvent>>,
}

impl MachineControl {
    /// Creates an empty mailbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Posts `event` unless an earlier one is still pending.
    pub fn request(&self, event: MachineEvent) {
        let mut slot = crate::bus::lock(&self.event);
        if slot.is_none() {
            log::debug!("machine event requested: {event:?}");
            *slot = Some(event);
            self.pending.store(true, Ordering::SeqCst);
        }
    }

    /// Cheap check for a pending event.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The pending event, if any (it stays pending: the machine is stopping).
    pub fn take(&self) -> Option<MachineEvent> {
        if !self.is_pending() {
            return None;
        }
        *crate::bus::lock(&self.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let c = MachineControl::new();
        assert_eq!(c.take(), None);
        c.request(MachineEvent::DebugExit(3));
        c.request(MachineEvent::Reset);
        assert_eq!(c.take(), Some(MachineEvent::DebugExit(3)));
    }
}
