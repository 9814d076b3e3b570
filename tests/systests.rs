//! System test images (`test-images/systests/`, `ringzero::images::SYSTESTS`) run end to end:
//! every line a guest prints must be `PASS: <check>` and its `SUMMARY: <passed>/<total>` must
//! agree with those lines and with the exit status.
//!
//! `run_systest(accel, name)` is the one entry point; the `kvm::<image>` tests run it under
//! `--accel kvm` (skipped with a message where KVM is unusable, unless RINGZERO_REQUIRE_KVM=1)
//! and the ignored `bt::<image>` tests under `--accel bt`:
//! `cargo test --test systests -- --ignored bt::` once the binary translator runs system code.

mod common;
use common::*;
use ringzero::images;

/// Checks the guest skips on a PVM host, as (image, check group). PVM is a paravirtual KVM that
/// emulates guest ring-0 code and stops the VM with "KVM internal error, suberror 1" where its
/// emulator gives up, and differs from hardware in a few places. The harness passes
/// `--append pvm` there and the guest prints `SKIP: <group> (<why>)` instead of running the
/// group; each group passes under QEMU TCG. Nothing else may be skipped, and these only on PVM.
const PVM_SKIPS: &[(&str, &str)] = &[
    // PVM: INT3/INT n/INTO in ring 0 (32- and 64-bit) stop the VM (its emulator has no
    // protected-mode INT).
    ("exceptions", "pm32.bp-trap"),
    ("exceptions", "pm32.of-trap"),
    ("exceptions", "lm.bp-trap"),
    // PVM: CR0.PG with PAE outside long mode raises #GP(0).
    ("exceptions", "pm32.pf"),
    // PVM: IRET to ring 3 in 32-bit protected mode stops the VM.
    ("exceptions", "pm32.ring3"),
    // PVM: SYSRETQ raises #GP (its own SYSCALL ABI expects another GDT layout).
    ("syscall", "lm.syscall"),
    // PVM: INT n from ring 3 does not reach the guest's IDT (PVM takes it as a hypercall).
    ("syscall", "lm.int40"),
    ("syscall", "lm.int41-dpl0"),
    // PVM: IRETD in 32-bit ring 0 stops the VM (its emulator has only real-mode IRET).
    ("interrupts", "pm32.irq0"),
    // PVM: the LAPIC in-service bit is not set on delivery, so a missing EOI blocks nothing.
    ("interrupts", "apic.eoi"),
    // PVM: guest ring 3 runs natively under the host's CR0/CR4: the guest's CR0.TS (#NM) and
    // CR4.OSXMMEXCPT (#UD instead of #XM when clear) have no effect there.
    ("fpu", "nm.ts"),
    ("fpu", "xm.no-osxmmexcpt"),
];

/// Whether the KVM here is PVM.
fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Runs system test image `name` under `accel` (`"kvm"` or `"bt"`) and asserts its report:
/// only PASS lines (SKIP lines only those [`PVM_SKIPS`] lists, and only under KVM on PVM), a
/// SUMMARY that counts them, and the exit status that goes with it.
fn run_systest(accel: &str, name: &str) {
    let elf = images::SYSTESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| *e)
        .unwrap_or_else(|| panic!("no system test image {name}"));
    let pvm = accel == "kvm" && kvm_is_pvm();
    let d = tempdir();
    let k = write_file(d.path(), &format!("systest_{name}.elf"), elf);
    let t = std::time::Instant::now();
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--multiboot",
        k.to_str().unwrap(),
        "--append",
        if pvm { "pvm" } else { "" },
        "--timeout",
        "60s",
    ]);
    let elapsed = t.elapsed();
    let out = stdout(&o);
    let err = stderr(&o);
    let context = format!(
        "{name} under {accel}: status {}\n{out}\nstderr: {err}",
        status(&o)
    );
    let (mut pass, mut skips) = (0u32, Vec::new());
    let mut summary = None;
    for line in out.lines() {
        if line.starts_with("PASS: ") {
            pass += 1;
        } else if let Some(s) = line.strip_prefix("SKIP: ") {
            let check = s.split(' ').next().unwrap_or("");
            assert!(
                pvm && PVM_SKIPS.contains(&(name, check)),
                "skip not allowed here: {line}\n{context}"
            );
            skips.push(line.to_owned());
        } else if let Some(s) = line.strip_prefix("SUMMARY: ") {
            assert!(summary.is_none(), "two summaries\n{context}");
            let (p, t) = s.split_once('/').expect("SUMMARY p/t");
            summary = Some((p.parse::<u32>().unwrap(), t.parse::<u32>().unwrap()));
        } else {
            panic!("{line}\n{context}");
        }
    }
    assert_eq!(summary, Some((pass, pass)), "{context}");
    assert!(pass > 0, "{context}");
    assert_eq!(status(&o), images::SYSTEST_EXIT_STATUS, "{context}");
    if pvm {
        let expected = PVM_SKIPS.iter().filter(|(i, _)| *i == name).count();
        assert_eq!(skips.len(), expected, "PVM skips\n{context}");
    }
    for s in &skips {
        eprintln!("{name} under {accel} on PVM: {s}");
    }
    eprintln!("{name} under {accel}: {pass} passed in {elapsed:?}");
}

/// One `kvm::<image>` test and one `bt::<image>` test per image (BT needs no KVM).
macro_rules! systests {
    ($($name:ident),* $(,)?) => {
        mod kvm {
            use super::*;
            $(
                #[test]
                fn $name() {
                    if !kvm_or_skip(concat!("systest_", stringify!($name))) {
                        return;
                    }
                    run_systest("kvm", stringify!($name));
                }
            )*
        }
        mod bt {
            use super::*;
            $(
                #[test]
                fn $name() {
                    run_systest("bt", stringify!($name));
                }
            )*
        }
    };
}

/// The images, in `images::SYSTESTS` order; `systests!` below must name the same.
const IMAGES: &[&str] = &[
    "modes",
    "exceptions",
    "paging",
    "smc",
    "syscall",
    "interrupts",
    "fpu",
];

systests!(modes, exceptions, paging, smc, syscall, interrupts, fpu);

/// Every embedded image has a test here, so adding one to `images::SYSTESTS` is not enough.
#[test]
fn every_systest_image_has_a_test() {
    let names: Vec<_> = images::SYSTESTS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, IMAGES);
    for (image, _) in PVM_SKIPS {
        assert!(IMAGES.contains(image), "{image}");
    }
}
