//! Segment descriptors, descriptor-table reads, TSS stack slots and the monitor's stack frames.
//!
//! Shared by [`super`] (segment loads, far transfers, IRET) and [`crate::system::delivery`].
//! Every read of the GDT, LDT, IDT and TSS is a [`GuestMem::read_system`]; the accessed and busy
//! bits are written with [`GuestMem::write_system`], only at commit time (after every check).

use crate::mem::GuestMem;
use crate::sem::{Exception, GP, SS};
use crate::state::{ctl, CpuMode, CpuState, Segment};

/// #DF, double fault (error code 0).
pub const DF: u8 = 8;
/// #TS, invalid TSS.
pub const TS: u8 = 10;
/// #NP, segment not present.
pub const NP: u8 = 11;

/// A guest exception with an error code.
pub fn fault(vector: u8, error: u32) -> Exception {
    Exception::Cpu {
        vector,
        error: Some(error),
    }
}

/// The error code naming selector `sel` (index and TI; the EXT and IDT bits clear).
pub fn sel_error(sel: u16) -> u32 {
    u32::from(sel & 0xfffc)
}

/// #GP(selector).
pub fn gp_sel(sel: u16) -> Exception {
    fault(GP, sel_error(sel))
}

/// #GP(0).
pub fn gp0() -> Exception {
    fault(GP, 0)
}

/// Whether `sel` is a null selector (index 0 in the GDT; any RPL).
pub fn is_null(sel: u16) -> bool {
    sel & 0xfffc == 0
}

/// A descriptor as read from a table: the low 8 bytes, and the high 8 bytes of a 16-byte
/// long-mode system descriptor or gate (0 for 8-byte descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes 0-7.
    pub lo: u64,
    /// Bytes 8-15 (16-byte descriptors only).
    pub hi: u64,
}

impl Descriptor {
    /// The access-rights byte (type, S, DPL, P).
    pub fn access(&self) -> u8 {
        (self.lo >> 40) as u8
    }
    /// The 4-bit type field.
    pub fn type_(&self) -> u8 {
        self.access() & 0xf
    }
    /// S: code/data (true) or system (false).
    pub fn s(&self) -> bool {
        self.access() & 0x10 != 0
    }
    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        (self.access() >> 5) & 3
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.access() & 0x80 != 0
    }
    /// A code segment.
    pub fn is_code(&self) -> bool {
        self.s() && self.type_() & 8 != 0
    }
    /// A data segment.
    pub fn is_data(&self) -> bool {
        self.s() && self.type_() & 8 == 0
    }
    /// A conforming code segment.
    pub fn conforming(&self) -> bool {
        self.is_code() && self.type_() & 4 != 0
    }
    /// Readable: any data segment, or code with the R bit.
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.type_() & 2 != 0)
    }
    /// A writable data segment.
    pub fn writable(&self) -> bool {
        self.is_data() && self.type_() & 2 != 0
    }
    /// AVL bit.
    pub fn avl(&self) -> bool {
        self.lo >> 52 & 1 != 0
    }
    /// L bit (64-bit code).
    pub fn l(&self) -> bool {
        self.lo >> 53 & 1 != 0
    }
    /// D/B bit.
    pub fn db(&self) -> bool {
        self.lo >> 54 & 1 != 0
    }
    /// G bit.
    pub fn g(&self) -> bool {
        self.lo >> 55 & 1 != 0
    }
    /// Base address (bits 32-63 from the high half for 16-byte system descriptors).
    pub fn base(&self) -> u64 {
        let low = (self.lo >> 16) & 0xff_ffff | ((self.lo >> 56) & 0xff) << 24;
        if self.s() {
            low
        } else {
            low | (self.hi & 0xffff_ffff) << 32
        }
    }
    /// Byte-granular limit (scaled by G).
    pub fn limit(&self) -> u32 {
        let raw = (self.lo & 0xffff) as u32 | ((self.lo >> 48) as u32 & 0xf) << 16;
        if self.g() {
            raw << 12 | 0xfff
        } else {
            raw
        }
    }
    /// A 64-bit code segment (L=1, D=0) for long mode.
    pub fn is_code64(&self) -> bool {
        self.is_code() && self.l() && !self.db()
    }
    /// Gate: the target code-segment selector.
    pub fn gate_selector(&self) -> u16 {
        (self.lo >> 16) as u16
    }
    /// Gate: the target offset (bits 32-63 from the high half for 16-byte gates).
    pub fn gate_offset(&self) -> u64 {
        (self.lo & 0xffff) | ((self.lo >> 48) & 0xffff) << 16 | (self.hi & 0xffff_ffff) << 32
    }
    /// Call gate: the parameter count (5 bits).
    pub fn gate_params(&self) -> u8 {
        (self.lo >> 32) as u8 & 0x1f
    }
    /// Long-mode interrupt gate: the IST index (0 = no IST).
    pub fn gate_ist(&self) -> u8 {
        (self.lo >> 32) as u8 & 7
    }
    /// The type field of the high half of a 16-byte descriptor (must be 0).
    pub fn hi_type(&self) -> u8 {
        (self.hi >> 40) as u8 & 0x1f
    }
    /// The hidden-cache contents for `selector` loaded from this descriptor (code and data
    /// segments get the accessed bit, as the load sets it).
    pub fn segment(&self, selector: u16) -> Segment {
        Segment {
            selector,
            base: self.base(),
            limit: self.limit(),
            type_: if self.s() {
                self.type_() | 1
            } else {
                self.type_()
            },
            s: self.s(),
            dpl: self.dpl(),
            present: self.present(),
            avl: self.avl(),
            l: self.l(),
            db: self.db(),
            g: self.g(),
            unusable: false,
        }
    }
}

