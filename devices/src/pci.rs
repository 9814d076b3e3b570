//! PCI configuration space: mechanism #1 ports, a bus of devices, the host bridge, and the
//! PIIX reset control register at port 0xCF9.
//!
//! - [`PciConfigIo`] decodes ports 0xCF8-0xCFF. `CONFIG_ADDRESS` is latched only by a 32-bit
//!   write to 0xCF8 and read back only by a 32-bit read (Linux's `pci_check_type1` writes
//!   0x80000000 and expects it back); narrower accesses to 0xCF8-0xCFB are not the address
//!   register, so the type #2 probe (byte writes then reads of 0xCF8/0xCFA) sees nothing.
//!   `CONFIG_DATA` (0xCFC-0xCFF) forwards byte, word and dword accesses at their offset inside
//!   the selected dword. With the enable bit (31) clear, or for a bus other than 0 or an absent
//!   function, reads are all-ones and writes are dropped, as a master abort would.
//! - The reset control register shares 0xCF9 with the address register's second byte, so
//!   [`PciConfigIo`] can carry a [`ResetControl`] and forwards byte accesses at 0xCF9 to it.
//!   [`ResetControl`] is also a bus device on its own for machines without PCI.
//! - [`PciDevice`] is the interface a function implements; [`ConfigSpace`] is a ready-made
//!   256-byte header with per-bit write masks (read-only bits ignore writes) and write-1-to-clear
//!   status bits, which the host bridge and later virtio functions build on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::bus::{fill_le, le_value, lock, BusDevice};
use crate::control::{MachineControl, MachineEvent};

/// First port of configuration mechanism #1 (`CONFIG_ADDRESS`).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Length of the mechanism #1 port range (address at +0, data at +4).
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
/// The reset control register port (inside the mechanism #1 range).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;

/// Register offsets of the standard configuration header.
pub mod reg {
    /// Vendor ID (u16).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (u16).
    pub const COMMAND: usize = 0x04;
    /// Status (u16).
    pub const STATUS: usize = 0x06;
    /// Revision ID (u8).
    pub const REVISION_ID: usize = 0x08;
    /// Class code: programming interface, subclass, base class (3 bytes).
    pub const CLASS_PROG: usize = 0x09;
    /// Cache line size (u8).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Latency timer (u8).
    pub const LATENCY_TIMER: usize = 0x0d;
    /// Header type (u8; bit 7 = multi-function).
    pub const HEADER_TYPE: usize = 0x0e;
    /// Base address register 0 (u32); BARs 1-5 follow.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Interrupt line (u8, scratch for software).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (u8, 1 = INTA#).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Size of a conventional PCI configuration space in bytes.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Command register bits software may set on an ordinary function (as QEMU allows).
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status register error bits that are write-one-to-clear.
const STATUS_W1C: u16 = 0xf900;

/// Errors from building a PCI bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// The device or function number is out of range (device 0..32, function 0..8).
    #[error("invalid PCI address {device:02x}.{function}")]
    InvalidAddress {
        /// Device number given.
        device: u8,
        /// Function number given.
        function: u8,
    },
    /// A function already occupies the slot.
    #[error("PCI devfn {0:#04x} is already in use")]
    DevfnInUse(u8),
    /// A BAR request was malformed.
    #[error("invalid BAR {index} of size {size:#x}")]
    InvalidBar {
        /// BAR index given.
        index: usize,
        /// Size given.
        size: u64,
    },
}

/// One PCI function's configuration space as the bus sees it.
pub trait PciDevice: Send {
    /// Reads the dword at configuration offset `reg * 4` (`reg` < 64).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1..=4 bytes, not crossing the dword) at byte `offset` of dword `reg`.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]);
}

/// Encodes a device and function number as a devfn byte.
pub fn devfn(device: u8, function: u8) -> Result<u8, PciError> {
    if device >= 32 || function >= 8 {
        return Err(PciError::InvalidAddress { device, function });
    }
    Ok(device << 3 | function)
}

