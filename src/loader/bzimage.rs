//! Linux bzImage loader: the x86 boot protocol's 64-bit entry, as Firecracker and
//! cloud-hypervisor use it.
//!
//! The real-mode setup code in the image is never run (there is no BIOS for it to call).
//! Instead the loader does what setup would: it fills the zero page (`struct boot_params`) from
//! the image's setup header, adds the e820 map, command line and initrd, builds identity page
//! tables and a GDT, and starts the CPU in long mode at `startup_64` (load address + 0x200)
//! with RSI pointing at the zero page. That entry exists from boot protocol 2.12 on, in kernels
//! that set `XLF_KERNEL_64` in `xloadflags`; older or 32-bit kernels are rejected.
//!
//! The protected-mode kernel is copied to 1 MiB. `startup_64` moves itself to its decompression
//! address (`pref_address`, or the load address aligned up to `kernel_alignment` if that is
//! higher and the kernel is relocatable) and needs `init_size` bytes there, so RAM must reach
//! that far and the initrd is placed above it (as high as `initrd_addr_max` and RAM allow).
//! Fixed addresses of the zero page, page tables, GDT and command line are in the memory map
//! of [`crate::loader`].

use super::{
    align_up, e820_map, fmt_cmdline, fmt_size, put_le, read_le, BootSetup, LoadError, EBDA_START,
    HIGH_MEMORY,
};
use crate::memory::GuestMemory;
use ringzero_translator::state::{ctl, reg, rflags};
use ringzero_translator::{CpuState, DescriptorTable, Segment};

/// Guest address of the GDT (null, null, `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18).
pub const GDT_ADDR: u64 = 0x500;
/// Guest address of the zero page (`struct boot_params`), passed in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer (inside the page after the zero page; the kernel sets its own soon).
pub const STACK_TOP: u64 = 0x8ff0;
/// Guest address of the PML4.
pub const PML4_ADDR: u64 = 0x9000;
/// Guest address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Guest address of the first of the page directories (one per identity-mapped GiB).
pub const PD_ADDR: u64 = 0xb000;
/// GiB of address space identity-mapped with 2 MiB pages (all of the 32-bit space).
pub const IDENTITY_MAP_GIB: u64 = 4;
/// Guest address of the NUL-terminated kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Where the protected-mode kernel is copied (the boot protocol's `code32_start` default).
pub const KERNEL_LOAD_ADDR: u64 = HIGH_MEMORY;

/// Boot protocol version that introduced `xloadflags` and with it the 64-bit entry flag.
const MIN_PROTOCOL: u16 = 0x020c;
/// `type_of_loader` value for a loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of `startup_64` from the start of the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `heap_end_ptr` as QEMU sets it (end of the setup heap relative to the setup segment).
const HEAP_END: u64 = 0xfe00 - 0x200;
/// Maximum entries in `boot_params.e820_table`.
const E820_MAX: usize = 128;

// Offsets in the image's first sectors, which are also the offsets in `struct boot_params`.
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const JUMP_OFFSET: usize = 0x201;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// First byte past the last header field this loader reads.
const HEADER_FIELDS_END: usize = 0x264;
/// End of `struct setup_header` inside `boot_params` (where `edd_mbr_sig_buffer` starts).
const SETUP_HEADER_MAX_END: usize = 0x290;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const ZERO_PAGE_SIZE: usize = 4096;

/// The setup-header fields the loader needs, validated.
struct SetupHeader {
    version: u16,
    setup_len: usize,
    header_end: usize,
    initrd_addr_max: u64,
    cmdline_size: u64,
    /// Start of the area the kernel decompresses into.
    decompress_base: u64,
    init_size: u64,
}

/// Reads a header field; callers have checked the image is at least `HEADER_FIELDS_END` long.
fn field(kernel: &[u8], off: usize, n: usize) -> u64 {
    read_le(kernel, off, n).unwrap_or(0)
}

