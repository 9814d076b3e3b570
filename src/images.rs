//! Guest images written in this project (`test-images/`), assembled by `build.rs` at build time.
//!
//! They are the machine's smoke tests and demo: small enough to run under both backends on a
//! software hypervisor, deterministic so their serial output can be compared byte for byte, and
//! self-checking so a wrong answer shows up as a failing debug-exit status. Their memory maps,
//! output formats and exit values are documented next to the sources and in
//! `docs/demo-guest.md`.

use ringzero_devices::debug_exit::exit_status;

/// The demo guest: a flat image entered in real mode that goes through protected mode, long mode,
/// PIT interrupts and a ring-3 compute kernel (`test-images/demo/`).
pub const DEMO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.bin"));

/// Guest-physical address the demo is linked for and must be loaded at (entry 0000:8000).
pub const DEMO_LOAD_ADDR: u64 = 0x8000;

/// Everything the demo prints on COM1 when it works, byte for byte.
pub const DEMO_EXPECTED_OUTPUT: &str = include_str!("../test-images/demo/expected-output.txt");

/// Debug-exit value the demo writes after printing its last line.
pub const DEMO_EXIT_VALUE: u32 = 0x10;

/// Process exit status of a successful demo run: `(0x10 << 1) | 1` = 33.
pub const DEMO_EXIT_STATUS: i32 = exit_status(DEMO_EXIT_VALUE) as i32;

/// Debug-exit value the demo writes when an unexpected exception reaches its handler.
pub const DEMO_EXIT_EXCEPTION: u32 = 0x11;

/// Debug-exit value the demo writes when one of its self-checks fails.
pub const DEMO_EXIT_CHECK_FAILED: u32 = 0x12;

/// The Multiboot v1 test kernel: an ELF32 linked at 1 MiB (`test-images/multiboot/`).
pub const MULTIBOOT_TEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot.elf"));

/// Debug-exit value of the Multiboot kernel when every check passed (any failure writes 1).
pub const MULTIBOOT_EXIT_VALUE: u32 = 0;

/// Process exit status of a passing Multiboot kernel run: 1.
pub const MULTIBOOT_EXIT_STATUS: i32 = exit_status(MULTIBOOT_EXIT_VALUE) as i32;

/// The flat real-mode test image (`test-images/flat/`).
pub const FLAT_TEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flat.bin"));

/// Load address of the flat test: above 64 KiB, so it is entered at 1000:0000 (segment != 0).
pub const FLAT_TEST_LOAD_ADDR: u64 = 0x10000;

/// Everything the flat test prints on COM1 when it works.
pub const FLAT_EXPECTED_OUTPUT: &str = include_str!("../test-images/flat/expected-output.txt");

/// Debug-exit value of the flat test when every check passed (a failure writes 0x09).
pub const FLAT_EXIT_VALUE: u32 = 0x08;

/// Process exit status of a passing flat test run: 17.
pub const FLAT_EXIT_STATUS: i32 = exit_status(FLAT_EXIT_VALUE) as i32;

/// The ACPI power-off test: a Multiboot ELF32 at 1 MiB that finds the RSDP, FADT and DSDT,
/// reads `\_S5_` and writes SLP_TYP | SLP_EN to PM1a_CNT (`test-images/acpi/`).
pub const ACPI_TEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/acpi.elf"));

/// Everything the ACPI test prints on COM1 before the machine powers off, for the tables
/// `crate::acpi::write_tables` writes with the default layout.
pub const ACPI_TEST_EXPECTED_OUTPUT: &str = include_str!("../test-images/acpi/expected-output.txt");

/// Process exit status of a passing ACPI test run: the guest powered off (status 0).
pub const ACPI_TEST_EXIT_STATUS: i32 = crate::cli::status::OK as i32;

/// Debug-exit value the ACPI test writes when a step fails or the machine survives S5.
pub const ACPI_TEST_EXIT_FAILED: u32 = 1;

