//! The contract between the machine and a CPU backend, and the one vocabulary of exits.
//!
//! A backend runs guest code until something needs the machine: it dispatches port and MMIO
//! accesses to the buses itself (so a KVM `IoIn` is answered before the next `KVM_RUN`) and
//! returns only the events that end or pause the run. Every exit, handled or not, is counted
//! by [`ExitKind`] so the two backends report statistics in the same words.

use std::fmt;
use std::time::Duration;

use ringzero_devices::Bus;
use ringzero_translator::system::TrapKind;
use ringzero_translator::CpuState;

/// Why control left guest code, in one vocabulary for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitKind {
    /// `in`/`ins` from an I/O port.
    PortIoIn,
    /// `out`/`outs` to an I/O port.
    PortIoOut,
    /// A load from an MMIO address.
    MmioRead,
    /// A store to an MMIO address.
    MmioWrite,
    /// `hlt` with nothing to wake it inside the backend.
    Halt,
    /// The CPU shut down (triple fault).
    Shutdown,
    /// The host asked the vCPU to stop (timeout, escape key, signal).
    Interrupted,
    /// A debug event (single step, breakpoint).
    Debug,
    /// The hypervisor reported an internal error or failed to enter the guest.
    InternalError,
    /// An exit the backend does not classify further.
    Other,
}

impl ExitKind {
    /// Every kind, in display order.
    pub const ALL: [ExitKind; 10] = [
        ExitKind::PortIoIn,
        ExitKind::PortIoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Halt,
        ExitKind::Shutdown,
        ExitKind::Interrupted,
        ExitKind::Debug,
        ExitKind::InternalError,
        ExitKind::Other,
    ];

    /// Stable snake_case name used in `--stats` output and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PortIoIn => "port_io_in",
            ExitKind::PortIoOut => "port_io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Halt => "halt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Debug => "debug",
            ExitKind::InternalError => "internal_error",
            ExitKind::Other => "other",
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Exit counts by kind, BT trap counts by kind, and backend counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    counts: [u64; ExitKind::ALL.len()],
    traps: [u64; TrapKind::ALL.len()],
    /// Backend-specific counters (instructions, translations, ...), by stable name.
    counters: std::collections::BTreeMap<&'static str, u64>,
}

impl ExitStats {
    /// Counts one exit of `kind`.
    pub fn record(&mut self, kind: ExitKind) {
        self.counts[kind as usize] += 1;
    }

    /// Counts `n` exits of `kind`.
    pub fn add(&mut self, kind: ExitKind, n: u64) {
        self.counts[kind as usize] += n;
    }

    /// Counts one instruction the BT monitor ran itself, by trap kind.
    pub fn record_trap(&mut self, kind: TrapKind) {
        self.traps[kind as usize] += 1;
    }

    /// How many traps of `kind` were counted.
    pub fn trap_count(&self, kind: TrapKind) -> u64 {
        self.traps[kind as usize]
    }

    /// Sets a backend counter.
    pub fn set_counter(&mut self, name: &'static str, value: u64) {
        self.counters.insert(name, value);
    }

    /// A backend counter, if set.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }

    /// How many exits of `kind` were counted.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize]
    }

    /// Total exits of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The non-zero counts, in display order.
    pub fn nonzero(&self) -> impl Iterator<Item = (ExitKind, u64)> + '_ {
        ExitKind::ALL
            .iter()
            .map(|&k| (k, self.count(k)))
            .filter(|&(_, n)| n > 0)
    }

    /// The same data as [`ExitStats::report`] as one JSON object (schema in docs/stats.md):
    /// `backend`, `wall_time_s`, `exits` (total), `exit_counts` and `trap_counts` by kind (every
    /// kind, zeros included, so both backends have the same keys), `counters`.
    pub fn to_json(&self, backend: &str, wall: Duration) -> String {
        let mut s = format!(
            "{{\"backend\":\"{}\",\"wall_time_s\":{:.6},\"exits\":{},\"exit_counts\":{{",
            backend.escape_default(),
            wall.as_secs_f64(),
            self.total()
        );
        let exits: Vec<String> = ExitKind::ALL
            .iter()
            .map(|k| format!("\"{}\":{}", k.name(), self.count(*k)))
            .collect();
        s.push_str(&exits.join(","));
        s.push_str("},\"trap_counts\":{");
        let traps: Vec<String> = TrapKind::ALL
            .iter()
            .map(|k| format!("\"{}\":{}", k.name(), self.trap_count(*k)))
            .collect();
        s.push_str(&traps.join(","));
        s.push_str("},\"counters\":{");
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        s.push_str(&counters.join(","));
        s.push_str("}}\n");
        s
    }

    /// A human-readable table of the counts and the wall time.
    pub fn report(&self, backend: &str, wall: Duration) -> String {
        let mut s = format!(
            "ringzero stats: backend={backend} wall_time={:.3}s exits={}\n",
            wall.as_secs_f64(),
            self.total()
        );
        for (k, n) in self.nonzero() {
            s.push_str(&format!("  {:<16} {n:>12}\n", k.name()));
        }
        let traps: u64 = self.traps.iter().sum();
        if traps > 0 {
            s.push_str(&format!("traps={traps}\n"));
            for (k, n) in TrapKind::ALL.iter().zip(self.traps) {
                if n > 0 {
                    s.push_str(&format!("  {:<20} {n:>12}\n", k.name()));
                }
            }
        }
        for (name, n) in &self.counters {
            s.push_str(&format!("{name}={n}\n"));
        }
        s
    }
}

