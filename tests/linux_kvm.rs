//! The Linux yardstick under `--accel kvm` (opt-in: `cargo test --release --test linux_kvm --
//! --ignored`). It is the normal test on a host with VT-x/AMD-V; on hosts whose /dev/kvm is a
//! software hypervisor (PVM) guest ring-0 code is emulated and the boot takes far too long.

mod common;
use common::*;

#[test]
#[ignore = "slow on software KVM (PVM); run with --ignored on a host with VT-x/AMD-V"]
fn linux_yardstick_boots_and_runs_a_command() {
    if !kvm_or_skip("linux_yardstick") {
        return;
    }
    let (kernel, initrd) = yardstick();
    let o = ringzero(&[
        "run",
        "--accel",
        "kvm",
        "--mem",
        "256M",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 panic=-1 rz.run=\"uname -a; ls /proc | head -3\"",
        "--timeout",
        "600s",
    ]);
    let out = stdout(&o);
    assert!(out.contains("RINGZERO-READY "), "{out}");
    assert!(out.contains("Linux "), "{out}");
    assert!(out.contains("RINGZERO-EXIT 0"), "{out}");
    assert_eq!(status(&o), 0, "stderr: {}", stderr(&o));
}