/// Process exit status of a failing ACPI test run: `(1 << 1) | 1` = 3.
pub const ACPI_TEST_FAIL_STATUS: i32 = exit_status(ACPI_TEST_EXIT_FAILED) as i32;

/// The system test images (`test-images/systests/`): Multiboot ELF32 kernels that print
/// `PASS: <check>` / `FAIL: <check> ...` lines and `SUMMARY: <passed>/<total>` on COM1, then
/// exit through isa-debug-exit with [`SYSTEST_EXIT_VALUE`] (all passed) or 1. In README order.
pub const SYSTESTS: &[(&str, &[u8])] = &[
    (
        "modes",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_modes.elf")),
    ),
    (
        "exceptions",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_exceptions.elf")),
    ),
    (
        "paging",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_paging.elf")),
    ),
    (
        "smc",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_smc.elf")),
    ),
    (
        "syscall",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_syscall.elf")),
    ),
    (
        "interrupts",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_interrupts.elf")),
    ),
    (
        "fpu",
        include_bytes!(concat!(env!("OUT_DIR"), "/systest_fpu.elf")),
    ),
];

/// Debug-exit value of a system test image when every check passed (a failure writes 1).
pub const SYSTEST_EXIT_VALUE: u32 = 0;

/// Process exit status of a system test image whose checks all passed: 1.
pub const SYSTEST_EXIT_STATUS: i32 = exit_status(SYSTEST_EXIT_VALUE) as i32;

/// Process exit status of a system test image with at least one failed check: 3.
pub const SYSTEST_FAIL_STATUS: i32 = exit_status(1) as i32;

/// The fuzz kernel (`test-images/systests/fuzz.S`): runs the bytes of its first Multiboot
/// module at ring 0 or 3 (`--append ring0|ring3 [compat]`), prints one `FUZZ:` line per fault
/// and `FUZZ-DONE faults=<n>`, then exits with [`FUZZ_EXIT_VALUE`]. Not in [`SYSTESTS`].
pub const FUZZ_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/systest_fuzz.elf"));

/// Debug-exit value of the fuzz kernel after `FUZZ-DONE`.
pub const FUZZ_EXIT_VALUE: u32 = 0x21;

