//! `ringzero difftest` end to end: the CI run of 20,000 fixed-seed cases against the real CPU,
//! and the command's error paths.

mod common;
use common::*;

/// Every family: the translator implements every instruction the generator produces (64-bit).
const CI_FAMILIES: &str = "alu,shift,muldiv,bit,stack,control,string,cmov_setcc,misc";

#[test]
fn twenty_thousand_fixed_seed_cases_agree_with_the_cpu() {
    if !kvm_or_skip("difftest_20000") {
        return;
    }
    let o = ringzero(&[
        "difftest",
        "--seed",
        "20261123",
        "--cases",
        "20000",
        "--family",
        CI_FAMILIES,
    ]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "{out}\n{}", stderr(&o));
    assert!(
        out.contains("difftest: 20000 cases,") && out.contains(" 0 divergences"),
        "{out}"
    );
    // Every case is really compared: no instruction the generator produces is missing.
    assert!(
        out.contains("20000 compared") && out.contains(" 0 skipped"),
        "{out}"
    );
}

#[test]
fn unknown_family_is_a_one_line_error() {
    let o = ringzero(&["difftest", "--family", "alu,nonsense"]);
    assert_one_line_error(&o, "unknown family 'nonsense'");
}

#[test]
fn no_kvm_gives_the_distinct_status() {
    let o = ringzero_env(
        &["difftest", "--cases", "1"],
        &[("RINGZERO_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_eq!(status(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no hardware reference"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cases_that_once_diverged_agree() {
    if !kvm_or_skip("difftest_regressions") {
        return;
    }
    // Each (seed, start, family) reproduced a translator bug the soak or CI found.
    for (seed, start, family) in [
        // enter 2Bh,3 with RBP odd and AC set: #AC after the rBP push is stored.
        ("1", "61273", None),
        // adc r15d, r10d; lea r15d, [...]: JIT flags from the overwritten register.
        ("20261123", "56", Some("alu")),
        // popfq sets AC, then a misaligned push qword [rdi]: #AC.
        ("1", "700", Some("stack")),
    ] {
        let mut args = vec!["difftest", "--seed", seed, "--start", start, "--cases", "1"];
        if let Some(f) = family {
            args.extend(["--family", f]);
        }
        let o = ringzero(&args);
        assert_eq!(status(&o), 0, "{args:?}: {}", stdout(&o));
    }
}
