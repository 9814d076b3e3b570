//! `ringzero lockstep`: guests run under the BT beside a reference CPU with no divergence; a
//! deliberately injected divergence is reported at the right instruction count; the KVM
//! reference where the host can single-step.

mod common;
use common::*;
use ringzero::images;
use ringzero::lockstep::{
    self, Injection, LockstepConfig, LockstepEnd, Reference, Side, DEFAULT_EVERY,
};
use ringzero::machine::{BootSource, MachineConfig};

fn config(boot: BootSource) -> MachineConfig {
    MachineConfig {
        accel: ringzero::cli::Accel::Bt,
        boot,
        mem_size: 64 << 20,
        serial: ringzero::cli::SerialTarget::None,
        timeout: None,
        trace: None,
    }
}

fn systest(name: &str) -> BootSource {
    let elf = images::SYSTESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| e.to_vec())
        .unwrap();
    BootSource::Multiboot {
        elf,
        cmdline: String::new(),
        modules: Vec::new(),
    }
}

fn interp(every: u64) -> LockstepConfig {
    LockstepConfig {
        reference: Reference::Interp,
        max_insns: 50_000_000,
        every,
        last: 8,
        inject: None,
    }
}

fn assert_clean_end(boot: BootSource, every: u64, want: &str) {
    let r = lockstep::run(&config(boot), &interp(every)).unwrap();
    match &r.end {
        LockstepEnd::Finished(how) => assert_eq!(how, want, "{}", r.render()),
        _ => panic!("{}", r.render()),
    }
    assert!(r.instructions > 1000, "{}", r.render());
    assert!(r.compares > 0);
    assert_eq!(r.exit_status(), 0);
}

#[test]
fn demo_guest_runs_in_lockstep_with_the_interpreter_to_its_exit() {
    let want = format!("debug-exit {:#x}", (images::DEMO_EXIT_STATUS - 1) / 2);
    assert_clean_end(BootSource::Demo, DEFAULT_EVERY, &want);
}

#[test]
fn systest_interrupts_runs_in_lockstep_with_the_interpreter() {
    assert_clean_end(systest("interrupts"), DEFAULT_EVERY, "debug-exit 0x0");
}

#[test]
fn systest_paging_runs_in_lockstep_with_the_interpreter() {
    assert_clean_end(systest("paging"), DEFAULT_EVERY, "debug-exit 0x0");
}

#[test]
fn systest_exceptions_runs_in_lockstep_comparing_every_instruction() {
    assert_clean_end(systest("exceptions"), 1, "debug-exit 0x0");
}

#[test]
fn systest_smc_runs_in_lockstep_with_the_interpreter() {
    assert_clean_end(systest("smc"), DEFAULT_EVERY, "debug-exit 0x0");
}

#[test]
fn injected_divergence_is_reported_at_its_instruction_count() {
    for (side, every, after) in [
        (Side::Bt, 1, 5000),
        (Side::Reference, 1, 777),
        (Side::Bt, 64, 3000),
    ] {
        let mut ls = interp(every);
        ls.inject = Some(Injection {
            side,
            after,
            gpr: 3,
        });
        let r = lockstep::run(&config(BootSource::Demo), &ls).unwrap();
        let text = r.render();
        let LockstepEnd::Divergence(d) = &r.end else {
            panic!("no divergence reported: {text}");
        };
        assert_eq!(r.exit_status(), 1);
        // The perturbation lands after the first chunk ending at or past `after`: with one
        // instruction per chunk exactly there; with chunks of up to 64, within one chunk.
        if every == 1 {
            assert_eq!(d.count, after, "{text}");
            assert_eq!(d.last_equal, after - 1, "{text}");
        } else {
            assert!((after..after + every).contains(&d.count), "{text}");
        }
        // RBX (or whatever the guest computed from it next) differs; the report shows it.
        assert!(!d.regs.is_empty(), "{text}");
        assert!(text.contains("DIVERGENCE after instruction"), "{text}");
        assert!(text.contains("reference"), "{text}");
        assert_eq!(d.trace.len(), 8, "{text}");
    }
}

#[test]
fn cli_reports_a_divergence_with_status_1_and_a_clean_run_with_0() {
    let o = ringzero(&["lockstep", "--max-insns", "20000"]);
    assert_eq!(status(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("reference = bt-interp"), "{out}");
    assert!(out.contains("no divergence"), "{out}");

    let o = ringzero_env(
        &["lockstep", "--every", "1", "--last", "3"],
        &[(lockstep::INJECT_ENV, "bt:1234:0")],
    );
    let out = stdout(&o);
    assert_eq!(status(&o), 1, "{out}{}", stderr(&o));
    assert!(out.contains("DIVERGENCE after instruction 1234 "), "{out}");
    assert!(out.contains("rax"), "{out}");
    assert!(out.contains("last 3 trace records"), "{out}");
}

#[test]
fn cli_rejects_every_zero_as_usage_error() {
    let o = ringzero(&["lockstep", "--every", "0"]);
    assert_eq!(status(&o), 2, "{}", stderr(&o));
}

/// The KVM reference: where KVM single-steps, the demo guest's first stretch (up to its first
/// HLT or the limit) agrees; where it cannot, the run exits 3 and says why.
#[test]
fn kvm_reference_agrees_or_reports_unavailable() {
    if !kvm_or_skip("kvm_reference_agrees_or_reports_unavailable") {
        return;
    }
    let o = ringzero(&["lockstep", "--reference", "kvm", "--max-insns", "2000"]);
    let out = stdout(&o);
    match status(&o) {
        0 => assert!(out.contains("no divergence"), "{out}"),
        3 => {
            let err = stderr(&o);
            assert!(err.contains("unavailable"), "{err}");
            if std::env::var("RINGZERO_REQUIRE_KVM").as_deref() == Ok("1")
                && !std::path::Path::new("/sys/module/kvm_pvm").exists()
            {
                panic!("RINGZERO_REQUIRE_KVM=1 on a non-PVM KVM host, yet: {err}");
            }
            eprintln!("SKIPPED kvm reference: {err}");
        }
        s => panic!("status {s}: {out}{}", stderr(&o)),
    }
}
