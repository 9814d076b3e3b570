//! Intel 8042 PS/2 controller (ports 0x60/0x64): enough for Linux's i8042 and atkbd probes and
//! for resetting the machine.
//!
//! The keyboard is a PS/2 keyboard that answers every command (reset, identify, LEDs, scancode
//! set, enable/disable…) but never has keys pressed: no host input is routed here. The AUX port
//! exists on the controller (loop-back 0xD3, interface test 0xA9, enable/disable bits all
//! work, so Linux's `i8042_check_aux` passes) but has **no device attached**: every byte the
//! guest sends to it with 0xD4 is answered with 0xFE flagged as a transmit timeout (status bit
//! 6), which is how a real controller reports an empty PS/2 socket and makes Linux's psmouse
//! probe fail at once instead of waiting for time-outs.
//!
//! Resets: a pulse-output-line command 0xF0-0xFF with bit 0 clear, or an output-port write
//! (0xD1) with bit 0 clear, posts [`MachineEvent::Reset`]. The A20 gate bit of the output port
//! is kept and readable but does not mask memory (the machine always runs with A20 enabled).
//!
//! Interrupts: IRQ 1 while the output buffer holds a keyboard/controller byte and the command
//! byte's bit 0 is set; IRQ 12 while it holds an AUX byte and bit 1 is set. Both lines are driven
//! level-style.
//!
//! Ports 0x60 and 0x64 are not contiguous (0x61 belongs to the PIT/speaker), so [`I8042`]
//! decodes offsets 0 (data) and 4 (status/command) as if registered at 0x60 with length 5,
//! and [`I8042::ports`] gives two one-byte bus devices for registering at 0x60 and 0x64 apart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::bus::{lock, read_bytewise, write_bytewise, BusDevice, SharedDevice};
use crate::control::{MachineControl, MachineEvent};
use crate::irq::InterruptLine;

/// The data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status (read) and command (write) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Offset of the data register when the device covers 0x60..=0x64.
const OFFSET_DATA: u64 = 0;
/// Offset of the status/command register when the device covers 0x60..=0x64.
const OFFSET_COMMAND: u64 = 4;
/// Length of the range [`I8042`] decodes (0x60..=0x64).
const DECODED_LEN: u64 = OFFSET_COMMAND + 1;

// Status register bits.
const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;
const STATUS_TIMEOUT: u8 = 0x40;

// Command byte (controller RAM byte 0) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port bits.
const OUTPORT_RESET: u8 = 0x01;
const OUTPORT_A20: u8 = 0x02;
const OUTPORT_KBD_OBF: u8 = 0x10;
const OUTPORT_AUX_OBF: u8 = 0x20;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;

/// More queued bytes than this are dropped: only a misbehaving guest gets here.
const QUEUE_LIMIT: usize = 16;

/// Who put a byte into the output buffer; selects IRQ 1 or 12 and the AUX status bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Keyboard,
    Aux { timeout: bool },
}

/// What the next data-port write goes to, after a controller command that takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ControllerArg {
    Ram(u8),
    OutputPort,
    KbdBuffer,
    AuxBuffer,
    AuxDevice,
}

/// A keyboard command that takes an argument byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyboardArg {
    Leds,
    Typematic,
    ScancodeSet,
}

/// The 8042 controller with its attached keyboard (and an empty AUX socket).
pub struct I8042 {
    /// Controller RAM; byte 0 is the command byte (CTR).
    ram: [u8; 32],
    status: u8,
    outport: u8,
    pending: Option<ControllerArg>,
    /// Bytes the controller itself produced (command replies, 0xD2/0xD3 writes).
    controller_out: VecDeque<(u8, Source)>,
    /// Bytes from the keyboard, held back while the keyboard interface is disabled.
    kbd_out: VecDeque<u8>,
    /// Bytes from the AUX port, held back while the AUX interface is disabled.
    aux_out: VecDeque<(u8, bool)>,
    /// The byte last read from the data port (read again when the buffer is empty).
    last_data: u8,
    kbd_arg: Option<KeyboardArg>,
    kbd_scancode_set: u8,
    kbd_scanning: bool,
    kbd_irq: Arc<dyn InterruptLine>,
    aux_irq: Arc<dyn InterruptLine>,
    kbd_level: bool,
    aux_level: bool,
    control: Arc<MachineControl>,
}

