//! `ringzero lockstep`: one guest run under the binary translator beside a reference CPU, the
//! architectural state compared as they go, the first divergence reported with the last
//! instructions of trace.
//!
//! Two machines are built from the same configuration and image ([`machine::build`]), so
//! their RAM is byte-for-byte the same before the first instruction. The BT side (the machine
//! under test: adaptive tiers, the JIT compiling hot blocks) runs a chunk of at most
//! `--every` instructions; the reference then runs exactly as many; the states are compared
//! (see [`compare`]). Two references exist:
//!
//! - **`interp`** — a second BT machine whose translator only interprets
//!   (`TierPolicy::InterpreterOnly`). Both machines run their timers (PIT, local APIC, ACPI PM
//!   timer, RTC) and TSC on a [`ManualClock`] that the driver sets from the instruction count
//!   (`count * NS_PER_INSN` plus time skipped while both CPUs halt), and both poll timers and
//!   take interrupts only at the chunk boundaries the driver chooses, at equal counts. Port
//!   reads, MMIO reads, TSC values and interrupt points are therefore equal by construction:
//!   nothing is recorded or replayed because nothing nondeterministic is left. This catches
//!   JIT bugs (the JIT tier against the interpreter tier inside full-system execution: MMU,
//!   monitor, delivery, devices). It cannot catch a semantic bug both tiers share.
//! - **`kvm`** — the KVM backend single-stepping (`KVM_SET_GUEST_DEBUG` with
//!   `KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ`); the BT steps one
//!   instruction per reference step. KVM's interrupt controllers and timers are in-kernel, so
//!   their port reads never reach user space to be recorded; instead the BT is *resynchronised*
//!   after every instruction whose result is not a function of the architectural state
//!   (IN/INS, RDTSC/RDTSCP, RDMSR, CPUID, RDRAND/RDSEED, RDPMC): the reference's registers are
//!   copied into the BT and counted as a resync, not compared. Interrupts are blocked on the
//!   reference while it steps, and the BT takes none either (it is stepped with its timers
//!   stopped), so a guest that waits for an interrupt ends the run ("reference halted").
//!   Whether this works depends on the host: [`kvm_single_step_probe`] checks it, and the
//!   run exits with status 3 when it does not (see docs/lockstep.md for what PVM does).
//!
//! Divergences: a register that differs, one side taking an exception or interrupt the other
//! did not, one side retiring fewer instructions (it halted or a machine event ended it early),
//! or the two sides ending differently. The report names the instruction count (instructions
//! retired on both sides when the difference was seen), the chunk the BT ran, every differing
//! register (reference vs bt) and the last `--last` instructions of the trace of the side that
//! steps one instruction at a time (the reference for `interp`, the BT for `kvm`), in the
//! format of `--trace insn` (docs/trace.md).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringzero_devices::pit::{ManualClock, TimeSource};
use ringzero_devices::MachineEvent;
use ringzero_translator::engine::TierPolicy;
use ringzero_translator::interp;
use ringzero_translator::mmu::SystemMem;
use ringzero_translator::state::rflags;
use ringzero_translator::CpuState;

use crate::bt::{BtVcpu, InsnRun, MachinePhys, MmioCounters};
use crate::cli::{Accel, Syntax, TraceFormat};
use crate::kvm::{KvmStep, KvmVcpu};
use crate::machine::{self, BuildOptions, Machine, MachineConfig, MachineCpu, MachineError};
use crate::trace::Tracer;
use crate::vcpu::{IoBuses, Vcpu, VcpuError, VcpuExit};

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Guest nanoseconds per retired instruction on the lockstep clock (a 100 MIPS CPU: timer
/// interrupts come every few hundred thousand instructions, not every few million).
pub const NS_PER_INSN: u64 = 10;

/// Default for `--max-insns`.
pub const DEFAULT_MAX_INSNS: u64 = 20_000_000;

/// Default for `--every`: one compiled block of the translator at most
/// (`DEFAULT_MAX_BLOCK_INSNS`), so the JIT runs whole blocks between comparisons.
pub const DEFAULT_EVERY: u64 = 64;

/// Instructions the BT may run to catch up with a KVM step that went past its trap (an I/O
/// exit, a return to ring 3 that PVM runs natively, a fault whose handler's first instruction
/// ran).
const MAX_CATCH_UP: u32 = 10_000;

/// KVM steps one REP string instruction may take (between iterations) before lockstep gives up
/// waiting for it to finish.
const MAX_REP_STEPS: u64 = 1 << 24;

/// Default for `--last`.
pub const DEFAULT_LAST: usize = 20;

/// Which CPU the BT is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reference {
    /// The KVM backend, single-stepping.
    Kvm,
    /// The BT's own interpreter tier (deterministic twin machine).
    Interp,
}

impl Reference {
    /// Name used in the output.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Kvm => "kvm (single-step)",
            Reference::Interp => "bt-interp (interpreter tier, deterministic twin)",
        }
    }
}

/// Which machine an injected perturbation hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The reference.
    Reference,
    /// The BT.
    Bt,
}

/// A deliberate perturbation, to check that divergences are caught (tests, and
/// `RINGZERO_LOCKSTEP_INJECT=bt|ref:COUNT:GPR` for the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// Which side.
    pub side: Side,
    /// After the first chunk that ends at or past this instruction count.
    pub after: u64,
    /// GPR index (0 = RAX … 15 = R15) whose value is XORed with 1.
    pub gpr: usize,
}

