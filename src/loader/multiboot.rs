//! Multiboot v1 loader (Multiboot Specification 0.6.96), as GRUB boots small kernels.
//!
//! The header is searched in the first 8192 bytes at 4-byte alignment (magic `0x1BADB002`,
//! checksum making magic + flags + checksum zero). The image is loaded from its ELF program
//! headers (ELF32 i386 or ELF64 x86-64, `PT_LOAD` at `p_paddr`, bss zero-filled), or from the
//! header's a.out-kludge address fields when flags bit 16 is set (which then takes precedence,
//! as in GRUB 2). A virtual `e_entry` inside a segment is translated to its physical address.
//!
//! Requirement flags (bits 0-15): bit 0 (page-aligned modules) and bit 1 (memory information)
//! are always honoured. Bit 2 (video mode) is **rejected**: ringzero has no display, and the
//! spec says a loader that cannot satisfy a requirement must refuse the image rather than boot
//! it with information missing. Unknown requirement bits are rejected for the same reason.
//!
//! Handover, per the spec: EAX = `0x2BADB002`, EBX = physical address of the info block,
//! 32-bit protected mode with paging off (CR0 = PE | ET), CS a flat 4 GiB read/execute
//! segment, DS/ES/FS/GS/SS flat read/write, interrupts off. A matching GDT (null, code 0x08,
//! data 0x10) is in guest memory and GDTR points at it, so reloading the selectors works. The
//! spec leaves ESP undefined; ringzero points it at the top of a free 4 KiB page so that a
//! kernel that pushes before setting up its stack does not scribble over address 0.
//!
//! The info block has MEM (mem_lower = 639 KiB, mem_upper = KiB from 1 MiB to the MMIO hole),
//! CMDLINE (the command line alone, without a kernel path), MODS, MMAP (the e820 map of
//! [`crate::loader`]) and BOOT_LOADER_NAME ("ringzero"). It, its strings, the GDT and the stack
//! go in conventional memory from 0x500 up to the EBDA where free (so the GDT normally sits at
//! 0x500); modules go page-aligned after the kernel's highest segment. Nothing ever overlaps a
//! loaded segment.

use super::{
    align_up, e820_map, fmt_cmdline, fmt_size, put_le, read_le, BootSetup, LoadError, EBDA_START,
    HIGH_MEMORY,
};
use crate::memory::GuestMemory;
use ringzero_translator::state::{ctl, reg, rflags};
use ringzero_translator::{CpuState, DescriptorTable, Segment};

/// Magic number at the start of the Multiboot header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value in EAX telling the kernel a Multiboot loader started it.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie entirely in this many first bytes of the image.
const SEARCH_LIMIT: usize = 8192;

/// Header flag: modules must be page aligned.
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information must be provided.
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode information must be provided.
const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out kludge address fields are valid.
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

// Info block flags and field offsets (struct multiboot_info).
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
const INFO_FLAGS: usize = 0;
const INFO_MEM_LOWER: usize = 4;
const INFO_MEM_UPPER: usize = 8;
const INFO_CMDLINE_PTR: usize = 16;
const INFO_MODS_COUNT: usize = 20;
const INFO_MODS_ADDR: usize = 24;
const INFO_MMAP_LENGTH: usize = 44;
const INFO_MMAP_ADDR: usize = 48;
const INFO_LOADER_NAME_PTR: usize = 64;
/// Size of `struct multiboot_info` up to and including the framebuffer fields.
const INFO_SIZE: usize = 116;
/// Size of one module-list entry (start, end, string, reserved).
const MODULE_ENTRY_SIZE: usize = 16;
/// Size of one mmap entry including its leading size field.
const MMAP_ENTRY_SIZE: usize = 24;
/// Name given in the info block.
const LOADER_NAME: &str = "ringzero";
/// Size of the initial stack ESP points into.
const STACK_SIZE: u64 = 4096;
/// First byte after the BIOS data area: where the loader's own structures may start.
const LOW_FREE_START: u64 = 0x500;
/// Multiboot kernels run in 32-bit mode: everything the loader places must be below this.
const LIMIT_32BIT: u64 = 1 << 32;

/// A valid Multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MultibootHeader {
    offset: usize,
    flags: u32,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
}

impl MultibootHeader {
    /// Whether the a.out kludge address fields are to be used instead of ELF headers.
    pub(super) fn aout_kludge(&self) -> bool {
        self.flags & FLAG_AOUT_KLUDGE != 0
    }
}

