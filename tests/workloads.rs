//! The guest workloads (`test-images/workloads`, `rzbench`, built into the Linux yardstick by
//! `test-images/linux/build.sh`): `rzbench all --quick` natively on the host, under `--accel bt`
//! and under `--accel kvm` must print one well-formed `RZBENCH` line per workload with the
//! documented checksums (test-images/workloads/README.md).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

/// The workloads in the order `rzbench all` runs them, with their `--quick` checksums.
const QUICK: &[(&str, u64)] = &[
    ("cpu-int", 10770858389180311394),
    ("mem-walk", 16638935040),
    ("getppid", 20000),
    ("mmap-munmap", 81913600),
    ("fork-wait", 12620993455287261262),
    ("file-io", 9306515664155902757),
    ("pipe-io", 6817025801709889829),
];

/// The yardstick's vmlinuz, initramfs and the host copy of rzbench (beside them in the cache).
fn yardstick() -> (String, String, PathBuf) {
    let (kernel, initrd) = common::yardstick();
    let rzbench = PathBuf::from(&kernel).with_file_name("rzbench");
    assert!(rzbench.is_file(), "no {}", rzbench.display());
    (kernel, initrd, rzbench)
}

/// One parsed `RZBENCH name=<n> ns=<elapsed> check=<checksum>` line.
#[derive(Debug, PartialEq)]
struct Line {
    name: String,
    ns: u64,
    check: u64,
}

/// Parses a line that holds `RZBENCH ` (anywhere: console output may precede it on the line),
/// strictly: exactly the three fields, in order, decimal numbers, nothing after.
fn parse_line(line: &str) -> Result<Line, String> {
    let at = line.find("RZBENCH ").ok_or("no RZBENCH")?;
    let rest = line[at + "RZBENCH ".len()..].trim_end_matches(['\r', '\n']);
    let fields: Vec<&str> = rest.split(' ').collect();
    let [name, ns, check] = fields[..] else {
        return Err(format!("not three fields: {line:?}"));
    };
    let field = |f: &str, key: &str| -> Result<String, String> {
        f.strip_prefix(key)
            .map(str::to_string)
            .ok_or_else(|| format!("expected {key}: {line:?}"))
    };
    let num = |s: String| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("not a decimal number {s:?}: {line:?}"));
        }
        s.parse().map_err(|e| format!("{e}: {line:?}"))
    };
    let name = field(name, "name=")?;
    if name.is_empty() {
        return Err(format!("empty name: {line:?}"));
    }
    Ok(Line {
        name,
        ns: num(field(ns, "ns=")?)?,
        check: num(field(check, "check=")?)?,
    })
}

/// Asserts `out` holds exactly one well-formed line per workload, in order, with the quick
/// checksums; returns the lines.
fn assert_quick_lines(out: &str, context: &str) -> Vec<Line> {
    let lines: Vec<Line> = out
        .lines()
        .filter(|l| l.contains("RZBENCH"))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{context}: {e}\noutput:\n{out}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    let want: Vec<&str> = QUICK.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "{context}: workloads\noutput:\n{out}");
    for (line, (name, check)) in lines.iter().zip(QUICK) {
        assert_eq!(
            line.check, *check,
            "{context}: {name} checksum\noutput:\n{out}"
        );
        assert!(
            line.ns > 0,
            "{context}: {name} took no time\noutput:\n{out}"
        );
    }
    lines
}

fn report(context: &str, lines: &[Line]) {
    let total: u64 = lines.iter().map(|l| l.ns).sum();
    let each: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {:.1} ms", l.name, l.ns as f64 / 1e6))
        .collect();
    eprintln!(
        "rzbench --quick {context}: {} (sum {:.2} s)",
        each.join(", "),
        total as f64 / 1e9
    );
}

#[test]
fn parse_line_accepts_exactly_the_format() {
    assert_eq!(
        parse_line("RZBENCH name=getppid ns=12 check=20000\r"),
        Ok(Line {
            name: "getppid".into(),
            ns: 12,
            check: 20000
        })
    );
    assert!(parse_line("[ 1.0] x RZBENCH name=a ns=1 check=2").is_ok());
    for bad in [
        "RZBENCH name=a ns=1",
        "RZBENCH name=a ns=1 check=2 extra=3",
        "RZBENCH name=a ns=-1 check=2",
        "RZBENCH name=a ns=1 check=0x2",
        "RZBENCH ns=1 name=a check=2",
        "RZBENCH name= ns=1 check=2",
        "RZBENCH name=a  ns=1 check=2",
    ] {
        assert!(parse_line(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn rzbench_quick_natively_prints_the_documented_checksums() {
    let (_, _, rzbench) = yardstick();
    let o = Command::new(&rzbench)
        .args(["all", "--quick"])
        .output()
        .expect("run rzbench");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "rzbench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Natively nothing else writes to stdout: every line is an RZBENCH line.
    assert_eq!(out.lines().count(), QUICK.len(), "{out}");
    let lines = assert_quick_lines(&out, "native");
    report("native", &lines);
}

#[test]
fn rzbench_runs_one_workload_and_rejects_unknown_ones() {
    let (_, _, rzbench) = yardstick();
    let o = Command::new(&rzbench)
        .args(["getppid", "--quick"])
        .output()
        .expect("run rzbench");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success());
    let line = parse_line(out.trim_end()).expect("one line");
    assert_eq!((line.name.as_str(), line.check), ("getppid", 20000));
    assert_eq!(out.lines().count(), 1, "{out}");

    let o = Command::new(&rzbench)
        .arg("no-such-workload")
        .output()
        .expect("run rzbench");
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown workload"));
}

/// Boots the yardstick under `accel` with `rz.run="rzbench all --quick"` and checks the lines.
fn run_in_guest(accel: &str) {
    let (kernel, initrd, _) = yardstick();
    let started = std::time::Instant::now();
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--mem",
        "256M",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 panic=-1 quiet rz.run=\"rzbench all --quick\"",
        "--timeout",
        "900s",
    ]);
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(
        out.contains("RINGZERO-READY"),
        "no RINGZERO-READY\nstdout:\n{out}\nstderr:\n{err}"
    );
    let lines = assert_quick_lines(&out, accel);
    assert!(out.contains("RINGZERO-EXIT 0"), "{out}\nstderr:\n{err}");
    assert_eq!(status(&o), 0, "power-off ends the run: {err}");
    report(&format!("under {accel}"), &lines);
    eprintln!(
        "whole run under {accel} (boot included): {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn rzbench_quick_under_bt_prints_the_documented_checksums() {
    run_in_guest("bt");
}

#[test]
fn rzbench_quick_under_kvm_prints_the_documented_checksums() {
    if !kvm_or_skip("rzbench_quick_under_kvm_prints_the_documented_checksums") {
        return;
    }
    // PVM (a software hypervisor behind /dev/kvm) takes many minutes to boot this kernel; see
    // docs/linux-yardstick.md.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "SKIPPED rzbench_quick_under_kvm_prints_the_documented_checksums: /dev/kvm is PVM \
             (/sys/module/kvm_pvm exists), where booting Linux is far too slow"
        );
        return;
    }
    run_in_guest("kvm");
}
