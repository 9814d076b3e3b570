//! The binary-translation backend (`--accel bt`): the machine's CPU run by the translator.
//!
//! [`BtVcpu`] is the monitor. It runs guest code in slices through the translator's
//! [`Engine`] (interpreter tier, Cranelift tier when hot) over a [`SystemMem`] (software MMU in
//! front of RAM and the MMIO bus). The tiers stop before every privileged or sensitive
//! instruction ([`Exception::System`]); the monitor executes it with [`system::execute`],
//! counting it by [`TrapKind`]. Faults the tiers raise are delivered through the IVT/IDT by
//! [`delivery::deliver`]; a fault during #DF delivery shuts the CPU down (triple fault).
//!
//! Between slices the monitor polls the timers (PIT) and takes a pending external interrupt
//! from the 8259 PIC when RFLAGS.IF = 1 and no STI/MOV SS shadow is active. The shadow is
//! honoured by running exactly one instruction before looking at interrupts again. HLT parks
//! the thread until the PIC raises INTR or the next timer deadline, never spinning a core.
//!
//! Time: the guest TSC runs at [`TSC_HZ`] from the host's monotonic clock (the same clock the
//! PIT counts on), so it never goes backwards and survives WRMSR to IA32_TSC as an offset.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ringzero_devices::lapic::SharedLapic;
use ringzero_devices::pic::SharedPic;
use ringzero_devices::pit::{SharedPit, TimeSource};
use ringzero_devices::{Bus, MachineControl};
use ringzero_translator::engine::{Engine, StopReason, TierPolicy};
use ringzero_translator::interp;
use ringzero_translator::mem::GuestMem;
use ringzero_translator::mmu::{PhysMem, RamPage, SystemMem};
use ringzero_translator::sem::{self, Exception};
use ringzero_translator::state::rflags;
use ringzero_translator::system::{self, delivery, Effect, Event, EventKind, SystemBus};
use ringzero_translator::CpuState;

use crate::memory::GuestMemory;
use crate::trace::{Plan, TraceEvent, Tracer};
use crate::vcpu::{ExitKind, ExitStats, IoBuses, Vcpu, VcpuError, VcpuExit};

/// IA32_APIC_BASE bit 11: the local APIC is enabled.
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// Guest time-stamp counter frequency: 1 GHz, one tick per host nanosecond.
pub const TSC_HZ: u64 = 1_000_000_000;

/// Instructions per slice between timer and interrupt checks (~0.1–1 ms of guest time).
const SLICE: u64 = 20_000;

/// Longest a halted CPU sleeps before re-checking the stop flag and the machine events.
const HALT_POLL: Duration = Duration::from_millis(10);

/// Guest-physical memory for the MMU: RAM from [`GuestMemory`], everything else the MMIO bus.
pub struct MachinePhys {
    ram: Arc<GuestMemory>,
    mmio: Arc<Bus>,
    counters: Arc<MmioCounters>,
}

/// MMIO accesses made through [`MachinePhys`] (for the exit statistics).
#[derive(Default)]
pub struct MmioCounters {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl MachinePhys {
    /// Physical memory over `ram` and the `mmio` bus, counting MMIO accesses into `counters`.
    pub fn new(ram: Arc<GuestMemory>, mmio: Arc<Bus>, counters: Arc<MmioCounters>) -> Self {
        MachinePhys {
            ram,
            mmio,
            counters,
        }
    }
}

impl PhysMem for MachinePhys {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        if self.ram.read(addr, buf).is_ok() {
            return;
        }
        if buf.len() > 1 && (self.ram.is_ram(addr, 1) || self.ram.is_ram(addr_end(addr, buf), 1)) {
            // Straddles RAM and something else: byte by byte.
            for (i, b) in buf.iter_mut().enumerate() {
                self.read_phys(addr.wrapping_add(i as u64), std::slice::from_mut(b));
            }
            return;
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.mmio.read(addr, buf);
    }