impl I8042 {
    /// Creates the controller with IRQ 1 (`kbd_irq`), IRQ 12 (`aux_irq`) and the reset mailbox.
    pub fn new(
        kbd_irq: Arc<dyn InterruptLine>,
        aux_irq: Arc<dyn InterruptLine>,
        control: Arc<MachineControl>,
    ) -> Self {
        let mut ram = [0u8; 32];
        // As firmware leaves it: keyboard interrupt on, POST passed, AUX off, translation on.
        ram[0] = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLATE;
        I8042 {
            ram,
            status: STATUS_SYS | STATUS_UNLOCKED,
            outport: OUTPORT_RESET | OUTPORT_A20,
            pending: None,
            controller_out: VecDeque::new(),
            kbd_out: VecDeque::new(),
            aux_out: VecDeque::new(),
            last_data: 0,
            kbd_arg: None,
            kbd_scancode_set: 2,
            kbd_scanning: true,
            kbd_irq,
            aux_irq,
            kbd_level: false,
            aux_level: false,
            control,
        }
    }

    /// Two bus devices for a controller shared as `dev`: (data port 0x60, command port 0x64).
    pub fn ports(dev: Arc<Mutex<I8042>>) -> (SharedDevice, SharedDevice) {
        let data = Arc::new(Mutex::new(I8042Port {
            dev: dev.clone(),
            offset: OFFSET_DATA,
        }));
        let command = Arc::new(Mutex::new(I8042Port {
            dev,
            offset: OFFSET_COMMAND,
        }));
        (data, command)
    }

