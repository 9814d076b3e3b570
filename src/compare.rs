//! `ringzero compare`: the same guest workloads under each backend, in one table (docs/compare.md).
//!
//! Each backend boots the yardstick with `rz.run="rzbench ..."` and the console captured to a
//! temporary file; the `RZBENCH` lines give the workloads' times and checksums, the
//! `RINGZERO-READY` line the guest's boot time, and the [`RunReport`] the exits, traps and
//! translation counters.

mod console;
mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use console::{watch_child, Console};

use anyhow::{bail, Context, Result};
use ringzero::cli::{Accel, CompareArgs, SerialTarget};
use ringzero::machine::{self, BootSource, MachineConfig, RunOutcome};
use ringzero::vcpu::{ExitKind, ExitStats};
use ringzero_translator::system::TrapKind;

/// The rzbench workloads in `all` order, with their documented `--quick` and full checksums
/// (test-images/workloads/README.md).
pub const WORKLOADS: [(&str, u64, u64); 7] = [
    ("cpu-int", 10770858389180311394, 12071873043233424289),
    ("mem-walk", 16638935040, 4260542545920),
    ("getppid", 20000, 1000000),
    ("mmap-munmap", 81913600, 204799680000),
    ("fork-wait", 12620993455287261262, 10883633812875105272),
    ("file-io", 9306515664155902757, 3345786708075356965),
    ("pipe-io", 6817025801709889829, 14293341008154436389),
];

/// The BT counters shown (KVM sets none; they print as `-`).
const COUNTERS: [&str; 6] = [
    "instructions",
    "blocks_translated",
    "blocks_compiled",
    "tier_ups",
    "blocks_invalidated",
    "code_page_writes",
];

/// One parsed `RZBENCH name=<n> ns=<elapsed> check=<checksum>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bench {
    /// Workload name.
    pub name: String,
    /// Elapsed guest nanoseconds (CLOCK_MONOTONIC in the guest).
    pub ns: u64,
    /// The workload's checksum.
    pub check: u64,
}

/// Parses a line holding `RZBENCH ` (console output may precede it): exactly the three fields.
pub fn parse_bench(line: &str) -> Option<Bench> {
    let at = line.find("RZBENCH ")?;
    let rest = line[at + "RZBENCH ".len()..].trim_end_matches(['\r', '\n']);
    let mut f = rest.split(' ');
    let name = f.next()?.strip_prefix("name=")?;
    let ns = f.next()?.strip_prefix("ns=")?.parse().ok()?;
    let check = f.next()?.strip_prefix("check=")?.parse().ok()?;
    if f.next().is_some() || name.is_empty() {
        return None;
    }
    Some(Bench {
        name: name.to_string(),
        ns,
        check,
    })
}

