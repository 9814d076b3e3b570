//! Round trip of `CpuState` through a real KVM vCPU: read everything, convert, modify, write,
//! read again, and compare with what was written.
//!
//! Skips (printing `SKIPPED: <reason>` to stderr) only when `/dev/kvm` cannot be opened or a VM
//! cannot be created; on a machine with KVM every assertion runs.

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use ringzero_translator::state::kvm::{KvmVcpuState, SAVED_MSRS};
use ringzero_translator::state::{ctl, msr, reg, rflags};
use ringzero_translator::{CpuState, Segment};

/// What the vCPU supports, decided once.
struct Caps {
    xsave: bool,
    xcrs: bool,
    msr_query: Vec<kvm_msr_entry>,
}

/// Reads every piece of vCPU state the conversion covers.
fn read(vcpu: &VcpuFd, caps: &Caps) -> KvmVcpuState {
    let mut msrs = Msrs::from_entries(&caps.msr_query).expect("MSR list fits");
    let n = vcpu.get_msrs(&mut msrs).expect("KVM_GET_MSRS");
    assert_eq!(n, caps.msr_query.len(), "KVM read every listed MSR");
    KvmVcpuState {
        regs: vcpu.get_regs().expect("KVM_GET_REGS"),
        sregs: vcpu.get_sregs().expect("KVM_GET_SREGS"),
        fpu: vcpu.get_fpu().expect("KVM_GET_FPU"),
        xsave: caps.xsave.then(|| vcpu.get_xsave().expect("KVM_GET_XSAVE")),
        xcrs: caps.xcrs.then(|| vcpu.get_xcrs().expect("KVM_GET_XCRS")),
        debugregs: vcpu.get_debug_regs().expect("KVM_GET_DEBUGREGS"),
        msrs: msrs.as_slice().to_vec(),
        events: vcpu.get_vcpu_events().expect("KVM_GET_VCPU_EVENTS"),
        mp_state: vcpu.get_mp_state().expect("KVM_GET_MP_STATE"),
    }
}

/// Writes every piece, in the order a restore needs (sregs before regs, MSRs after EFER).
fn write(vcpu: &VcpuFd, k: &KvmVcpuState) {
    vcpu.set_sregs(&k.sregs).expect("KVM_SET_SREGS");
    vcpu.set_regs(&k.regs).expect("KVM_SET_REGS");
    match &k.xsave {
        // SAFETY: KVM_CAP_XSAVE2 is not enabled, so KVM reads only the 4 KiB `kvm_xsave`.
        Some(x) => unsafe { vcpu.set_xsave(x) }.expect("KVM_SET_XSAVE"),
        None => vcpu.set_fpu(&k.fpu).expect("KVM_SET_FPU"),
    }
    if let Some(x) = &k.xcrs {
        vcpu.set_xcrs(x).expect("KVM_SET_XCRS");
    }
    vcpu.set_debug_regs(&k.debugregs)
        .expect("KVM_SET_DEBUGREGS");
    let msrs = Msrs::from_entries(&k.msrs).expect("MSR list fits");
    let n = vcpu.set_msrs(&msrs).expect("KVM_SET_MSRS");
    assert_eq!(
        n,
        k.msrs.len(),
        "KVM accepted every MSR (stopped at {:?})",
        k.msrs.get(n)
    );
    vcpu.set_vcpu_events(&k.events)
        .expect("KVM_SET_VCPU_EVENTS");
    vcpu.set_mp_state(k.mp_state).expect("KVM_SET_MP_STATE");
}

/// `s` without the TSC, which keeps counting between a write and the next read.
fn without_tsc(s: &CpuState) -> (CpuState, Option<u64>) {
    let mut s = s.clone();
    let tsc = s.msr(msr::TSC);
    s.msrs.retain(|&(i, _)| i != msr::TSC);
    (s, tsc)
}