    fn write_phys(&mut self, addr: u64, data: &[u8]) {
        if self.ram.write(addr, data).is_ok() {
            return;
        }
        if data.len() > 1 && (self.ram.is_ram(addr, 1) || self.ram.is_ram(addr_end(addr, data), 1))
        {
            for (i, b) in data.iter().enumerate() {
                self.write_phys(addr.wrapping_add(i as u64), std::slice::from_ref(b));
            }
            return;
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.mmio.write(addr, data);
    }

    fn ram_page(&mut self, phys_page: u64) -> Option<RamPage> {
        let addr = phys_page.checked_mul(4096)?;
        let p = std::ptr::NonNull::new(self.ram.host_ptr(addr, 4096).ok()?)?;
        // SAFETY: `host_ptr` checked that the whole page is inside one RAM mapping, which lives
        // as long as the `Arc<GuestMemory>` this value holds; GuestMemory owns its bytes through
        // the mapping (its accessors copy through raw pointers, never hand out references);
        // the machine never remaps RAM while it runs.
        Some(unsafe { RamPage::new(p) })
    }
}

/// The address of the last byte of an access of `buf.len()` bytes at `addr`.
fn addr_end(addr: u64, buf: &[u8]) -> u64 {
    addr.wrapping_add(buf.len().saturating_sub(1) as u64)
}

/// Wakes a halted vCPU thread when an interrupt arrives.
#[derive(Default)]
struct Waker {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Waker {
    fn wake(&self) {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleeps until woken or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let mut woken = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        if !*woken {
            woken = self
                .cv
                .wait_timeout(woken, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *woken = false;
    }
}

/// The interrupt controllers and timers the BT CPU polls.
pub struct BtPlatform {
    /// The 8259 pair (INTR to the CPU).
    pub pic: SharedPic,
    /// The 8254 (IRQ 0).
    pub pit: SharedPit,
    /// The local APIC (xAPIC at 0xFEE0_0000; the I/O APIC delivers to it).
    pub lapic: SharedLapic,
    /// The clock both count on.
    pub clock: Arc<dyn TimeSource>,
    /// The MMIO bus (shared with the MMU's physical memory).
    pub mmio: Arc<Bus>,
}

/// One CPU run by binary translation.
pub struct BtVcpu {
    cpu: CpuState,
    engine: Engine,
    mem: SystemMem,
    platform: BtPlatform,
    control: Arc<MachineControl>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stats: ExitStats,
    mmio: Arc<MmioCounters>,
    /// Added to the clock to give the guest TSC (IA32_TSC writes move it).
    tsc_offset: u64,
    /// An STI/MOV SS shadow is active: run one instruction before taking interrupts.
    shadow: bool,
    /// Guest instructions retired (tiers and monitor).
    instructions: u64,
    /// Guest RAM (the trace reads the values of memory accesses from it).
    ram: Arc<GuestMemory>,
    /// The instruction trace, when on (the run steps one instruction at a time while its
    /// filter may admit the next one).
    tracer: Option<Tracer>,
    /// Events delivered since the last trace record, written after it.
    trace_events: Vec<TraceEvent>,
    /// The vector of the last event delivered (for `ringzero lockstep`).
    last_delivered: Option<u8>,
}

/// Errors creating the BT backend.
#[derive(Debug, thiserror::Error)]
pub enum BtError {
    /// The translator could not be set up on this host.
    #[error("binary translator: {0}")]
    Engine(#[from] ringzero_translator::engine::EngineError),
}

impl BtVcpu {
    /// A CPU over `ram` and the platform's devices, in `cpu`'s state.
    pub fn new(
        ram: Arc<GuestMemory>,
        platform: BtPlatform,
        control: Arc<MachineControl>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, BtError> {
        let mmio = Arc::new(MmioCounters::default());
        let phys = MachinePhys::new(
            Arc::clone(&ram),
            Arc::clone(&platform.mmio),
            Arc::clone(&mmio),
        );
        let waker = Arc::new(Waker::default());
        let w = Arc::clone(&waker);
        platform.pic.set_notifier(Arc::new(move || w.wake()));
        let w = Arc::clone(&waker);
        platform.lapic.set_notifier(Arc::new(move || w.wake()));
        crate::kvm::install_kick_handler();
        Ok(BtVcpu {
            cpu: CpuState::default(),
            engine: Engine::new()?,
            mem: SystemMem::new(Box::new(phys)),
            platform,
            control,
            stop,
            waker,
            stats: ExitStats::default(),
            mmio,
            tsc_offset: 0,
            shadow: false,
            instructions: 0,
            ram,
            tracer: None,
            trace_events: Vec::new(),
            last_delivered: None,
        })
    }

    /// Turns the instruction trace on: from now on every instruction its filter admits is
    /// recorded.
    pub fn set_tracer(&mut self, tracer: Tracer) {
        self.tracer = Some(tracer);
        // One record per element, as KVM's single-step retires REP strings.
        self.mem.set_precise_strings(true);
    }

    /// REP MOVS/STOS one element per instruction (`true`) or, by default, in bulk per page
    /// ([`SystemMem::set_precise_strings`]).
    pub fn set_precise_strings(&mut self, on: bool) {
        self.mem.set_precise_strings(on);
    }

    /// Reports every translation from now on to `log` (the trace's translation log).
    pub fn set_translation_log(
        &mut self,
        log: Box<dyn ringzero_translator::engine::TranslationLog>,
    ) {
        self.engine.set_translation_log(Some(log));
    }

    /// What the trace wants before the next instruction (`None`: no trace, or it is done);
    /// keeps the engine's stop points in step with the trace filter.
    fn trace_plan(&mut self) -> Option<Plan> {
        let t = self.tracer.as_ref()?;
        let plan = if t.done() {
            Plan::Done
        } else {
            let linear = ringzero_translator::jit::fetch_linear(&self.cpu);
            t.plan(self.instructions + 1, linear, self.cpu.cpl())
        };
        let stops = t.stop_points();
        if stops != self.engine.stop_points() {
            self.engine.set_stop_points(stops);
        }
        (plan != Plan::Done).then_some(plan)
    }

    /// Guest instructions retired so far.
    pub fn instructions(&self) -> u64 {
        self.instructions
    }

    /// The translator's counters.
    pub fn engine_stats(&self) -> &ringzero_translator::engine::EngineStats {
        self.engine.stats()
    }

    fn now_tsc(&self) -> u64 {
        self.platform.clock.now_ns().wrapping_add(self.tsc_offset)
    }

    /// Delivers due timer interrupts (PIT, local APIC timer).
    fn poll_timers(&self) {
        let now = self.platform.clock.now_ns();
        if now >= self.platform.pit.deadline_ns() {
            self.platform.pit.poll();
        }
        if now >= self.platform.lapic.deadline_ns() {
            self.platform.lapic.poll();
        }
    }

    /// The earliest timer deadline (ns on the platform clock).
    fn next_deadline(&self) -> u64 {
        self.platform
            .pit
            .deadline_ns()
            .min(self.platform.lapic.deadline_ns())
    }

    /// Whether an interrupt or NMI is waiting that would wake a halted CPU.
    fn wake_pending(&self) -> bool {
        let lapic = &self.platform.lapic;
        lapic.has_nmi()
            || self.cpu.rflags & rflags::IF != 0
                && (lapic.has_pending_vector()
                    || lapic.extint_enabled() && self.platform.pic.has_pending_interrupt())
    }

    /// Takes a pending NMI or external interrupt if the CPU accepts one now: NMIs unless
    /// blocked by a handler in progress; maskable interrupts with RFLAGS.IF = 1 from the local
    /// APIC (I/O APIC, timer, IPIs) or, through LINT0 in ExtINT mode, the 8259 PIC.
    fn take_interrupt(&mut self) -> Result<Option<VcpuExit>, VcpuError> {
        if self.shadow {
            return Ok(None);
        }
        let lapic = self.platform.lapic.clone();
        if !self.cpu.events.nmi_masked && lapic.has_nmi() && lapic.take_nmi() {
            self.cpu.halted = false;
            return self.deliver(Event {
                vector: 2,
                error: None,
                kind: EventKind::Nmi,
            });
        }
        if self.cpu.rflags & rflags::IF == 0 {
            return Ok(None);
        }
        let vector = if lapic.has_pending_vector() {
            lapic.acknowledge()
        } else if lapic.extint_enabled() && self.platform.pic.has_pending_interrupt() {
            let v = self.platform.pic.acknowledge();
            lapic.extint_taken();
            Some(v)
        } else {
            None
        };
        let Some(vector) = vector else {
            return Ok(None);
        };
        self.cpu.halted = false;
        self.deliver(Event {
            vector,
            error: None,
            kind: EventKind::External,
        })
    }

    fn deliver(&mut self, event: Event) -> Result<Option<VcpuExit>, VcpuError> {
        let rip = self.cpu.rip;
        self.deliver_from(event, rip)
    }

    /// Delivers `event` raised by the instruction at `insn_rip` (see
    /// [`delivery::deliver_from`]: a fault during delivery of a software interrupt is that
    /// instruction's fault).
    fn deliver_from(&mut self, event: Event, insn_rip: u64) -> Result<Option<VcpuExit>, VcpuError> {
        self.last_delivered = Some(event.vector);
        if self.tracer.is_some() {
            self.trace_events.push(TraceEvent {
                what: match event.kind {
                    EventKind::Exception => "exception",
                    EventKind::External => "interrupt",
                    EventKind::Nmi => "nmi",
                    EventKind::Software
                    | EventKind::SoftwareException
                    | EventKind::PrivilegedSoftware => "software_interrupt",
                },
                vector: event.vector,
                error: event.error,
                cs: self.cpu.cs.selector,
                rip: self.cpu.rip,
                cr2: (event.vector == sem::PF && event.kind == EventKind::Exception)
                    .then_some(self.cpu.cr2),
                cpl: self.cpu.cpl(),
            });
        }
        self.mem.set_context(&self.cpu);
        match delivery::deliver_from(&mut self.cpu, &mut self.mem, event, insn_rip) {
            Ok(()) => Ok(None),
            Err(delivery::TripleFault) => {
                log::info!(
                    "bt: triple fault delivering vector {} at {:#x}:{:#x}",
                    event.vector,
                    self.cpu.cs.selector,
                    self.cpu.rip
                );
                self.stats.record(ExitKind::Shutdown);
                Ok(Some(VcpuExit::Shutdown))
            }
        }
    }

    /// Handles why the engine stopped; `Some` ends the run.
    fn handle(&mut self, exc: Exception, pio: &Bus) -> Result<Option<VcpuExit>, VcpuError> {
        match exc {
            Exception::System(_) => self.run_system(pio),
            Exception::Cpu { vector, error } => {
                // INT3 and INTO are traps: the instruction completed (the tiers do not count
                // it), like INT n, which the monitor counts.
                if exc.is_trap() {
                    self.instructions += 1;
                }
                // The tiers raise INT3 as #BP; for the guest it is a software exception (the
                // gate's DPL is checked).
                if vector == sem::BP {
                    // INT3 (one byte, CC) reports RIP after itself.
                    let insn_rip = self.cpu.rip.wrapping_sub(1);
                    return self.deliver_from(
                        Event {
                            vector,
                            error,
                            kind: EventKind::SoftwareException,
                        },
                        insn_rip,
                    );
                }
                self.deliver(Event {
                    vector,
                    error,
                    kind: EventKind::Exception,
                })
            }
            Exception::PageFault { linear, error } => {
                self.cpu.cr2 = linear;
                self.deliver(Event {
                    vector: sem::PF,
                    error: Some(error),
                    kind: EventKind::Exception,
                })
            }
            Exception::Unimplemented(m) => {
                // Every advertised feature is implemented, so an unknown instruction is one
                // the model does not advertise: #UD, as the CPU it claims to be would raise.
                log::warn!(
                    "bt: {m:?} at {:#x}:{:#x} is not implemented: #UD to the guest",
                    self.cpu.cs.selector,
                    self.cpu.rip
                );
                self.deliver(Event {
                    vector: sem::UD,
                    error: None,
                    kind: EventKind::Exception,
                })
            }
            Exception::Memory(f) => Err(VcpuError::GuestFailure(format!(
                "unbacked guest memory access in the BT: {f}"
            ))),
            Exception::Internal(what) => Err(VcpuError::GuestFailure(format!(
                "translator internal error at {:#x}:{:#x}: {what}",
                self.cpu.cs.selector, self.cpu.rip
            ))),
        }
    }

    /// Executes the system instruction at CS:RIP in the monitor.
    fn run_system(&mut self, pio: &Bus) -> Result<Option<VcpuExit>, VcpuError> {
        self.mem.set_context(&self.cpu);
        let insn = match interp::decode(&self.cpu, &mut self.mem) {
            Ok(i) => i,
            Err(e) => return self.handle(e, pio),
        };
        self.stats.record_trap(system::trap_kind(&insn));
        // CR8 is the local APIC's TPR, which the guest can also write through MMIO.
        self.cpu.cr8 = self.platform.lapic.cr8();
        let (cr8, apic_base) = (self.cpu.cr8, self.cpu.apic_base);
        let paging = (self.cpu.cr0, self.cpu.cr3, self.cpu.cr4, self.cpu.efer);
        let mut bus = MonitorBus {
            pio,
            stats: &mut self.stats,
            clock: &*self.platform.clock,
            tsc_offset: &mut self.tsc_offset,
        };
        let insn_rip = self.cpu.rip;
        let result = system::execute(&mut self.cpu, &mut self.mem, &mut bus, &insn);
        if self.cpu.cr8 != cr8 {
            self.platform.lapic.set_cr8(self.cpu.cr8);
        }
        if (self.cpu.cr0, self.cpu.cr3, self.cpu.cr4, self.cpu.efer) != paging {
            // Code mappings may have changed: the engine's memos no longer vouch for them.
            self.engine.new_translation_epoch();
        }
        if self.cpu.apic_base != apic_base {
            let on = self.cpu.apic_base & APIC_BASE_ENABLE != 0;
            self.platform.lapic.with(|a| a.set_hardware_enabled(on));
        }
        match result {
            Ok(effect) => {
                self.instructions += 1;
                // Completing an instruction clears RF; IRET loads it from the frame instead.
                if !matches!(
                    insn.mnemonic(),
                    iced_x86::Mnemonic::Iret
                        | iced_x86::Mnemonic::Iretd
                        | iced_x86::Mnemonic::Iretq
                ) {
                    self.cpu.rflags &= !rflags::RF;
                }
                self.apply(effect, insn_rip)
            }
            Err(Exception::System(m)) => Err(VcpuError::GuestFailure(format!(
                "monitor has no executor for system instruction {m:?}"
            ))),
            Err(e) => self.handle(e, pio),
        }
    }

    fn apply(&mut self, effect: Effect, insn_rip: u64) -> Result<Option<VcpuExit>, VcpuError> {
        match effect {
            Effect::Next => {}
            Effect::Shadow => self.shadow = true,
            Effect::Halt => self.cpu.halted = true,
            Effect::Flush(f) => {
                self.mem.flush(f);
                self.engine.new_translation_epoch();
            }
            Effect::Deliver(ev) => return self.deliver_from(ev, insn_rip),
        }
        Ok(None)
    }

    /// Parks a halted CPU until an interrupt can wake it; `Some` ends the run.
    fn wait_halted(&mut self) -> Option<VcpuExit> {
        if self.cpu.rflags & rflags::IF == 0 && !self.platform.lapic.has_nmi() {
            // Only an NMI could wake it and nothing here raises one spontaneously: report
            // instead of hanging forever.
            self.stats.record(ExitKind::Halt);
            return Some(VcpuExit::Halted);
        }
        let now = self.platform.clock.now_ns();
        let wait = Duration::from_nanos(self.next_deadline().saturating_sub(now)).min(HALT_POLL);
        if !self.wake_pending() && !wait.is_zero() {
            self.waker.wait(wait);
        }
        None
    }
}

/// What [`BtVcpu::run_insns`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsnRun {
    /// Instructions retired (tiers and monitor).
    pub executed: u64,
    /// The vector of an exception delivered after the last retired instruction that no
    /// retired instruction accounts for (a fault: the faulting instruction did not retire).
    pub fault: Option<u8>,
    /// The run must end (triple fault, or a machine event a device posted).
    pub exit: Option<VcpuExit>,
}

/// Hooks for `ringzero lockstep`, which drives the CPU itself: it runs instructions in chunks
/// it chooses and polls timers and interrupts only at points it chooses, so two CPUs on equal
/// clocks take the same interrupts at the same instruction counts.
impl BtVcpu {
    /// Changes the translator's tier policy (lockstep's reference interprets every block).
    pub fn set_tier_policy(&mut self, policy: TierPolicy) {
        self.engine.set_policy(policy);
    }

    /// Runs at most `budget` instructions without polling timers or taking interrupts,
    /// handling what stops the engine (a system instruction runs in the monitor, a fault is
    /// delivered); returns at the first such stop. A halted CPU runs nothing. With a tracer on,
    /// steps and records one instruction at a time.
    pub fn run_insns(&mut self, io: &IoBuses<'_>, budget: u64) -> Result<InsnRun, VcpuError> {
        let start = self.instructions;
        let mut run = InsnRun {
            executed: 0,
            fault: None,
            exit: None,
        };
        if self.cpu.halted || budget == 0 {
            return Ok(run);
        }
        // Under an STI/MOV SS shadow one instruction runs before interrupts are looked at.
        let budget = if self.shadow { 1 } else { budget };
        if self.tracer.is_some() {
            while self.instructions - start < budget && !self.cpu.halted {
                let before = self.instructions;
                self.last_delivered = None;
                run.exit = self.step_traced(io.pio)?;
                self.write_trace_events()?;
                if self.instructions == before {
                    run.fault = self.last_delivered;
                    break;
                }
                if run.exit.is_some() || self.last_delivered.is_some() {
                    break;
                }
            }
        } else {
            self.last_delivered = None;
            self.shadow = false;
            self.mem.set_context(&self.cpu);
            let exit = self.run_engine(budget);
            if let StopReason::Exception(e) = exit.reason {
                let before = self.instructions;
                run.exit = self.handle(e, io.pio)?;
                if self.instructions == before {
                    run.fault = self.last_delivered;
                }
            }
        }
        if run.exit.is_none() && self.control.is_pending() {
            run.exit = Some(VcpuExit::MachineEvent);
        }
        run.executed = self.instructions - start;
        Ok(run)
    }

    /// Polls the timers and takes a pending NMI or external interrupt if the CPU accepts one
    /// now (what [`Vcpu::run`] does between slices); returns the vector delivered, if any.
    pub fn poll_interrupts(&mut self) -> Result<(Option<u8>, Option<VcpuExit>), VcpuError> {
        self.last_delivered = None;
        self.poll_timers();
        let exit = self.take_interrupt()?;
        self.write_trace_events()?;
        Ok((self.last_delivered.take(), exit))
    }

    /// The earliest timer deadline, in nanoseconds on the platform clock.
    pub fn next_timer_deadline(&self) -> u64 {
        self.next_deadline()
    }

    /// Whether the CPU is halted (waiting for an interrupt).
    pub fn is_halted(&self) -> bool {
        self.cpu.halted
    }
}

fn trace_error(e: std::io::Error) -> VcpuError {
    VcpuError::GuestFailure(format!("writing the trace: {e}"))
}

/// Port I/O and the TSC for the system executor.
struct MonitorBus<'a> {
    pio: &'a Bus,
    stats: &'a mut ExitStats,
    clock: &'a dyn TimeSource,
    tsc_offset: &'a mut u64,
}

impl SystemBus for MonitorBus<'_> {
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.stats.record(ExitKind::PortIoIn);
        let mut buf = [0u8; 4];
        let n = usize::from(size).clamp(1, 4);
        self.pio.read(u64::from(port), &mut buf[..n]);
        u32::from_le_bytes(buf)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.stats.record(ExitKind::PortIoOut);
        let n = usize::from(size).clamp(1, 4);
        self.pio.write(u64::from(port), &value.to_le_bytes()[..n]);
    }