impl Injection {
    /// Parses `bt:COUNT:GPR` or `ref:COUNT:GPR`.
    pub fn parse(s: &str) -> Option<Injection> {
        let mut it = s.split(':');
        let side = match it.next()? {
            "bt" => Side::Bt,
            "ref" => Side::Reference,
            _ => return None,
        };
        let after = it.next()?.parse().ok()?;
        let gpr: usize = it.next()?.parse().ok()?;
        (gpr < 16 && it.next().is_none()).then_some(Injection { side, after, gpr })
    }
}

/// Environment variable that injects a divergence (hidden, for tests): `bt|ref:COUNT:GPR`.
pub const INJECT_ENV: &str = "RINGZERO_LOCKSTEP_INJECT";

/// What `ringzero lockstep` runs.
#[derive(Debug, Clone)]
pub struct LockstepConfig {
    /// The reference CPU.
    pub reference: Reference,
    /// Stop (status 0) after this many instructions.
    pub max_insns: u64,
    /// Compare at least every this many instructions (1 = every instruction).
    pub every: u64,
    /// Trace records shown with a divergence.
    pub last: usize,
    /// A deliberate divergence.
    pub inject: Option<Injection>,
}

/// One register that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegDiff {
    /// Register name.
    pub name: String,
    /// The reference's value.
    pub reference: u64,
    /// The BT's value.
    pub bt: u64,
}

/// The first divergence.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Instructions retired by the BT when the difference was seen.
    pub count: u64,
    /// Instructions retired by both at the last point the states were equal.
    pub last_equal: u64,
    /// CS:RIP where the BT's last chunk started.
    pub chunk_start: (u16, u64),
    /// What differs, in words.
    pub what: String,
    /// Registers that differ.
    pub regs: Vec<RegDiff>,
    /// The last trace records, oldest first.
    pub trace: Vec<String>,
    /// Whose trace it is.
    pub trace_of: &'static str,
}

/// How a lockstep run ended.
#[derive(Debug, Clone)]
pub enum LockstepEnd {
    /// Both machines ended the same way (the outcome's name).
    Finished(String),
    /// `--max-insns` reached with no divergence.
    Limit,
    /// The reference cannot follow the guest further (why); no divergence up to there.
    Stopped(String),
    /// The first divergence.
    Divergence(Box<Divergence>),
}

/// The result of a lockstep run.
#[derive(Debug, Clone)]
pub struct LockstepReport {
    /// The reference's name.
    pub reference: &'static str,
    /// Instructions retired by the BT.
    pub instructions: u64,
    /// State comparisons made.
    pub compares: u64,
    /// Interrupts taken at sync points (interp) or BT resyncs (kvm).
    pub events: u64,
    /// KVM steps after an I/O exit that retired more than one instruction (kvm).
    pub catch_ups: u64,
    /// Wall time.
    pub wall: Duration,
    /// How it ended.
    pub end: LockstepEnd,
}

impl LockstepReport {
    /// Process exit status: 0 no divergence, 1 divergence.
    pub fn exit_status(&self) -> u8 {
        match self.end {
            LockstepEnd::Divergence(_) => crate::cli::status::DIVERGENCE,
            _ => crate::cli::status::OK,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "lockstep: reference = {}", self.reference);
        if self.catch_ups > 0 {
            let _ = writeln!(
                s,
                "lockstep: {} KVM steps went on past their single-step trap (I/O exit, return to ring 3, \
                 fault); the BT caught up to them",
                self.catch_ups
            );
        }
        match &self.end {
            LockstepEnd::Finished(how) => {
                let _ = writeln!(
                    s,
                    "lockstep: no divergence: {} instructions, {} comparisons, {} events; \
                     both ended with {how} ({:.2}s)",
                    self.instructions,
                    self.compares,
                    self.events,
                    self.wall.as_secs_f64()
                );
            }
            LockstepEnd::Limit => {
                let _ = writeln!(
                    s,
                    "lockstep: no divergence: stopped at the --max-insns limit after {} \
                     instructions, {} comparisons, {} events ({:.2}s)",
                    self.instructions,
                    self.compares,
                    self.events,
                    self.wall.as_secs_f64()
                );
            }
            LockstepEnd::Stopped(why) => {
                let _ = writeln!(
                    s,
                    "lockstep: no divergence in {} instructions, {} comparisons, {} events; \
                     stopped at {why} ({:.2}s)",
                    self.instructions,
                    self.compares,
                    self.events,
                    self.wall.as_secs_f64()
                );
            }
            LockstepEnd::Divergence(d) => {
                let _ = writeln!(
                    s,
                    "DIVERGENCE after instruction {} ({}); last equal state at {}; the BT's \
                     chunk started at {:04x}:{:016x}",
                    d.count, d.what, d.last_equal, d.chunk_start.0, d.chunk_start.1
                );
                if !d.regs.is_empty() {
                    let _ = writeln!(s, "  {:<10} {:>18} {:>18}", "register", "reference", "bt");
                    for r in &d.regs {
                        let _ =
                            writeln!(s, "  {:<10} {:#018x} {:#018x}", r.name, r.reference, r.bt);
                    }
                }
                if !d.trace.is_empty() {
                    let _ = writeln!(s, "last {} trace records ({}):", d.trace.len(), d.trace_of);
                    for l in &d.trace {
                        let _ = writeln!(s, "  {l}");
                    }
                }
            }
        }
        s
    }
}

