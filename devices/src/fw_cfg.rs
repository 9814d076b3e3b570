//! QEMU's firmware configuration device (`fw_cfg`), legacy port-I/O interface only.
//!
//! Firmware and guest drivers (SeaBIOS, OVMF, Linux `qemu_fw_cfg`) read machine facts from it:
//! RAM size, CPU count, kernel command line, and named "files". Layout follows QEMU's
//! `hw/nvram/fw_cfg.c` and `docs/specs/fw_cfg.rst`:
//!
//! - Port [`FW_CFG_PORT`] (0x510) and the next one form one 2-port range, as in QEMU's x86
//!   "combined" region: a 16-bit write (at either offset) selects an item and rewinds its read
//!   offset; a byte read (at either offset) returns the next byte of the selected item and
//!   advances. Reads past the end of an item, or of an unknown key, return 0.
//! - Byte writes are data writes, which QEMU ignores since v2.4; so do we. Other access sizes are
//!   invalid in QEMU; here wider reads return successive data bytes and wider writes are ignored.
//! - `FW_CFG_ID` reports only the traditional interface (bit 0): there is no DMA interface
//!   (port 0x514 is not decoded).
//! - Selector bit 15 ([`FW_CFG_ARCH_LOCAL`]) picks the architecture-specific key space, bit 14
//!   (the old write channel) is ignored, as in QEMU.
//! - The file directory ([`FW_CFG_FILE_DIR`]) lists files sorted by name, as QEMU does. Unlike
//!   QEMU, which renumbers selectors to follow that order, a file keeps the selector it was given
//!   when added, so the value [`FwCfg::add_file`] returns stays valid; guests find files by name
//!   through the directory, whose entries carry each file's selector.

use std::collections::BTreeMap;

use crate::bus::{fill_le, BusDevice};

/// The conventional base port of the fw_cfg selector/data pair.
pub const FW_CFG_PORT: u16 = 0x510;
/// The length of the fw_cfg port range (selector at +0, data at +1).
pub const FW_CFG_PORT_LEN: u64 = 2;

/// Key: the signature "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Key: interface feature bits (bit 0 traditional interface, bit 1 DMA).
pub const FW_CFG_ID: u16 = 0x01;
/// Key: RAM size in bytes, u64 little-endian.
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Key: number of boot CPUs, u16 little-endian.
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Key: maximum number of CPUs, u16 little-endian.
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// Key: kernel load address, u32 little-endian.
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
/// Key: kernel size, u32 little-endian.
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
/// Key: initrd load address, u32 little-endian.
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
/// Key: initrd size, u32 little-endian.
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
/// Key: kernel command line size including its NUL, u32 little-endian.
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
/// Key: kernel command line bytes, NUL-terminated.
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
/// Key: the file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// The first selector used for files.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Selector bit: the (removed) write channel; ignored when selecting.
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector bit: architecture-local key space.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// The bits of a selector that index an item within its key space.
pub const FW_CFG_ENTRY_MASK: u16 = !(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL);
/// Size of the name field of a directory entry, including the terminating NUL.
pub const FW_CFG_MAX_FILE_PATH: usize = 56;

/// `FW_CFG_ID` bit: the traditional selector/data interface is present.
const FW_CFG_VERSION: u32 = 0x01;

/// Errors from building the fw_cfg contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The file name is empty or does not fit in 55 bytes plus NUL.
    #[error("fw_cfg file name {0:?} must be 1..=55 bytes without NUL")]
    BadFileName(String),
    /// A file of that name already exists.
    #[error("fw_cfg file {0:?} already exists")]
    DuplicateFile(String),
    /// Every file selector is in use.
    #[error("fw_cfg has no free file selector")]
    TooManyFiles,
    /// The key is reserved (signature, ID, directory, file range, write channel).
    #[error("fw_cfg key {0:#06x} is reserved or out of range")]
    ReservedKey(u16),
    /// The item is larger than the 32-bit size field allows.
    #[error("fw_cfg item of {0} bytes is too large")]
    TooLarge(usize),
}

/// One named file.
struct FwCfgFile {
    name: String,
    select: u16,
}