    /// The command byte (controller RAM byte 0).
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// Whether the guest left the A20 gate enabled in the output port.
    pub fn a20_enabled(&self) -> bool {
        self.outport & OUTPORT_A20 != 0
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// The byte currently in the output buffer, if any, and where it came from.
    fn output(&self) -> Option<(u8, Source)> {
        if let Some(front) = self.controller_out.front() {
            return Some(*front);
        }
        if self.ctr() & CTR_KBD_DISABLE == 0 {
            if let Some(b) = self.kbd_out.front() {
                return Some((*b, Source::Keyboard));
            }
        }
        if self.ctr() & CTR_AUX_DISABLE == 0 {
            if let Some((b, timeout)) = self.aux_out.front() {
                return Some((*b, Source::Aux { timeout: *timeout }));
            }
        }
        None
    }

    fn pop_output(&mut self) -> Option<u8> {
        if let Some((b, _)) = self.controller_out.pop_front() {
            return Some(b);
        }
        if self.ctr() & CTR_KBD_DISABLE == 0 {
            if let Some(b) = self.kbd_out.pop_front() {
                return Some(b);
            }
        }
        if self.ctr() & CTR_AUX_DISABLE == 0 {
            if let Some((b, _)) = self.aux_out.pop_front() {
                return Some(b);
            }
        }
        None
    }

    fn push_controller(&mut self, b: u8, source: Source) {
        if self.controller_out.len() < QUEUE_LIMIT {
            self.controller_out.push_back((b, source));
        } else {
            log::debug!("i8042: controller output overflow, dropping {b:#x}");
        }
    }

    fn push_kbd(&mut self, b: u8) {
        if self.kbd_out.len() < QUEUE_LIMIT {
            self.kbd_out.push_back(b);
        } else {
            log::debug!("i8042: keyboard output overflow, dropping {b:#x}");
        }
    }

    fn push_aux(&mut self, b: u8, timeout: bool) {
        if self.aux_out.len() < QUEUE_LIMIT {
            self.aux_out.push_back((b, timeout));
        }
    }

    fn read_status(&self) -> u8 {
        let mut s = self.status & !(STATUS_OBF | STATUS_AUX_DATA | STATUS_TIMEOUT);
        match self.output() {
            Some((_, Source::Keyboard)) => s |= STATUS_OBF,
            Some((_, Source::Aux { timeout })) => {
                s |= STATUS_OBF | STATUS_AUX_DATA;
                if timeout {
                    s |= STATUS_TIMEOUT;
                }
            }
            None => {}
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.pop_output() {
            self.last_data = b;
        }
        self.last_data
    }

    fn update_irq(&mut self) {
        let (kbd, aux) = match self.output() {
            Some((_, Source::Keyboard)) => (self.ctr() & CTR_KBD_INT != 0, false),
            Some((_, Source::Aux { .. })) => (false, self.ctr() & CTR_AUX_INT != 0),
            None => (false, false),
        };
        if kbd != self.kbd_level {
            self.kbd_level = kbd;
            self.kbd_irq.set_level(kbd);
        }
        if aux != self.aux_level {
            self.aux_level = aux;
            self.aux_irq.set_level(aux);
        }
    }

    fn output_port_value(&self) -> u8 {
        let mut v = self.outport & !(OUTPORT_KBD_OBF | OUTPORT_AUX_OBF);
        if self.kbd_level {
            v |= OUTPORT_KBD_OBF;
        }
        if self.aux_level {
            v |= OUTPORT_AUX_OBF;
        }
        v
    }

    fn reset_machine(&self, why: &str) {
        log::info!("i8042: guest requested a reset ({why})");
        self.control.request(MachineEvent::Reset);
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= STATUS_CMD;
        // A new command abandons any argument the previous one was waiting for.
        self.pending = None;
        match cmd {
            0x20..=0x3f => {
                let v = self.ram[usize::from(cmd & 0x1f)];
                self.push_controller(v, Source::Keyboard);
            }
            0x60..=0x7f => self.pending = Some(ControllerArg::Ram(cmd & 0x1f)),
            0xa7 => self.ram[0] |= CTR_AUX_DISABLE,
            0xa8 => self.ram[0] &= !CTR_AUX_DISABLE,
            // Interface tests: 0 = no error on the clock and data lines.
            0xa9 | 0xab => self.push_controller(0x00, Source::Keyboard),
            0xaa => {
                self.status |= STATUS_SYS;
                self.push_controller(0x55, Source::Keyboard);
            }
            0xad => self.ram[0] |= CTR_KBD_DISABLE,
            0xae => self.ram[0] &= !CTR_KBD_DISABLE,
            // Input port: bit 7 = keyboard not inhibited.
            0xc0 => self.push_controller(0x80, Source::Keyboard),
            0xd0 => {
                let v = self.output_port_value();
                self.push_controller(v, Source::Keyboard);
            }
            0xd1 => self.pending = Some(ControllerArg::OutputPort),
            0xd2 => self.pending = Some(ControllerArg::KbdBuffer),
            0xd3 => self.pending = Some(ControllerArg::AuxBuffer),
            0xd4 => self.pending = Some(ControllerArg::AuxDevice),
            0xf0..=0xff => {
                if cmd & 0x01 == 0 {
                    self.reset_machine("pulse output line");
                }
            }
            _ => log::debug!("i8042: unhandled controller command {cmd:#x}"),
        }
    }

    fn write_data(&mut self, v: u8) {
        self.status &= !STATUS_CMD;
        match self.pending.take() {
            Some(ControllerArg::Ram(idx)) => {
                self.ram[usize::from(idx & 0x1f)] = v;
                if idx == 0 {
                    // The SYS flag in the status register follows the command byte.
                    self.status = (self.status & !STATUS_SYS) | (v & CTR_SYS);
                }
            }
            Some(ControllerArg::OutputPort) => {
                self.outport = v;
                if v & OUTPORT_A20 == 0 {
                    log::debug!("i8042: guest disabled A20 (not emulated)");
                }
                if v & OUTPORT_RESET == 0 {
                    self.reset_machine("output port reset bit cleared");
                }
            }
            Some(ControllerArg::KbdBuffer) => self.push_controller(v, Source::Keyboard),
            Some(ControllerArg::AuxBuffer) => {
                self.push_controller(v, Source::Aux { timeout: false })
            }
            Some(ControllerArg::AuxDevice) => {
                // Writing to the AUX device enables the interface, as on real controllers.
                self.ram[0] &= !CTR_AUX_DISABLE;
                // No device in the socket: the transmission times out.
                self.push_aux(KBD_RESEND, true);
            }
            None => {
                // Sending data to the keyboard re-enables its interface.
                self.ram[0] &= !CTR_KBD_DISABLE;
                self.keyboard_write(v);
            }
        }
    }

    /// The scancode-set number as the keyboard reports it, translated when the controller is.
    fn scancode_set_reply(&self) -> u8 {
        if self.ctr() & CTR_XLATE == 0 {
            return self.kbd_scancode_set;
        }
        match self.kbd_scancode_set {
            1 => 0x43,
            2 => 0x41,
            _ => 0x3f,
        }
    }

    fn keyboard_write(&mut self, v: u8) {
        if let Some(arg) = self.kbd_arg.take() {
            self.push_kbd(KBD_ACK);
            if arg == KeyboardArg::ScancodeSet {
                match v {
                    0 => {
                        let r = self.scancode_set_reply();
                        self.push_kbd(r);
                    }
                    1..=3 => self.kbd_scancode_set = v,
                    _ => {}
                }
            }
            return;
        }
        match v {
            0xed => {
                self.push_kbd(KBD_ACK);
                self.kbd_arg = Some(KeyboardArg::Leds);
            }
            KBD_ECHO => self.push_kbd(KBD_ECHO),
            0xf0 => {
                self.push_kbd(KBD_ACK);
                self.kbd_arg = Some(KeyboardArg::ScancodeSet);
            }
            0xf2 => {
                self.push_kbd(KBD_ACK);
                self.push_kbd(0xab);
                let second = if self.ctr() & CTR_XLATE != 0 {
                    0x41
                } else {
                    0x83
                };
                self.push_kbd(second);
            }
            0xf3 => {
                self.push_kbd(KBD_ACK);
                self.kbd_arg = Some(KeyboardArg::Typematic);
            }
            0xf4 => {
                self.kbd_scanning = true;
                self.push_kbd(KBD_ACK);
            }
            0xf5 => {
                self.kbd_scanning = false;
                self.push_kbd(KBD_ACK);
            }
            0xf6..=0xfd => self.push_kbd(KBD_ACK),
            0xfe => self.push_kbd(KBD_ACK),
            0xff => {
                self.kbd_out.clear();
                self.kbd_scancode_set = 2;
                self.kbd_scanning = true;
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_SELF_TEST_OK);
            }
            _ => self.push_kbd(KBD_RESEND),
        }
    }

    fn access_read(&mut self, offset: u64) -> u8 {
        match offset {
            OFFSET_DATA => self.read_data(),
            OFFSET_COMMAND => self.read_status(),
            _ => 0xff,
        }
    }

    fn access_write(&mut self, offset: u64, v: u8) {
        match offset {
            OFFSET_DATA => self.write_data(v),
            OFFSET_COMMAND => self.write_command(v),
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, DECODED_LEN, data, |r| self.access_read(r));
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, DECODED_LEN, data, |r, v| self.access_write(r, v));
        self.update_irq();
    }
}

