//! Flat images: raw bytes copied to a real-mode address and entered in real mode.
//!
//! The smallest possible guest (a boot-sector-like blob, the built-in demo at `0x8000`). The
//! entry is `CS:IP` pointing at the first byte, with every data segment equal to CS so that
//! position-dependent code assembled with `org addr` (for `addr` ≤ 0xFFFF) or `org 0` (above)
//! finds its data:
//!
//! - `addr` ≤ 0xFFFF: all segments 0, `IP = addr`;
//! - otherwise: all segments `addr >> 4`, `IP = addr & 0xF`.
//!
//! `SP = 0`, so the first push lands at `SS:0xFFFE`, the top of the 64 KiB segment. Interrupts
//! are off; there is no BIOS, so the IVT is whatever the image puts there.

use super::{fmt_size, BootSetup, LoadError, HIGH_MEMORY};
use crate::memory::GuestMemory;
use ringzero_translator::{CpuState, Segment};

/// Copies `image` to `addr` (below 1 MiB) and returns a real-mode entry at its first byte.
pub fn load_flat(mem: &GuestMemory, image: &[u8], addr: u64) -> Result<BootSetup, LoadError> {
    let len = image.len() as u64;
    if len == 0 {
        return Err(LoadError::EmptyImage);
    }
    let fits = addr
        .checked_add(len)
        .is_some_and(|end| end <= HIGH_MEMORY && mem.is_ram(addr, len));
    if !fits {
        return Err(LoadError::FlatOutOfRange { addr, len });
    }
    mem.write(addr, image)?;

    let (selector, ip) = if addr <= 0xffff {
        (0u16, addr)
    } else {
        // addr < 1 MiB here, so addr >> 4 fits in 16 bits.
        ((addr >> 4) as u16, addr & 0xf)
    };
    // SP = 0: the first push lands at SS:0xFFFE.
    let data = Segment::real_mode(selector);
    let cpu = CpuState {
        rip: ip,
        cs: Segment { type_: 0xb, ..data },
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        ..CpuState::default()
    };
    let summary = format!(
        "flat image, {} at {addr:#x}, real-mode entry {selector:04x}:{ip:04x}",
        fmt_size(len)
    );
    log::info!("{summary}");
    Ok(BootSetup { cpu, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringzero_translator::state::reg;
    use ringzero_translator::CpuMode;

    fn mem() -> GuestMemory {
        GuestMemory::new(4 << 20).unwrap()
    }

    #[test]
    fn low_address_uses_segment_zero() {
        let m = mem();
        let s = load_flat(&m, &[0xf4, 0x90], 0x8000).unwrap();
        assert_eq!(m.read_le::<2>(0x8000).unwrap(), 0x90f4);
        assert_eq!(s.cpu.mode(), CpuMode::Real);
        assert_eq!(
            (s.cpu.cs.selector, s.cpu.cs.base, s.cpu.rip),
            (0, 0, 0x8000)
        );
        assert_eq!(s.cpu.ss, Segment::real_mode(0));
        assert_eq!(s.cpu.gpr[reg::RSP], 0);
        assert!(s.summary.contains("0000:8000"), "{}", s.summary);
    }

    #[test]
    fn high_address_uses_paragraph_segment() {
        let m = mem();
        let s = load_flat(&m, &[1, 2, 3], 0x12345).unwrap();
        assert_eq!(
            (s.cpu.cs.selector, s.cpu.cs.base, s.cpu.rip),
            (0x1234, 0x12340, 5)
        );
        assert_eq!(s.cpu.ds.selector, 0x1234);
        assert_eq!(s.cpu.cs.base + s.cpu.rip, 0x12345);
        // The image may end exactly at 1 MiB.
        let s = load_flat(&m, &[0xf4; 16], 0xffff0).unwrap();
        assert_eq!((s.cpu.cs.selector, s.cpu.rip), (0xffff, 0));
    }

    #[test]
    fn rejects_empty_and_out_of_range() {
        let m = mem();
        assert!(matches!(
            load_flat(&m, &[], 0x7c00),
            Err(LoadError::EmptyImage)
        ));
        assert!(matches!(
            load_flat(&m, &[0; 16], 0xffff1),
            Err(LoadError::FlatOutOfRange { .. })
        ));
        assert!(matches!(
            load_flat(&m, &[0; 16], 0x20_0000),
            Err(LoadError::FlatOutOfRange { .. })
        ));
        assert!(matches!(
            load_flat(&m, &[0; 16], u64::MAX - 4),
            Err(LoadError::FlatOutOfRange { .. })
        ));
        let msg = load_flat(&m, &[0; 16], 0x10_0000).unwrap_err().to_string();
        assert!(msg.contains("below 1 MiB"), "{msg}");
    }
}