/// A descriptor read from a table, with its linear address (for the accessed/busy bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The descriptor.
    pub desc: Descriptor,
    /// Linear address of its first byte.
    pub addr: u64,
}

impl Fetched {
    /// The write that sets the accessed bit, if a code/data descriptor lacks it.
    pub fn accessed_mark(&self) -> Option<(u64, u8)> {
        let a = self.desc.access();
        (self.desc.s() && a & 1 == 0).then_some((self.addr + 5, a | 1))
    }
    /// The write that sets the busy bit of an available TSS descriptor.
    pub fn busy_mark(&self) -> (u64, u8) {
        (self.addr + 5, self.desc.access() | 2)
    }
}

/// Wraps a linear address to 32 bits outside long mode.
pub fn wrap(cpu: &CpuState, addr: u64) -> u64 {
    if cpu.efer & ctl::EFER_LMA != 0 {
        addr
    } else {
        addr & 0xffff_ffff
    }
}

/// Reads `n` little-endian bytes (at most 8) of a system structure.
pub fn read_sys(mem: &mut dyn GuestMem, addr: u64, n: usize) -> Result<u64, Exception> {
    let mut buf = [0u8; 8];
    let n = n.min(8);
    mem.read_system(addr, &mut buf[..n])?;
    Ok(u64::from_le_bytes(buf))
}

/// Reads the descriptor `sel` selects from the GDT (TI=0) or LDT (TI=1); `wide` reads a
/// 16-byte long-mode system descriptor. `Ok(None)` when the selector is outside its table's
/// limit, or TI=1 with no usable LDT (null or unusable LDTR): the caller raises the error its
/// instruction specifies. Memory faults of the table read are returned as they are.
pub fn fetch(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    sel: u16,
    wide: bool,
) -> Result<Option<Fetched>, Exception> {
    let (base, limit) = if sel & 4 != 0 {
        if cpu.ldtr.unusable || is_null(cpu.ldtr.selector) || !cpu.ldtr.present {
            return Ok(None);
        }
        (cpu.ldtr.base, u64::from(cpu.ldtr.limit))
    } else {
        (cpu.gdtr.base, u64::from(cpu.gdtr.limit))
    };
    let off = u64::from(sel & 0xfff8);
    let len = if wide { 16 } else { 8 };
    if off + len - 1 > limit {
        return Ok(None);
    }
    let addr = wrap(cpu, base.wrapping_add(off));
    let lo = read_sys(mem, addr, 8)?;
    let hi = if wide {
        read_sys(mem, wrap(cpu, addr.wrapping_add(8)), 8)?
    } else {
        0
    };
    Ok(Some(Fetched {
        desc: Descriptor { lo, hi },
        addr,
    }))
}