    fn tsc(&mut self) -> u64 {
        self.clock.now_ns().wrapping_add(*self.tsc_offset)
    }

    fn set_tsc(&mut self, value: u64) {
        *self.tsc_offset = value.wrapping_sub(self.clock.now_ns());
    }
}

impl Vcpu for BtVcpu {
    fn backend(&self) -> &'static str {
        "bt"
    }

    fn run(&mut self, io: &IoBuses<'_>) -> Result<VcpuExit, VcpuError> {
        let r = self.run_loop(io);
        self.sync_stats();
        if let Some(t) = self.tracer.as_mut() {
            t.flush().map_err(trace_error)?;
        }
        r
    }

    fn state(&mut self) -> Result<CpuState, VcpuError> {
        let mut s = self.cpu.clone();
        s.set_msr(ringzero_translator::state::msr::TSC, self.now_tsc());
        Ok(s)
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), VcpuError> {
        self.cpu = state.clone();
        if let Some(tsc) = state.msr(ringzero_translator::state::msr::TSC) {
            self.tsc_offset = tsc.wrapping_sub(self.platform.clock.now_ns());
        }
        self.mem.set_context(&self.cpu);
        self.mem.flush(system::TlbFlush::All);
        self.engine.flush();
        self.engine.new_translation_epoch();
        Ok(())
    }

