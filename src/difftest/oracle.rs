//! The hardware oracle: runs a [`Case`] natively at ring 3 in a KVM vCPU and captures the result.
//!
//! One VM and one vCPU serve every case, because creating them is slow. The guest is a fixed
//! long-mode setup written once into guest RAM: 4-level page tables (0-2 MiB supervisor, the
//! case's code page user read-only, its data region user read-write, nothing else), a GDT with
//! ring-0 and ring-3 64-bit and 32-bit code segments, a TSS whose RSP0 is a ring-0 stack, and an
//! IDT whose vectors 0-31 point at one `hlt` byte each.
//!
//! A case is entered by setting the ring-3 state directly (`KVM_SET_SREGS`/`KVM_SET_REGS`); no
//! guest ring-0 code runs to start it. It ends at its `int3` (a DPL-3 trap gate) or at an
//! exception; either way the CPU switches to the ring-0 stack, pushes the ring-3 RIP, CS, RFLAGS,
//! RSP and SS, and jumps to that vector's `hlt`. The VM has no in-kernel irqchip, so `hlt` is a
//! `KVM_EXIT_HLT` to us: one exit per case, no register clobbered (the GPRs are still the ring-3
//! values), and the halting RIP names the vector. The rest of the ring-3 state is read from the
//! exception frame. Why not `out`: KVM finishes a port write on the next `KVM_RUN` (possibly by
//! re-running its emulator), which would overwrite the state set for the next case.
//!
//! Under PVM (this project's `/dev/kvm`) ring-3 code runs natively on the host CPU, while guest
//! ring-0 code is emulated; the stubs are a single instruction, so a case costs one ring switch
//! and one exit.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use ringzero_translator::state::{rflags, DescriptorTable, FpuState, Segment};
use ringzero_translator::CpuState;

use super::{Case, DifftestError, Mode, Outcome, CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};
use crate::memory::GuestMemory;

/// Guest RAM of the oracle VM: the system area below 2 MiB and the user pages above.
const RAM_SIZE: u64 = 4 << 20;
/// PML4 (entry 0 → PDPT).
const PML4: u64 = 0x1000;
/// PDPT (entry 0 → PD).
const PDPT: u64 = 0x2000;
/// PD: entry 0 maps 0-2 MiB as one supervisor page, entry 1 → the user page table.
const PD: u64 = 0x3000;
/// Page table for 2-4 MiB: only the code page and the data region are present.
const USER_PT: u64 = 0x4000;
/// The GDT.
const GDT: u64 = 0x5000;
/// The IDT (vectors 0-31).
const IDT: u64 = 0x6000;
/// The 64-bit TSS.
const TSS: u64 = 0x7000;
/// Vector `v`'s handler is the `hlt` at `STUBS + v`.
const STUBS: u64 = 0x8000;
/// Top of the ring-0 stack (TSS.RSP0), where the CPU pushes the exception frame.
const RING0_STACK_TOP: u64 = 0x2_0000;
/// Number of IDT vectors with a handler (the CPU exceptions).
const VECTORS: u64 = 32;
/// Ring-0 64-bit code selector (the IDT gates' target).
const KERNEL_CS: u16 = 0x18;
/// TSS selector.
const TSS_SEL: u16 = 0x40;

/// Page-table entry bits.
const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;

