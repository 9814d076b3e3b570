//! QEMU-compatible `isa-debug-exit` device: lets a test guest end the run with a status code.
//!
//! Test images write a value `v` to the port (0xf4 by convention, registered with size 4) and the
//! machine stops with [`MachineEvent::DebugExit`]`(v)`; the process then exits with status
//! `(v << 1) | 1`, exactly as `qemu-system-x86_64 -device isa-debug-exit` does, so the same
//! images and test harnesses work under QEMU and ringzero. Reads return 0, as in QEMU (a guest
//! can only tell the device is present by that zero, since an empty port reads all-ones).

use std::sync::Arc;

use crate::bus::{fill_le, le_value, BusDevice};
use crate::control::{MachineControl, MachineEvent};

/// The conventional I/O port base of the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The conventional size of its port range.
pub const DEBUG_EXIT_PORT_LEN: u64 = 4;

/// The process exit status QEMU uses for a debug-exit write of `value`.
pub const fn exit_status(value: u32) -> u8 {
    // Truncation matches QEMU, which hands `(val << 1) | 1` to exit() and the OS keeps 8 bits.
    ((value << 1) | 1) as u8
}

/// The debug-exit port: any write posts a [`MachineEvent::DebugExit`].
pub struct DebugExit {
    control: Arc<MachineControl>,
}

impl DebugExit {
    /// Creates the device posting to `control`.
    pub fn new(control: Arc<MachineControl>) -> Self {
        DebugExit { control }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        fill_le(data, 0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // QEMU ignores the offset within the range and takes the written value as is.
        let value = le_value(data) as u32;
        log::debug!("debug-exit write {value:#x} at offset {offset}");
        self.control.request(MachineEvent::DebugExit(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dword_write_posts_value() {
        let c = MachineControl::new();
        let mut d = DebugExit::new(c.clone());
        assert_eq!(c.take(), None);
        d.write(0, &0x1234_5678u32.to_le_bytes());
        assert_eq!(c.take(), Some(MachineEvent::DebugExit(0x1234_5678)));
    }

    #[test]
    fn byte_write_posts_value() {
        let c = MachineControl::new();
        let mut d = DebugExit::new(c.clone());
        d.write(0, &[0x10]);
        assert_eq!(c.take(), Some(MachineEvent::DebugExit(0x10)));
    }

    #[test]
    fn word_write_at_other_offset_posts_value() {
        let c = MachineControl::new();
        let mut d = DebugExit::new(c.clone());
        d.write(2, &[0x34, 0x12]);
        assert_eq!(c.take(), Some(MachineEvent::DebugExit(0x1234)));
    }

    #[test]
    fn reads_return_zero_like_qemu() {
        let c = MachineControl::new();
        let mut d = DebugExit::new(c.clone());
        let mut buf = [0xaa; 4];
        d.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
        assert!(!c.is_pending());
    }

    #[test]
    fn exit_status_is_shifted_or_one() {
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(0x10), 0x21);
        assert_eq!(exit_status(0x7f), 0xff);
    }
}