/// Why lockstep could not run.
#[derive(Debug, thiserror::Error)]
pub enum LockstepError {
    /// The requested reference cannot run on this host.
    #[error("reference unavailable: {0}")]
    Unavailable(String),
    /// A machine could not be built.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A backend failed while running.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

/// Every register compared, reference vs BT, that differs (see the module doc for the set).
pub fn compare(reference: &CpuState, bt: &CpuState) -> Vec<RegDiff> {
    let mut out = Vec::new();
    let mut check = |name: &str, r: u64, b: u64| {
        if r != b {
            out.push(RegDiff {
                name: name.to_string(),
                reference: r,
                bt: b,
            });
        }
    };
    for (i, name) in GPR_NAMES.iter().enumerate() {
        check(name, reference.gpr[i], bt.gpr[i]);
    }
    check("rip", reference.rip, bt.rip);
    check("rflags", reference.rflags, bt.rflags);
    let segs = [
        ("es", &reference.es, &bt.es),
        ("cs", &reference.cs, &bt.cs),
        ("ss", &reference.ss, &bt.ss),
        ("ds", &reference.ds, &bt.ds),
        ("fs", &reference.fs, &bt.fs),
        ("gs", &reference.gs, &bt.gs),
        ("ldtr", &reference.ldtr, &bt.ldtr),
        ("tr", &reference.tr, &bt.tr),
    ];
    for (name, r, b) in segs {
        check(name, u64::from(r.selector), u64::from(b.selector));
        check(&format!("{name}.base"), r.base, b.base);
        check(
            &format!("{name}.limit"),
            u64::from(r.limit),
            u64::from(b.limit),
        );
    }
    check("gdtr.base", reference.gdtr.base, bt.gdtr.base);
    check(
        "gdtr.limit",
        u64::from(reference.gdtr.limit),
        u64::from(bt.gdtr.limit),
    );
    check("idtr.base", reference.idtr.base, bt.idtr.base);
    check(
        "idtr.limit",
        u64::from(reference.idtr.limit),
        u64::from(bt.idtr.limit),
    );
    check("cr0", reference.cr0, bt.cr0);
    check("cr2", reference.cr2, bt.cr2);
    check("cr3", reference.cr3, bt.cr3);
    check("cr4", reference.cr4, bt.cr4);
    check("efer", reference.efer, bt.efer);
    check("halted", u64::from(reference.halted), u64::from(bt.halted));
    out
}

/// A `Write` sink that keeps the last `cap` lines (the trace ring buffer).
#[derive(Clone)]
struct RingLog {
    inner: Arc<Mutex<RingInner>>,
}

struct RingInner {
    cap: usize,
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl RingLog {
    fn new(cap: usize) -> Self {
        RingLog {
            inner: Arc::new(Mutex::new(RingInner {
                cap,
                lines: VecDeque::with_capacity(cap + 1),
                partial: Vec::new(),
            })),
        }
    }

    fn lines(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.lines.iter().cloned().collect()
    }
}

impl Write for RingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&g.partial).trim_end().to_string();
                g.partial.clear();
                if g.cap > 0 {
                    if g.lines.len() == g.cap {
                        g.lines.pop_front();
                    }
                    g.lines.push_back(line);
                }
            } else {
                g.partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The BT vCPU of `m`, with REP strings one element per instruction (as KVM single-steps
/// them, and so that a traced replay counts as the untraced run did).
fn bt_of(m: &mut Machine) -> Result<&mut BtVcpu, LockstepError> {
    match &mut m.cpu {
        MachineCpu::Bt(v) => {
            v.set_precise_strings(true);
            Ok(v)
        }
        MachineCpu::Kvm(_) => Err(LockstepError::Usage("expected a BT machine".into())),
    }
}

/// The BT vCPU of `m` and the buses to run it on (disjoint borrows of the machine).
fn bt_io(m: &mut Machine) -> Result<(IoBuses<'_>, &mut BtVcpu), LockstepError> {
    let io = IoBuses {
        pio: &m.pio,
        mmio: &m.mmio,
    };
    match &mut m.cpu {
        MachineCpu::Bt(v) => {
            v.set_precise_strings(true);
            Ok((io, v))
        }
        MachineCpu::Kvm(_) => Err(LockstepError::Usage("expected a BT machine".into())),
    }
}

/// The KVM vCPU of `m` and the buses to run it on.
fn kvm_io(m: &mut Machine) -> Result<(IoBuses<'_>, &mut KvmVcpu), LockstepError> {
    let io = IoBuses {
        pio: &m.pio,
        mmio: &m.mmio,
    };
    match &mut m.cpu {
        MachineCpu::Kvm(v) => Ok((io, v)),
        MachineCpu::Bt(_) => Err(LockstepError::Usage("expected a KVM machine".into())),
    }
}

fn kvm_of(m: &mut Machine) -> Result<&mut KvmVcpu, LockstepError> {
    match &mut m.cpu {
        MachineCpu::Kvm(v) => Ok(v),
        MachineCpu::Bt(_) => Err(LockstepError::Usage("expected a KVM machine".into())),
    }
}

/// The outcome a machine event means, by name; `None` when nothing is pending.
fn event_name(e: Option<MachineEvent>) -> String {
    match e {
        Some(MachineEvent::PowerOff) => "power-off".into(),
        Some(MachineEvent::Reset) => "reset".into(),
        Some(MachineEvent::DebugExit(v)) => format!("debug-exit {v:#x}"),
        None => "no machine event".into(),
    }
}

fn exit_name(e: Option<VcpuExit>) -> &'static str {
    match e {
        None => "running",
        Some(VcpuExit::MachineEvent) => "machine event",
        Some(VcpuExit::Halted) => "halted with interrupts off",
        Some(VcpuExit::Shutdown) => "triple fault",
        Some(VcpuExit::Interrupted) => "interrupted",
    }
}

/// Runs `config`'s guest in lockstep as `ls` says.
pub fn run(config: &MachineConfig, ls: &LockstepConfig) -> Result<LockstepReport, LockstepError> {
    if ls.every == 0 {
        return Err(LockstepError::Usage("--every must be at least 1".into()));
    }
    match ls.reference {
        Reference::Interp => run_interp(config, ls),
        Reference::Kvm => run_kvm(config, ls),
    }
}

/// State shared by both drivers.
struct Driver {
    started: Instant,
    compares: u64,
    events: u64,
    last_equal: u64,
    chunk_start: (u16, u64),
    ring: Option<RingLog>,
    trace_of: &'static str,
    reference: &'static str,
    /// KVM steps that retired more than one instruction (see `run_kvm`).
    catch_ups: u64,
}

impl Driver {
    fn new(ls: &LockstepConfig, trace_of: &'static str) -> Self {
        Driver {
            started: Instant::now(),
            compares: 0,
            events: 0,
            last_equal: 0,
            chunk_start: (0, 0),
            ring: (ls.last > 0).then(|| RingLog::new(ls.last)),
            trace_of,
            reference: ls.reference.name(),
            catch_ups: 0,
        }
    }

    fn tracer(&self) -> Option<Tracer> {
        self.ring
            .as_ref()
            .map(|r| Tracer::new(Box::new(r.clone()), TraceFormat::Text, Syntax::Intel))
    }

    fn report(&self, instructions: u64, end: LockstepEnd) -> LockstepReport {
        LockstepReport {
            reference: self.reference,
            instructions,
            compares: self.compares,
            events: self.events,
            catch_ups: self.catch_ups,
            wall: self.started.elapsed(),
            end,
        }
    }

    fn diverged(
        &self,
        count: u64,
        what: String,
        regs: Vec<RegDiff>,
        instructions: u64,
    ) -> LockstepReport {
        let d = Divergence {
            count,
            last_equal: self.last_equal,
            chunk_start: self.chunk_start,
            what,
            regs,
            trace: self.ring.as_ref().map(RingLog::lines).unwrap_or_default(),
            trace_of: self.trace_of,
        };
        self.report(instructions, LockstepEnd::Divergence(Box::new(d)))
    }
}

fn perturb(state: &mut CpuState, gpr: usize) {
    if let Some(r) = state.gpr.get_mut(gpr) {
        *r ^= 1;
    }
}

/// The interp reference: two deterministic BT machines on instruction-driven clocks.
fn run_interp(
    config: &MachineConfig,
    ls: &LockstepConfig,
) -> Result<LockstepReport, LockstepError> {
    let ref_clock = ManualClock::new(0);
    let bt_clock = ManualClock::new(0);
    let mut rm = machine::build(
        &quiet(config, Accel::Bt),
        Accel::Bt,
        &BuildOptions {
            clock: Some(ref_clock.clone() as Arc<dyn TimeSource>),
        },
    )?;
    let mut bm = machine::build(
        config,
        Accel::Bt,
        &BuildOptions {
            clock: Some(bt_clock.clone() as Arc<dyn TimeSource>),
        },
    )?;
    let mut d = Driver::new(ls, "reference, bt-interp, replayed");
    bt_of(&mut rm)?.set_tier_policy(TierPolicy::InterpreterOnly);
    // The reference runs untraced (tracing steps and formats every instruction: ~20x slower);
    // on a divergence the run is deterministic, so the reference is replayed from the log of
    // what the driver did to it, traced over the last `--last` instructions only.
    let mut log: Vec<Act> = Vec::new();
    let mut report = interp_loop(
        ls, &mut d, &mut rm, &mut bm, &ref_clock, &bt_clock, &mut log,
    )?;
    if let LockstepEnd::Divergence(dv) = &mut report.end {
        if ls.last > 0 {
            dv.trace = replay_trace(config, &log, dv.count, ls.last)?;
        }
    }
    Ok(report)
}

/// What the interp driver did to the reference machine, for [`replay_trace`].
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Set the clock to this time and poll timers and interrupts.
    Poll(u64),
    /// Follow a BT chunk: this many instructions, then the fault it ended with.
    Run(u64, Option<u8>),
    /// The injected perturbation of this GPR.
    Perturb(usize),
}

