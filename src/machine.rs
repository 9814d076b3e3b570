//! The machine: RAM, buses, devices, a loaded guest and one vCPU on the chosen backend.
//!
//! Setup order matters because interrupt lines depend on the backend: pick the backend, create
//! its VM (which owns the interrupt controllers under KVM), wire the shared devices to its
//! interrupt sink, load the guest into RAM, set the entry state, then run until a device posts a
//! machine event, the CPU shuts down, or the host stops it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringzero_devices::{
    acpi_pm::{self, AcpiPm},
    debug_exit::{self, DebugExit},
    fw_cfg::{self, FwCfg},
    i8042::I8042,
    ioapic::{IoApic, IsaIrqRouter, SharedIoApic},
    irq,
    lapic::{LocalApic, SharedLapic},
    pci::{PciBus, PciConfigIo, ResetControl},
    pic::SharedPic,
    pit::{HostClock, Pit8254, SharedPit, TimeSource},
    rtc::CmosRtc,
    test_device::TestDevice,
    uart::Uart16550,
    Bus, BusError, BusKind, IrqSink, MachineControl, MachineEvent, SharedDevice,
};

use crate::acpi::{self, AcpiError, AcpiLayout};
use crate::bt::{BtError, BtPlatform, BtVcpu};
use crate::cli::{status, Accel, SerialTarget, Syntax, TraceFormat};
use crate::kvm::{self, KvmError, KvmVcpu, KvmVm};
use crate::loader::{self, BootSetup, LoadError};
use crate::memory::{GuestMemory, MemoryError};
use crate::trace::translations::TranslationLogWriter;
use crate::trace::{TraceFilter, Tracer};
use crate::vcpu::{ExitStats, IoBuses, Vcpu, VcpuError, VcpuExit};

/// Base port of the COM1 16550A UART.
pub const COM1_PORT: u64 = 0x3f8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// Base of the PCI configuration mechanism #1 ports (0xcf8-0xcff, with reset control at 0xcf9).
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Port of the isa-debug-exit device.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Default Linux command line when `--append` is not given.
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 panic=-1";

/// What to boot.
pub enum BootSource {
    /// The built-in demo guest (flat, real-mode entry).
    Demo,
    /// A Linux bzImage with optional initrd.
    Linux {
        /// The bzImage bytes.
        kernel: Vec<u8>,
        /// The initrd bytes.
        initrd: Option<Vec<u8>>,
        /// Kernel command line.
        cmdline: String,
    },
    /// A Multiboot v1 ELF kernel with modules.
    Multiboot {
        /// The ELF bytes.
        elf: Vec<u8>,
        /// Kernel command line.
        cmdline: String,
        /// Modules as (bytes, string).
        modules: Vec<(Vec<u8>, String)>,
    },
    /// A raw image entered in real mode.
    Flat {
        /// The image bytes.
        image: Vec<u8>,
        /// Load address.
        addr: u64,
    },
}

/// Everything needed to build and run one machine.
pub struct MachineConfig {
    /// Backend choice.
    pub accel: Accel,
    /// Guest to boot.
    pub boot: BootSource,
    /// RAM size in bytes.
    pub mem_size: u64,
    /// Serial console target.
    pub serial: SerialTarget,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// The instruction trace, when wanted.
    pub trace: Option<TraceSettings>,
}

/// Where and how the instruction trace and the translation log are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// Record instructions (`--trace insn`); off when only the translation log is wanted.
    pub insns: bool,
    /// Record format.
    pub format: TraceFormat,
    /// Disassembly syntax.
    pub syntax: Syntax,
    /// Output file; standard error when `None`.
    pub path: Option<std::path::PathBuf>,
    /// What is recorded.
    pub filter: TraceFilter,
    /// Stop after this many instruction records.
    pub limit: Option<u64>,
    /// The translation log's file (BT only), when wanted.
    pub translation_log: Option<std::path::PathBuf>,
}