/// Vectors whose exception frame carries an error code (SDM Vol. 3A, 6.13 and Table 6-1).
fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DifftestError {
    move |e| DifftestError::Kvm {
        op,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// A KVM vCPU set up to run cases at ring 3 in one mode, reused for every case.
pub struct Oracle {
    mode: Mode,
    vcpu: VcpuFd,
    /// Kept alive for the vCPU's sake (the VM owns the memory slot).
    _vm: VmFd,
    /// Declared after the VM so the mapping outlives the memory slot registered with it.
    mem: GuestMemory,
    /// Segment and control registers of the ring-3 entry state, set before every case.
    entry_sregs: kvm_sregs,
    /// Cases run so far.
    cases: u64,
}

impl Oracle {
    /// Creates the VM, writes the fixed guest tables and prepares the ring-3 entry state.
    pub fn new(mode: Mode) -> Result<Self, DifftestError> {
        let kvm = crate::kvm::open_kvm().map_err(DifftestError::KvmUnavailable)?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = GuestMemory::new(RAM_SIZE)?;
        // SAFETY: the mapping lives in `mem`, which the Oracle drops after the VM.
        unsafe { crate::kvm::map_guest_memory(&vm, &mem) }.map_err(|e| match e {
            crate::kvm::KvmError::Ioctl { op, source } => DifftestError::Kvm { op, source },
            other => DifftestError::KvmUnavailable(other),
        })?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        // Long mode needs CPUID to advertise LM before KVM accepts EFER.LME.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        write_tables(&mem)?;

        let mut probe = Case {
            code: vec![0xcc],
            regs: [0; 16],
            rflags: 0,
            data: vec![0; DATA_SIZE as usize],
            fpu: FpuState::default(),
        };
        let state = system_state(probe.entry_state(mode));
        let entry_sregs = state.to_kvm().sregs;
        let mut oracle = Oracle {
            mode,
            vcpu,
            _vm: vm,
            mem,
            entry_sregs,
            cases: 0,
        };
        // Is this really the CPU? A lone `int3` must come back as "completed"; PVM runs
        // compatibility-mode ring-3 code through KVM's instruction emulator instead, which
        // turns `int3` into #UD (and lacks DAA etc.), so it is no oracle for 32-bit code.
        probe.regs[4] = super::STACK_TOP;
        let out = oracle.run(&probe)?;
        oracle.cases = 0;
        if out.exception.is_some() {
            return Err(DifftestError::NotNative(format!(
                "in {}-bit mode a lone int3 at ring 3 raised {:?} instead of trapping: this \
                 hypervisor emulates that mode rather than running it on the CPU",
                mode.bitness(),
                out.exception
            )));
        }
        Ok(oracle)
    }

    /// The mode this oracle runs cases in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Cases run so far.
    pub fn cases_run(&self) -> u64 {
        self.cases
    }

    /// Runs one case on the real CPU and captures its outcome.
    pub fn run(&mut self, case: &Case) -> Result<Outcome, DifftestError> {
        if case.code.is_empty() || case.code.len() as u64 > CODE_SIZE {
            return Err(DifftestError::BadCase(format!(
                "code is {} bytes (1..={CODE_SIZE})",
                case.code.len()
            )));
        }
        if case.data.len() as u64 != DATA_SIZE {
            return Err(DifftestError::BadCase(format!(
                "data is {} bytes, must be {DATA_SIZE}",
                case.data.len()
            )));
        }
        self.cases += 1;
        // The rest of the code page is `int3`, so a stray jump past the end still stops.
        let mut page = vec![0xccu8; CODE_SIZE as usize];
        page[..case.code.len()].copy_from_slice(&case.code);
        self.mem.write(CODE_BASE, &page)?;
        self.mem.write(DATA_BASE, &case.data)?;

        self.vcpu
            .set_sregs(&self.entry_sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let r = &case.regs;
        let regs = kvm_regs {
            rax: r[0],
            rcx: r[1],
            rdx: r[2],
            rbx: r[3],
            rsp: r[4],
            rbp: r[5],
            rsi: r[6],
            rdi: r[7],
            r8: r[8],
            r9: r[9],
            r10: r[10],
            r11: r[11],
            r12: r[12],
            r13: r[13],
            r14: r[14],
            r15: r[15],
            rip: CODE_BASE,
            rflags: case.entry_rflags(),
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let image = xsave_from_fpu(&case.fpu);
        // SAFETY: `image` is a complete `kvm_xsave` (the legacy 4 KiB buffer KVM_SET_XSAVE reads).
        unsafe { self.vcpu.set_xsave(&image) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        self.run_to_halt()?;
        let fpu = fpu_from_xsave(&self.vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?);

        let k = self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let vector = k
            .rip
            .checked_sub(STUBS + 1)
            .filter(|v| *v < VECTORS)
            .ok_or_else(|| {
                DifftestError::UnexpectedExit(format!("halted at {:#x}, not in a stub", k.rip))
            })? as u8;
        let mut frame = k.rsp;
        let error_code = if pushes_error_code(vector) {
            let e = self.mem.read_le::<8>(frame)? as u32;
            frame += 8;
            Some(e)
        } else {
            None
        };
        let rip = self.mem.read_le::<8>(frame)?;
        let flags = self.mem.read_le::<8>(frame + 16)?;
        let rsp = self.mem.read_le::<8>(frame + 24)?;

        let regs = [
            k.rax, k.rcx, k.rdx, k.rbx, rsp, k.rbp, k.rsi, k.rdi, k.r8, k.r9, k.r10, k.r11, k.r12,
            k.r13, k.r14, k.r15,
        ];
        let mut data = vec![0u8; DATA_SIZE as usize];
        self.mem.read(DATA_BASE, &mut data)?;
        // `int3` is a trap: the frame holds the address after it.
        let (rip, exception) = if vector == 3 && rip.wrapping_sub(1) == case.end_rip() {
            (case.end_rip(), None)
        } else {
            (rip, Some((vector, error_code)))
        };
        Ok(Outcome {
            regs,
            rip,
            rflags: flags & !rflags::RF,
            data,
            exception,
            fpu,
        })
    }

    /// Runs the vCPU until its next `hlt`.
    fn run_to_halt(&mut self) -> Result<(), DifftestError> {
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::Hlt) => return Ok(()),
                Ok(VcpuExit::Intr) => continue,
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so this arm is live.
                    let sub = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(DifftestError::UnexpectedExit(format!(
                        "KVM internal error (suberror {sub}) at rip {rip:#x}"
                    )));
                }
                Ok(other) => {
                    return Err(DifftestError::UnexpectedExit(format!("{other:?}")));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            }
        }
    }
}

/// Byte offsets in the XSAVE legacy region and header (Intel SDM Vol. 1, Table 10-2 and
/// 13.4.2; the same layout `ringzero_translator::state::kvm` converts).
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
}

/// XSTATE_BV for x87 and SSE: both components are always loaded from the image (never from
/// their init state), so a case's FCW/MXCSR/registers are exactly what it asked for.
const XSTATE_X87_SSE: u64 = 0b11;

/// The `KVM_SET_XSAVE` image of `f` (x87 and SSE components; AVX in its init state).
pub fn xsave_from_fpu(f: &FpuState) -> kvm_xsave {
    let mut b = [0u8; 4096];
    let mut put = |off: usize, v: &[u8]| {
        if let Some(d) = b.get_mut(off..off + v.len()) {
            d.copy_from_slice(v);
        }
    };
    put(xoff::FCW, &f.fcw.to_le_bytes());
    put(xoff::FSW, &f.fsw.to_le_bytes());
    put(xoff::FTW, &[f.ftw]);
    put(xoff::FOP, &f.fop.to_le_bytes());
    put(xoff::FIP, &f.fip.to_le_bytes());
    put(xoff::FDP, &f.fdp.to_le_bytes());
    put(xoff::MXCSR, &f.mxcsr.to_le_bytes());
    for (i, st) in f.st.iter().enumerate() {
        put(xoff::ST + 16 * i, st);
    }
    for (i, x) in f.xmm.iter().enumerate() {
        put(xoff::XMM + 16 * i, x);
    }
    put(xoff::XSTATE_BV, &XSTATE_X87_SSE.to_le_bytes());
    let mut x = kvm_xsave::default();
    for (w, c) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    x
}

/// The x87/SSE state in a `KVM_GET_XSAVE` image. KVM fills components in their init state
/// with the init values, and always reports the real MXCSR here (unlike `KVM_GET_FPU`).
pub fn fpu_from_xsave(x: &kvm_xsave) -> FpuState {
    let mut b = [0u8; 4096];
    for (c, w) in b.chunks_exact_mut(4).zip(x.region.iter()) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    let get = |off: usize, n: usize| b.get(off..off + n).unwrap_or(&[]);
    let u16_at = |off: usize| u16::from_le_bytes(get(off, 2).try_into().unwrap_or([0; 2]));
    let u64_at = |off: usize| u64::from_le_bytes(get(off, 8).try_into().unwrap_or([0; 8]));
    let mut f = FpuState {
        fcw: u16_at(xoff::FCW),
        fsw: u16_at(xoff::FSW),
        ftw: get(xoff::FTW, 1).first().copied().unwrap_or(0),
        fop: u16_at(xoff::FOP),
        fip: u64_at(xoff::FIP),
        fdp: u64_at(xoff::FDP),
        mxcsr: u32::from_le_bytes(get(xoff::MXCSR, 4).try_into().unwrap_or([0; 4])),
        xstate_bv: u64_at(xoff::XSTATE_BV),
        ..FpuState::default()
    };
    for (i, st) in f.st.iter_mut().enumerate() {
        st.copy_from_slice(get(xoff::ST + 16 * i, 16));
    }
    for (i, r) in f.xmm.iter_mut().enumerate() {
        r.copy_from_slice(get(xoff::XMM + 16 * i, 16));
    }
    f
}

/// Adds the oracle's system registers (paging, GDT, IDT, TSS) to a case's entry state.
fn system_state(mut s: CpuState) -> CpuState {
    s.cr3 = PML4;
    s.gdtr = DescriptorTable {
        base: GDT,
        limit: 0x4f,
    };
    s.idtr = DescriptorTable {
        base: IDT,
        limit: (VECTORS * 16 - 1) as u16,
    };
    s.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: 0x67,
        type_: 0xb,
        s: false,
        present: true,
        ..Segment::default()
    };
    s.ldtr = Segment {
        unusable: true,
        type_: 2,
        ..Segment::default()
    };
    s
}