/// Replays `log` on a fresh reference machine, tracing from instruction `until - last` on;
/// returns the last `last` trace records.
fn replay_trace(
    config: &MachineConfig,
    log: &[Act],
    until: u64,
    last: usize,
) -> Result<Vec<String>, LockstepError> {
    let clock = ManualClock::new(0);
    let mut rm = machine::build(
        &quiet(config, Accel::Bt),
        Accel::Bt,
        &BuildOptions {
            clock: Some(clock.clone() as Arc<dyn TimeSource>),
        },
    )?;
    bt_of(&mut rm)?.set_tier_policy(TierPolicy::InterpreterOnly);
    let ring = RingLog::new(last);
    let from = until.saturating_sub(last as u64);
    let mut done = 0u64;
    let mut tracing = false;
    // The tracer counts from 1 where it starts: records are renumbered by this much.
    let mut base = 0u64;
    for act in log {
        match *act {
            Act::Poll(now) => {
                clock.set(now);
                bt_of(&mut rm)?.poll_interrupts()?;
            }
            Act::Perturb(gpr) => {
                let mut s = rm.cpu.vcpu().state()?;
                perturb(&mut s, gpr);
                rm.cpu.vcpu().set_state(&s)?;
            }
            Act::Run(k, fault) => {
                if !tracing && done + k >= from {
                    tracing = true;
                    base = done;
                    bt_of(&mut rm)?.set_tracer(Tracer::new(
                        Box::new(ring.clone()),
                        TraceFormat::Text,
                        Syntax::Intel,
                    ));
                }
                let r = follow(
                    &mut rm,
                    &InsnRun {
                        executed: k,
                        fault,
                        exit: None,
                    },
                )?;
                done += r.executed;
            }
        }
    }
    Ok(ring.lines().iter().map(|l| renumber(l, base)).collect())
}

