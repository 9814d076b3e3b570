//! Guests run end to end under `--accel bt` (binary translation: no KVM needed): the same
//! scenarios as under KVM (`common/guests.rs`), plus the BT's own trace and statistics.

mod common;
use common::*;
use ringzero::images;

#[test]
fn serial_to_file_captures_the_console() {
    guests::serial_to_file_captures_the_console("bt");
}

#[test]
fn multiboot_kernel_gets_cmdline_modules_and_memory_map() {
    guests::multiboot_kernel_gets_cmdline_modules_and_memory_map("bt");
}

#[test]
fn multiboot_kernel_is_detected_by_kernel_flag_too() {
    guests::multiboot_kernel_is_detected_by_kernel_flag_too("bt");
}

#[test]
fn flat_real_mode_image_runs() {
    guests::flat_real_mode_image_runs("bt");
}

#[test]
fn timeout_stops_a_spinning_guest() {
    guests::timeout_stops_a_spinning_guest("bt");
}

#[test]
fn triple_fault_ends_the_run_with_its_status() {
    guests::triple_fault_ends_the_run_with_its_status("bt");
}

#[test]
fn guest_reset_through_the_i8042_ends_the_run_cleanly() {
    guests::guest_reset_through_the_i8042_ends_the_run_cleanly("bt");
}

#[test]
fn acpi_s5_powers_the_machine_off() {
    guests::acpi_s5_powers_the_machine_off("bt");
}

#[test]
fn demo_guest_prints_expected_lines_and_exits_with_its_status() {
    guests::demo_guest_prints_expected_lines_and_exits_with_its_status("bt");
}

#[test]
fn stats_count_traps_by_kind_and_translations() {
    let o = ringzero(&["run", "--accel", "bt", "--stats", "--serial", "none"]);
    assert_eq!(
        status(&o),
        images::DEMO_EXIT_STATUS,
        "stderr: {}",
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(err.contains("ringzero stats: backend=bt"), "{err}");
    let count = |name: &str| -> u64 {
        err.lines()
            .find_map(|l| {
                let l = l.trim();
                let (k, v) = l.split_once(|c: char| c == '=' || c.is_whitespace())?;
                (k == name).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
    };
    // The demo prints its lines through the UART (port writes) and switches modes (CR writes).
    assert!(
        count("port_io") >= images::DEMO_EXPECTED_OUTPUT.len() as u64,
        "{err}"
    );
    assert!(count("control_register") >= 3, "{err}");
    assert!(count("instructions") > 1_000_000, "{err}");
    assert!(count("blocks_translated") > 10, "{err}");
}

/// Parses one JSON Lines trace record's integer or string field (the schema is flat).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let rest = &line[line.find(&k)? + k.len()..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}'])?;
    Some(&rest[..end])
}

#[test]
fn trace_records_every_instruction_from_the_entry_point() {
    let d = tempdir();
    let f = write_file(d.path(), "flat.bin", images::FLAT_TEST);
    let spec = format!("{}@{:#x}", f.display(), images::FLAT_TEST_LOAD_ADDR);
    let trace = d.path().join("trace.jsonl");
    let o = ringzero(&[
        "run",
        "--accel",
        "bt",
        "--flat",
        &spec,
        "--trace",
        "insn",
        "--trace-format",
        "jsonl",
        "--trace-file",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(status(&o), images::FLAT_EXIT_STATUS, "{}", stderr(&o));
    assert_eq!(stdout(&o), images::FLAT_EXPECTED_OUTPUT);
    let text = std::fs::read_to_string(&trace).expect("trace file");
    let insns: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"insn\""))
        .collect();
    assert!(insns.len() > 10, "{text}");
    // Counts are consecutive from 1, the first record is the entry point in real mode.
    for (i, l) in insns.iter().enumerate() {
        assert_eq!(field(l, "n"), Some((i + 1).to_string().as_str()), "{l}");
        assert!(l.ends_with('}'), "{l}");
    }
    let first = insns[0];
    assert_eq!(field(first, "mode"), Some("real"), "{first}");
    let entry_rip = images::FLAT_TEST_LOAD_ADDR & 0xffff;
    let want = if images::FLAT_TEST_LOAD_ADDR <= 0xffff {
        format!("{:#x}", images::FLAT_TEST_LOAD_ADDR)
    } else {
        format!("{entry_rip:#x}")
    };
    assert_eq!(field(first, "rip"), Some(want.as_str()), "{first}");
    // The last instruction is the debug-exit port write.
    let last = insns.last().unwrap();
    assert!(field(last, "asm").unwrap().starts_with("out"), "{last}");
}

#[test]
fn trace_text_uses_the_chosen_syntax() {
    let d = tempdir();
    let f = write_file(d.path(), "flat.bin", images::FLAT_TEST);
    let spec = format!("{}@{:#x}", f.display(), images::FLAT_TEST_LOAD_ADDR);
    for (syntax, needle) in [("intel", "out dx, al"), ("att", "out %al, %dx")] {
        let trace = d.path().join(format!("trace-{syntax}.txt"));
        let o = ringzero(&[
            "run",
            "--accel",
            "bt",
            "--flat",
            &spec,
            "--serial",
            "none",
            "--trace",
            "insn",
            "--syntax",
            syntax,
            "--trace-file",
            trace.to_str().unwrap(),
        ]);
        assert_eq!(status(&o), images::FLAT_EXIT_STATUS, "{}", stderr(&o));
        let text = std::fs::read_to_string(&trace).expect("trace file");
        assert!(text.contains(needle), "{syntax}: {text}");
        assert!(text
            .lines()
            .next()
            .unwrap()
            .trim_start()
            .starts_with("1 0 real"));
    }
}

/// A guest that executes random bytes gets the faults a CPU would give and the run ends in one
/// of the documented ways — never a host crash.
#[test]
fn random_bytes_never_crash_the_host() {
    let d = tempdir();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for case in 0..12 {
        let mut bytes = vec![0u8; 4096];
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let f = write_file(d.path(), &format!("random{case}.bin"), &bytes);
        let spec = format!("{}@0x7c00", f.display());
        let o = ringzero(&[
            "run",
            "--accel",
            "bt",
            "--flat",
            &spec,
            "--serial",
            "none",
            "--timeout",
            "1s",
        ]);
        let s = status(&o);
        let err = stderr(&o);
        let documented = s == 0 || s == 4 || s == 6 || s % 2 == 1 && s > 0;
        let halted = s == 2 && err.contains("halted with interrupts");
        assert!(
            documented || halted,
            "case {case}: status {s}\nstderr: {err}"
        );
        assert!(!err.contains("panicked"), "case {case}: {err}");
    }
}

#[test]
fn stats_json_uses_one_vocabulary() {
    guests::stats_json_uses_one_vocabulary("bt");
}