/// The fw_cfg device: a key → bytes store with a selector/data port pair.
pub struct FwCfg {
    /// Items by full selector (arch bit kept, write-channel bit cleared).
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<FwCfgFile>,
    /// The selected item key, `None` when the selector named nothing.
    selected: Option<u16>,
    offset: usize,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// Creates a device holding the signature, the ID and an empty file directory.
    pub fn new() -> Self {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, FW_CFG_VERSION.to_le_bytes().to_vec());
        let mut cfg = FwCfg {
            items,
            files: Vec::new(),
            selected: Some(FW_CFG_SIGNATURE),
            offset: 0,
        };
        cfg.rebuild_directory();
        cfg
    }

    /// Adds or replaces the item at `key`.
    ///
    /// Keys in the generic space must be below [`FW_CFG_FILE_FIRST`] and not the signature, ID or
    /// directory, which the device owns; arch-local keys (bit 15) may use any index.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let index = key & FW_CFG_ENTRY_MASK;
        let arch = key & FW_CFG_ARCH_LOCAL != 0;
        let reserved = key & FW_CFG_WRITE_CHANNEL != 0
            || (!arch
                && (index >= FW_CFG_FILE_FIRST
                    || matches!(index, FW_CFG_SIGNATURE | FW_CFG_ID | FW_CFG_FILE_DIR)));
        if reserved {
            return Err(FwCfgError::ReservedKey(key));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(data.len()));
        }
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds a named file and returns its selector; the directory stays sorted by name.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FW_CFG_MAX_FILE_PATH || name.contains('\0') {
            return Err(FwCfgError::BadFileName(name.to_string()));
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::DuplicateFile(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(data.len()));
        }
        let count = u16::try_from(self.files.len()).map_err(|_| FwCfgError::TooManyFiles)?;
        let select = FW_CFG_FILE_FIRST
            .checked_add(count)
            .filter(|s| *s <= FW_CFG_ENTRY_MASK)
            .ok_or(FwCfgError::TooManyFiles)?;
        self.items.insert(select, data);
        let pos = self.files.partition_point(|f| f.name.as_str() < name);
        self.files.insert(
            pos,
            FwCfgFile {
                name: name.to_string(),
                select,
            },
        );
        self.rebuild_directory();
        Ok(select)
    }

    /// The selector of the file called `name`, if any.
    pub fn file_selector(&self, name: &str) -> Option<u16> {
        self.files.iter().find(|f| f.name == name).map(|f| f.select)
    }

    /// Sets `FW_CFG_RAM_SIZE` (bytes, u64 little-endian as QEMU stores it).
    pub fn set_ram_size(&mut self, bytes: u64) {
        self.items
            .insert(FW_CFG_RAM_SIZE, bytes.to_le_bytes().to_vec());
    }

    /// Sets `FW_CFG_NB_CPUS` and `FW_CFG_MAX_CPUS` (u16 little-endian).
    pub fn set_cpu_count(&mut self, cpus: u16) {
        self.items
            .insert(FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec());
        self.items
            .insert(FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec());
    }

    /// Sets the kernel command line: `CMDLINE_DATA` gets it NUL-terminated, `CMDLINE_SIZE` its
    /// length including the NUL (u32 little-endian). A NUL inside `cmdline` ends it early.
    pub fn set_cmdline(&mut self, cmdline: &[u8]) {
        let end = cmdline
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(cmdline.len());
        let mut data = cmdline.get(..end).unwrap_or_default().to_vec();
        data.push(0);
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.items
            .insert(FW_CFG_CMDLINE_SIZE, size.to_le_bytes().to_vec());
        self.items.insert(FW_CFG_CMDLINE_DATA, data);
    }

    /// The bytes of the item at `key`, if present (for tests and the integrator).
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items
            .get(&(key & !FW_CFG_WRITE_CHANNEL))
            .map(Vec::as_slice)
    }

    /// Selects `key` and rewinds the read offset, as a guest write to the selector port does.
    pub fn select(&mut self, key: u16) {
        let key = key & !FW_CFG_WRITE_CHANNEL;
        self.offset = 0;
        self.selected = self.items.contains_key(&key).then_some(key);
        if self.selected.is_none() {
            log::debug!("fw_cfg: select of unknown key {key:#06x}");
        }
    }

    /// Returns the next data byte of the selected item, or 0 past its end.
    pub fn read_byte(&mut self) -> u8 {
        let byte = self
            .selected
            .and_then(|k| self.items.get(&k))
            .and_then(|d| d.get(self.offset).copied());
        match byte {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Regenerates the directory item: BE count, then `{size BE32, select BE16, 0u16, name[56]}`.
    fn rebuild_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + self.files.len() * 64);
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        dir.extend_from_slice(&count.to_be_bytes());
        for f in &self.files {
            let size = self.items.get(&f.select).map_or(0, Vec::len);
            let size = u32::try_from(size).unwrap_or(u32::MAX);
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&f.select.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut name = [0u8; FW_CFG_MAX_FILE_PATH];
            for (slot, b) in name.iter_mut().zip(f.name.bytes()) {
                *slot = b;
            }
            dir.extend_from_slice(&name);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset > 1 {
            fill_le(data, u64::MAX);
            return;
        }
        for b in data.iter_mut() {
            *b = self.read_byte();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match data {
            [lo, hi] if offset <= 1 => self.select(u16::from_le_bytes([*lo, *hi])),
            [_] => log::trace!("fw_cfg: ignored data write"),
            _ => log::debug!(
                "fw_cfg: ignored {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        cfg.write(0, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0xaa];
                cfg.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_and_id_through_ports() {
        let mut cfg = FwCfg::new();
        assert_eq!(read_item(&mut cfg, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut cfg, FW_CFG_ID, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn reset_state_selects_signature() {
        let mut cfg = FwCfg::new();
        let mut b = [0u8];
        cfg.read(1, &mut b);
        assert_eq!(b, [b'Q']);
        // A byte read at the selector port reads data too, as QEMU's combined region does.
        cfg.read(0, &mut b);
        assert_eq!(b, [b'E']);
    }

    #[test]
    fn ram_cpus_cmdline() {
        let mut cfg = FwCfg::new();
        cfg.set_ram_size(0x1_2345_6000);
        cfg.set_cpu_count(2);
        cfg.set_cmdline(b"console=ttyS0");
        assert_eq!(
            read_item(&mut cfg, FW_CFG_RAM_SIZE, 8),
            0x1_2345_6000u64.to_le_bytes()
        );
        assert_eq!(read_item(&mut cfg, FW_CFG_NB_CPUS, 2), [2, 0]);
        assert_eq!(read_item(&mut cfg, FW_CFG_CMDLINE_SIZE, 4), [14, 0, 0, 0]);
        assert_eq!(
            read_item(&mut cfg, FW_CFG_CMDLINE_DATA, 15),
            b"console=ttyS0\0\0"
        );
    }

    #[test]
    fn unknown_key_and_past_end_read_zero() {
        let mut cfg = FwCfg::new();
        assert_eq!(read_item(&mut cfg, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut cfg, FW_CFG_RAM_SIZE, 2), [0, 0]);
    }

    #[test]
    fn reselect_rewinds_and_byte_writes_are_ignored() {
        let mut cfg = FwCfg::new();
        assert_eq!(read_item(&mut cfg, FW_CFG_SIGNATURE, 2), b"QE");
        cfg.write(1, &[0x05]);
        let mut b = [0u8];
        cfg.read(1, &mut b);
        assert_eq!(b, [b'M']);
        assert_eq!(read_item(&mut cfg, FW_CFG_SIGNATURE, 1), b"Q");
        // The write-channel bit is ignored when selecting.
        assert_eq!(read_item(&mut cfg, FW_CFG_ID | 0x4000, 1), [1]);
    }

    #[test]
    fn wide_read_returns_successive_bytes() {
        let mut cfg = FwCfg::new();
        cfg.write(0, &0u16.to_le_bytes());
        let mut d = [0u8; 4];
        cfg.read(1, &mut d);
        assert_eq!(&d, b"QEMU");
    }

    #[test]
    fn file_directory_is_sorted_big_endian() {
        let mut cfg = FwCfg::new();
        let b = cfg.add_file("etc/b", vec![1, 2, 3]).unwrap();
        let a = cfg.add_file("etc/a", vec![9; 300]).unwrap();
        assert_eq!((b, a), (0x20, 0x21));
        assert_eq!(cfg.file_selector("etc/a"), Some(0x21));
        let dir = read_item(&mut cfg, FW_CFG_FILE_DIR, 4 + 2 * 64);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        // First entry: etc/a, size 300, select 0x21.
        assert_eq!(dir[4..8], 300u32.to_be_bytes());
        assert_eq!(dir[8..10], [0x00, 0x21]);
        assert_eq!(dir[10..12], [0, 0]);
        assert_eq!(&dir[12..17], b"etc/a");
        assert!(dir[17..68].iter().all(|b| *b == 0));
        assert_eq!(dir[68..72], 3u32.to_be_bytes());
        assert_eq!(dir[72..74], [0x00, 0x20]);
        assert_eq!(&dir[76..81], b"etc/b");
        assert_eq!(read_item(&mut cfg, 0x20, 4), [1, 2, 3, 0]);
    }

    #[test]
    fn file_name_rules() {
        let mut cfg = FwCfg::new();
        let long = "x".repeat(56);
        assert_eq!(
            cfg.add_file(&long, vec![]),
            Err(FwCfgError::BadFileName(long.clone()))
        );
        assert!(cfg.add_file(&long[..55], vec![]).is_ok());
        assert!(matches!(
            cfg.add_file("", vec![]),
            Err(FwCfgError::BadFileName(_))
        ));
        assert!(cfg.add_file("a", vec![]).is_ok());
        assert_eq!(
            cfg.add_file("a", vec![]),
            Err(FwCfgError::DuplicateFile("a".into()))
        );
    }

    #[test]
    fn add_item_rejects_reserved_keys() {
        let mut cfg = FwCfg::new();
        for key in [FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_FILE_DIR, 0x20, 0x4002] {
            assert_eq!(
                cfg.add_item(key, vec![1]),
                Err(FwCfgError::ReservedKey(key))
            );
        }
        cfg.add_item(FW_CFG_KERNEL_SIZE, 7u32.to_le_bytes().to_vec())
            .unwrap();
        cfg.add_item(0x8003, vec![5, 6]).unwrap();
        assert_eq!(read_item(&mut cfg, FW_CFG_KERNEL_SIZE, 4), [7, 0, 0, 0]);
        assert_eq!(read_item(&mut cfg, 0x8003, 2), [5, 6]);
        // The arch-local space is separate from the generic one.
        assert_eq!(read_item(&mut cfg, 0x0003, 1), [0]);
    }
}
