//! The Cranelift tier's inline TLB hit path over the full-system memory: compiled blocks run on
//! a `SystemMem` with 4-level paging give exactly what the interpreter tier gives (state,
//! exits, faults, physical memory including A/D bits, recorded code writes), with the TLB cold
//! and warm, across page-crossing accesses, faults, clean pages, MMIO, watched code pages,
//! privilege halves and remappings; and warm hits really stay in generated code (the MMU's hit
//! counter, which only the Rust path bumps, does not move).

use iced_x86::code_asm::*;
use ringzero_translator::interp::{run_block, BlockExit};
use ringzero_translator::jit::{decode_block, run_compiled, CompiledBlock, Jit};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::mmu::{PhysMem, RamPage, SystemMem, VecPhys};
use ringzero_translator::sem::Exception;
use ringzero_translator::state::{ctl, reg, CpuState, Segment};
use ringzero_translator::system::TlbFlush;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
const USER: u64 = P | RW | US | A | D;

const RAM: usize = 0x40_0000;
/// Page tables: PML4, PDPT, directory, one table covering linear 0..2 MiB.
const PML4: u64 = 0x1000;
const PT: u64 = 0x4000;
/// Linear address of the code (identity-mapped).
const CODE: u64 = 0x10000;
/// Linear stack page (RSP at its end) and its physical page.
const STACK_PAGE: u64 = 0x7000;
/// Data page A and the page after it (physically not contiguous with A).
const DATA_A: u64 = 0x20000;
const DATA_B: u64 = 0x21000;
/// Not present.
const NOT_PRESENT: u64 = 0x22000;
/// Present, read-only.
const READ_ONLY: u64 = 0x23000;
/// Writable, dirty flag clear.
const CLEAN: u64 = 0x24000;
/// Writable, its physical page watched as a code page.
const WATCHED: u64 = 0x26000;
const WATCHED_PHYS: u64 = 0x36000;
/// Mapped to MMIO (outside RAM).
const MMIO: u64 = 0x27000;
const MMIO_PHYS: u64 = 0x50_0000;
/// Supervisor-only.
const SUPER: u64 = 0x28000;

/// RAM plus one MMIO page whose reads count up (a side effect: a read served twice or
/// from a stale pointer shows up as a different value).
struct Phys {
    ram: VecPhys,
    reads: u64,
    latch: u64,
}

impl PhysMem for Phys {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        if addr & !0xfff == MMIO_PHYS {
            self.reads += 1;
            let v = self.latch.wrapping_add(self.reads).to_le_bytes();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = v[i % 8];
            }
        } else {
            self.ram.read_phys(addr, buf);
        }
    }
    fn write_phys(&mut self, addr: u64, data: &[u8]) {
        if addr & !0xfff == MMIO_PHYS {
            let mut v = [0u8; 8];
            for (d, s) in v.iter_mut().zip(data) {
                *d = *s;
            }
            self.latch = u64::from_le_bytes(v) << 8;
        } else {
            self.ram.write_phys(addr, data);
        }
    }
    fn ram_page(&mut self, phys_page: u64) -> Option<RamPage> {
        self.ram.ram_page(phys_page)
    }
}

/// The 4-level tables and every test page, data filled with a pattern.
fn phys() -> Phys {
    let mut m = VecPhys::new(RAM);
    m.write_u64(PML4, 0x2000 | P | RW | US);
    m.write_u64(0x2000, 0x3000 | P | RW | US);
    m.write_u64(0x3000, PT | P | RW | US);
    let mut map = |linear: u64, phys: u64, flags: u64| {
        m.write_u64(PT + (linear >> 12) * 8, phys | flags);
    };
    map(CODE, CODE, P | RW | US | A);
    map(STACK_PAGE, 0x47000, USER);
    map(DATA_A, 0x30000, USER);
    map(DATA_B, 0x25000, USER);
    map(READ_ONLY, 0x33000, P | US | A | D);
    map(CLEAN, 0x34000, P | RW | US | A);
    map(WATCHED, WATCHED_PHYS, USER);
    map(MMIO, MMIO_PHYS, USER);
    map(SUPER, 0x38000, P | RW | A | D);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for page in [
        0x30000u64,
        0x25000,
        0x33000,
        0x34000,
        WATCHED_PHYS,
        0x38000,
        0x31000,
    ] {
        for off in (0..0x1000).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.write_u64(page + off, x);
        }
    }
    Phys {
        ram: m,
        reads: 0,
        latch: 0,
    }
}