/// Adds `base` to the instruction number a text trace record starts with (`N` for an
/// instruction, `@N` for an event).
fn renumber(line: &str, base: u64) -> String {
    let t = line.trim_start();
    let (head, rest) = t.split_at(t.find(' ').unwrap_or(t.len()));
    let (at, digits) = match head.strip_prefix('@') {
        Some(d) => ("@", d),
        None => ("", head),
    };
    match digits.parse::<u64>() {
        Ok(n) => format!("{:>10}{rest}", format!("{at}{}", n + base)),
        Err(_) => line.to_string(),
    }
}

/// `config` with the serial console discarded, on `accel` (the reference's copy).
fn quiet(config: &MachineConfig, accel: Accel) -> MachineConfig {
    MachineConfig {
        accel,
        boot: clone_boot(&config.boot),
        mem_size: config.mem_size,
        serial: crate::cli::SerialTarget::None,
        timeout: None,
        trace: None,
    }
}

/// The interp driver's loop (see [`run_interp`]).
fn interp_loop(
    ls: &LockstepConfig,
    d: &mut Driver,
    rm: &mut Machine,
    bm: &mut Machine,
    ref_clock: &ManualClock,
    bt_clock: &ManualClock,
    log: &mut Vec<Act>,
) -> Result<LockstepReport, LockstepError> {
    let mut n: u64 = 0;
    let mut skipped: u64 = 0;
    let mut injected = false;
    let mut since_compare: u64 = 0;
    loop {
        let now = n.saturating_mul(NS_PER_INSN).saturating_add(skipped);
        ref_clock.set(now);
        bt_clock.set(now);
        log.push(Act::Poll(now));
        // Sync point: both poll timers and take interrupts at the same count and time.
        let (rv, rexit) = bt_of(rm)?.poll_interrupts()?;
        let (bv, bexit) = bt_of(bm)?.poll_interrupts()?;
        if rv != bv || rexit != bexit {
            let what = format!(
                "at a sync point the reference took {} and the BT took {}",
                vector_name(rv),
                vector_name(bv)
            );
            return Ok(d.diverged(n, what, Vec::new(), n));
        }
        if bv.is_some() {
            d.events += 1;
        }
        if let Some(e) = bexit {
            return finish(d, rm, bm, n, Some(e), Some(e));
        }
        let (r_halted, b_halted) = (bt_of(rm)?.is_halted(), bt_of(bm)?.is_halted());
        if r_halted != b_halted {
            let regs = compare(&rm.cpu.vcpu().state()?, &bm.cpu.vcpu().state()?);
            return Ok(d.diverged(n, "one side halted".into(), regs, n));
        }
        if b_halted {
            let if_on = bm.cpu.vcpu().state()?.rflags & rflags::IF != 0;
            let deadline = bt_of(bm)?.next_timer_deadline();
            if !if_on || deadline == u64::MAX {
                return finish(d, rm, bm, n, Some(VcpuExit::Halted), Some(VcpuExit::Halted));
            }
            // Skip the idle time to the next timer deadline on both clocks.
            skipped = skipped.saturating_add(deadline.saturating_sub(now).max(1));
            continue;
        }
        if n >= ls.max_insns {
            return Ok(d.report(n, LockstepEnd::Limit));
        }
        d.chunk_start = {
            let s = bm.cpu.vcpu().state()?;
            (s.cs.selector, s.rip)
        };
        let budget = ls.every.min(ls.max_insns - n);
        let b = {
            let (io, v) = bt_io(bm)?;
            v.run_insns(&io, budget)?
        };
        log.push(Act::Run(b.executed, b.fault));
        let r = follow(rm, &b)?;
        let count = n + b.executed;
        if r.executed != b.executed || r.fault != b.fault {
            let regs = compare(&rm.cpu.vcpu().state()?, &bm.cpu.vcpu().state()?);
            let what = format!(
                "the reference retired {} instructions{} where the BT retired {}{}",
                r.executed,
                fault_text(r.fault),
                b.executed,
                fault_text(b.fault)
            );
            return Ok(d.diverged(n + r.executed.min(b.executed), what, regs, count));
        }
        n = count;
        since_compare += b.executed.max(1);
        if let Some(inj) = ls.inject {
            if !injected && n >= inj.after {
                injected = true;
                let m = if inj.side == Side::Bt {
                    &mut *bm
                } else {
                    log.push(Act::Perturb(inj.gpr));
                    &mut *rm
                };
                let mut s = m.cpu.vcpu().state()?;
                perturb(&mut s, inj.gpr);
                m.cpu.vcpu().set_state(&s)?;
            }
        }
        if since_compare >= ls.every || b.exit.is_some() || b.fault.is_some() {
            since_compare = 0;
            d.compares += 1;
            let regs = compare(&rm.cpu.vcpu().state()?, &bm.cpu.vcpu().state()?);
            if !regs.is_empty() {
                return Ok(d.diverged(n, "registers differ".into(), regs, n));
            }
            d.last_equal = n;
        }
        if b.exit.is_some() || r.exit.is_some() {
            return finish(d, rm, bm, n, r.exit, b.exit);
        }
    }
}