#[test]
fn cpu_state_round_trips_through_a_real_kvm_vcpu() {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("SKIPPED: cannot open /dev/kvm: {e}");
            return;
        }
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("SKIPPED: cannot create a KVM VM: {e}");
            return;
        }
    };
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");

    // KVM_GET_MSR_INDEX_LIST leaves out MSRs KVM still reads (PVM: MTRRdefType, TSC_AUX), so
    // probe each saved MSR on its own; KVM_GET_MSRS stops at the first one it refuses.
    let supported = kvm.get_msr_index_list().expect("KVM_GET_MSR_INDEX_LIST");
    let readable: Vec<u32> = SAVED_MSRS
        .iter()
        .copied()
        .filter(|&index| {
            let mut one = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .expect("one MSR fits");
            vcpu.get_msrs(&mut one) == Ok(1)
        })
        .collect();
    let caps = Caps {
        xsave: kvm.check_extension(Cap::Xsave),
        xcrs: kvm.check_extension(Cap::Xcrs),
        msr_query: KvmVcpuState::msr_query(&readable),
    };
    let unlisted: Vec<String> = SAVED_MSRS
        .iter()
        .filter(|i| !supported.as_slice().contains(i))
        .map(|i| format!("{i:#x}"))
        .collect();
    eprintln!(
        "KVM caps: xsave {} xcrs {}; {} of {} saved MSRs readable; not in the index list: \
         {unlisted:?}",
        caps.xsave,
        caps.xcrs,
        readable.len(),
        SAVED_MSRS.len()
    );
    assert!(readable.contains(&msr::LSTAR), "KVM reads LSTAR");

    // What KVM reports converts exactly, both ways.
    let initial = read(&vcpu, &caps);
    let state = CpuState::from_kvm(&initial).expect("KVM's own state converts");
    assert!(
        state.to_kvm() == initial,
        "reset state did not round trip:\n{initial:#?}\n{:#?}",
        state.to_kvm()
    );

    // Modify architectural fields the way a loader or the translator would.
    let mut want = state.clone();
    want.gpr[reg::RAX] = 0x1122_3344_5566_7788;
    want.gpr[reg::R15] = 0xdead_beef;
    want.rip = 0x1000;
    want.rflags = rflags::FIXED1 | rflags::CF | rflags::ZF | rflags::DF;
    want.cr0 |= ctl::CR0_PE;
    want.cs = Segment::flat32(0x08, true);
    want.ds = Segment::flat32(0x10, false);
    want.es = want.ds;
    want.ss = want.ds;
    want.gdtr.base = 0x500;
    want.gdtr.limit = 0x17;
    want.fpu.xmm[0] = *b"ringzero-xmm0-ok";
    want.fpu.mxcsr = 0x1fa0;
    want.set_msr(msr::LSTAR, 0xffff_ffff_8100_0000);
    want.set_msr(msr::SFMASK, 0x4_0700);
    want.dr[0] = 0x4000;
    // A hardware interrupt waiting for delivery (sregs bitmap + events) and a pending NMI.
    want.events.interrupt = Some(0x30);
    want.events.nmi_pending = true;
    if readable.contains(&msr::TSC_AUX) {
        want.set_msr(msr::TSC_AUX, 3);
    }

    let k = want.to_kvm();
    write(&vcpu, &k);
    let raw = read(&vcpu, &caps);
    // KVM's own views, independent of this crate's XSAVE parsing.
    assert_eq!(
        raw.fpu.xmm[0], *b"ringzero-xmm0-ok",
        "KVM_GET_FPU sees XMM0"
    );
    assert_eq!(raw.sregs.interrupt_bitmap, [1 << 0x30, 0, 0, 0]);
    assert_eq!(
        (raw.events.interrupt.injected, raw.events.interrupt.nr),
        (1, 0x30)
    );
    assert_eq!(raw.events.nmi.pending, 1);
    // KVM_GET_FPU never reports MXCSR; the XSAVE image holds it at byte 24.
    match &raw.xsave {
        Some(x) => assert_eq!(x.region[6], 0x1fa0),
        None => assert_eq!(raw.fpu.mxcsr, 0),
    }
    assert_eq!(raw.regs.rax, 0x1122_3344_5566_7788);
    assert_eq!(
        (raw.sregs.cs.selector, raw.sregs.cs.db, raw.sregs.cs.g),
        (0x08, 1, 1)
    );
    let got = CpuState::from_kvm(&raw).expect("KVM's state converts");

    // What KVM should now hold: `want` with XSTATE_BV naming the components written (to_kvm
    // sets those bits) and no stale KVM_GET_FPU values left for them.
    let expected = CpuState::from_kvm(&k).expect("to_kvm output converts");
    let mut expected_arch = expected.clone();
    expected_arch.fpu.xstate_bv = want.fpu.xstate_bv;
    expected_arch.kvm_extras.stale_fpu = want.kvm_extras.stale_fpu.clone();
    assert_eq!(
        expected_arch, want,
        "to_kvm changed more than XINUSE bookkeeping"
    );
    assert_ne!(
        expected.fpu.xstate_bv & 2,
        0,
        "SSE is live after writing XMM0"
    );

    let (want_no_tsc, want_tsc) = without_tsc(&expected);
    let (got_no_tsc, got_tsc) = without_tsc(&got);
    assert_eq!(got_no_tsc, want_no_tsc, "KVM did not hold what was set");
    assert_eq!(got.gpr[reg::RAX], 0x1122_3344_5566_7788);
    assert_eq!(got.fpu.xmm[0], *b"ringzero-xmm0-ok");
    assert_eq!(got.msr(msr::LSTAR), Some(0xffff_ffff_8100_0000));
    assert_eq!(got.cs, Segment::flat32(0x08, true));
    assert_ne!(got.cr0 & ctl::CR0_PE, 0);
    if let (Some(w), Some(g)) = (want_tsc, got_tsc) {
        assert!(g >= w, "TSC went backwards: set {w:#x}, read {g:#x}");
    }

    // Writing what was read back changes nothing either.
    let again = got.to_kvm();
    write(&vcpu, &again);
    let (third, _) = without_tsc(&CpuState::from_kvm(&read(&vcpu, &caps)).expect("converts"));
    assert_eq!(third, got_no_tsc);
}