/// A 64-bit CPU at CPL `cpl` with 4-level paging over [`phys`].
fn cpu(cpl: u8) -> CpuState {
    let mut c = CpuState::default();
    c.cr0 |= ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_WP;
    c.cr4 |= ctl::CR4_PAE;
    c.cr3 = PML4;
    c.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE;
    c.cs = Segment {
        dpl: cpl,
        selector: 0x10 | u16::from(cpl),
        ..Segment::code64(0x10)
    };
    c.ss = Segment {
        dpl: cpl,
        selector: 0x18 | u16::from(cpl),
        ..Segment::flat32(0x18, false)
    };
    c.ds = Segment::flat32(0x18, false);
    c.rip = CODE;
    c.gpr[reg::RSP] = STACK_PAGE + 0x1000;
    c.gpr[reg::RSI] = DATA_A;
    c.gpr[reg::RDI] = NOT_PRESENT;
    c.gpr[reg::RBP] = WATCHED;
    c.gpr[reg::RBX] = 0x1122_3344_5566_7788;
    c.gpr[reg::RCX] = 0x99aa_bbcc_ddee_ff00;
    c
}

/// A system memory over [`phys`] with `code` at CODE, in `cpu`'s context; `warm` pre-fills the
/// read and write entries of the data, stack, MMIO and watched pages (as earlier blocks would).
fn system(cpu: &CpuState, code: &[u8], warm: bool) -> SystemMem {
    let mut p = phys();
    p.write_phys(CODE, code);
    let mut m = SystemMem::new(Box::new(p));
    m.set_context(cpu);
    if warm {
        for page in [DATA_A, DATA_B, STACK_PAGE, MMIO, WATCHED, READ_ONLY] {
            let mut b = [0u8; 1];
            let _ = m.read(page, &mut b);
            let _ = m.write(page, &b);
        }
    }
    m.watch_code_page(WATCHED_PHYS >> 12);
    m
}