/// The guest uptime in seconds from a `RINGZERO-READY <uptime>` line.
pub fn parse_ready(line: &str) -> Option<f64> {
    let at = line.find("RINGZERO-READY ")?;
    line[at + "RINGZERO-READY ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one backend's run produced.
pub struct Ran {
    /// Backend name as the machine reports it.
    pub backend: &'static str,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Wall time from the first guest entry to the stop.
    pub wall: Duration,
    /// Host time from the machine's start (building it included) to the stop.
    pub host_wall: Duration,
    /// Guest uptime at `RINGZERO-READY`, when printed.
    pub ready_s: Option<f64>,
    /// Host seconds from the machine's start (building it included) to the `RINGZERO-READY`
    /// line appearing on the console.
    pub ready_host_s: Option<f64>,
    /// The `RZBENCH` lines, in order.
    pub benches: Vec<Bench>,
    /// Exits, traps and counters.
    pub stats: ExitStats,
}

/// One backend's column.
pub enum Column {
    /// The backend cannot (or by default should not) run here.
    Unavailable(String),
    /// The machine failed to build or run.
    Failed(String),
    /// It ran.
    Ran(Box<Ran>),
}

/// The whole comparison: what was asked and each backend's result.
pub struct Comparison {
    /// Whether `--quick` sizes ran.
    pub quick: bool,
    /// The requested workloads, in order.
    pub workloads: Vec<String>,
    /// (backend name, result), in the requested order.
    pub columns: Vec<(String, Column)>,
}

impl Comparison {
    fn ran(&self) -> impl Iterator<Item = (&str, &Ran)> {
        self.columns.iter().filter_map(|(n, c)| match c {
            Column::Ran(r) => Some((n.as_str(), r.as_ref())),
            _ => None,
        })
    }

    fn bench(&self, backend: &str, workload: &str) -> Option<&Bench> {
        self.ran()
            .find(|(n, _)| *n == backend)
            .and_then(|(_, r)| r.benches.iter().find(|b| b.name == workload))
    }

    /// The checksum verdict of one workload: `ok`, or what is wrong.
    pub fn check_status(&self, workload: &str) -> String {
        let seen: Vec<(&str, Option<u64>)> = self
            .ran()
            .map(|(n, r)| {
                let c = r.benches.iter().find(|b| b.name == workload);
                (n, c.map(|b| b.check))
            })
            .collect();
        check_verdict(self.quick, workload, &seen)
    }

    /// Problems that make the exit status 1: failed runs, missing lines, checksum mismatches.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (n, c) in &self.columns {
            match c {
                Column::Failed(e) => p.push(format!("{n}: {e}")),
                Column::Ran(r) if !matches!(r.outcome, RunOutcome::PowerOff) => {
                    p.push(format!("{n}: the run ended with {:?}", r.outcome))
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

    /// The table: times and ratio per workload, boot-to-ready and wall, then the stats.
    pub fn render(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        let ratio = names.contains(&"bt") && names.contains(&"kvm");
        let mut s = format!(
            "ringzero compare ({} sizes)\n",
            if self.quick { "--quick" } else { "full" }
        );
        for (n, c) in &self.columns {
            match c {
                Column::Unavailable(why) => writeln!(s, "  {n}: unavailable: {why}"),
                Column::Failed(why) => writeln!(s, "  {n}: FAILED: {why}"),
                Column::Ran(r) => writeln!(s, "  {n}: ran ({:?})", r.outcome),
            }
            .ok();
        }
        let mut head = format!("{:<22}", "workload");
        for n in &names {
            write!(head, " {:>14}", format!("{n} (s)")).ok();
        }
        if ratio {
            write!(head, " {:>9}", "bt/kvm").ok();
        }
        s.push_str(&head);
        s.push_str("  checksum\n");
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
        let row = |s: &mut String, label: &str, vals: &[Option<f64>], tail: &str| {
            write!(s, "{label:<22}").ok();
            for v in vals {
                write!(s, " {:>14}", secs(*v)).ok();
            }
            if ratio {
                let r = match (
                    vals.first().copied().flatten(),
                    vals.get(1).copied().flatten(),
                ) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                write!(s, " {r:>9}").ok();
            }
            writeln!(s, "  {tail}").ok();
        };
        let ordered = &names;
        for w in &self.workloads {
            let vals: Vec<Option<f64>> = ordered
                .iter()
                .map(|n| self.bench(n, w).map(|b| b.ns as f64 / 1e9))
                .collect();
            row(&mut s, w, &vals, &self.check_status(w));
        }
        let col = |f: &dyn Fn(&Ran) -> Option<f64>| -> Vec<Option<f64>> {
            ordered
                .iter()
                .map(|n| self.ran().find(|(m, _)| m == n).and_then(|(_, r)| f(r)))
                .collect()
        };
        row(&mut s, "boot-to-ready (guest)", &col(&|r| r.ready_s), "");
        row(
            &mut s,
            "boot-to-ready (host)",
            &col(&|r| r.ready_host_s),
            "",
        );
        row(
            &mut s,
            "wall (whole run)",
            &col(&|r| Some(r.wall.as_secs_f64())),
            "",
        );
        s.push_str(&self.render_stats());
        s
    }

    fn render_stats(&self) -> String {
        let ran: Vec<(&str, &Ran)> = self.ran().collect();
        if ran.is_empty() {
            return String::new();
        }
        let mut s = format!("\n{:<28}", "stats");
        for (n, _) in &ran {
            write!(s, " {n:>16}").ok();
        }
        s.push('\n');
        let mut line = |label: String, vals: Vec<Option<u64>>| {
            write!(s, "{label:<28}").ok();
            for v in vals {
                write!(s, " {:>16}", v.map_or("-".into(), |v| v.to_string())).ok();
            }
            s.push('\n');
        };
        line(
            "exits".into(),
            ran.iter().map(|(_, r)| Some(r.stats.total())).collect(),
        );
        for k in ExitKind::ALL {
            if ran.iter().any(|(_, r)| r.stats.count(k) > 0) {
                line(
                    format!("  exit {}", k.name()),
                    ran.iter().map(|(_, r)| Some(r.stats.count(k))).collect(),
                );
            }
        }
        line(
            "traps".into(),
            ran.iter().map(|(_, r)| Some(traps(&r.stats))).collect(),
        );
        for k in TrapKind::ALL {
            if ran.iter().any(|(_, r)| r.stats.trap_count(k) > 0) {
                line(
                    format!("  trap {}", k.name()),
                    ran.iter()
                        .map(|(_, r)| Some(r.stats.trap_count(k)))
                        .collect(),
                );
            }
        }
        for c in COUNTERS {
            line(
                c.to_string(),
                ran.iter().map(|(_, r)| r.stats.counter(c)).collect(),
            );
        }
        s
    }

    /// The same data as one JSON object (schema in docs/compare.md).
    pub fn to_json(&self) -> String {
        let mut s = format!("{{\"quick\":{},\"workloads\":[", self.quick);
        let ws: Vec<String> = self
            .workloads
            .iter()
            .map(|w| {
                let times: Vec<String> = self
                    .ran()
                    .filter_map(|(n, _)| {
                        self.bench(n, w)
                            .map(|b| format!("\"{}\":{:.9}", esc(n), b.ns as f64 / 1e9))
                    })
                    .collect();
                let checks: Vec<String> = self
                    .ran()
                    .filter_map(|(n, _)| self.bench(n, w).map(|b| format!("\"{}\":{}", esc(n), b.check)))
                    .collect();
                format!(
                    "{{\"name\":\"{}\",\"seconds\":{{{}}},\"checksums\":{{{}}},\"ratio_bt_kvm\":{},\"check_status\":\"{}\"}}",
                    esc(w),
                    times.join(","),
                    checks.join(","),
                    ratio_json(self.bench("bt", w).map(|b| b.ns as f64), self.bench("kvm", w).map(|b| b.ns as f64)),
                    esc(&self.check_status(w))
                )
            })
            .collect();
        s.push_str(&ws.join(","));
        s.push_str("],\"backends\":{");
        let bs: Vec<String> = self
            .columns
            .iter()
            .map(|(n, c)| {
                let body = match c {
                    Column::Unavailable(why) => {
                        format!("\"status\":\"unavailable\",\"reason\":\"{}\"", esc(why))
                    }
                    Column::Failed(why) => {
                        format!("\"status\":\"failed\",\"reason\":\"{}\"", esc(why))
                    }
                    Column::Ran(r) => format!(
                        "\"status\":\"ran\",\"outcome\":\"{}\",\"wall_time_s\":{:.6},\"boot_to_ready_s\":{},\"boot_to_ready_host_s\":{},\"stats\":{}",
                        esc(&format!("{:?}", r.outcome)),
                        r.wall.as_secs_f64(),
                        num_json(r.ready_s),
                        num_json(r.ready_host_s),
                        r.stats.to_json(r.backend, r.wall).trim_end()
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

impl Comparison {
    /// The bt/kvm ratio chart (docs/compare.md): one bar per workload that ran under both, and
    /// boot-to-ready; with one backend, that backend's absolute times, said in the title.
    pub fn svg(&self) -> String {
        use svg::{Bar, Chart, Unit};
        let size = if self.quick {
            "--quick sizes"
        } else {
            "full sizes"
        };
        let ran: Vec<(&str, &Ran)> = self.ran().collect();
        let bt = ran.iter().find(|(n, _)| *n == "bt").map(|r| r.1);
        let kvm = ran.iter().find(|(n, _)| *n == "kvm").map(|r| r.1);
        let mut bars = Vec::new();
        let chart = if let (Some(b), Some(k)) = (bt, kvm) {
            for w in &self.workloads {
                if let (Some(x), Some(y)) = (self.bench("bt", w), self.bench("kvm", w)) {
                    if y.ns > 0 {
                        bars.push(Bar {
                            label: w.clone(),
                            value: x.ns as f64 / y.ns as f64,
                            secondary: false,
                        });
                    }
                }
            }
            for (label, f) in BOOT_ROWS {
                if let (Some(x), Some(y)) = (f(b), f(k)) {
                    if y > 0.0 {
                        bars.push(Bar {
                            label: label.into(),
                            value: x / y,
                            secondary: true,
                        });
                    }
                }
            }
            Chart {
                title: format!("ringzero compare: bt time / kvm time ({size})"),
                subtitle: "how many times longer binary translation takes than KVM; the dashed                            line is 1× (equal)"
                    .into(),
                x_label: "bt time ÷ kvm time (×)".into(),
                y_label: "workload".into(),
                reference: Some(1.0),
                unit: Unit::Times,
                bars,
            }
        } else if let Some(&(name, r)) = ran.first() {
            for b in &r.benches {
                if self.workloads.contains(&b.name) {
                    bars.push(Bar {
                        label: b.name.clone(),
                        value: b.ns as f64 / 1e9,
                        secondary: false,
                    });
                }
            }
            for (label, f) in BOOT_ROWS {
                if let Some(v) = f(r) {
                    bars.push(Bar {
                        label: label.into(),
                        value: v,
                        secondary: true,
                    });
                }
            }
            let others: Vec<&str> = self
                .columns
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| *n != name)
                .collect();
            let why = if others.is_empty() {
                String::new()
            } else {
                format!(" ({} did not run)", others.join(", "))
            };
            Chart {
                title: format!("ringzero compare: {name} only{why}: absolute times, {size}"),
                subtitle: "workloads: guest-clock seconds; boot-to-ready: guest uptime and host \
                           wall-clock seconds"
                    .into(),
                x_label: format!("seconds under {name}"),
                y_label: "workload".into(),
                reference: None,
                unit: Unit::Seconds,
                bars,
            }
        } else {
            Chart {
                title: format!("ringzero compare: no backend ran ({size})"),
                subtitle: "nothing to draw".into(),
                x_label: "seconds".into(),
                y_label: "workload".into(),
                reference: None,
                unit: Unit::Seconds,
                bars,
            }
        };
        chart.render()
    }
}

/// The boot rows of the chart: label and value.
#[allow(clippy::type_complexity)]
const BOOT_ROWS: [(&str, fn(&Ran) -> Option<f64>); 2] = [
    ("boot-to-ready (guest)", |r| r.ready_s),
    ("boot-to-ready (host)", |r| r.ready_host_s),
];

/// The checksum verdict of one workload from each column that ran (`None`: it printed no line):
/// `ok`, `-` (no column ran), `missing under X`, or `MISMATCH ...` (columns disagree, or they
/// agree on a value other than the documented one for the size).
pub(crate) fn check_verdict(quick: bool, workload: &str, seen: &[(&str, Option<u64>)]) -> String {
    if let Some((n, _)) = seen.iter().find(|(_, c)| c.is_none()) {
        return format!("missing under {n}");
    }
    let seen: Vec<(&str, u64)> = seen.iter().filter_map(|&(n, c)| Some((n, c?))).collect();
    let Some(&(_, first)) = seen.first() else {
        return "-".into();
    };
    if seen.iter().any(|&(_, c)| c != first) {
        let all: Vec<String> = seen.iter().map(|(n, c)| format!("{n}={c}")).collect();
        return format!("MISMATCH {}", all.join(" "));
    }
    let documented = WORKLOADS
        .iter()
        .find(|w| w.0 == workload)
        .map(|w| if quick { w.1 } else { w.2 });
    match documented {
        Some(d) if d != first => format!("MISMATCH documented={d} got={first}"),
        _ => "ok".into(),
    }
}

fn traps(stats: &ExitStats) -> u64 {
    TrapKind::ALL.iter().map(|&k| stats.trap_count(k)).sum()
}

/// A number, or `null`.
pub(crate) fn num_json(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or("null".into(), |v| format!("{v:.6}"))
}

pub(crate) fn ratio_json(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.6}", a / b),
        _ => "null".into(),
    }
}

/// JSON string escaping (quotes, backslashes, control characters).
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                write!(o, "\\u{:04x}", c as u32).ok();
            }
            c => o.push(c),
        }
    }
    o
}

/// The requested workloads: `all` or known names.
pub fn parse_workloads(spec: &str) -> Result<Vec<String>> {
    if spec.trim() == "all" {
        return Ok(WORKLOADS.iter().map(|w| w.0.to_string()).collect());
    }
    let mut out = Vec::new();
    for w in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if !WORKLOADS.iter().any(|k| k.0 == w) {
            let known: Vec<&str> = WORKLOADS.iter().map(|k| k.0).collect();
            bail!("unknown workload '{w}' (known: all, {})", known.join(", "));
        }
        if !out.iter().any(|o: &String| o == w) {
            out.push(w.to_string());
        }
    }
    if out.is_empty() {
        bail!("--workloads names no workload");
    }
    Ok(out)
}

/// The requested backends and whether they were named explicitly.
pub fn parse_backends(spec: Option<&str>) -> Result<(Vec<Accel>, bool)> {
    let Some(spec) = spec else {
        return Ok((vec![Accel::Bt, Accel::Kvm], false));
    };
    let mut out = Vec::new();
    for b in spec.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let a = match b {
            "bt" => Accel::Bt,
            "kvm" => Accel::Kvm,
            _ => bail!("unknown backend '{b}' (known: bt, kvm)"),
        };
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        bail!("--backends names no backend");
    }
    // bt before kvm: the table's ratio column is bt/kvm.
    out.sort_by_key(|a| *a != Accel::Bt);
    Ok((out, true))
}

/// The guest command: `rzbench all` or one `rzbench <w>` per workload.
pub fn guest_command(workloads: &[String], quick: bool) -> String {
    let q = if quick { " --quick" } else { "" };
    if workloads.len() == WORKLOADS.len() && workloads.iter().zip(WORKLOADS).all(|(a, b)| a == b.0)
    {
        return format!("rzbench all{q}");
    }
    let cmds: Vec<String> = workloads
        .iter()
        .map(|w| format!("rzbench {w}{q}"))
        .collect();
    cmds.join("; ")
}

pub(crate) fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Bt => "bt",
        Accel::Kvm => "kvm",
        Accel::Auto => "auto",
    }
}