fn parse_header(kernel: &[u8]) -> Result<SetupHeader, LoadError> {
    if kernel.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS".as_slice()) {
        return Err(LoadError::BadMagic);
    }
    let have = kernel.len() as u64;
    if kernel.len() < HEADER_FIELDS_END {
        return Err(LoadError::Truncated {
            what: "the bzImage setup header",
            need: HEADER_FIELDS_END as u64,
            have,
        });
    }
    let version = field(kernel, VERSION, 2) as u16;
    if version < MIN_PROTOCOL {
        return Err(LoadError::UnsupportedProtocol(version));
    }
    if field(kernel, XLOADFLAGS, 2) as u16 & XLF_KERNEL_64 == 0 {
        return Err(LoadError::No64BitEntry);
    }
    let setup_sects = match field(kernel, SETUP_SECTS, 1) {
        0 => 4, // the protocol's compatibility rule
        n => n,
    };
    let setup_len = (setup_sects + 1) * 512;
    if have < setup_len {
        return Err(LoadError::Truncated {
            what: "the bzImage setup code",
            need: setup_len,
            have,
        });
    }
    let pm_len = have.saturating_sub(setup_len);
    let sys_len = field(kernel, SYSSIZE, 4) * 16;
    if pm_len == 0 || sys_len > pm_len {
        return Err(LoadError::Truncated {
            what: "the bzImage protected-mode kernel",
            need: setup_len + sys_len.max(1),
            have,
        });
    }
    let header_end = (HEADER_MAGIC + field(kernel, JUMP_OFFSET, 1) as usize)
        .clamp(HEADER_FIELDS_END, SETUP_HEADER_MAX_END);

    let pref_address = field(kernel, PREF_ADDRESS, 8);
    let decompress_base = if field(kernel, RELOCATABLE_KERNEL, 1) != 0 {
        // startup_64 aligns its own address up to kernel_alignment, but never goes below
        // the address it was linked for (pref_address).
        let align = field(kernel, KERNEL_ALIGNMENT, 4);
        let aligned = if align.is_power_of_two() {
            align_up(KERNEL_LOAD_ADDR, align).unwrap_or(u64::MAX)
        } else {
            KERNEL_LOAD_ADDR
        };
        aligned.max(pref_address)
    } else {
        pref_address
    };
    Ok(SetupHeader {
        version,
        setup_len: setup_len as usize,
        header_end,
        initrd_addr_max: field(kernel, INITRD_ADDR_MAX, 4),
        cmdline_size: field(kernel, CMDLINE_SIZE, 4),
        decompress_base,
        init_size: field(kernel, INIT_SIZE, 4),
    })
}

/// Loads a bzImage, its initrd and command line, and returns the 64-bit entry state.
pub fn load_linux(
    mem: &GuestMemory,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<BootSetup, LoadError> {
    let hdr = parse_header(kernel)?;
    let pm = kernel.get(hdr.setup_len..).unwrap_or_default();
    let low_end = mem.low_ram_end();

    // Everything the kernel occupies before it sets up its own memory map.
    let kernel_end = hdr
        .decompress_base
        .checked_add(hdr.init_size)
        .ok_or(LoadError::KernelDoesNotFit {
            need_end: u64::MAX,
            ram_end: low_end,
        })?
        .max(KERNEL_LOAD_ADDR + pm.len() as u64);
    if kernel_end > low_end {
        return Err(LoadError::KernelDoesNotFit {
            need_end: kernel_end,
            ram_end: low_end,
        });
    }

    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::NulInString("the command line"));
    }
    let room = EBDA_START - CMDLINE_ADDR - 1;
    let max = hdr.cmdline_size.min(room) as usize;
    if cmdline.len() > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }

    let initrd = initrd.filter(|d| {
        if d.is_empty() {
            log::warn!("initrd is empty; booting without one");
        }
        !d.is_empty()
    });
    let initrd_addr = match initrd {
        Some(data) => Some(place_initrd(&hdr, data.len() as u64, kernel_end, low_end)?),
        None => None,
    };

    // All checks done: write guest memory.
    mem.write(KERNEL_LOAD_ADDR, pm)?;
    let mut cmd = Vec::with_capacity(cmdline.len() + 1);
    cmd.extend_from_slice(cmdline.as_bytes());
    cmd.push(0);
    mem.write(CMDLINE_ADDR, &cmd)?;
    if let (Some(data), Some(addr)) = (initrd, initrd_addr) {
        mem.write(addr, data)?;
    }
    let initrd_info = initrd.zip(initrd_addr).map(|(d, a)| (a, d.len() as u64));
    mem.write(ZERO_PAGE_ADDR, &zero_page(mem, kernel, &hdr, initrd_info))?;
    write_gdt(mem)?;
    write_page_tables(mem)?;

    let mut summary = format!(
        "Linux bzImage protocol {}.{:02}, kernel {} at {KERNEL_LOAD_ADDR:#x}",
        hdr.version >> 8,
        hdr.version & 0xff,
        fmt_size(pm.len() as u64)
    );
    if let Some((addr, size)) = initrd_info {
        summary += &format!(", initrd {} at {addr:#x}", fmt_size(size));
    }
    summary += &format!(", cmdline {}", fmt_cmdline(cmdline));
    log::info!("{summary}");
    log::debug!(
        "bzImage decompresses at {:#x}, needs RAM up to {kernel_end:#x}",
        hdr.decompress_base
    );
    Ok(BootSetup {
        cpu: entry_state(),
        summary,
    })
}