    fn stats(&self) -> &ExitStats {
        &self.stats
    }
}

impl BtVcpu {
    fn run_loop(&mut self, io: &IoBuses<'_>) -> Result<VcpuExit, VcpuError> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.stats.record(ExitKind::Interrupted);
                return Ok(VcpuExit::Interrupted);
            }
            if self.control.is_pending() {
                return Ok(VcpuExit::MachineEvent);
            }
            self.poll_timers();
            let taken = self.take_interrupt()?;
            self.write_trace_events()?;
            if let Some(exit) = taken {
                return Ok(exit);
            }
            if self.cpu.halted {
                if let Some(exit) = self.wait_halted() {
                    return Ok(exit);
                }
                continue;
            }
            let mut slice = SLICE;
            match self.trace_plan() {
                Some(Plan::Step) => {
                    let end = self.step_traced(io.pio)?;
                    self.write_trace_events()?;
                    if let Some(end) = end {
                        return Ok(end);
                    }
                    continue;
                }
                Some(Plan::Run { max }) => slice = slice.min(max),
                Some(Plan::Done) | None => {}
            }
            self.mem.set_context(&self.cpu);
            // Under a shadow exactly one instruction runs before interrupts are looked at
            // again; a shadowed system instruction (`sti; hlt`) runs in the monitor below,
            // still inside the shadow, which ends with it.
            let budget = if std::mem::take(&mut self.shadow) {
                1
            } else {
                slice
            };
            let exit = self.run_engine(budget);
            if let StopReason::Exception(e) = exit.reason {
                let end = self.handle(e, io.pio)?;
                self.write_trace_events()?;
                if let Some(end) = end {
                    return Ok(end);
                }
            }
        }
    }
}

