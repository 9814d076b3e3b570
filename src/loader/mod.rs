//! Kernel loaders: put a guest image into RAM and produce the vCPU's entry state.
//!
//! Three formats, each the way a real boot loader would hand over control, so that a guest
//! cannot tell ringzero from QEMU `-kernel`, Firecracker or GRUB:
//!
//! - [`load_linux`]: a Linux **bzImage** through the 64-bit boot protocol (as Firecracker and
//!   cloud-hypervisor do): the CPU starts in long mode at `startup_64` with identity paging.
//! - [`load_multiboot`]: a **Multiboot v1** kernel (ELF32/ELF64 program headers, or the a.out
//!   kludge address fields), entered in 32-bit protected mode with paging off, as GRUB does.
//! - [`load_flat`]: a raw **flat** image at a real-mode address, entered in real mode. The
//!   built-in demo guest is loaded at `0x8000` this way.
//!
//! # Memory map
//!
//! Guest physical addresses. "usable"/"reserved" are the types in the e820 map handed to the
//! guest ([`e820_map`]), which is the same for Linux (boot_params) and Multiboot (mmap).
//!
//! ```text
//! address       e820      Linux bzImage                  Multiboot
//! 0x0000_0000   usable    IVT, BDA (untouched)           IVT, BDA (untouched)
//! 0x0000_0500             GDT: null, null, code64 0x10,  GDT (null, code32 0x08, data 0x10),
//!                         data 0x18                      4 KiB stack (ESP at its top), info
//! 0x0000_7000             zero page (boot_params)        block, cmdline, "ringzero", mmap,
//! 0x0000_8ff0             initial RSP                    module list and module strings:
//! 0x0000_9000             PML4                           first fit upwards from 0x500 below
//! 0x0000_a000             PDPT                           0x9fc00, skipping kernel segments
//! 0x0000_b000             4 PDs, 2 MiB pages:            (spill above 1 MiB if no room)
//!                         identity map of 0..4 GiB
//! 0x0002_0000             command line, NUL-terminated
//! 0x0009_fc00   reserved  EBDA, VGA, BIOS area           (same)
//! 0x0010_0000   usable    protected-mode kernel; it      PT_LOAD segments at p_paddr (or the
//!                         moves to pref_address and      a.out-kludge load area); modules,
//!                         needs init_size bytes there    page-aligned, after the highest one
//!   ...                   initrd: page-aligned, as high
//!                         as initrd_addr_max and RAM
//!                         allow, above the kernel
//! low RAM end             (MMIO hole up to 4 GiB: not in the e820 map)
//! 0x1_0000_0000 usable    RAM above 4 GiB when the machine has more than 3 GiB
//! ```
//!
//! A flat image goes wherever it is asked to in the first MiB (the demo at `0x8000`), and the
//! loader writes nothing else: no GDT, no IVT, no memory map.
//!
//! Every failure is a [`LoadError`] whose message reads as one line a user understands.

pub mod bzimage;
pub mod flat;
pub mod multiboot;

pub use bzimage::load_linux;
pub use flat::load_flat;
pub use multiboot::load_multiboot;

use crate::memory::{GuestMemory, MemoryError};
use ringzero_translator::CpuState;

/// What a loader leaves behind: the vCPU's entry state and a human description.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// Architectural state the vCPU starts from.
    pub cpu: CpuState,
    /// One line saying what was loaded where, for logs and the run report.
    pub summary: String,
}