/// Why KVM should not run by default here, if it should not; `force` is the flag that runs it
/// anyway.
pub(crate) fn kvm_default_skip(force: &str) -> Option<String> {
    Path::new("/sys/module/kvm_pvm").exists().then(|| {
        format!(
            "/dev/kvm is PVM (/sys/module/kvm_pvm exists), where booting Linux takes far too \
             long; pass {force} to run it anyway"
        )
    })
}

/// The yardstick's kernel and initramfs, from `test-images/linux/build.sh --print-paths`.
pub(crate) fn yardstick() -> Result<(PathBuf, PathBuf)> {
    let candidates = [
        PathBuf::from("test-images/linux/build.sh"),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test-images/linux/build.sh"
        )),
    ];
    let script = candidates.iter().find(|p| p.is_file()).with_context(|| {
        "no --kernel/--initrd given and test-images/linux/build.sh was not found (run from the \
         ringzero source tree or pass --kernel and --initrd)"
    })?;
    let o = std::process::Command::new(script)
        .arg("--print-paths")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !o.status.success() {
        bail!(
            "{} --print-paths failed ({}); pass --kernel and --initrd",
            script.display(),
            o.status
        );
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let mut paths = out.split_whitespace();
    match (paths.next(), paths.next()) {
        (Some(k), Some(i)) => Ok((PathBuf::from(k), PathBuf::from(i))),
        _ => bail!("{} --print-paths printed no two paths", script.display()),
    }
}

