//! `ringzero bench --peers`: the yardstick's workloads natively, under ringzero's backends and
//! under QEMU, in one table and one JSON object (docs/bench.md). One boot per available column
//! (one under bt), so this is a single test.

mod common;
use common::*;

const COLUMNS: [&str; 5] = ["native", "bt", "kvm", "qemu-tcg", "qemu-kvm"];

fn pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Whether the column must have run here: native and bt always; qemu-tcg when QEMU is
/// installed (always in CI, which installs it); the KVM columns where KVM is usable and not PVM
/// (a requirement when RINGZERO_REQUIRE_KVM=1).
fn must_run(col: &str, qemu: bool, kvm: bool) -> bool {
    match col {
        "native" | "bt" => true,
        "qemu-tcg" => qemu,
        "kvm" => kvm,
        "qemu-kvm" => qemu && kvm,
        _ => unreachable!(),
    }
}

#[test]
fn bench_peers_quick_gives_a_column_per_backend_and_json() {
    let name = "bench_peers_quick_gives_a_column_per_backend_and_json";
    let qemu = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    if !qemu && std::env::var("CI").is_ok() {
        panic!("{name}: CI must have qemu-system-x86_64 (.ci/run installs qemu-system-x86)");
    }
    let kvm = match ringzero::kvm::probe() {
        Ok(()) => !pvm(),
        Err(e) => {
            if std::env::var("RINGZERO_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{name}: RINGZERO_REQUIRE_KVM=1 but KVM is unusable: {e}");
            }
            false
        }
    };
    let dir = tempdir();
    let json_path = dir.path().join("bench.json");
    let o = ringzero(&[
        "bench",
        "--peers",
        "--quick",
        "--quiet",
        "--workloads",
        "cpu-int,getppid",
        "--timeout",
        "300s",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    let err = stderr(&o);
    assert_eq!(status(&o), 0, "stdout:\n{out}\nstderr:\n{err}");
    // --quiet: no progress lines.
    assert!(!err.contains("bench: bt:"), "{err}");

    // The table: every column has a status line and a header cell; the ones that must run ran.
    let head = out
        .lines()
        .find(|l| l.starts_with("seconds"))
        .unwrap_or_else(|| panic!("no header:\n{out}"));
    let cells: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(
        cells,
        ["seconds", "native", "bt", "kvm", "qemu-tcg", "qemu-kvm", "checksum"],
        "{out}"
    );
    for col in COLUMNS {
        let status_line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{col}: ")))
            .unwrap_or_else(|| panic!("no status line for {col}:\n{out}"));
        if must_run(col, qemu, kvm) {
            assert!(status_line.contains(": ran ("), "{status_line}\n{out}");
        } else {
            assert!(
                status_line.contains("unavailable: "),
                "{status_line}\n{out}"
            );
        }
        if col.starts_with("qemu") && !qemu {
            assert!(
                status_line
                    .contains("qemu-system-x86_64 not found (apt-get install qemu-system-x86)"),
                "{status_line}"
            );
        }
    }
    for w in ["cpu-int", "getppid"] {
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(w)).collect();
        // seconds, ÷ native, and ÷ qemu-tcg when QEMU ran.
        assert_eq!(rows.len(), if qemu { 3 } else { 2 }, "{out}");
        assert!(rows[0].ends_with("  ok"), "{}\n{out}", rows[0]);
        let secs: Vec<&str> = rows[0].split_whitespace().skip(1).take(5).collect();
        for (col, cell) in COLUMNS.iter().zip(&secs) {
            let ran = must_run(col, qemu, kvm);
            assert_eq!(cell.parse::<f64>().is_ok(), ran, "{col}: {cell}\n{out}");
        }
    }
    for label in [
        "boot-to-ready (guest)",
        "boot-to-ready (host)",
        "wall (whole run)",
        "÷ native",
    ] {
        assert!(out.contains(label), "no {label}:\n{out}");
    }

    // The JSON mirrors it.
    let text = std::fs::read_to_string(&json_path).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["quick"], true);
    assert_eq!(j["columns"], serde_json::json!(COLUMNS));
    assert_eq!(j["problems"], serde_json::json!([]), "{text}");
    for col in COLUMNS {
        let b = &j["backends"][col];
        let status = b["status"].as_str().unwrap();
        if must_run(col, qemu, kvm) {
            assert_eq!(status, "ran", "{col}: {text}");
            assert!(b["wall_s"].as_f64().unwrap() > 0.0, "{col}: {text}");
            if col != "native" {
                let guest = b["boot_to_ready_guest_s"].as_f64().unwrap();
                let host = b["boot_to_ready_host_s"].as_f64().unwrap();
                assert!(guest > 0.0 && host > 0.0, "{col}: {text}");
            }
        } else {
            assert_eq!(status, "unavailable", "{col}: {text}");
            assert!(!b["reason"].as_str().unwrap().is_empty());
        }
    }
    let rows = j["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cpu-int",
            "getppid",
            "boot-to-ready (guest)",
            "boot-to-ready (host)",
            "wall (whole run)"
        ]
    );
    for r in &rows[..2] {
        assert_eq!(r["check_status"], "ok", "{text}");
        assert_eq!(r["vs_native"]["native"].as_f64(), Some(1.0), "{text}");
        for col in COLUMNS {
            let ran = must_run(col, qemu, kvm);
            assert_eq!(r["seconds"][col].is_f64(), ran, "{col}: {text}");
            assert_eq!(r["checksums"][col].is_u64(), ran, "{col}: {text}");
        }
        if qemu {
            assert_eq!(r["vs_qemu_tcg"]["qemu-tcg"].as_f64(), Some(1.0), "{text}");
        } else {
            assert!(r["vs_qemu_tcg"].is_null(), "{text}");
        }
    }
}

#[test]
fn bench_unknown_workload_is_a_usage_error() {
    let o = ringzero(&["bench", "--workloads", "cpu-int,nope"]);
    assert_one_line_error(&o, "unknown workload 'nope'");
}
