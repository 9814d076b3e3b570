//! `ringzero bench`: the yardstick's rzbench workloads natively, under ringzero's backends and
//! (with `--peers`) under QEMU, in one table of seconds and ratios (docs/bench.md).
//!
//! The guest, its command line, the ringzero runs and the checksum rules are compare's
//! (src/compare.rs); this adds the native run of the host `rzbench` and the QEMU runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use ringzero::cli::{Accel, BenchArgs};
use ringzero::machine::RunOutcome;

use crate::compare::{
    self, accel_name, check_verdict, esc, kvm_default_skip, num_json, parse_bench, parse_ready,
    parse_workloads, report_problems, watch_child, write_output, Bench, Column, Console, Guest,
    WORKLOADS,
};

/// The QEMU binary the peers run.
const QEMU: &str = "qemu-system-x86_64";
/// Column names, in table order.
const NATIVE: &str = "native";
/// The QEMU TCG column: the second ratio base.
const QEMU_TCG: &str = "qemu-tcg";
const QEMU_KVM: &str = "qemu-kvm";

/// What one column's run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// How it ended (`PowerOff`, `exit 0`, `timeout`, ...).
    pub ended: String,
    /// Whether that is a normal end (power-off, exit status 0).
    pub ended_ok: bool,
    /// Host seconds from the start of the machine or process to its end.
    pub wall_s: f64,
    /// Guest uptime at `RINGZERO-READY` (none natively).
    pub ready_guest_s: Option<f64>,
    /// Host seconds from the start to the `RINGZERO-READY` line (none natively).
    pub ready_host_s: Option<f64>,
    /// The `RZBENCH` lines, in order.
    pub benches: Vec<Bench>,
}

/// One column.
#[derive(Debug, Clone)]
pub enum Col {
    /// Cannot (or by default should not) run here; the reason.
    Unavailable(String),
    /// Started but failed; what happened.
    Failed(String),
    /// It ran.
    Ran(Measured),
}

/// The whole benchmark.
pub struct BenchRun {
    /// Whether `--quick` sizes ran.
    pub quick: bool,
    /// The requested workloads, in order.
    pub workloads: Vec<String>,
    /// (column name, result), in table order.
    pub columns: Vec<(String, Col)>,
}

/// What a row of the table is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Workload,
    BootGuest,
    BootHost,
    Wall,
}

impl Kind {
    fn json(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::BootGuest => "boot_to_ready_guest",
            Kind::BootHost => "boot_to_ready_host",
            Kind::Wall => "wall",
        }
    }
}

struct Row {
    label: String,
    kind: Kind,
    /// Seconds per column (table order).
    secs: Vec<Option<f64>>,
}

impl BenchRun {
    fn measured(&self, col: &str) -> Option<&Measured> {
        self.columns.iter().find_map(|(n, c)| match c {
            Col::Ran(m) if n == col => Some(m),
            _ => None,
        })
    }

    fn bench(&self, col: &str, workload: &str) -> Option<&Bench> {
        self.measured(col)
            .and_then(|m| m.benches.iter().find(|b| b.name == workload))
    }

    /// The checksum verdict of one workload across every column that ran.
    pub fn check_status(&self, workload: &str) -> String {
        let seen: Vec<(&str, Option<u64>)> = self
            .columns
            .iter()
            .filter(|(_, c)| matches!(c, Col::Ran(_)))
            .map(|(n, _)| (n.as_str(), self.bench(n, workload).map(|b| b.check)))
            .collect();
        check_verdict(self.quick, workload, &seen)
    }