/// Writes access bytes (accessed/busy marks) with supervisor system writes.
pub fn write_marks(mem: &mut dyn GuestMem, marks: &[(u64, u8)]) -> Result<(), Exception> {
    for &(addr, byte) in marks {
        mem.write_system(addr, &[byte])?;
    }
    Ok(())
}

/// Whether a 48-bit-canonical address.
pub fn canonical(addr: u64) -> bool {
    ((addr << 16) as i64 >> 16) as u64 == addr
}

/// The inner-level stack `(SS, ESP)` for privilege level `dpl` from the current 32-bit
/// (TR type 9/0xB) or 16-bit (type 1/3) TSS; #TS(TR selector) when the slot is beyond the
/// TSS limit (SDM Vol. 3 §7.2.1, figures 7-2 and 7-11).
pub fn tss_stack_legacy(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    dpl: u8,
) -> Result<(u16, u64), Exception> {
    let tr = &cpu.tr;
    let is32 = tr.type_ & 8 != 0;
    let (off, size) = if is32 {
        (4 + 8 * u64::from(dpl), 4u64)
    } else {
        (2 + 4 * u64::from(dpl), 2u64)
    };
    if tr.unusable || !tr.present || off + 2 * size - 1 > u64::from(tr.limit) {
        return Err(fault(TS, sel_error(tr.selector)));
    }
    let base = tr.base.wrapping_add(off);
    let sp = read_sys(mem, wrap(cpu, base), size as usize)?;
    let ss = read_sys(mem, wrap(cpu, base.wrapping_add(size)), 2)? as u16;
    Ok((ss, sp))
}

/// The 8-byte slot at offset `off` of the 64-bit TSS (RSPn at 4 + 8n, ISTn at 0x24 + 8(n-1));
/// #TS(TR selector) beyond the TSS limit.
pub fn tss_slot64(cpu: &CpuState, mem: &mut dyn GuestMem, off: u64) -> Result<u64, Exception> {
    let tr = &cpu.tr;
    if tr.unusable || !tr.present || off + 7 > u64::from(tr.limit) {
        return Err(fault(TS, sel_error(tr.selector)));
    }
    read_sys(mem, tr.base.wrapping_add(off), 8)
}

/// The checked inner stack segment `ss_sel` for a privilege change to `cpl` (call gates and
/// interrupt delivery): #TS(0) for null, #TS(SS) for a selector out of bounds, with the wrong
/// RPL or DPL or not a writable data segment, #SS(SS) when not present.
pub fn inner_stack_segment(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    ss_sel: u16,
    cpl: u8,
) -> Result<Fetched, Exception> {
    if is_null(ss_sel) {
        return Err(fault(TS, 0));
    }
    let ts = fault(TS, sel_error(ss_sel));
    let f = fetch(cpu, mem, ss_sel, false)?.ok_or(ts)?;
    if (ss_sel & 3) as u8 != cpl || f.desc.dpl() != cpl || !f.desc.writable() {
        return Err(ts);
    }
    if !f.desc.present() {
        return Err(fault(SS, sel_error(ss_sel)));
    }
    Ok(f)
}