/// One port of a shared [`I8042`], for registering 0x60 and 0x64 as separate one-byte ranges.
pub struct I8042Port {
    dev: Arc<Mutex<I8042>>,
    offset: u64,
}

impl BusDevice for I8042Port {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Bytes beyond the one-byte port belong to no device.
        read_bytewise(offset, 1, data, |_| {
            let mut b = [0];
            lock(&self.dev).read(self.offset, &mut b);
            b[0]
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, 1, data, |_, v| {
            lock(&self.dev).write(self.offset, &[v])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;

    struct Rig {
        kbc: I8042,
        kbd: Arc<LatchedLine>,
        aux: Arc<LatchedLine>,
        control: Arc<MachineControl>,
    }

    fn rig() -> Rig {
        let kbd = LatchedLine::new();
        let aux = LatchedLine::new();
        let control = MachineControl::new();
        Rig {
            kbc: I8042::new(kbd.clone(), aux.clone(), control.clone()),
            kbd,
            aux,
            control,
        }
    }

    impl Rig {
        fn cmd(&mut self, c: u8) {
            self.kbc.write(OFFSET_COMMAND, &[c]);
        }
        fn out(&mut self, v: u8) {
            self.kbc.write(OFFSET_DATA, &[v]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.kbc.read(OFFSET_COMMAND, &mut b);
            b[0]
        }
        fn data(&mut self) -> u8 {
            let mut b = [0];
            self.kbc.read(OFFSET_DATA, &mut b);
            b[0]
        }
        /// Reads every pending byte, as Linux's `i8042_flush` does.
        fn drain(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            while self.status() & STATUS_OBF != 0 && v.len() < 64 {
                v.push(self.data());
            }
            v
        }
    }

    #[test]
    fn initial_status_and_self_test() {
        let mut r = rig();
        assert_eq!(r.status(), STATUS_SYS | STATUS_UNLOCKED);
        r.cmd(0xaa);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_CMD),
            STATUS_OBF | STATUS_CMD
        );
        assert_eq!(r.data(), 0x55);
        assert_eq!(r.status() & STATUS_OBF, 0);
        r.cmd(0xab);
        assert_eq!(r.drain(), vec![0x00]);
        r.cmd(0xa9);
        assert_eq!(r.drain(), vec![0x00]);
    }

    #[test]
    fn command_byte_read_write() {
        let mut r = rig();
        r.cmd(0x20);
        assert_eq!(r.data(), 0x65);
        r.cmd(0x60);
        r.out(0x47);
        assert_eq!(r.status() & STATUS_CMD, 0);
        r.cmd(0x20);
        assert_eq!(r.drain(), vec![0x47]);
        // The SYS flag follows command byte bit 2.
        r.cmd(0x60);
        r.out(0x00);
        assert_eq!(r.status() & STATUS_SYS, 0);
        // Other controller RAM bytes.
        r.cmd(0x65);
        r.out(0x99);
        r.cmd(0x25);
        assert_eq!(r.drain(), vec![0x99]);
    }

    #[test]
    fn enable_disable_bits() {
        let mut r = rig();
        r.cmd(0xa8);
        assert_eq!(r.kbc.command_byte() & CTR_AUX_DISABLE, 0);
        r.cmd(0xa7);
        assert_ne!(r.kbc.command_byte() & CTR_AUX_DISABLE, 0);
        r.cmd(0xad);
        assert_ne!(r.kbc.command_byte() & CTR_KBD_DISABLE, 0);
        r.cmd(0xae);
        assert_eq!(r.kbc.command_byte() & CTR_KBD_DISABLE, 0);
    }

    #[test]
    fn kbd_irq_follows_obf_and_enable_bit() {
        let mut r = rig();
        r.cmd(0xd2);
        r.out(0x1c);
        assert!(r.kbd.level());
        assert!(!r.aux.level());
        assert_eq!(r.data(), 0x1c);
        assert!(!r.kbd.level());
        // With the interrupt disabled in the command byte, OBF does not raise IRQ 1.
        r.cmd(0x60);
        r.out(0x64);
        r.cmd(0xd2);
        r.out(0x1c);
        assert!(!r.kbd.level());
        assert_eq!(r.status() & STATUS_OBF, STATUS_OBF);
    }

    #[test]
    fn aux_loopback_sets_aux_status_and_irq12() {
        let mut r = rig();
        r.cmd(0xd3);
        r.out(0x5a);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_AUX_DATA),
            STATUS_OBF | STATUS_AUX_DATA
        );
        assert!(!r.aux.level(), "AUX interrupt is off by default");
        assert_eq!(r.data(), 0x5a);
        // Enable the AUX port and interrupt as Linux's IRQ test does.
        r.cmd(0x60);
        r.out(0x47);
        r.cmd(0xd3);
        r.out(0xa5);
        assert!(r.aux.level());
        assert!(!r.kbd.level());
        assert_eq!(r.data(), 0xa5);
        assert!(!r.aux.level());
    }

