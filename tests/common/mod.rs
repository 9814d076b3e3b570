//! Helpers shared by the integration tests: running the binary and deciding whether KVM tests run.

#![allow(dead_code)]

pub mod guests;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `ringzero` with `args` and returns its output.
pub fn ringzero(args: &[&str]) -> Output {
    ringzero_env(args, &[])
}

/// Runs `ringzero` with `args` and extra environment variables.
pub fn ringzero_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringzero"));
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn ringzero")
}

/// The exit status, or -1 for death by signal.
pub fn status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether KVM tests can run. When they cannot, prints why (tests then return early) unless
/// `RINGZERO_REQUIRE_KVM=1` (set by CI on KVM hosts), in which case the test fails instead.
pub fn kvm_or_skip(test: &str) -> bool {
    match ringzero::kvm::probe() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("RINGZERO_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: RINGZERO_REQUIRE_KVM=1 but KVM is unusable: {e}");
            }
            eprintln!("SKIPPED {test}: KVM is unusable here: {e}");
            false
        }
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

/// Asserts the run failed with exactly one `ringzero: error:` line containing `needle`, with
/// status 2 and no panic.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(status(o), 2, "status; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("ringzero: error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

/// A minimal bzImage (protocol 2.15, relocatable, 64-bit entry) that passes header validation:
/// 3 setup sectors, a 12 KiB pattern as the protected-mode kernel, `init_size` of 4 MiB.
pub fn synthetic_bzimage() -> Vec<u8> {
    fn put(img: &mut [u8], off: usize, n: usize, v: u64) {
        for i in 0..n {
            img[off + i] = (v >> (8 * i)) as u8;
        }
    }
    let setup_sects = 3usize;
    let pm_len = 0x3000usize;
    let mut img = vec![0u8; (setup_sects + 1) * 512 + pm_len];
    img[0x1f1] = setup_sects as u8;
    put(&mut img, 0x1f4, 4, (pm_len as u64).div_ceil(16)); // syssize
    put(&mut img, 0x1fe, 2, 0xaa55);
    img[0x200] = 0xeb;
    img[0x201] = 0x6a; // jump to 0x26c: header length
    img[0x202..0x206].copy_from_slice(b"HdrS");
    put(&mut img, 0x206, 2, 0x020f); // protocol version
    img[0x211] = 0x01; // LOADED_HIGH
    put(&mut img, 0x214, 4, 0x10_0000); // code32_start
    put(&mut img, 0x22c, 4, 0x7fff_ffff); // initrd_addr_max
    put(&mut img, 0x230, 4, 0x20_0000); // kernel_alignment
    img[0x234] = 1; // relocatable
    put(&mut img, 0x236, 2, 1); // XLF_KERNEL_64
    put(&mut img, 0x238, 4, 2047); // cmdline_size
    put(&mut img, 0x258, 8, 0x100_0000); // pref_address
    put(&mut img, 0x260, 4, 0x40_0000); // init_size
    img
}

/// The Linux yardstick's (vmlinuz, initramfs) paths, built into the cache on first use by
/// `test-images/linux/build.sh` (Debian packages; see docs/linux-yardstick.md).
pub fn yardstick() -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/test-images/linux/build.sh");
    let o = Command::new(script)
        .arg("--print-paths")
        .output()
        .expect("run test-images/linux/build.sh");
    assert!(
        o.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines().rev();
    let initrd = lines.next().expect("initramfs path").to_string();
    let kernel = lines.next().expect("vmlinuz path").to_string();
    (kernel, initrd)
}

/// Runs the built-in demo on `accel` with the instruction trace in JSON Lines and `extra`
/// arguments (filters); asserts the demo passed and returns the trace's text.
pub fn demo_trace_jsonl(accel: &str, extra: &[&str]) -> String {
    let d = tempdir();
    let path = d.path().join("trace.jsonl");
    let mut args = vec![
        "run",
        "--accel",
        accel,
        "--serial",
        "none",
        "--trace",
        "insn",
        "--trace-format",
        "jsonl",
        "--trace-file",
        path.to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(extra);
    let o = ringzero(&args);
    assert_eq!(
        status(&o),
        ringzero::images::DEMO_EXIT_STATUS,
        "{accel}: {}",
        stderr(&o)
    );
    std::fs::read_to_string(&path).expect("trace file")
}