/// A buffered file (or standard error for `None`) for trace output.
fn trace_sink(path: Option<&std::path::Path>) -> Result<Box<dyn Write + Send>, MachineError> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |source| MachineError::TraceFile {
                path: p.display().to_string(),
                source,
            },
        )?)),
        None => Box::new(std::io::BufWriter::new(std::io::stderr())),
    })
}

impl TraceSettings {
    /// The instruction tracer, when instructions are recorded.
    pub fn tracer(&self) -> Result<Option<Tracer>, MachineError> {
        if !self.insns {
            return Ok(None);
        }
        let out = trace_sink(self.path.as_deref())?;
        Ok(Some(
            Tracer::new(out, self.format, self.syntax)
                .with_filter(self.filter.clone())
                .with_limit(self.limit),
        ))
    }

    /// The translation log's writer, when wanted.
    pub fn translation_log(&self) -> Result<Option<TranslationLogWriter>, MachineError> {
        match &self.translation_log {
            Some(p) => Ok(Some(TranslationLogWriter::new(
                trace_sink(Some(p))?,
                self.syntax,
            ))),
            None => Ok(None),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (treated as the end of the run, like QEMU `-no-reboot`).
    Reset,
    /// The guest wrote a value to the debug-exit port.
    DebugExit(u32),
    /// The CPU triple-faulted.
    TripleFault,
    /// `--timeout` expired.
    Timeout,
    /// The user quit from the console (Ctrl-A x).
    Quit,
}

impl RunOutcome {
    /// The process exit status this outcome maps to (see [`crate::cli::status`]).
    pub fn exit_status(self) -> u8 {
        match self {
            RunOutcome::PowerOff | RunOutcome::Reset | RunOutcome::Quit => status::OK,
            RunOutcome::DebugExit(v) => debug_exit::exit_status(v),
            RunOutcome::TripleFault => status::TRIPLE_FAULT,
            RunOutcome::Timeout => status::TIMEOUT,
        }
    }
}

/// The result of a run: outcome and statistics.
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Which backend ran the CPU.
    pub backend: &'static str,
    /// Exits by kind.
    pub stats: ExitStats,
    /// Wall time from first entry into the guest to the stop.
    pub wall: Duration,
    /// What the loader did, for logs.
    pub boot_summary: String,
}

/// Errors that stop a machine from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Guest RAM could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest image could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// The KVM backend could not be set up.
    #[error("--accel kvm: {0}")]
    Kvm(#[from] KvmError),
    /// The BT backend could not be set up.
    #[error("--accel bt: {0}")]
    Bt(#[from] BtError),
    /// The backend failed while running.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The requested backend cannot run here.
    #[error("{0}")]
    BackendUnavailable(String),
    /// A device could not be registered.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// The trace file could not be created.
    #[error("cannot create trace file {path}: {source}")]
    TraceFile {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The serial output file could not be opened.
    #[error("cannot open serial output {path}: {source}")]
    SerialFile {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Chooses the backend for `accel`: `kvm` where a VM can be created, else `bt`.
pub fn resolve_accel(accel: Accel) -> Result<Accel, MachineError> {
    match accel {
        Accel::Kvm => {
            kvm::probe()?;
            Ok(Accel::Kvm)
        }
        Accel::Bt => Ok(Accel::Bt),
        Accel::Auto => match kvm::probe() {
            Ok(()) => Ok(Accel::Kvm),
            Err(e) => {
                log::info!("KVM unavailable ({e}); using binary translation");
                Ok(Accel::Bt)
            }
        },
    }
}

/// A handle other threads use to stop a running machine.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<RunOutcome>>>,
    thread: libc::pthread_t,
}

impl StopHandle {
    /// Asks the vCPU to stop with `outcome`, kicking it out of the guest.
    pub fn stop(&self, outcome: RunOutcome) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            r.get_or_insert(outcome);
        }
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the thread id belongs to the vCPU thread, alive for the whole run; the
        // signal's handler only stores a byte.
        unsafe { libc::pthread_kill(self.thread, kvm::kick_signal()) };
    }
}

fn serial_output(target: &SerialTarget) -> Result<Box<dyn Write + Send>, MachineError> {
    Ok(match target {
        SerialTarget::Stdio => Box::new(std::io::stdout()),
        SerialTarget::None => Box::new(std::io::sink()),
        SerialTarget::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| MachineError::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?,
        ),
    })
}

fn shared<T: ringzero_devices::BusDevice + 'static>(d: T) -> SharedDevice {
    Arc::new(Mutex::new(d))
}