/// Why a guest image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file ends before a structure its own headers describe.
    #[error("image is truncated: {what} needs {need} bytes but the file has {have}")]
    Truncated {
        /// Which part is cut off.
        what: &'static str,
        /// Bytes the headers say must be there.
        need: u64,
        /// Bytes the file has.
        have: u64,
    },
    /// Not a format ringzero recognises as a kernel.
    #[error("neither a bzImage nor an ELF/Multiboot kernel (no \"HdrS\" at 0x202, no ELF or Multiboot magic)")]
    BadMagic,
    /// The bzImage boot protocol predates the 64-bit entry point.
    #[error(
        "bzImage boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
        .0 >> 8,
        .0 & 0xff
    )]
    UnsupportedProtocol(u16),
    /// The bzImage is a 32-bit kernel (no 64-bit entry point advertised).
    #[error("bzImage has no 64-bit entry point (XLF_KERNEL_64 is not set): only 64-bit kernels are supported")]
    No64BitEntry,
    /// The command line does not fit the space the kernel or the loader allows.
    #[error("command line is {len} bytes; at most {max} are allowed")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Maximum accepted.
        max: usize,
    },
    /// A command line or module string contains a NUL byte, which would cut it short.
    #[error("{0} contains a NUL byte")]
    NulInString(&'static str),
    /// The initrd cannot be placed where the kernel can reach it.
    #[error(
        "initrd of {} does not fit in RAM between {kernel_end:#x} (end of the kernel) and {limit:#x}; give the machine more memory",
        fmt_size(*size)
    )]
    InitrdDoesNotFit {
        /// Initrd size in bytes.
        size: u64,
        /// First byte after the kernel's working area.
        kernel_end: u64,
        /// Highest end address allowed (initrd_addr_max or end of low RAM).
        limit: u64,
    },
    /// The kernel's working area extends past the end of RAM.
    #[error(
        "kernel does not fit in RAM: it needs memory up to {need_end:#x} ({}) but RAM below 4 GiB ends at {ram_end:#x}",
        fmt_size(*need_end)
    )]
    KernelDoesNotFit {
        /// End address the kernel needs.
        need_end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// An ELF file without a Multiboot header: not a kernel ringzero can boot.
    #[error("ELF file has no Multiboot header in its first 8192 bytes (only Multiboot ELF kernels can be booted)")]
    NoMultibootHeader,
    /// A Multiboot magic was found but its checksum is wrong.
    #[error("Multiboot header at offset {offset:#x} has a bad checksum")]
    MultibootChecksum {
        /// File offset of the header.
        offset: usize,
    },
    /// The Multiboot header requires something ringzero cannot provide.
    #[error("Multiboot kernel requires {0}, which ringzero cannot provide")]
    MultibootUnsupported(String),
    /// The Multiboot a.out-kludge address fields are inconsistent.
    #[error("Multiboot header address fields are invalid: {0}")]
    BadMultibootAddresses(String),
    /// The ELF file is malformed or not for x86.
    #[error("bad ELF: {0}")]
    BadElf(String),
    /// Part of the kernel must be loaded where there is no RAM.
    #[error("kernel segment at {addr:#x}+{size:#x} is not in guest RAM below 4 GiB")]
    SegmentOutsideRam {
        /// Load address.
        addr: u64,
        /// Size in memory.
        size: u64,
    },
    /// No free RAM is left for a boot structure or module.
    #[error("no room in guest RAM for {what} ({}); give the machine more memory", fmt_size(*size))]
    NoRoom {
        /// What could not be placed.
        what: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A flat image is not where real mode can run it.
    #[error("flat image at {addr:#x} of {len} bytes must lie in RAM below 1 MiB (real-mode addressable)")]
    FlatOutOfRange {
        /// Requested load address.
        addr: u64,
        /// Image length.
        len: u64,
    },
    /// A flat image with no bytes.
    #[error("flat image is empty")]
    EmptyImage,
    /// A guest memory access failed (a loader bug or a machine too small).
    #[error("loading into guest memory: {0}")]
    Memory(#[from] MemoryError),
}

/// The kernel formats [`detect`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// A Linux bzImage (setup header with "HdrS").
    BzImage,
    /// A Multiboot v1 kernel (ELF, or a.out-kludge image).
    MultibootElf,
}

/// Tells a bzImage from a Multiboot kernel by their signatures.
pub fn detect(image: &[u8]) -> Result<KernelKind, LoadError> {
    if image.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        return Ok(KernelKind::BzImage);
    }
    let header = multiboot::find_header(image);
    if image.starts_with(b"\x7fELF") {
        return header.map(|_| KernelKind::MultibootElf);
    }
    match header {
        // A non-ELF Multiboot kernel is loadable only through the a.out kludge fields.
        Ok(h) if h.aout_kludge() => Ok(KernelKind::MultibootElf),
        _ => Err(LoadError::BadMagic),
    }
}