/// Process exit status of a fuzz kernel run that reached `FUZZ-DONE`: 67.
pub const FUZZ_EXIT_STATUS: i32 = exit_status(FUZZ_EXIT_VALUE) as i32;

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_SOURCE: &str = include_str!("../test-images/demo/demo.S");

    /// The value of `.equ name, value` in the demo's source.
    fn demo_equ(name: &str) -> u64 {
        let prefix = format!(".equ {name},");
        let line = DEMO_SOURCE
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{name} not defined in demo.S"));
        let value = line[prefix.len()..].split('#').next().unwrap_or("").trim();
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"))
    }

    /// A Rust transcription of the ring-3 kernel (checksum.py is the primary reference).
    fn reference_checksum(words: usize, rounds: u64, seed: u64, basis: u64, prime: u64) -> u64 {
        let mut x = seed;
        let mut buf = Vec::with_capacity(words);
        for _ in 0..words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u32);
        }
        let mut h = basis;
        for r in 0..rounds {
            for i in 0..words {
                let a = buf[i];
                let b = buf[a as usize & (words - 1)];
                h = (h ^ u64::from(a)).wrapping_mul(prime);
                buf[i] = if a & 1 == 1 {
                    a.wrapping_add(b.wrapping_mul(3))
                } else {
                    (a >> 3) ^ b
                };
            }
            let d = 2 * r + 3;
            h = h.wrapping_add((h / d) ^ (h % d));
            h = h.rotate_left((r & 63) as u32);
        }
        h ^ buf.iter().map(|&w| u64::from(w)).sum::<u64>()
    }

    #[test]
    fn demo_checksum_line_matches_the_kernel_in_demo_s() {
        let words = demo_equ("N_WORDS");
        assert!(words.is_power_of_two());
        let sum = reference_checksum(
            words as usize,
            demo_equ("ROUNDS"),
            demo_equ("XORSHIFT_SEED"),
            demo_equ("FNV_BASIS"),
            demo_equ("FNV_PRIME"),
        );
        let line = format!("demo: checksum=0x{sum:016x}\n");
        assert!(
            DEMO_EXPECTED_OUTPUT.contains(&line),
            "expected-output.txt lacks {line:?}"
        );
    }

    #[test]
    fn demo_expected_output_is_fixed_text() {
        let lines: Vec<_> = DEMO_EXPECTED_OUTPUT.lines().collect();
        assert_eq!(lines.len(), 10);
        assert!(lines.iter().all(|l| l.starts_with("demo: ")));
        assert!(DEMO_EXPECTED_OUTPUT.ends_with("demo: all stages passed\n"));
        assert!(DEMO_EXPECTED_OUTPUT.is_ascii());
    }

    #[test]
    fn demo_is_a_small_real_mode_image_at_its_load_address() {
        assert!(
            !DEMO.is_empty() && DEMO.len() < 16 * 1024,
            "{} bytes",
            DEMO.len()
        );
        assert_eq!(DEMO[0], 0xFA, "first instruction is cli");
        // 16 KiB at most: 0xc000-0xffff stays free for the real-mode stack (pushes from 0xfffe).
        assert!(DEMO_LOAD_ADDR + DEMO.len() as u64 <= 0xC000);
        assert_eq!(demo_equ("EXIT_SUCCESS"), u64::from(DEMO_EXIT_VALUE));
        assert_eq!(demo_equ("EXIT_EXCEPTION"), u64::from(DEMO_EXIT_EXCEPTION));
        assert_eq!(demo_equ("EXIT_CHECK"), u64::from(DEMO_EXIT_CHECK_FAILED));
    }

    #[test]
    fn exit_statuses_follow_isa_debug_exit() {
        assert_eq!(DEMO_EXIT_STATUS, 33);
        assert_eq!(MULTIBOOT_EXIT_STATUS, 1);
        assert_eq!(FLAT_EXIT_STATUS, 17);
    }

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn multiboot_test_is_elf32_with_a_valid_header_in_its_first_8k() {
        let elf = MULTIBOOT_TEST;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 1, "ELFCLASS32");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 3, "EM_386");
        let entry = le32(elf, 24);
        assert!((0x10_0000..0x20_0000).contains(&entry), "entry {entry:#x}");
        let header = (0..elf.len().min(8192) - 12)
            .step_by(4)
            .find(|&off| le32(elf, off) == 0x1BAD_B002)
            .expect("multiboot header");
        let (magic, flags, sum) = (
            le32(elf, header),
            le32(elf, header + 4),
            le32(elf, header + 8),
        );
        assert_eq!(magic.wrapping_add(flags).wrapping_add(sum), 0);
        assert_eq!(
            flags & (1 << 16),
            0,
            "loaded by its ELF headers, not the a.out fields"
        );
    }

    #[test]
    fn flat_test_exercises_a_nonzero_segment() {
        assert!(!FLAT_TEST.is_empty() && FLAT_TEST.len() < 0x8000);
        const { assert!(FLAT_TEST_LOAD_ADDR > 0xFFFF && FLAT_TEST_LOAD_ADDR & 0xF == 0) };
        let cs = FLAT_TEST_LOAD_ADDR >> 4;
        let line = format!("flat: real mode ok cs={cs:04x}\n");
        assert!(FLAT_EXPECTED_OUTPUT.contains(&line));
        assert!(FLAT_EXPECTED_OUTPUT.ends_with("flat: all checks passed\n"));
    }
}

#[cfg(test)]
mod acpi_test_image_tests {
    use super::*;
    use crate::acpi::{build_tables, AcpiLayout, RSDP_ADDR};

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn le64(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn acpi_test_is_a_multiboot_elf32_at_1_mib() {
        let elf = ACPI_TEST;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 1, "ELFCLASS32");
        assert_eq!(
            le32(elf, 24),
            0x10_0000 + 12,
            "entry right after the header"
        );
        let header = (0..elf.len().min(8192) - 12)
            .step_by(4)
            .find(|&off| le32(elf, off) == 0x1BAD_B002)
            .expect("multiboot header");
        let sum = (0..3).fold(0u32, |s, i| s.wrapping_add(le32(elf, header + 4 * i)));
        assert_eq!(sum, 0);
    }