impl BtVcpu {
    /// Runs exactly one instruction (or delivers the fault it raises) and records it.
    fn step_traced(&mut self, pio: &Bus) -> Result<Option<VcpuExit>, VcpuError> {
        self.mem.set_context(&self.cpu);
        let decoded = interp::decode(&self.cpu, &mut self.mem).ok();
        let mut bytes = [0u8; 15];
        let len = decoded.map_or(0, |i| i.len()).min(15);
        let linear = ringzero_translator::jit::fetch_linear(&self.cpu);
        if self.mem.fetch(linear, &mut bytes[..len]).is_err() {
            // The instruction straddles into a page it cannot fetch: show what decoded.
            bytes = [0; 15];
        }
        let n = self.instructions + 1;
        let mut pending = match (decoded, self.tracer.as_mut()) {
            (Some(insn), Some(t)) => t.begin(n, &self.cpu, &insn, &bytes[..len], &*self.ram),
            _ => None,
        };
        self.shadow = false;
        let exit = self.run_engine(1);
        if let (StopReason::Exception(Exception::System(_)), Some(p), Some(insn)) =
            (exit.reason, pending.as_mut(), decoded)
        {
            p.set_trap(system::trap_kind(&insn).name());
        }
        let end = match exit.reason {
            StopReason::Exception(e) => self.handle(e, pio)?,
            StopReason::Budget | StopReason::StopPoint => None,
        };
        if let (true, Some(t)) = (self.instructions >= n, self.tracer.as_mut()) {
            if let Some(p) = pending {
                t.finish(p, &self.cpu, &*self.ram).map_err(trace_error)?;
            }
        }
        Ok(end)
    }

