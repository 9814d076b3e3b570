//! Guests run end to end under `--accel kvm`: the demo, the Multiboot and flat test images, and
//! the machine's stop paths (timeout, triple fault). Skipped with a reason where KVM is unusable.

mod common;
use common::*;
use ringzero::images;

#[test]
fn demo_guest_prints_expected_lines_and_exits_with_its_status() {
    if !kvm_or_skip("demo_guest") {
        return;
    }
    let o = ringzero(&["run", "--accel", "kvm"]);
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

#[test]
fn demo_guest_is_the_default_on_auto() {
    if !kvm_or_skip("demo_auto") {
        return;
    }
    let o = ringzero(&["run", "--stats"]);
    assert_eq!(
        status(&o),
        images::DEMO_EXIT_STATUS,
        "stderr: {}",
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(err.contains("ringzero stats: backend=kvm"), "{err}");
    // The UART lines are port writes: at least one exit per character printed.
    let outs: u64 = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("port_io_out"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(outs >= images::DEMO_EXPECTED_OUTPUT.len() as u64, "{err}");
}

#[test]
fn serial_to_file_captures_the_console() {
    if !kvm_or_skip("serial_file") {
        return;
    }
    let d = tempdir();
    let log = d.path().join("console.log");
    let target = format!("file:{}", log.display());
    let o = ringzero(&["run", "--accel", "kvm", "--serial", &target]);
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

#[test]
fn multiboot_kernel_gets_cmdline_modules_and_memory_map() {
    if !kvm_or_skip("multiboot") {
        return;
    }
    let d = tempdir();
    let k = write_file(d.path(), "multiboot.elf", images::MULTIBOOT_TEST);
    let m = write_file(d.path(), "mod.txt", b"hello module line one\nsecond line\n");
    let o = ringzero(&[
        "run",
        "--accel",
        "kvm",
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

#[test]
fn multiboot_kernel_is_detected_by_kernel_flag_too() {
    if !kvm_or_skip("multiboot_via_kernel") {
        return;
    }
    let d = tempdir();
    let k = write_file(d.path(), "multiboot.elf", images::MULTIBOOT_TEST);
    let o = ringzero(&["run", "--accel", "kvm", "--kernel", k.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(out.contains("multiboot: mods=0\n"), "{out}");
    assert!(out.ends_with("multiboot: all checks passed\n"), "{out}");
    assert_eq!(status(&o), images::MULTIBOOT_EXIT_STATUS);
}

#[test]
fn flat_real_mode_image_runs() {
    if !kvm_or_skip("flat") {
        return;
    }
    let d = tempdir();
    let f = write_file(d.path(), "flat.bin", images::FLAT_TEST);
    let spec = format!("{}@{:#x}", f.display(), images::FLAT_TEST_LOAD_ADDR);
    let o = ringzero(&["run", "--accel", "kvm", "--flat", &spec]);
    assert_eq!(
        stdout(&o),
        images::FLAT_EXPECTED_OUTPUT,
        "stderr: {}",
        stderr(&o)
    );
    assert_eq!(status(&o), images::FLAT_EXIT_STATUS);
}

#[test]
fn timeout_stops_a_spinning_guest() {
    if !kvm_or_skip("timeout") {
        return;
    }
    let d = tempdir();
    // cli; jmp $ — spins forever with interrupts off.
    let f = write_file(d.path(), "spin.bin", &[0xfa, 0xeb, 0xfe]);
    let spec = format!("{}@0x7c00", f.display());
    let t = std::time::Instant::now();
    let o = ringzero(&["run", "--accel", "kvm", "--flat", &spec, "--timeout", "1s"]);
    assert_eq!(status(&o), 6, "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn triple_fault_ends_the_run_with_its_status() {
    if !kvm_or_skip("triple_fault") {
        return;
    }
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
        "kvm",
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

#[test]
fn guest_reset_through_the_i8042_ends_the_run_cleanly() {
    if !kvm_or_skip("i8042_reset") {
        return;
    }
    let d = tempdir();
    // mov al, 0xfe; out 0x64, al; jmp $
    let f = write_file(d.path(), "reset.bin", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let spec = format!("{}@0x7c00", f.display());
    let o = ringzero(&["run", "--accel", "kvm", "--flat", &spec, "--timeout", "20s"]);
    assert_eq!(status(&o), 0, "stderr: {}", stderr(&o));
}

#[test]
fn acpi_s5_powers_the_machine_off() {
    if !kvm_or_skip("acpi_poweroff") {
        return;
    }
    let d = tempdir();
    let k = write_file(d.path(), "acpi.elf", images::ACPI_TEST);
    let o = ringzero(&[
        "run",
        "--accel",
        "kvm",
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
