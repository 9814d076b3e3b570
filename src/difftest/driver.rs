//! The `ringzero difftest` loop: generate, run on the oracle and on every translator tier,
//! compare, and on a divergence minimise and print a reproducer.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::gen::{self, Family};
use super::oracle::Oracle;
use super::report;
pub use super::translated::Tier;
use super::translated::{TranslatedRunner, TranslatorGap};
use super::{Case, DifftestError, Mode};

/// One difftest run's parameters.
#[derive(Debug, Clone)]
pub struct DifftestConfig {
    /// Generator seed.
    pub seed: u64,
    /// First case index.
    pub start: u64,
    /// Number of cases.
    pub cases: u64,
    /// Code bitness.
    pub mode: Mode,
    /// Families to draw from, in rotation (empty: the generator picks per case).
    pub families: Vec<Family>,
    /// Count instructions the translator lacks instead of failing on them.
    pub skip_unimplemented: bool,
    /// Keep going after a divergence.
    pub keep_going: bool,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Cases run on the oracle.
    pub cases: u64,
    /// Cases whose outcome differed on some tier.
    pub divergences: u64,
    /// Cases skipped because the translator lacks an instruction, by mnemonic.
    pub gaps: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Whether every compared case agreed and no gap was left unaccounted for.
    pub fn passed(&self, skip_unimplemented: bool) -> bool {
        self.divergences == 0 && (skip_unimplemented || self.gaps.is_empty())
    }

    /// The one-paragraph result printed at the end of a run.
    pub fn report(&self, tiers: &[Tier]) -> String {
        let skipped: u64 = self.gaps.values().sum();
        let mut s = format!(
            "difftest: {} cases, {} compared on {}, {} divergences, {} skipped (unimplemented), {:.1}s ({:.0} cases/s)\n",
            self.cases,
            self.cases - skipped,
            tiers.iter().map(|t| t.name()).collect::<Vec<_>>().join("+"),
            self.divergences,
            skipped,
            self.elapsed.as_secs_f64(),
            self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9),
        );
        if !self.gaps.is_empty() {
            let list: Vec<String> = self.gaps.iter().map(|(m, n)| format!("{m}={n}")).collect();
            s.push_str(&format!("  unimplemented: {}\n", list.join(" ")));
        }
        s
    }
}

fn family_for(config: &DifftestConfig, index: u64) -> Option<Family> {
    let n = config.families.len() as u64;
    (n > 0).then(|| config.families[(index % n) as usize])
}

/// The family a case was generated from when the command line chose it.
fn family_name(config: &DifftestConfig, index: u64) -> Option<&'static str> {
    family_for(config, index).map(Family::name)
}

/// Runs the cases; divergences are written to `out` as they are found.
pub fn run(config: &DifftestConfig, out: &mut dyn Write) -> Result<Summary, DifftestError> {
    let mut oracle = Oracle::new(config.mode)?;
    let mut bt = TranslatedRunner::new().map_err(|e| DifftestError::Translator(e.to_string()))?;
    let started = Instant::now();
    let mut summary = Summary::default();
    let mode = config.mode;
    for index in config.start..config.start.saturating_add(config.cases) {
        let case = gen::generate(config.seed, index, mode, family_for(config, index));
        let expected = oracle.run(&case)?;
        summary.cases += 1;
        for tier in Tier::ALL {
            let actual = match bt.run(&case, mode, tier) {
                Ok(a) => a,
                Err(TranslatorGap::Unimplemented(m)) if config.skip_unimplemented => {
                    *summary.gaps.entry(format!("{m:?}")).or_default() += 1;
                    break;
                }
                Err(gap) => {
                    summary.divergences += 1;
                    let _ = writeln!(
                        out,
                        "difftest: case {index} (seed {}): {gap}\n  rerun: {}\n{}",
                        config.seed,
                        report::rerun_command(config.seed, index, mode, family_name(config, index)),
                        report::disassemble(&case, mode)
                    );
                    break;
                }
            };
            let cmp = report::compare(&case, mode, &expected, &actual);
            if cmp.agrees() {
                continue;
            }
            summary.divergences += 1;
            // Show the minimised case if it still diverges when rerun, else the original.
            let small = minimize(&mut oracle, &mut bt, &case, mode, tier);
            let (small, e, a) = match (oracle.run(&small), bt.run(&small, mode, tier)) {
                (Ok(e), Ok(a)) if !report::compare(&small, mode, &e, &a).agrees() => (small, e, a),
                _ => (case.clone(), expected.clone(), actual),
            };
            let cmp = report::compare(&small, mode, &e, &a);
            let _ = write!(
                out,
                "{}",
                report::format_divergence(
                    config.seed,
                    index,
                    family_name(config, index),
                    &small,
                    mode,
                    ("kvm", &e),
                    (tier.name(), &a),
                    &cmp,
                )
            );
            break;
        }
        if summary.divergences > 0 && !config.keep_going {
            break;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Shrinks a diverging case while it still diverges on `tier`.
fn minimize(
    oracle: &mut Oracle,
    bt: &mut TranslatedRunner,
    case: &Case,
    mode: Mode,
    tier: Tier,
) -> Case {
    report::minimize(case, mode, |c| {
        match (oracle.run(c), bt.run(c, mode, tier)) {
            (Ok(e), Ok(a)) => !report::compare(c, mode, &e, &a).agrees(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_fail_a_run_unless_skipping_was_asked_for() {
        let mut s = Summary {
            cases: 10,
            ..Summary::default()
        };
        assert!(s.passed(false));
        s.gaps.insert("Xadd".into(), 2);
        assert!(!s.passed(false));
        assert!(s.passed(true));
        assert!(s.report(&Tier::ALL).contains("unimplemented: Xadd=2"));
        s.divergences = 1;
        assert!(!s.passed(true));
    }
}