/// A 256-byte configuration space with write masks, for implementing [`PciDevice`].
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits software can change.
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Bits cleared by writing 1.
    w1cmask: [u8; CONFIG_SPACE_SIZE],
}

impl ConfigSpace {
    /// Creates a type-0 header with the given identity; command, cache line, latency timer
    /// and interrupt line are writable, status error bits are write-one-to-clear.
    pub fn new(vendor: u16, device: u16, class_code: u32, revision: u8) -> Self {
        let mut cs = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1cmask: [0; CONFIG_SPACE_SIZE],
        };
        cs.set_u16(reg::VENDOR_ID, vendor);
        cs.set_u16(reg::DEVICE_ID, device);
        cs.set_u8(reg::REVISION_ID, revision);
        for (i, b) in class_code.to_le_bytes().iter().take(3).enumerate() {
            cs.set_u8(reg::CLASS_PROG + i, *b);
        }
        cs.set_wmask_u16(reg::COMMAND, COMMAND_WRITABLE);
        cs.set_w1c_u16(reg::STATUS, STATUS_W1C);
        cs.set_wmask_u8(reg::CACHE_LINE_SIZE, 0xff);
        cs.set_wmask_u8(reg::LATENCY_TIMER, 0xff);
        cs.set_wmask_u8(reg::INTERRUPT_LINE, 0xff);
        cs
    }

    /// Sets a byte (device-side, ignoring masks); out-of-range offsets are ignored.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        put(&mut self.bytes, offset, &[value]);
    }

    /// Sets a little-endian u16 (device-side).
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        put(&mut self.bytes, offset, &value.to_le_bytes());
    }

    /// Sets a little-endian u32 (device-side).
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        put(&mut self.bytes, offset, &value.to_le_bytes());
    }

    /// Reads a byte (0 past the end).
    pub fn u8_at(&self, offset: usize) -> u8 {
        u8::from_le_bytes(get(&self.bytes, offset))
    }

    /// Reads a little-endian u16 (bytes past the end read 0).
    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes(get(&self.bytes, offset))
    }

    /// Reads a little-endian u32 (bytes past the end read 0).
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(get(&self.bytes, offset))
    }

    /// Makes the bits of `mask` in the byte at `offset` writable by software.
    pub fn set_wmask_u8(&mut self, offset: usize, mask: u8) {
        put(&mut self.wmask, offset, &[mask]);
    }

    /// Makes the bits of `mask` in the u16 at `offset` writable by software.
    pub fn set_wmask_u16(&mut self, offset: usize, mask: u16) {
        put(&mut self.wmask, offset, &mask.to_le_bytes());
    }

    /// Makes the bits of `mask` in the u32 at `offset` writable by software.
    pub fn set_wmask_u32(&mut self, offset: usize, mask: u32) {
        put(&mut self.wmask, offset, &mask.to_le_bytes());
    }

    /// Makes the bits of `mask` in the u16 at `offset` write-one-to-clear.
    pub fn set_w1c_u16(&mut self, offset: usize, mask: u16) {
        put(&mut self.w1cmask, offset, &mask.to_le_bytes());
    }

    /// Declares 32-bit BAR `index` (0..6) of `size` bytes (a power of two; at least 16 for
    /// memory, 4 for I/O). Software sizes it the usual way: write all-ones, read back the mask.
    pub fn set_bar(&mut self, index: usize, size: u64, io: bool) -> Result<(), PciError> {
        let min = if io { 4 } else { 16 };
        let valid = index < 6 && size.is_power_of_two() && size >= min && size <= 1 << 31;
        if !valid {
            return Err(PciError::InvalidBar { index, size });
        }
        let offset = reg::BAR0 + 4 * index;
        let flags: u32 = if io { 0x1 } else { 0x0 };
        let mask = !((size as u32).wrapping_sub(1));
        self.set_u32(offset, flags);
        self.set_wmask_u32(offset, mask);
        Ok(())
    }

    /// The current base address programmed in 32-bit BAR `index` (flag bits removed).
    pub fn bar_address(&self, index: usize) -> Option<u32> {
        if index >= 6 {
            return None;
        }
        let raw = self.u32_at(reg::BAR0 + 4 * index);
        Some(if raw & 1 != 0 { raw & !0x3 } else { raw & !0xf })
    }

    /// Reads dword `reg` (all-ones past the end).
    pub fn read_dword(&self, reg: usize) -> u32 {
        if reg >= CONFIG_SPACE_SIZE / 4 {
            return u32::MAX;
        }
        self.u32_at(reg * 4)
    }

    /// Applies a guest write through the masks.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        for (i, value) in data.iter().enumerate() {
            let Some(addr) = reg
                .checked_mul(4)
                .and_then(|base| base.checked_add(offset.checked_add(i)?))
                .filter(|a| *a < CONFIG_SPACE_SIZE)
            else {
                continue;
            };
            let (Some(b), Some(w), Some(c)) = (
                self.bytes.get_mut(addr),
                self.wmask.get(addr),
                self.w1cmask.get(addr),
            ) else {
                continue;
            };
            *b = (*b & !w) | (value & w);
            *b &= !(value & c);
        }
    }
}

