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
    let svg_path = dir.path().join("cmp.svg");
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
        "--svg",
        svg_path.to_str().unwrap(),
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
    // Progress on stderr while it runs (never on stdout, which holds the table).
    for b in backends.split(',') {
        for what in [
            "booting (".to_string(),
            "RINGZERO-READY after ".into(),
            "cpu-int ".into(),
            "getppid ".into(),
            "ended (PowerOff)".into(),
        ] {
            let line = format!("compare: {b}: {what}");
            assert!(err.contains(&line), "no {line:?} in stderr:\n{err}");
            assert!(!out.contains(&line), "{line:?} on stdout:\n{out}");
        }
    }
    let host_boot = out
        .lines()
        .find(|l| l.starts_with("boot-to-ready (host)"))
        .unwrap_or_else(|| panic!("no host boot row:\n{out}"));
    let guest_boot = out
        .lines()
        .find(|l| l.starts_with("boot-to-ready (guest)"))
        .unwrap_or_else(|| panic!("no guest boot row:\n{out}"));
    let secs = |l: &str| l.split_whitespace().nth(2).unwrap().parse::<f64>().unwrap();
    assert!(secs(host_boot) > 0.0 && secs(guest_boot) > 0.0, "{out}");
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
        "boot_to_ready_host_s",
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

    // The chart: valid XML, one bar per workload and boot-to-ready; with one backend the
    // absolute times, said in the title.
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let bars: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("bar"))
        .map(|n| n.attribute("data-label").unwrap())
        .collect();
    assert_eq!(
        bars,
        [
            "cpu-int",
            "getppid",
            "boot-to-ready (guest)",
            "boot-to-ready (host)"
        ],
        "{svg}"
    );
    if !backends.contains(',') {
        assert!(svg.contains(&format!("{backends} only")), "{svg}");
    }
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
fn quiet_compare_prints_no_progress() {
    // A kernel that is not one: the machine fails to build at once, after "booting" was said.
    let dir = tempdir();
    let junk = write_file(dir.path(), "junk", b"not a kernel");
    let junk = junk.to_str().unwrap();
    let run = |quiet: bool| {
        let mut args = vec![
            "compare",
            "--backends",
            "bt",
            "--workloads",
            "getppid",
            "--kernel",
            junk,
            "--initrd",
            junk,
        ];
        if quiet {
            args.push("--quiet");
        }
        let o = ringzero(&args);
        assert_eq!(status(&o), 1, "{}", stderr(&o));
        assert!(stdout(&o).contains("bt: FAILED: "), "{}", stdout(&o));
        stderr(&o)
    };
    let loud = run(false);
    assert!(loud.contains("compare: bt: booting ("), "{loud}");
    assert!(loud.contains("compare: bt: failed ("), "{loud}");
    let quiet = run(true);
    assert!(!quiet.is_empty());
    for l in quiet.lines() {
        assert!(l.starts_with("ringzero: compare: "), "{quiet}");
    }
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
