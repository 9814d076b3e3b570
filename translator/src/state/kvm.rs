//! Lossless conversion between [`CpuState`] and KVM's vCPU structures.
//!
//! The KVM backend reads a vCPU with the `KVM_GET_*` ioctls into a [`KvmVcpuState`], converts it
//! with [`CpuState::from_kvm`], and writes a state back through [`CpuState::to_kvm`]. Snapshots
//! and migration between backends depend on that trip being exact, so:
//!
//! - `CpuState::from_kvm(&k)?.to_kvm() == k` for every state KVM reports (padding and reserved
//!   fields excluded; see the `PartialEq` of [`KvmVcpuState`]). Bits KVM reports that the
//!   architectural fields do not model (stale vectors, event flags, XSAVE components past AVX,
//!   MP states other than runnable/halted) ride along in [`KvmExtras`].
//! - `CpuState::from_kvm(&s.to_kvm())? == s` for every state whose `kvm_extras` are canonical
//!   (the default, or what `from_kvm` produced), whose `events.exception_injected` is false when
//!   there is no exception, and whose `fpu.xstate_bv` names every component not in its init state
//!   (`to_kvm` adds such bits, so that KVM loads what the translator wrote without tracking
//!   XINUSE itself).
//! - Input KVM never produces (a flag that is not 0/1, two pending interrupts in
//!   `interrupt_bitmap`, bitmap and events disagreeing, duplicate MSRs, ...) is a [`StateError`].
//!
//! Exceptions follow KVM's ABI: without `KVM_CAP_EXCEPTION_PAYLOAD` (no
//! `KVM_VCPUEVENT_VALID_PAYLOAD` in `events.flags`) KVM reports a *pending* exception as
//! `injected = pending = 1` and ignores `pending` on set (so it is re-delivered as injected);
//! with the capability the two are distinct and the payload (CR2 for #PF, DR6 bits for #DB) is
//! kept in [`KvmExtras::exception_payload`], not yet applied to CR2/DR6. This module does not
//! enable the capability; it converts whichever form the flags say.
//!
//! FPU: with XSAVE the XSAVE image is the authority. `KVM_GET_FPU` never reports MXCSR (always
//! 0) and shows stale buffer bytes for components in their init state; those differences are
//! kept in [`KvmExtras::stale_fpu`] so `fpu` round trips, and a restore should use
//! `KVM_SET_XSAVE`. Without XSAVE the MXCSR KVM reports (0) is all there is.

use super::{msr, CpuState, DescriptorTable, FpuState, PendingEvents, Segment};
use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE, KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_PAYLOAD,
    KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
};

/// Everything KVM holds for one vCPU's architectural state.
#[derive(Debug)]
pub struct KvmVcpuState {
    /// `KVM_GET_REGS`.
    pub regs: kvm_regs,
    /// `KVM_GET_SREGS`.
    pub sregs: kvm_sregs,
    /// `KVM_GET_FPU`; redundant with (and regenerated from) `xsave` when that is present.
    pub fpu: kvm_fpu,
    /// `KVM_GET_XSAVE` when `KVM_CAP_XSAVE`; the authority over `fpu` when present.
    pub xsave: Option<kvm_xsave>,
    /// `KVM_GET_XCRS` when `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    /// `KVM_GET_DEBUGREGS`.
    pub debugregs: kvm_debugregs,
    /// `KVM_GET_MSRS` for (the supported part of) [`SAVED_MSRS`] plus any others, by index.
    pub msrs: Vec<kvm_msr_entry>,
    /// `KVM_GET_VCPU_EVENTS`.
    pub events: kvm_vcpu_events,
    /// `KVM_GET_MP_STATE`.
    pub mp_state: kvm_mp_state,
}

/// MSR indices saved/restored with the architectural state (those `CpuState` models), ascending.
///
/// EFER and APIC_BASE travel in `kvm_sregs`, FS_BASE and GS_BASE as the segment bases, so they
/// are not here (and must not be in [`KvmVcpuState::msrs`]). `KVM_GET_MSRS` stops at the first
/// MSR it does not know: filter this list with `KVM_GET_MSR_INDEX_LIST` first.
pub const SAVED_MSRS: &[u32] = &[
    msr::TSC,
    msr::SYSENTER_CS,
    msr::SYSENTER_ESP,
    msr::SYSENTER_EIP,
    msr::MISC_ENABLE,
    msr::PAT,
    msr::MTRR_DEF_TYPE,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
    msr::TSC_AUX,
];

/// MSRs that `CpuState` keeps in dedicated fields fed from `kvm_sregs`, never in the MSR list.
const SREGS_MSRS: [u32; 4] = [msr::EFER, msr::APIC_BASE, msr::FS_BASE, msr::GS_BASE];

/// XCR0's index for `KVM_GET_XCRS` (`XCR_XFEATURE_ENABLED_MASK`).
const XCR0_INDEX: u32 = 0;

/// `kvm_vcpu_events.flags` KVM reports without optional capabilities, plus SIPI_VECTOR so a
/// state built outside KVM gets its SIPI vector applied.
const DEFAULT_EVENT_FLAGS: u32 = KVM_VCPUEVENT_VALID_NMI_PENDING
    | KVM_VCPUEVENT_VALID_SIPI_VECTOR
    | KVM_VCPUEVENT_VALID_SHADOW
    | KVM_VCPUEVENT_VALID_SMM;

/// XSAVE state-component bits in XSTATE_BV.
const XFEATURE_FP: u64 = 1 << 0;
/// SSE (XMM registers and MXCSR).
const XFEATURE_SSE: u64 = 1 << 1;
/// AVX (upper halves of YMM).
const XFEATURE_YMM: u64 = 1 << 2;

/// MXCSR after reset / in the SSE init state.
const MXCSR_DEFAULT: u32 = 0x1f80;
/// FCW after FNINIT / in the x87 init state.
const FCW_DEFAULT: u16 = 0x37f;

/// Size of the legacy `kvm_xsave` buffer in bytes.
const XSAVE_BYTES: usize = 4096;

/// Byte offsets in the XSAVE standard-format area (Intel SDM Vol. 1 §10.5.1, §13.4).
mod xoff {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    pub const XSTATE_BV: usize = 512;
    pub const YMM_HI: usize = 576;
    /// Byte ranges `FpuState` models; everything else is kept in `KvmExtras::xsave_rest`.
    pub const MODELED: [(usize, usize); 5] = [
        (FCW, FTW + 1),
        (FOP, MXCSR + 4),
        (ST, XMM + 256),
        (XSTATE_BV, XSTATE_BV + 8),
        (YMM_HI, YMM_HI + 256),
    ];
}