    /// Problems that make the exit status 1: failed runs, bad ends, checksum trouble.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (n, c) in &self.columns {
            match c {
                Col::Failed(e) => p.push(format!("{n}: {e}")),
                Col::Ran(m) if !m.ended_ok => {
                    p.push(format!("{n}: the run ended with {}", m.ended))
                }
                _ => {}
            }
        }
        for w in &self.workloads {
            let s = self.check_status(w);
            if s != "ok" && s != "-" {
                p.push(format!("{w}: {s}"));
            }
        }
        p
    }

    fn rows(&self) -> Vec<Row> {
        let per = |f: &dyn Fn(&Measured) -> Option<f64>| -> Vec<Option<f64>> {
            self.columns
                .iter()
                .map(|(n, _)| self.measured(n).and_then(f))
                .collect()
        };
        let mut rows: Vec<Row> = self
            .workloads
            .iter()
            .map(|w| Row {
                label: w.clone(),
                kind: Kind::Workload,
                secs: self
                    .columns
                    .iter()
                    .map(|(n, _)| self.bench(n, w).map(|b| b.ns as f64 / 1e9))
                    .collect(),
            })
            .collect();
        rows.push(Row {
            label: "boot-to-ready (guest)".into(),
            kind: Kind::BootGuest,
            secs: per(&|m| m.ready_guest_s),
        });
        rows.push(Row {
            label: "boot-to-ready (host)".into(),
            kind: Kind::BootHost,
            secs: per(&|m| m.ready_host_s),
        });
        rows.push(Row {
            label: "wall (whole run)".into(),
            kind: Kind::Wall,
            secs: per(&|m| Some(m.wall_s)),
        });
        rows
    }

    /// Each column's value divided by the `base` column's, for rows where that means something
    /// (native has no boot, and its wall holds no boot, so only workloads compare with it).
    fn ratios(&self, row: &Row, base: &str) -> Option<Vec<Option<f64>>> {
        let i = self.columns.iter().position(|(n, _)| n == base)?;
        let b = row.secs.get(i).copied().flatten()?;
        if b <= 0.0 || (base == NATIVE && row.kind != Kind::Workload) {
            return None;
        }
        let native = self.columns.iter().position(|(n, _)| n == NATIVE);
        Some(
            row.secs
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    // Native's wall holds no boot: no ratio with a booting column's.
                    let incomparable = row.kind != Kind::Workload && Some(j) == native;
                    v.filter(|_| !incomparable).map(|v| v / b)
                })
                .collect(),
        )
    }

    fn has(&self, col: &str) -> bool {
        self.measured(col).is_some()
    }

    /// The table: a seconds block, then `÷ native` and `÷ qemu-tcg` blocks.
    pub fn render(&self) -> String {
        let mut s = format!(
            "ringzero bench ({} sizes)\n",
            if self.quick { "--quick" } else { "full" }
        );
        for (n, c) in &self.columns {
            match c {
                Col::Unavailable(why) => writeln!(s, "  {n}: unavailable: {why}"),
                Col::Failed(why) => writeln!(s, "  {n}: FAILED: {why}"),
                Col::Ran(m) => writeln!(s, "  {n}: ran ({})", m.ended),
            }
            .ok();
        }
        let header = |s: &mut String, title: &str, tail: &str| {
            write!(s, "\n{title:<22}").ok();
            for (n, _) in &self.columns {
                write!(s, " {n:>12}").ok();
            }
            writeln!(s, "{tail}").ok();
        };
        let line = |s: &mut String, label: &str, cells: Vec<String>, tail: &str| {
            write!(s, "{label:<22}").ok();
            for c in cells {
                write!(s, " {c:>12}").ok();
            }
            writeln!(s, "{tail}").ok();
        };
        let rows = self.rows();
        header(&mut s, "seconds", "  checksum");
        for r in &rows {
            let cells = r
                .secs
                .iter()
                .map(|v| v.map_or("-".into(), |v| format!("{v:.6}")))
                .collect();
            let tail = if r.kind == Kind::Workload {
                format!("  {}", self.check_status(&r.label))
            } else {
                String::new()
            };
            line(&mut s, &r.label, cells, &tail);
        }
        for (base, title) in [(NATIVE, "÷ native (×)"), (QEMU_TCG, "÷ qemu-tcg (×)")] {
            if !self.has(base) {
                continue;
            }
            header(&mut s, title, "");
            for r in &rows {
                if let Some(ratios) = self.ratios(r, base) {
                    let cells = ratios
                        .iter()
                        .map(|v| v.map_or("-".into(), |v| format!("{v:.2}")))
                        .collect();
                    line(&mut s, &r.label, cells, "");
                }
            }
        }
        s
    }

    /// The same data as one JSON object (schema in docs/bench.md).
    pub fn to_json(&self) -> String {
        let obj = |vals: &[Option<f64>]| -> String {
            let kv: Vec<String> = self
                .columns
                .iter()
                .zip(vals)
                .filter_map(|((n, _), v)| {
                    v.map(|v| format!("\"{}\":{}", esc(n), num_json(Some(v))))
                })
                .collect();
            format!("{{{}}}", kv.join(","))
        };
        let names: Vec<String> = self
            .columns
            .iter()
            .map(|(n, _)| format!("\"{}\"", esc(n)))
            .collect();
        let mut s = format!(
            "{{\"quick\":{},\"columns\":[{}],\"rows\":[",
            self.quick,
            names.join(",")
        );
        let rows: Vec<String> = self
            .rows()
            .iter()
            .map(|r| {
                let ratio = |base| self.ratios(r, base).map_or("null".into(), |v| obj(&v));
                let mut o = format!(
                    "{{\"name\":\"{}\",\"kind\":\"{}\",\"seconds\":{},\"vs_native\":{},\"vs_qemu_tcg\":{}",
                    esc(&r.label),
                    r.kind.json(),
                    obj(&r.secs),
                    ratio(NATIVE),
                    ratio(QEMU_TCG)
                );
                if r.kind == Kind::Workload {
                    let checks: Vec<String> = self
                        .columns
                        .iter()
                        .filter_map(|(n, _)| {
                            self.bench(n, &r.label)
                                .map(|b| format!("\"{}\":{}", esc(n), b.check))
                        })
                        .collect();
                    write!(
                        o,
                        ",\"checksums\":{{{}}},\"check_status\":\"{}\"",
                        checks.join(","),
                        esc(&self.check_status(&r.label))
                    )
                    .ok();
                }
                o.push('}');
                o
            })
            .collect();
        s.push_str(&rows.join(","));
        s.push_str("],\"backends\":{");
        let bs: Vec<String> = self
            .columns
            .iter()
            .map(|(n, c)| {
                let body = match c {
                    Col::Unavailable(why) => {
                        format!("\"status\":\"unavailable\",\"reason\":\"{}\"", esc(why))
                    }
                    Col::Failed(why) => format!("\"status\":\"failed\",\"reason\":\"{}\"", esc(why)),
                    Col::Ran(m) => format!(
                        "\"status\":\"ran\",\"ended\":\"{}\",\"wall_s\":{},\"boot_to_ready_guest_s\":{},\"boot_to_ready_host_s\":{}",
                        esc(&m.ended),
                        num_json(Some(m.wall_s)),
                        num_json(m.ready_guest_s),
                        num_json(m.ready_host_s)
                    ),
                };
                format!("\"{}\":{{{body}}}", esc(n))
            })
            .collect();
        s.push_str(&bs.join(","));
        let problems: Vec<String> = self
            .problems()
            .iter()
            .map(|p| format!("\"{}\"", esc(p)))
            .collect();
        write!(s, "}},\"problems\":[{}]}}", problems.join(",")).ok();
        s.push('\n');
        s
    }
}