/// The platform devices every backend shares.
struct Platform {
    pio: Bus,
    mmio: Bus,
    uart: Arc<Mutex<Uart16550>>,
}

fn build_platform(
    config: &MachineConfig,
    mem_size: u64,
    irq: Arc<dyn IrqSink>,
    control: &Arc<MachineControl>,
    cmdline: &str,
    clock: Option<&Arc<dyn TimeSource>>,
) -> Result<Platform, MachineError> {
    let mut pio = Bus::new(BusKind::Pio);
    let mmio = Bus::new(BusKind::Mmio);

    let uart = Arc::new(Mutex::new(Uart16550::new(
        irq::line(&irq, COM1_IRQ),
        serial_output(&config.serial)?,
    )));
    pio.insert(COM1_PORT, 8, uart.clone())?;
    let rtc = match clock {
        Some(c) => CmosRtc::with_clock(
            mem_size,
            irq::line(&irq, 8),
            Box::new(RtcOnClock(Arc::clone(c))),
        ),
        None => CmosRtc::new(mem_size, irq::line(&irq, 8)),
    };
    pio.insert(0x70, 2, shared(rtc))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        irq::line(&irq, 1),
        irq::line(&irq, 12),
        Arc::clone(control),
    )));
    let (i8042_data, i8042_command) = I8042::ports(i8042);
    pio.insert(0x60, 1, i8042_data)?;
    pio.insert(0x64, 1, i8042_command)?;
    pio.insert(
        DEBUG_EXIT_PORT,
        4,
        shared(DebugExit::new(Arc::clone(control))),
    )?;
    let mut fw_cfg = FwCfg::new();
    fw_cfg.set_ram_size(mem_size);
    fw_cfg.set_cpu_count(1);
    fw_cfg.set_cmdline(cmdline.as_bytes());
    pio.insert(
        u64::from(fw_cfg::FW_CFG_PORT),
        fw_cfg::FW_CFG_PORT_LEN,
        shared(fw_cfg),
    )?;
    let pci_bus = Arc::new(Mutex::new(PciBus::new()));
    let reset = ResetControl::new(Arc::clone(control));
    pio.insert(
        PCI_CONFIG_PORT,
        8,
        shared(PciConfigIo::new(pci_bus, Some(reset))),
    )?;
    TestDevice::new(Arc::clone(&irq)).register(&mut pio)?;
    let pm_clock: Arc<dyn TimeSource> = match clock {
        Some(c) => Arc::clone(c),
        None => HostClock::new(),
    };
    let pm = AcpiPm::new(
        Arc::clone(control),
        irq::line(&irq, u32::from(acpi_pm::SCI_IRQ)),
        pm_clock,
    );
    pio.insert(
        u64::from(acpi_pm::PM_BASE_PORT),
        acpi_pm::PM_PORT_LEN,
        shared(pm),
    )?;
    Ok(Platform { pio, mmio, uart })
}