/// The buses a backend dispatches guest I/O to.
pub struct IoBuses<'a> {
    /// Port I/O bus.
    pub pio: &'a Bus,
    /// Memory-mapped I/O bus.
    pub mmio: &'a Bus,
}

/// What ended a call to [`Vcpu::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// A device posted a machine event (see `MachineControl`); the machine decides what it means.
    MachineEvent,
    /// The CPU halted with no interrupt source the backend can wait for.
    Halted,
    /// Triple fault: the CPU shut down.
    Shutdown,
    /// The host kicked the vCPU (timeout, escape key).
    Interrupted,
}

/// Errors a backend reports when it cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A hypervisor call failed.
    #[error("{op} failed: {source}")]
    Hypervisor {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hypervisor could not run the guest any further.
    #[error("the hypervisor stopped the guest: {0}")]
    GuestFailure(String),
    /// The CPU state could not be converted.
    #[error("invalid CPU state: {0}")]
    State(String),
}

/// One virtual CPU, run by some backend.
pub trait Vcpu {
    /// Short backend name (`kvm`, `bt`).
    fn backend(&self) -> &'static str;
    /// Runs guest code until an exit the machine must handle.
    fn run(&mut self, io: &IoBuses<'_>) -> Result<VcpuExit, VcpuError>;
    /// Reads the architectural state.
    fn state(&mut self) -> Result<CpuState, VcpuError>;
    /// Replaces the architectural state.
    fn set_state(&mut self, state: &CpuState) -> Result<(), VcpuError>;
    /// Exit counts so far.
    fn stats(&self) -> &ExitStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_by_kind_and_report_nonzero_only() {
        let mut s = ExitStats::default();
        s.record(ExitKind::PortIoOut);
        s.record(ExitKind::PortIoOut);
        s.record(ExitKind::Halt);
        assert_eq!(s.count(ExitKind::PortIoOut), 2);
        assert_eq!(s.total(), 3);
        let r = s.report("kvm", Duration::from_millis(1500));
        assert!(r.contains("wall_time=1.500s exits=3"), "{r}");
        assert!(r.contains("port_io_out"));
        assert!(!r.contains("mmio_read"));
    }

    #[test]
    fn json_has_every_kind_of_both_vocabularies() {
        let mut s = ExitStats::default();
        s.record(ExitKind::Halt);
        s.record_trap(TrapKind::Cpuid);
        s.set_counter("instructions", 42);
        let j = s.to_json("bt", Duration::from_millis(250));
        assert!(
            j.starts_with("{\"backend\":\"bt\",\"wall_time_s\":0.250000,\"exits\":1,"),
            "{j}"
        );
        for k in ExitKind::ALL {
            assert!(j.contains(&format!("\"{}\":", k.name())), "{k}: {j}");
        }
        for k in TrapKind::ALL {
            assert!(
                j.contains(&format!("\"{}\":", k.name())),
                "{}: {j}",
                k.name()
            );
        }
        assert!(j.contains("\"halt\":1") && j.contains("\"cpuid\":1"), "{j}");
        assert!(j.ends_with("\"counters\":{\"instructions\":42}}\n"), "{j}");
    }

    #[test]
    fn kind_names_are_unique() {
        let mut names: Vec<_> = ExitKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ExitKind::ALL.len());
    }
}