/// Stores `bytes` at `offset` of a configuration-space array; bytes past its end are dropped.
fn put(array: &mut [u8; CONFIG_SPACE_SIZE], offset: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        if let Some(slot) = offset.checked_add(i).and_then(|a| array.get_mut(a)) {
            *slot = *b;
        }
    }
}

/// The `N` bytes at `offset` of a configuration-space array; bytes past its end read 0.
fn get<const N: usize>(array: &[u8; CONFIG_SPACE_SIZE], offset: usize) -> [u8; N] {
    std::array::from_fn(|i| {
        offset
            .checked_add(i)
            .and_then(|a| array.get(a))
            .copied()
            .unwrap_or(0)
    })
}

/// The Intel 440FX-like host bridge at 00:00.0.
pub struct PciHostBridge {
    config: ConfigSpace,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHostBridge {
    /// Creates the bridge: 8086:1237 rev 02, class 06/00/00, with 440FX reset values.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(0x8086, 0x1237, 0x06_00_00, 0x02);
        // 440FX PCICMD/PCISTS reset values: memory and bus master enabled, medium DEVSEL,
        // fast back-to-back capable.
        config.set_u16(reg::COMMAND, 0x0006);
        config.set_u16(reg::STATUS, 0x0280);
        // PAM0-6 and SMRAM: kept as storage so firmware reads back what it wrote; they do not
        // remap memory here.
        for offset in 0x59..=0x5f {
            config.set_wmask_u8(offset, 0xff);
        }
        config.set_wmask_u8(0x72, 0x7f);
        config.set_u8(0x72, 0x02);
        PciHostBridge { config }
    }
}

impl PciDevice for PciHostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read_dword(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// PCI bus 0: functions by devfn.
pub struct PciBus {
    devices: BTreeMap<u8, SharedPciDevice>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// Creates bus 0 with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut devices: BTreeMap<u8, SharedPciDevice> = BTreeMap::new();
        devices.insert(0, Arc::new(Mutex::new(PciHostBridge::new())));
        PciBus { devices }
    }

    /// Adds `device` at `devfn` (see [`devfn`]).
    pub fn add_device(&mut self, devfn: u8, device: SharedPciDevice) -> Result<(), PciError> {
        if self.devices.contains_key(&devfn) {
            return Err(PciError::DevfnInUse(devfn));
        }
        self.devices.insert(devfn, device);
        Ok(())
    }

    /// The lowest free device number (function 0), for placing a new device.
    pub fn free_device_slot(&self) -> Option<u8> {
        (0..32u8).find(|d| (0..8).all(|f| !self.devices.contains_key(&(d << 3 | f))))
    }

    /// Reads dword `reg` of function `devfn`; absent functions read all-ones.
    pub fn read_config(&self, devfn: u8, reg: usize) -> u32 {
        match self.devices.get(&devfn) {
            Some(d) => lock(d).read_config(reg),
            None => u32::MAX,
        }
    }

    /// Writes to function `devfn`; writes to absent functions are dropped.
    pub fn write_config(&self, devfn: u8, reg: usize, offset: usize, data: &[u8]) {
        if let Some(d) = self.devices.get(&devfn) {
            lock(d).write_config(reg, offset, data);
        }
    }
}