fn assemble(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Everything observable after a run.
#[derive(Debug, PartialEq)]
struct Outcome {
    exit: BlockExit,
    cpu: CpuState,
    code_writes: Vec<u64>,
    /// The MMU's hit counter moved by this much (not compared between tiers).
    hits: u64,
}

fn run(mem: &mut SystemMem, cpu: &CpuState, block: Option<&CompiledBlock>) -> Outcome {
    let mut c = cpu.clone();
    let before = mem.stats().hits;
    let exit = match block {
        Some(b) => run_compiled(&mut c, mem, b),
        None => {
            let insns = decode_block(cpu, mem, 64).unwrap();
            run_block(&mut c, mem, &insns)
        }
    };
    let hits = mem.stats().hits - before;
    let mut code_writes = Vec::new();
    mem.take_code_writes(&mut code_writes);
    Outcome {
        exit,
        cpu: c,
        code_writes,
        hits,
    }
}

fn ram_of(mem: &mut SystemMem) -> Vec<u8> {
    let mut v = vec![0; RAM];
    mem.phys_mut().read_phys(0, &mut v);
    v
}

/// Runs `code` at CPL `cpl` under both tiers `rounds` times from the same state (the memory
/// carries over between rounds, so later rounds run with a warm TLB) and asserts identical
/// outcomes and RAM each round; returns the compiled tier's outcomes.
fn both(
    what: &str,
    cpl: u8,
    warm: bool,
    rounds: usize,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<(Outcome, Outcome)> {
    let code = assemble(build);
    let c = cpu(cpl);
    let mut mi = system(&c, &code, warm);
    let mut mj = system(&c, &code, warm);
    let insns = decode_block(&c, &mut mj, 64).unwrap();
    let block = Jit::new().unwrap().compile_block(&insns, &c).unwrap();
    assert_eq!(block.len, insns.len(), "{what}: whole block compiled");
    let mut out = Vec::new();
    for round in 0..rounds {
        let oi = run(&mut mi, &c, None);
        let oj = run(&mut mj, &c, Some(&block));
        assert_eq!(oj.exit, oi.exit, "{what} round {round}: exits");
        assert_eq!(oj.cpu, oi.cpu, "{what} round {round}: CpuState");
        assert_eq!(
            oj.code_writes, oi.code_writes,
            "{what} round {round}: code writes"
        );
        assert!(
            ram_of(&mut mj) == ram_of(&mut mi),
            "{what} round {round}: RAM differs"
        );
        // Re-arm the watch the run consumed (as the engine would after retranslating).
        mi.watch_code_page(WATCHED_PHYS >> 12);
        mj.watch_code_page(WATCHED_PHYS >> 12);
        out.push((oi, oj));
    }
    out
}

fn pf(o: &Outcome) -> (u64, u32) {
    match o.exit.exception {
        Some(Exception::PageFault { linear, error }) => (linear, error),
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn warm_hits_of_every_size_stay_in_generated_code() {
    for cpl in [0, 3] {
        let r = both("hits", cpl, false, 2, |a| {
            a.mov(rax, qword_ptr(rsi))?;
            a.mov(qword_ptr(rsi + 8), rax)?;
            a.add(rbx, qword_ptr(rsi + 0x10))?;
            a.mov(edx, dword_ptr(rsi + 0x20))?;
            a.mov(dword_ptr(rsi + 0x24), ecx)?;
            a.mov(r8w, word_ptr(rsi + 0x31))?;
            a.mov(word_ptr(rsi + 0x33), cx)?;
            a.movzx(r9d, byte_ptr(rsi + 0x45))?;
            a.mov(byte_ptr(rsi + 0x46), bl)?;
            a.add(qword_ptr(rsi + 0x50), rcx)?;
            a.mov(rax, qword_ptr(rsi + 0xff8))?; // the last 8 bytes of the page
            a.mov(dword_ptr(rsi + 0xffc), eax)?;
            a.push(rax)?;
            a.pop(r10)?;
            a.mov(r11, qword_ptr(rsi + 0x1008))?; // the next page
            a.jmp(CODE)
        });
        let (oi, oj) = &r[1];
        assert!(oi.hits >= 15, "the interpreter hits the TLB ({})", oi.hits);
        assert_eq!(
            oj.hits, 0,
            "CPL {cpl}: warm compiled accesses never leave generated code"
        );
        assert_eq!(oj.exit.executed, 16);
        assert_eq!(oj.cpu.rip, CODE);
    }
}

#[test]
fn page_crossing_accesses_take_the_helper() {
    let r = both("crossing", 0, true, 2, |a| {
        a.mov(rax, qword_ptr(rsi + 0xffd))?;
        a.mov(dword_ptr(rsi + 0xffe), ebx)?;
        a.mov(dx, word_ptr(rsi + 0xfff))?;
        a.mov(word_ptr(rsi + 0xfff), cx)?;
        a.mov(r8, qword_ptr(rsi + 0xff9))?;
        a.mov(qword_ptr(rsi + 0xff9), rcx)?;
        a.mov(r9d, dword_ptr(rsi + 0xffd))?;
        a.jmp(CODE)
    });
    for (_, oj) in &r[1..] {
        // Two pieces per crossing access, each a Rust-path hit: nothing was served inline.
        assert_eq!(oj.hits, 14);
        assert_eq!(oj.exit.executed, 8);
    }
}

#[test]
fn faults_on_fast_path_candidates_are_precise() {
    for warm in [false, true] {
        // Not present, after hits and stores earlier in the block.
        let r = both("not present", 3, warm, 2, |a| {
            a.mov(rax, qword_ptr(rsi))?;
            a.mov(qword_ptr(rsi + 8), rbx)?;
            a.add(rcx, qword_ptr(rdi + 0x10))?;
            a.mov(qword_ptr(rsi + 16), rbx)?;
            a.jmp(CODE)
        });
        for (_, oj) in &r {
            assert_eq!(pf(oj), (NOT_PRESENT + 0x10, 0b100));
            assert_eq!(oj.exit.executed, 2);
        }
        // A store to a read-only page has a read entry but no write entry.
        let r = both("read-only", 3, warm, 2, |a| {
            a.mov(rax, qword_ptr(rsi + 0x3000))?;
            a.mov(qword_ptr(rsi + 0x3008), rbx)?;
            a.jmp(CODE)
        });
        for (_, oj) in &r {
            assert_eq!(pf(oj), (READ_ONLY + 8, 0b111));
            assert_eq!(oj.exit.executed, 1);
        }
        // A store crossing from a writable page into a not-present one writes nothing.
        let r = both("crossing into not present", 0, warm, 2, |a| {
            a.mov(qword_ptr(rsi + 0x1ffc), rbx)?;
            a.jmp(CODE)
        });
        for (_, oj) in &r {
            assert_eq!(pf(oj), (NOT_PRESENT, 0b010));
        }
    }
}

#[test]
fn user_half_does_not_see_supervisor_entries() {
    let code = assemble(|a| {
        a.mov(rax, qword_ptr(rsi + 0x8000))?;
        a.jmp(CODE)
    });
    let sup = cpu(0);
    let user = cpu(3);
    let mut mj = system(&sup, &code, true);
    let mut mi = system(&sup, &code, true);
    let mut jit = Jit::new().unwrap();
    let insns = decode_block(&sup, &mut mj, 64).unwrap();
    let kblock = jit.compile_block(&insns, &sup).unwrap();
    let ublock = jit.compile_block(&insns, &user).unwrap();
    for m in [&mut mi, &mut mj] {
        // The supervisor half now maps SUPER.
        let mut b = [0u8; 8];
        m.read(SUPER, &mut b).unwrap();
    }
    let kfirst = run(&mut mj, &sup, Some(&kblock));
    assert_eq!(
        (kfirst.exit.executed, kfirst.hits),
        (2, 0),
        "supervisor hit inline"
    );
    for m in [&mut mi, &mut mj] {
        m.set_context(&user);
    }
    let oi = run(&mut mi, &user, None);
    let oj = run(&mut mj, &user, Some(&ublock));
    assert_eq!(oj.exit, oi.exit);
    assert_eq!(oj.cpu, oi.cpu);
    assert_eq!(pf(&oj), (SUPER, 0b101));
    // Back at CPL 0 the same compiled block hits the supervisor half again.
    for m in [&mut mi, &mut mj] {
        m.set_context(&sup);
    }
    let kagain = run(&mut mj, &sup, Some(&kblock));
    assert_eq!((kagain.exit.executed, kagain.hits), (2, 0));
    assert_eq!(kagain.cpu.gpr[reg::RAX], kfirst.cpu.gpr[reg::RAX]);
}

#[test]
fn stores_to_watched_code_pages_end_the_block() {
    let r = both("watched", 0, true, 2, |a| {
        a.mov(qword_ptr(rsi), rax)?;
        a.mov(qword_ptr(rbp + 0x10), rbx)?;
        a.mov(qword_ptr(rsi + 8), rcx)?;
        a.jmp(CODE)
    });
    for (_, oj) in &r {
        assert_eq!(oj.exit.executed, 2, "the block ends after the code write");
        assert_eq!(oj.code_writes, vec![WATCHED_PHYS >> 12]);
        assert_eq!(oj.cpu.rip, CODE + 7);
    }
}

#[test]
fn a_code_write_pending_at_entry_ends_the_block_after_the_first_store() {
    let code = assemble(|a| {
        a.mov(qword_ptr(rsi), rax)?;
        a.mov(qword_ptr(rsi + 8), rcx)?;
        a.jmp(CODE)
    });
    let c = cpu(0);
    let mut mi = system(&c, &code, true);
    let mut mj = system(&c, &code, true);
    let insns = decode_block(&c, &mut mj, 64).unwrap();
    let block = Jit::new().unwrap().compile_block(&insns, &c).unwrap();
    for m in [&mut mi, &mut mj] {
        // A device wrote the watched page; nobody has taken the write yet.
        m.note_phys_write(WATCHED_PHYS, 4);
        assert!(m.code_write_pending());
    }
    let oi = run(&mut mi, &c, None);
    let oj = run(&mut mj, &c, Some(&block));
    assert_eq!(
        oj,
        Outcome {
            hits: oj.hits,
            ..oi
        }
    );
    assert_eq!(oj.exit.executed, 1);
}

#[test]
fn clean_pages_mmio_and_unmapped_pages_go_through_the_helper() {
    let r = both("clean+mmio", 0, true, 3, |a| {
        a.mov(qword_ptr(rsi + 0x4000), rbx)?; // CLEAN: the first write sets D
        a.mov(rax, qword_ptr(rsi + 0x4000))?;
        a.mov(rdx, qword_ptr(rsi + 0x7000))?; // MMIO read (counts)
        a.mov(qword_ptr(rsi + 0x7008), rcx)?; // MMIO write (latches)
        a.mov(r8, qword_ptr(rsi + 0x7000))?;
        a.mov(r9d, dword_ptr(rsi + 0x7004))?;
        a.jmp(CODE)
    });
    for (oi, oj) in &r {
        assert_eq!(oj.exit.executed, 7);
        assert_ne!(oj.cpu.gpr[reg::RDX], oj.cpu.gpr[reg::R8]);
        assert!(oj.hits < oi.hits || oi.hits == 0);
    }
    assert_eq!(CLEAN, DATA_A + 0x4000);
    assert_eq!(MMIO, DATA_A + 0x7000);
}

#[test]
fn a_compiled_block_sees_remappings_and_flushes() {
    let code = assemble(|a| {
        a.mov(rax, qword_ptr(rsi + 0x18))?;
        a.mov(qword_ptr(rsi + 0x20), rbx)?;
        a.jmp(CODE)
    });
    let c = cpu(0);
    let mut mi = system(&c, &code, true);
    let mut mj = system(&c, &code, true);
    let insns = decode_block(&c, &mut mj, 64).unwrap();
    let block = Jit::new().unwrap().compile_block(&insns, &c).unwrap();
    let check = |mi: &mut SystemMem, mj: &mut SystemMem| {
        let oi = run(mi, &c, None);
        let oj = run(mj, &c, Some(&block));
        assert_eq!(oj.exit, oi.exit);
        assert_eq!(oj.cpu, oi.cpu);
        assert!(ram_of(mj) == ram_of(mi));
        oj
    };
    let before = check(&mut mi, &mut mj);
    // Remap DATA_A to another physical page, then INVLPG.
    for m in [&mut mi, &mut mj] {
        m.phys_mut()
            .write_u64(PT + (DATA_A >> 12) * 8, 0x31000 | USER);
        m.flush(TlbFlush::Page(DATA_A));
    }
    let after = check(&mut mi, &mut mj);
    assert_ne!(before.cpu.gpr[reg::RAX], after.cpu.gpr[reg::RAX]);
    assert_eq!(after.hits, 0, "the refilled entry was used inline");
    // A full flush: the block misses, walks and still agrees.
    for m in [&mut mi, &mut mj] {
        m.flush(TlbFlush::All);
    }
    let flushed = check(&mut mi, &mut mj);
    assert_eq!(flushed.cpu.gpr[reg::RAX], after.cpu.gpr[reg::RAX]);
}

#[test]
fn one_compiled_block_runs_over_flat_and_system_memory() {
    // 32-bit protected mode without paging: linear = physical in both memories.
    let mut c = CpuState::default();
    c.cr0 |= ctl::CR0_PE;
    c.cs = Segment::flat32(0x08, true);
    c.ss = Segment::flat32(0x10, false);
    c.ds = Segment::flat32(0x10, false);
    c.es = Segment::flat32(0x10, false);
    c.rip = CODE;
    c.gpr[reg::RSP] = 0x9000;
    c.gpr[reg::RSI] = 0x8000;
    c.gpr[reg::RBX] = 0x1234_5678;
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(eax, dword_ptr(esi)).unwrap();
    a.add(eax, ebx).unwrap();
    a.mov(dword_ptr(esi + 4), eax).unwrap();
    a.push(eax).unwrap();
    a.mov(cx, word_ptr(esi + 0xfff)).unwrap(); // crosses into 0x9000
    a.jmp(CODE).unwrap();
    let code = a.assemble(CODE).unwrap();

    let mut flat = FlatMem::new(0, 0x20000);
    flat.write(CODE, &code).unwrap();
    flat.write(0x8000, &0xdead_beefu32.to_le_bytes()).unwrap();
    let insns = decode_block(&c, &mut flat, 64).unwrap();
    let block = Jit::new().unwrap().compile_block(&insns, &c).unwrap();

    // Over FlatMem (no fast path).
    let (mut ci, mut fi) = (c.clone(), flat.clone());
    let ei = run_block(&mut ci, &mut fi, &insns);
    let (mut cj, mut fj) = (c.clone(), flat.clone());
    let ej = run_compiled(&mut cj, &mut fj, &block);
    assert_eq!((ej, &cj), (ei, &ci));
    assert!(fj == fi);

    // The same block over SystemMem (fast path), warm on the second round.
    let sys = || {
        let mut p = VecPhys::new(0x20000);
        p.write_phys(0, &flat.bytes);
        let mut m = SystemMem::new(Box::new(p));
        m.set_context(&c);
        m
    };
    let (mut mi, mut mj) = (sys(), sys());
    for round in 0..2 {
        let (mut ci2, mut cj2) = (c.clone(), c.clone());
        let ei2 = run_block(&mut ci2, &mut mi, &insns);
        let h = mj.stats().hits;
        let ej2 = run_compiled(&mut cj2, &mut mj, &block);
        assert_eq!((ej2, &cj2), (ei2, &ci2));
        assert_eq!((ej2, &cj2), (ei, &ci), "same as over FlatMem");
        assert!(ram_of_len(&mut mi, 0x20000) == ram_of_len(&mut mj, 0x20000));
        if round == 1 {
            // Only the crossing load's two pieces went through the Rust path.
            assert_eq!(mj.stats().hits - h, 2);
        }
    }
}

fn ram_of_len(mem: &mut SystemMem, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.phys_mut().read_phys(0, &mut v);
    v
}

/// A read-modify-write destination is translated for writing (found by the ring-3 fuzz
/// comparison with the CPU): a not-present page faults with W/R = 1, a read-only one at the
/// read, before anything is written — identically in both tiers.
#[test]
fn read_modify_write_destinations_fault_as_writes() {
    for warm in [false, true] {
        for (what, build) in [
            (
                "add [not present], rax",
                (|a: &mut CodeAssembler| {
                    a.add(qword_ptr(rdi + 0x10), rax)?;
                    a.jmp(CODE)
                }) as fn(&mut CodeAssembler) -> Result<(), IcedError>,
            ),
            ("inc [not present]", |a| {
                a.inc(dword_ptr(rdi + 0x10))?;
                a.jmp(CODE)
            }),
            ("shl [not present], cl", |a| {
                a.shl(word_ptr(rdi + 0x10), cl)?;
                a.jmp(CODE)
            }),
            ("xchg [not present], rbx", |a| {
                a.xchg(qword_ptr(rdi + 0x10), rbx)?;
                a.jmp(CODE)
            }),
            ("bts [not present], 3", |a| {
                a.bts(qword_ptr(rdi + 0x10), 3)?;
                a.jmp(CODE)
            }),
        ] {
            let r = both(what, 3, warm, 2, build);
            for (_, oj) in &r {
                assert_eq!(pf(oj), (NOT_PRESENT + 0x10, 0b110), "{what}");
            }
        }
        // CMP and BT only read: a read fault.
        let r = both("cmp [not present], rax", 3, warm, 2, |a| {
            a.cmp(qword_ptr(rdi + 0x10), rax)?;
            a.jmp(CODE)
        });
        for (_, oj) in &r {
            assert_eq!(pf(oj), (NOT_PRESENT + 0x10, 0b100));
        }
        // A read-only page faults at the RMW read (P | W | U), memory unchanged.
        let r = both("add [read-only], rax", 3, warm, 2, |a| {
            a.add(qword_ptr(rsi + 0x3008), rax)?;
            a.jmp(CODE)
        });
        for (_, oj) in &r {
            assert_eq!(pf(oj), (READ_ONLY + 8, 0b111));
        }
    }
}
