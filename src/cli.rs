//! Command-line argument types and the parsers for sizes, durations and flat-image specs.
//!
//! Exit statuses of `ringzero run` (also in `--help` and the README):
//! the guest's debug-exit status `(v << 1) | 1` (always odd); 0 when the guest powers off or
//! resets the machine (or the user quits with Ctrl-A x); [`status::HOST_ERROR`] for bad input,
//! usage errors and host failures; [`status::TRIPLE_FAULT`]; [`status::TIMEOUT`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

pub use crate::trace::{AddressRange, CountWindow, CplFilter, Syntax, TraceFormat, Trigger};

/// Process exit statuses that are not the guest's own (all even: debug-exit statuses are odd).
pub mod status {
    /// Power-off, reset, or quit from the console.
    pub const OK: u8 = 0;
    /// Bad input (image, flag, size), an unavailable backend, or a host failure.
    pub const HOST_ERROR: u8 = 2;
    /// The guest triple-faulted and the CPU shut down.
    pub const TRIPLE_FAULT: u8 = 4;
    /// `--timeout` expired before the guest stopped.
    pub const TIMEOUT: u8 = 6;
    /// `difftest`: a case diverged from the reference CPU.
    pub const DIVERGENCE: u8 = 1;
    /// `difftest`: no usable KVM to serve as the reference CPU.
    pub const NO_REFERENCE: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit status of `run`: the guest's debug-exit status (v<<1)|1 when it writes v to port 0xf4;
0 on power-off, guest reset or Ctrl-A x; 2 on bad input or a host error; 4 on a triple fault;
6 when --timeout expires.";

/// ringzero: a full-system x86 virtual machine (binary translation or KVM).
#[derive(Debug, Parser)]
#[command(name = "ringzero", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest (the built-in demo guest when no image is given).
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Compare the binary translator with the real CPU on random instruction sequences.
    #[command(after_help = DIFFTEST_AFTER_HELP)]
    Difftest(DifftestArgs),
    /// Run a guest under the binary translator beside a reference CPU and report the first
    /// divergence of the architectural state.
    #[command(after_help = LOCKSTEP_AFTER_HELP)]
    Lockstep(LockstepArgs),
    /// Run the same guest workloads under each backend (bt, kvm) and print one comparison
    /// table: times, ratios, exits/traps and translation counters (docs/compare.md).
    #[command(after_help = COMPARE_AFTER_HELP)]
    Compare(CompareArgs),
    /// Run the rzbench workloads natively, under ringzero's backends and (--peers) under QEMU
    /// TCG and KVM: one table of seconds and ratios (docs/bench.md).
    #[command(after_help = BENCH_AFTER_HELP)]
    Bench(BenchArgs),
}

const BENCH_AFTER_HELP: &str = "\
Columns: native (the host rzbench beside the yardstick's vmlinuz), bt, kvm, and with --peers
qemu-tcg and qemu-kvm (qemu-system-x86_64 -nographic -no-reboot, same kernel, initramfs, memory
and command line). A column that cannot run here is listed as unavailable. KVM columns are
skipped on PVM (/sys/module/kvm_pvm) unless --kvm-on-pvm. Exit status: 0 when every column that
ran ended normally and the checksums agree; 1 otherwise; 2 on a usage or host error. See
docs/bench.md.";

/// What `ringzero compare` and `ringzero bench` run: the guest, its workloads and the output.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Workloads: all, or comma-separated names (cpu-int, mem-walk, getppid, mmap-munmap,
    /// fork-wait, file-io, pipe-io).
    #[arg(long, value_name = "all|NAME[,NAME...]", default_value = "all")]
    pub workloads: String,
    /// Run the workloads' small sizes (rzbench --quick).
    #[arg(long)]
    pub quick: bool,
    /// Linux bzImage (default: the yardstick from test-images/linux/build.sh --print-paths).
    #[arg(long, value_name = "PATH", requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Initramfs holding /bin/rzbench (default: the yardstick's).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Guest RAM (default: 256M with --quick, 1G otherwise; full mem-walk needs 512M+).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub mem: Option<u64>,
    /// Write the table as one JSON object to PATH (docs/compare.md, docs/bench.md).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Stop each run after this long.
    #[arg(long, value_name = "DURATION", default_value = "900s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `ringzero bench`.