/// The highest page-aligned address for the initrd below the kernel's limit and end of RAM.
fn place_initrd(
    hdr: &SetupHeader,
    size: u64,
    kernel_end: u64,
    low_end: u64,
) -> Result<u64, LoadError> {
    let limit = hdr.initrd_addr_max.saturating_add(1).min(low_end);
    let lowest = align_up(kernel_end, 4096).unwrap_or(u64::MAX);
    limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= lowest)
        .ok_or(LoadError::InitrdDoesNotFit {
            size,
            kernel_end,
            limit,
        })
}

/// Builds `struct boot_params`: the image's setup header plus what the loader fills in.
fn zero_page(
    mem: &GuestMemory,
    kernel: &[u8],
    hdr: &SetupHeader,
    initrd: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut zp = vec![0u8; ZERO_PAGE_SIZE];
    if let (Some(dst), Some(src)) = (
        zp.get_mut(SETUP_SECTS..hdr.header_end),
        kernel.get(SETUP_SECTS..hdr.header_end),
    ) {
        dst.copy_from_slice(src);
    }
    put_le(&mut zp, TYPE_OF_LOADER, 1, u64::from(LOADER_TYPE_UNDEFINED));
    let loadflags = kernel.get(LOADFLAGS).copied().unwrap_or(0) | CAN_USE_HEAP;
    put_le(&mut zp, LOADFLAGS, 1, u64::from(loadflags));
    put_le(&mut zp, HEAP_END_PTR, 2, HEAP_END);
    put_le(&mut zp, CMD_LINE_PTR, 4, CMDLINE_ADDR);
    if let Some((addr, size)) = initrd {
        put_le(&mut zp, RAMDISK_IMAGE, 4, addr);
        put_le(&mut zp, RAMDISK_SIZE, 4, size);
    }
    let map = e820_map(mem);
    for (i, e) in map.iter().take(E820_MAX).enumerate() {
        let off = E820_TABLE + i * 20;
        put_le(&mut zp, off, 8, e.addr);
        put_le(&mut zp, off + 8, 8, e.size);
        put_le(&mut zp, off + 16, 4, u64::from(e.kind));
    }
    put_le(&mut zp, E820_ENTRIES, 1, map.len().min(E820_MAX) as u64);
    zp
}

/// The boot GDT: `__BOOT_CS` (0x10) flat 64-bit code, `__BOOT_DS` (0x18) flat data.
fn write_gdt(mem: &GuestMemory) -> Result<(), LoadError> {
    let gdt = [
        0,
        0,
        Segment::code64(0x10).to_descriptor(),
        Segment::flat32(0x18, false).to_descriptor(),
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_le::<8>(GDT_ADDR + 8 * i as u64, *d)?;
    }
    Ok(())
}