fn load(mem: &GuestMemory, boot: &BootSource) -> Result<BootSetup, LoadError> {
    match boot {
        BootSource::Demo => {
            loader::load_flat(mem, crate::images::DEMO, crate::images::DEMO_LOAD_ADDR)
        }
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => loader::load_linux(mem, kernel, initrd.as_deref(), cmdline),
        BootSource::Multiboot {
            elf,
            cmdline,
            modules,
        } => {
            let mods: Vec<(&[u8], &str)> = modules
                .iter()
                .map(|(b, s)| (b.as_slice(), s.as_str()))
                .collect();
            loader::load_multiboot(mem, elf, cmdline, &mods)
        }
        BootSource::Flat { image, addr } => loader::load_flat(mem, image, *addr),
    }
}

fn cmdline_of(boot: &BootSource) -> &str {
    match boot {
        BootSource::Linux { cmdline, .. } | BootSource::Multiboot { cmdline, .. } => cmdline,
        BootSource::Demo | BootSource::Flat { .. } => "",
    }
}

/// The wall clock the RTC reads when the machine runs on an explicit [`TimeSource`]: a fixed
/// date (2024-01-01 00:00:00 UTC) plus the clock, so two machines on equal clocks read equal
/// dates.
struct RtcOnClock(Arc<dyn TimeSource>);

/// Seconds from the Unix epoch to 2024-01-01 00:00:00 UTC.
const RTC_EPOCH_SECS: u64 = 1_704_067_200;

impl ringzero_devices::rtc::Clock for RtcOnClock {
    fn now(&self) -> Duration {
        Duration::from_secs(RTC_EPOCH_SECS) + Duration::from_nanos(self.0.now_ns())
    }
}

/// Choices [`build`] makes that `run` leaves at their defaults (used by `ringzero lockstep`).
#[derive(Default, Clone)]
pub struct BuildOptions {
    /// The clock the timers (PIT, local APIC, ACPI PM timer), the RTC and the BT's TSC count
    /// on; `None`: the host's. Only the BT backend's devices take it (KVM's timers are
    /// in-kernel).
    pub clock: Option<Arc<dyn TimeSource>>,
}

/// The CPU of a built machine, by backend.
pub enum MachineCpu {
    /// Binary translation.
    Bt(Box<BtVcpu>),
    /// KVM.
    Kvm(Box<KvmVcpu>),
}

impl MachineCpu {
    /// The backend-neutral view.
    pub fn vcpu(&mut self) -> &mut dyn Vcpu {
        match self {
            MachineCpu::Bt(v) => v.as_mut(),
            MachineCpu::Kvm(v) => v.as_mut(),
        }
    }
}

/// A machine built, loaded and in its entry state, not yet run.
pub struct Machine {
    /// Guest RAM.
    pub mem: Arc<GuestMemory>,
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// COM1.
    pub uart: Arc<Mutex<Uart16550>>,
    /// Where devices post machine events.
    pub control: Arc<MachineControl>,
    /// The vCPU's stop flag.
    pub stop: Arc<AtomicBool>,
    /// The CPU.
    pub cpu: MachineCpu,
    /// What the loader did.
    pub setup: BootSetup,
}

impl Machine {
    /// The buses to pass to the vCPU's run calls.
    pub fn io(&self) -> IoBuses<'_> {
        IoBuses {
            pio: &self.pio,
            mmio: &self.mmio,
        }
    }

    /// Writes out COM1's buffered output.
    pub fn flush_serial(&self) {
        flush_uart(&self.uart);
    }
}