    /// Runs the engine for at most `budget` instructions and counts them. RF (set by IRET
    /// from a fault frame) lasts for one instruction: that one runs alone, then RF clears, as
    /// the CPU clears it when an instruction completes.
    fn run_engine(&mut self, budget: u64) -> ringzero_translator::engine::EngineExit {
        let rf = self.cpu.rflags & rflags::RF != 0;
        let exit = self
            .engine
            .run(&mut self.cpu, &mut self.mem, if rf { 1 } else { budget });
        self.instructions += exit.executed;
        if rf && exit.executed > 0 {
            self.cpu.rflags &= !rflags::RF;
        }
        exit
    }

    /// Writes the events delivered since the last record.
    fn write_trace_events(&mut self) -> Result<(), VcpuError> {
        if let Some(t) = self.tracer.as_mut() {
            t.ran(self.instructions);
            for e in self.trace_events.drain(..) {
                t.event(&e).map_err(trace_error)?;
            }
        }
        Ok(())
    }

    /// Folds the MMIO counters into the exit statistics (call before reporting).
    pub fn sync_stats(&mut self) {
        self.stats.add(
            ExitKind::MmioRead,
            self.mmio.reads.swap(0, Ordering::Relaxed),
        );
        self.stats.add(
            ExitKind::MmioWrite,
            self.mmio.writes.swap(0, Ordering::Relaxed),
        );
        self.stats.set_counter("instructions", self.instructions);
        let e = self.engine.stats();
        self.stats
            .set_counter("blocks_translated", e.blocks_decoded);
        self.stats.set_counter("blocks_compiled", e.blocks_compiled);
        self.stats.set_counter("tier_ups", e.tier_ups);
        self.stats
            .set_counter("blocks_invalidated", e.blocks_invalidated);
        self.stats
            .set_counter("code_page_writes", e.code_page_writes);
        self.stats.set_counter("dispatches", e.dispatches);
        self.stats.set_counter("chained", e.chained);
        self.stats
            .set_counter("insns_interpreted", e.insns_interpreted);
        self.stats.set_counter("insns_compiled", e.insns_compiled);
    }
}