/// Identity-maps the first [`IDENTITY_MAP_GIB`] GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemory) -> Result<(), LoadError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.zero(PML4_ADDR, 4096)?;
    mem.write_le::<8>(PML4_ADDR, PDPT_ADDR | PRESENT_RW)?;
    mem.zero(PDPT_ADDR, 4096)?;
    let mut pds = vec![0u8; IDENTITY_MAP_GIB as usize * 4096];
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_ADDR + gib * 4096;
        mem.write_le::<8>(PDPT_ADDR + gib * 8, pd | PRESENT_RW)?;
        for i in 0..512 {
            let page = (gib * 512 + i) << 21;
            put_le(
                &mut pds,
                ((gib * 512 + i) * 8) as usize,
                8,
                page | PRESENT_RW | PAGE_SIZE_2M,
            );
        }
    }
    mem.write(PD_ADDR, &pds)?;
    Ok(())
}

/// Long mode, paging on, `__BOOT_CS`/`__BOOT_DS` loaded, interrupts off, at `startup_64`.
fn entry_state() -> CpuState {
    let data = Segment::flat32(0x18, false);
    let mut gpr = [0; 16];
    gpr[reg::RSI] = ZERO_PAGE_ADDR;
    gpr[reg::RSP] = STACK_TOP;
    gpr[reg::RBP] = STACK_TOP;
    CpuState {
        gpr,
        rip: KERNEL_LOAD_ADDR + STARTUP_64_OFFSET,
        rflags: rflags::FIXED1,
        cs: Segment::code64(0x10),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        gdtr: DescriptorTable {
            base: GDT_ADDR,
            limit: 4 * 8 - 1,
        },
        idtr: DescriptorTable { base: 0, limit: 0 },
        cr0: ctl::CR0_PE | ctl::CR0_ET | ctl::CR0_NE | ctl::CR0_PG,
        cr3: PML4_ADDR,
        cr4: ctl::CR4_PAE,
        efer: ctl::EFER_LME | ctl::EFER_LMA,
        ..CpuState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{E820_RAM, E820_RESERVED};
    use ringzero_translator::CpuMode;

    const MIB: u64 = 1 << 20;

    /// Knobs for a synthetic bzImage.
    struct Fake {
        version: u16,
        xloadflags: u16,
        setup_sects: u8,
        pm_len: usize,
        syssize_extra: u32,
        init_size: u32,
        pref_address: u64,
        initrd_addr_max: u32,
        cmdline_size: u32,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                version: 0x020f,
                xloadflags: XLF_KERNEL_64 | 2,
                setup_sects: 3,
                pm_len: 0x3000,
                syssize_extra: 0,
                init_size: 0x40_0000,
                pref_address: 0x100_0000,
                initrd_addr_max: 0x7fff_ffff,
                cmdline_size: 2047,
            }
        }
    }

    impl Fake {
        /// A bzImage whose setup sectors hold a valid header and whose kernel is a pattern.
        fn build(&self) -> Vec<u8> {
            let sects = if self.setup_sects == 0 {
                4
            } else {
                self.setup_sects as usize
            };
            let setup_len = (sects + 1) * 512;
            let mut img = vec![0u8; setup_len + self.pm_len];
            img[SETUP_SECTS] = self.setup_sects;
            let syssize = (self.pm_len as u32).div_ceil(16) + self.syssize_extra;
            put_le(&mut img, SYSSIZE, 4, u64::from(syssize));
            put_le(&mut img, 0x1fe, 2, 0xaa55);
            img[0x200] = 0xeb; // jmp short to the end of the header
            img[JUMP_OFFSET] = (0x26c - HEADER_MAGIC) as u8;
            img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
            put_le(&mut img, VERSION, 2, u64::from(self.version));
            img[LOADFLAGS] = 0x01; // LOADED_HIGH
            put_le(&mut img, 0x214, 4, 0x10_0000); // code32_start
            put_le(
                &mut img,
                INITRD_ADDR_MAX,
                4,
                u64::from(self.initrd_addr_max),
            );
            put_le(&mut img, KERNEL_ALIGNMENT, 4, 0x20_0000);
            img[RELOCATABLE_KERNEL] = 1;
            put_le(&mut img, XLOADFLAGS, 2, u64::from(self.xloadflags));
            put_le(&mut img, CMDLINE_SIZE, 4, u64::from(self.cmdline_size));
            put_le(&mut img, PREF_ADDRESS, 8, self.pref_address);
            put_le(&mut img, INIT_SIZE, 4, u64::from(self.init_size));
            // Setup code past the header must not leak into the zero page.
            img[0x26c..0x290].fill(0xcc);
            for (i, b) in img[setup_len..].iter_mut().enumerate() {
                *b = (i * 7 + 3) as u8;
            }
            img
        }
    }

    fn mem(size: u64) -> GuestMemory {
        GuestMemory::new(size).unwrap()
    }

    fn zp_field(m: &GuestMemory, off: usize, n: usize) -> u64 {
        let mut b = vec![0u8; n];
        m.read(ZERO_PAGE_ADDR + off as u64, &mut b).unwrap();
        read_le(&b, 0, n).unwrap()
    }

    #[test]
    fn loads_kernel_zero_page_and_cmdline() {
        let m = mem(64 * MIB);
        let img = Fake::default().build();
        let s = load_linux(&m, &img, None, "console=ttyS0 panic=-1").unwrap();

        let mut pm = vec![0u8; 0x3000];
        m.read(KERNEL_LOAD_ADDR, &mut pm).unwrap();
        assert_eq!(pm, img[4 * 512..]);

        // Setup header copied up to its end, loader fields filled in.
        assert_eq!(
            zp_field(&m, HEADER_MAGIC, 4),
            u64::from(u32::from_le_bytes(*b"HdrS"))
        );
        assert_eq!(zp_field(&m, VERSION, 2), 0x020f);
        assert_eq!(zp_field(&m, 0x1fe, 2), 0xaa55);
        assert_eq!(zp_field(&m, INIT_SIZE, 4), 0x40_0000);
        assert_eq!(
            zp_field(&m, 0x26c, 4),
            0,
            "bytes past the header end are not copied"
        );
        assert_eq!(zp_field(&m, TYPE_OF_LOADER, 1), 0xff);
        assert_eq!(zp_field(&m, LOADFLAGS, 1), 0x81);
        assert_eq!(zp_field(&m, HEAP_END_PTR, 2), 0xfc00);
        assert_eq!(zp_field(&m, CMD_LINE_PTR, 4), CMDLINE_ADDR);
        assert_eq!(zp_field(&m, RAMDISK_IMAGE, 4), 0);
        let mut cmd = vec![0u8; 23];
        m.read(CMDLINE_ADDR, &mut cmd).unwrap();
        assert_eq!(&cmd, b"console=ttyS0 panic=-1\0");

        // e820: low RAM, reserved BIOS area, extended memory.
        assert_eq!(zp_field(&m, E820_ENTRIES, 1), 3);
        let entry = |i: usize| {
            let o = E820_TABLE + 20 * i;
            (
                zp_field(&m, o, 8),
                zp_field(&m, o + 8, 8),
                zp_field(&m, o + 16, 4) as u32,
            )
        };
        assert_eq!(entry(0), (0, 0x9fc00, E820_RAM));
        assert_eq!(entry(1), (0x9fc00, 0x60400, E820_RESERVED));
        assert_eq!(entry(2), (MIB, 63 * MIB, E820_RAM));

        assert!(s.summary.contains("protocol 2.15"), "{}", s.summary);
        assert!(s.summary.contains("at 0x100000"), "{}", s.summary);
        assert!(
            s.summary.contains("'console=ttyS0 panic=-1'"),
            "{}",
            s.summary
        );
    }

    #[test]
    fn entry_state_is_long_mode_at_startup_64() {
        let m = mem(64 * MIB);
        let c = load_linux(&m, &Fake::default().build(), None, "")
            .unwrap()
            .cpu;
        assert_eq!(c.mode(), CpuMode::Long64);
        assert_eq!(c.rip, 0x10_0200);
        assert_eq!(c.gpr[reg::RSI], ZERO_PAGE_ADDR);
        assert_eq!(
            (c.cs.selector, c.ds.selector, c.es.selector, c.ss.selector),
            (0x10, 0x18, 0x18, 0x18)
        );
        assert_eq!(c.cr3, PML4_ADDR);
        assert_ne!(c.cr0 & ctl::CR0_PG, 0);
        assert_ne!(c.cr4 & ctl::CR4_PAE, 0);
        assert_eq!(c.rflags & rflags::IF, 0);
        assert_eq!(
            c.gdtr,
            DescriptorTable {
                base: GDT_ADDR,
                limit: 31
            }
        );
        // The GDT in memory matches the loaded segment registers.
        assert_eq!(
            m.read_le::<8>(GDT_ADDR + 0x10).unwrap(),
            c.cs.to_descriptor()
        );
        assert_eq!(
            m.read_le::<8>(GDT_ADDR + 0x18).unwrap(),
            c.ds.to_descriptor()
        );
        assert_eq!(m.read_le::<8>(GDT_ADDR).unwrap(), 0);
    }

    #[test]
    fn page_tables_identity_map_4_gib() {
        let m = mem(64 * MIB);
        load_linux(&m, &Fake::default().build(), None, "").unwrap();
        assert_eq!(m.read_le::<8>(PML4_ADDR).unwrap(), PDPT_ADDR | 3);
        assert_eq!(m.read_le::<8>(PML4_ADDR + 8).unwrap(), 0);
        for gib in 0..4 {
            assert_eq!(
                m.read_le::<8>(PDPT_ADDR + 8 * gib).unwrap(),
                (PD_ADDR + 4096 * gib) | 3
            );
        }
        assert_eq!(m.read_le::<8>(PDPT_ADDR + 32).unwrap(), 0);
        // Walk 0xfee0_0000 (the LAPIC) and 0x0010_0200 (the entry point).
        for va in [0xfee0_0000u64, 0x10_0200] {
            let pdpte = m.read_le::<8>(PDPT_ADDR + 8 * (va >> 30)).unwrap();
            let pde = m
                .read_le::<8>((pdpte & !0xfff) + 8 * ((va >> 21) & 511))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_below_initrd_addr_max() {
        let m = mem(64 * MIB);
        let initrd: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let s = load_linux(&m, &Fake::default().build(), Some(&initrd), "").unwrap();
        let addr = zp_field(&m, RAMDISK_IMAGE, 4);
        assert_eq!(zp_field(&m, RAMDISK_SIZE, 4), 5000);
        assert_eq!(addr, (64 * MIB - 5000) & !0xfff);
        let mut back = vec![0u8; 5000];
        m.read(addr, &mut back).unwrap();
        assert_eq!(back, initrd);
        assert!(
            s.summary.contains(&format!("initrd 4.9 KiB at {addr:#x}")),
            "{}",
            s.summary
        );

        // A kernel that cannot reach the top of RAM gets its initrd below its limit.
        let m = mem(64 * MIB);
        let img = Fake {
            initrd_addr_max: 0x1ff_ffff,
            ..Fake::default()
        }
        .build();
        load_linux(&m, &img, Some(&initrd), "").unwrap();
        let addr = zp_field(&m, RAMDISK_IMAGE, 4);
        assert_eq!(addr, (0x200_0000 - 5000) & !0xfff);
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        let m = mem(32 * MIB);
        // The kernel occupies up to 16 MiB + 4 MiB; 16 MiB of initrd cannot fit above it.
        let big = vec![0u8; 16 * MIB as usize];
        let e = load_linux(&m, &Fake::default().build(), Some(&big), "").unwrap_err();
        assert!(matches!(e, LoadError::InitrdDoesNotFit { .. }), "{e}");
        assert!(
            e.to_string().contains("initrd of 16.0 MiB does not fit"),
            "{e}"
        );
        // Below initrd_addr_max there is no room either.
        let img = Fake {
            initrd_addr_max: 0x140_0000,
            ..Fake::default()
        }
        .build();
        let e = load_linux(&m, &img, Some(&[1; 4096]), "").unwrap_err();
        assert!(matches!(e, LoadError::InitrdDoesNotFit { .. }), "{e}");
    }

    #[test]
    fn empty_initrd_is_ignored() {
        let m = mem(64 * MIB);
        load_linux(&m, &Fake::default().build(), Some(&[]), "").unwrap();
        assert_eq!(zp_field(&m, RAMDISK_SIZE, 4), 0);
    }

    #[test]
    fn kernel_that_does_not_fit_in_ram() {
        let m = mem(16 * MIB);
        // Decompresses at 16 MiB: needs 20 MiB of RAM.
        let e = load_linux(&m, &Fake::default().build(), None, "").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::KernelDoesNotFit {
                    need_end: 0x140_0000,
                    ram_end: 0x100_0000
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("kernel does not fit in RAM"),
            "{e}"
        );
        let img = Fake {
            init_size: u32::MAX,
            pref_address: u64::MAX - 5,
            ..Fake::default()
        }
        .build();
        assert!(matches!(
            load_linux(&m, &img, None, ""),
            Err(LoadError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let m = mem(64 * MIB);
        let img = Fake {
            setup_sects: 0,
            ..Fake::default()
        }
        .build();
        assert_eq!(img.len(), 5 * 512 + 0x3000);
        load_linux(&m, &img, None, "").unwrap();
        assert_eq!(m.read_le::<1>(KERNEL_LOAD_ADDR + 1).unwrap(), 10);
    }

    #[test]
    fn truncated_images() {
        let m = mem(64 * MIB);
        // Cut inside the setup header (as the CLI test does).
        let mut short = vec![0u8; 0x210];
        short[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        let e = load_linux(&m, &short, None, "").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Cut inside the setup code.
        let img = Fake::default().build();
        let e = load_linux(&m, &img[..0x600], None, "").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Truncated {
                    need: 0x800,
                    have: 0x600,
                    ..
                }
            ),
            "{e}"
        );
        // No protected-mode kernel at all.
        let e = load_linux(&m, &img[..0x800], None, "").unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        // syssize says more than the file holds.
        let img = Fake {
            syssize_extra: 1,
            ..Fake::default()
        }
        .build();
        let e = load_linux(&m, &img, None, "").unwrap_err();
        assert!(
            matches!(e, LoadError::Truncated { need: 0x3810, .. }),
            "{e}"
        );
    }

    #[test]
    fn old_protocols_and_32_bit_kernels_are_rejected() {
        let m = mem(64 * MIB);
        let img = Fake {
            version: 0x020b,
            ..Fake::default()
        }
        .build();
        let e = load_linux(&m, &img, None, "").unwrap_err();
        assert!(matches!(e, LoadError::UnsupportedProtocol(0x020b)));
        assert!(e.to_string().contains("2.11 is too old"), "{e}");
        let img = Fake {
            xloadflags: 2,
            ..Fake::default()
        }
        .build();
        assert!(matches!(
            load_linux(&m, &img, None, ""),
            Err(LoadError::No64BitEntry)
        ));
        assert!(matches!(
            load_linux(&m, &[0x42; 8192], None, ""),
            Err(LoadError::BadMagic)
        ));
    }

    #[test]
    fn command_line_limits() {
        let m = mem(64 * MIB);
        let img = Fake {
            cmdline_size: 10,
            ..Fake::default()
        }
        .build();
        assert!(load_linux(&m, &img, None, "0123456789").is_ok());
        let e = load_linux(&m, &img, None, "0123456789a").unwrap_err();
        assert!(
            matches!(e, LoadError::CmdlineTooLong { len: 11, max: 10 }),
            "{e}"
        );
        let e = load_linux(&m, &img, None, "a\0b").unwrap_err();
        assert!(matches!(e, LoadError::NulInString(_)), "{e}");
        // A huge cmdline_size is capped by the space below the EBDA.
        let img = Fake {
            cmdline_size: u32::MAX,
            ..Fake::default()
        }
        .build();
        let long = "x".repeat((EBDA_START - CMDLINE_ADDR) as usize);
        assert!(matches!(
            load_linux(&m, &img, None, &long),
            Err(LoadError::CmdlineTooLong { .. })
        ));
    }
}