#[derive(Debug, Parser)]
pub struct BenchArgs {
    /// Also run QEMU (TCG, and KVM where /dev/kvm is usable) as peers.
    #[arg(long)]
    pub peers: bool,
    /// The guest, workloads and output.
    #[command(flatten)]
    pub run: WorkloadArgs,
    /// The host rzbench for the native column (default: beside the kernel).
    #[arg(long, value_name = "PATH")]
    pub rzbench: Option<PathBuf>,
    /// Run the KVM columns even when /dev/kvm is PVM.
    #[arg(long)]
    pub kvm_on_pvm: bool,
}

const COMPARE_AFTER_HELP: &str = "\
Boots the Linux yardstick (or --kernel/--initrd) once per backend with
rz.run=\"rzbench <workload> ...\" and the serial console captured, then prints the workloads'
times, boot-to-ready (guest and host), wall time and the bt/kvm ratio, and the exits, BT traps
and translation counters side by side (--svg: a bar chart of the ratios). Progress lines go
to stderr while the guests run (--quiet: none). A backend that cannot run here is listed as
unavailable. KVM on PVM (/sys/module/kvm_pvm) is skipped unless --backends names kvm. Exit
status: 0 when every workload ran with agreeing checksums; 1 when a workload is missing, a
checksum disagrees or a backend's run failed; 2 on a usage or host error. See docs/compare.md.";

/// Arguments of `ringzero compare`.
#[derive(Debug, Parser)]
pub struct CompareArgs {
    /// Backends to compare, comma-separated (bt, kvm). Default: bt,kvm (kvm skipped on PVM).
    #[arg(long, value_name = "NAME[,NAME...]")]
    pub backends: Option<String>,
    /// The guest, workloads and output.
    #[command(flatten)]
    pub run: WorkloadArgs,
    /// Write an SVG bar chart of the bt/kvm ratios to PATH (absolute times if one backend ran).
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

const LOCKSTEP_AFTER_HELP: &str = "\
Two machines are built from the same image. The BT (adaptive: interpreter, then the JIT for hot
blocks) runs chunks of at most --every instructions; the reference runs as many; GPRs, RIP,
RFLAGS, segment selectors/bases/limits, GDTR/IDTR, CR0/2/3/4, EFER and the halt state are
compared. References: `interp` (default) is a deterministic twin BT machine that only
interprets, both machines on an instruction-driven clock taking interrupts at the same counts;
`kvm` is the KVM backend single-stepping (the BT is resynchronised after IN/RDTSC/RDMSR/CPUID;
interrupts are blocked, so it stops at the first HLT). The output names the reference used. On a
divergence: the instruction count, each differing register (reference vs bt) and the last --last
trace records. Exit status: 0 no divergence (the guest ended the same way on both, --max-insns
was reached, or the reference could not follow further, as printed); 1 divergence; 3 the requested reference is unavailable on this host;
2 usage or host error. See docs/lockstep.md.";

/// Arguments of `ringzero lockstep`.
#[derive(Debug, Parser)]
pub struct LockstepArgs {
    /// The reference CPU the BT is compared with.
    #[arg(long, value_enum, default_value_t = crate::lockstep::Reference::Interp)]
    pub reference: crate::lockstep::Reference,
    /// Stop after this many instructions (exit status 0 when no divergence by then).
    #[arg(long, value_name = "N", default_value_t = crate::lockstep::DEFAULT_MAX_INSNS)]
    pub max_insns: u64,
    /// Compare the states at least every N instructions (1 = every instruction; the JIT only
    /// runs whole blocks, so N below the block size keeps it from running).
    /// Default: 64 (one translated block at most) with `interp`, 1 with `kvm`.
    #[arg(long, value_name = "N")]
    pub every: Option<u64>,
    /// Trace records printed with a divergence (0: none).
    #[arg(long, value_name = "K", default_value_t = crate::lockstep::DEFAULT_LAST)]
    pub last: usize,
    /// Linux bzImage (or a Multiboot ELF) to boot.
    #[arg(long, value_name = "PATH", group = "image")]
    pub kernel: Option<PathBuf>,
    /// Multiboot v1 ELF kernel to boot (--initrd becomes its first module).
    #[arg(long, value_name = "PATH", group = "image")]
    pub multiboot: Option<PathBuf>,
    /// Raw image loaded at ADDR and entered in real mode.
    #[arg(long, value_name = "PATH@ADDR", group = "image", value_parser = parse_flat)]
    pub flat: Option<FlatSpec>,
    /// Initial ramdisk (Linux) or first module (Multiboot).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    pub append: Option<String>,
    /// Guest RAM, e.g. 512M (suffixes K, M, G).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub mem: u64,
    /// Where the BT machine's UART output goes (the reference's is discarded): stdio,
    /// file:PATH, or none.
    #[arg(long, value_name = "TARGET", default_value = "none", value_parser = parse_serial)]
    pub serial: SerialTarget,
}

