//! ACPI tables for the guest: the smallest set a stock Linux accepts for interrupt routing and
//! S5 power-off (`poweroff`), written into guest RAM the way firmware would leave them.
//!
//! Without ACPI a guest's `poweroff` only halts the CPU. With these tables Linux finds the RSDP
//! by scanning 0xE0000-0xFFFFF (no EFI), follows the XSDT to the FADT (PM1a blocks of
//! [`ringzero_devices::acpi_pm`], SCI on IRQ 9, reset register) and the DSDT, whose only object
//! is `\_S5_`, and registers `acpi_power_off`. The MADT replaces the MP tables the machine never
//! had: one local APIC per CPU and the I/O APIC, so Linux runs in APIC mode.
//!
//! Layout in guest memory (all inside the 0x9fc00-0x100000 range the loaders mark reserved in
//! e820), from [`AcpiLayout::rsdp_addr`] upwards, each table 16-byte aligned (FACS 64):
//!
//! ```text
//! RSDP (v2, 36 bytes) -> XSDT, RSDT -> FADT, MADT
//!                                      FADT -> FACS, DSDT
//! ```
//!
//! Specification references are to ACPI 6.5. Structures are written field by field into byte
//! vectors (no `repr(C)` casts), so every offset below is explicit.

use ringzero_devices::acpi_pm;

use crate::memory::{GuestMemory, MemoryError};

/// Where the RSDP goes: the first 16-byte boundary Linux scans without EFI (0xE0000-0xFFFFF).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End (exclusive) of the area the tables may occupy: the end of the BIOS area.
pub const ACPI_AREA_END: u64 = 0x10_0000;
/// Physical address of every local APIC (the architectural default).
pub const LOCAL_APIC_ADDR: u32 = 0xfee0_0000;
/// Physical address of the I/O APIC (KVM's in-kernel IOAPIC, QEMU, Firecracker).
pub const IO_APIC_ADDR: u32 = 0xfec0_0000;
/// The I/O APIC's ID: what KVM's in-kernel IOAPIC reports in its ID register after reset (0), and
/// what QEMU and Firecracker declare.
pub const IO_APIC_ID: u8 = 0;
/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"RINGZ0";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"RINGZERO";
/// Creator ID in every table header (the "ASL compiler": this module).
const CREATOR_ID: [u8; 4] = *b"RZ0 ";
/// Port of the reset register the FADT declares: reset control at 0xCF9 (PIIX/ICH, as QEMU).
pub const RESET_PORT: u16 = 0xcf9;
/// Value written to [`RESET_PORT`] to reset: SYS_RST | RST_CPU (hard reset), as Linux's
/// `reboot=pci` writes.
pub const RESET_VALUE: u8 = 0x06;

/// Where the tables go and what hardware they describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiLayout {
    /// Guest-physical address of the RSDP (16-byte aligned).
    pub rsdp_addr: u64,
    /// End (exclusive) of the memory the tables may use.
    pub area_end: u64,
    /// Number of CPUs (local APIC IDs and ACPI processor UIDs 0..cpus).
    pub cpus: u8,
    /// Port of the PM1a event block (4 bytes).
    pub pm1a_evt_port: u16,
    /// Port of the PM1a control block (2 bytes).
    pub pm1a_cnt_port: u16,
    /// Port of the 24-bit PM timer (4 bytes), if the machine has one.
    pub pm_tmr_port: Option<u16>,
    /// ISA IRQ of the SCI.
    pub sci_irq: u8,
    /// Reset register (port, value), if the machine has one.
    pub reset: Option<(u16, u8)>,
    /// ISA IRQs that PCI INTx lines drive: each gets a level-triggered, active-high override
    /// (QEMU declares 5, 9, 10 and 11). The SCI always gets one.
    pub pci_intx_irqs: Vec<u8>,
}

impl Default for AcpiLayout {
    /// The ringzero PC: RSDP at 0xE0000, one CPU, the [`acpi_pm`] device's ports, SCI on IRQ 9,
    /// reset through 0xCF9, no PCI INTx lines.
    fn default() -> Self {
        AcpiLayout {
            rsdp_addr: RSDP_ADDR,
            area_end: ACPI_AREA_END,
            cpus: 1,
            pm1a_evt_port: acpi_pm::PM1A_EVT_PORT,
            pm1a_cnt_port: acpi_pm::PM1A_CNT_PORT,
            pm_tmr_port: Some(acpi_pm::PM_TMR_PORT),
            sci_irq: acpi_pm::SCI_IRQ,
            reset: Some((RESET_PORT, RESET_VALUE)),
            pci_intx_irqs: Vec::new(),
        }
    }
}