/// The null SS a 64-bit privilege change or return loads (RPL = the new CPL).
pub fn null_ss(cpl: u8) -> Segment {
    Segment {
        selector: u16::from(cpl),
        dpl: cpl,
        unusable: true,
        ..Segment::default()
    }
}

/// A stack the monitor pushes to or pops from: SS base and stack-pointer width (16, 32 or 64),
/// with every push collected first and written by [`Stack::commit`], so checks come first.
#[derive(Debug, Clone)]
pub struct Stack {
    /// SS base (ignored in 64-bit stacks).
    pub base: u64,
    /// The full stack-pointer register value.
    pub rsp: u64,
    /// Stack-pointer width in bits.
    pub width: u32,
    /// Pushes use [`GuestMem::write_system`] (a stack of a more privileged level than the
    /// memory's CPL context) instead of [`GuestMem::write`].
    pub system: bool,
    /// The pushes so far: (linear address, value, bytes).
    pub writes: Vec<(u64, u64, usize)>,
    /// The linear address is the 64-bit pointer itself (64-bit stacks: no base, canonical).
    long_linear: bool,
}

impl Stack {
    /// A stack over SS base `base`, register value `rsp` and a `width`-bit pointer (64: the
    /// linear address is the pointer itself, as in 64-bit mode).
    pub fn new(base: u64, rsp: u64, width: u32, system: bool) -> Self {
        Stack {
            base,
            rsp,
            width,
            system,
            writes: Vec::new(),
            long_linear: width == 64,
        }
    }

    /// The current stack of `cpu`: RSP in 64-bit mode, else ESP or SP by SS.B (SP in real
    /// and virtual-8086 mode).
    pub fn current(cpu: &CpuState) -> Self {
        let width = match cpu.mode() {
            CpuMode::Long64 => 64,
            CpuMode::Real | CpuMode::Virtual8086 => 16,
            _ if cpu.ss.db => 32,
            _ => 16,
        };
        Stack::new(cpu.ss.base, cpu.gpr[crate::state::reg::RSP], width, false)
    }

    fn mask(&self) -> u64 {
        match self.width {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        }
    }

    /// The pointer (low `width` bits).
    pub fn sp(&self) -> u64 {
        self.rsp & self.mask()
    }

    fn set_sp(&mut self, sp: u64) {
        let m = self.mask();
        self.rsp = (self.rsp & !m) | (sp & m);
    }

    /// The linear address of stack offset `sp`: #SS(0) when not canonical on a 64-bit stack.
    pub fn linear(&self, sp: u64) -> Result<u64, Exception> {
        if self.long_linear {
            if !canonical(sp) {
                return Err(fault(SS, 0));
            }
            Ok(sp)
        } else {
            Ok(self.base.wrapping_add(sp & self.mask()) & 0xffff_ffff)
        }
    }

    /// Collects a push of the low `bytes` of `value`.
    pub fn push(&mut self, value: u64, bytes: usize) -> Result<(), Exception> {
        let sp = self.sp().wrapping_sub(bytes as u64) & self.mask();
        let addr = self.linear(sp)?;
        // The last byte must be canonical too (a frame straddling the boundary).
        self.linear(sp.wrapping_add(bytes as u64 - 1))?;
        self.writes.push((addr, value, bytes));
        self.set_sp(sp);
        Ok(())
    }

    /// Pops `bytes` (a data read at the memory's current CPL).
    pub fn pop(&mut self, mem: &mut dyn GuestMem, bytes: usize) -> Result<u64, Exception> {
        let sp = self.sp();
        let v = self.peek(mem, sp, bytes)?;
        self.set_sp(sp.wrapping_add(bytes as u64));
        Ok(v)
    }

