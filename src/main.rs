//! The `ringzero` command line.

mod bench;
mod compare;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ringzero::cli::{
    status, Cli, Command, DifftestArgs, DifftestMode, LockstepArgs, RunArgs, SerialTarget,
};
use ringzero::difftest::{driver, gen::Family, DifftestError, Mode};
use ringzero::loader::{self, KernelKind};
use ringzero::machine::{
    self, BootSource, MachineConfig, RunOutcome, TraceSettings, DEFAULT_LINUX_CMDLINE,
};
use ringzero::trace::TraceFilter;
use ringzero_devices::terminal::{self, TerminalInput};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    terminal::install_restore_on_panic();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                status::HOST_ERROR
            } else {
                status::OK
            });
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Difftest(args) => difftest(args),
        Command::Lockstep(args) => lockstep(args),
        Command::Compare(args) => compare::compare(args),
        Command::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ringzero: error: {e:#}");
            ExitCode::from(status::HOST_ERROR)
        }
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn boot_source(args: &RunArgs) -> Result<BootSource> {
    let cmdline = args.append.clone();
    if let Some(path) = &args.kernel {
        let kernel = read(path, "kernel")?;
        let kind = loader::detect(&kernel).with_context(|| format!("kernel {}", path.display()))?;
        let initrd = match &args.initrd {
            Some(p) => Some(read(p, "initrd")?),
            None => None,
        };
        return Ok(match kind {
            KernelKind::BzImage => BootSource::Linux {
                kernel,
                initrd,
                cmdline: cmdline.unwrap_or_else(|| DEFAULT_LINUX_CMDLINE.to_string()),
            },
            KernelKind::MultibootElf => multiboot(kernel, cmdline, args)?,
        });
    }
    if let Some(path) = &args.multiboot {
        let elf = read(path, "multiboot kernel")?;
        return multiboot(elf, cmdline, args);
    }
    if args.initrd.is_some() || args.append.is_some() {
        bail!("--initrd and --append need --kernel or --multiboot");
    }
    if let Some(flat) = &args.flat {
        return Ok(BootSource::Flat {
            image: read(&flat.path, "flat image")?,
            addr: flat.addr,
        });
    }
    Ok(BootSource::Demo)
}

fn multiboot(elf: Vec<u8>, cmdline: Option<String>, args: &RunArgs) -> Result<BootSource> {
    let modules = match &args.initrd {
        Some(p) => vec![(read(p, "module")?, p.display().to_string())],
        None => Vec::new(),
    };
    Ok(BootSource::Multiboot {
        elf,
        cmdline: cmdline.unwrap_or_default(),
        modules,
    })
}

fn run(args: RunArgs) -> Result<u8> {
    let boot = boot_source(&args)?;
    let interactive = args.serial == SerialTarget::Stdio;
    let config = MachineConfig {
        accel: args.accel,
        boot,
        mem_size: args.mem,
        serial: args.serial.clone(),
        timeout: args.timeout,
        trace: (args.trace.is_some() || args.translation_log.is_some()).then(|| TraceSettings {
            insns: args.trace.is_some(),
            format: args.trace_format,
            syntax: args.syntax,
            path: args.trace_file.clone(),
            filter: TraceFilter {
                ranges: args.trace_range.clone(),
                cpl: args.trace_cpl,
                window: args.trace_window,
                start: args.trace_start.clone(),
                stop: args.trace_stop,
            },
            limit: args.trace_limit,
            translation_log: args.translation_log.clone(),
        }),
    };
    let mut terminal = None;
    let report = machine::run(config, |stop, uart| {
        if interactive {
            terminal = TerminalInput::start(uart, Box::new(move || stop.stop(RunOutcome::Quit)))
                .map_err(|e| log::warn!("console input unavailable: {e}"))
                .ok();
        }
    });
    drop(terminal);
    terminal::restore_terminal();
    let report = report?;
    if args.stats {
        eprint!("{}", report.stats.report(report.backend, report.wall));
    }
    if let Some(path) = &args.stats_json {
        std::fs::write(path, report.stats.to_json(report.backend, report.wall))
            .with_context(|| format!("cannot write --stats-json {}", path.display()))?;
    }
    match report.outcome {
        RunOutcome::TripleFault => eprintln!("ringzero: the guest triple-faulted (CPU shutdown)"),
        RunOutcome::Timeout => eprintln!("ringzero: timeout: the guest was stopped"),
        _ => {}
    }
    Ok(report.outcome.exit_status())
}

fn difftest(args: DifftestArgs) -> Result<u8> {
    let families = match &args.family {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|name| {
                Family::from_name(name.trim()).with_context(|| {
                    format!(
                        "unknown family '{name}' (known: {})",
                        ringzero::difftest::FAMILIES.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let config = driver::DifftestConfig {
        seed: args.seed,
        start: args.start,
        cases: args.cases,
        mode: match args.mode {
            DifftestMode::Long64 => Mode::Long64,
            DifftestMode::Compat32 => Mode::Compat32,
        },
        families,
        skip_unimplemented: args.skip_unimplemented,
        keep_going: args.keep_going,
    };
    let mut out = std::io::stdout();
    match driver::run(&config, &mut out) {
        Ok(summary) => {
            print!("{}", summary.report(&driver::Tier::ALL));
            Ok(if summary.passed(config.skip_unimplemented) {
                status::OK
            } else {
                status::DIVERGENCE
            })
        }
        Err(e @ (DifftestError::KvmUnavailable(_) | DifftestError::NotNative(_))) => {
            eprintln!("ringzero: difftest: no hardware reference: {e}");
            Ok(status::NO_REFERENCE)
        }
        Err(e) => Err(e.into()),
    }
}

fn lockstep(args: LockstepArgs) -> Result<u8> {
    use ringzero::lockstep::{self, Injection, LockstepConfig, LockstepError, INJECT_ENV};
    // The image flags mean what they mean for `run`: build the boot source the same way.
    let image = RunArgs::try_parse_from(["ringzero"])?;
    let image = RunArgs {
        kernel: args.kernel,
        multiboot: args.multiboot,
        flat: args.flat,
        initrd: args.initrd,
        append: args.append,
        ..image
    };
    let config = MachineConfig {
        accel: ringzero::cli::Accel::Bt,
        boot: boot_source(&image)?,
        mem_size: args.mem,
        serial: args.serial,
        timeout: None,
        trace: None,
    };
    let inject = match std::env::var(INJECT_ENV) {
        Ok(v) => Some(
            Injection::parse(&v)
                .with_context(|| format!("{INJECT_ENV}={v}: expected bt|ref:COUNT:GPR"))?,
        ),
        Err(_) => None,
    };
    let ls = LockstepConfig {
        reference: args.reference,
        max_insns: args.max_insns,
        every: args.every.unwrap_or(match args.reference {
            lockstep::Reference::Interp => lockstep::DEFAULT_EVERY,
            lockstep::Reference::Kvm => 1,
        }),
        last: args.last,
        inject,
    };
    match lockstep::run(&config, &ls) {
        Ok(report) => {
            print!("{}", report.render());
            Ok(report.exit_status())
        }
        Err(LockstepError::Unavailable(why)) => {
            println!("lockstep: reference = {}", args.reference.name());
            eprintln!(
                "ringzero: lockstep: the {} reference is unavailable here: {why}",
                args.reference.name()
            );
            Ok(status::NO_REFERENCE)
        }
        Err(e) => Err(e.into()),
    }
}
