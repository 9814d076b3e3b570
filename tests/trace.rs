//! The teaching trace under BT: filters select exactly the instructions asked for, records
//! carry the memory accesses, the JSON Lines parse, and the translation log shows what guest
//! blocks became. (The KVM trace and its agreement with this one: tests/trace_kvm.rs.)

mod common;

use common::{demo_trace_jsonl, ringzero, status, stderr, tempdir};
use ringzero::images;
use serde_json::Value;

/// The demo's trace under BT with `extra` arguments, parsed.
fn demo_trace(extra: &[&str]) -> Vec<Value> {
    demo_trace_jsonl("bt", extra)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn insns(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "insn").collect()
}

fn n(r: &Value) -> u64 {
    r["n"].as_u64().expect("n")
}

/// A record's `0x...` hex string field as a number.
fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn rip(r: &Value) -> u64 {
    hex(&r["rip"])
}

/// The demo's first 40,000 instructions reach ring 3 (real mode → protected → long mode →
/// user) — the reference every filter is checked against.
const WINDOW: &str = "..40000";

#[test]
fn records_are_well_formed_json_with_memory_accesses() {
    let all = demo_trace(&["--trace-window", WINDOW]);
    let ins = insns(&all);
    assert_eq!(ins.len(), 39_999, "every instruction of the window");
    for (i, r) in ins.iter().enumerate() {
        assert_eq!(n(r), i as u64 + 1);
        for key in ["cpl", "mode", "cs", "rip", "bytes", "asm", "writes", "mem"] {
            assert!(!r[key].is_null(), "{key} missing: {r}");
        }
        for m in r["mem"].as_array().expect("mem list") {
            assert!(m["op"] == "r" || m["op"] == "w", "{m}");
            assert!(m["size"].as_u64().is_some_and(|s| s > 0), "{m}");
            assert!(m["linear"].is_string() && m.get("phys").is_some(), "{m}");
        }
    }
    // A near call writes its return address on the stack: value = RIP after the call.
    let call = ins
        .iter()
        .find(|r| r["asm"].as_str().unwrap().starts_with("call 0x"))
        .expect("a near call");
    let w = &call["mem"].as_array().unwrap()[0];
    assert_eq!(w["op"], "w", "{call}");
    let len = call["bytes"].as_str().unwrap().len() as u64 / 2;
    assert_eq!(hex(&w["value"]), rip(call) + len, "{call}");
    // A load reports what it read: the loaded register's new low bytes.
    let load = ins
        .iter()
        .find(|r| {
            r["asm"].as_str().unwrap().starts_with("mov al, [")
                && r["mem"]
                    .as_array()
                    .is_some_and(|m| m.len() == 1 && m[0]["op"] == "r")
                && r["writes"].as_array().is_some_and(|w| w.len() == 1)
        })
        .expect("a byte load");
    assert_eq!(load["mem"][0]["size"], 1);
    assert_eq!(
        hex(&load["mem"][0]["value"]),
        hex(&load["writes"][0]["new"]) & 0xff,
        "{load}"
    );
    assert!(
        ins.iter().any(|r| r["cpl"] == 3),
        "the window reaches ring 3"
    );
    // Mode switches and traps are marked on the instruction that caused them.
    let switches: Vec<&str> = ins.iter().filter_map(|r| r["mode_to"].as_str()).collect();
    // Paging on with EFER.LME gives compatibility mode until the far jump to 64-bit code.
    assert_eq!(switches, ["protected", "compat", "long64"]);
    assert!(ins.iter().any(|r| r["cpl_to"] == 3), "the drop to ring 3");
    for r in &ins {
        let asm = r["asm"].as_str().unwrap();
        if asm.starts_with("out ") || asm.starts_with("in ") {
            assert_eq!(r["trap"], "port_io", "{r}");
        }
        if asm.starts_with("mov eax, 0x") || asm.starts_with("add ") {
            assert!(r["trap"].is_null(), "translated code is not a trap: {r}");
        }
    }
}