/// Finds the first Multiboot header with a valid checksum.
pub(super) fn find_header(image: &[u8]) -> Result<MultibootHeader, LoadError> {
    let word = |off: usize| read_le(image, off, 4).map(|v| v as u32);
    let mut bad_checksum = None;
    for offset in (0..SEARCH_LIMIT.min(image.len()).saturating_sub(11)).step_by(4) {
        if word(offset) != Some(HEADER_MAGIC) {
            continue;
        }
        let (Some(flags), Some(checksum)) = (word(offset + 4), word(offset + 8)) else {
            continue;
        };
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad_checksum.get_or_insert(offset);
            continue;
        }
        let mut h = MultibootHeader {
            offset,
            flags,
            header_addr: 0,
            load_addr: 0,
            load_end_addr: 0,
            bss_end_addr: 0,
            entry_addr: 0,
        };
        if h.aout_kludge() {
            let fields = [12, 16, 20, 24, 28].map(|o| word(offset + o));
            let [Some(a), Some(b), Some(c), Some(d), Some(e)] = fields else {
                return Err(LoadError::Truncated {
                    what: "the Multiboot header address fields",
                    need: offset as u64 + 32,
                    have: image.len() as u64,
                });
            };
            (
                h.header_addr,
                h.load_addr,
                h.load_end_addr,
                h.bss_end_addr,
                h.entry_addr,
            ) = (a, b, c, d, e);
        }
        return Ok(h);
    }
    Err(match bad_checksum {
        Some(offset) => LoadError::MultibootChecksum { offset },
        None => LoadError::NoMultibootHeader,
    })
}

/// One piece of the image to copy into RAM.
struct LoadSegment<'a> {
    addr: u64,
    data: &'a [u8],
    mem_size: u64,
}

/// Where the kernel goes and where it starts.
struct KernelLayout<'a> {
    segments: Vec<LoadSegment<'a>>,
    entry: u64,
}

/// Segments and entry from the a.out kludge fields of the header.
fn kludge_layout<'a>(image: &'a [u8], h: &MultibootHeader) -> Result<KernelLayout<'a>, LoadError> {
    let bad = |m: &str| LoadError::BadMultibootAddresses(m.to_string());
    let header_to_load = h
        .header_addr
        .checked_sub(h.load_addr)
        .ok_or_else(|| bad("header_addr is below load_addr"))?;
    let file_start = (h.offset as u64)
        .checked_sub(u64::from(header_to_load))
        .ok_or_else(|| bad("load_addr lies before the start of the file"))?;
    let file_len = image.len() as u64;
    let load_len = if h.load_end_addr == 0 {
        file_len - file_start
    } else {
        u64::from(
            h.load_end_addr
                .checked_sub(h.load_addr)
                .ok_or_else(|| bad("load_end_addr is below load_addr"))?,
        )
    };
    let file_end = file_start + load_len;
    if file_end > file_len {
        return Err(LoadError::Truncated {
            what: "the Multiboot load area",
            need: file_end,
            have: file_len,
        });
    }
    let load_end = u64::from(h.load_addr) + load_len;
    let mem_size = if h.bss_end_addr == 0 {
        load_len
    } else if u64::from(h.bss_end_addr) < load_end {
        return Err(bad("bss_end_addr is below the end of the loaded image"));
    } else {
        u64::from(h.bss_end_addr - h.load_addr)
    };
    let data = image
        .get(file_start as usize..file_end as usize)
        .unwrap_or_default();
    Ok(KernelLayout {
        segments: vec![LoadSegment {
            addr: u64::from(h.load_addr),
            data,
            mem_size,
        }],
        entry: u64::from(h.entry_addr),
    })
}

/// Segments and entry from the ELF program headers (ELF32 i386 or ELF64 x86-64).
fn elf_layout(image: &[u8]) -> Result<KernelLayout<'_>, LoadError> {
    let bad = |m: String| LoadError::BadElf(m);
    if !image.starts_with(b"\x7fELF") {
        return Err(bad(
            "no ELF signature and no Multiboot a.out-kludge fields (flags bit 16)".into(),
        ));
    }
    let is64 = match image.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown ELF class".into())),
    };
    let ehdr_size = if is64 { 64 } else { 52 };
    if image.len() < ehdr_size {
        return Err(LoadError::Truncated {
            what: "the ELF header",
            need: ehdr_size as u64,
            have: image.len() as u64,
        });
    }
    let f = |off: usize, n: usize| read_le(image, off, n).unwrap_or(0);
    if image.get(5) != Some(&1) {
        return Err(bad("not little-endian".into()));
    }
    let machine = f(18, 2);
    let want = if is64 { 62 } else { 3 };
    if machine != want {
        return Err(bad(format!(
            "machine type {machine} is not x86 (expected {want})"
        )));
    }
    let e_type = f(16, 2);
    if e_type != 2 {
        return Err(bad(format!("not an executable (e_type {e_type})")));
    }
    let (entry, phoff, phentsize, phnum) = if is64 {
        (f(24, 8), f(32, 8), f(54, 2), f(56, 2))
    } else {
        (f(24, 4), f(28, 4), f(42, 2), f(44, 2))
    };
    let min_phent = if is64 { 56 } else { 32 };
    if phentsize < min_phent {
        return Err(bad(format!(
            "program header entry size {phentsize} is too small"
        )));
    }
    let table_end = phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff));
    if table_end.is_none_or(|end| end > image.len() as u64) {
        return Err(bad("program headers lie outside the file".into()));
    }

    let mut segments = Vec::new();
    let mut entry_paddr = entry;
    for i in 0..phnum {
        // In range: the table bound was checked above.
        let ph = (phoff + i * phentsize) as usize;
        let g = |o32: usize, o64: usize| if is64 { f(ph + o64, 8) } else { f(ph + o32, 4) };
        if f(ph, 4) != 1 {
            continue; // not PT_LOAD
        }
        let (offset, vaddr, paddr, filesz, memsz) =
            (g(4, 8), g(8, 16), g(12, 24), g(16, 32), g(20, 40));
        if filesz > memsz {
            return Err(bad(format!(
                "segment {i} has a file size larger than its memory size"
            )));
        }
        let data = offset
            .checked_add(filesz)
            .filter(|&end| end <= image.len() as u64)
            .and_then(|end| image.get(offset as usize..end as usize))
            .ok_or_else(|| bad(format!("segment {i} lies outside the file")))?;
        if memsz == 0 {
            continue;
        }
        if entry >= vaddr && entry - vaddr < memsz {
            // An overflow here is a segment outside RAM, reported when segments are checked.
            entry_paddr = paddr.saturating_add(entry - vaddr);
        }
        segments.push(LoadSegment {
            addr: paddr,
            data,
            mem_size: memsz,
        });
    }
    if segments.is_empty() {
        return Err(bad("no loadable segments".into()));
    }
    Ok(KernelLayout {
        segments,
        entry: entry_paddr,
    })
}