/// Errors from building or writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the area the layout allows.
    #[error("ACPI tables need {need} bytes at {base:#x}, but the area ends at {end:#x}")]
    NoRoom {
        /// Bytes needed.
        need: u64,
        /// Where they would start.
        base: u64,
        /// End of the allowed area.
        end: u64,
    },
    /// The layout cannot be described (zero CPUs, misaligned RSDP, tables above 4 GiB...).
    #[error("invalid ACPI layout: {0}")]
    Layout(&'static str),
    /// The area is not guest RAM.
    #[error("writing ACPI tables: {0}")]
    Memory(#[from] MemoryError),
}

/// Writes RSDP, XSDT, RSDT, FADT, FACS, DSDT and MADT into `mem`; returns the RSDP's address.
///
/// Call it after the loader has placed the guest (loaders leave 0x9fc00-0x100000 alone).
pub fn write_tables(mem: &GuestMemory, layout: &AcpiLayout) -> Result<u64, AcpiError> {
    let image = build_tables(layout)?;
    mem.write(layout.rsdp_addr, &image)?;
    log::debug!(
        "ACPI tables: {} bytes at {:#x} (RSDP)",
        image.len(),
        layout.rsdp_addr
    );
    Ok(layout.rsdp_addr)
}

/// The tables as one byte image to be placed at `layout.rsdp_addr`.
pub fn build_tables(layout: &AcpiLayout) -> Result<Vec<u8>, AcpiError> {
    if layout.cpus == 0 {
        return Err(AcpiError::Layout("no CPUs"));
    }
    if layout.cpus == u8::MAX {
        // 0xFF is the "all processors" UID in the local APIC NMI entry.
        return Err(AcpiError::Layout("at most 254 CPUs"));
    }
    if !layout.rsdp_addr.is_multiple_of(16) {
        return Err(AcpiError::Layout("the RSDP must be 16-byte aligned"));
    }
    if layout.area_end > 1 << 32 {
        return Err(AcpiError::Layout("the RSDT needs every table below 4 GiB"));
    }
    if layout.sci_irq >= 16 || layout.pci_intx_irqs.iter().any(|&i| i >= 16) {
        return Err(AcpiError::Layout(
            "the SCI and PCI INTx lines must be ISA IRQs 0-15",
        ));
    }

    let dsdt = dsdt();
    let madt = madt(layout);
    let mut next = layout.rsdp_addr;
    let mut take = |len: usize, align: u64| {
        let at = next.next_multiple_of(align);
        next = at + len as u64;
        at
    };
    let rsdp_at = take(RSDP_LEN, 16);
    let xsdt_at = take(HEADER_LEN + 8 * 2, 16);
    let rsdt_at = take(HEADER_LEN + 4 * 2, 16);
    let fadt_at = take(FADT_LEN, 16);
    let facs_at = take(FACS_LEN, 64);
    let dsdt_at = take(dsdt.len(), 16);
    let madt_at = take(madt.len(), 16);
    if next > layout.area_end {
        return Err(AcpiError::NoRoom {
            need: next - layout.rsdp_addr,
            base: layout.rsdp_addr,
            end: layout.area_end,
        });
    }

    let pieces = [
        (rsdp_at, rsdp(rsdt_at, xsdt_at)),
        (xsdt_at, sdt(b"XSDT", &[fadt_at, madt_at], 8)),
        (rsdt_at, sdt(b"RSDT", &[fadt_at, madt_at], 4)),
        (fadt_at, fadt(layout, facs_at, dsdt_at)),
        (facs_at, facs()),
        (dsdt_at, dsdt),
        (madt_at, madt),
    ];
    let mut image = vec![0u8; (next - layout.rsdp_addr) as usize];
    for (at, bytes) in pieces {
        let start = (at - layout.rsdp_addr) as usize;
        if let Some(dst) = image.get_mut(start..start + bytes.len()) {
            dst.copy_from_slice(&bytes);
        }
    }
    Ok(image)
}

/// Length of an ACPI 2.0+ RSDP.
const RSDP_LEN: usize = 36;
/// Bytes of the RSDP covered by the ACPI 1.0 checksum.
const RSDP_V1_LEN: usize = 20;
/// Length of the common system description table header.
const HEADER_LEN: usize = 36;
/// Length of a revision-6 FADT (ACPI 6.0 and later).
const FADT_LEN: usize = 276;
/// Length of the FACS.
const FACS_LEN: usize = 64;

/// Byte offsets of the fields this module sets (ACPI 6.5 §5.2.9, table 5.9).
mod fadt_off {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const SMI_CMD: usize = 48;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const PM_TMR_LEN: usize = 91;
    pub const P_LVL2_LAT: usize = 96;
    pub const P_LVL3_LAT: usize = 98;
    pub const CENTURY: usize = 108;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_FIRMWARE_CTRL: usize = 132;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const X_PM_TMR_BLK: usize = 208;
}

/// FADT `Flags` bits (table 5.10).
mod fadt_flags {
    /// WBINVD flushes all caches (required on IA-PC).
    pub const WBINVD: u32 = 1 << 0;
    /// C1 (HLT) works on every processor.
    pub const PROC_C1: u32 = 1 << 2;
    /// No sleep button (the power button is a fixed feature: PWR_BUTTON clear).
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// RTC wake status is not in the fixed register space (our RTC has no ACPI wake).
    pub const FIX_RTC: u32 = 1 << 6;
    /// The reset register is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    // HW_REDUCED_ACPI (bit 20) stays clear: the machine has PM1 blocks and an SCI.
}

/// FADT `IAPC_BOOT_ARCH` bits (table 5.11).
mod boot_arch {
    /// Legacy (ISA/LPC) devices such as the UART and RTC are present; Linux keeps the RTC.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller is present; Linux probes the i8042 (and resets through it).
    pub const I8042: u16 = 1 << 1;
    /// No VGA: the guest must not probe 0xA0000/0x3C0 (it is reserved RAM here).
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
}

/// `\_S5_` as AML: `Name (_S5_, Package (4) { 5, 5, 0, 0 })` (ACPI 6.5 §7.4.2, §20.2).
const S5_AML: [u8; 14] = [
    0x08, // NameOp
    b'_',
    b'S',
    b'5',
    b'_', // NameSeg "_S5_" (root scope: a DSDT's top level)
    0x12, // PackageOp
    0x08, // PkgLength: 8 bytes from here to the end (1-byte encoding, bits 7-6 = 0)
    0x04, // NumElements: 4
    0x0a,
    acpi_pm::SLP_TYP_S5, // BytePrefix 5: SLP_TYPa for PM1a_CNT
    0x0a,
    acpi_pm::SLP_TYP_S5, // BytePrefix 5: SLP_TYPb (no PM1b block; same value by custom)
    0x00,                // ZeroOp: reserved
    0x00,                // ZeroOp: reserved
];

/// MADT interrupt source override flags: active high (bits 1-0 = 01), level (bits 3-2 = 11).
const MPS_ACTIVE_HIGH_LEVEL: u16 = 0x000d;

/// Sets the checksum byte at `at` so that all of `bytes` sums to zero (mod 256).
fn set_checksum(bytes: &mut [u8], at: usize) {
    if let Some(b) = bytes.get_mut(at) {
        *b = 0;
    }
    let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    if let Some(b) = bytes.get_mut(at) {
        *b = sum.wrapping_neg();
    }
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = bytes.get_mut(at..at + value.len()) {
        dst.copy_from_slice(value);
    }
}

/// A table with its header filled in (length and checksum are set by [`finish`]).
fn table(signature: &[u8; 4], revision: u8, len: usize) -> Vec<u8> {
    let mut t = vec![0u8; len];
    put(&mut t, 0, signature);
    t[8] = revision;
    put(&mut t, 10, &OEM_ID);
    put(&mut t, 16, &OEM_TABLE_ID);
    put(&mut t, 24, &1u32.to_le_bytes()); // OEM revision
    put(&mut t, 28, &CREATOR_ID);
    put(&mut t, 32, &1u32.to_le_bytes()); // creator revision
    t
}

/// Sets the header's length and checksum once the body is complete.
fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    put(&mut t, 4, &len.to_le_bytes());
    set_checksum(&mut t, 9);
    t
}