/// Builds the machine `config` describes on `accel` (`Bt` or `Kvm`; `Auto` means KVM), loads
/// the guest and sets the entry state.
pub fn build(
    config: &MachineConfig,
    accel: Accel,
    opts: &BuildOptions,
) -> Result<Machine, MachineError> {
    let mem = Arc::new(GuestMemory::new(config.mem_size)?);
    let control = MachineControl::new();
    let stop = Arc::new(AtomicBool::new(false));
    let cmdline = cmdline_of(&config.boot);
    let (platform, mmio, mut cpu) = match accel {
        Accel::Bt => {
            // The board: ISA interrupt lines go to both the 8259 pair and the I/O APIC (the
            // MADT tells Linux so), the I/O APIC delivers to the local APIC.
            let pic = SharedPic::default();
            let clock: Arc<dyn TimeSource> = match &opts.clock {
                Some(c) => Arc::clone(c),
                None => HostClock::new(),
            };
            let lapic = SharedLapic::new(LocalApic::new(Arc::clone(&clock)));
            let ioapic = SharedIoApic::new(IoApic::new(Arc::new(lapic.clone())));
            ioapic.connect_eoi(&lapic);
            let irq: Arc<dyn IrqSink> =
                Arc::new(IsaIrqRouter::new(pic.irq_sink(), ioapic.irq_sink()));
            let pit = SharedPit::new(Pit8254::new(Arc::clone(&clock), irq::line(&irq, 0)));
            let mut platform = build_platform(
                config,
                mem.size(),
                irq,
                &control,
                cmdline,
                opts.clock.as_ref(),
            )?;
            pic.register(&mut platform.pio)?;
            pit.register(&mut platform.pio)?;
            lapic.register(&mut platform.mmio)?;
            ioapic.register(&mut platform.mmio)?;
            let mmio = Arc::new(std::mem::replace(
                &mut platform.mmio,
                Bus::new(BusKind::Mmio),
            ));
            let bt_platform = BtPlatform {
                pic,
                pit,
                lapic,
                clock,
                mmio: Arc::clone(&mmio),
            };
            let mut vcpu = BtVcpu::new(
                Arc::clone(&mem),
                bt_platform,
                Arc::clone(&control),
                Arc::clone(&stop),
            )?;
            if let Some(t) = &config.trace {
                if let Some(tracer) = t.tracer()? {
                    vcpu.set_tracer(tracer);
                }
                if let Some(log) = t.translation_log()? {
                    vcpu.set_translation_log(Box::new(log));
                }
            }
            (platform, mmio, MachineCpu::Bt(Box::new(vcpu)))
        }
        Accel::Kvm | Accel::Auto => {
            let vm = KvmVm::new(&mem)?;
            let mut platform =
                build_platform(config, mem.size(), vm.irq_sink(), &control, cmdline, None)?;
            let mmio = Arc::new(std::mem::replace(
                &mut platform.mmio,
                Bus::new(BusKind::Mmio),
            ));
            let mut vcpu = vm.create_vcpu(0, Arc::clone(&control), Arc::clone(&stop))?;
            if let Some(tracer) = config
                .trace
                .as_ref()
                .map(|t| t.tracer())
                .transpose()?
                .flatten()
            {
                vcpu.set_tracer(tracer, Arc::clone(&mem));
            }
            (platform, mmio, MachineCpu::Kvm(Box::new(vcpu)))
        }
    };
    // Firmware tables first: a loader may still place guest bytes over them (a flat image below
    // 1 MiB is the guest's own business).
    acpi::write_tables(&mem, &AcpiLayout::default())?;
    let setup = load(&mem, &config.boot)?;
    log::info!("{}", setup.summary);
    cpu.vcpu().set_state(&setup.cpu)?;
    Ok(Machine {
        mem,
        pio: platform.pio,
        mmio,
        uart: platform.uart,
        control,
        stop,
        cpu,
        setup,
    })
}