/// The guest every run boots: the yardstick's (or the given) kernel and initramfs, the memory
/// size and the kernel command line running the workloads.
pub(crate) struct Guest {
    /// The kernel file (the host `rzbench` sits beside the yardstick's).
    pub(crate) kernel_path: PathBuf,
    /// The initramfs file.
    pub(crate) initrd_path: PathBuf,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    /// Guest RAM in bytes.
    pub(crate) mem: u64,
    /// The kernel command line.
    pub(crate) cmdline: String,
}

impl Guest {
    /// Finds (or takes) the images and reads them; `mem` defaults to 256M with `quick`, else 1G.
    pub(crate) fn load(
        kernel: Option<&Path>,
        initrd: Option<&Path>,
        mem: Option<u64>,
        workloads: &[String],
        quick: bool,
    ) -> Result<Guest> {
        let (kernel_path, initrd_path) = match (kernel, initrd) {
            (Some(k), Some(i)) => (k.to_path_buf(), i.to_path_buf()),
            _ => yardstick()?,
        };
        let kernel = std::fs::read(&kernel_path)
            .with_context(|| format!("cannot read kernel {}", kernel_path.display()))?;
        let initrd = std::fs::read(&initrd_path)
            .with_context(|| format!("cannot read initrd {}", initrd_path.display()))?;
        Ok(Guest {
            kernel_path,
            initrd_path,
            kernel,
            initrd,
            mem: mem.unwrap_or(if quick { 256 << 20 } else { 1 << 30 }),
            cmdline: format!(
                "console=ttyS0 reboot=k panic=-1 quiet rz.run=\"{}\"",
                guest_command(workloads, quick)
            ),
        })
    }
}