    #[test]
    fn aux_device_absent_times_out() {
        let mut r = rig();
        r.cmd(0x60);
        r.out(0x47);
        r.cmd(0xd4);
        r.out(0xff);
        let s = r.status();
        assert_eq!(
            s & (STATUS_OBF | STATUS_AUX_DATA | STATUS_TIMEOUT),
            STATUS_OBF | STATUS_AUX_DATA | STATUS_TIMEOUT
        );
        assert!(r.aux.level());
        assert_eq!(r.data(), 0xfe);
        assert_eq!(r.status() & (STATUS_OBF | STATUS_TIMEOUT), 0);
    }

    #[test]
    fn keyboard_reset_and_identify() {
        let mut r = rig();
        r.out(0xff);
        assert_eq!(r.drain(), vec![0xfa, 0xaa]);
        r.out(0xf2);
        assert_eq!(r.drain(), vec![0xfa, 0xab, 0x41], "translated ID");
        r.cmd(0x60);
        r.out(0x05);
        r.out(0xf2);
        assert_eq!(r.drain(), vec![0xfa, 0xab, 0x83], "untranslated ID");
        r.out(0xf5);
        r.out(0xf4);
        assert_eq!(r.drain(), vec![0xfa, 0xfa]);
        r.out(0xee);
        assert_eq!(r.drain(), vec![0xee]);
        r.out(0x01);
        assert_eq!(r.drain(), vec![0xfe]);
    }