/// Builds the machine described by `config` and runs it to the end.
///
/// `on_start` receives a [`StopHandle`] before the guest first runs (the CLI wires the
/// console's quit key to it).
pub fn run(
    config: MachineConfig,
    on_start: impl FnOnce(StopHandle, Arc<Mutex<Uart16550>>),
) -> Result<RunReport, MachineError> {
    let accel = match (&config.trace, config.accel) {
        (None, a) => resolve_accel(a)?,
        // The trace is the BT's: `auto` picks it.
        (Some(_), Accel::Auto | Accel::Bt) => Accel::Bt,
        (Some(t), Accel::Kvm) if t.translation_log.is_some() => {
            return Err(MachineError::BackendUnavailable(
                "--translation-log needs --accel bt (or auto): KVM runs guest code as it is, \
                 without translating it"
                    .into(),
            ))
        }
        (Some(_), Accel::Kvm) => {
            // Tracing under KVM single-steps the guest: refuse up front where the host cannot.
            crate::lockstep::kvm_single_step_probe().map_err(|why| {
                MachineError::BackendUnavailable(format!(
                    "--trace insn under --accel kvm needs single-stepping, which this host \
                     cannot do ({why}); use --accel bt"
                ))
            })?;
            Accel::Kvm
        }
    };
    let mut machine = build(&config, accel, &BuildOptions::default())?;
    let handle = StopHandle {
        stop: Arc::clone(&machine.stop),
        reason: Arc::new(Mutex::new(None)),
        // SAFETY: pthread_self has no preconditions.
        thread: unsafe { libc::pthread_self() },
    };
    let watchdog = config.timeout.map(|t| Watchdog::start(handle.clone(), t));
    on_start(handle.clone(), Arc::clone(&machine.uart));

    let io = IoBuses {
        pio: &machine.pio,
        mmio: &machine.mmio,
    };
    let control = &machine.control;
    let vcpu = machine.cpu.vcpu();
    let started = Instant::now();
    let outcome = loop {
        match vcpu.run(&io)? {
            VcpuExit::MachineEvent => match control.take() {
                Some(MachineEvent::PowerOff) => break RunOutcome::PowerOff,
                Some(MachineEvent::Reset) => break RunOutcome::Reset,
                Some(MachineEvent::DebugExit(v)) => break RunOutcome::DebugExit(v),
                None => continue,
            },
            VcpuExit::Shutdown => break RunOutcome::TripleFault,
            VcpuExit::Interrupted => {
                let r = *handle.reason.lock().unwrap_or_else(|p| p.into_inner());
                break r.unwrap_or(RunOutcome::Quit);
            }
            VcpuExit::Halted => {
                return Err(MachineError::Vcpu(VcpuError::GuestFailure(
                    "the CPU halted with interrupts unavailable".into(),
                )))
            }
        }
    };
    let wall = started.elapsed();
    if let Some(w) = watchdog {
        w.cancel();
    }
    flush_uart(&machine.uart);
    Ok(RunReport {
        outcome,
        backend: vcpu.backend(),
        stats: vcpu.stats().clone(),
        wall,
        boot_summary: std::mem::take(&mut machine.setup.summary),
    })
}

fn flush_uart(uart: &Arc<Mutex<Uart16550>>) {
    ringzero_devices::bus::lock(uart).flush();
}

/// Stops the machine with [`RunOutcome::Timeout`] when its deadline passes.
struct Watchdog {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    fn start(handle: StopHandle, timeout: Duration) -> Self {
        let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let d = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let deadline = Instant::now() + timeout;
            let mut finished = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    // Kick repeatedly until the vCPU acknowledges by cancelling us.
                    handle.stop(RunOutcome::Timeout);
                    finished = cv
                        .wait_timeout(finished, Duration::from_millis(20))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                } else {
                    finished = cv
                        .wait_timeout(finished, deadline - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        });
        Watchdog { done, thread }
    }

    fn cancel(self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_statuses_are_distinct_and_documented() {
        assert_eq!(RunOutcome::DebugExit(0x10).exit_status(), 33);
        assert_eq!(RunOutcome::DebugExit(0).exit_status(), 1);
        assert_eq!(RunOutcome::PowerOff.exit_status(), 0);
        assert_eq!(RunOutcome::Reset.exit_status(), 0);
        assert_eq!(RunOutcome::TripleFault.exit_status(), status::TRIPLE_FAULT);
        assert_eq!(RunOutcome::Timeout.exit_status(), status::TIMEOUT);
        assert_ne!(status::TRIPLE_FAULT, status::TIMEOUT);
        assert_ne!(status::HOST_ERROR, status::TIMEOUT);
    }
}
