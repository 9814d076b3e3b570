//! Guest scenarios run end to end on a given backend (`kvm` or `bt`): the same checks for both,
//! called from `kvm_guests.rs` and `bt_guests.rs`.

use super::*;
use ringzero::images;

/// Scenario: serial to file captures the console.
pub fn serial_to_file_captures_the_console(accel: &str) {
    let d = tempdir();
    let log = d.path().join("console.log");
    let target = format!("file:{}", log.display());
    let o = ringzero(&["run", "--accel", accel, "--serial", &target]);
    assert_eq!(
        status(&o),
        images::DEMO_EXIT_STATUS,
        "stderr: {}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
    let text = std::fs::read_to_string(&log).expect("console log");
    assert_eq!(text, images::DEMO_EXPECTED_OUTPUT);
}

/// Scenario: multiboot kernel gets cmdline modules and memory map.
pub fn multiboot_kernel_gets_cmdline_modules_and_memory_map(accel: &str) {
    let d = tempdir();
    let k = write_file(d.path(), "multiboot.elf", images::MULTIBOOT_TEST);
    let m = write_file(d.path(), "mod.txt", b"hello module line one\nsecond line\n");
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--mem",
        "128M",
        "--multiboot",
        k.to_str().unwrap(),
        "--append",
        "console=ttyS0 foo=bar",
        "--initrd",
        m.to_str().unwrap(),
    ]);
    let expected = "\
multiboot: magic ok
multiboot: bss zeroed
multiboot: flags ok
multiboot: loader=ringzero
multiboot: mem_lower=639KiB mem_upper=130048KiB
multiboot: cmdline=console=ttyS0 foo=bar
multiboot: mmap entries=3
multiboot: mods=1
multiboot: mod0 size=34 text=hello module line one
multiboot: all checks passed
";
    assert_eq!(stdout(&o), expected, "stderr: {}", stderr(&o));
    assert_eq!(status(&o), images::MULTIBOOT_EXIT_STATUS);
}