/// Writes the page tables, GDT, IDT, TSS and stubs into guest RAM.
fn write_tables(mem: &GuestMemory) -> Result<(), DifftestError> {
    mem.zero(0, 0x2_0000)?;
    mem.write_le::<8>(PML4, PDPT | PTE_P | PTE_RW | PTE_US)?;
    mem.write_le::<8>(PDPT, PD | PTE_P | PTE_RW | PTE_US)?;
    mem.write_le::<8>(PD, PTE_P | PTE_RW | PTE_PS)?;
    mem.write_le::<8>(PD + 8, USER_PT | PTE_P | PTE_RW | PTE_US)?;
    // Code: user, read-only (a case cannot modify itself). Data region: user, read-write.
    mem.write_le::<8>(
        USER_PT + ((CODE_BASE >> 12) & 0x1ff) * 8,
        CODE_BASE | PTE_P | PTE_US,
    )?;
    for page in (DATA_BASE..DATA_BASE + DATA_SIZE).step_by(0x1000) {
        mem.write_le::<8>(
            USER_PT + ((page >> 12) & 0x1ff) * 8,
            page | PTE_P | PTE_RW | PTE_US,
        )?;
    }

    let code32 = Segment::flat32(0, true);
    let data = Segment::flat32(0, false);
    let code64 = Segment::code64(0);
    let user = |s: Segment| Segment { dpl: 3, ..s };
    let gdt = [
        0,
        code32.to_descriptor(),
        data.to_descriptor(),
        code64.to_descriptor(),
        data.to_descriptor(),
        user(code32).to_descriptor(),
        user(data).to_descriptor(),
        user(code64).to_descriptor(),
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_le::<8>(GDT + 8 * i as u64, *d)?;
    }
    // 64-bit TSS descriptor (16 bytes), marked busy as after `ltr`.
    let tss = Segment {
        base: TSS,
        limit: 0x67,
        type_: 0xb,
        s: false,
        present: true,
        ..Segment::default()
    };
    mem.write_le::<8>(GDT + u64::from(TSS_SEL), tss.to_descriptor())?;
    mem.write_le::<8>(GDT + u64::from(TSS_SEL) + 8, TSS >> 32)?;
    mem.write_le::<8>(TSS + 4, RING0_STACK_TOP)?;
    // I/O map base beyond the limit: no I/O permission bitmap.
    mem.write_le::<2>(TSS + 0x66, 0x68)?;

    for v in 0..VECTORS {
        let handler = STUBS + v;
        // 64-bit interrupt gate; `int3` (3) and `into` (4) are reachable from ring 3 (DPL 3).
        let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | ((0x8e | (dpl << 5)) << 40)
            | (((handler >> 16) & 0xffff) << 48);
        mem.write_le::<8>(IDT + 16 * v, low)?;
        mem.write_le::<8>(IDT + 16 * v + 8, handler >> 32)?;
    }
    mem.write(STUBS, &[0xf4; VECTORS as usize])?;
    Ok(())
}
