//! Random bytes executed at ring 0 and ring 3 by the fuzz kernel (`test-images/systests/fuzz.S`,
//! `ringzero::images::FUZZ_KERNEL`) never crash the host process under `--accel bt`: the guest
//! takes the faults a CPU would give it. The kernel runs its Multiboot module (`--initrd`) from a
//! fresh state up to 64 times, one byte past each fault, and prints one `FUZZ:` line per fault.
//!
//! - Ring 3 cannot change system state, so every ring-3 run must reach `FUZZ-DONE` and exit
//!   with [`images::FUZZ_EXIT_STATUS`].
//! - Ring 0 may do anything a kernel can: the run may also end by a debug-exit write of its own
//!   (any odd status), a reset or power-off (0), a triple fault (4), the timeout (6), or the one
//!   guest-caused error in [`GUEST_ERRORS`] (status 2).
//!
//! With usable KVM the ring-3 runs also go through `--accel kvm` and their `FUZZ:` lines are
//! compared with the BT's. Every difference is printed (seed, entry, bytes, both lines, and a
//! class where one is known); the comparison itself asserts nothing (see the README's "fuzz"
//! section for what the differences found so far are).

mod common;
use common::*;
use ringzero::images;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Seeds of the random bytes.
const SEEDS: std::ops::Range<u64> = 1..17;
/// Seeds compared with KVM (each KVM run costs ~0.6 s of host time, mostly its serial exits).
const KVM_SEEDS: std::ops::Range<u64> = 1..9;
/// Bytes per module: one code page.
const LEN: usize = 4096;
/// Faults the kernel takes before `FUZZ-DONE`.
const MAX_FAULTS: usize = 64;
/// Where the kernel maps the code page (`FZ_CODE` in fuzz.S).
const CODE_BASE: u64 = 0x4000_1000;
/// The kernel's command lines: ring 0/3, 64-bit or compatibility mode.
const MODES: &[&str] = &["ring0", "ring0 compat", "ring3", "ring3 compat"];

/// Status-2 errors a ring-0 guest may cause, each with why it is the guest's doing:
/// - HLT with RFLAGS.IF = 0 (or every interrupt masked): a real CPU would sleep forever; the VMM
///   stops instead of waiting for the timeout.
const GUEST_ERRORS: &[&str] = &["the CPU halted with interrupts unavailable"];

/// splitmix64: a fixed, dependency-free PRNG (the bytes must not change between runs).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The module for `seed`.
fn random_bytes(seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..LEN / 8)
        .flat_map(|_| splitmix64(&mut s).to_le_bytes())
        .collect()
}

/// One run of the fuzz kernel.
struct Run {
    status: i32,
    serial: String,
    stderr: String,
}

/// Runs the kernel under `accel` with `mode` as its command line and `bytes` as its module.
fn run(dir: &Path, accel: &str, mode: &str, seed: u64, bytes: &[u8]) -> Run {
    let tag = format!("{accel}-{}-{seed}", mode.replace(' ', "-"));
    let kernel = dir.join("fuzz.elf");
    let module = write_file(dir, &format!("{tag}.bin"), bytes);
    let serial = dir.join(format!("{tag}.txt"));
    let o = ringzero(&[
        "run",
        "--accel",
        accel,
        "--mem",
        "16M",
        "--multiboot",
        kernel.to_str().unwrap(),
        "--initrd",
        module.to_str().unwrap(),
        "--append",
        mode,
        "--serial",
        &format!("file:{}", serial.display()),
        "--timeout",
        "5s",
    ]);
    Run {
        status: status(&o),
        serial: std::fs::read_to_string(&serial).unwrap_or_default(),
        stderr: stderr(&o),
    }
}

/// One `FUZZ:` line.
#[derive(Clone, Debug)]
struct Fault {
    vector: u64,
    error: Option<u64>,
    rip: u64,
    cpl: u64,
    cr2: Option<u64>,
    entry: u64,
    hang: bool,
    line: String,
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The `FUZZ:` lines of a serial log (panics on a malformed one).
fn faults(serial: &str) -> Vec<Fault> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("FUZZ: "))
        .map(|rest| {
            let mut f = Fault {
                vector: u64::MAX,
                error: None,
                rip: 0,
                cpl: 9,
                cr2: None,
                entry: 0,
                hang: false,
                line: rest.to_string(),
            };
            for field in rest.split(' ') {
                let (k, v) = field.split_once('=').unwrap_or((field, ""));
                let n = || num(v).unwrap_or_else(|| panic!("bad field {field:?} in {rest:?}"));
                match k {
                    "vector" => f.vector = n(),
                    "error" if v == "none" => f.error = None,
                    "error" => f.error = Some(n()),
                    "rip" => f.rip = n(),
                    "cpl" => f.cpl = n(),
                    "cr2" => f.cr2 = Some(n()),
                    "entry" => f.entry = n(),
                    "hang" => f.hang = true,
                    _ => panic!("unknown field {field:?} in {rest:?}"),
                }
            }
            f
        })
        .collect()
}