/// First-fit allocator over the free RAM below 4 GiB, kept as sorted disjoint ranges.
struct Placer {
    free: Vec<(u64, u64)>,
}

impl Placer {
    /// Conventional memory above the IVT and BDA, and extended memory up to the MMIO hole.
    fn new(mem: &GuestMemory) -> Self {
        let low_end = mem.low_ram_end().min(LIMIT_32BIT);
        let mut free = vec![(LOW_FREE_START, EBDA_START.min(low_end))];
        if low_end > HIGH_MEMORY {
            free.push((HIGH_MEMORY, low_end));
        }
        Placer { free }
    }

    /// Removes `[start, end)` from the free ranges.
    fn reserve(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.free.len() + 1);
        for &(s, e) in &self.free {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        self.free = out;
    }

    /// The lowest `align`-aligned address at or above `min` with `size` free bytes.
    fn alloc(&mut self, size: u64, align: u64, min: u64) -> Option<u64> {
        let addr = self.free.iter().find_map(|&(s, e)| {
            let a = align_up(s.max(min), align)?;
            (a.checked_add(size)? <= e).then_some(a)
        })?;
        self.reserve(addr, addr + size);
        Some(addr)
    }

    /// Like [`Placer::alloc`], preferring `min` but falling back to any free RAM.
    fn alloc_prefer(
        &mut self,
        size: u64,
        align: u64,
        min: u64,
        what: &str,
    ) -> Result<u64, LoadError> {
        self.alloc(size, align, min)
            .or_else(|| self.alloc(size, align, 0))
            .ok_or_else(|| LoadError::NoRoom {
                what: what.to_string(),
                size,
            })
    }
}

/// Builds the info block and everything it points to as one blob at a known guest address.
struct InfoBlob {
    base: u64,
    bytes: Vec<u8>,
}

impl InfoBlob {
    /// Appends `data` at `align` (≤ 16, the blob's own alignment) and returns its guest address.
    fn push(&mut self, data: &[u8], align: usize) -> u64 {
        let at = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(data);
        self.base + at as u64
    }

    /// Appends a NUL-terminated string.
    fn push_str(&mut self, s: &str) -> u64 {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.push(&v, 1)
    }
}

/// Lays out info block, command line, loader name, mmap and module list at `base`.
fn build_info(
    mem: &GuestMemory,
    base: u64,
    cmdline: &str,
    modules: &[(u64, u64, &str)],
) -> InfoBlob {
    let mut blob = InfoBlob {
        base,
        bytes: vec![0; INFO_SIZE],
    };
    let cmdline_addr = blob.push_str(cmdline);
    let name_addr = blob.push_str(LOADER_NAME);
    let mut mmap = Vec::new();
    for e in e820_map(mem) {
        let mut ent = [0u8; MMAP_ENTRY_SIZE];
        put_le(&mut ent, 0, 4, (MMAP_ENTRY_SIZE - 4) as u64);
        put_le(&mut ent, 4, 8, e.addr);
        put_le(&mut ent, 12, 8, e.size);
        put_le(&mut ent, 20, 4, u64::from(e.kind));
        mmap.extend_from_slice(&ent);
    }
    let mmap_addr = blob.push(&mmap, 4);
    let mut list = Vec::new();
    for &(start, end, name) in modules {
        let string = blob.push_str(name);
        let mut ent = [0u8; MODULE_ENTRY_SIZE];
        put_le(&mut ent, 0, 4, start);
        put_le(&mut ent, 4, 4, end);
        put_le(&mut ent, 8, 4, string);
        list.extend_from_slice(&ent);
    }
    let mods_addr = blob.push(&list, 4);

    let low_end = mem.low_ram_end();
    let info = &mut blob.bytes;
    let flags = INFO_MEM | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put_le(info, INFO_FLAGS, 4, u64::from(flags));
    put_le(info, INFO_MEM_LOWER, 4, EBDA_START.min(low_end) / 1024);
    put_le(
        info,
        INFO_MEM_UPPER,
        4,
        low_end.saturating_sub(HIGH_MEMORY) / 1024,
    );
    put_le(info, INFO_CMDLINE_PTR, 4, cmdline_addr);
    put_le(info, INFO_MODS_COUNT, 4, modules.len() as u64);
    put_le(info, INFO_MODS_ADDR, 4, mods_addr);
    put_le(info, INFO_MMAP_LENGTH, 4, mmap.len() as u64);
    put_le(info, INFO_MMAP_ADDR, 4, mmap_addr);
    put_le(info, INFO_LOADER_NAME_PTR, 4, name_addr);
    blob
}