/// `program` found in the directories of `path` (a `$PATH` value).
fn which_in(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn qemu_missing() -> String {
    format!("{QEMU} not found (apt-get install qemu-system-x86)")
}

fn unavailable(quiet: bool, name: &str, why: String) -> Col {
    if !quiet {
        eprintln!("bench: {name}: unavailable: {why}");
    }
    Col::Unavailable(why)
}

/// Runs the host `rzbench` once per workload (once with `all`), like the guest's command.
fn run_native(
    rzbench: &Path,
    workloads: &[String],
    quick: bool,
    timeout: Duration,
    quiet: bool,
) -> Col {
    if !rzbench.is_file() {
        return unavailable(
            quiet,
            NATIVE,
            format!(
                "no host rzbench at {} (the yardstick's cache keeps it beside vmlinuz; or pass \
                 --rzbench PATH)",
                rzbench.display()
            ),
        );
    }
    let all = workloads.len() == WORKLOADS.len();
    let runs: Vec<&str> = if all {
        vec!["all"]
    } else {
        workloads.iter().map(String::as_str).collect()
    };
    let mut console = Console::start(
        "bench",
        NATIVE,
        quiet,
        &format!("running {}", rzbench.display()),
    );
    let mut ended = "exit 0".to_string();
    let mut ended_ok = true;
    for w in runs {
        let mut cmd = Command::new(rzbench);
        cmd.arg(w);
        if quick {
            cmd.arg("--quick");
        }
        let child = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Col::Failed(format!("cannot run {}: {e}", rzbench.display())),
        };
        match watch_child(child, &mut console, timeout) {
            Ok(end) => match end.status {
                None => {
                    ended = "timeout".into();
                    ended_ok = false;
                    break;
                }
                Some(st) if !st.success() => {
                    ended = format!("rzbench {w}: {st}: {}", end.stderr.trim());
                    ended_ok = false;
                }
                Some(_) => {}
            },
            Err(e) => return Col::Failed(format!("rzbench {w}: {e}")),
        }
    }
    let w = console.finish(&format!("ended ({ended})"));
    Col::Ran(Measured {
        ended,
        ended_ok,
        wall_s: w.wall.as_secs_f64(),
        ready_guest_s: None,
        ready_host_s: None,
        benches: w.text.lines().filter_map(parse_bench).collect(),
    })
}