/// Root System Description Pointer, revision 2 (§5.2.5.3).
fn rsdp(rsdt: u64, xsdt: u64) -> Vec<u8> {
    let mut r = vec![0u8; RSDP_LEN];
    put(&mut r, 0, b"RSD PTR ");
    put(&mut r, 9, &OEM_ID);
    r[15] = 2; // revision: ACPI 2.0+ (XSDT present)
    put(&mut r, 16, &(rsdt as u32).to_le_bytes());
    put(&mut r, 20, &(RSDP_LEN as u32).to_le_bytes());
    put(&mut r, 24, &xsdt.to_le_bytes());
    if let Some(v1) = r.get_mut(..RSDP_V1_LEN) {
        set_checksum(v1, 8);
    }
    set_checksum(&mut r, 32); // extended checksum over all 36 bytes
    r
}

/// XSDT (8-byte entries) or RSDT (4-byte entries) pointing at `tables` (§5.2.7, §5.2.8).
fn sdt(signature: &[u8; 4], tables: &[u64], entry_size: usize) -> Vec<u8> {
    let mut t = table(signature, 1, HEADER_LEN + entry_size * tables.len());
    for (i, &addr) in tables.iter().enumerate() {
        let bytes = addr.to_le_bytes();
        put(&mut t, HEADER_LEN + i * entry_size, &bytes[..entry_size]);
    }
    finish(t)
}