fn vector_name(v: Option<u8>) -> String {
    match v {
        Some(v) => format!("vector {v}"),
        None => "nothing".into(),
    }
}

fn fault_text(f: Option<u8>) -> String {
    match f {
        Some(v) => format!(" then faulted (vector {v})"),
        None => String::new(),
    }
}

/// Runs the reference machine `rm` exactly as far as the BT's chunk `b` went: `b.executed`
/// instructions, then the fault the BT took (if it took one).
fn follow(rm: &mut Machine, b: &InsnRun) -> Result<InsnRun, LockstepError> {
    let (io, v) = bt_io(rm)?;
    let mut total = InsnRun {
        executed: 0,
        fault: None,
        exit: None,
    };
    while total.executed < b.executed {
        let r = v.run_insns(&io, b.executed - total.executed)?;
        total.executed += r.executed;
        total.exit = r.exit;
        if r.fault.is_some() || r.exit.is_some() || r.executed == 0 {
            total.fault = r.fault;
            return Ok(total);
        }
    }
    if b.fault.is_some() {
        // The BT's chunk ended with a fault: the reference's next instruction must fault too
        // (retiring nothing).
        let r = v.run_insns(&io, 1)?;
        total.executed += r.executed;
        total.fault = r.fault;
        total.exit = r.exit;
    }
    Ok(total)
}

/// Both sides stopped: compares how.
fn finish(
    d: &mut Driver,
    rm: &mut Machine,
    bm: &mut Machine,
    n: u64,
    rexit: Option<VcpuExit>,
    bexit: Option<VcpuExit>,
) -> Result<LockstepReport, LockstepError> {
    let rev = rm.control.take();
    let bev = bm.control.take();
    bm.flush_serial();
    d.compares += 1;
    let regs = compare(&rm.cpu.vcpu().state()?, &bm.cpu.vcpu().state()?);
    if rexit != bexit || rev != bev || !regs.is_empty() {
        let what = format!(
            "the reference ended {} ({}), the BT {} ({})",
            exit_name(rexit),
            event_name(rev),
            exit_name(bexit),
            event_name(bev)
        );
        return Ok(d.diverged(n, what, regs, n));
    }
    let how = match bexit {
        Some(VcpuExit::MachineEvent) => event_name(bev),
        other => exit_name(other).to_string(),
    };
    Ok(d.report(n, LockstepEnd::Finished(how)))
}

fn clone_boot(b: &machine::BootSource) -> machine::BootSource {
    use machine::BootSource;
    match b {
        BootSource::Demo => BootSource::Demo,
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => BootSource::Linux {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: cmdline.clone(),
        },
        BootSource::Multiboot {
            elf,
            cmdline,
            modules,
        } => BootSource::Multiboot {
            elf: elf.clone(),
            cmdline: cmdline.clone(),
            modules: modules.clone(),
        },
        BootSource::Flat { image, addr } => BootSource::Flat {
            image: image.clone(),
            addr: *addr,
        },
    }
}

/// What single-stepping under KVM does on this host, in one line; `Ok` when it retires one
/// instruction per step in the modes a guest boots through (checked on a real-mode, a 32-bit
/// protected-mode and a 64-bit ring-0 code snippet), `Err` with the reason otherwise.
pub fn kvm_single_step_probe() -> Result<(), String> {
    crate::kvm::probe().map_err(|e| format!("no usable KVM: {e}"))?;
    // Real mode: three one-byte NOPs at 0x1000 then HLT; each step must advance RIP by one.
    let code = [0x90u8, 0x90, 0x90, 0xf4];
    let config = MachineConfig {
        accel: Accel::Kvm,
        boot: machine::BootSource::Flat {
            image: code.to_vec(),
            addr: 0x1000,
        },
        mem_size: 16 << 20,
        serial: crate::cli::SerialTarget::None,
        timeout: None,
        trace: None,
    };
    let mut m = machine::build(&config, Accel::Kvm, &BuildOptions::default())
        .map_err(|e| format!("cannot build a KVM machine: {e}"))?;
    let (io, v) = kvm_io(&mut m).map_err(|e| e.to_string())?;
    v.set_single_step(true, true)
        .map_err(|e| format!("KVM_SET_GUEST_DEBUG(SINGLESTEP) refused: {e}"))?;
    let start = v.state().map_err(|e| e.to_string())?.rip;
    for i in 1..=3u64 {
        match v
            .step(&io)
            .map_err(|e| format!("single step failed: {e}"))?
        {
            KvmStep::Stepped { .. } => {}
            KvmStep::Exit(e) => {
                return Err(format!(
                    "KVM_RUN under single-step ended with {e:?} instead of a debug exit"
                ))
            }
        }
        let rip = v.state().map_err(|e| e.to_string())?.rip;
        if rip != start + i {
            return Err(format!(
                "a single step in real mode moved RIP from {start:#x} to {rip:#x} (expected \
                 {:#x}): the hypervisor does not step one instruction at a time",
                start + i
            ));
        }
    }
    Ok(())
}