    /// Reads `bytes` at stack offset `sp` without moving the pointer.
    pub fn peek(&self, mem: &mut dyn GuestMem, sp: u64, bytes: usize) -> Result<u64, Exception> {
        let addr = self.linear(sp)?;
        self.linear(sp.wrapping_add(bytes as u64 - 1))?;
        let mut buf = [0u8; 8];
        mem.read(addr, &mut buf[..bytes.min(8)])?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Moves the pointer up by `bytes` (RET imm16).
    pub fn skip(&mut self, bytes: u64) {
        let sp = self.sp().wrapping_add(bytes);
        self.set_sp(sp);
    }

    /// Writes the collected pushes in order.
    pub fn commit(&self, mem: &mut dyn GuestMem) -> Result<(), Exception> {
        for &(addr, value, bytes) in &self.writes {
            let data = value.to_le_bytes();
            let data = data.get(..bytes).unwrap_or(&data);
            if self.system {
                mem.write_system(addr, data)?;
            } else {
                mem.write(addr, data)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::FlatMem;

    #[test]
    fn descriptor_fields_round_trip_the_state_encoding() {
        let d = Descriptor {
            lo: Segment::code64(0x10).to_descriptor(),
            hi: 0,
        };
        assert!(d.is_code() && d.is_code64() && d.present() && d.readable());
        assert_eq!((d.dpl(), d.limit(), d.base()), (0, 0xffff_ffff, 0));
        let data = Descriptor {
            lo: 0x00cf_f300_0000_ffff,
            hi: 0,
        };
        assert!(data.writable() && data.is_data() && !data.conforming());
        assert_eq!(data.dpl(), 3);
        let s = data.segment(0x2b);
        assert_eq!((s.type_, s.limit, s.db, s.g), (3, 0xffff_ffff, true, true));
    }

    #[test]
    fn wide_system_descriptor_base_and_gate_offset() {
        // A 64-bit TSS at 0xffff_8880_1234_5678, limit 0x67.
        let base: u64 = 0xffff_8880_1234_5678;
        let lo = 0x67 | (base & 0xff_ffff) << 16 | 0x89u64 << 40 | (base >> 24 & 0xff) << 56;
        let d = Descriptor { lo, hi: base >> 32 };
        assert_eq!((d.base(), d.limit(), d.type_()), (base, 0x67, 9));
        let gate = Descriptor {
            lo: 0x1234 | 0x10 << 16 | 0x8e02u64 << 32 | 0xabcdu64 << 48,
            hi: 0xffff_ffff,
        };
        assert_eq!(gate.gate_offset(), 0xffff_ffff_abcd_1234);
        assert_eq!((gate.gate_selector(), gate.gate_ist()), (0x10, 2));
    }

    #[test]
    fn fetch_checks_table_limits_and_ldt() {
        let mut cpu = CpuState::default();
        let mut mem = FlatMem::new(0, 0x1000);
        cpu.gdtr.base = 0x100;
        cpu.gdtr.limit = 0x17;
        mem.write(0x110, &0x00cf_9300_0000_ffffu64.to_le_bytes())
            .unwrap();
        let f = fetch(&cpu, &mut mem, 0x13, false).unwrap().unwrap();
        assert_eq!((f.addr, f.desc.dpl()), (0x110, 0));
        assert_eq!(fetch(&cpu, &mut mem, 0x18, false).unwrap(), None);
        assert_eq!(fetch(&cpu, &mut mem, 0x10, true).unwrap(), None);
        // TI=1 without an LDT.
        assert_eq!(fetch(&cpu, &mut mem, 0x14, false).unwrap(), None);
    }

    #[test]
    fn stack_wraps_at_its_width_and_collects_pushes() {
        let mut s = Stack::new(0x1000, 0xdead_0001, 16, false);
        s.push(0xabcd, 2).unwrap();
        assert_eq!(s.rsp, 0xdead_ffff);
        assert_eq!(s.writes, vec![(0x1000 + 0xffff, 0xabcd, 2)]);
        let mut l = Stack::new(0, 0x0000_8000_0000_0004, 64, false);
        assert_eq!(l.push(1, 8), Err(fault(SS, 0)));
    }
}
