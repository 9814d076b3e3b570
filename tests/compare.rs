//! `ringzero compare`: boots the Linux yardstick under each backend and prints one table
//! (docs/compare.md). Under bt this boots Linux, so there is one such test per backend.

mod common;
use common::*;

/// The value after `"key":` in `json`, up to the next `,` or `}`.
fn scalar<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}: {json}"));
    let rest = &json[at + pat.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

/// Runs compare on `backends` with two quick workloads and checks the table and the JSON.
fn compare_two_workloads(backends: &str) {
    let dir = tempdir();
    let json_path = dir.path().join("cmp.json");
    let (kernel, initrd) = yardstick();
    let o = ringzero(&[
        "compare",
        "--backends",
        backends,
        "--quick",
        "--workloads",
        "cpu-int,getppid",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    let err = stderr(&o);
    assert_eq!(status(&o), 0, "stdout:\n{out}\nstderr:\n{err}");
    for w in ["cpu-int", "getppid"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("no {w} row:\n{out}"));
        assert!(row.trim_end().ends_with("ok"), "{row}\n{out}");
    }
    assert!(!out.contains("mem-walk"), "{out}");
    for label in [
        "boot-to-ready",
        "wall (whole run)",
        "exits",
        "traps",
        "tier_ups",
    ] {
        assert!(out.contains(label), "no {label}:\n{out}");
    }

    let json = std::fs::read_to_string(&json_path).unwrap();
    let json = json.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert_eq!(
        json.matches('{').count(),
        json.matches('}').count(),
        "{json}"
    );
    assert_eq!(scalar(json, "quick"), "true");
    assert!(json.contains("\"name\":\"cpu-int\""), "{json}");
    assert!(json.contains("\"name\":\"getppid\""), "{json}");
    assert!(json.contains("\"problems\":[]"), "{json}");
    for b in backends.split(',') {
        let secs = scalar(json, b);
        assert!(secs.parse::<f64>().is_ok(), "{b} seconds {secs:?}: {json}");
    }
    for key in [
        "wall_time_s",
        "boot_to_ready_s",
        "exits",
        "tier_ups",
        "port_io",
    ] {
        let v = scalar(json, key);
        assert!(
            v.parse::<f64>().is_ok(),
            "{key} = {v:?} is not a number: {json}"
        );
    }
    assert!(json.contains("\"status\":\"ran\""), "{json}");
}

#[test]
fn compare_quick_under_bt_gives_a_table_and_json() {
    compare_two_workloads("bt");
}

#[test]
fn compare_quick_under_kvm_gives_a_table_and_json() {
    let name = "compare_quick_under_kvm_gives_a_table_and_json";
    if !kvm_or_skip(name) {
        return;
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "SKIPPED {name}: /dev/kvm is PVM (/sys/module/kvm_pvm exists), where booting Linux \
             is far too slow"
        );
        return;
    }
    compare_two_workloads("kvm");
}

#[test]
fn unknown_workload_is_a_usage_error() {
    let o = ringzero(&[
        "compare",
        "--workloads",
        "nope",
        "--kernel",
        "/nonexistent",
        "--initrd",
        "/nonexistent",
    ]);
    assert_one_line_error(&o, "unknown workload 'nope'");
}