const DIFFTEST_AFTER_HELP: &str = "\
Each case runs natively at ring 3 in a KVM vCPU (the host CPU) and under the translator, and
every GPR, RIP, RFLAGS (minus the flags the manuals leave undefined), touched data byte and the
exception raised are compared. Exit status: 0 when every case agrees; 1 on a divergence (a
minimal reproducer is printed); 3 when no usable KVM exists to serve as the reference; 2 on a
usage or host error.";

/// Instruction bitness for generated difftest cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DifftestMode {
    /// 64-bit mode.
    #[value(name = "64")]
    Long64,
    /// 32-bit code (compatibility mode under a 64-bit kernel).
    #[value(name = "32")]
    Compat32,
}

/// Arguments of `ringzero difftest`.
#[derive(Debug, Parser)]
pub struct DifftestArgs {
    /// Seed of the case generator; case N of seed S is the same on every run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of cases.
    #[arg(long, default_value_t = 1000)]
    pub cases: u64,
    /// First case index (to rerun one case: --start N --cases 1).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Code bitness.
    #[arg(long, value_enum, default_value_t = DifftestMode::Long64)]
    pub mode: DifftestMode,
    /// Instruction families, comma-separated, used in rotation (default: all, picked per case):
    /// alu, shift, muldiv, bit, stack, control, string, cmov_setcc, misc.
    #[arg(long, value_name = "NAME[,NAME...]")]
    pub family: Option<String>,
    /// Count cases that use an instruction the translator lacks (listed at the end) instead of
    /// failing on them.
    #[arg(long)]
    pub skip_unimplemented: bool,
    /// Keep going after the first divergence and count them all.
    #[arg(long)]
    pub keep_going: bool,
}

/// Which CPU backend runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm opens and a VM can be created, else binary translation.
    Auto,
    /// Hardware assist on /dev/kvm.
    Kvm,
    /// Binary translation (needs no VT-x/AMD-V).
    Bt,
}