/// Runs ringzero's `accel` backend on `guest` with its console watched (progress lines on
/// stderr under `command`, unless `quiet`). `force`: (whether the user asked for KVM even on
/// PVM, the flag that does so).
pub(crate) fn run_ringzero(
    accel: Accel,
    force: (bool, &str),
    guest: &Guest,
    timeout: Duration,
    command: &'static str,
    quiet: bool,
) -> Column {
    let name = accel_name(accel);
    let unavailable = |why: String| {
        if !quiet {
            eprintln!("{command}: {name}: unavailable: {why}");
        }
        Column::Unavailable(why)
    };
    if accel == Accel::Kvm {
        if let Err(e) = ringzero::kvm::probe() {
            return unavailable(e.to_string());
        }
        if !force.0 {
            if let Some(why) = kvm_default_skip(force.1) {
                return unavailable(why);
            }
        }
    }
    let console = std::env::temp_dir().join(format!(
        "ringzero-{command}-{}-{name}.console",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&console);
    let config = MachineConfig {
        accel,
        boot: BootSource::Linux {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: guest.cmdline.clone(),
        },
        mem_size: guest.mem,
        serial: SerialTarget::File(console.clone()),
        timeout: Some(timeout),
        trace: None,
    };
    let watch = Console::start(
        command,
        name,
        quiet,
        &format!("booting ({} MiB)", guest.mem >> 20),
    );
    let tail = console::Tail::start(console.clone(), watch);
    let report = machine::run(config, |_, _| {});
    let watched = tail.stop();
    let _ = std::fs::remove_file(&console);
    let watch = match watched {
        Ok(w) => w,
        Err(e) => return Column::Failed(e),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            watch.finish(&format!("failed ({e})"));
            return Column::Failed(e.to_string());
        }
    };
    let w = watch.finish(&format!("ended ({:?})", report.outcome));
    Column::Ran(Box::new(Ran {
        backend: report.backend,
        outcome: report.outcome,
        wall: report.wall,
        host_wall: w.wall,
        ready_s: w.text.lines().find_map(parse_ready),
        ready_host_s: w.ready_host.map(|d| d.as_secs_f64()),
        benches: w.text.lines().filter_map(parse_bench).collect(),
        stats: report.stats,
    }))
}

