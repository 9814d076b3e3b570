//! The hardware-assisted backend (`--accel kvm`): the machine's CPU on `/dev/kvm`.
//!
//! One VM with the in-kernel irqchip (8259 pair, IOAPIC, LAPIC) and PIT, as QEMU and
//! Firecracker use by default; every other device is the shared model on the machine's buses.
//! Guest RAM is the machine's [`GuestMemory`] mappings, registered as KVM memory slots.
//!
//! Kicking: another thread stops a running vCPU by setting the stop flag and sending
//! [`KICK_SIGNAL`] to the vCPU thread; the handler sets `kvm_run.immediate_exit`, so a kick that
//! lands just before `KVM_RUN` is not lost.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Once};

use kvm_bindings::{
    kvm_pit_config, kvm_regs, kvm_userspace_memory_region, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit as KvmExit, VcpuFd, VmFd};
use ringzero_devices::{IrqSink, MachineControl, MachineEvent};
use ringzero_translator::state::kvm::{KvmVcpuState, SAVED_MSRS};
use ringzero_translator::{CpuMode, CpuState};

use crate::memory::GuestMemory;
use crate::trace::kvm_step::{self, Frame, Gate, RepStep};
use crate::trace::{TraceEvent, Tracer};
use crate::vcpu::{ExitKind, ExitStats, IoBuses, Vcpu, VcpuError, VcpuExit};

/// Where KVM's real-mode TSS lives (three pages inside the MMIO hole, as Firecracker puts it).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Errors setting up the KVM backend.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The KVM device node could not be opened.
    #[error("cannot open {1}: {0}")]
    Open(#[source] io::Error, String),
    /// A setup ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A capability the backend needs is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        op,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

/// Environment variable naming the KVM device node (default `/dev/kvm`), e.g. for tests.
pub const KVM_DEVICE_ENV: &str = "RINGZERO_KVM_DEVICE";

/// Opens the KVM device node (`/dev/kvm` unless [`KVM_DEVICE_ENV`] says otherwise).
pub(crate) fn open_kvm() -> Result<Kvm, KvmError> {
    let path = std::env::var(KVM_DEVICE_ENV).unwrap_or_else(|_| "/dev/kvm".to_string());
    let cpath = std::ffi::CString::new(path.clone()).map_err(|_| {
        KvmError::Open(
            io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
            path.clone(),
        )
    })?;
    Kvm::new_with_path(&cpath)
        .map_err(|e| KvmError::Open(io::Error::from_raw_os_error(e.errno()), path))
}

/// Checks whether a KVM VM can be created here; `Err` says why not in one line.
pub fn probe() -> Result<(), KvmError> {
    let kvm = open_kvm()?;
    kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    Ok(())
}

/// The `kvm_run` of the vCPU on this process's vCPU thread, for the kick signal handler.
static KICK_RUN: AtomicPtr<kvm_bindings::kvm_run> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KICK_RUN.load(Ordering::SeqCst);
    if !run.is_null() {
        // SAFETY: `run` points at the live kvm_run mapping of the vCPU (cleared before it is
        // unmapped); a byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick signal's handler once per process (a kick must never kill the process,
/// whichever backend runs the vCPU thread).
pub(crate) fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that only does a volatile byte store.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Registers every RAM region of `mem` as a KVM memory slot of `vm` (slot n = region n).
///
/// # Safety
/// The guest can access the mappings for as long as `vm` lives: `mem` must outlive `vm`.
pub(crate) unsafe fn map_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), KvmError> {
    for (slot, r) in mem.regions().iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.guest_base(),
            memory_size: r.size(),
            userspace_addr: r.host_addr() as u64,
        };
        // SAFETY: the region is a live mapping that outlives `vm`, as the caller guarantees.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Routes device interrupt lines to the in-kernel irqchip with `KVM_IRQ_LINE`.
pub struct KvmIrqSink {
    vm: Arc<VmFd>,
}

impl IrqSink for KvmIrqSink {
    fn set_irq(&self, irq: u32, level: bool) {
        if let Err(e) = self.vm.set_irq_line(irq, level) {
            log::warn!("KVM_IRQ_LINE {irq}={level} failed: {e}");
        }
    }
}

/// A VM on `/dev/kvm` with its in-kernel interrupt controllers and timer.
pub struct KvmVm {
    kvm: Kvm,
    vm: Arc<VmFd>,
}

impl KvmVm {
    /// Creates the VM, its irqchip and PIT, and maps `mem` into it.
    pub fn new(mem: &GuestMemory) -> Result<Self, KvmError> {
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::Pit2, "PIT2"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        if let Err(e) = vm.set_tss_address(TSS_ADDRESS) {
            log::debug!("KVM_SET_TSS_ADDR not supported here: {e}");
        }
        vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        // SAFETY: the machine owns both the memory and the VM and drops the VM (and its vCPU)
        // first.
        unsafe { map_guest_memory(&vm, mem) }?;
        Ok(KvmVm {
            kvm,
            vm: Arc::new(vm),
        })
    }

    /// An interrupt sink that drives the in-kernel irqchip's input lines.
    pub fn irq_sink(&self) -> Arc<dyn IrqSink> {
        Arc::new(KvmIrqSink {
            vm: Arc::clone(&self.vm),
        })
    }

    /// Creates vCPU `id` with the host's supported CPUID.
    pub fn create_vcpu(
        &self,
        id: u8,
        control: Arc<MachineControl>,
        stop: Arc<AtomicBool>,
    ) -> Result<KvmVcpu, KvmError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        adjust_cpuid(&mut cpuid, id);
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        let has_xsave = self.kvm.check_extension(Cap::Xsave);
        let has_xcrs = self.kvm.check_extension(Cap::Xcrs);
        install_kick_handler();
        Ok(KvmVcpu {
            vm: Arc::clone(&self.vm),
            fd,
            control,
            stop,
            stats: ExitStats::default(),
            has_xsave,
            has_xcrs,
            kick_registered: false,
            trace: None,
        })
    }
}