/// What the kvm driver does around the next instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Step both and compare.
    Plain,
    /// Its result is not a function of the architectural state: step both, then copy the
    /// reference's registers into the BT.
    Resync,
    /// HLT: KVM would block (interrupts are blocked while stepping): stop here.
    Halt,
    /// A REP string instruction: the hypervisor may trap between iterations (RF set, RIP
    /// unchanged): step the reference until it leaves the instruction.
    RepString,
}

/// What the kvm driver knows about the next instruction.
struct NextInsn {
    next: Next,
    /// RFLAGS bits the SDM leaves undefined after it (taken from the reference).
    undefined: u64,
    /// IRET/SYSRET/SYSEXIT: the hypervisor may lose the single-step trap across the privilege
    /// change, so the BT may have to catch up.
    ring_exit: bool,
}

/// Classifies the instruction at the BT's CS:RIP.
fn classify(cpu: &CpuState, bm: &Machine) -> NextInsn {
    use iced_x86::Mnemonic as M;
    let mut mem = SystemMem::new(Box::new(MachinePhys::new(
        Arc::clone(&bm.mem),
        Arc::clone(&bm.mmio),
        Arc::new(MmioCounters::default()),
    )));
    mem.set_context(cpu);
    let Ok(i) = interp::decode(cpu, &mut mem) else {
        return NextInsn {
            next: Next::Plain,
            undefined: 0,
            ring_exit: false,
        };
    };
    let next = match i.mnemonic() {
        M::Hlt => Next::Halt,
        M::In
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Rdtsc
        | M::Rdtscp
        | M::Rdmsr
        | M::Cpuid
        | M::Rdrand
        | M::Rdseed
        | M::Rdpmc => Next::Resync,
        _ if i.is_string_instruction() && (i.has_rep_prefix() || i.has_repne_prefix()) => {
            Next::RepString
        }
        _ => Next::Plain,
    };
    NextInsn {
        next,
        undefined: crate::difftest::flags::undefined_flags(&i, Some(cpu.gpr[1] as u8)),
        ring_exit: matches!(
            i.mnemonic(),
            M::Iret | M::Iretd | M::Iretq | M::Sysret | M::Sysretq | M::Sysexit | M::Sysexitq
        ),
    }
}