/// Arguments of `ringzero run`.
#[derive(Debug, Parser)]
pub struct RunArgs {
    /// CPU backend.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Linux bzImage (or a Multiboot ELF) to boot.
    #[arg(long, value_name = "PATH", group = "image")]
    pub kernel: Option<PathBuf>,
    /// Multiboot v1 ELF kernel to boot (--initrd becomes its first module).
    #[arg(long, value_name = "PATH", group = "image")]
    pub multiboot: Option<PathBuf>,
    /// Raw image loaded at ADDR (hex with 0x, or decimal) and entered in real mode.
    #[arg(long, value_name = "PATH@ADDR", group = "image", value_parser = parse_flat)]
    pub flat: Option<FlatSpec>,
    /// Initial ramdisk (Linux) or first module (Multiboot).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    pub append: Option<String>,
    /// Guest RAM, e.g. 512M, 2G, 65536K (suffixes K, M, G; plain numbers are bytes).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub mem: u64,
    /// Where the UART's output goes: stdio (with keyboard input), file:PATH, or none.
    #[arg(long, value_name = "TARGET", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialTarget,
    /// Stop the guest after this long, e.g. 30s, 500ms, 2m (exit status 6).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print exits by reason and wall time when the guest stops (to stderr).
    #[arg(long)]
    pub stats: bool,
    /// Write the same statistics as one JSON object to PATH (docs/stats.md).
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,
    /// Trace execution: `insn` records every executed instruction the filters admit (BT, or
    /// KVM by single-step where the host allows it; see docs/trace.md).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub trace: Option<TraceWhat>,
    /// Trace record format.
    #[arg(long, value_enum, default_value_t = TraceFormat::Text, requires = "trace")]
    pub trace_format: TraceFormat,
    /// Write the trace to PATH instead of stderr.
    #[arg(long, value_name = "PATH", requires = "trace")]
    pub trace_file: Option<PathBuf>,
    /// Disassembly syntax in the trace and the translation log.
    #[arg(long, value_enum, default_value_t = Syntax::Intel)]
    pub syntax: Syntax,
    /// Record only instructions whose linear address is in START-END (END exclusive) or
    /// START+LEN; repeatable.
    #[arg(long, value_name = "RANGE", requires = "trace")]
    pub trace_range: Vec<AddressRange>,
    /// Record only user (CPL 3) or kernel (CPL 0-2) instructions.
    #[arg(long, value_enum, value_name = "LEVEL", requires = "trace")]
    pub trace_cpl: Option<CplFilter>,
    /// Record only instructions number FROM..TO of the run (1-based, TO exclusive; FROM.. or
    /// ..TO).
    #[arg(long, value_name = "FROM..TO", requires = "trace")]
    pub trace_window: Option<CountWindow>,
    /// Start recording at the N-th execution (default 1st) of the instruction at this linear
    /// address; repeatable: a sequence, each armed once the previous fired.
    #[arg(long, value_name = "ADDR[@N]", requires = "trace")]
    pub trace_start: Vec<Trigger>,
    /// Stop recording after the N-th execution (default 1st, counted once started) of the
    /// instruction at this linear address.
    #[arg(long, value_name = "ADDR[@N]", requires = "trace")]
    pub trace_stop: Option<Trigger>,
    /// Stop recording after N instruction records.
    #[arg(long, value_name = "N", requires = "trace")]
    pub trace_limit: Option<u64>,
    /// Write the translation log (each guest block and what it became) to PATH (BT only).
    #[arg(long, value_name = "PATH")]
    pub translation_log: Option<PathBuf>,
}

/// What `--trace` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceWhat {
    /// Every executed instruction, with the registers it wrote, and every event delivered.
    Insn,
}

/// A `--flat PATH@ADDR` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatSpec {
    /// Image file.
    pub path: PathBuf,
    /// Guest physical load address.
    pub addr: u64,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// The terminal: output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

/// Parses a byte size with an optional K/M/G/T suffix (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("'{s}' is not a size (use e.g. 512M or 2G)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (use e.g. 512M or 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses a duration: a number with ms, s, m or h (a plain number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let err = || format!("'{s}' is not a duration (use e.g. 30s, 500ms, 2m)");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Parses `PATH@ADDR`.
pub fn parse_flat(s: &str) -> Result<FlatSpec, String> {
    let (path, addr) = s
        .rsplit_once('@')
        .ok_or_else(|| format!("'{s}' is not PATH@ADDR (e.g. boot.bin@0x7c00)"))?;
    let addr = parse_u64(addr).ok_or_else(|| format!("'{addr}' is not an address"))?;
    if path.is_empty() {
        return Err(format!("'{s}' has no path before '@'"));
    }
    Ok(FlatSpec {
        path: PathBuf::from(path),
        addr,
    })
}

/// Parses `stdio`, `none` or `file:PATH`.
pub fn parse_serial(s: &str) -> Result<SerialTarget, String> {
    match s {
        "stdio" => Ok(SerialTarget::Stdio),
        "none" => Ok(SerialTarget::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialTarget::File(PathBuf::from(p))),
            _ => Err(format!(
                "'{s}' is not a serial target (stdio, none, file:PATH)"
            )),
        },
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("65536K"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn flat_and_serial_specs() {
        assert_eq!(
            parse_flat("a@b.bin@0x7c00"),
            Ok(FlatSpec {
                path: "a@b.bin".into(),
                addr: 0x7c00
            })
        );
        assert_eq!(parse_flat("x@4096").map(|f| f.addr), Ok(4096));
        assert!(parse_flat("noaddr").is_err());
        assert!(parse_flat("@0x10").is_err());
        assert!(parse_flat("x@zz").is_err());
        assert_eq!(parse_serial("none"), Ok(SerialTarget::None));
        assert_eq!(
            parse_serial("file:/tmp/o"),
            Ok(SerialTarget::File("/tmp/o".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