/// Loads a Multiboot kernel and its modules and returns the 32-bit protected-mode entry state.
pub fn load_multiboot(
    mem: &GuestMemory,
    elf: &[u8],
    cmdline: &str,
    modules: &[(&[u8], &str)],
) -> Result<BootSetup, LoadError> {
    let header = find_header(elf)?;
    let required = header.flags & 0xffff;
    if required & FLAG_VIDEO_MODE != 0 {
        return Err(LoadError::MultibootUnsupported(
            "a video mode (header flags bit 2)".into(),
        ));
    }
    let unknown = required & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);
    if unknown != 0 {
        return Err(LoadError::MultibootUnsupported(format!(
            "unknown features (header flags {unknown:#x})"
        )));
    }
    let layout = if header.aout_kludge() {
        kludge_layout(elf, &header)?
    } else {
        elf_layout(elf)?
    };
    if layout.entry >= LIMIT_32BIT {
        return Err(LoadError::BadElf(format!(
            "entry point {:#x} is above 4 GiB",
            layout.entry
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::NulInString("the command line"));
    }
    if modules.iter().any(|(_, s)| s.as_bytes().contains(&0)) {
        return Err(LoadError::NulInString("a module name"));
    }

    // Check every segment before writing anything, and keep the placer off them.
    let mut placer = Placer::new(mem);
    let mut kernel_start = u64::MAX;
    let mut kernel_end = 0;
    for s in &layout.segments {
        let outside = LoadError::SegmentOutsideRam {
            addr: s.addr,
            size: s.mem_size,
        };
        let end = s.addr.checked_add(s.mem_size).ok_or(outside)?;
        if end > LIMIT_32BIT || !mem.is_ram(s.addr, s.mem_size) {
            return Err(LoadError::SegmentOutsideRam {
                addr: s.addr,
                size: s.mem_size,
            });
        }
        let page_end = align_up(end, 4096).unwrap_or(end);
        placer.reserve(s.addr & !0xfff, page_end);
        kernel_start = kernel_start.min(s.addr);
        kernel_end = kernel_end.max(page_end);
    }

    // Modules after the kernel; then the small structures, preferring conventional memory.
    let mut placed = Vec::with_capacity(modules.len());
    for (i, &(data, name)) in modules.iter().enumerate() {
        let size = data.len() as u64;
        let what = format!("module {} ({name})", i + 1);
        let addr = placer.alloc_prefer(size, 4096, kernel_end, &what)?;
        placed.push((addr, addr + size, name));
    }
    let gdt_addr = placer.alloc_prefer(24, 8, 0, "the GDT")?;
    let stack_base = placer.alloc_prefer(STACK_SIZE, 16, 0, "the boot stack")?;
    let info_size = build_info(mem, 0, cmdline, &placed).bytes.len() as u64;
    let info_addr = placer.alloc_prefer(info_size, 16, 0, "the Multiboot info block")?;
    let info = build_info(mem, info_addr, cmdline, &placed);

    // Write guest memory.
    for s in &layout.segments {
        mem.write(s.addr, s.data)?;
        mem.zero(
            s.addr + s.data.len() as u64,
            s.mem_size - s.data.len() as u64,
        )?;
    }
    for (&(data, _), &(addr, _, _)) in modules.iter().zip(&placed) {
        mem.write(addr, data)?;
    }
    let code = Segment::flat32(0x08, true);
    let data = Segment::flat32(0x10, false);
    mem.write_le::<8>(gdt_addr, 0)?;
    mem.write_le::<8>(gdt_addr + 8, code.to_descriptor())?;
    mem.write_le::<8>(gdt_addr + 16, data.to_descriptor())?;
    mem.write(info.base, &info.bytes)?;

    let mut gpr = [0; 16];
    gpr[reg::RAX] = u64::from(BOOTLOADER_MAGIC);
    gpr[reg::RBX] = info_addr;
    gpr[reg::RSP] = stack_base + STACK_SIZE;
    let cpu = CpuState {
        gpr,
        rip: layout.entry,
        rflags: rflags::FIXED1,
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        gdtr: DescriptorTable {
            base: gdt_addr,
            limit: 23,
        },
        idtr: DescriptorTable { base: 0, limit: 0 },
        cr0: ctl::CR0_PE | ctl::CR0_ET,
        ..CpuState::default()
    };

    let format = if header.aout_kludge() {
        "a.out kludge"
    } else {
        "ELF"
    };
    let summary = format!(
        "Multiboot {format}, {} segment(s) at {kernel_start:#x}..{kernel_end:#x}, entry {:#x}, \
         {} module(s) ({}), info at {info_addr:#x}, cmdline {}",
        layout.segments.len(),
        layout.entry,
        placed.len(),
        fmt_size(modules.iter().map(|(d, _)| d.len() as u64).sum()),
        fmt_cmdline(cmdline),
    );
    log::info!("{summary}");
    Ok(BootSetup { cpu, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{detect, KernelKind, E820_RAM, E820_RESERVED};
    use ringzero_translator::CpuMode;

    const MIB: u64 = 1 << 20;

    fn header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    }

    /// (paddr, vaddr, file bytes, memsz) of one PT_LOAD.
    type Seg<'a> = (u32, u32, &'a [u8], u32);

    /// A minimal ELF32 i386 executable: ELF header, program headers, the Multiboot header at
    /// 0x80 (inside the first segment's file data), then the segments' bytes.
    fn elf32(entry: u32, segs: &[Seg], mb_flags: u32) -> Vec<u8> {
        let phoff = 52usize;
        let data_start = 0x100usize;
        let mut img = vec![0u8; data_start];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 1; // ELFCLASS32
        img[5] = 1; // little-endian
        img[6] = 1; // EV_CURRENT
        put_le(&mut img, 16, 2, 2); // ET_EXEC
        put_le(&mut img, 18, 2, 3); // EM_386
        put_le(&mut img, 20, 4, 1);
        put_le(&mut img, 24, 4, u64::from(entry));
        put_le(&mut img, 28, 4, phoff as u64);
        put_le(&mut img, 40, 2, 52);
        put_le(&mut img, 42, 2, 32);
        put_le(&mut img, 44, 2, segs.len() as u64);
        let mb = header(mb_flags);
        img[0xc0..0xcc].copy_from_slice(&mb);
        for (i, &(paddr, vaddr, data, memsz)) in segs.iter().enumerate() {
            let off = img.len();
            img.extend_from_slice(data);
            let ph = phoff + 32 * i;
            put_le(&mut img, ph, 4, 1); // PT_LOAD
            put_le(&mut img, ph + 4, 4, off as u64);
            put_le(&mut img, ph + 8, 4, u64::from(vaddr));
            put_le(&mut img, ph + 12, 4, u64::from(paddr));
            put_le(&mut img, ph + 16, 4, data.len() as u64);
            put_le(&mut img, ph + 20, 4, u64::from(memsz));
            put_le(&mut img, ph + 24, 4, 5);
        }
        img
    }

    fn simple_elf() -> Vec<u8> {
        let text: Vec<u8> = (0..0x300u32).map(|i| (i * 3) as u8).collect();
        elf32(0x10_0010, &[(0x10_0000, 0x10_0000, &text, 0x2000)], 3)
    }

    fn mem() -> GuestMemory {
        GuestMemory::new(32 * MIB).unwrap()
    }

    fn cstr(m: &GuestMemory, addr: u64) -> String {
        let mut out = Vec::new();
        for a in addr.. {
            let b = m.read_le::<1>(a).unwrap() as u8;
            if b == 0 {
                break;
            }
            out.push(b);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn loads_segments_and_zero_fills_bss() {
        let m = mem();
        m.write(0x10_0300, &[0xee; 0x100]).unwrap(); // stale bytes the bss must clear
        let img = simple_elf();
        assert_eq!(detect(&img).unwrap(), KernelKind::MultibootElf);
        let s = load_multiboot(&m, &img, "", &[]).unwrap();
        let mut text = vec![0u8; 0x300];
        m.read(0x10_0000, &mut text).unwrap();
        assert_eq!(text, img[0x100..0x400]);
        let mut bss = vec![1u8; 0x1d00];
        m.read(0x10_0300, &mut bss).unwrap();
        assert!(bss.iter().all(|&b| b == 0));
        assert!(
            s.summary
                .starts_with("Multiboot ELF, 1 segment(s) at 0x100000..0x102000"),
            "{}",
            s.summary
        );
    }

    #[test]
    fn entry_state_follows_the_spec() {
        let m = mem();
        let c = load_multiboot(&m, &simple_elf(), "", &[]).unwrap().cpu;
        assert_eq!(c.mode(), CpuMode::Protected);
        assert_eq!(c.code_bits(), 32);
        assert_eq!(c.gpr[reg::RAX], 0x2bad_b002);
        assert_eq!(c.rip, 0x10_0010);
        assert_eq!(c.cr0 & (ctl::CR0_PE | ctl::CR0_PG), ctl::CR0_PE);
        assert_eq!(c.rflags & (rflags::IF | rflags::VM), 0);
        assert_eq!(
            (c.cs.selector, c.cs.base, c.cs.limit),
            (0x08, 0, 0xffff_ffff)
        );
        for s in [c.ds, c.es, c.fs, c.gs, c.ss] {
            assert_eq!(
                (s.selector, s.base, s.limit, s.type_),
                (0x10, 0, 0xffff_ffff, 3)
            );
        }
        // The GDT in memory describes exactly the loaded segments.
        assert_eq!((c.gdtr.base, c.gdtr.limit), (0x500, 23));
        assert_eq!(m.read_le::<8>(c.gdtr.base).unwrap(), 0);
        assert_eq!(
            m.read_le::<8>(c.gdtr.base + 8).unwrap(),
            c.cs.to_descriptor()
        );
        assert_eq!(
            m.read_le::<8>(c.gdtr.base + 16).unwrap(),
            c.ds.to_descriptor()
        );
        // The stack is in free conventional memory, away from the kernel.
        let sp = c.gpr[reg::RSP];
        assert!(
            sp > STACK_SIZE && sp <= EBDA_START && sp.is_multiple_of(16),
            "{sp:#x}"
        );
    }

    #[test]
    fn info_block_has_memory_cmdline_mmap_and_name() {
        let m = mem();
        let c = load_multiboot(&m, &simple_elf(), "quiet debug=1", &[])
            .unwrap()
            .cpu;
        let info = c.gpr[reg::RBX];
        assert!(
            info + INFO_SIZE as u64 <= EBDA_START,
            "info in conventional memory"
        );
        let rd = |off: usize| m.read_le::<4>(info + off as u64).unwrap();
        assert_eq!(rd(INFO_FLAGS), 0x24d);
        assert_eq!(rd(INFO_MEM_LOWER), 639);
        assert_eq!(rd(INFO_MEM_UPPER), 31 * 1024);
        assert_eq!(cstr(&m, rd(INFO_CMDLINE_PTR)), "quiet debug=1");
        assert_eq!(cstr(&m, rd(INFO_LOADER_NAME_PTR)), "ringzero");
        assert_eq!(rd(INFO_MODS_COUNT), 0);
        assert_eq!(rd(INFO_MMAP_LENGTH), 3 * 24);
        let mmap = rd(INFO_MMAP_ADDR);
        let entry = |i: u64| {
            let a = mmap + 24 * i;
            (
                m.read_le::<4>(a).unwrap(),
                m.read_le::<8>(a + 4).unwrap(),
                m.read_le::<8>(a + 12).unwrap(),
                m.read_le::<4>(a + 20).unwrap() as u32,
            )
        };
        assert_eq!(entry(0), (20, 0, 0x9fc00, E820_RAM));
        assert_eq!(entry(1), (20, 0x9fc00, 0x60400, E820_RESERVED));
        assert_eq!(entry(2), (20, MIB, 31 * MIB, E820_RAM));
    }

    #[test]
    fn modules_are_page_aligned_after_the_kernel() {
        let m = mem();
        let a: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let b = b"second module".to_vec();
        let c = load_multiboot(&m, &simple_elf(), "", &[(&a, "a.bin arg"), (&b, "b.txt")])
            .unwrap()
            .cpu;
        let info = c.gpr[reg::RBX];
        assert_eq!(m.read_le::<4>(info + INFO_MODS_COUNT as u64).unwrap(), 2);
        let list = m.read_le::<4>(info + INFO_MODS_ADDR as u64).unwrap();
        let ent = |i: u64, f: u64| m.read_le::<4>(list + 16 * i + f).unwrap();
        assert_eq!((ent(0, 0), ent(0, 4)), (0x10_2000, 0x10_2000 + 5000));
        assert_eq!((ent(1, 0), ent(1, 4)), (0x10_4000, 0x10_4000 + 13));
        assert_eq!(cstr(&m, ent(0, 8)), "a.bin arg");
        assert_eq!(cstr(&m, ent(1, 8)), "b.txt");
        let mut back = vec![0u8; 5000];
        m.read(0x10_2000, &mut back).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn boot_structures_avoid_a_kernel_in_low_memory() {
        let m = mem();
        // A kernel covering most of conventional memory leaves the info block no room there.
        let text = [0x90u8; 16];
        let img = elf32(0x500, &[(0x500, 0x500, &text, 0x9f700)], 0);
        let c = load_multiboot(&m, &img, "x", &[]).unwrap().cpu;
        let info = c.gpr[reg::RBX];
        assert!(info >= HIGH_MEMORY, "{info:#x}");
        assert!(c.gdtr.base >= HIGH_MEMORY, "{:#x}", c.gdtr.base);
        assert!(c.gpr[reg::RSP] > HIGH_MEMORY);
    }

    #[test]
    fn virtual_entry_is_translated_to_physical() {
        let m = mem();
        let text = [0x90u8; 0x40];
        let img = elf32(0xc010_0020, &[(0x10_0000, 0xc010_0000, &text, 0x40)], 0);
        let c = load_multiboot(&m, &img, "", &[]).unwrap().cpu;
        assert_eq!(c.rip, 0x10_0020);
    }

    #[test]
    fn aout_kludge_fields_are_used() {
        let m = mem();
        // A flat binary linked at 0x200000: the header sits at its start.
        let mut img = header(FLAG_AOUT_KLUDGE | FLAG_PAGE_ALIGN);
        for w in [0x20_0000u32, 0x20_0000, 0x20_0100, 0x20_1000, 0x20_0020] {
            img.extend_from_slice(&w.to_le_bytes());
        }
        img.resize(0x100, 0xf4);
        img.extend_from_slice(&[0xaa; 0x40]); // past load_end_addr: not loaded
        assert_eq!(detect(&img).unwrap(), KernelKind::MultibootElf);
        m.write(0x20_0100, &[0x55; 16]).unwrap();
        let s = load_multiboot(&m, &img, "", &[]).unwrap();
        assert_eq!(s.cpu.rip, 0x20_0020);
        assert_eq!(m.read_le::<4>(0x20_0000).unwrap(), u64::from(HEADER_MAGIC));
        assert_eq!(m.read_le::<1>(0x20_00ff).unwrap(), 0xf4);
        assert_eq!(m.read_le::<8>(0x20_0100).unwrap(), 0, "bss cleared");
        assert!(s.summary.contains("a.out kludge"), "{}", s.summary);
    }

    #[test]
    fn bad_kludge_fields_are_errors() {
        let m = mem();
        let kludge = |f: [u32; 5], extra: usize| {
            let mut img = header(FLAG_AOUT_KLUDGE);
            for w in f {
                img.extend_from_slice(&w.to_le_bytes());
            }
            img.resize(img.len() + extra, 0);
            img
        };
        let cases = [
            kludge([0x1000, 0x2000, 0, 0, 0x2000], 0), // header below load_addr
            kludge([0x2010, 0x2000, 0, 0, 0x2000], 0), // load_addr before the file
            kludge([0x2000, 0x2000, 0x1000, 0, 0x2000], 0), // load_end below load_addr
            kludge([0x2000, 0x2000, 0x2020, 0x2010, 0x2000], 0x20), // bss_end below load_end
        ];
        for img in cases {
            let e = load_multiboot(&m, &img, "", &[]).unwrap_err();
            assert!(matches!(e, LoadError::BadMultibootAddresses(_)), "{e}");
        }
        let e = load_multiboot(&m, &kludge([0x2000, 0x2000, 0x3000, 0, 0x2000], 0), "", &[])
            .unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        // Header fields cut off by the end of the file.
        let mut img = header(FLAG_AOUT_KLUDGE);
        img.extend_from_slice(&[0; 8]);
        assert!(matches!(
            load_multiboot(&m, &img, "", &[]),
            Err(LoadError::Truncated { .. })
        ));
    }

    #[test]
    fn header_search_rules() {
        let m = mem();
        // No header, bad checksum, misaligned, and beyond 8 KiB are all "no header".
        let mut img = simple_elf();
        img[0xc0..0xcc].fill(0);
        assert!(matches!(
            load_multiboot(&m, &img, "", &[]),
            Err(LoadError::NoMultibootHeader)
        ));
        let mut img = simple_elf();
        img[0xc8] ^= 1;
        let e = load_multiboot(&m, &img, "", &[]).unwrap_err();
        assert!(
            matches!(e, LoadError::MultibootChecksum { offset: 0xc0 }),
            "{e}"
        );
        let mut img = simple_elf();
        let h = img[0xc0..0xcc].to_vec();
        img[0xc0..0xcc].fill(0);
        img[0xc2..0xce].copy_from_slice(&h);
        assert!(matches!(
            load_multiboot(&m, &img, "", &[]),
            Err(LoadError::NoMultibootHeader)
        ));
        let mut img = simple_elf();
        img[0xc0..0xcc].fill(0);
        img.resize(8192, 0);
        img.extend_from_slice(&header(0));
        assert!(matches!(
            load_multiboot(&m, &img, "", &[]),
            Err(LoadError::NoMultibootHeader)
        ));
        assert!(matches!(detect(&img), Err(LoadError::NoMultibootHeader)));
        // The last aligned slot that still holds the whole header counts.
        img.truncate(8192 - 12);
        img.extend_from_slice(&header(0));
        assert!(find_header(&img).is_ok());
    }

    #[test]
    fn unsatisfiable_requirements_are_rejected() {
        let m = mem();
        let text = [0u8; 4];
        let e = load_multiboot(
            &m,
            &elf32(0x10_0000, &[(0x10_0000, 0x10_0000, &text, 4)], 4),
            "",
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, LoadError::MultibootUnsupported(_)), "{e}");
        assert!(e.to_string().contains("video mode"), "{e}");
        let e = load_multiboot(
            &m,
            &elf32(0x10_0000, &[(0x10_0000, 0x10_0000, &text, 4)], 0x80),
            "",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown features"), "{e}");
    }

    #[test]
    fn bad_elf_files() {
        let m = mem();
        let expect_bad = |img: &[u8], what: &str| {
            let e = load_multiboot(&m, img, "", &[]).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        };
        let good = simple_elf();
        let mut img = good.clone();
        img[4] = 3;
        expect_bad(&img, "unknown ELF class");
        let mut img = good.clone();
        img[5] = 2;
        expect_bad(&img, "little-endian");
        let mut img = good.clone();
        img[18] = 40; // EM_ARM
        expect_bad(&img, "not x86");
        let mut img = good.clone();
        img[16] = 3; // ET_DYN
        expect_bad(&img, "not an executable");
        let mut img = good.clone();
        put_le(&mut img, 28, 4, 0xffff_fff0);
        expect_bad(&img, "program headers lie outside");
        let mut img = good.clone();
        put_le(&mut img, 42, 2, 16);
        expect_bad(&img, "too small");
        let mut img = good.clone();
        put_le(&mut img, 52 + 4, 4, 0xffff_ff00); // p_offset
        expect_bad(&img, "segment 0 lies outside the file");
        let mut img = good.clone();
        put_le(&mut img, 52 + 20, 4, 0x10); // memsz < filesz
        expect_bad(&img, "file size larger");
        let mut img = good.clone();
        put_le(&mut img, 52, 4, 6); // PT_PHDR: nothing to load
        expect_bad(&img, "no loadable segments");
        // A multiboot header but no ELF and no kludge.
        let mut img = header(0);
        img.resize(64, 0);
        expect_bad(&img, "no ELF signature");
        // A 32-bit ELF that ends inside its own header.
        let mut img = good[..0x20].to_vec();
        img.extend_from_slice(&header(0));
        let e = load_multiboot(&m, &img, "", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Truncated {
                    need: 52,
                    have: 0x2c,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn segments_outside_ram_and_strings_are_checked() {
        let m = mem();
        let text = [0u8; 16];
        let e = load_multiboot(&m, &elf32(0, &[(0x200_0000 - 8, 0, &text, 16)], 0), "", &[])
            .unwrap_err();
        assert!(matches!(e, LoadError::SegmentOutsideRam { .. }), "{e}");
        let e =
            load_multiboot(&m, &elf32(0, &[(0xffff_fff8, 0, &text, 16)], 0), "", &[]).unwrap_err();
        assert!(matches!(e, LoadError::SegmentOutsideRam { .. }), "{e}");
        let e = load_multiboot(&m, &simple_elf(), "a\0b", &[]).unwrap_err();
        assert!(matches!(e, LoadError::NulInString(_)), "{e}");
        let e = load_multiboot(&m, &simple_elf(), "", &[(&[1], "x\0")]).unwrap_err();
        assert!(matches!(e, LoadError::NulInString(_)), "{e}");
    }

    #[test]
    fn module_too_big_for_ram() {
        let m = mem();
        let big = vec![0u8; 32 * MIB as usize];
        let e = load_multiboot(&m, &simple_elf(), "", &[(&big, "big")]).unwrap_err();
        assert!(matches!(e, LoadError::NoRoom { .. }), "{e}");
        assert!(e.to_string().contains("module 1 (big)"), "{e}");
    }

    #[test]
    fn elf64_kernels_load_by_physical_address() {
        let m = mem();
        let text = [0xf4u8; 8];
        let mut img = vec![0u8; 0x100];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 2;
        img[5] = 1;
        put_le(&mut img, 16, 2, 2);
        put_le(&mut img, 18, 2, 62);
        put_le(&mut img, 24, 8, 0xffff_ffff_8010_0000);
        put_le(&mut img, 32, 8, 64);
        put_le(&mut img, 54, 2, 56);
        put_le(&mut img, 56, 2, 1);
        img[0xc0..0xcc].copy_from_slice(&header(2));
        let ph = 64;
        put_le(&mut img, ph, 4, 1);
        put_le(&mut img, ph + 8, 8, 0x100);
        put_le(&mut img, ph + 16, 8, 0xffff_ffff_8010_0000);
        put_le(&mut img, ph + 24, 8, 0x10_0000);
        put_le(&mut img, ph + 32, 8, 8);
        put_le(&mut img, ph + 40, 8, 0x1000);
        img.extend_from_slice(&text);
        let c = load_multiboot(&m, &img, "", &[]).unwrap().cpu;
        assert_eq!(c.rip, 0x10_0000);
        assert_eq!(m.read_le::<8>(0x10_0000).unwrap(), 0xf4f4_f4f4_f4f4_f4f4);
    }

    #[test]
    fn placer_first_fit() {
        let m = mem();
        let mut p = Placer::new(&m);
        p.reserve(0x500, 0x3000);
        assert_eq!(p.alloc(0x10, 16, 0), Some(0x3000));
        assert_eq!(p.alloc(0x1000, 4096, 0), Some(0x4000));
        assert_eq!(p.alloc(0x10, 16, 0x9_0000), Some(0x9_0000));
        assert_eq!(p.alloc(0x1000, 4096, 0x9_f000), Some(HIGH_MEMORY));
        assert_eq!(p.alloc(64 * MIB, 4096, 0), None);
    }
}