/// Fills in the per-vCPU CPUID fields KVM leaves to userspace (APIC ID, logical count).
fn adjust_cpuid(cpuid: &mut CpuId, id: u8) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x0000_ffff) | (1 << 16) | (u32::from(id) << 24);
        }
    }
}

/// One vCPU running on KVM.
pub struct KvmVcpu {
    /// The VM (the trace reads the in-kernel 8259s' in-service registers).
    vm: Arc<VmFd>,
    fd: VcpuFd,
    control: Arc<MachineControl>,
    stop: Arc<AtomicBool>,
    stats: ExitStats,
    has_xsave: bool,
    has_xcrs: bool,
    kick_registered: bool,
    /// The instruction trace, while it single-steps the guest.
    trace: Option<Box<KvmTrace>>,
}

fn hv(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |e| VcpuError::Hypervisor {
        op,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

impl KvmVcpu {
    /// Reads the general-purpose registers only (cheap; used for diagnostics).
    pub fn regs(&self) -> Result<kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(hv("KVM_GET_REGS"))
    }

    fn register_kick_target(&mut self) {
        if !self.kick_registered {
            KICK_RUN.store(self.fd.get_kvm_run() as *mut _, Ordering::SeqCst);
            self.kick_registered = true;
        }
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        if self.kick_registered {
            KICK_RUN.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

/// What one `KVM_RUN` ended with, once the machine's part of it is done.
enum Flow {
    /// Handled (signal, system event): enter the guest again.
    Continue,
    /// A port or MMIO access dispatched: enter the guest again to complete it.
    Io,
    /// A debug exit (under single-step: one instruction retired).
    Debug,
    /// The run ends.
    Exit(VcpuExit),
}

/// What [`KvmVcpu::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmStep {
    /// A debug exit came back: under single-step, one instruction retired (or an event was
    /// delivered and its handler's first instruction is next).
    Stepped {
        /// Exits handled in user space on the way (port or MMIO accesses, signals).
        exits: u32,
    },
    /// The run ended before a debug exit (machine event, shutdown, kick).
    Exit(VcpuExit),
}

impl KvmVcpu {
    /// Runs `KVM_RUN` once and does the machine's part of its exit.
    fn run_once(&mut self, io: &IoBuses<'_>) -> Result<Flow, VcpuError> {
        let stats = &mut self.stats;
        match self.fd.run() {
            Ok(KvmExit::IoIn(port, data)) => {
                stats.record(ExitKind::PortIoIn);
                io.pio.read(u64::from(port), data);
                return Ok(Flow::Io);
            }
            Ok(KvmExit::IoOut(port, data)) => {
                stats.record(ExitKind::PortIoOut);
                io.pio.write(u64::from(port), data);
                return Ok(Flow::Io);
            }
            Ok(KvmExit::MmioRead(addr, data)) => {
                stats.record(ExitKind::MmioRead);
                io.mmio.read(addr, data);
                return Ok(Flow::Io);
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                stats.record(ExitKind::MmioWrite);
                io.mmio.write(addr, data);
                return Ok(Flow::Io);
            }
            Ok(KvmExit::Hlt) => {
                stats.record(ExitKind::Halt);
                return Ok(Flow::Exit(VcpuExit::Halted));
            }
            Ok(KvmExit::Shutdown) => {
                stats.record(ExitKind::Shutdown);
                return Ok(Flow::Exit(VcpuExit::Shutdown));
            }
            Ok(KvmExit::SystemEvent(kind, _)) => {
                stats.record(ExitKind::Other);
                match kind {
                    KVM_SYSTEM_EVENT_RESET => self.control.request(MachineEvent::Reset),
                    KVM_SYSTEM_EVENT_SHUTDOWN => self.control.request(MachineEvent::PowerOff),
                    KVM_SYSTEM_EVENT_CRASH => {
                        return Err(VcpuError::GuestFailure("guest crash event".into()))
                    }
                    other => log::warn!("ignoring KVM system event {other}"),
                }
            }
            Ok(KvmExit::Intr) => stats.record(ExitKind::Interrupted),
            Ok(KvmExit::Debug(_)) => {
                stats.record(ExitKind::Debug);
                return Ok(Flow::Debug);
            }
            Ok(KvmExit::FailEntry(reason, cpu)) => {
                stats.record(ExitKind::InternalError);
                return Err(VcpuError::GuestFailure(format!(
                    "entry failed on cpu {cpu}: hardware reason {reason:#x}"
                )));
            }
            Ok(KvmExit::InternalError) => {
                stats.record(ExitKind::InternalError);
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so this union arm is live.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let at = match (self.fd.get_regs(), self.fd.get_sregs()) {
                    (Ok(r), Ok(s)) => format!(" at cs:rip {:#x}:{:#x}", s.cs.selector, r.rip),
                    _ => String::new(),
                };
                let what = match suberror {
                    kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                        "the hypervisor could not emulate an instruction"
                    }
                    kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => {
                        "the hypervisor hit an exception while delivering another"
                    }
                    kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => {
                        "the hypervisor could not deliver an event"
                    }
                    _ => "KVM internal error",
                };
                return Err(VcpuError::GuestFailure(format!(
                    "{what} (KVM internal error, suberror {suberror}){at}"
                )));
            }
            Ok(other) => {
                stats.record(ExitKind::Other);
                return Err(VcpuError::GuestFailure(format!(
                    "unexpected KVM exit {other:?}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                stats.record(ExitKind::Interrupted);
            }
            Err(e) => return Err(hv("KVM_RUN")(e)),
        }
        Ok(Flow::Continue)
    }

    /// Turns KVM single-stepping on or off (`KVM_SET_GUEST_DEBUG` with `KVM_GUESTDBG_ENABLE |
    /// KVM_GUESTDBG_SINGLESTEP`, plus `KVM_GUESTDBG_BLOCKIRQ` when `block_irq`: no interrupt
    /// is injected while stepping). For `ringzero lockstep`.
    pub fn set_single_step(&mut self, on: bool, block_irq: bool) -> Result<(), VcpuError> {
        let mut control = 0;
        if on {
            control = kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_SINGLESTEP;
            if block_irq {
                control |= kvm_bindings::KVM_GUESTDBG_BLOCKIRQ;
            }
        }
        let dbg = kvm_bindings::kvm_guest_debug {
            control,
            ..Default::default()
        };
        self.fd
            .set_guest_debug(&dbg)
            .map_err(hv("KVM_SET_GUEST_DEBUG"))
    }

    /// Enters the guest until one debug exit (one instruction under single-step), dispatching
    /// port and MMIO accesses on the way; for `ringzero lockstep`.
    pub fn step(&mut self, io: &IoBuses<'_>) -> Result<KvmStep, VcpuError> {
        self.register_kick_target();
        let mut exits = 0;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.stats.record(ExitKind::Interrupted);
                return Ok(KvmStep::Exit(VcpuExit::Interrupted));
            }
            match self.run_once(io)? {
                Flow::Exit(e) => return Ok(KvmStep::Exit(e)),
                Flow::Debug => return Ok(KvmStep::Stepped { exits }),
                Flow::Continue | Flow::Io => exits += 1,
            }
            if self.control.is_pending() {
                return Ok(KvmStep::Exit(VcpuExit::MachineEvent));
            }
        }
    }
}

impl Vcpu for KvmVcpu {
    fn backend(&self) -> &'static str {
        "kvm"
    }

    fn run(&mut self, io: &IoBuses<'_>) -> Result<VcpuExit, VcpuError> {
        self.register_kick_target();
        if self.trace.is_some() {
            let r = self.run_traced(io);
            if let Some(t) = self.trace.as_mut() {
                t.tracer
                    .flush()
                    .map_err(|e| VcpuError::GuestFailure(format!("writing the trace: {e}")))?;
            }
            if let Some(exit) = r? {
                return Ok(exit);
            }
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.stats.record(ExitKind::Interrupted);
                return Ok(VcpuExit::Interrupted);
            }
            match self.run_once(io)? {
                Flow::Exit(e) => return Ok(e),
                Flow::Continue | Flow::Io | Flow::Debug => {}
            }
            if self.control.is_pending() {
                return Ok(VcpuExit::MachineEvent);
            }
        }
    }

    fn state(&mut self) -> Result<CpuState, VcpuError> {
        let msr_entries = SAVED_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect::<Vec<_>>();
        let mut msrs = Msrs::from_entries(&msr_entries)
            .map_err(|e| VcpuError::State(format!("MSR list: {e:?}")))?;
        let n = self.fd.get_msrs(&mut msrs).map_err(hv("KVM_GET_MSRS"))?;
        let k = KvmVcpuState {
            regs: self.fd.get_regs().map_err(hv("KVM_GET_REGS"))?,
            sregs: self.fd.get_sregs().map_err(hv("KVM_GET_SREGS"))?,
            fpu: self.fd.get_fpu().map_err(hv("KVM_GET_FPU"))?,
            xsave: if self.has_xsave {
                Some(self.fd.get_xsave().map_err(hv("KVM_GET_XSAVE"))?)
            } else {
                None
            },
            xcrs: if self.has_xcrs {
                Some(self.fd.get_xcrs().map_err(hv("KVM_GET_XCRS"))?)
            } else {
                None
            },
            debugregs: self.fd.get_debug_regs().map_err(hv("KVM_GET_DEBUGREGS"))?,
            msrs: msrs.as_slice()[..n].to_vec(),
            events: self
                .fd
                .get_vcpu_events()
                .map_err(hv("KVM_GET_VCPU_EVENTS"))?,
            mp_state: self.fd.get_mp_state().map_err(hv("KVM_GET_MP_STATE"))?,
        };
        CpuState::from_kvm(&k).map_err(|e| VcpuError::State(e.to_string()))
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), VcpuError> {
        let k = state.to_kvm();
        self.fd.set_sregs(&k.sregs).map_err(hv("KVM_SET_SREGS"))?;
        self.fd.set_regs(&k.regs).map_err(hv("KVM_SET_REGS"))?;
        match &k.xsave {
            Some(x) if self.has_xsave => {
                // SAFETY: KVM_CAP_XSAVE2 is not enabled, so KVM reads only the legacy 4 KiB
                // buffer that `kvm_xsave` is.
                unsafe { self.fd.set_xsave(x) }.map_err(hv("KVM_SET_XSAVE"))?
            }
            _ => self.fd.set_fpu(&k.fpu).map_err(hv("KVM_SET_FPU"))?,
        }
        if let (Some(x), true) = (&k.xcrs, self.has_xcrs) {
            self.fd.set_xcrs(x).map_err(hv("KVM_SET_XCRS"))?;
        }
        self.fd
            .set_debug_regs(&k.debugregs)
            .map_err(hv("KVM_SET_DEBUGREGS"))?;
        if !k.msrs.is_empty() {
            let msrs = Msrs::from_entries(&k.msrs)
                .map_err(|e| VcpuError::State(format!("MSR list: {e:?}")))?;
            let n = self.fd.set_msrs(&msrs).map_err(hv("KVM_SET_MSRS"))?;
            if n != k.msrs.len() {
                let bad = k.msrs.get(n).map_or(0, |m| m.index);
                return Err(VcpuError::State(format!("KVM refused MSR {bad:#x}")));
            }
        }
        self.fd
            .set_vcpu_events(&k.events)
            .map_err(hv("KVM_SET_VCPU_EVENTS"))?;
        self.fd
            .set_mp_state(k.mp_state)
            .map_err(hv("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    fn stats(&self) -> &ExitStats {
        &self.stats
    }
}

/// The instruction trace of a single-stepped KVM guest (see [`KvmVcpu::set_tracer`]).
struct KvmTrace {
    tracer: Tracer,
    ram: Arc<GuestMemory>,
    /// Instructions retired so far (every one is stepped while the trace is on).
    retired: u64,
    /// Decoder options for the host CPU.
    options: u32,
    /// Single-step is on; `Some(true)` with interrupts blocked.
    stepping: Option<bool>,
    /// The last instruction was a HLT with interrupts enabled: some hypervisors (PVM) report
    /// its step before the CPU halts, so the next step is the wake-up.
    after_hlt: bool,
}

/// What the trace learnt from one step.
struct StepResult {
    /// The instruction retired (else it faulted, or an interrupt came first).
    completed: bool,
    /// The state to record as after it (before any delivery that followed it).
    after: CpuState,
    /// An event delivered in the step.
    event: Option<TraceEvent>,
}

fn trace_io(e: io::Error) -> VcpuError {
    VcpuError::GuestFailure(format!("writing the trace: {e}"))
}

impl KvmVcpu {
    /// Turns the instruction trace on: from the next [`Vcpu::run`] the guest is single-stepped
    /// (`KVM_GUESTDBG_SINGLESTEP`), every instruction is counted and those the tracer's filter
    /// admits are recorded, until the tracer is done; then the guest runs at full speed.
    /// `ram` is the guest's RAM (instruction bytes, memory values, IDT and frames are read from
    /// it). The host must single-step one instruction at a time
    /// (`crate::lockstep::kvm_single_step_probe`).
    pub fn set_tracer(&mut self, tracer: Tracer, ram: Arc<GuestMemory>) {
        self.trace = Some(Box::new(KvmTrace {
            tracer,
            ram,
            retired: 0,
            options: kvm_step::host_decoder_options(),
            stepping: None,
            after_hlt: false,
        }));
    }

    /// Single-steps and records until the trace is done (`Ok(None)`: go on at full speed) or
    /// the run ends.
    fn run_traced(&mut self, io: &IoBuses<'_>) -> Result<Option<VcpuExit>, VcpuError> {
        loop {
            let Some(mut t) = self.trace.take() else {
                return Ok(None);
            };
            if t.tracer.done() {
                if t.stepping.take().is_some() {
                    self.set_single_step(false, false)?;
                    log::info!(
                        "kvm trace: done after {} instructions; running at full speed",
                        t.retired
                    );
                }
                self.trace = Some(t);
                return Ok(None);
            }
            let r = self.trace_step(&mut t, io);
            self.trace = Some(t);
            if let Some(exit) = r? {
                return Ok(Some(exit));
            }
            if self.stop.load(Ordering::SeqCst) {
                self.stats.record(ExitKind::Interrupted);
                return Ok(Some(VcpuExit::Interrupted));
            }
            if self.control.is_pending() {
                return Ok(Some(VcpuExit::MachineEvent));
            }
        }
    }

    /// Single-step on, with interrupts blocked or not.
    fn stepping(&mut self, t: &mut KvmTrace, block_irq: bool) -> Result<(), VcpuError> {
        if t.stepping != Some(block_irq) {
            self.set_single_step(true, block_irq)?;
            t.stepping = Some(block_irq);
        }
        Ok(())
    }

    /// Runs exactly one instruction: a port or MMIO access it makes is completed with
    /// `immediate_exit` set, so KVM finishes the instruction and returns without entering the
    /// guest again (some hypervisors lose the single-step trap on that re-entry and run on).
    fn step_exact(&mut self, io: &IoBuses<'_>) -> Result<KvmStep, VcpuError> {
        let mut exits = 0;
        let mut completing = false;
        loop {
            if completing {
                self.fd.set_kvm_immediate_exit(1);
            }
            let flow = self.run_once(io);
            if completing {
                self.fd.set_kvm_immediate_exit(0);
            }
            match flow? {
                Flow::Exit(e) => return Ok(KvmStep::Exit(e)),
                Flow::Debug => return Ok(KvmStep::Stepped { exits }),
                Flow::Io => {
                    exits += 1;
                    completing = true;
                }
                Flow::Continue if completing => return Ok(KvmStep::Stepped { exits }),
                Flow::Continue => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(KvmStep::Exit(VcpuExit::Interrupted));
                    }
                }
            }
        }
    }

    /// Vectors in service at the in-kernel local APIC and 8259 pair (delivered, not yet
    /// acknowledged by EOI): tells an external interrupt from an exception sharing a handler.
    fn in_service(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok(l) = self.fd.get_lapic() {
            for i in 0..8usize {
                let at = 0x100 + 0x10 * i;
                let mut w = [0u8; 4];
                for (k, b) in w.iter_mut().enumerate() {
                    *b = l.regs.get(at + k).map_or(0, |&c| c as u8);
                }
                let bits = u32::from_le_bytes(w);
                for b in 0..32 {
                    if bits & (1 << b) != 0 {
                        out.push((i * 32 + b) as u8);
                    }
                }
            }
        }
        for chip_id in 0..2 {
            let mut c = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            if self.vm.get_irqchip(&mut c).is_ok() {
                // SAFETY: chips 0 and 1 are the 8259s: the `pic` arm is the live one.
                let pic = unsafe { c.chip.pic };
                for b in 0..8u8 {
                    if pic.isr & (1 << b) != 0 {
                        out.push(pic.irq_base.wrapping_add(b));
                    }
                }
            }
        }
        out
    }

    /// Steps one instruction (one iteration of a REP string instruction) and records it.
    fn trace_step(
        &mut self,
        t: &mut KvmTrace,
        io: &IoBuses<'_>,
    ) -> Result<Option<VcpuExit>, VcpuError> {
        let before = self.state()?;
        let ram_arc = Arc::clone(&t.ram);
        let ram: &GuestMemory = &ram_arc;
        if before.halted || std::mem::take(&mut t.after_hlt) {
            return self.wake_step(t, io, &before, ram);
        }
        let bytes = crate::trace::memory::fetch_bytes(&before, ram);
        let insn = kvm_step::decode(&before, &bytes, t.options);
        let rep = insn.as_ref().and_then(|i| RepStep::of(i, &before));
        let hlt = insn
            .as_ref()
            .is_some_and(|i| i.mnemonic() == iced_x86::Mnemonic::Hlt)
            && before.rflags & ringzero_translator::state::rflags::IF != 0;
        // Interrupts reach the guest only at a HLT (see docs/trace.md, "Under KVM").
        self.stepping(t, !hlt)?;
        if let Some(r) = rep {
            let mut regs = self.regs()?;
            regs.rcx = r.one(regs.rcx);
            self.fd.set_regs(&regs).map_err(hv("KVM_SET_REGS"))?;
        }
        // RET/IRET: where they go is on the stack; read it before the step.
        let popped = insn
            .as_ref()
            .and_then(|i| kvm_step::return_target(i, &before, ram));
        let n = t.retired + 1;
        let pending = insn.as_ref().and_then(|i| {
            let len = i.len().min(bytes.len());
            t.tracer.begin(n, &before, i, &bytes[..len], ram)
        });
        let step = self.step_exact(io)?;
        if hlt {
            if let KvmStep::Exit(e) = step {
                return Ok(Some(e));
            }
            // HLT retires; the CPU then waits in the state after it.
            let mut halted = before.clone();
            halted.rip = insn.as_ref().map_or(before.rip, |i| i.next_ip());
            t.retired = n;
            if let Some(p) = pending {
                t.tracer.finish(p, &halted, ram).map_err(trace_io)?;
            }
            t.tracer.ran(n);
            let after = self.state()?;
            self.after_wake(t, &halted, after, ram)?;
            return Ok(None);
        }
        if let KvmStep::Exit(e) = step {
            if let Some(r) = rep {
                // Not run (or not finished): give the guest its count back.
                let mut regs = self.regs()?;
                if regs.rip == before.rip && regs.rcx & r.mask == 1 {
                    regs.rcx = before.gpr[ringzero_translator::state::reg::RCX];
                    self.fd.set_regs(&regs).map_err(hv("KVM_SET_REGS"))?;
                }
            }
            return Ok(Some(e));
        }
        let mut after = self.state()?;
        let next_ip = insn.as_ref().map(|i| i.next_ip());
        let mut iterated = false;
        if let Some(r) = rep {
            let mut regs = self.regs()?;
            // The iteration ran when the count reached 0; some hypervisors (PVM) trap before
            // RIP moves on, with RF set, as between iterations.
            let ran =
                regs.rcx & r.mask == 0 && (Some(regs.rip) == next_ip || regs.rip == before.rip);
            if ran {
                iterated = true;
                let (rcx, done) = r.after(regs.rcx, regs.rflags);
                regs.rcx = rcx;
                regs.rip = match (done, next_ip) {
                    (true, Some(next)) => next,
                    _ => before.rip,
                };
                regs.rflags &= !ringzero_translator::state::rflags::RF;
                after.rflags = regs.rflags;
            } else {
                // The iteration faulted: the count is still the guest's.
                regs.rcx = before.gpr[ringzero_translator::state::reg::RCX];
            }
            self.fd.set_regs(&regs).map_err(hv("KVM_SET_REGS"))?;
            after.gpr[ringzero_translator::state::reg::RCX] = regs.rcx;
            after.rip = regs.rip;
        }
        let res = if iterated {
            StepResult {
                completed: true,
                after,
                event: None,
            }
        } else {
            self.understand_step(&before, insn.as_ref(), popped, after, ram)?
        };
        if res.completed {
            t.retired = n;
            if let Some(p) = pending {
                t.tracer.finish(p, &res.after, ram).map_err(trace_io)?;
            }
        }
        t.tracer.ran(t.retired);
        if let Some(e) = &res.event {
            t.tracer.event(e).map_err(trace_io)?;
        }
        Ok(None)
    }

    /// Steps a halted CPU, interrupts allowed: the step ends when an interrupt has woken it,
    /// at its handler's entry, or (PVM) after the handler's first instruction, which is then
    /// recorded from the entry state rebuilt from `before`.
    fn wake_step(
        &mut self,
        t: &mut KvmTrace,
        io: &IoBuses<'_>,
        before: &CpuState,
        ram: &GuestMemory,
    ) -> Result<Option<VcpuExit>, VcpuError> {
        self.stepping(t, false)?;
        if let KvmStep::Exit(e) = self.step_exact(io)? {
            return Ok(Some(e));
        }
        let after = self.state()?;
        self.after_wake(t, before, after, ram)?;
        Ok(None)
    }

    /// What happened to a CPU that was halted in state `before` (or had just run a HLT), now
    /// in state `after`: still halted, woken by an interrupt (at the handler's entry, or after
    /// its first instruction, which is recorded), or it was not halted and ran on.
    fn after_wake(
        &mut self,
        t: &mut KvmTrace,
        before: &CpuState,
        after: CpuState,
        ram: &GuestMemory,
    ) -> Result<(), VcpuError> {
        if after.halted || (after.cs.selector, after.rip) == (before.cs.selector, before.rip) {
            if !after.halted {
                // The hypervisor (PVM) reported the HLT's step without halting the CPU: halt
                // it, so that the next step waits for the interrupt as the HLT would.
                let halted = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_HALTED,
                };
                self.fd
                    .set_mp_state(halted)
                    .map_err(hv("KVM_SET_MP_STATE"))?;
            }
            t.after_hlt = true;
            return Ok(());
        }
        if !kvm_step::gates_at(&after, ram).is_empty() {
            let res = self.understand_step(before, None, None, after, ram)?;
            t.tracer.ran(t.retired);
            if let Some(e) = &res.event {
                t.tracer.event(e).map_err(trace_io)?;
            }
            return Ok(());
        }
        let busy = self.in_service();
        let mut gates = kvm_step::all_gates(before, ram);
        gates.retain(|g| g.cs & !3 == after.cs.selector & !3);
        gates.sort_by_key(|g| !busy.contains(&g.vector));
        for g in gates {
            let entry = kvm_step::entry_state(before, &g);
            let bytes = crate::trace::memory::fetch_bytes(&entry, ram);
            let Some(first) = kvm_step::decode(&entry, &bytes, t.options) else {
                continue;
            };
            let lands = kvm_step::expected_next(&first, entry.code_bits())
                .is_some_and(|e| e.contains(&after.rip));
            if !lands {
                continue;
            }
            let Some(frame) = kvm_step::read_frame(&entry, before, g, false, ram) else {
                continue;
            };
            if (frame.cs, frame.rip) != (before.cs.selector, before.rip) {
                continue;
            }
            t.tracer.ran(t.retired);
            t.tracer
                .event(&TraceEvent {
                    what: if g.vector == 2 && !busy.contains(&2) {
                        "nmi"
                    } else {
                        "interrupt"
                    },
                    vector: g.vector,
                    error: None,
                    cs: frame.cs,
                    rip: frame.rip,
                    cr2: None,
                    cpl: before.cpl(),
                })
                .map_err(trace_io)?;
            let n = t.retired + 1;
            let len = first.len().min(bytes.len());
            if let Some(p) = t.tracer.begin(n, &entry, &first, &bytes[..len], ram) {
                t.tracer.finish(p, &after, ram).map_err(trace_io)?;
            }
            t.retired = n;
            t.tracer.ran(n);
            return Ok(());
        }
        // No interrupt came: the CPU was not halted and ran the instruction at `before`.
        let bytes = crate::trace::memory::fetch_bytes(before, ram);
        let insn = kvm_step::decode(before, &bytes, t.options);
        let plain = insn
            .as_ref()
            .and_then(|i| kvm_step::expected_next(i, before.code_bits()))
            .is_some_and(|e| after.cs.selector == before.cs.selector && e.contains(&after.rip));
        match insn {
            Some(i) if plain => {
                let n = t.retired + 1;
                let len = i.len().min(bytes.len());
                if let Some(p) = t.tracer.begin(n, before, &i, &bytes[..len], ram) {
                    t.tracer.finish(p, &after, ram).map_err(trace_io)?;
                }
                t.retired = n;
                t.tracer.ran(n);
                Ok(())
            }
            i => Err(VcpuError::GuestFailure(overrun_message(
                before,
                i.as_ref(),
                &after,
            ))),
        }
    }

    /// Tells what a step from `before` over `insn` did, ending in `after`: the instruction
    /// retired and/or an interrupt or exception was delivered (the step ended at the entry of
    /// an IVT/IDT gate it did not branch to).
    fn understand_step(
        &self,
        before: &CpuState,
        insn: Option<&iced_x86::Instruction>,
        popped: Option<(u16, u64)>,
        after: CpuState,
        ram: &GuestMemory,
    ) -> Result<StepResult, VcpuError> {
        let bits = before.code_bits();
        let same_cs = after.cs.selector == before.cs.selector;
        let expected = match (insn.and_then(|i| kvm_step::expected_next(i, bits)), popped) {
            (Some(e), _) => Some(same_cs && (after.rip == e[0] || after.rip == e[1])),
            (None, Some((cs, rip))) => Some((after.cs.selector, after.rip) == (cs, rip)),
            (None, None) => None,
        };
        if expected == Some(true) {
            return Ok(StepResult {
                completed: true,
                after,
                event: None,
            });
        }
        let gates = kvm_step::gates_at(&after, ram);
        let software = insn.and_then(kvm_step::software_vector);
        let gate = match software.and_then(|v| gates.iter().find(|g| g.vector == v)) {
            Some(g) => Some((*g, "software_interrupt")),
            None if gates.is_empty() => None,
            None => {
                let busy = self.in_service();
                match gates.iter().find(|g| busy.contains(&g.vector)) {
                    Some(g) => Some((*g, "interrupt")),
                    None => gates
                        .iter()
                        .find(|g| g.vector < 32)
                        .map(|g| (*g, if g.vector == 2 { "nmi" } else { "exception" })),
                }
            }
        };
        let Some((gate, what)) = gate else {
            if expected == Some(false) {
                return Err(VcpuError::GuestFailure(overrun_message(
                    before, insn, &after,
                )));
            }
            // An indirect transfer went somewhere: nothing was delivered.
            return Ok(StepResult {
                completed: true,
                after,
                event: None,
            });
        };
        Ok(self.delivered(before, &after, gate, what, ram))
    }

    /// The step ended at `gate`'s handler: the event and whether the instruction retired.
    fn delivered(
        &self,
        before: &CpuState,
        after: &CpuState,
        gate: Gate,
        what: &'static str,
        ram: &GuestMemory,
    ) -> StepResult {
        let real = after.mode() == CpuMode::Real;
        let error = what == "exception" && !real && kvm_step::pushes_error_code(gate.vector);
        let frame = kvm_step::read_frame(after, before, gate, error, ram).unwrap_or(Frame {
            error: None,
            rip: before.rip,
            cs: before.cs.selector,
            rflags: before.rflags,
            rsp: before.gpr[ringzero_translator::state::reg::RSP],
            ss: before.ss.selector,
        });
        // A fault (or an interrupt taken before the instruction) returns to the instruction.
        let completed = what == "software_interrupt"
            || (frame.cs, frame.rip) != (before.cs.selector, before.rip);
        let event = TraceEvent {
            what,
            vector: gate.vector,
            error: frame.error,
            cs: frame.cs,
            rip: frame.rip,
            cr2: (what == "exception" && gate.vector == 14).then_some(after.cr2),
            cpl: if real {
                0
            } else if frame.rflags & ringzero_translator::state::rflags::VM != 0 {
                3
            } else {
                (frame.cs & 3) as u8
            },
        };
        // A software interrupt's record shows its delivery (as the BT's does); an interrupt or
        // exception after a retired instruction is an event of its own.
        let recorded = if what == "software_interrupt" {
            after.clone()
        } else {
            kvm_step::before_delivery(after, before, &frame)
        };
        StepResult {
            completed,
            after: recorded,
            event: Some(event),
        }
    }
}

/// The error for a step that ended neither where its instruction goes nor at a handler: the
/// hypervisor ran past its single-step trap, so instructions went unseen.
fn overrun_message(
    before: &CpuState,
    insn: Option<&iced_x86::Instruction>,
    after: &CpuState,
) -> String {
    format!(
        "the KVM trace lost track: a single step from {:04x}:{:x} ({}) ended at {:04x}:{:x} \
         (CPL {}), which that instruction does not go to: the hypervisor ran on past its \
         single-step trap (PVM does so in ring 3), so the instructions in between cannot be \
         recorded; trace this stretch with --accel bt",
        before.cs.selector,
        before.rip,
        insn.map_or_else(|| "undecodable".to_string(), |i| i.to_string()),
        after.cs.selector,
        after.rip,
        after.cpl()
    )
}