/// The PIIX reset control register (port 0xCF9).
///
/// Writing bit 2 (RST_CPU) resets the machine: a hard reset when bit 1 (SYS_RST) is set, a
/// soft reset otherwise. Both reset the CPU, so both post [`MachineEvent::Reset`], as QEMU does.
/// Bit 1 reads back; bit 2 always reads 0.
pub struct ResetControl {
    control: Arc<MachineControl>,
    value: u8,
}

impl ResetControl {
    /// Creates the register posting to `control`.
    pub fn new(control: Arc<MachineControl>) -> Self {
        ResetControl { control, value: 0 }
    }

    fn write_byte(&mut self, value: u8) {
        if value & 0x04 != 0 {
            log::debug!("reset control: reset requested ({value:#04x})");
            self.control.request(MachineEvent::Reset);
        }
        self.value = value & 0x02;
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_le(data, u64::MAX);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.value;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(b)) = (offset, data.first()) {
            self.write_byte(*b);
        }
    }
}

/// Configuration mechanism #1 at 0xCF8-0xCFF.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
    reset: Option<ResetControl>,
}

impl PciConfigIo {
    /// Creates the ports for `bus`; `reset`, if given, answers byte accesses to 0xCF9.
    pub fn new(bus: Arc<Mutex<PciBus>>, reset: Option<ResetControl>) -> Self {
        PciConfigIo {
            bus,
            address: 0,
            reset,
        }
    }

