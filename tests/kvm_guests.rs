//! Guests run end to end under `--accel kvm`: the demo, the Multiboot and flat test images, and
//! the machine's stop paths (timeout, triple fault). Skipped with a reason where KVM is unusable.

mod common;
use common::*;
use ringzero::images;

#[test]
fn serial_to_file_captures_the_console() {
    if kvm_or_skip("serial_to_file_captures_the_console") {
        guests::serial_to_file_captures_the_console("kvm");
    }
}

#[test]
fn multiboot_kernel_gets_cmdline_modules_and_memory_map() {
    if kvm_or_skip("multiboot_kernel_gets_cmdline_modules_and_memory_map") {
        guests::multiboot_kernel_gets_cmdline_modules_and_memory_map("kvm");
    }
}

#[test]
fn multiboot_kernel_is_detected_by_kernel_flag_too() {
    if kvm_or_skip("multiboot_kernel_is_detected_by_kernel_flag_too") {
        guests::multiboot_kernel_is_detected_by_kernel_flag_too("kvm");
    }
}

#[test]
fn flat_real_mode_image_runs() {
    if kvm_or_skip("flat_real_mode_image_runs") {
        guests::flat_real_mode_image_runs("kvm");
    }
}

#[test]
fn timeout_stops_a_spinning_guest() {
    if kvm_or_skip("timeout_stops_a_spinning_guest") {
        guests::timeout_stops_a_spinning_guest("kvm");
    }
}

#[test]
fn triple_fault_ends_the_run_with_its_status() {
    if kvm_or_skip("triple_fault_ends_the_run_with_its_status") {
        guests::triple_fault_ends_the_run_with_its_status("kvm");
    }
}

#[test]
fn guest_reset_through_the_i8042_ends_the_run_cleanly() {
    if kvm_or_skip("guest_reset_through_the_i8042_ends_the_run_cleanly") {
        guests::guest_reset_through_the_i8042_ends_the_run_cleanly("kvm");
    }
}

#[test]
fn acpi_s5_powers_the_machine_off() {
    if kvm_or_skip("acpi_s5_powers_the_machine_off") {
        guests::acpi_s5_powers_the_machine_off("kvm");
    }
}

#[test]
fn demo_guest_prints_expected_lines_and_exits_with_its_status() {
    if kvm_or_skip("demo_guest_prints_expected_lines_and_exits_with_its_status") {
        guests::demo_guest_prints_expected_lines_and_exits_with_its_status("kvm");
    }
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
fn stats_json_uses_one_vocabulary() {
    if kvm_or_skip("stats_json_uses_one_vocabulary") {
        guests::stats_json_uses_one_vocabulary("kvm");
    }
}
