//! What the trace records: address ranges, CPL, an instruction-count window, start/stop
//! triggers and a record limit (`--trace-range`, `--trace-cpl`, `--trace-window`,
//! `--trace-start`, `--trace-stop`, `--trace-limit`; docs/trace.md).
//!
//! Triggers are addresses with an occurrence number (`ADDR@K`: the K-th execution). Several
//! start triggers form a sequence, each armed once the previous one fired — "the first
//! `syscall` after the 5th process start" is `--trace-start ENTRY@5 --trace-start SYSCALL`.
//! Triggers are only looked for inside the count window.
//!
//! The filter is also a plan: [`TraceFilter::plan`] tells the backend whether the next
//! instruction may be recorded (step it) or how far it can run at full speed without missing
//! one, so a filtered trace of a whole Linux boot costs little more than the boot.

use std::fmt;
use std::str::FromStr;

/// Which privilege levels `--trace-cpl` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CplFilter {
    /// CPL 3.
    User,
    /// CPL 0–2.
    Kernel,
}

impl CplFilter {
    /// Whether an instruction at `cpl` passes.
    pub fn admits(self, cpl: u8) -> bool {
        match self {
            CplFilter::User => cpl == 3,
            CplFilter::Kernel => cpl < 3,
        }
    }
}

/// A linear-address range `[start, end)` (`--trace-range START-END` or `START+LEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// First address in the range.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}

impl AddressRange {
    /// Whether `linear` is in the range.
    pub fn contains(&self, linear: u64) -> bool {
        self.start <= linear && linear < self.end
    }
}

/// Why a filter argument did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterParseError {
    /// Not a number.
    #[error("`{0}` is not a number (decimal, or hexadecimal with 0x)")]
    Number(String),
    /// Not `START-END` / `START+LEN` / `FROM..TO`.
    #[error("`{0}` is not {1}")]
    Shape(String, &'static str),
    /// The range holds nothing.
    #[error("`{0}` is empty (the end must be above the start)")]
    Empty(String),
}

/// Parses `0x...` hexadecimal or decimal (`_` separators allowed).
pub fn parse_number(s: &str) -> Result<u64, FilterParseError> {
    let t = s.trim().replace('_', "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    r.map_err(|_| FilterParseError::Number(s.to_string()))
}

impl FromStr for AddressRange {
    type Err = FilterParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (start, end) = if let Some((a, b)) = s.split_once('+') {
            let start = parse_number(a)?;
            (start, start.saturating_add(parse_number(b)?))
        } else if let Some((a, b)) = s.split_once('-') {
            (parse_number(a)?, parse_number(b)?)
        } else {
            return Err(FilterParseError::Shape(
                s.to_string(),
                "START-END or START+LEN (END exclusive)",
            ));
        };
        if end <= start {
            return Err(FilterParseError::Empty(s.to_string()));
        }
        Ok(AddressRange { start, end })
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

/// A trigger: the `nth` execution (1-based) of the instruction at linear address `addr`
/// (`ADDR` or `ADDR@N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// Linear address of the instruction.
    pub addr: u64,
    /// Which execution fires it (1 = the first).
    pub nth: u64,
}

impl FromStr for Trigger {
    type Err = FilterParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, n) = match s.split_once('@') {
            Some((a, n)) => (a, parse_number(n)?),
            None => (s, 1),
        };
        if n == 0 {
            return Err(FilterParseError::Shape(
                s.to_string(),
                "ADDR or ADDR@N with N >= 1 (the N-th execution)",
            ));
        }
        Ok(Trigger {
            addr: parse_number(a)?,
            nth: n,
        })
    }
}

/// An instruction-count window `FROM..TO` (1-based counts, TO exclusive; either side may be
/// left out: `1000..`, `..500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountWindow {
    /// First count recorded.
    pub from: u64,
    /// First count no longer recorded (`u64::MAX`: no end).
    pub to: u64,
}