/// Runs the guest under QEMU (`-accel tcg` or `kvm`) with the console on stdio.
fn run_qemu(kvm: bool, force_kvm: bool, guest: &Guest, timeout: Duration, quiet: bool) -> Col {
    let name = if kvm { QEMU_KVM } else { QEMU_TCG };
    let Some(qemu) = which_in(QEMU, std::env::var_os("PATH").as_deref()) else {
        return unavailable(quiet, name, qemu_missing());
    };
    if kvm {
        if let Err(e) = ringzero::kvm::probe() {
            return unavailable(quiet, name, e.to_string());
        }
        if !force_kvm {
            if let Some(why) = kvm_default_skip("--kvm-on-pvm") {
                return unavailable(quiet, name, why);
            }
        }
    }
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", if kvm { "kvm" } else { "tcg" }])
        .args(["-nographic", "-no-reboot", "-m"])
        .arg(format!("{}M", guest.mem >> 20))
        .arg("-kernel")
        .arg(&guest.kernel_path)
        .arg("-initrd")
        .arg(&guest.initrd_path)
        .arg("-append")
        .arg(&guest.cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut console = Console::start(
        "bench",
        name,
        quiet,
        &format!("booting under {} ({} MiB)", qemu.display(), guest.mem >> 20),
    );
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Col::Failed(format!("cannot start {}: {e}", qemu.display())),
    };
    let end = match watch_child(child, &mut console, timeout) {
        Ok(e) => e,
        Err(e) => return Col::Failed(format!("{QEMU}: {e}")),
    };
    let (ended, ended_ok) = match end.status {
        None => (format!("timeout after {timeout:?}"), false),
        Some(st) if st.success() => ("exit 0".to_string(), true),
        Some(st) => (st.to_string(), false),
    };
    let w = console.finish(&format!("ended ({ended})"));
    let ready_guest = w.text.lines().find_map(parse_ready);
    if !ended_ok && ready_guest.is_none() && end.status.is_some() {
        // QEMU gave up before the guest got anywhere: with KVM that is "cannot run here".
        let why = end
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        let why = format!(
            "{QEMU} -accel {} failed to start ({ended}): {why}",
            if kvm { "kvm" } else { "tcg" }
        );
        return if kvm {
            Col::Unavailable(why)
        } else {
            Col::Failed(why)
        };
    }
    Col::Ran(Measured {
        ended,
        ended_ok,
        wall_s: w.wall.as_secs_f64(),
        ready_guest_s: ready_guest,
        ready_host_s: w.ready_host.map(|d| d.as_secs_f64()),
        benches: w.text.lines().filter_map(parse_bench).collect(),
    })
}

fn from_ringzero(c: Column) -> Col {
    match c {
        Column::Unavailable(w) => Col::Unavailable(w),
        Column::Failed(w) => Col::Failed(w),
        Column::Ran(r) => Col::Ran(Measured {
            ended: format!("{:?}", r.outcome),
            ended_ok: r.outcome == RunOutcome::PowerOff,
            wall_s: r.host_wall.as_secs_f64(),
            ready_guest_s: r.ready_s,
            ready_host_s: r.ready_host_s,
            benches: r.benches,
        }),
    }
}