/// Generic Address Structure for an I/O port register (§5.2.3.2): "register" form (bit offset
/// 0, bit width 8/16/32), which ACPICA accesses at the bit width.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // address space: system I/O
    g[1] = bit_width;
    g[2] = 0; // bit offset
    g[3] = access_size; // 1 byte, 2 word, 3 dword
    put(&mut g, 4, &u64::from(port).to_le_bytes());
    g
}

/// Fixed ACPI Description Table, revision 6.5 (§5.2.9).
fn fadt(layout: &AcpiLayout, facs: u64, dsdt: u64) -> Vec<u8> {
    use fadt_off as o;
    let mut t = table(b"FACP", 6, FADT_LEN);
    put(&mut t, o::FIRMWARE_CTRL, &(facs as u32).to_le_bytes());
    put(&mut t, o::DSDT, &(dsdt as u32).to_le_bytes());
    // Preferred_PM_Profile (45) stays 0: unspecified.
    put(&mut t, o::SCI_INT, &u16::from(layout.sci_irq).to_le_bytes());
    // SMI_CMD = 0: no SMI command port, the hardware is always in ACPI mode (SCI_EN reads 1),
    // so ACPI_ENABLE/ACPI_DISABLE (52, 53) stay 0 too.
    put(&mut t, o::SMI_CMD, &0u32.to_le_bytes());
    put(
        &mut t,
        o::PM1A_EVT_BLK,
        &u32::from(layout.pm1a_evt_port).to_le_bytes(),
    );
    put(
        &mut t,
        o::PM1A_CNT_BLK,
        &u32::from(layout.pm1a_cnt_port).to_le_bytes(),
    );
    t[o::PM1_EVT_LEN] = acpi_pm::PM1_EVT_LEN;
    t[o::PM1_CNT_LEN] = acpi_pm::PM1_CNT_LEN;
    // No PM1b, PM2 or GPE blocks: their addresses and lengths stay 0.
    // C2/C3 latencies above 100/1000 us mean "not supported".
    put(&mut t, o::P_LVL2_LAT, &0x0fffu16.to_le_bytes());
    put(&mut t, o::P_LVL3_LAT, &0x0fffu16.to_le_bytes());
    // DAY_ALRM/MON_ALRM (106, 107) stay 0: no RTC date alarm.
    t[o::CENTURY] = 0x32; // CMOS index of the RTC's century byte
    let arch = boot_arch::LEGACY_DEVICES | boot_arch::I8042 | boot_arch::VGA_NOT_PRESENT;
    put(&mut t, o::IAPC_BOOT_ARCH, &arch.to_le_bytes());
    let mut flags =
        fadt_flags::WBINVD | fadt_flags::PROC_C1 | fadt_flags::SLP_BUTTON | fadt_flags::FIX_RTC;
    if let Some((port, value)) = layout.reset {
        flags |= fadt_flags::RESET_REG_SUP;
        put(&mut t, o::RESET_REG, &gas_io(port, 8, 1));
        t[o::RESET_VALUE] = value;
    }
    put(&mut t, o::FLAGS, &flags.to_le_bytes());
    t[o::MINOR_VERSION] = 5; // ACPI 6.5
                             // The 64-bit pointers repeat the 32-bit ones (ACPICA warns when both are set and differ).
    put(&mut t, o::X_FIRMWARE_CTRL, &facs.to_le_bytes());
    put(&mut t, o::X_DSDT, &dsdt.to_le_bytes());
    let evt_bits = acpi_pm::PM1_EVT_LEN * 8;
    put(
        &mut t,
        o::X_PM1A_EVT_BLK,
        &gas_io(layout.pm1a_evt_port, evt_bits, 2),
    );
    let cnt_bits = acpi_pm::PM1_CNT_LEN * 8;
    put(
        &mut t,
        o::X_PM1A_CNT_BLK,
        &gas_io(layout.pm1a_cnt_port, cnt_bits, 2),
    );
    if let Some(port) = layout.pm_tmr_port {
        put(&mut t, o::PM_TMR_BLK, &u32::from(port).to_le_bytes());
        t[o::PM_TMR_LEN] = acpi_pm::PM_TMR_LEN;
        // TMR_VAL_EXT stays clear: the counter is 24 bits wide.
        put(
            &mut t,
            o::X_PM_TMR_BLK,
            &gas_io(port, acpi_pm::PM_TMR_LEN * 8, 3),
        );
    }
    // SLEEP_CONTROL_REG/SLEEP_STATUS_REG (244, 256) are for hardware-reduced ACPI: left 0.
    finish(t)
}