/// Why a [`KvmVcpuState`] cannot be represented (KVM itself never reports such a state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A KVM field that is a boolean holds something other than 0 or 1.
    #[error("KVM field {field} is {value}, not 0 or 1")]
    NotAFlag {
        /// Which field.
        field: String,
        /// Its value.
        value: u8,
    },
    /// More than one vector is set in `kvm_sregs.interrupt_bitmap`.
    #[error("interrupt_bitmap has {0} vectors set; KVM holds at most one pending interrupt")]
    InterruptBitmap(u32),
    /// `interrupt_bitmap` and `kvm_vcpu_events.interrupt` describe different interrupts.
    #[error(
        "interrupt_bitmap vector {bitmap:?} disagrees with events.interrupt \
         (injected {injected}, nr {nr}, soft {soft})"
    )]
    InterruptMismatch {
        /// The vector in the bitmap, if any.
        bitmap: Option<u8>,
        /// `events.interrupt.injected`.
        injected: bool,
        /// `events.interrupt.nr`.
        nr: u8,
        /// `events.interrupt.soft`.
        soft: bool,
    },
    /// An exception injected/pending combination KVM does not report under these event flags.
    #[error(
        "exception injected={injected} pending={pending} is impossible with event flags {flags:#x}"
    )]
    ExceptionState {
        /// `events.exception.injected`.
        injected: bool,
        /// `events.exception.pending`.
        pending: bool,
        /// `events.flags`.
        flags: u32,
    },
    /// The same MSR appears twice in the MSR list.
    #[error("MSR {0:#x} appears twice")]
    DuplicateMsr(u32),
    /// An MSR that travels in `kvm_sregs` (EFER, APIC_BASE, FS/GS base) is in the MSR list.
    #[error("MSR {0:#x} is carried by kvm_sregs, not the MSR list")]
    SregsMsr(u32),
    /// `kvm_debugregs.flags` is non-zero (KVM defines no flags and rejects them).
    #[error("kvm_debugregs.flags is {0:#x}; KVM defines none")]
    DebugRegsFlags(u64),
    /// `kvm_xcrs.flags` is non-zero (KVM defines no flags and rejects them).
    #[error("kvm_xcrs.flags is {0:#x}; KVM defines none")]
    XcrsFlags(u32),
    /// `kvm_xcrs` holds an XCR other than XCR0, or more than one entry.
    #[error("kvm_xcrs holds {count} entries (first index {index}); KVM supports only XCR0")]
    Xcrs {
        /// `nr_xcrs`.
        count: u32,
        /// Index of the first entry.
        index: u32,
    },
}

/// What `KVM_GET_XCRS` said, beyond XCR0's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XcrsForm {
    /// One entry, XCR0 (the normal case, and what a state built outside KVM gets).
    #[default]
    Xcr0,
    /// `nr_xcrs == 0`: the host has no XSAVE; `CpuState::xcr0` is then 1.
    Empty,
    /// No `KVM_CAP_XCRS`: `KvmVcpuState::xcrs` is `None`.
    Unavailable,
}

/// KVM-reported bits that the architectural fields of [`CpuState`] do not model, kept so that a
/// state read from KVM goes back bit for bit. Backends other than KVM may ignore them (lockstep
/// comparison should), except `exception_payload` and `mp_state`, which carry meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmExtras {
    /// `kvm_vcpu_events.flags` (`KVM_VCPUEVENT_VALID_*`): which event fields KVM applies on set.
    pub event_flags: u32,
    /// `events.exception.nr` KVM reports while no exception is injected or pending (stale).
    pub stale_exception_nr: u8,
    /// `events.exception.has_error_code` KVM reports while no exception is active (stale).
    pub stale_exception_has_error_code: bool,
    /// `events.exception.error_code` while no exception with an error code is active (stale).
    pub stale_exception_error_code: u32,
    /// `events.exception_has_payload` (meaningful with `KVM_VCPUEVENT_VALID_PAYLOAD`).
    pub exception_has_payload: u8,
    /// `events.exception_payload`: CR2 (#PF) or DR6 bits (#DB) not yet applied by KVM.
    pub exception_payload: u64,
    /// `events.interrupt.nr` KVM reports while no interrupt is injected (stale).
    pub stale_interrupt_nr: u8,
    /// `mp_state` when it is neither RUNNABLE nor HALTED (e.g. an AP in INIT_RECEIVED).
    pub mp_state: Option<u32>,
    /// With XSAVE: what `KVM_GET_FPU` reported where it differs from the XSAVE image, so `fpu`
    /// round trips too: its MXCSR (KVM_GET_FPU always says 0) and the x87/XMM fields of
    /// components in their init state (KVM shows its raw buffer there). `None` when it agrees.
    pub stale_fpu: Option<FpuState>,
    /// KVM had no `KVM_CAP_XSAVE` (`KvmVcpuState::xsave` is `None`).
    pub xsave_absent: bool,
    /// The XSAVE area with the bytes `FpuState` models zeroed (MXCSR_MASK, XCOMP_BV, components
    /// past AVX...); empty when all of it is zero.
    pub xsave_rest: Vec<u8>,
    /// The shape of `KVM_GET_XCRS`'s answer.
    pub xcrs: XcrsForm,
}

impl Default for KvmExtras {
    /// Extras for a state that did not come from KVM: full XSAVE and XCR0, runnable, no stale bits.
    fn default() -> Self {
        KvmExtras {
            event_flags: DEFAULT_EVENT_FLAGS,
            stale_exception_nr: 0,
            stale_exception_has_error_code: false,
            stale_exception_error_code: 0,
            exception_has_payload: 0,
            exception_payload: 0,
            stale_interrupt_nr: 0,
            mp_state: None,
            stale_fpu: None,
            xsave_absent: false,
            xsave_rest: Vec::new(),
            xcrs: XcrsForm::Xcr0,
        }
    }
}

impl Clone for KvmVcpuState {
    fn clone(&self) -> Self {
        KvmVcpuState {
            regs: self.regs,
            sregs: self.sregs,
            fpu: self.fpu,
            xsave: self
                .xsave
                .as_ref()
                .map(|x| xsave_from_bytes(&xsave_bytes(x))),
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            msrs: self.msrs.clone(),
            events: self.events,
            mp_state: self.mp_state,
        }
    }
}

impl PartialEq for KvmVcpuState {
    /// Equal in every field KVM defines: padding, reserved words and unused `kvm_xcrs` slots are
    /// ignored.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.defined_fields(), other.defined_fields());
        a.regs == b.regs
            && a.sregs == b.sregs
            && a.fpu == b.fpu
            && a.xsave.as_ref().map(|x| x.region) == b.xsave.as_ref().map(|x| x.region)
            && a.xcrs == b.xcrs
            && a.debugregs == b.debugregs
            && a.msrs == b.msrs
            && a.events == b.events
            && a.mp_state == b.mp_state
    }
}

impl KvmVcpuState {
    /// A copy with every padding/reserved field and unused slot zeroed.
    fn defined_fields(&self) -> KvmVcpuState {
        let mut k = self.clone();
        for seg in [
            &mut k.sregs.cs,
            &mut k.sregs.ds,
            &mut k.sregs.es,
            &mut k.sregs.fs,
            &mut k.sregs.gs,
            &mut k.sregs.ss,
            &mut k.sregs.tr,
            &mut k.sregs.ldt,
        ] {
            seg.padding = 0;
        }
        k.sregs.gdt.padding = [0; 3];
        k.sregs.idt.padding = [0; 3];
        k.fpu.pad1 = 0;
        k.fpu.pad2 = 0;
        if let Some(x) = k.xcrs.as_mut() {
            x.padding = [0; 16];
            let used = usize::try_from(x.nr_xcrs).unwrap_or(usize::MAX);
            for (i, xcr) in x.xcrs.iter_mut().enumerate() {
                if i < used {
                    xcr.reserved = 0;
                } else {
                    *xcr = kvm_xcr::default();
                }
            }
        }
        k.debugregs.reserved = [0; 9];
        for m in &mut k.msrs {
            m.reserved = 0;
        }
        k.events.nmi.pad = 0;
        k.events.reserved = [0; 26];
        k
    }