#[test]
fn filters_select_exactly_the_instructions_asked_for() {
    let all = demo_trace(&["--trace-window", WINDOW]);
    let reference = insns(&all);
    let select = |args: &[&str], want: &dyn Fn(&Value) -> bool| {
        let mut a = args.to_vec();
        if !args.contains(&"--trace-window") {
            a.extend_from_slice(&["--trace-window", WINDOW]);
        }
        let got = demo_trace(&a);
        let got = insns(&got);
        let want: Vec<&Value> = reference.iter().copied().filter(|r| want(r)).collect();
        assert!(!want.is_empty(), "{args:?} selects something");
        assert_eq!(got.len(), want.len(), "{args:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{args:?}");
        }
    };
    select(&["--trace-cpl", "user"], &|r| r["cpl"] == 3);
    select(&["--trace-cpl", "kernel"], &|r| r["cpl"] != 3);
    // The user-mode code's first page and the real-mode serial print loop.
    let user = reference
        .iter()
        .find(|r| r["cpl"] == 3)
        .map(|r| rip(r))
        .unwrap();
    let range = format!("{user:#x}+0x40");
    select(&["--trace-range", &range], &|r| {
        (user..user + 0x40).contains(&rip(r))
    });
    select(
        &["--trace-range", "0x8055-0x8060", "--trace-range", &range],
        &|r| (0x8055..0x8060).contains(&rip(r)) || (user..user + 0x40).contains(&rip(r)),
    );
    select(&["--trace-window", "1000..1010"], &|r| {
        (1000..1010).contains(&n(r))
    });
    // Start at the 3rd-traced call's target, stop at the first ring-3 instruction.
    let start = rip(reference[40]);
    let first_start = reference.iter().position(|r| rip(r) == start).unwrap();
    let stop_at = reference.iter().position(|r| r["cpl"] == 3).unwrap();
    select(
        &[
            "--trace-start",
            &format!("{start:#x}"),
            "--trace-stop",
            &format!("{user:#x}"),
        ],
        &|r| {
            let i = n(r) as usize - 1;
            (first_start..=stop_at).contains(&i)
        },
    );
    // The 3rd execution of the print loop's first instruction, then 5 records.
    let nth: Vec<u64> = reference
        .iter()
        .filter(|r| rip(r) == 0x8055)
        .map(|r| n(r))
        .collect();
    select(&["--trace-start", "0x8055@3", "--trace-limit", "5"], &|r| {
        (nth[2]..nth[2] + 5).contains(&n(r))
    });
    // A sequence: the first ring-3 instruction, then the 2nd execution of 0x8055 after it
    // (there is none: nothing is recorded) — and of the ring-3 code's first address.
    let next = rip(reference[stop_at + 1]);
    let second = reference
        .iter()
        .skip(stop_at + 2)
        .position(|x| rip(x) == next)
        .map_or(usize::MAX, |p| p + stop_at + 2);
    select(
        &[
            "--trace-start",
            "0x8055",
            "--trace-start",
            &format!("{user:#x}"),
            "--trace-stop",
            &format!("{next:#x}@2"),
        ],
        &|r| (stop_at..=second).contains(&(n(r) as usize - 1)),
    );
    // Conditions combine.
    select(
        &["--trace-cpl", "user", "--trace-window", "20000..30000"],
        &|r| r["cpl"] == 3 && (20000..30000).contains(&n(r)),
    );
}

#[test]
fn the_translation_log_shows_guest_blocks_and_their_host_code() {
    let d = tempdir();
    let log = d.path().join("translations.txt");
    let o = ringzero(&[
        "run",
        "--accel",
        "bt",
        "--serial",
        "none",
        "--translation-log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(status(&o), images::DEMO_EXIT_STATUS, "{}", stderr(&o));
    let text = std::fs::read_to_string(&log).expect("translation log");
    assert!(
        text.starts_with("decode  block 0x8000 (phys 0x8000, 16-bit, cpl 0)"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(
        text.contains("    0x8000  fa "),
        "the first guest instruction, cli"
    );
    // Hot blocks are compiled; each compile record lists host instructions.
    let compiled: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("compile block"))
        .collect();
    assert!(!compiled.is_empty(), "the demo's hot loops are compiled");
    let after = text.split("\ncompile block").nth(1).unwrap();
    let host_lines = after
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    0x"))
        .count();
    assert!(host_lines > 5, "{after}");
    // Under KVM nothing is translated: refused with the reason.
    let o = ringzero(&["run", "--accel", "kvm", "--translation-log", "/dev/null"]);
    assert_eq!(status(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--accel bt"), "{}", stderr(&o));
}

#[test]
fn bad_filter_arguments_are_usage_errors() {
    for args in [
        &["--trace-range", "0x2000-0x1000"][..],
        &["--trace-range", "12"],
        &["--trace-window", "5..5"],
        &["--trace-start", "zz"],
    ] {
        let mut a = vec!["run", "--accel", "bt", "--trace", "insn"];
        a.extend_from_slice(args);
        let o = ringzero(&a);
        assert_eq!(status(&o), 2, "{args:?}: {}", stderr(&o));
    }
    // A filter without --trace is refused too.
    let o = ringzero(&["run", "--trace-cpl", "user"]);
    assert_eq!(status(&o), 2, "{}", stderr(&o));
}
