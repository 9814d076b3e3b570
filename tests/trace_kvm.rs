//! The instruction trace under KVM (single-step) agrees with the BT's, record for record, on
//! the demo guest: real mode → 16/32-bit protected mode → long mode, REP string instructions
//! (one record per iteration on both), port I/O (in-kernel and user-space devices), up to its
//! first HLT; and a count window selects the same records on both. Skipped with the reason
//! where KVM is unusable (failing instead under RINGZERO_REQUIRE_KVM=1) or cannot single-step.

mod common;

use common::{demo_trace_jsonl, kvm_or_skip, ringzero, status, stderr};
use ringzero::images;

/// The demo's trace on `accel` with `extra` filter arguments: its lines (BT-only keys removed).
fn demo_trace(accel: &str, extra: &[&str]) -> Vec<String> {
    demo_trace_jsonl(accel, extra)
        .lines()
        .map(without_trap)
        .collect()
}

/// A record without its `"trap"` key: the BT marks instructions its monitor ran, KVM has no
/// such thing (its exits are a different set), so the comparison leaves it out.
fn without_trap(line: &str) -> String {
    match line.find(",\"trap\":\"") {
        Some(at) => {
            let value = at + ",\"trap\":\"".len();
            let end = line[value..]
                .find('"')
                .map_or(line.len(), |e| value + e + 1);
            format!("{}{}", &line[..at], &line[end..])
        }
        None => line.to_string(),
    }
}

/// Whether the KVM trace can run here (prints why not).
fn kvm_steps(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    match ringzero::lockstep::kvm_single_step_probe() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: KVM cannot single-step here: {why}");
            false
        }
    }
}

/// Compares two traces line by line; returns the differing pairs.
fn differences(bt: &[String], kvm: &[String]) -> Vec<(String, String)> {
    bt.iter()
        .zip(kvm)
        .filter(|(b, k)| b != k)
        .map(|(b, k)| (b.clone(), k.clone()))
        .collect()
}

/// The demo's first HLT is instruction 7,643; the window stops before it (where a timer
/// interrupt's arrival, a matter of wall-clock time on both backends, decides the count).
const WINDOW: &str = "..7600";

#[test]
fn kvm_trace_agrees_with_bt_instruction_for_instruction() {
    if !kvm_steps("kvm_trace_agrees_with_bt_instruction_for_instruction") {
        return;
    }
    let bt = demo_trace("bt", &["--trace-window", WINDOW]);
    let kvm = demo_trace("kvm", &["--trace-window", WINDOW]);
    assert_eq!(bt.len(), 7599, "the BT records the whole window");
    assert_eq!(kvm.len(), bt.len(), "the KVM trace has as many records");
    // The window covers every mode switch, 3,000+ REP STOSD and 500+ REP STOSQ iterations, OUT and IN.
    for needle in [
        "\"mode\":\"real\"",
        "\"mode\":\"protected\"",
        "\"mode\":\"long64\"",
        "rep stosd",
        "rep stosq",
        "\"asm\":\"in al, dx\"",
        "\"asm\":\"out dx, al\"",
    ] {
        assert!(kvm.iter().any(|l| l.contains(needle)), "{needle}");
    }
    // No exception list is needed on this stretch: not even RFLAGS bits the SDM leaves
    // undefined differ (both CPUs compute them the same way here).
    let diff = differences(&bt, &kvm);
    assert!(
        diff.is_empty(),
        "{} records differ; first:\n bt:  {}\n kvm: {}",
        diff.len(),
        diff[0].0,
        diff[0].1
    );
}

#[test]
fn a_kvm_window_selects_the_records_the_bt_window_does() {
    if !kvm_steps("a_kvm_window_selects_the_records_the_bt_window_does") {
        return;
    }
    // Inside the 32-bit and long-mode setup: the REP STOSD page-table clear and what follows.
    let window = ["--trace-window", "1200..1300"];
    let bt = demo_trace("bt", &window);
    let kvm = demo_trace("kvm", &window);
    assert_eq!(bt.len(), 100);
    assert!(kvm.first().unwrap().contains("\"n\":1200,"), "{}", kvm[0]);
    assert_eq!(bt, kvm);
}

#[test]
fn kvm_trace_needs_single_step_or_says_why() {
    // Where single-step works the run succeeds (above); where it does not, the refusal names
    // the reason and the BT. Either way no panic and a documented status.
    if !kvm_or_skip("kvm_trace_needs_single_step_or_says_why") {
        return;
    }
    let o = ringzero(&[
        "run",
        "--accel",
        "kvm",
        "--serial",
        "none",
        "--trace",
        "insn",
        "--trace-window",
        "..10",
        "--trace-file",
        "/dev/null",
    ]);
    match ringzero::lockstep::kvm_single_step_probe() {
        Ok(()) => assert_eq!(status(&o), images::DEMO_EXIT_STATUS, "{}", stderr(&o)),
        Err(_) => {
            assert_eq!(status(&o), 2, "{}", stderr(&o));
            assert!(stderr(&o).contains("--accel bt"), "{}", stderr(&o));
        }
    }
}