/// `ringzero compare`.
pub fn compare(args: CompareArgs) -> Result<u8> {
    let workloads = parse_workloads(&args.run.workloads)?;
    let (backends, explicit) = parse_backends(args.backends.as_deref())?;
    let guest = Guest::load(
        args.run.kernel.as_deref(),
        args.run.initrd.as_deref(),
        args.run.mem,
        &workloads,
        args.run.quick,
    )?;
    let mut columns = Vec::new();
    for accel in backends {
        let col = run_ringzero(
            accel,
            (explicit, "--backends kvm"),
            &guest,
            args.run.timeout,
            "compare",
            args.run.quiet,
        );
        columns.push((accel_name(accel).to_string(), col));
    }
    let cmp = Comparison {
        quick: args.run.quick,
        workloads,
        columns,
    };
    print!("{}", cmp.render());
    write_output(args.run.json.as_deref(), "--json", || cmp.to_json())?;
    write_output(args.svg.as_deref(), "--svg", || cmp.svg())?;
    Ok(report_problems("compare", &cmp.problems()))
}

/// Writes `what()` to `path` when the option `flag` asked for it.
pub(crate) fn write_output(
    path: Option<&Path>,
    flag: &str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, what())
            .with_context(|| format!("cannot write {flag} {}", path.display()))?;
    }
    Ok(())
}