/// Asserts what every run must satisfy: no death by signal, no panic, a documented status, and
/// for ring 3 `FUZZ-DONE` after exactly [`MAX_FAULTS`] ring-3 faults.
fn assert_crash_free(r: &Run, ring3: bool, what: &str) {
    let context = format!(
        "{what}: status {}\nserial (tail): {}\nstderr: {}",
        r.status,
        tail(&r.serial, 6),
        r.stderr
    );
    assert_ne!(r.status, -1, "killed by a signal: {context}");
    assert!(!r.stderr.contains("panicked"), "panic: {context}");
    assert!(
        r.serial.starts_with("FUZZ-START"),
        "no start line: {context}"
    );
    let fs = faults(&r.serial);
    if ring3 {
        assert_eq!(r.status, images::FUZZ_EXIT_STATUS, "{context}");
        assert!(
            r.serial
                .contains(&format!("FUZZ-DONE faults={MAX_FAULTS}\n")),
            "{context}"
        );
        assert_eq!(fs.len(), MAX_FAULTS, "{context}");
        // Ring-3 code comes back only through the IDT, always from CPL 3.
        assert!(fs.iter().all(|f| f.cpl == 3), "{context}");
        return;
    }
    match r.status {
        s if s == images::FUZZ_EXIT_STATUS => {
            assert!(r.serial.contains("FUZZ-DONE"), "{context}")
        }
        // The code's own debug-exit write, a reset or power-off, a triple fault, the timeout.
        s if s % 2 == 1 || s == 0 || s == 4 || s == 6 => {}
        2 => {
            let errors: Vec<_> = r
                .stderr
                .lines()
                .filter(|l| l.starts_with("ringzero: error: "))
                .collect();
            assert_eq!(errors.len(), 1, "{context}");
            assert!(
                GUEST_ERRORS.iter().any(|e| errors[0].contains(e)),
                "status 2 with an error the guest cannot cause: {context}"
            );
        }
        _ => panic!("undocumented status: {context}"),
    }
    assert!(fs.len() <= MAX_FAULTS, "{context}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `jobs` on a few threads (each job is one VMM process) and returns their results in order.
fn parallel<T: Sync, R: Send>(jobs: Vec<T>, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let queue = Mutex::new(jobs.iter().enumerate());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((i, job)) = queue.lock().unwrap().next() else {
                    break;
                };
                let r = f(job);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn kernel_dir() -> tempfile::TempDir {
    let d = tempdir();
    write_file(d.path(), "fuzz.elf", images::FUZZ_KERNEL);
    d
}

#[test]
fn random_bytes_at_ring0_and_ring3_never_crash_the_host_under_bt() {
    let d = kernel_dir();
    let jobs: Vec<(u64, &str)> = SEEDS
        .flat_map(|s| MODES.iter().map(move |m| (s, *m)))
        .collect();
    let t = std::time::Instant::now();
    let runs = parallel(jobs.clone(), |&(seed, mode)| {
        run(d.path(), "bt", mode, seed, &random_bytes(seed))
    });
    let mut by_status = BTreeMap::new();
    for (&(seed, mode), r) in jobs.iter().zip(&runs) {
        assert_crash_free(
            r,
            mode.starts_with("ring3"),
            &format!("bt {mode} seed {seed}"),
        );
        *by_status.entry((mode, r.status)).or_insert(0u32) += 1;
    }
    eprintln!(
        "{} bt runs in {:.1?}; (mode, status) -> runs: {by_status:?}",
        runs.len(),
        t.elapsed()
    );
}

/// One difference between the BT's and KVM's `FUZZ:` lines for the same entry point.
struct Mismatch {
    seed: u64,
    mode: &'static str,
    bt: Fault,
    kvm: Fault,
    class: &'static str,
}

/// The instruction at a fault's RIP (or at its entry when the RIP is outside the code).
fn insn_at(bytes: &[u8], f: &Fault, compat: bool) -> (usize, iced_x86::Instruction) {
    use iced_x86::{Decoder, DecoderOptions};
    let off = f
        .rip
        .checked_sub(CODE_BASE)
        .filter(|&o| o < LEN as u64)
        .unwrap_or(f.entry) as usize;
    let window = &bytes[off..(off + 15).min(bytes.len())];
    let mut decoder = Decoder::with_ip(
        if compat { 32 } else { 64 },
        window,
        CODE_BASE + off as u64,
        DecoderOptions::NONE,
    );
    (off, decoder.decode())
}

/// The instruction at a fault, for the report: offset, bytes, Intel syntax.
fn describe(bytes: &[u8], f: &Fault, compat: bool) -> String {
    use iced_x86::{Formatter, IntelFormatter};
    let (off, insn) = insn_at(bytes, f, compat);
    let mut text = String::new();
    IntelFormatter::new().format(&insn, &mut text);
    let hex: Vec<String> = bytes[off..(off + insn.len().max(1)).min(bytes.len())]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("offset {off:#x}: {} ({text})", hex.join(" "))
}

/// What a difference is, where it matches a pattern checked by hand on the cases this test
/// found (README, "fuzz"). Anything else is "unclassified".
fn classify(bytes: &[u8], bt: &Fault, kvm: &Fault, compat: bool) -> &'static str {
    use iced_x86::{CpuidFeature as F, Mnemonic};
    if bt.hang || kvm.hang {
        return "timing: a hang on one side only (host load)";
    }
    if bt.vector == 14
        && kvm.vector == 14
        && bt.rip == kvm.rip
        && bt.cr2 == kvm.cr2
        && bt
            .error
            .zip(kvm.error)
            .is_some_and(|(b, k)| b | 2 == k && b & 2 == 0)
    {
        return "bt: #PF error code lacks W where the CPU reports a write";
    }
    let (_, bt_insn) = insn_at(bytes, bt, compat);
    let (_, kvm_insn) = insn_at(bytes, kvm, compat);
    let byte_at = |rip: u64| {
        rip.checked_sub(CODE_BASE)
            .and_then(|o| bytes.get(o as usize).copied())
    };
    if kvm_insn.mnemonic() == Mnemonic::Enter && kvm.vector == 14 && kvm.error.unwrap_or(0) & 2 != 0
    {
        return "bt: ENTER does not write-check the final stack pointer (the CPU faults there)";
    }
    if bt.vector == 13
        && byte_at(bt.rip.wrapping_sub(2)) == Some(0xcd)
        && byte_at(bt.rip.wrapping_sub(1)).map(|v| u64::from(v) * 8 + 2) == bt.error
    {
        return "bt: #GP(n*8+2) from INT n has RIP after the INT (the CPU: at it); kvm (PVM): #UD";
    }
    if compat && bt.vector == 6 && byte_at(bt.rip) == Some(0xd6) {
        return "bt: SALC (D6) in 32-bit code is #UD; the CPU executes it";
    }
    if !compat && kvm.vector == 14 && kvm.error.unwrap_or(0) & 0x10 != 0 && kvm.rip < 0x1_0000 {
        return "bt: a 66-prefixed near branch in 64-bit mode keeps 64 bits (AMD truncates to 16)";
    }
    if compat && (kvm.vector, kvm.error) == (13, Some(0)) && bt.vector != 13 {
        return "bt (probably): no #GP(0) for a data access through a null DS/ES the code loaded";
    }
    if bt.vector == 14 && (kvm.vector, kvm.rip, kvm.error) == (14, bt.rip, bt.error) {
        return "register values differ (seen: MOV r, GS reads PVM's own ring-3 selector)";
    }
    if kvm_insn.mnemonic() == Mnemonic::Int1 {
        return "kvm (PVM): INT1 gives #DB with RIP at the instruction, or #UD";
    }
    let far = |m: Mnemonic| matches!(m, Mnemonic::Retf | Mnemonic::Iret | Mnemonic::Iretd);
    if (far(kvm_insn.mnemonic()) || far(bt_insn.mnemonic())) && bt.vector == 13 {
        // E.g. the zeroed stack gives a null CS: #GP(0) on the CPU; PVM gave #PF past the stack.
        return "kvm (PVM): far RET/IRET in ring 3 checked against other descriptors";
    }
    let base = [
        F::INTEL8086,
        F::INTEL186,
        F::INTEL286,
        F::INTEL386,
        F::INTEL486,
        F::X64,
        F::FPU,
        F::FPU287,
        F::FPU387,
    ];
    let extension =
        |i: &iced_x86::Instruction| i.cpuid_features().iter().any(|f| !base.contains(f));
    if bt.vector == 6
        && kvm.vector != 6
        && bt_insn.mnemonic() != Mnemonic::INVALID
        && extension(&bt_insn)
    {
        // docs/bt.md: instructions of features the BT's CPUID does not advertise are #UD; the
        // host CPU (PVM runs ring 3 natively) executes them.
        return "documented: bt #UD for an instruction of an extension it does not advertise";
    }
    let kvm_ud_valid = kvm.vector == 6 && kvm_insn.mnemonic() != Mnemonic::INVALID;
    if compat && kvm_ud_valid && (bt.vector != 6 || bt.rip > kvm.rip) {
        return "kvm (PVM): #UD for a valid instruction in compatibility mode (x87, SSE, AAS, ...)";
    }
    if kvm_ud_valid && (bt.vector, bt.error, bt.rip) == (13, Some(0), kvm.rip) {
        return "kvm (PVM): #UD where the CPU raises #GP(0) (seen: misaligned SSE operand)";
    }
    "unclassified"
}

/// Compares the lines of one seed: entry points both runs took, in order (a different RIP
/// changes the next entry point, so the runs may take different ones for a while).
fn compare(seed: u64, mode: &'static str, bt: &Run, kvm: &Run) -> Vec<Mismatch> {
    let (b, k) = (faults(&bt.serial), faults(&kvm.serial));
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < b.len() && j < k.len() {
        let (x, y) = (&b[i], &k[j]);
        if x.entry < y.entry {
            i += 1;
            continue;
        }
        if y.entry < x.entry {
            j += 1;
            continue;
        }
        let same = if x.hang || y.hang {
            x.hang == y.hang
        } else {
            (x.vector, x.error, x.rip, x.cpl, x.cr2) == (y.vector, y.error, y.rip, y.cpl, y.cr2)
        };
        if !same {
            out.push(Mismatch {
                seed,
                mode,
                bt: x.clone(),
                kvm: y.clone(),
                class: classify(&random_bytes(seed), x, y, mode.contains("compat")),
            });
        }
        i += 1;
        j += 1;
    }
    out
}

#[test]
fn ring3_faults_under_bt_and_kvm_are_compared() {
    if !kvm_or_skip("ring3_faults_under_bt_and_kvm_are_compared") {
        return;
    }
    let d = kernel_dir();
    let modes: &[&'static str] = &["ring3", "ring3 compat"];
    let jobs: Vec<(u64, &'static str, &str)> = KVM_SEEDS
        .flat_map(|s| {
            modes
                .iter()
                .flat_map(move |m| ["bt", "kvm"].map(move |a| (s, *m, a)))
        })
        .collect();
    let t = std::time::Instant::now();
    let runs = parallel(jobs.clone(), |&(seed, mode, accel)| {
        run(d.path(), accel, mode, seed, &random_bytes(seed))
    });
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (pair, r) in jobs.chunks(2).zip(runs.chunks(2)) {
        let (seed, mode, _) = pair[0];
        let (bt, kvm) = (&r[0], &r[1]);
        assert_crash_free(bt, true, &format!("bt {mode} seed {seed}"));
        if kvm.status != images::FUZZ_EXIT_STATUS {
            eprintln!(
                "kvm {mode} seed {seed}: no FUZZ-DONE (status {}), not compared: {}\n{}",
                kvm.status,
                tail(&kvm.serial, 3),
                kvm.stderr.trim()
            );
            continue;
        }
        compared += 1;
        mismatches.extend(compare(seed, mode, bt, kvm));
    }
    let mut classes = BTreeMap::new();
    for m in &mismatches {
        let bytes = random_bytes(m.seed);
        let compat = m.mode.contains("compat");
        eprintln!(
            "MISMATCH seed {} {} entry {:#x} [{}]\n  bt:  {}\n       at {}\n  kvm: {}\n       at {}",
            m.seed,
            m.mode,
            m.bt.entry,
            m.class,
            m.bt.line,
            describe(&bytes, &m.bt, compat),
            m.kvm.line,
            describe(&bytes, &m.kvm, compat),
        );
        *classes.entry((m.mode, m.class)).or_insert(0u32) += 1;
    }
    eprintln!(
        "{compared} ring-3 runs compared in {:.1?}: {} mismatches; (mode, class) -> count: \
         {classes:?}",
        t.elapsed(),
        mismatches.len()
    );
}