    /// The latched `CONFIG_ADDRESS`.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// The (devfn, dword) the address selects, if enabled and on bus 0.
    fn target(&self) -> Option<(u8, usize)> {
        let enabled = self.address & 0x8000_0000 != 0;
        let bus = (self.address >> 16) & 0xff;
        if !enabled || bus != 0 {
            return None;
        }
        let devfn = ((self.address >> 8) & 0xff) as u8;
        let reg = ((self.address >> 2) & 0x3f) as usize;
        Some((devfn, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => fill_le(data, u64::from(self.address)),
            (1, 1) if self.reset.is_some() => {
                if let Some(r) = self.reset.as_mut() {
                    r.read(0, data);
                }
            }
            (4..=7, _) => {
                let lane = (offset - 4) as usize;
                let value = match self.target() {
                    Some((devfn, reg)) => lock(&self.bus).read_config(devfn, reg),
                    None => u32::MAX,
                };
                // Bytes past the end of the dword belong to no register.
                let bytes = value.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(lane + i).copied().unwrap_or(0xff);
                }
            }
            _ => fill_le(data, u64::MAX),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self.address = le_value(data) as u32 & 0x80ff_fffc,
            (1, 1) => {
                if let Some(r) = self.reset.as_mut() {
                    r.write(0, data);
                }
            }
            (4..=7, _) => {
                let lane = (offset - 4) as usize;
                let Some((devfn, reg)) = self.target() else {
                    return;
                };
                let len = data.len().min(4 - lane);
                if let Some(bytes) = data.get(..len) {
                    lock(&self.bus).write_config(devfn, reg, lane, bytes);
                }
            }
            _ => log::debug!(
                "pci: ignored {}-byte write at {:#x}",
                data.len(),
                u64::from(PCI_CONFIG_PORT) + offset
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> (PciConfigIo, Arc<MachineControl>) {
        let control = MachineControl::new();
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let io = PciConfigIo::new(bus, Some(ResetControl::new(control.clone())));
        (io, control)
    }

    fn set_addr(io: &mut PciConfigIo, devfn: u8, offset: u8) {
        let a = 0x8000_0000 | u32::from(devfn) << 8 | u32::from(offset & 0xfc);
        io.write(0, &a.to_le_bytes());
    }

    fn read(io: &mut PciConfigIo, devfn: u8, offset: u8, len: usize) -> u32 {
        set_addr(io, devfn, offset);
        let mut d = vec![0u8; len];
        io.read(4 + u64::from(offset & 3), &mut d);
        le_value(&d) as u32
    }

    fn write(io: &mut PciConfigIo, devfn: u8, offset: u8, value: u32, len: usize) {
        set_addr(io, devfn, offset);
        io.write(4 + u64::from(offset & 3), &value.to_le_bytes()[..len]);
    }

    #[test]
    fn linux_type1_probe() {
        let (mut io, _) = io();
        io.write(3, &[0x01]); // outb(0x01, 0xCFB)
        let mut d = [0u8; 4];
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Type #2 probe: byte accesses to 0xCF8/0xCFA do not touch the address register.
        io.write(0, &[0x00]);
        let mut b = [0u8];
        io.read(0, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(io.address(), 0x8000_0000);
        // Reserved bits and bits 1:0 are not latched.
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(io.address(), 0x80ff_fffc);
    }

    #[test]
    fn host_bridge_identity() {
        let (mut io, _) = io();
        assert_eq!(read(&mut io, 0, 0x00, 4), 0x1237_8086);
        assert_eq!(read(&mut io, 0, 0x02, 2), 0x1237);
        assert_eq!(read(&mut io, 0, 0x0a, 2), 0x0600);
        assert_eq!(read(&mut io, 0, 0x08, 4), 0x0600_0002);
        assert_eq!(read(&mut io, 0, 0x0b, 1), 0x06);
        assert_eq!(read(&mut io, 0, 0x0e, 1), 0x00);
        assert_eq!(read(&mut io, 0, 0x04, 4), 0x0280_0006);
    }

    #[test]
    fn absent_functions_and_disabled_address_read_all_ones() {
        let (mut io, _) = io();
        assert_eq!(read(&mut io, devfn(1, 0).unwrap(), 0, 4), u32::MAX);
        assert_eq!(read(&mut io, devfn(0, 1).unwrap(), 0, 2), 0xffff);
        io.write(0, &0x0000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Bus 1 does not exist.
        io.write(0, &0x8001_0000u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let (mut io, _) = io();
        write(&mut io, 0, 0x00, 0xdead_beef, 4);
        assert_eq!(read(&mut io, 0, 0x00, 4), 0x1237_8086);
        write(&mut io, 0, 0x0a, 0x0101, 2);
        assert_eq!(read(&mut io, 0, 0x0a, 2), 0x0600);
        // Writable: command (masked), latency timer, PAM registers.
        write(&mut io, 0, 0x04, 0xffff, 2);
        assert_eq!(read(&mut io, 0, 0x04, 2), 0x0547);
        write(&mut io, 0, 0x0d, 0x40, 1);
        assert_eq!(read(&mut io, 0, 0x0d, 1), 0x40);
        write(&mut io, 0, 0x5a, 0x3333, 2);
        assert_eq!(read(&mut io, 0, 0x58, 4), 0x3333_0000);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut cs = ConfigSpace::new(0x1af4, 0x1000, 0x02_00_00, 0);
        cs.set_u16(reg::STATUS, 0x2010);
        cs.write(1, 2, &[0x10, 0x00]);
        assert_eq!(
            cs.u16_at(reg::STATUS),
            0x2010,
            "writing 0 keeps bits; bit 4 is RO"
        );
        cs.write(1, 2, &[0xff, 0xff]);
        assert_eq!(cs.u16_at(reg::STATUS), 0x0010);
    }

    #[test]
    fn bar_sizing_and_added_device() {
        struct Dev(ConfigSpace);
        impl PciDevice for Dev {
            fn read_config(&mut self, reg: usize) -> u32 {
                self.0.read_dword(reg)
            }
            fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
                self.0.write(reg, offset, data);
            }
        }
        let mut cs = ConfigSpace::new(0x1af4, 0x1001, 0x01_00_00, 0);
        cs.set_bar(0, 0x40, true).unwrap();
        cs.set_bar(1, 0x1000, false).unwrap();
        assert!(cs.set_bar(2, 0x18, false).is_err());
        assert!(cs.set_bar(6, 0x1000, false).is_err());
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let slot = lock(&bus).free_device_slot().unwrap();
        assert_eq!(slot, 1);
        let df = devfn(slot, 0).unwrap();
        lock(&bus)
            .add_device(df, Arc::new(Mutex::new(Dev(cs))))
            .unwrap();
        assert_eq!(
            lock(&bus).add_device(df, Arc::new(Mutex::new(PciHostBridge::new()))),
            Err(PciError::DevfnInUse(df))
        );
        let mut io = PciConfigIo::new(bus, None);
        assert_eq!(read(&mut io, df, 0, 4), 0x1001_1af4);
        write(&mut io, df, 0x10, 0xffff_ffff, 4);
        assert_eq!(read(&mut io, df, 0x10, 4), 0xffff_ffc1);
        write(&mut io, df, 0x14, 0xffff_ffff, 4);
        assert_eq!(read(&mut io, df, 0x14, 4), 0xffff_f000);
        write(&mut io, df, 0x14, 0xfebf_1000, 4);
        assert_eq!(read(&mut io, df, 0x14, 4), 0xfebf_1000);
        // Without a reset control, 0xCF9 is dead.
        let mut b = [0u8];
        io.read(1, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn data_port_byte_lanes() {
        let (mut io, _) = io();
        set_addr(&mut io, 0, 0x00);
        let mut b = [0u8];
        io.read(7, &mut b);
        assert_eq!(b, [0x12]);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(w, [0x37, 0x12]);
        // A word at 0xCFF runs past the dword: the extra byte is all-ones.
        io.read(7, &mut w);
        assert_eq!(w, [0x12, 0xff]);
        devfn(32, 0).unwrap_err();
        devfn(0, 8).unwrap_err();
    }

    #[test]
    fn reset_control_linux_sequence() {
        let (mut io, control) = io();
        let mut b = [0u8];
        io.read(1, &mut b);
        assert_eq!(b, [0]);
        io.write(1, &[0x02]);
        assert!(!control.is_pending());
        io.read(1, &mut b);
        assert_eq!(b, [0x02]);
        // The address register is unaffected by the byte at 0xCF9.
        assert_eq!(io.address(), 0);
        io.write(1, &[0x06]);
        assert_eq!(control.take(), Some(MachineEvent::Reset));
    }

    #[test]
    fn reset_control_standalone() {
        let control = MachineControl::new();
        let mut r = ResetControl::new(control.clone());
        r.write(0, &[0x04]);
        assert_eq!(control.take(), Some(MachineEvent::Reset));
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn config_space_accessors_clip_at_the_end_without_overflow() {
        let mut cs = ConfigSpace::new(0x1234, 0x5678, 0, 0);
        cs.set_u32(0xfe, 0xaabb_ccdd);
        assert_eq!(cs.u16_at(0xfe), 0xccdd);
        assert_eq!(cs.u32_at(0xfe), 0xccdd);
        for offset in [usize::MAX, usize::MAX - 1, CONFIG_SPACE_SIZE] {
            cs.set_u16(offset, 0xffff);
            cs.set_u32(offset, 0xffff_ffff);
            cs.set_wmask_u32(offset, 0xffff_ffff);
            cs.set_w1c_u16(offset, 0xffff);
            assert_eq!(cs.u32_at(offset), 0);
            assert_eq!(cs.u16_at(offset), 0);
        }
        cs.write(0, usize::MAX, &[1, 2]);
        cs.write(usize::MAX, 0, &[1]);
        assert_eq!(cs.u32_at(0), 0x5678_1234);
    }
}