    /// MSR entries (data zero) for `KVM_GET_MSRS`: the [`SAVED_MSRS`] that `supported` (from
    /// `KVM_GET_MSR_INDEX_LIST`) contains, in ascending order.
    pub fn msr_query(supported: &[u32]) -> Vec<kvm_msr_entry> {
        SAVED_MSRS
            .iter()
            .filter(|i| supported.contains(i))
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect()
    }
}

/// A KVM byte that must be a boolean.
fn flag(field: &str, value: u8) -> Result<bool, StateError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StateError::NotAFlag {
            field: field.to_string(),
            value,
        }),
    }
}

/// `kvm_segment` to [`Segment`]; `name` labels errors.
fn segment_from_kvm(name: &str, s: &kvm_segment) -> Result<Segment, StateError> {
    let f = |field: &str, v: u8| flag(&format!("sregs.{name}.{field}"), v);
    Ok(Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        type_: s.type_,
        s: f("s", s.s)?,
        dpl: s.dpl,
        present: f("present", s.present)?,
        avl: f("avl", s.avl)?,
        l: f("l", s.l)?,
        db: f("db", s.db)?,
        g: f("g", s.g)?,
        unusable: f("unusable", s.unusable)?,
    })
}

/// [`Segment`] to `kvm_segment`.
fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

