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
use ringzero_translator::CpuState;

use crate::memory::GuestMemory;
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
            fd,
            control,
            stop,
            stats: ExitStats::default(),
            has_xsave,
            has_xcrs,
            kick_registered: false,
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
    fd: VcpuFd,
    control: Arc<MachineControl>,
    stop: Arc<AtomicBool>,
    stats: ExitStats,
    has_xsave: bool,
    has_xcrs: bool,
    kick_registered: bool,
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
    /// Handled (I/O dispatched, signal): enter the guest again.
    Continue,
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
            }
            Ok(KvmExit::IoOut(port, data)) => {
                stats.record(ExitKind::PortIoOut);
                io.pio.write(u64::from(port), data);
            }
            Ok(KvmExit::MmioRead(addr, data)) => {
                stats.record(ExitKind::MmioRead);
                io.mmio.read(addr, data);
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                stats.record(ExitKind::MmioWrite);
                io.mmio.write(addr, data);
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
                Flow::Continue => exits += 1,
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
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.stats.record(ExitKind::Interrupted);
                return Ok(VcpuExit::Interrupted);
            }
            match self.run_once(io)? {
                Flow::Exit(e) => return Ok(e),
                Flow::Continue | Flow::Debug => {}
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