/// The kvm reference: KVM single-steps, the BT steps one instruction per step, the BT is
/// resynchronised after nondeterministic instructions.
fn run_kvm(config: &MachineConfig, ls: &LockstepConfig) -> Result<LockstepReport, LockstepError> {
    kvm_single_step_probe().map_err(LockstepError::Unavailable)?;
    let bt_clock = ManualClock::new(0);
    let mut rm = machine::build(
        &quiet(config, Accel::Kvm),
        Accel::Kvm,
        &BuildOptions::default(),
    )?;
    let mut bm = machine::build(
        config,
        Accel::Bt,
        &BuildOptions {
            clock: Some(bt_clock.clone() as Arc<dyn TimeSource>),
        },
    )?;
    kvm_of(&mut rm)?.set_single_step(true, true)?;
    let mut d = Driver::new(ls, "bt");
    if let Some(t) = d.tracer() {
        bt_of(&mut bm)?.set_tracer(t);
    }
    // Start from the same state: KVM's view of the entry state (it fills in what the loader
    // leaves to the hypervisor).
    let entry = rm.cpu.vcpu().state()?;
    bm.cpu.vcpu().set_state(&entry)?;
    let mut n: u64 = 0;
    let mut injected = false;
    let mut since_compare: u64 = 0;
    loop {
        if n >= ls.max_insns {
            return Ok(d.report(n, LockstepEnd::Limit));
        }
        let before = bm.cpu.vcpu().state()?;
        d.chunk_start = (before.cs.selector, before.rip);
        if before.rflags & rflags::TF != 0 {
            return Ok(d.report(
                n,
                LockstepEnd::Stopped(
                    "the guest set RFLAGS.TF, which KVM's single-step owns: the end of what \
                     the kvm reference can follow"
                        .into(),
                ),
            ));
        }
        let insn = classify(&before, &bm);
        let next = insn.next;
        if next == Next::Halt {
            // KVM blocks interrupts while it steps, so a HLT would never end there.
            d.compares += 1;
            let regs = compare(&rm.cpu.vcpu().state()?, &before);
            if !regs.is_empty() {
                return Ok(d.diverged(n, "registers differ".into(), regs, n));
            }
            return Ok(d.report(
                n,
                LockstepEnd::Stopped(
                    "a HLT: KVM blocks interrupts while it single-steps, so this is the end of \
                     what the kvm reference can follow"
                        .into(),
                ),
            ));
        }
        let resync = next == Next::Resync;
        let rstep = {
            let (io, v) = kvm_io(&mut rm)?;
            match v.step(&io) {
                Ok(s) => s,
                // PVM's instruction emulator gives up on some ring-0 instructions (INT n,
                // IRETD, ...): the reference cannot go on, which is no divergence of the BT.
                Err(VcpuError::GuestFailure(why)) => {
                    return Ok(d.report(
                        n,
                        LockstepEnd::Stopped(format!("the reference failing: {why}")),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let b = {
            let (io, v) = bt_io(&mut bm)?;
            v.run_insns(&io, 1)?
        };
        n += b.executed.max(1);
        let mut b = b;
        let mut rstep = rstep;
        if next == Next::RepString {
            // The BT's budget counts iterations too: finish the instruction on both sides.
            let mut steps = 0u64;
            while b.exit.is_none() && b.fault.is_none() && steps < MAX_REP_STEPS {
                let s = bm.cpu.vcpu().state()?;
                if (s.cs.selector, s.rip) != (before.cs.selector, before.rip) {
                    break;
                }
                let (io, v) = bt_io(&mut bm)?;
                let r = v.run_insns(&io, 1)?;
                b.exit = r.exit;
                b.fault = r.fault;
                if r.executed == 0 {
                    break;
                }
                n += r.executed;
                steps += 1;
            }
            let mut steps = 0u64;
            while matches!(rstep, KvmStep::Stepped { .. }) && steps < MAX_REP_STEPS {
                let s = rm.cpu.vcpu().state()?;
                if (s.cs.selector, s.rip) != (before.cs.selector, before.rip) {
                    break;
                }
                let (io, v) = kvm_io(&mut rm)?;
                rstep = v.step(&io)?;
                steps += 1;
            }
        }
        let (rexit, exits) = match rstep {
            KvmStep::Stepped { exits } => (None, exits),
            KvmStep::Exit(e) => (Some(e), 0),
        };
        if rexit.is_some() || b.exit.is_some() {
            return finish(&mut d, &mut rm, &mut bm, n, rexit, b.exit);
        }
        if exits > 0 || insn.ring_exit || b.fault.is_some() {
            // After an exit to user space (the port or MMIO access of the instruction just
            // stepped) the hypervisor may resume without the single-step trap for that
            // instruction and trap only after the next one(s); the same happens across a return
            // to a less privileged ring: let the BT catch up to the reference's CS:RIP, a few
            // instructions (or faults) at most.
            let want = rm.cpu.vcpu().state()?;
            let mut caught = 0;
            while caught < MAX_CATCH_UP {
                let s = bm.cpu.vcpu().state()?;
                if (s.cs.selector, s.rip) == (want.cs.selector, want.rip) || s.halted {
                    break;
                }
                let (io, v) = bt_io(&mut bm)?;
                let r = v.run_insns(&io, 1)?;
                n += r.executed;
                caught += 1;
                if let Some(e) = r.exit {
                    return finish(&mut d, &mut rm, &mut bm, n, None, Some(e));
                }
            }
            if caught > 0 {
                d.catch_ups += 1;
            }
        }
        if bt_of(&mut bm)?.is_halted() {
            // The reference blocks interrupts while it steps: a halt ends the comparison.
            return finish(&mut d, &mut rm, &mut bm, n, None, None);
        }
        let rs = rm.cpu.vcpu().state()?;
        if insn.undefined != 0 {
            // Undefined flags are whatever the reference made them.
            let mut s = bm.cpu.vcpu().state()?;
            let fixed = (s.rflags & !insn.undefined) | (rs.rflags & insn.undefined);
            if fixed != s.rflags {
                s.rflags = fixed;
                bm.cpu.vcpu().set_state(&s)?;
            }
        }
        if resync {
            d.events += 1;
            let mut s = bm.cpu.vcpu().state()?;
            s.gpr = rs.gpr;
            s.rip = rs.rip;
            s.rflags = rs.rflags;
            bm.cpu.vcpu().set_state(&s)?;
            continue;
        }
        if let Some(inj) = ls.inject {
            if !injected && n >= inj.after && inj.side == Side::Bt {
                injected = true;
                let mut s = bm.cpu.vcpu().state()?;
                perturb(&mut s, inj.gpr);
                bm.cpu.vcpu().set_state(&s)?;
            }
        }
        since_compare += 1;
        if since_compare >= ls.every {
            since_compare = 0;
            d.compares += 1;
            let regs = compare(&rs, &bm.cpu.vcpu().state()?);
            if !regs.is_empty() {
                return Ok(d.diverged(n, "registers differ".into(), regs, n));
            }
            d.last_equal = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumber_shifts_instruction_and_event_records() {
        assert_eq!(renumber("         2 0 real x", 10), "        12 0 real x");
        assert_eq!(renumber("        @7 exception", 3), "       @10 exception");
        assert_eq!(renumber("garbage line", 3), "garbage line");
    }

    #[test]
    fn injection_specs_parse() {
        assert_eq!(
            Injection::parse("bt:100:3"),
            Some(Injection {
                side: Side::Bt,
                after: 100,
                gpr: 3
            })
        );
        assert_eq!(
            Injection::parse("ref:0:15").map(|i| i.side),
            Some(Side::Reference)
        );
        assert_eq!(Injection::parse("bt:1:16"), None);
        assert_eq!(Injection::parse("cpu:1:1"), None);
        assert_eq!(Injection::parse("bt:x:1"), None);
        assert_eq!(Injection::parse("bt:1:1:1"), None);
    }

    #[test]
    fn compare_lists_exactly_the_differences() {
        let a = CpuState::default();
        assert!(compare(&a, &a).is_empty());
        let mut b = a.clone();
        b.gpr[2] = 7;
        b.cs.base = 0x10;
        b.halted = true;
        let names: Vec<_> = compare(&a, &b).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["rdx", "cs.base", "halted"]);
    }

    #[test]
    fn ring_log_keeps_the_last_lines() {
        let mut r = RingLog::new(2);
        r.write_all(b"a\nb\nc").unwrap();
        r.write_all(b"d\ne\n").unwrap();
        assert_eq!(r.lines(), ["cd", "e"]);
    }
}