    /// The expected output names the addresses, lengths, port and sleep type of the tables
    /// `acpi::build_tables` really writes, so the two cannot drift apart.
    #[test]
    fn acpi_expected_output_matches_the_tables_ringzero_writes() {
        let layout = AcpiLayout::default();
        let image = build_tables(&layout).unwrap();
        let at = |addr: u64| (addr - RSDP_ADDR) as usize;
        let xsdt = le64(&image, 24);
        let fadt = le64(&image, at(xsdt) + 36);
        let f = at(fadt);
        let dsdt = le64(&image, f + 140);
        let dsdt_len = le32(&image, at(dsdt) + 4);
        let pm1a_cnt = le32(&image, f + 64);
        let slp_typ = u32::from(ringzero_devices::acpi_pm::SLP_TYP_S5);
        let expected = format!(
            "acpi: rsdp at 0x{RSDP_ADDR:08x} revision 2 checksums ok\n\
             acpi: xsdt at 0x{xsdt:08x} entries 2 checksum ok\n\
             acpi: fadt at 0x{fadt:08x} revision 6 length {} checksum ok\n\
             acpi: smi_cmd 0x00000000 pm1a_cnt 0x{pm1a_cnt:04x} sci_en 1\n\
             acpi: dsdt at 0x{dsdt:08x} length {dsdt_len} checksum ok\n\
             acpi: _S5_ slp_typ_a {slp_typ}\n\
             acpi: entering S5: writing 0x{:04x} to pm1a_cnt 0x{pm1a_cnt:04x}\n",
            le32(&image, f + 4),
            (slp_typ << 10) | (1 << 13) | 1,
        );
        assert_eq!(ACPI_TEST_EXPECTED_OUTPUT, expected);
        assert_eq!(pm1a_cnt, u32::from(layout.pm1a_cnt_port));
    }

    #[test]
    fn acpi_test_failure_value_matches_its_source() {
        let source = include_str!("../test-images/acpi/acpi.S");
        let line = format!(".equ EXIT_FAIL, {ACPI_TEST_EXIT_FAILED}");
        assert!(source.lines().any(|l| l.trim().starts_with(&line)));
        assert_eq!(ACPI_TEST_FAIL_STATUS, 3);
        assert_eq!(ACPI_TEST_EXIT_STATUS, 0);
    }
}

#[cfg(test)]
mod systest_image_tests {
    use super::*;

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// x86-64 objects linked with OUTPUT_FORMAT(elf32-i386): still ELF32/EM_386 with a valid
    /// Multiboot header, which is what QEMU's and ringzero's Multiboot loaders accept.
    #[test]
    fn systests_are_multiboot_elf32_kernels_at_1_mib() {
        assert!(!SYSTESTS.is_empty());
        for (name, elf) in SYSTESTS {
            assert_eq!(&elf[..4], b"\x7fELF", "{name}");
            assert_eq!(elf[4], 1, "{name}: ELFCLASS32");
            assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 3, "{name}: EM_386");
            let entry = le32(elf, 24);
            assert!(
                (0x10_0000..0x20_0000).contains(&entry),
                "{name}: {entry:#x}"
            );
            let header = (0..elf.len().min(8192) - 12)
                .step_by(4)
                .find(|&off| le32(elf, off) == 0x1BAD_B002)
                .unwrap_or_else(|| panic!("{name}: no multiboot header"));
            let sum = (0..3).fold(0u32, |s, i| s.wrapping_add(le32(elf, header + 4 * i)));
            assert_eq!(sum, 0, "{name}");
        }
        assert_eq!(SYSTEST_EXIT_STATUS, 1);
        assert_eq!(SYSTEST_FAIL_STATUS, 3);
    }
}