/// e820 / Multiboot memory type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 / Multiboot memory type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// Start of the Extended BIOS Data Area; conventional memory ends here (639 KiB).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of extended memory (1 MiB).
pub const HIGH_MEMORY: u64 = 0x10_0000;

/// One entry of the physical memory map given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map both Linux and Multiboot guests see: conventional memory, the reserved
/// EBDA/VGA/BIOS area, extended memory up to the MMIO hole, and RAM above 4 GiB.
pub fn e820_map(mem: &GuestMemory) -> Vec<E820Entry> {
    let low_end = mem.low_ram_end();
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START.min(low_end),
        kind: E820_RAM,
    }];
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIGH_MEMORY - EBDA_START,
        kind: E820_RESERVED,
    });
    if low_end > HIGH_MEMORY {
        map.push(E820Entry {
            addr: HIGH_MEMORY,
            size: low_end - HIGH_MEMORY,
            kind: E820_RAM,
        });
    }
    for r in mem.regions().iter().skip(1) {
        map.push(E820Entry {
            addr: r.guest_base(),
            size: r.size(),
            kind: E820_RAM,
        });
    }
    map
}

/// Reads a little-endian value of `n` bytes at `off`, or `None` past the end of `bytes`.
fn read_le(bytes: &[u8], off: usize, n: usize) -> Option<u64> {
    let b = bytes.get(off..off.checked_add(n)?)?;
    Some(b.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
}

/// Writes the low `n` bytes of `value` little-endian at `off` of a buffer the loader built.
fn put_le(buf: &mut [u8], off: usize, n: usize, value: u64) {
    if let Some(dst) = buf.get_mut(off..off + n) {
        for (i, b) in dst.iter_mut().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Sizes for people: "512 bytes", "4.0 KiB", "12.3 MiB", "1.5 GiB".
fn fmt_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes} bytes")
}

/// A command line shortened for a one-line summary.
fn fmt_cmdline(cmdline: &str) -> String {
    const MAX: usize = 60;
    match cmdline.char_indices().nth(MAX) {
        Some((i, _)) => format!("'{} ...'", &cmdline[..i]),
        None => format!("'{cmdline}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MMIO_HOLE_END, MMIO_HOLE_START};

    #[test]
    fn detect_recognises_signatures_and_rejects_junk() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz).unwrap(), KernelKind::BzImage);
        assert!(matches!(detect(&[0x42; 8192]), Err(LoadError::BadMagic)));
        assert!(matches!(detect(&[]), Err(LoadError::BadMagic)));
        let msg = LoadError::BadMagic.to_string();
        assert!(msg.contains("neither a bzImage nor"), "{msg}");
        // An ELF without a Multiboot header says so rather than "bad magic".
        let mut elf = vec![0u8; 256];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert!(matches!(detect(&elf), Err(LoadError::NoMultibootHeader)));
    }

    #[test]
    fn e820_map_small_machine() {
        let m = GuestMemory::new(16 << 20).unwrap();
        assert_eq!(
            e820_map(&m),
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x6_0400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (16 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_map_includes_ram_above_4g() {
        let m = GuestMemory::new(MMIO_HOLE_START + (4 << 20)).unwrap();
        let map = e820_map(&m);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: MMIO_HOLE_END,
                size: 4 << 20,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(read_le(&[1, 2, 3], 1, 2), Some(0x0302));
        assert_eq!(read_le(&[1, 2, 3], 2, 2), None);
        assert_eq!(read_le(&[1, 2, 3], usize::MAX, 2), None);
        assert_eq!(align_up(0x1001, 0x1000), Some(0x2000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(fmt_size(512), "512 bytes");
        assert_eq!(fmt_size(12_900_000), "12.3 MiB");
        let long = "x".repeat(100);
        assert!(fmt_cmdline(&long).ends_with(" ...'"));
        assert_eq!(fmt_cmdline("a b"), "'a b'");
    }
}