/// `kvm_dtable` to [`DescriptorTable`].
fn dtable_from_kvm(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

/// [`DescriptorTable`] to `kvm_dtable`.
fn dtable_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

/// The single vector set in `interrupt_bitmap`, if any.
fn bitmap_vector(bitmap: &[u64; 4]) -> Result<Option<u8>, StateError> {
    let count: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
    if count > 1 {
        return Err(StateError::InterruptBitmap(count));
    }
    for (word, &bits) in (0u8..).zip(bitmap.iter()) {
        if bits != 0 {
            // trailing_zeros < 64, word < 4: the vector fits in a u8.
            return Ok(Some(word * 64 + bits.trailing_zeros() as u8));
        }
    }
    Ok(None)
}

/// `interrupt_bitmap` with only `vector` set (KVM's form of a pending external interrupt).
fn bitmap_of(vector: Option<u8>) -> [u64; 4] {
    let mut bitmap = [0u64; 4];
    if let Some(v) = vector {
        if let Some(word) = bitmap.get_mut(usize::from(v / 64)) {
            *word = 1 << (v % 64);
        }
    }
    bitmap
}

/// The 4 KiB XSAVE buffer as bytes (little-endian, as the CPU lays it out).
fn xsave_bytes(x: &kvm_xsave) -> [u8; XSAVE_BYTES] {
    let mut b = [0u8; XSAVE_BYTES];
    for (chunk, word) in b.chunks_exact_mut(4).zip(x.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    b
}

/// A `kvm_xsave` holding `b`.
fn xsave_from_bytes(b: &[u8; XSAVE_BYTES]) -> kvm_xsave {
    let mut x = kvm_xsave::default();
    for (word, chunk) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    x
}

/// Little-endian readers/writers over the fixed-size XSAVE image (offsets are constants).
fn rd<const N: usize>(b: &[u8; XSAVE_BYTES], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(off..off + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Writes `v` at `off` in the XSAVE image.
fn wr(b: &mut [u8; XSAVE_BYTES], off: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(off..off + v.len()) {
        dst.copy_from_slice(v);
    }
}

/// XSTATE_BV bits for the components of `f` that are not in their init state.
///
/// KVM writes init values for components whose bit is clear, so these bits are already set in
/// anything KVM reports; a state built by the translator may lack them. MXCSR is loaded with SSE
/// or AVX, so a non-default MXCSR implies SSE only when neither bit is set.
fn implied_xstate_bv(f: &FpuState) -> u64 {
    let mut bv = 0;
    let x87_init = f.fcw == FCW_DEFAULT
        && f.fsw == 0
        && f.ftw == 0
        && f.fop == 0
        && f.fip == 0
        && f.fdp == 0
        && f.st == [[0; 16]; 8];
    if !x87_init {
        bv |= XFEATURE_FP;
    }
    let sse_loaded = f.xstate_bv & (XFEATURE_SSE | XFEATURE_YMM) != 0;
    if f.xmm != [[0; 16]; 16] || (f.mxcsr != MXCSR_DEFAULT && !sse_loaded) {
        bv |= XFEATURE_SSE;
    }
    if f.ymm_hi != [[0; 16]; 16] {
        bv |= XFEATURE_YMM;
    }
    bv
}

/// `view` with the x87/SSE fields of XSAVE components in their init state (XSTATE_BV bit clear),
/// and MXCSR, taken from `stale`: what `KVM_GET_FPU` shows there is the raw buffer, not the init
/// values, and it leaves MXCSR out altogether.
fn merge_stale_fpu(view: &FpuState, stale: &FpuState) -> FpuState {
    let bv = view.xstate_bv;
    let mut f = view.clone();
    if bv & XFEATURE_FP == 0 {
        f.st = stale.st;
        f.fcw = stale.fcw;
        f.fsw = stale.fsw;
        f.ftw = stale.ftw;
        f.fop = stale.fop;
        f.fip = stale.fip;
        f.fdp = stale.fdp;
    }
    if bv & XFEATURE_SSE == 0 {
        f.xmm = stale.xmm;
    }
    // KVM_GET_FPU never fills in MXCSR (it reports 0); only the XSAVE image has the real one.
    f.mxcsr = stale.mxcsr;
    f
}

/// What [`KvmExtras::stale_fpu`] keeps of KVM's `kvm_fpu` given the XSAVE view `view`.
fn stale_fpu_from_kvm(view: &FpuState, k: &kvm_fpu) -> Option<FpuState> {
    let reported = FpuState {
        ymm_hi: view.ymm_hi,
        xstate_bv: view.xstate_bv,
        ..fpu_from_kvm(k)
    };
    let merged = merge_stale_fpu(view, &reported);
    if merged != reported {
        log::warn!("KVM_GET_FPU disagrees with KVM_GET_XSAVE on live state; XSAVE wins");
    }
    (merged != *view).then_some(merged)
}

/// `kvm_fpu` to [`FpuState`] (no AVX halves; XSTATE_BV names the non-init components).
fn fpu_from_kvm(k: &kvm_fpu) -> FpuState {
    let mut f = FpuState {
        st: k.fpr,
        fcw: k.fcw,
        fsw: k.fsw,
        ftw: k.ftwx,
        fop: k.last_opcode,
        fip: k.last_ip,
        fdp: k.last_dp,
        xmm: k.xmm,
        ymm_hi: [[0; 16]; 16],
        mxcsr: k.mxcsr,
        xstate_bv: 0,
    };
    f.xstate_bv = implied_xstate_bv(&f);
    f
}

/// [`FpuState`] to `kvm_fpu`.
fn fpu_to_kvm(f: &FpuState) -> kvm_fpu {
    kvm_fpu {
        fpr: f.st,
        fcw: f.fcw,
        fsw: f.fsw,
        ftwx: f.ftw,
        pad1: 0,
        last_opcode: f.fop,
        last_ip: f.fip,
        last_dp: f.fdp,
        xmm: f.xmm,
        mxcsr: f.mxcsr,
        pad2: 0,
    }
}

/// The XSAVE image to [`FpuState`] plus the unmodeled remainder (empty when all zero).
fn fpu_from_xsave(b: &[u8; XSAVE_BYTES]) -> (FpuState, Vec<u8>) {
    let mut f = FpuState {
        fcw: u16::from_le_bytes(rd(b, xoff::FCW)),
        fsw: u16::from_le_bytes(rd(b, xoff::FSW)),
        ftw: rd::<1>(b, xoff::FTW)[0],
        fop: u16::from_le_bytes(rd(b, xoff::FOP)),
        fip: u64::from_le_bytes(rd(b, xoff::FIP)),
        fdp: u64::from_le_bytes(rd(b, xoff::FDP)),
        mxcsr: u32::from_le_bytes(rd(b, xoff::MXCSR)),
        xstate_bv: u64::from_le_bytes(rd(b, xoff::XSTATE_BV)),
        ..FpuState::default()
    };
    for (i, st) in f.st.iter_mut().enumerate() {
        *st = rd(b, xoff::ST + 16 * i);
    }
    for (i, xmm) in f.xmm.iter_mut().enumerate() {
        *xmm = rd(b, xoff::XMM + 16 * i);
    }
    for (i, hi) in f.ymm_hi.iter_mut().enumerate() {
        *hi = rd(b, xoff::YMM_HI + 16 * i);
    }
    let mut rest = b.to_vec();
    for (start, end) in xoff::MODELED {
        if let Some(r) = rest.get_mut(start..end) {
            r.fill(0);
        }
    }
    if rest.iter().all(|&x| x == 0) {
        rest.clear();
    }
    (f, rest)
}

/// [`FpuState`] laid over the unmodeled remainder `rest` as an XSAVE image.
fn fpu_to_xsave(f: &FpuState, rest: &[u8]) -> [u8; XSAVE_BYTES] {
    let mut b = [0u8; XSAVE_BYTES];
    let n = rest.len().min(XSAVE_BYTES);
    b[..n].copy_from_slice(&rest[..n]);
    wr(&mut b, xoff::FCW, &f.fcw.to_le_bytes());
    wr(&mut b, xoff::FSW, &f.fsw.to_le_bytes());
    wr(&mut b, xoff::FTW, &[f.ftw]);
    wr(&mut b, xoff::FOP, &f.fop.to_le_bytes());
    wr(&mut b, xoff::FIP, &f.fip.to_le_bytes());
    wr(&mut b, xoff::FDP, &f.fdp.to_le_bytes());
    wr(&mut b, xoff::MXCSR, &f.mxcsr.to_le_bytes());
    for (i, st) in f.st.iter().enumerate() {
        wr(&mut b, xoff::ST + 16 * i, st);
    }
    for (i, xmm) in f.xmm.iter().enumerate() {
        wr(&mut b, xoff::XMM + 16 * i, xmm);
    }
    for (i, hi) in f.ymm_hi.iter().enumerate() {
        wr(&mut b, xoff::YMM_HI + 16 * i, hi);
    }
    let bv = f.xstate_bv | implied_xstate_bv(f);
    wr(&mut b, xoff::XSTATE_BV, &bv.to_le_bytes());
    b
}

/// `kvm_vcpu_events` (with the sregs interrupt bitmap) to [`PendingEvents`] and the extras.
fn events_from_kvm(
    e: &kvm_vcpu_events,
    bitmap: &[u64; 4],
    x: &mut KvmExtras,
) -> Result<PendingEvents, StateError> {
    x.event_flags = e.flags;
    let payload_valid = e.flags & KVM_VCPUEVENT_VALID_PAYLOAD != 0;

    let injected = flag("events.exception.injected", e.exception.injected)?;
    let pending = flag("events.exception.pending", e.exception.pending)?;
    let has_error_code = flag(
        "events.exception.has_error_code",
        e.exception.has_error_code,
    )?;
    // Without the payload capability KVM reports a pending exception as injected too.
    let (active, exception_injected) = match (injected, pending, payload_valid) {
        (false, false, _) => (false, false),
        (true, false, _) => (true, true),
        (false, true, true) | (true, true, false) => (true, false),
        _ => {
            return Err(StateError::ExceptionState {
                injected,
                pending,
                flags: e.flags,
            })
        }
    };
    let exception = active.then_some((
        e.exception.nr,
        has_error_code.then_some(e.exception.error_code),
    ));
    x.stale_exception_nr = if active { 0 } else { e.exception.nr };
    x.stale_exception_has_error_code = !active && has_error_code;
    x.stale_exception_error_code = if active && has_error_code {
        0
    } else {
        e.exception.error_code
    };
    x.exception_has_payload = e.exception_has_payload;
    x.exception_payload = e.exception_payload;

    let int_injected = flag("events.interrupt.injected", e.interrupt.injected)?;
    let soft = flag("events.interrupt.soft", e.interrupt.soft)?;
    // KVM lists an injected hardware interrupt in the bitmap too, never a software one.
    let in_bitmap = bitmap_vector(bitmap)?;
    let expected = (int_injected && !soft).then_some(e.interrupt.nr);
    if in_bitmap != expected {
        return Err(StateError::InterruptMismatch {
            bitmap: in_bitmap,
            injected: int_injected,
            nr: e.interrupt.nr,
            soft,
        });
    }
    x.stale_interrupt_nr = if int_injected { 0 } else { e.interrupt.nr };

    Ok(PendingEvents {
        exception,
        exception_injected,
        interrupt: int_injected.then_some(e.interrupt.nr),
        interrupt_soft: soft,
        interrupt_shadow: e.interrupt.shadow,
        nmi_injected: flag("events.nmi.injected", e.nmi.injected)?,
        nmi_pending: flag("events.nmi.pending", e.nmi.pending)?,
        nmi_masked: flag("events.nmi.masked", e.nmi.masked)?,
        sipi_vector: e.sipi_vector,
        smm: e.smi.smm,
        smi_flags: [e.smi.pending, e.smi.smm_inside_nmi, e.smi.latched_init],
        triple_fault_pending: flag("events.triple_fault.pending", e.triple_fault.pending)?,
    })
}

/// [`PendingEvents`] and the extras to `kvm_vcpu_events`.
fn events_to_kvm(p: &PendingEvents, x: &KvmExtras) -> kvm_vcpu_events {
    let mut e = kvm_vcpu_events {
        flags: x.event_flags,
        sipi_vector: p.sipi_vector,
        exception_has_payload: x.exception_has_payload,
        exception_payload: x.exception_payload,
        ..Default::default()
    };
    match p.exception {
        Some((nr, error_code)) => {
            let payload_valid = x.event_flags & KVM_VCPUEVENT_VALID_PAYLOAD != 0;
            e.exception.nr = nr;
            e.exception.has_error_code = u8::from(error_code.is_some());
            e.exception.error_code = error_code.unwrap_or(x.stale_exception_error_code);
            e.exception.injected = u8::from(p.exception_injected || !payload_valid);
            e.exception.pending = u8::from(!p.exception_injected);
        }
        None => {
            e.exception.nr = x.stale_exception_nr;
            e.exception.has_error_code = u8::from(x.stale_exception_has_error_code);
            e.exception.error_code = x.stale_exception_error_code;
        }
    }
    e.interrupt.injected = u8::from(p.interrupt.is_some());
    e.interrupt.nr = p.interrupt.unwrap_or(x.stale_interrupt_nr);
    e.interrupt.soft = u8::from(p.interrupt_soft);
    e.interrupt.shadow = p.interrupt_shadow;
    e.nmi.injected = u8::from(p.nmi_injected);
    e.nmi.pending = u8::from(p.nmi_pending);
    e.nmi.masked = u8::from(p.nmi_masked);
    e.smi.smm = p.smm;
    [e.smi.pending, e.smi.smm_inside_nmi, e.smi.latched_init] = p.smi_flags;
    e.triple_fault.pending = u8::from(p.triple_fault_pending);
    e
}

impl CpuState {
    /// Converts what KVM reported for a vCPU; fails only on input KVM never produces.
    pub fn from_kvm(k: &KvmVcpuState) -> Result<Self, StateError> {
        let r = &k.regs;
        let s = &k.sregs;
        let mut extras = KvmExtras::default();

        let fpu = match &k.xsave {
            Some(x) => {
                let (fpu, rest) = fpu_from_xsave(&xsave_bytes(x));
                extras.xsave_rest = rest;
                extras.stale_fpu = stale_fpu_from_kvm(&fpu, &k.fpu);
                fpu
            }
            None => fpu_from_kvm(&k.fpu),
        };
        extras.xsave_absent = k.xsave.is_none();

        let xcr0 = match &k.xcrs {
            None => {
                extras.xcrs = XcrsForm::Unavailable;
                1
            }
            Some(x) if x.flags != 0 => return Err(StateError::XcrsFlags(x.flags)),
            Some(x) => match (x.nr_xcrs, x.xcrs.first()) {
                (0, _) => {
                    extras.xcrs = XcrsForm::Empty;
                    1
                }
                (1, Some(xcr)) if xcr.xcr == XCR0_INDEX => xcr.value,
                (count, first) => {
                    return Err(StateError::Xcrs {
                        count,
                        index: first.map_or(0, |f| f.xcr),
                    })
                }
            },
        };

        if k.debugregs.flags != 0 {
            return Err(StateError::DebugRegsFlags(k.debugregs.flags));
        }

        let mut msrs: Vec<(u32, u64)> = Vec::with_capacity(k.msrs.len());
        for m in &k.msrs {
            if SREGS_MSRS.contains(&m.index) {
                return Err(StateError::SregsMsr(m.index));
            }
            msrs.push((m.index, m.data));
        }
        msrs.sort_unstable_by_key(|&(i, _)| i);
        if let Some(w) = msrs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(StateError::DuplicateMsr(w[0].0));
        }

        let events = events_from_kvm(&k.events, &s.interrupt_bitmap, &mut extras)?;

        let halted = match k.mp_state.mp_state {
            KVM_MP_STATE_RUNNABLE => false,
            KVM_MP_STATE_HALTED => true,
            other => {
                extras.mp_state = Some(other);
                false
            }
        };

        Ok(CpuState {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            es: segment_from_kvm("es", &s.es)?,
            cs: segment_from_kvm("cs", &s.cs)?,
            ss: segment_from_kvm("ss", &s.ss)?,
            ds: segment_from_kvm("ds", &s.ds)?,
            fs: segment_from_kvm("fs", &s.fs)?,
            gs: segment_from_kvm("gs", &s.gs)?,
            ldtr: segment_from_kvm("ldt", &s.ldt)?,
            tr: segment_from_kvm("tr", &s.tr)?,
            gdtr: dtable_from_kvm(&s.gdt),
            idtr: dtable_from_kvm(&s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            dr: k.debugregs.db,
            dr6: k.debugregs.dr6,
            dr7: k.debugregs.dr7,
            xcr0,
            fpu,
            msrs,
            events,
            halted,
            kvm_extras: extras,
        })
    }

    /// The KVM structures for this state; `fpu` and `xsave` (when present) agree.
    pub fn to_kvm(&self) -> KvmVcpuState {
        let g = &self.gpr;
        let x = &self.kvm_extras;
        let regs = kvm_regs {
            rax: g[super::reg::RAX],
            rbx: g[super::reg::RBX],
            rcx: g[super::reg::RCX],
            rdx: g[super::reg::RDX],
            rsi: g[super::reg::RSI],
            rdi: g[super::reg::RDI],
            rsp: g[super::reg::RSP],
            rbp: g[super::reg::RBP],
            r8: g[super::reg::R8],
            r9: g[super::reg::R9],
            r10: g[super::reg::R10],
            r11: g[super::reg::R11],
            r12: g[super::reg::R12],
            r13: g[super::reg::R13],
            r14: g[super::reg::R14],
            r15: g[super::reg::R15],
            rip: self.rip,
            rflags: self.rflags,
        };
        let hardware_interrupt = self
            .events
            .interrupt
            .filter(|_| !self.events.interrupt_soft);
        let sregs = kvm_sregs {
            cs: segment_to_kvm(&self.cs),
            ds: segment_to_kvm(&self.ds),
            es: segment_to_kvm(&self.es),
            fs: segment_to_kvm(&self.fs),
            gs: segment_to_kvm(&self.gs),
            ss: segment_to_kvm(&self.ss),
            tr: segment_to_kvm(&self.tr),
            ldt: segment_to_kvm(&self.ldtr),
            gdt: dtable_to_kvm(&self.gdtr),
            idt: dtable_to_kvm(&self.idtr),
            cr0: self.cr0,
            cr2: self.cr2,
            cr3: self.cr3,
            cr4: self.cr4,
            cr8: self.cr8,
            efer: self.efer,
            apic_base: self.apic_base,
            interrupt_bitmap: bitmap_of(hardware_interrupt),
        };
        let (fpu, xsave) = if x.xsave_absent {
            (fpu_to_kvm(&self.fpu), None)
        } else {
            let image = fpu_to_xsave(&self.fpu, &x.xsave_rest);
            // Re-read so `fpu` carries exactly what the XSAVE image says (XSTATE_BV included).
            let (view, _) = fpu_from_xsave(&image);
            let fpu = match &x.stale_fpu {
                Some(stale) => merge_stale_fpu(&view, stale),
                None => view,
            };
            (fpu_to_kvm(&fpu), Some(xsave_from_bytes(&image)))
        };
        let xcrs = match x.xcrs {
            XcrsForm::Unavailable => None,
            XcrsForm::Empty => Some(kvm_xcrs::default()),
            XcrsForm::Xcr0 => {
                let mut xcrs = kvm_xcrs {
                    nr_xcrs: 1,
                    ..Default::default()
                };
                xcrs.xcrs[0] = kvm_xcr {
                    xcr: XCR0_INDEX,
                    reserved: 0,
                    value: self.xcr0,
                };
                Some(xcrs)
            }
        };
        let debugregs = kvm_debugregs {
            db: self.dr,
            dr6: self.dr6,
            dr7: self.dr7,
            ..Default::default()
        };
        let mp_state = kvm_mp_state {
            mp_state: match x.mp_state {
                Some(raw) => raw,
                None if self.halted => KVM_MP_STATE_HALTED,
                None => KVM_MP_STATE_RUNNABLE,
            },
        };
        KvmVcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debugregs,
            msrs: self.saved_msr_entries(),
            events: events_to_kvm(&self.events, x),
            mp_state,
        }
    }

    /// The MSR list for `vcpu.set_msrs(&Msrs::from_entries(..))`, ascending by index. EFER,
    /// APIC_BASE and FS/GS base travel in `kvm_sregs` and are left out.
    pub fn saved_msr_entries(&self) -> Vec<kvm_msr_entry> {
        self.msrs
            .iter()
            .filter(|(index, _)| {
                let in_sregs = SREGS_MSRS.contains(index);
                if in_sregs {
                    log::warn!("MSR {index:#x} in CpuState::msrs is shadowed by kvm_sregs");
                }
                !in_sregs
            })
            .map(|&(index, data)| kvm_msr_entry {
                index,
                reserved: 0,
                data,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{
        KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_SUSPENDED, KVM_VCPUEVENT_VALID_TRIPLE_FAULT,
    };

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn u8(&mut self) -> u8 {
            self.next() as u8
        }
        fn u16(&mut self) -> u16 {
            self.next() as u16
        }
        fn u32(&mut self) -> u32 {
            self.next() as u32
        }
        fn bit(&mut self) -> bool {
            self.next() & 1 != 0
        }
        fn bool8(&mut self) -> u8 {
            u8::from(self.bit())
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut b = [0u8; N];
            b.iter_mut().for_each(|x| *x = self.u8());
            b
        }
    }

    fn kvm_segment_random(r: &mut Rng) -> kvm_segment {
        kvm_segment {
            base: r.next(),
            limit: r.u32(),
            selector: r.u16(),
            type_: r.u8(),
            present: r.bool8(),
            dpl: r.u8(),
            db: r.bool8(),
            s: r.bool8(),
            l: r.bool8(),
            g: r.bool8(),
            avl: r.bool8(),
            unusable: r.bool8(),
            padding: r.u8(), // ignored by equality: proves padding is excluded
        }
    }

    /// A random XSAVE image as KVM reports it: components whose XSTATE_BV bit is clear hold their
    /// init values (MXCSR is loaded with SSE or AVX).
    fn kvm_xsave_random(r: &mut Rng) -> [u8; XSAVE_BYTES] {
        let mut b = [0u8; XSAVE_BYTES];
        b.iter_mut().for_each(|x| *x = r.u8());
        let bv = r.next() & !0x7 | r.below(8);
        wr(&mut b, xoff::XSTATE_BV, &bv.to_le_bytes());
        if bv & XFEATURE_FP == 0 {
            wr(&mut b, xoff::FCW, &FCW_DEFAULT.to_le_bytes());
            wr(&mut b, xoff::FSW, &[0; 2]);
            wr(&mut b, xoff::FTW, &[0]);
            wr(&mut b, xoff::FOP, &[0; 18]);
            wr(&mut b, xoff::ST, &[0; 128]);
        }
        if bv & XFEATURE_SSE == 0 {
            wr(&mut b, xoff::XMM, &[0; 256]);
            if bv & XFEATURE_YMM == 0 {
                wr(&mut b, xoff::MXCSR, &MXCSR_DEFAULT.to_le_bytes());
            }
        }
        if bv & XFEATURE_YMM == 0 {
            wr(&mut b, xoff::YMM_HI, &[0; 256]);
        }
        b
    }

    /// A random state of the kind KVM reports (flags 0/1, one consistent pending interrupt...).
    fn kvm_state_random(r: &mut Rng) -> KvmVcpuState {
        let mut regs = kvm_regs::default();
        for v in [
            &mut regs.rax,
            &mut regs.rbx,
            &mut regs.rcx,
            &mut regs.rdx,
            &mut regs.rsi,
            &mut regs.rdi,
            &mut regs.rsp,
            &mut regs.rbp,
            &mut regs.r8,
            &mut regs.r9,
            &mut regs.r10,
            &mut regs.r11,
            &mut regs.r12,
            &mut regs.r13,
            &mut regs.r14,
            &mut regs.r15,
            &mut regs.rip,
            &mut regs.rflags,
        ] {
            *v = r.next();
        }
        let dtable = |r: &mut Rng| kvm_dtable {
            base: r.next(),
            limit: r.u16(),
            padding: [r.u16(), r.u16(), r.u16()],
        };

        let mut flags =
            KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
        for optional in [
            KVM_VCPUEVENT_VALID_PAYLOAD,
            KVM_VCPUEVENT_VALID_TRIPLE_FAULT,
            KVM_VCPUEVENT_VALID_SIPI_VECTOR,
        ] {
            if r.bit() {
                flags |= optional;
            }
        }
        let payload_valid = flags & KVM_VCPUEVENT_VALID_PAYLOAD != 0;
        let mut events = kvm_vcpu_events {
            flags,
            sipi_vector: r.u32(),
            exception_has_payload: r.bool8(),
            exception_payload: r.next(),
            reserved: r.bytes(),
            ..Default::default()
        };
        let (injected, pending) = match (r.below(3), payload_valid) {
            (0, _) => (0, 0),
            (1, _) => (1, 0),
            (_, true) => (0, 1),
            (_, false) => (1, 1),
        };
        events.exception.injected = injected;
        events.exception.pending = pending;
        events.exception.nr = r.u8();
        events.exception.has_error_code = r.bool8();
        events.exception.error_code = r.u32();
        events.interrupt.injected = r.bool8();
        events.interrupt.nr = r.u8();
        events.interrupt.soft = r.bool8();
        events.interrupt.shadow = r.u8();
        events.nmi.injected = r.bool8();
        events.nmi.pending = r.bool8();
        events.nmi.masked = r.bool8();
        events.nmi.pad = r.u8();
        events.smi.smm = r.u8();
        events.smi.pending = r.u8();
        events.smi.smm_inside_nmi = r.u8();
        events.smi.latched_init = r.u8();
        events.triple_fault.pending = r.bool8();
        let bitmap = bitmap_of(
            (events.interrupt.injected == 1 && events.interrupt.soft == 0)
                .then_some(events.interrupt.nr),
        );

        let mut sregs = kvm_sregs {
            cs: kvm_segment_random(r),
            ds: kvm_segment_random(r),
            es: kvm_segment_random(r),
            fs: kvm_segment_random(r),
            gs: kvm_segment_random(r),
            ss: kvm_segment_random(r),
            tr: kvm_segment_random(r),
            ldt: kvm_segment_random(r),
            gdt: dtable(r),
            idt: dtable(r),
            interrupt_bitmap: bitmap,
            ..Default::default()
        };
        for v in [
            &mut sregs.cr0,
            &mut sregs.cr2,
            &mut sregs.cr3,
            &mut sregs.cr4,
            &mut sregs.cr8,
            &mut sregs.efer,
            &mut sregs.apic_base,
        ] {
            *v = r.next();
        }

        let (fpu, xsave) = if r.below(4) == 0 {
            let fpu = kvm_fpu {
                fpr: std::array::from_fn(|_| r.bytes()),
                fcw: r.u16(),
                fsw: r.u16(),
                ftwx: r.u8(),
                pad1: r.u8(),
                last_opcode: r.u16(),
                last_ip: r.next(),
                last_dp: r.next(),
                xmm: std::array::from_fn(|_| r.bytes()),
                mxcsr: r.u32(),
                pad2: r.u32(),
            };
            (fpu, None)
        } else {
            let image = kvm_xsave_random(r);
            let view = fpu_from_xsave(&image).0;
            // KVM_GET_FPU shows stale buffer contents for components in their init state.
            let stale = FpuState {
                st: std::array::from_fn(|_| r.bytes()),
                fcw: r.u16(),
                fip: r.next(),
                xmm: std::array::from_fn(|_| r.bytes()),
                mxcsr: r.u32(),
                ..FpuState::default()
            };
            let mut fpu = fpu_to_kvm(&merge_stale_fpu(&view, &stale));
            fpu.pad1 = r.u8();
            (fpu, Some(xsave_from_bytes(&image)))
        };

        let xcrs = match r.below(3) {
            0 => None,
            1 => Some(kvm_xcrs::default()),
            _ => {
                let mut x = kvm_xcrs {
                    nr_xcrs: 1,
                    padding: [r.next(); 16],
                    ..Default::default()
                };
                x.xcrs[0].value = r.next();
                x.xcrs[0].reserved = r.u32();
                Some(x)
            }
        };

        let mut msrs = Vec::new();
        for &index in SAVED_MSRS
            .iter()
            .chain([0x3a, 0x8b, 0x1d9, 0xc001_0015].iter())
        {
            if r.below(4) != 0 {
                msrs.push(kvm_msr_entry {
                    index,
                    reserved: r.u32(),
                    data: r.next(),
                });
            }
        }
        msrs.sort_by_key(|m| m.index);

        KvmVcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debugregs: kvm_debugregs {
                db: [r.next(), r.next(), r.next(), r.next()],
                dr6: r.next(),
                dr7: r.next(),
                flags: 0,
                reserved: [r.next(); 9],
            },
            msrs,
            events,
            mp_state: kvm_mp_state {
                mp_state: r.below(u64::from(KVM_MP_STATE_SUSPENDED) + 1) as u32,
            },
        }
    }

    fn segment_random(r: &mut Rng) -> Segment {
        Segment {
            selector: r.u16(),
            base: r.next(),
            limit: r.u32(),
            type_: r.u8(),
            s: r.bit(),
            dpl: r.u8(),
            present: r.bit(),
            avl: r.bit(),
            l: r.bit(),
            db: r.bit(),
            g: r.bit(),
            unusable: r.bit(),
        }
    }

    /// A random architectural state with default (non-KVM) extras.
    fn cpu_state_random(r: &mut Rng) -> CpuState {
        let mut fpu = FpuState {
            st: std::array::from_fn(|_| r.bytes()),
            fcw: r.u16(),
            fsw: r.u16(),
            ftw: r.u8(),
            fop: r.u16(),
            fip: r.next(),
            fdp: r.next(),
            xmm: std::array::from_fn(|_| r.bytes()),
            ymm_hi: std::array::from_fn(|_| r.bytes()),
            mxcsr: r.u32(),
            xstate_bv: r.next(),
        };
        // The translator keeps XSTATE_BV covering every component it has written.
        fpu.xstate_bv |= implied_xstate_bv(&fpu);
        let exception = r.bit().then(|| (r.u8(), r.bit().then(|| r.u32())));
        let mut msrs = Vec::new();
        for &i in SAVED_MSRS {
            if r.bit() {
                msrs.push((i, r.next()));
            }
        }
        msrs.sort_unstable();
        CpuState {
            gpr: std::array::from_fn(|_| r.next()),
            rip: r.next(),
            rflags: r.next(),
            es: segment_random(r),
            cs: segment_random(r),
            ss: segment_random(r),
            ds: segment_random(r),
            fs: segment_random(r),
            gs: segment_random(r),
            ldtr: segment_random(r),
            tr: segment_random(r),
            gdtr: DescriptorTable {
                base: r.next(),
                limit: r.u16(),
            },
            idtr: DescriptorTable {
                base: r.next(),
                limit: r.u16(),
            },
            cr0: r.next(),
            cr2: r.next(),
            cr3: r.next(),
            cr4: r.next(),
            cr8: r.next(),
            efer: r.next(),
            apic_base: r.next(),
            dr: std::array::from_fn(|_| r.next()),
            dr6: r.next(),
            dr7: r.next(),
            xcr0: r.next(),
            fpu,
            msrs,
            events: PendingEvents {
                exception,
                exception_injected: exception.is_some() && r.bit(),
                interrupt: r.bit().then(|| r.u8()),
                interrupt_soft: r.bit(),
                interrupt_shadow: r.u8(),
                nmi_injected: r.bit(),
                nmi_pending: r.bit(),
                nmi_masked: r.bit(),
                sipi_vector: r.u32(),
                smm: r.u8(),
                smi_flags: r.bytes(),
                triple_fault_pending: r.bit(),
            },
            halted: r.bit(),
            kvm_extras: KvmExtras::default(),
        }
    }

    #[test]
    fn every_kvm_state_survives_the_round_trip() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..3000 {
            let k = kvm_state_random(&mut r);
            let s = CpuState::from_kvm(&k).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let back = s.to_kvm();
            assert!(back == k, "case {i}:\n{k:#?}\n!=\n{back:#?}");
            // And the state read back is a fixed point.
            assert_eq!(CpuState::from_kvm(&back), Ok(s), "case {i}");
        }
    }

    #[test]
    fn every_cpu_state_survives_the_round_trip() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        for i in 0..3000 {
            let mut s = cpu_state_random(&mut r);
            // Half the cases use extras as KVM left them, including the payload flag.
            if r.bit() {
                s.kvm_extras.event_flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
                s.kvm_extras.exception_has_payload = 1;
                s.kvm_extras.exception_payload = r.next();
                s.kvm_extras.xsave_rest = vec![0; XSAVE_BYTES];
                s.kvm_extras.xsave_rest[28] = 0xff; // MXCSR_MASK
                s.kvm_extras.xsave_rest[3000] = 0x5a; // a component past AVX
                if s.events.exception.is_none() {
                    s.kvm_extras.stale_exception_nr = r.u8();
                    s.kvm_extras.stale_exception_has_error_code = r.bit();
                }
                if !matches!(s.events.exception, Some((_, Some(_)))) {
                    s.kvm_extras.stale_exception_error_code = r.u32();
                }
                if s.events.interrupt.is_none() {
                    s.kvm_extras.stale_interrupt_nr = r.u8();
                }
                if !s.halted {
                    s.kvm_extras.mp_state = Some(KVM_MP_STATE_INIT_RECEIVED);
                }
            }
            let back = CpuState::from_kvm(&s.to_kvm()).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(back, s, "case {i}");
        }
    }

    #[test]
    fn fpu_only_and_xcr_less_hosts_round_trip() {
        let mut s = CpuState::default();
        s.kvm_extras.xsave_absent = true;
        s.kvm_extras.xcrs = XcrsForm::Unavailable;
        s.fpu.xmm[3] = [7; 16];
        s.fpu.xstate_bv = XFEATURE_SSE;
        let k = s.to_kvm();
        assert!(k.xsave.is_none() && k.xcrs.is_none());
        assert_eq!(k.fpu.xmm[3], [7; 16]);
        assert_eq!(CpuState::from_kvm(&k), Ok(s));
    }

    #[test]
    fn layouts_match_the_sdm() {
        let mut s = CpuState::default();
        s.gpr[super::super::reg::RCX] = 0x1111;
        s.fpu.fcw = 0x027f;
        s.fpu.mxcsr = 0x1fa0;
        s.fpu.xmm[0] = [0xaa; 16];
        s.fpu.xmm[15] = [0xbb; 16];
        s.fpu.ymm_hi[1] = [0xcc; 16];
        s.fpu.st[7] = [0xdd; 16];
        s.events.interrupt = Some(0x41);
        let k = s.to_kvm();
        assert_eq!(k.regs.rcx, 0x1111);
        let b = xsave_bytes(k.xsave.as_ref().expect("xsave by default"));
        assert_eq!(b[0..2], [0x7f, 0x02]);
        assert_eq!(b[24..28], 0x1fa0u32.to_le_bytes());
        assert_eq!(b[32 + 7 * 16], 0xdd);
        assert_eq!(b[160], 0xaa);
        assert_eq!(b[160 + 15 * 16 + 15], 0xbb);
        assert_eq!(b[576 + 16], 0xcc);
        // x87 (FCW not default), SSE and AVX are all live.
        assert_eq!(b[512..520], 7u64.to_le_bytes());
        assert_eq!(k.fpu.xmm[0], [0xaa; 16]);
        assert_eq!(k.fpu.fcw, 0x027f);
        // Vector 0x41 = word 1, bit 1; and the event says injected.
        assert_eq!(k.sregs.interrupt_bitmap, [0, 2, 0, 0]);
        assert_eq!(
            (k.events.interrupt.injected, k.events.interrupt.nr),
            (1, 0x41)
        );
        assert_eq!(
            k.events.flags,
            KVM_VCPUEVENT_VALID_NMI_PENDING
                | KVM_VCPUEVENT_VALID_SIPI_VECTOR
                | KVM_VCPUEVENT_VALID_SHADOW
                | KVM_VCPUEVENT_VALID_SMM
        );
        let xcrs = k.xcrs.expect("xcrs by default");
        assert_eq!(
            (xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value),
            (1, 0, 1)
        );
    }

    #[test]
    fn pending_exception_uses_kvm_abi_without_payload_capability() {
        let mut s = CpuState::default();
        s.events.exception = Some((14, Some(2)));
        s.events.exception_injected = false;
        let k = s.to_kvm();
        // Without KVM_VCPUEVENT_VALID_PAYLOAD, KVM's own form: injected and pending both set.
        assert_eq!(
            (k.events.exception.injected, k.events.exception.pending),
            (1, 1)
        );
        s.kvm_extras.event_flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
        let k = s.to_kvm();
        assert_eq!(
            (k.events.exception.injected, k.events.exception.pending),
            (0, 1)
        );
        assert_eq!(
            (
                k.events.exception.nr,
                k.events.exception.has_error_code,
                k.events.exception.error_code
            ),
            (14, 1, 2)
        );
    }

    #[test]
    fn impossible_kvm_states_are_errors() {
        let mut r = Rng(42);
        let good = kvm_state_random(&mut r);
        let check = |f: &dyn Fn(&mut KvmVcpuState), want: &dyn Fn(&StateError) -> bool| {
            let mut k = good.clone();
            f(&mut k);
            match CpuState::from_kvm(&k) {
                Err(e) => assert!(want(&e), "unexpected error {e}"),
                Ok(_) => panic!("accepted an impossible state"),
            }
        };
        check(&|k| k.sregs.interrupt_bitmap = [1, 0, 1 << 63, 0], &|e| {
            *e == StateError::InterruptBitmap(2)
        });
        check(
            &|k| {
                k.events.interrupt.injected = 0;
                k.sregs.interrupt_bitmap = [0, 0, 0, 1];
            },
            &|e| {
                matches!(
                    e,
                    StateError::InterruptMismatch {
                        bitmap: Some(192),
                        ..
                    }
                )
            },
        );
        check(
            &|k| {
                k.events.interrupt = Default::default();
                k.events.interrupt.injected = 1;
                k.events.interrupt.nr = 5;
                k.sregs.interrupt_bitmap = bitmap_of(Some(6));
            },
            &|e| matches!(e, StateError::InterruptMismatch { .. }),
        );
        check(
            &|k| k.sregs.tr.present = 2,
            &|e| matches!(e, StateError::NotAFlag { field, value: 2 } if field == "sregs.tr.present"),
        );
        check(&|k| k.events.nmi.masked = 0xff, &|e| {
            matches!(e, StateError::NotAFlag { .. })
        });
        check(
            &|k| {
                k.events.flags &= !KVM_VCPUEVENT_VALID_PAYLOAD;
                k.events.exception.injected = 0;
                k.events.exception.pending = 1;
            },
            &|e| matches!(e, StateError::ExceptionState { .. }),
        );
        check(
            &|k| {
                k.events.flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
                k.events.exception.injected = 1;
                k.events.exception.pending = 1;
            },
            &|e| matches!(e, StateError::ExceptionState { .. }),
        );
        check(
            &|k| {
                k.msrs = vec![
                    kvm_msr_entry {
                        index: msr::STAR,
                        ..Default::default()
                    },
                    kvm_msr_entry {
                        index: msr::STAR,
                        ..Default::default()
                    },
                ]
            },
            &|e| *e == StateError::DuplicateMsr(msr::STAR),
        );
        check(
            &|k| {
                k.msrs.push(kvm_msr_entry {
                    index: msr::EFER,
                    ..Default::default()
                })
            },
            &|e| *e == StateError::SregsMsr(msr::EFER),
        );
        check(&|k| k.debugregs.flags = 1, &|e| {
            *e == StateError::DebugRegsFlags(1)
        });
        check(
            &|k| {
                let mut x = kvm_xcrs {
                    nr_xcrs: 2,
                    ..Default::default()
                };
                x.xcrs[0].xcr = 0;
                x.xcrs[1].xcr = 1;
                k.xcrs = Some(x);
            },
            &|e| matches!(e, StateError::Xcrs { count: 2, .. }),
        );
        check(
            &|k| {
                k.xcrs = Some(kvm_xcrs {
                    flags: 1,
                    ..Default::default()
                })
            },
            &|e| *e == StateError::XcrsFlags(1),
        );
    }

    #[test]
    fn garbage_never_panics() {
        // Arbitrary bytes in every KVM field: from_kvm answers Ok or Err, never panics, and an
        // accepted state converts back without panicking.
        let mut r = Rng(7);
        for _ in 0..2000 {
            let mut k = kvm_state_random(&mut r);
            let e = &mut k.events;
            for b in [
                &mut e.exception.injected,
                &mut e.exception.pending,
                &mut e.exception.has_error_code,
                &mut e.interrupt.injected,
                &mut e.interrupt.soft,
                &mut e.nmi.pending,
            ] {
                if r.below(4) == 0 {
                    *b = r.u8();
                }
            }
            e.flags = r.u32();
            if r.bit() {
                k.sregs.interrupt_bitmap = [r.next(), r.next() & r.next(), 0, r.next()];
            }
            k.sregs.cs.l = r.u8() & 3;
            if let Some(x) = k.xcrs.as_mut() {
                x.nr_xcrs = r.u32() & 0x1f;
            }
            k.msrs.push(kvm_msr_entry {
                index: r.u32(),
                reserved: 0,
                data: r.next(),
            });
            if let Ok(s) = CpuState::from_kvm(&k) {
                let _ = s.to_kvm();
            }
        }
    }

    #[test]
    fn msr_query_keeps_only_supported_saved_msrs() {
        let q = KvmVcpuState::msr_query(&[msr::LSTAR, msr::TSC, 0x1234]);
        let idx: Vec<u32> = q.iter().map(|m| m.index).collect();
        assert_eq!(idx, vec![msr::TSC, msr::LSTAR]);
        assert!(SAVED_MSRS.windows(2).all(|w| w[0] < w[1]));
    }
}