impl FromStr for CountWindow {
    type Err = FilterParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((a, b)) = s.split_once("..") else {
            return Err(FilterParseError::Shape(
                s.to_string(),
                "FROM..TO (instruction counts, TO exclusive)",
            ));
        };
        let from = if a.trim().is_empty() {
            1
        } else {
            parse_number(a)?
        };
        let to = if b.trim().is_empty() {
            u64::MAX
        } else {
            parse_number(b)?
        };
        if to <= from {
            return Err(FilterParseError::Empty(s.to_string()));
        }
        Ok(CountWindow { from, to })
    }
}

/// What the trace records; an instruction is recorded when every condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Only instructions whose linear address is in one of these (none: anywhere).
    pub ranges: Vec<AddressRange>,
    /// Only instructions at these privilege levels.
    pub cpl: Option<CplFilter>,
    /// Only instructions whose count is in the window.
    pub window: Option<CountWindow>,
    /// Recording starts when these fire, in order (each armed once the previous fired); the
    /// instruction that fires the last one is the first that may be recorded.
    pub start: Vec<Trigger>,
    /// Recording ends after the instruction that fires this (counted once started; that
    /// instruction is recorded if the other conditions admit it).
    pub stop: Option<Trigger>,
}

/// What the backend should do next ([`TraceFilter::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The next instruction may be recorded: step it.
    Step,
    /// Nothing can be recorded for at least `max` instructions unless execution reaches one of
    /// the [`TraceFilter::stop_points`] or the CPL changes (which only the monitor does).
    Run {
        /// Instructions that may run without a record.
        max: u64,
    },
    /// Nothing will ever be recorded again: run at full speed.
    Done,
}

/// Where a filter stands in a run: its triggers' state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterState {
    /// Every start trigger fired (or there is none).
    pub started: bool,
    /// The stop trigger fired, the window ended or the record limit was reached.
    pub stopped: bool,
    /// The start trigger armed now (index into [`TraceFilter::start`]).
    stage: usize,
    /// Executions of the armed trigger's address so far (start or, once started, stop).
    hits: u64,
}

impl FilterState {
    /// A state that records from the first instruction on.
    pub fn recording() -> Self {
        FilterState {
            started: true,
            ..Default::default()
        }
    }
}

impl TraceFilter {
    /// Whether the filter selects every instruction.
    pub fn is_empty(&self) -> bool {
        *self == TraceFilter::default()
    }

    /// The initial trigger state.
    pub fn initial_state(&self) -> FilterState {
        FilterState {
            started: self.start.is_empty(),
            ..Default::default()
        }
    }

    /// The address of the trigger armed now (the next start trigger, or the stop trigger).
    fn armed(&self, state: &FilterState) -> Option<u64> {
        if state.started {
            self.stop.map(|t| t.addr)
        } else {
            self.start.get(state.stage).map(|t| t.addr)
        }
    }

    /// Decides whether instruction number `n` (1-based) at `linear` running at `cpl` is
    /// recorded, firing the triggers it reaches.
    pub fn admit(&self, state: &mut FilterState, n: u64, linear: u64, cpl: u8) -> bool {
        if state.stopped {
            return false;
        }
        if let Some(w) = self.window {
            if n >= w.to {
                state.stopped = true;
                return false;
            }
            if n < w.from {
                return false;
            }
        }
        if !state.started {
            let Some(t) = self.start.get(state.stage) else {
                state.started = true;
                return false;
            };
            if t.addr != linear {
                return false;
            }
            state.hits += 1;
            if state.hits < t.nth {
                return false;
            }
            state.hits = 0;
            state.stage += 1;
            if state.stage < self.start.len() {
                return false;
            }
            state.started = true;
        } else if let Some(t) = self.stop.filter(|t| t.addr == linear) {
            state.hits += 1;
            if state.hits >= t.nth {
                state.stopped = true;
            }
        }
        self.cpl.is_none_or(|c| c.admits(cpl))
            && (self.ranges.is_empty() || self.ranges.iter().any(|r| r.contains(linear)))
    }