/// Firmware ACPI Control Structure (§5.2.10): no waking vector, global lock free. It has no
/// checksum. Linux needs it on full (not hardware-reduced) ACPI hardware for the global lock.
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; FACS_LEN];
    put(&mut f, 0, b"FACS");
    put(&mut f, 4, &(FACS_LEN as u32).to_le_bytes());
    f[32] = 2; // version
    f
}

/// Differentiated System Description Table: only `\_S5_` (§5.2.11.1).
fn dsdt() -> Vec<u8> {
    // Revision 2: integers in AML are 64 bits wide.
    let mut t = table(b"DSDT", 2, HEADER_LEN + S5_AML.len());
    put(&mut t, HEADER_LEN, &S5_AML);
    finish(t)
}

/// Multiple APIC Description Table (§5.2.12).
///
/// Interrupt source overrides: none for IRQ 0. KVM's default GSI routing (which the KVM
/// backend keeps: it never calls `KVM_SET_GSI_ROUTING`) sends GSI n to IOAPIC pin n, and the
/// in-kernel PIT raises GSI 0, so ISA IRQ 0 really is on pin 0; Firecracker, with the same
/// routing, declares no override either. QEMU's IRQ0 -> GSI 2 override matches QEMU's own
/// routing table (`kvm_pc_setup_irq_routing` moves GSI 0 to pin 2), which we do not install.
/// The SCI (and any PCI INTx IRQ) gets the level-triggered, active-high override QEMU
/// declares: the device drives the line high while asserted, and without an override Linux
/// would program the ACPI default for the SCI, active-low.
fn madt(layout: &AcpiLayout) -> Vec<u8> {
    let mut body = Vec::new();
    for cpu in 0..layout.cpus {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (bit 0: enabled).
        body.extend_from_slice(&[0, 8, cpu, cpu]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
    body.extend_from_slice(&[1, 12, IO_APIC_ID, 0]);
    body.extend_from_slice(&IO_APIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut level_irqs = vec![layout.sci_irq];
    for &irq in &layout.pci_intx_irqs {
        if !level_irqs.contains(&irq) {
            level_irqs.push(irq);
        }
    }
    level_irqs.sort_unstable();
    for irq in level_irqs {
        // Interrupt Source Override: type 2, length 10, bus 0 (ISA), source, GSI, flags.
        body.extend_from_slice(&[2, 10, 0, irq]);
        body.extend_from_slice(&u32::from(irq).to_le_bytes());
        body.extend_from_slice(&MPS_ACTIVE_HIGH_LEVEL.to_le_bytes());
    }
    // Local APIC NMI: type 4, length 6, all processors (0xFF), flags 0 (bus default), LINT1:
    // the PC wiring of NMI to every local APIC, as QEMU declares it.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);

    let mut t = table(b"APIC", 5, HEADER_LEN + 8 + body.len());
    put(&mut t, HEADER_LEN, &LOCAL_APIC_ADDR.to_le_bytes());
    put(&mut t, HEADER_LEN + 4, &1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259 present
    put(&mut t, HEADER_LEN + 8, &body);
    finish(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mem() -> GuestMemory {
        GuestMemory::new(2 * MIB).unwrap()
    }

    fn bytes(m: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        m.read(addr, &mut b).unwrap();
        b
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Reads a whole table at `addr`, checking its signature, length, checksum and header ids.
    fn table_at(m: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        assert!(
            (RSDP_ADDR..ACPI_AREA_END).contains(&addr),
            "{signature:?} at {addr:#x} outside the reserved BIOS area"
        );
        let head = bytes(m, addr, HEADER_LEN);
        assert_eq!(&head[..4], signature);
        let len = u32_at(&head, 4) as usize;
        assert!(addr + len as u64 <= ACPI_AREA_END);
        let t = bytes(m, addr, len);
        assert_eq!(sum(&t), 0, "{signature:?} checksum");
        assert_eq!(&t[10..16], &OEM_ID);
        assert_eq!(&t[16..24], &OEM_TABLE_ID);
        t
    }

    struct Parsed {
        xsdt_entries: Vec<u64>,
        rsdt_entries: Vec<u64>,
        fadt: Vec<u8>,
        fadt_addr: u64,
        madt: Vec<u8>,
    }

    /// Follows the tables from the RSDP the way an OS does.
    fn parse(m: &GuestMemory, rsdp_addr: u64) -> Parsed {
        let rsdp = bytes(m, rsdp_addr, RSDP_LEN);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(&rsdp[9..15], &OEM_ID);
        let xsdt = table_at(m, u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table_at(m, u64::from(u32_at(&rsdp, 16)), b"RSDT");
        let xsdt_entries: Vec<u64> = (HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let rsdt_entries: Vec<u64> = (HEADER_LEN..rsdt.len())
            .step_by(4)
            .map(|o| u64::from(u32_at(&rsdt, o)))
            .collect();
        let find = |sig: &[u8; 4]| {
            let hits: Vec<u64> = xsdt_entries
                .iter()
                .copied()
                .filter(|&a| &bytes(m, a, 4)[..] == sig)
                .collect();
            assert_eq!(hits.len(), 1, "{sig:?} in the XSDT");
            hits[0]
        };
        let fadt_addr = find(b"FACP");
        let fadt = table_at(m, fadt_addr, b"FACP");
        let madt = table_at(m, find(b"APIC"), b"APIC");
        Parsed {
            xsdt_entries,
            rsdt_entries,
            fadt,
            fadt_addr,
            madt,
        }
    }

    fn gas(b: &[u8], at: usize) -> (u8, u8, u8, u8, u64) {
        (b[at], b[at + 1], b[at + 2], b[at + 3], u64_at(b, at + 4))
    }

    #[test]
    fn rsdp_sits_where_linux_scans_and_both_roots_list_the_same_tables() {
        let m = mem();
        let at = write_tables(&m, &AcpiLayout::default()).unwrap();
        assert_eq!(at, RSDP_ADDR);
        assert_eq!(at % 16, 0);
        let p = parse(&m, at);
        assert_eq!(p.xsdt_entries.len(), 2);
        assert_eq!(p.xsdt_entries, p.rsdt_entries);
    }

    #[test]
    fn fadt_describes_the_pm_device_sci_and_legacy_hardware() {
        use fadt_off as o;
        let m = mem();
        write_tables(&m, &AcpiLayout::default()).unwrap();
        let f = parse(&m, RSDP_ADDR).fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "revision");
        assert_eq!(f[o::MINOR_VERSION], 5);
        assert_eq!(u16_at(&f, o::SCI_INT), 9);
        assert_eq!(u32_at(&f, o::SMI_CMD), 0, "always in ACPI mode");
        assert_eq!(
            u32_at(&f, o::PM1A_EVT_BLK),
            u32::from(acpi_pm::PM1A_EVT_PORT)
        );
        assert_eq!(u32_at(&f, o::PM1A_EVT_BLK), 0x600);
        assert_eq!(u32_at(&f, o::PM1A_CNT_BLK), 0x604);
        assert_eq!(u32_at(&f, o::PM_TMR_BLK), 0x608);
        assert_eq!(
            (f[o::PM1_EVT_LEN], f[o::PM1_CNT_LEN], f[o::PM_TMR_LEN]),
            (4, 2, 4)
        );
        assert_eq!(gas(&f, o::X_PM1A_EVT_BLK), (1, 32, 0, 2, 0x600));
        assert_eq!(gas(&f, o::X_PM1A_CNT_BLK), (1, 16, 0, 2, 0x604));
        assert_eq!(gas(&f, o::X_PM_TMR_BLK), (1, 32, 0, 3, 0x608));
        // No PM1b/PM2/GPE blocks (legacy addresses 60, 68, 72, 80, 84; X_ blocks 160, 184,
        // 196, 220, 232) and no hardware-reduced sleep registers (244, 256).
        for at in [60, 68, 72, 80, 84] {
            assert_eq!(u32_at(&f, at), 0, "offset {at}");
        }
        for at in [160, 184, 196, 220, 232, 244, 256] {
            assert_eq!(f[at..at + 12], [0; 12], "offset {at}");
        }
        let flags = u32_at(&f, o::FLAGS);
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
        assert_eq!(flags & (1 << 4), 0, "fixed-feature power button");
        assert_eq!(flags & (1 << 8), 0, "24-bit PM timer");
        assert_ne!(flags & fadt_flags::WBINVD, 0);
        assert_ne!(flags & fadt_flags::RESET_REG_SUP, 0);
        assert_eq!(gas(&f, o::RESET_REG), (1, 8, 0, 1, 0xcf9));
        assert_eq!(f[o::RESET_VALUE], 0x06);
        let arch = u16_at(&f, o::IAPC_BOOT_ARCH);
        assert_eq!(arch & 0b11, 0b11, "legacy devices and 8042");
        assert_eq!(arch & (1 << 5), 0, "CMOS RTC present");
        assert_eq!(f[o::CENTURY], 0x32);
    }

    #[test]
    fn fadt_points_at_facs_and_dsdt_with_matching_32_and_64_bit_fields() {
        use fadt_off as o;
        let m = mem();
        write_tables(&m, &AcpiLayout::default()).unwrap();
        let f = parse(&m, RSDP_ADDR).fadt;
        let facs = u64::from(u32_at(&f, o::FIRMWARE_CTRL));
        assert_eq!(u64_at(&f, o::X_FIRMWARE_CTRL), facs);
        assert_eq!(facs % 64, 0, "FACS alignment");
        let facs_bytes = bytes(&m, facs, 64);
        assert_eq!(&facs_bytes[..4], b"FACS");
        assert_eq!(u32_at(&facs_bytes, 4), 64);
        assert_eq!(u32_at(&facs_bytes, 16), 0, "global lock free");
        assert_eq!(facs_bytes[32], 2, "version");

        let dsdt = u64::from(u32_at(&f, o::DSDT));
        assert_eq!(u64_at(&f, o::X_DSDT), dsdt);
        let d = table_at(&m, dsdt, b"DSDT");
        assert_eq!(d[8], 2, "revision 2: 64-bit AML integers");
        assert_eq!(
            d[HEADER_LEN..],
            [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0x00, 0x00]
        );
    }

    #[test]
    fn s5_aml_package_length_and_sleep_type_match_the_device() {
        // PkgLength counts itself, NumElements and the elements: everything after PackageOp.
        let package_op = S5_AML.iter().position(|&b| b == 0x12).unwrap();
        assert_eq!(
            usize::from(S5_AML[package_op + 1]),
            S5_AML.len() - package_op - 1
        );
        assert!(S5_AML[package_op + 1] < 0x40, "one-byte PkgLength encoding");
        assert_eq!(S5_AML[package_op + 3], 0x0a);
        assert_eq!(S5_AML[package_op + 4], acpi_pm::SLP_TYP_S5);
    }

    /// MADT entries as (type, bytes).
    fn madt_entries(t: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = HEADER_LEN + 8;
        while at < t.len() {
            let len = usize::from(t[at + 1]);
            assert!(len >= 2 && at + len <= t.len(), "entry at {at}");
            out.push((t[at], t[at..at + len].to_vec()));
            at += len;
        }
        out
    }

    #[test]
    fn madt_has_the_cpu_the_ioapic_and_only_the_sci_override() {
        let m = mem();
        write_tables(&m, &AcpiLayout::default()).unwrap();
        let t = parse(&m, RSDP_ADDR).madt;
        assert_eq!(u32_at(&t, HEADER_LEN), 0xfee0_0000);
        assert_eq!(u32_at(&t, HEADER_LEN + 4), 1, "PCAT_COMPAT");
        let entries = madt_entries(&t);
        let types: Vec<u8> = entries.iter().map(|(ty, _)| *ty).collect();
        assert_eq!(types, [0, 1, 2, 4]);
        assert_eq!(entries[0].1, [0, 8, 0, 0, 1, 0, 0, 0], "CPU 0 enabled");
        let io = &entries[1].1;
        assert_eq!((io[1], io[2]), (12, IO_APIC_ID));
        assert_eq!(u32_at(io, 4), 0xfec0_0000);
        assert_eq!(u32_at(io, 8), 0, "GSI base");
        let iso = &entries[2].1;
        assert_eq!((iso[1], iso[2], iso[3]), (10, 0, 9), "ISA IRQ 9");
        assert_eq!(u32_at(iso, 4), 9, "GSI 9");
        assert_eq!(u16_at(iso, 8), 0x000d, "active high, level");
        assert_eq!(entries[3].1, [4, 6, 0xff, 0, 0, 1], "NMI on LINT1");
    }

    #[test]
    fn madt_lists_every_cpu_and_each_pci_irq_once() {
        let m = mem();
        let layout = AcpiLayout {
            cpus: 4,
            pci_intx_irqs: vec![11, 9, 10, 11],
            ..AcpiLayout::default()
        };
        write_tables(&m, &layout).unwrap();
        let entries = madt_entries(&parse(&m, RSDP_ADDR).madt);
        let cpus: Vec<(u8, u8)> = entries
            .iter()
            .filter(|(ty, _)| *ty == 0)
            .map(|(_, e)| (e[2], e[3]))
            .collect();
        assert_eq!(cpus, [(0, 0), (1, 1), (2, 2), (3, 3)]);
        let isos: Vec<u8> = entries
            .iter()
            .filter(|(ty, _)| *ty == 2)
            .map(|(_, e)| e[3])
            .collect();
        assert_eq!(isos, [9, 10, 11]);
    }

    #[test]
    fn without_pm_timer_or_reset_register_those_fields_are_zero() {
        use fadt_off as o;
        let m = mem();
        let layout = AcpiLayout {
            pm_tmr_port: None,
            reset: None,
            ..AcpiLayout::default()
        };
        write_tables(&m, &layout).unwrap();
        let p = parse(&m, RSDP_ADDR);
        let f = &p.fadt;
        assert_eq!(u32_at(f, o::PM_TMR_BLK), 0);
        assert_eq!(f[o::PM_TMR_LEN], 0);
        assert_eq!(f[o::X_PM_TMR_BLK..o::X_PM_TMR_BLK + 12], [0; 12]);
        assert_eq!(u32_at(f, o::FLAGS) & fadt_flags::RESET_REG_SUP, 0);
        assert_eq!(f[o::RESET_REG..o::RESET_REG + 12], [0; 12]);
        assert!(p.fadt_addr > RSDP_ADDR);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let m = mem();
        let small = AcpiLayout {
            area_end: RSDP_ADDR + 0x100,
            ..AcpiLayout::default()
        };
        assert!(matches!(
            write_tables(&m, &small),
            Err(AcpiError::NoRoom {
                base: RSDP_ADDR,
                ..
            })
        ));
        for layout in [
            AcpiLayout {
                cpus: 0,
                ..AcpiLayout::default()
            },
            AcpiLayout {
                rsdp_addr: RSDP_ADDR + 8,
                ..AcpiLayout::default()
            },
            AcpiLayout {
                sci_irq: 16,
                ..AcpiLayout::default()
            },
            AcpiLayout {
                area_end: 1 << 33,
                ..AcpiLayout::default()
            },
        ] {
            assert!(
                matches!(write_tables(&m, &layout), Err(AcpiError::Layout(_))),
                "{layout:?}"
            );
        }
        let beyond_ram = AcpiLayout {
            rsdp_addr: 4 * MIB,
            area_end: 5 * MIB,
            ..AcpiLayout::default()
        };
        assert!(matches!(
            write_tables(&m, &beyond_ram),
            Err(AcpiError::Memory(_))
        ));
    }

    #[test]
    fn everything_fits_in_one_small_block_after_the_rsdp() {
        let image = build_tables(&AcpiLayout::default()).unwrap();
        assert!(image.len() < 1024, "{} bytes", image.len());
        assert_eq!(&image[..8], b"RSD PTR ");
    }
}