    #[test]
    fn keyboard_commands_with_arguments() {
        let mut r = rig();
        r.cmd(0x60);
        r.out(0x05);
        r.out(0xed);
        r.out(0x07);
        assert_eq!(r.drain(), vec![0xfa, 0xfa]);
        r.out(0xf3);
        r.out(0x20);
        assert_eq!(r.drain(), vec![0xfa, 0xfa]);
        r.out(0xf0);
        r.out(0x03);
        r.out(0xf0);
        r.out(0x00);
        assert_eq!(r.drain(), vec![0xfa, 0xfa, 0xfa, 0xfa, 0x03]);
        // Reset restores set 2; with translation on, set 2 reads as 0x41.
        r.out(0xff);
        r.cmd(0x60);
        r.out(0x45);
        r.out(0xf0);
        r.out(0x00);
        assert_eq!(r.drain(), vec![0xfa, 0xaa, 0xfa, 0xfa, 0x41]);
    }

    #[test]
    fn keyboard_bytes_wait_while_interface_disabled() {
        let mut r = rig();
        r.out(0xf4);
        r.cmd(0xad);
        assert_eq!(r.status() & STATUS_OBF, 0);
        r.cmd(0xae);
        assert_eq!(r.drain(), vec![0xfa]);
    }

    #[test]
    fn pulse_output_line_reset() {
        let mut r = rig();
        r.cmd(0xff);
        assert_eq!(r.control.take(), None);
        r.cmd(0xfe);
        assert_eq!(r.control.take(), Some(MachineEvent::Reset));
    }

    #[test]
    fn output_port_write_reset_and_read() {
        let mut r = rig();
        r.cmd(0xd0);
        assert_eq!(r.drain(), vec![0x03]);
        r.cmd(0xd1);
        r.out(0x01);
        assert!(!r.kbc.a20_enabled());
        assert_eq!(r.control.take(), None);
        r.cmd(0xd1);
        r.out(0x02);
        assert_eq!(r.control.take(), Some(MachineEvent::Reset));
    }

    #[test]
    fn empty_data_port_repeats_last_byte() {
        let mut r = rig();
        r.cmd(0xaa);
        assert_eq!(r.data(), 0x55);
        assert_eq!(r.data(), 0x55);
    }

    #[test]
    fn split_ports_reach_the_same_controller() {
        let kbc = Arc::new(Mutex::new(I8042::new(
            LatchedLine::new(),
            LatchedLine::new(),
            MachineControl::new(),
        )));
        let (data, command) = I8042::ports(kbc.clone());
        lock(&command).write(0, &[0xaa]);
        let mut b = [0u8; 1];
        lock(&command).read(0, &mut b);
        assert_eq!(b[0] & STATUS_OBF, STATUS_OBF);
        lock(&data).read(0, &mut b);
        assert_eq!(b[0], 0x55);
        let mut w = [0u8; 2];
        lock(&data).read(0, &mut w);
        assert_eq!(w[1], 0xff);
    }

    #[test]
    fn guest_spam_is_bounded() {
        let mut r = rig();
        for _ in 0..1000 {
            r.cmd(0xaa);
            r.out(0xf2);
        }
        assert!(r.drain().len() <= 3 * QUEUE_LIMIT);
    }
}