/// `ringzero bench`.
pub fn bench(args: BenchArgs) -> Result<u8> {
    let workloads = parse_workloads(&args.run.workloads)?;
    let guest = Guest::load(
        args.run.kernel.as_deref(),
        args.run.initrd.as_deref(),
        args.run.mem,
        &workloads,
        args.run.quick,
    )?;
    let rzbench = args.rzbench.clone().unwrap_or_else(|| {
        guest
            .kernel_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("rzbench")
    });
    let mut columns = vec![(
        NATIVE.to_string(),
        run_native(
            &rzbench,
            &workloads,
            args.run.quick,
            args.run.timeout,
            args.run.quiet,
        ),
    )];
    for accel in [Accel::Bt, Accel::Kvm] {
        let c = compare::run_ringzero(
            accel,
            (args.kvm_on_pvm, "--kvm-on-pvm"),
            &guest,
            args.run.timeout,
            "bench",
            args.run.quiet,
        );
        columns.push((accel_name(accel).to_string(), from_ringzero(c)));
    }
    if args.peers {
        for kvm in [false, true] {
            let name = if kvm { QEMU_KVM } else { QEMU_TCG };
            let c = run_qemu(
                kvm,
                args.kvm_on_pvm,
                &guest,
                args.run.timeout,
                args.run.quiet,
            );
            columns.push((name.to_string(), c));
        }
    }
    let run = BenchRun {
        quick: args.run.quick,
        workloads,
        columns,
    };
    print!("{}", run.render());
    write_output(args.run.json.as_deref(), "--json", || run.to_json())?;
    Ok(report_problems("bench", &run.problems()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(benches: &[(&str, u64, u64)], ready: Option<(f64, f64)>, wall: f64) -> Col {
        Col::Ran(Measured {
            ended: "exit 0".into(),
            ended_ok: true,
            wall_s: wall,
            ready_guest_s: ready.map(|r| r.0),
            ready_host_s: ready.map(|r| r.1),
            benches: benches
                .iter()
                .map(|&(n, ns, check)| Bench {
                    name: n.into(),
                    ns,
                    check,
                })
                .collect(),
        })
    }

    fn sample() -> BenchRun {
        BenchRun {
            quick: true,
            workloads: vec!["getppid".into()],
            columns: vec![
                (
                    "native".into(),
                    ran(&[("getppid", 1_000_000, 20000)], None, 0.01),
                ),
                (
                    "bt".into(),
                    ran(&[("getppid", 8_000_000, 20000)], Some((9.0, 12.0)), 30.0),
                ),
                ("kvm".into(), Col::Unavailable("PVM".into())),
                (
                    "qemu-tcg".into(),
                    ran(&[("getppid", 4_000_000, 20000)], Some((2.0, 3.0)), 6.0),
                ),
                ("qemu-kvm".into(), Col::Unavailable("no \"kvm\"".into())),
            ],
        }
    }

    #[test]
    fn table_has_seconds_and_both_ratio_blocks() {
        let r = sample();
        let t = r.render();
        assert!(t.contains("kvm: unavailable: PVM"), "{t}");
        let head = t.lines().find(|l| l.starts_with("seconds")).unwrap();
        for c in ["native", "bt", "kvm", "qemu-tcg", "qemu-kvm", "checksum"] {
            assert!(head.contains(c), "{head}");
        }
        let getppid: Vec<&str> = t.lines().filter(|l| l.starts_with("getppid")).collect();
        assert_eq!(getppid.len(), 3, "{t}");
        assert!(
            getppid[0].contains("0.008000") && getppid[0].ends_with("ok"),
            "{t}"
        );
        // ÷ native: bt 8×, qemu-tcg 4×; ÷ qemu-tcg: native 0.25, bt 2.
        assert!(
            getppid[1].contains("8.00") && getppid[1].contains("4.00"),
            "{t}"
        );
        assert!(
            getppid[2].contains("0.25") && getppid[2].contains("2.00"),
            "{t}"
        );
        // Boot rows compare with qemu-tcg only.
        assert_eq!(t.matches("boot-to-ready (host)").count(), 2, "{t}");
        assert!(t.contains("4.50"), "bt boot 9/2: {t}");
        assert!(r.problems().is_empty());
        let j = r.to_json();
        assert!(
            j.contains("\"vs_native\":{\"native\":1.000000,\"bt\":8.000000,\"qemu-tcg\":4.000000}"),
            "{j}"
        );
        assert!(j.contains("\"kind\":\"wall\",\"seconds\":{\"native\":0.010000,\"bt\":30.000000,\"qemu-tcg\":6.000000},\"vs_native\":null,\"vs_qemu_tcg\":{\"bt\":5.000000,\"qemu-tcg\":1.000000}"), "{j}");
        assert!(j.contains("\"reason\":\"no \\\"kvm\\\"\""), "{j}");
        assert!(j.contains("\"problems\":[]"), "{j}");
    }

    #[test]
    fn checksum_disagreement_and_bad_end_are_problems() {
        let mut r = sample();
        r.columns[3].1 = ran(&[("getppid", 4_000_000, 7)], Some((2.0, 3.0)), 6.0);
        if let Col::Ran(m) = &mut r.columns[1].1 {
            m.ended = "Timeout".into();
            m.ended_ok = false;
        }
        let p = r.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("bt: the run ended with Timeout"));
        assert!(
            p[1].contains("MISMATCH native=20000 bt=20000 qemu-tcg=7"),
            "{p:?}"
        );
        // Without qemu-tcg there is no second ratio block.
        r.columns.truncate(3);
        assert!(!r.render().contains("÷ qemu-tcg"));
    }

    #[test]
    fn missing_qemu_is_unavailable() {
        assert_eq!(
            which_in(QEMU, Some("/nonexistent:/nonexistent2".as_ref())),
            None
        );
        assert_eq!(
            which_in("sh", Some("/nonexistent:/bin".as_ref())),
            Some("/bin/sh".into())
        );
        assert_eq!(
            qemu_missing(),
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
        );
    }
}
