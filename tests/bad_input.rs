//! Bad input gives one clear error line, a documented status and never a panic.

mod common;
use common::*;

#[test]
fn missing_kernel_file() {
    let o = ringzero(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_one_line_error(&o, "cannot read kernel /nonexistent/vmlinuz");
}

#[test]
fn file_that_is_neither_bzimage_nor_elf() {
    let d = tempdir();
    let p = write_file(d.path(), "junk", &[0x42u8; 8192]);
    let o = ringzero(&["run", "--kernel", p.to_str().unwrap()]);
    assert_one_line_error(&o, "neither a bzImage nor");
}

#[test]
fn truncated_kernel() {
    let d = tempdir();
    // A bzImage cut off inside its setup header.
    let mut img = vec![0u8; 0x210];
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    let p = write_file(d.path(), "short", &img);
    let o = ringzero(&["run", "--kernel", p.to_str().unwrap()]);
    assert_one_line_error(&o, "truncated");
}

#[test]
fn empty_kernel_file() {
    let d = tempdir();
    let p = write_file(d.path(), "empty", &[]);
    let o = ringzero(&["run", "--kernel", p.to_str().unwrap()]);
    assert_one_line_error(&o, "kernel");
}

#[test]
fn mem_not_a_size() {
    let o = ringzero(&["run", "--mem", "lots"]);
    assert_eq!(status(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("'lots' is not a size"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn mem_too_small() {
    let o = ringzero(&["run", "--mem", "4K"]);
    assert_one_line_error(&o, "memory size 4096 bytes is out of range");
}

#[test]
fn unknown_flag() {
    let o = ringzero(&["run", "--frobnicate"]);
    assert_eq!(status(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
}

#[test]
fn kvm_device_absent_with_accel_kvm() {
    let o = ringzero_env(
        &["run", "--accel", "kvm"],
        &[("RINGZERO_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_error(&o, "--accel kvm: cannot open /nonexistent/kvm");
}

#[test]
fn initrd_without_kernel_is_rejected() {
    let o = ringzero(&["run", "--initrd", "/etc/hostname"]);
    assert_one_line_error(&o, "--initrd and --append need --kernel or --multiboot");
}

#[test]
fn help_documents_every_run_flag() {
    let o = ringzero(&["run", "--help"]);
    assert_eq!(status(&o), 0);
    let out = stdout(&o);
    for flag in [
        "--accel",
        "--kernel",
        "--multiboot",
        "--flat",
        "--initrd",
        "--append",
        "--mem",
        "--serial",
        "--timeout",
        "--stats",
        "--stats-json",
        "--trace",
        "--trace-format",
        "--trace-file",
        "--syntax",
        "Exit status",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}: {out}");
    }
}

#[test]
fn initrd_that_does_not_fit() {
    let d = tempdir();
    let k = write_file(d.path(), "bzImage", &synthetic_bzimage());
    let i = write_file(d.path(), "initrd", &vec![0x5a; 24 << 20]);
    let o = ringzero(&[
        "run",
        "--mem",
        "32M",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "initrd of 24.0 MiB does not fit");
}

#[test]
fn kernel_that_does_not_fit_in_ram() {
    let d = tempdir();
    let k = write_file(d.path(), "bzImage", &synthetic_bzimage());
    let o = ringzero(&["run", "--mem", "8M", "--kernel", k.to_str().unwrap()]);
    assert_one_line_error(&o, "kernel does not fit in RAM");
}