/// Prints `problems` to stderr as `ringzero: <command>: ...`; the exit status they make (0 or 1).
pub(crate) fn report_problems(command: &str, problems: &[String]) -> u8 {
    for p in problems {
        eprintln!("ringzero: {command}: {p}");
    }
    u8::from(!problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(backend: &'static str, benches: &[(&str, u64, u64)]) -> Column {
        let mut stats = ExitStats::default();
        stats.record(ExitKind::PortIoOut);
        stats.record_trap(TrapKind::ALL[0]);
        if backend == "bt" {
            stats.set_counter("tier_ups", 3);
        }
        Column::Ran(Box::new(Ran {
            backend,
            outcome: RunOutcome::PowerOff,
            wall: Duration::from_millis(1500),
            host_wall: Duration::from_millis(1700),
            ready_s: Some(1.25),
            ready_host_s: Some(2.5),
            benches: benches
                .iter()
                .map(|&(n, ns, check)| Bench {
                    name: n.into(),
                    ns,
                    check,
                })
                .collect(),
            stats,
        }))
    }

    #[test]
    fn parses_lines() {
        assert_eq!(
            parse_bench("junk RZBENCH name=getppid ns=12 check=20000\r"),
            Some(Bench {
                name: "getppid".into(),
                ns: 12,
                check: 20000
            })
        );
        assert_eq!(parse_bench("RZBENCH name=x ns=1"), None);
        assert_eq!(parse_bench("RZBENCH name=x ns=1 check=2 extra"), None);
        assert_eq!(parse_bench("RZBENCH name= ns=1 check=2"), None);
        assert_eq!(parse_bench("RZBENCH name=x ns=-1 check=2"), None);
        assert_eq!(parse_ready("RINGZERO-READY 1.62 0.3"), Some(1.62));
        assert_eq!(parse_ready("RINGZERO-READY x"), None);
    }

    #[test]
    fn workloads_backends_and_command() {
        assert_eq!(parse_workloads("all").unwrap().len(), 7);
        assert_eq!(
            parse_workloads("cpu-int, getppid,cpu-int").unwrap(),
            ["cpu-int", "getppid"]
        );
        assert!(parse_workloads("nope").is_err());
        assert!(parse_workloads(",").is_err());
        assert_eq!(
            parse_backends(None).unwrap(),
            (vec![Accel::Bt, Accel::Kvm], false)
        );
        assert_eq!(
            parse_backends(Some("kvm")).unwrap(),
            (vec![Accel::Kvm], true)
        );
        assert_eq!(
            parse_backends(Some("kvm,bt")).unwrap(),
            (vec![Accel::Bt, Accel::Kvm], true)
        );
        assert!(parse_backends(Some("qemu")).is_err());
        let all = parse_workloads("all").unwrap();
        assert_eq!(guest_command(&all, true), "rzbench all --quick");
        assert_eq!(
            guest_command(&parse_workloads("getppid,cpu-int").unwrap(), false),
            "rzbench getppid; rzbench cpu-int"
        );
    }

    #[test]
    fn table_ratio_and_checksums() {
        let c = Comparison {
            quick: true,
            workloads: vec!["getppid".into(), "cpu-int".into()],
            columns: vec![
                (
                    "bt".into(),
                    ran("bt", &[("getppid", 4_000_000, 20000), ("cpu-int", 1, 5)]),
                ),
                (
                    "kvm".into(),
                    ran("kvm", &[("getppid", 1_000_000, 20000), ("cpu-int", 1, 6)]),
                ),
            ],
        };
        let t = c.render();
        let getppid = t.lines().find(|l| l.starts_with("getppid")).unwrap();
        assert!(getppid.contains("0.004000"), "{t}");
        assert!(getppid.contains("4.00"), "{t}");
        assert!(getppid.trim_end().ends_with("ok"), "{t}");
        assert!(t.contains("MISMATCH bt=5 kvm=6"), "{t}");
        assert!(t.contains("boot-to-ready"), "{t}");
        assert!(t.contains("exit port_io_out"), "{t}");
        assert!(t.contains("tier_ups"), "{t}");
        assert_eq!(c.problems().len(), 1);
        let j = c.to_json();
        assert!(j.contains("\"ratio_bt_kvm\":4.000000"), "{j}");
        assert!(j.contains("\"problems\":[\"cpu-int: MISMATCH"), "{j}");
        let host = t
            .lines()
            .find(|l| l.starts_with("boot-to-ready (host)"))
            .unwrap();
        assert!(host.contains("2.500000") && host.contains("1.00"), "{t}");
        assert!(j.contains("\"boot_to_ready_host_s\":2.500000"), "{j}");
    }

    fn svg_bars(svg: &str) -> Vec<(String, f64)> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("bar"))
            .map(|n| {
                (
                    n.attribute("data-label").unwrap().to_string(),
                    n.attribute("width").unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn svg_ratio_chart_has_a_bar_per_shared_workload() {
        let c = Comparison {
            quick: false,
            workloads: vec!["getppid".into(), "cpu-int".into(), "file-io".into()],
            columns: vec![
                (
                    "bt".into(),
                    ran(
                        "bt",
                        &[
                            ("getppid", 90_000_000, 1),
                            ("cpu-int", 2_000_000, 5),
                            ("file-io", 1, 1),
                        ],
                    ),
                ),
                (
                    "kvm".into(),
                    ran(
                        "kvm",
                        &[("getppid", 1_000_000, 1), ("cpu-int", 1_000_000, 5)],
                    ),
                ),
            ],
        };
        let svg = c.svg();
        if let Some(p) = std::env::var_os("RINGZERO_SVG_DUMP") {
            std::fs::write(p, &svg).unwrap();
        }
        let bars = svg_bars(&svg);
        let labels: Vec<&str> = bars.iter().map(|b| b.0.as_str()).collect();
        // file-io ran under bt only: no bar.
        assert_eq!(
            labels,
            [
                "getppid",
                "cpu-int",
                "boot-to-ready (guest)",
                "boot-to-ready (host)"
            ]
        );
        assert!(bars[0].1 > bars[1].1 && bars[1].1 > bars[2].1, "{bars:?}");
        assert!(svg.contains(">90.0×<") && svg.contains(">2.00×<"), "{svg}");
        assert!(svg.contains("bt time / kvm time (full sizes)"), "{svg}");
        assert!(svg.contains("class=\"reference\""), "{svg}");
        // 1× to 90×: a log scale.
        assert!(svg.contains("(log scale)"), "{svg}");
    }

    #[test]
    fn svg_with_one_backend_draws_its_absolute_times() {
        let c = Comparison {
            quick: true,
            workloads: vec!["getppid".into()],
            columns: vec![
                ("bt".into(), ran("bt", &[("getppid", 500_000_000, 1)])),
                ("kvm".into(), Column::Unavailable("no".into())),
            ],
        };
        let svg = c.svg();
        assert_eq!(svg_bars(&svg).len(), 3, "{svg}");
        assert!(
            svg.contains("bt only (kvm did not run): absolute times"),
            "{svg}"
        );
        assert!(
            svg.contains(">0.500 s<") && svg.contains(">2.50 s<"),
            "{svg}"
        );
        assert!(!svg.contains("class=\"reference\""), "{svg}");
        // 0.5 s to 2.5 s: linear.
        assert!(svg.contains("(linear scale)"), "{svg}");
    }

    #[test]
    fn unavailable_and_missing() {
        let c = Comparison {
            quick: true,
            workloads: vec!["getppid".into()],
            columns: vec![
                ("bt".into(), ran("bt", &[])),
                ("kvm".into(), Column::Unavailable("no \"kvm\"".into())),
            ],
        };
        assert!(c.render().contains("kvm: unavailable: no \"kvm\""));
        assert_eq!(c.check_status("getppid"), "missing under bt");
        assert!(c.to_json().contains("\"reason\":\"no \\\"kvm\\\"\""));
        assert_eq!(c.problems(), ["getppid: missing under bt"]);
    }

    #[test]
    fn documented_checksum_is_checked() {
        let c = Comparison {
            quick: true,
            workloads: vec!["getppid".into()],
            columns: vec![("bt".into(), ran("bt", &[("getppid", 1, 19999)]))],
        };
        assert_eq!(
            c.check_status("getppid"),
            "MISMATCH documented=20000 got=19999"
        );
    }
}