/// Scenario: multiboot kernel is detected by kernel flag too.
pub fn multiboot_kernel_is_detected_by_kernel_flag_too(accel: &str) {
    let d = tempdir();
    let k = write_file(d.path(), "multiboot.elf", images::MULTIBOOT_TEST);
    let o = ringzero(&["run", "--accel", accel, "--kernel", k.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(out.contains("multiboot: mods=0\n"), "{out}");
    assert!(out.ends_with("multiboot: all checks passed\n"), "{out}");
    assert_eq!(status(&o), images::MULTIBOOT_EXIT_STATUS);
}

/// Scenario: flat real mode image runs.
pub fn flat_real_mode_image_runs(accel: &str) {
    let d = tempdir();
    let f = write_file(d.path(), "flat.bin", images::FLAT_TEST);
    let spec = format!("{}@{:#x}", f.display(), images::FLAT_TEST_LOAD_ADDR);
    let o = ringzero(&["run", "--accel", accel, "--flat", &spec]);
    assert_eq!(
        stdout(&o),
        images::FLAT_EXPECTED_OUTPUT,
        "stderr: {}",
        stderr(&o)
    );
    assert_eq!(status(&o), images::FLAT_EXIT_STATUS);
}

/// Scenario: timeout stops a spinning guest.
pub fn timeout_stops_a_spinning_guest(accel: &str) {
    let d = tempdir();
    // cli; jmp $ — spins forever with interrupts off.
    let f = write_file(d.path(), "spin.bin", &[0xfa, 0xeb, 0xfe]);
    let spec = format!("{}@0x7c00", f.display());
    let t = std::time::Instant::now();
    let o = ringzero(&["run", "--accel", accel, "--flat", &spec, "--timeout", "1s"]);
    assert_eq!(status(&o), 6, "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
}

/// Scenario: triple fault ends the run with its status.
pub fn triple_fault_ends_the_run_with_its_status(accel: &str) {
    let d = tempdir();
    // A bzImage whose 64-bit entry (load address + 0x200) loads an IDT with limit 0 and executes
    // int3: #GP on delivery, #DF, then shutdown.
    let mut img = synthetic_bzimage();
    let entry = 4 * 512 + 0x200;
    let code = [
        0x0f, 0x01, 0x1d, 0x09, 0x00, 0x00, 0x00, // lidt [rip + 9] -> the zeros after jmp $
        0xcc, // int3
        0xeb, 0xfe, // jmp $
    ];
    img[entry..entry + code.len()].copy_from_slice(&code);
    let k = write_file(d.path(), "tf.bin", &img);
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--kernel",
        k.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    let err = stderr(&o);
    if status(&o) == 2 && err.contains("KVM internal error, suberror 1") {
        // PVM (a software hypervisor) reports an emulation failure instead of KVM_EXIT_SHUTDOWN
        // for a fault during exception delivery in guest ring 0; VT-x/AMD-V report the shutdown.
        eprintln!("SKIPPED triple_fault: this KVM cannot deliver a triple fault: {err}");
        return;
    }
    assert_eq!(status(&o), 4, "stderr: {err}");
    assert!(err.contains("triple-faulted"), "{err}");
}

/// Scenario: guest reset through the i8042 ends the run cleanly.
pub fn guest_reset_through_the_i8042_ends_the_run_cleanly(accel: &str) {
    let d = tempdir();
    // mov al, 0xfe; out 0x64, al; jmp $
    let f = write_file(d.path(), "reset.bin", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let spec = format!("{}@0x7c00", f.display());
    let o = ringzero(&["run", "--accel", accel, "--flat", &spec, "--timeout", "20s"]);
    assert_eq!(status(&o), 0, "stderr: {}", stderr(&o));
}

/// Scenario: acpi s5 powers the machine off.
pub fn acpi_s5_powers_the_machine_off(accel: &str) {
    let d = tempdir();
    let k = write_file(d.path(), "acpi.elf", images::ACPI_TEST);
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--multiboot",
        k.to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        stdout(&o),
        images::ACPI_TEST_EXPECTED_OUTPUT,
        "stderr: {}",
        stderr(&o)
    );
    assert_eq!(
        status(&o),
        images::ACPI_TEST_EXIT_STATUS,
        "stderr: {}",
        stderr(&o)
    );
}

/// Scenario: demo guest prints expected lines and exits with its status.
pub fn demo_guest_prints_expected_lines_and_exits_with_its_status(accel: &str) {
    let o = ringzero(&["run", "--accel", accel]);
    assert_eq!(
        stdout(&o),
        images::DEMO_EXPECTED_OUTPUT,
        "stderr: {}",
        stderr(&o)
    );
    assert_eq!(
        status(&o),
        images::DEMO_EXIT_STATUS,
        "stderr: {}",
        stderr(&o)
    );
}

/// Scenario: `--stats-json` writes one JSON object with the same keys on every backend.
pub fn stats_json_uses_one_vocabulary(accel: &str) {
    let d = tempdir();
    let json = d.path().join("stats.json");
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--serial",
        "none",
        "--stats-json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(status(&o), images::DEMO_EXIT_STATUS, "{}", stderr(&o));
    let text = std::fs::read_to_string(&json).expect("stats json");
    assert!(
        text.starts_with(&format!("{{\"backend\":\"{accel}\",\"wall_time_s\":")),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "one object: {text}");
    for key in [
        "\"exit_counts\":{",
        "\"port_io_out\":",
        "\"trap_counts\":{",
        "\"port_io\":",
        "\"counters\":{",
    ] {
        assert!(text.contains(key), "{key}: {text}");
    }
    // The demo prints its lines through the UART: at least one port write per character.
    let outs: u64 = text
        .split("\"port_io_out\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(outs >= images::DEMO_EXPECTED_OUTPUT.len() as u64, "{text}");
}