    /// Whether an event (exception or interrupt) after instruction `n` at `rip`, `cpl` is
    /// recorded: the triggers must have started the trace and the window, CPL and ranges admit
    /// it (the range test uses the event's RIP).
    pub fn admit_event(&self, state: &FilterState, n: u64, rip: u64, cpl: u8) -> bool {
        state.started
            && !state.stopped
            && self.window.is_none_or(|w| n >= w.from && n < w.to)
            && self.cpl.is_none_or(|c| c.admits(cpl))
            && (self.ranges.is_empty() || self.ranges.iter().any(|r| r.contains(rip)))
    }

    /// The linear-address ranges execution must stop at so that no recorded instruction and no
    /// trigger is missed while running at full speed.
    pub fn stop_points(&self, state: &FilterState) -> Vec<(u64, u64)> {
        if state.stopped {
            return Vec::new();
        }
        let armed = self.armed(state).map(|a| (a, a.saturating_add(1)));
        if !state.started {
            return armed.into_iter().collect();
        }
        let mut v: Vec<(u64, u64)> = self.ranges.iter().map(|r| (r.start, r.end)).collect();
        v.extend(armed);
        v
    }

    /// What to do before instruction number `n` at `linear`, `cpl` (see [`Plan`]).
    pub fn plan(&self, state: &FilterState, n: u64, linear: u64, cpl: u8) -> Plan {
        if state.stopped || self.window.is_some_and(|w| n >= w.to) {
            return Plan::Done;
        }
        if let Some(w) = self.window {
            if n < w.from {
                return Plan::Run { max: w.from - n };
            }
        }
        if self.armed(state) == Some(linear) {
            return Plan::Step;
        }
        if !state.started {
            return Plan::Run { max: u64::MAX };
        }
        if self.cpl.is_some_and(|c| !c.admits(cpl)) {
            return Plan::Run { max: u64::MAX };
        }
        if !self.ranges.is_empty() && !self.ranges.iter().any(|r| r.contains(linear)) {
            return Plan::Run { max: u64::MAX };
        }
        Plan::Step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> AddressRange {
        s.parse().unwrap()
    }

    fn t(s: &str) -> Trigger {
        s.parse().unwrap()
    }

    #[test]
    fn arguments_parse() {
        assert_eq!(
            range("0x1000-0x2000"),
            AddressRange {
                start: 0x1000,
                end: 0x2000
            }
        );
        assert_eq!(range("4096+16").end, 4112);
        assert!("0x2000-0x1000".parse::<AddressRange>().is_err());
        assert!("zz-1".parse::<AddressRange>().is_err());
        assert!("12".parse::<AddressRange>().is_err());
        let w: CountWindow = "10..20".parse().unwrap();
        assert_eq!((w.from, w.to), (10, 20));
        let w: CountWindow = "..0x10".parse().unwrap();
        assert_eq!((w.from, w.to), (1, 16));
        let w: CountWindow = "5..".parse().unwrap();
        assert_eq!(w.to, u64::MAX);
        assert!("5..5".parse::<CountWindow>().is_err());
        assert!("5".parse::<CountWindow>().is_err());
        assert_eq!(t("0x10@3"), Trigger { addr: 16, nth: 3 });
        assert_eq!(t("16"), Trigger { addr: 16, nth: 1 });
        assert!("0x10@0".parse::<Trigger>().is_err());
    }

    /// Runs `(linear, cpl)` instructions through the filter; the counts recorded.
    fn recorded(f: &TraceFilter, run: &[(u64, u8)]) -> Vec<u64> {
        let mut st = f.initial_state();
        (1u64..)
            .zip(run)
            .filter(|(n, (a, c))| f.admit(&mut st, *n, *a, *c))
            .map(|(n, _)| n)
            .collect()
    }

    const RUN: [(u64, u8); 8] = [
        (0x10, 0),
        (0x11, 0),
        (0x400, 3),
        (0x401, 3),
        (0x12, 0),
        (0x400, 3),
        (0x13, 0),
        (0x401, 3),
    ];

    #[test]
    fn each_condition_selects_exactly_its_instructions() {
        assert_eq!(
            recorded(&TraceFilter::default(), &RUN),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        let cpl = TraceFilter {
            cpl: Some(CplFilter::User),
            ..Default::default()
        };
        assert_eq!(recorded(&cpl, &RUN), [3, 4, 6, 8]);
        let kernel = TraceFilter {
            cpl: Some(CplFilter::Kernel),
            ..Default::default()
        };
        assert_eq!(recorded(&kernel, &RUN), [1, 2, 5, 7]);
        let ranges = TraceFilter {
            ranges: vec![range("0x11-0x13"), range("0x401+1")],
            ..Default::default()
        };
        assert_eq!(recorded(&ranges, &RUN), [2, 4, 5, 8]);
        let window = TraceFilter {
            window: Some("3..6".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(recorded(&window, &RUN), [3, 4, 5]);
        let triggers = TraceFilter {
            start: vec![t("0x400")],
            stop: Some(t("0x12")),
            ..Default::default()
        };
        assert_eq!(recorded(&triggers, &RUN), [3, 4, 5]);
        // The stop trigger only counts once started; the start trigger only once.
        let late_stop = TraceFilter {
            start: vec![t("0x12")],
            stop: Some(t("0x10")),
            ..Default::default()
        };
        assert_eq!(recorded(&late_stop, &RUN), [5, 6, 7, 8]);
        // The N-th execution; sequences; a stop at its N-th execution after the start.
        let second = TraceFilter {
            start: vec![t("0x400@2")],
            ..Default::default()
        };
        assert_eq!(recorded(&second, &RUN), [6, 7, 8]);
        let sequence = TraceFilter {
            start: vec![t("0x401"), t("0x400")],
            stop: Some(t("0x401@1")),
            ..Default::default()
        };
        assert_eq!(recorded(&sequence, &RUN), [6, 7, 8]);
        let nth_stop = TraceFilter {
            stop: Some(t("0x400@2")),
            ..Default::default()
        };
        assert_eq!(recorded(&nth_stop, &RUN), [1, 2, 3, 4, 5, 6]);
        let combined = TraceFilter {
            start: vec![t("0x11")],
            cpl: Some(CplFilter::User),
            window: Some("..8".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(recorded(&combined, &RUN), [3, 4, 6]);
        // Triggers are looked for inside the window only.
        let windowed = TraceFilter {
            start: vec![t("0x400")],
            window: Some("5..".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(recorded(&windowed, &RUN), [6, 7, 8]);
    }

    #[test]
    fn the_plan_never_skips_a_recorded_instruction() {
        // Whenever the plan says Run, the instruction must not be recorded, and Done means no
        // later instruction is.
        let filters = [
            TraceFilter {
                cpl: Some(CplFilter::User),
                ..Default::default()
            },
            TraceFilter {
                ranges: vec![range("0x11-0x13")],
                ..Default::default()
            },
            TraceFilter {
                window: Some("4..7".parse().unwrap()),
                ..Default::default()
            },
            TraceFilter {
                start: vec![t("0x400")],
                stop: Some(t("0x13")),
                ..Default::default()
            },
            TraceFilter {
                start: vec![t("0x11"), t("0x400@2")],
                stop: Some(t("0x401")),
                window: Some("2..".parse().unwrap()),
                ..Default::default()
            },
        ];
        for f in filters {
            let mut st = f.initial_state();
            let mut done = false;
            for (n, &(a, c)) in (1u64..).zip(&RUN) {
                let plan = f.plan(&st, n, a, c);
                let before = st.clone();
                let rec = f.admit(&mut st, n, a, c);
                if rec {
                    assert!(!done, "{f:?}: recorded {n} after Done");
                    assert_eq!(plan, Plan::Step, "{f:?}: {n} recorded but not stepped");
                }
                if let Plan::Run { max } = plan {
                    assert!(max >= 1);
                    // Running past an instruction must not miss a trigger it would fire.
                    assert_eq!(st, before, "{f:?}: ran over a trigger at {n}");
                }
                done |= plan == Plan::Done;
            }
        }
    }
}
