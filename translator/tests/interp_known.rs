//! Known-answer tests for the interpreter tier: operand forms, memory, stack, control flow,
//! exceptions and modes, with expected values from the Intel SDM.

use iced_x86::code_asm::*;
use ringzero_translator::interp::{decode, run_block, step};
use ringzero_translator::mem::{FlatMem, GuestMem};
use ringzero_translator::sem::{Exception, BP, DE, GP, SS, UD};
use ringzero_translator::state::{reg, rflags, CpuState, Segment};

mod common;
use common::{cpu, CODE, STACK};

struct Run {
    cpu: CpuState,
    mem: FlatMem,
    end: u64,
}

impl Run {
    fn new(bits: u32, build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Run {
        let mut a = CodeAssembler::new(bits).unwrap();
        build(&mut a).unwrap();
        let bytes = a.assemble(CODE).unwrap();
        Run::bytes(bits, &bytes)
    }

    fn bytes(bits: u32, bytes: &[u8]) -> Run {
        let mut mem = FlatMem::new(0, 0x10000);
        mem.write(CODE, bytes).unwrap();
        Run {
            cpu: cpu(bits),
            mem,
            end: CODE + bytes.len() as u64,
        }
    }

    /// Steps until RIP reaches the end of the code or an exception.
    fn go(&mut self) -> Result<(), Exception> {
        for _ in 0..1000 {
            if self.cpu.rip == self.end {
                return Ok(());
            }
            step(&mut self.cpu, &mut self.mem)?;
        }
        panic!("no progress");
    }

    fn r(&self, i: usize) -> u64 {
        self.cpu.gpr[i]
    }

    fn m64(&mut self, addr: u64) -> u64 {
        let mut b = [0; 8];
        self.mem.read(addr, &mut b).unwrap();
        u64::from_le_bytes(b)
    }
}

#[test]
fn high_byte_registers_and_partial_writes() {
    let mut t = Run::new(64, |c| {
        c.mov(rax, 0x1111_2222_3333_4444u64)?;
        c.mov(ah, 0x12)?;
        c.mov(rbx, -1i64)?;
        c.add(bh, ah)?; // 0xff + 0x12 = 0x11, CF
        c.mov(cx, 0xbeef)?; // keeps rcx[63:16]
        c.mov(edx, -1)?; // zero-extends
        c.movzx(esi, ah)?;
        c.movsx(edi, bh)?;
        c.mov(r8b, 0x80)?;
        c.movsxd(r9, r8d)
    });
    t.cpu.gpr[reg::RCX] = 0xaaaa_aaaa_aaaa_aaaa;
    t.cpu.gpr[reg::R8] = 0x7fff_ff00;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x1111_2222_3333_1244);
    assert_eq!(t.r(reg::RBX), 0xffff_ffff_ffff_11ff);
    assert_eq!(t.r(reg::RCX), 0xaaaa_aaaa_aaaa_beef);
    assert_eq!(t.r(reg::RDX), 0xffff_ffff);
    assert_eq!(t.r(reg::RSI), 0x12);
    assert_eq!(t.r(reg::RDI), 0x11);
    assert_eq!(t.r(reg::R9), 0x7fff_ff80);
    assert_ne!(t.cpu.rflags & rflags::CF, 0);
}

#[test]
fn xchg_eax_eax_zero_extends_but_nop_does_not() {
    // 87 C0 = xchg eax, eax (a 32-bit write); 90 = nop in 64-bit mode.
    let mut t = Run::bytes(64, &[0x90, 0x87, 0xc0]);
    t.cpu.gpr[reg::RAX] = 0xdead_beef_0000_0001;
    step(&mut t.cpu, &mut t.mem).unwrap();
    assert_eq!(t.r(reg::RAX), 0xdead_beef_0000_0001);
    step(&mut t.cpu, &mut t.mem).unwrap();
    assert_eq!(t.r(reg::RAX), 1);
}

#[test]
fn memory_operands_rip_relative_and_fs_base() {
    let mut t = Run::new(64, |c| {
        c.mov(qword_ptr(0x3000), rbx)?; // absolute (SIB, no base)
        c.add(qword_ptr(rcx + rdx * 4 + 0x10), 5)?;
        c.mov(rsi, qword_ptr(0x3000))?;
        c.mov(r10, qword_ptr(0x20).fs())?;
        c.xchg(qword_ptr(0x3008), r11)?;
        c.lea(r12, qword_ptr(rcx + rdx * 8 - 1))?;
        c.lea(r13d, dword_ptr(ecx + edx)) // 32-bit address size wraps
    });
    t.cpu.gpr[reg::RBX] = 0x1234_5678_9abc_def0;
    t.cpu.gpr[reg::RCX] = 0xffff_ff00;
    t.cpu.gpr[reg::RDX] = 0x140;
    t.cpu.gpr[reg::R11] = 77;
    t.cpu.fs.base = 0x4000;
    t.mem.write(0x4020, &0x55u64.to_le_bytes()).unwrap();
    t.mem.write(0x3008, &99u64.to_le_bytes()).unwrap();
    // rcx + rdx*4 + 0x10 = 0xffff_ff00 + 0x510: outside the 64 KiB memory, so move it.
    t.cpu.gpr[reg::RCX] = 0x2000 - 0x510;
    t.go().unwrap();
    assert_eq!(t.r(reg::RSI), 0x1234_5678_9abc_def0);
    assert_eq!(t.m64(0x2000), 5);
    assert_eq!(t.r(reg::R10), 0x55);
    assert_eq!(t.r(reg::R11), 99);
    assert_eq!(t.m64(0x3008), 77);
    assert_eq!(t.r(reg::R12), (0x2000 - 0x510) + 0x140 * 8 - 1);
    assert_eq!(t.r(reg::R13), ((0x2000u64 - 0x510 + 0x140) & 0xffff_ffff));
}

#[test]
fn rip_relative_operand() {
    // mov rax, [rip + 0xff9]: next RIP 0x1007, operand at 0x2000.
    let mut t = Run::bytes(64, &[0x48, 0x8b, 0x05, 0xf9, 0x0f, 0x00, 0x00]);
    t.mem.write(0x2000, &0x5151u64.to_le_bytes()).unwrap();
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x5151);
}

#[test]
fn lea_wraps_at_32_bit_address_size() {
    let mut t = Run::new(64, |c| c.lea(eax, dword_ptr(ebx + ecx * 2 + 0x10)));
    t.cpu.gpr[reg::RBX] = 0xffff_fff0;
    t.cpu.gpr[reg::RCX] = 0x8;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x10);
}

#[test]
fn push_pop_sizes_and_forms() {
    let mut t = Run::new(64, |c| {
        c.push(rbx)?;
        c.push(ax)?; // 66 50: 2 bytes
        c.push(-2)?; // imm8 sign-extended to 64 bits
        c.pop(rcx)?;
        c.pop(dx)?;
        c.push(qword_ptr(0x3000))?;
        c.pop(qword_ptr(rsp + 8))?; // addressed with the incremented RSP
        c.push(rsp)?;
        c.pop(rsi)
    });
    t.cpu.gpr[reg::RBX] = 0x1111;
    t.cpu.gpr[reg::RAX] = 0xabcd;
    t.cpu.gpr[reg::RDX] = 0xffff_ffff_ffff_0000;
    t.mem.write(0x3000, &0x77u64.to_le_bytes()).unwrap();
    t.go().unwrap();
    assert_eq!(t.r(reg::RCX), u64::MAX - 1);
    assert_eq!(t.r(reg::RDX), 0xffff_ffff_ffff_abcd);
    assert_eq!(t.r(reg::RSP), STACK - 8);
    assert_eq!(
        t.m64(STACK),
        0x77,
        "pop [rsp+8] stores 8 above the popped slot"
    );
    assert_eq!(t.r(reg::RSI), STACK - 8, "push rsp pushes the old value");
}

#[test]
fn call_ret_and_ret_imm() {
    let mut t = Run::new(64, |c| {
        let mut f = c.create_label();
        let mut done = c.create_label();
        c.push(1)?;
        c.call(f)?;
        c.jmp(done)?;
        c.set_label(&mut f)?;
        c.mov(rax, qword_ptr(rsp))?; // the return address
        c.ret_1(8)?;
        c.set_label(&mut done)?;
        c.nop()
    });
    t.go().unwrap();
    assert_eq!(t.r(reg::RSP), STACK);
    // push 1 = 2 bytes (6a 01), call rel32 = 5 bytes.
    assert_eq!(t.r(reg::RAX), CODE + 7);
}

#[test]
fn indirect_jmp_and_call_through_memory() {
    let mut t = Run::new(64, |c| {
        c.call(qword_ptr(0x3000))?;
        c.nop()
    });
    let target = t.end - 1; // the nop
    t.mem.write(0x3000, &target.to_le_bytes()).unwrap();
    step(&mut t.cpu, &mut t.mem).unwrap();
    assert_eq!(t.cpu.rip, target);
    assert_eq!(t.m64(STACK - 8), CODE + 7);
}

#[test]
fn divide_errors_leave_state_unchanged() {
    for build in [
        (|c: &mut CodeAssembler| c.div(ebx)) as fn(&mut CodeAssembler) -> Result<(), IcedError>,
        |c| c.div(rbx),
        |c| c.idiv(bl),
        |c| c.idiv(ecx),
        |c| c.div(cx),
        |c| c.idiv(rcx),
    ] {
        let mut t = Run::new(64, build);
        t.cpu.gpr[reg::RAX] = 0x8000_0000_0000_0000;
        t.cpu.gpr[reg::RDX] = 0xffff_ffff_ffff_ffff;
        t.cpu.gpr[reg::RBX] = 0; // divide by zero
        t.cpu.gpr[reg::RCX] = u64::MAX; // -1: quotient overflow
        t.cpu.rflags = rflags::FIXED1 | rflags::CF | rflags::ZF;
        let before = t.cpu.clone();
        assert_eq!(t.go(), Err(Exception::cpu(DE)));
        assert_eq!(t.cpu, before);
    }
}

#[test]
fn division_known_answers() {
    let mut t = Run::new(64, |c| c.div(rbx));
    t.cpu.gpr[reg::RDX] = 1;
    t.cpu.gpr[reg::RAX] = 5;
    t.cpu.gpr[reg::RBX] = 2;
    t.go().unwrap();
    assert_eq!((t.r(reg::RAX), t.r(reg::RDX)), (0x8000_0000_0000_0002, 1));

    let mut t = Run::new(64, |c| c.idiv(bl));
    t.cpu.gpr[reg::RAX] = 0xff85; // -123
    t.cpu.gpr[reg::RBX] = 10;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX) & 0xffff, 0xfdf4); // AL = -12, AH = -3

    let mut t = Run::new(64, |c| c.idiv(rcx));
    t.cpu.gpr[reg::RAX] = (-7i64) as u64;
    t.cpu.gpr[reg::RDX] = u64::MAX;
    t.cpu.gpr[reg::RCX] = 2;
    t.go().unwrap();
    assert_eq!((t.r(reg::RAX) as i64, t.r(reg::RDX) as i64), (-3, -1));

    // -128 / -1 overflows an 8-bit quotient.
    let mut t = Run::new(64, |c| c.idiv(cl));
    t.cpu.gpr[reg::RAX] = 0xff80;
    t.cpu.gpr[reg::RCX] = 0xff;
    assert_eq!(t.go(), Err(Exception::cpu(DE)));
}

#[test]
fn carries_chain_across_operand_sizes() {
    // A 128-bit add from 64-bit halves and the same carry feeding 8/16/32-bit adc.
    let mut t = Run::new(64, |c| {
        c.add(rax, rbx)?;
        c.adc(rdx, rcx)?;
        c.stc()?;
        c.adc(sil, 0)?;
        c.stc()?;
        c.adc(di, 0xffff)?; // 0 + 0xffff + 1 = 0x1_0000: CF
        c.adc(r8d, 0)
    });
    t.cpu.gpr[reg::RAX] = u64::MAX;
    t.cpu.gpr[reg::RBX] = 1;
    t.cpu.gpr[reg::RDX] = 5;
    t.cpu.gpr[reg::RCX] = 6;
    t.cpu.gpr[reg::RSI] = 0xff;
    t.cpu.gpr[reg::R8] = 0xffff_ffff_0000_0007;
    t.go().unwrap();
    assert_eq!((t.r(reg::RAX), t.r(reg::RDX)), (0, 12));
    assert_eq!(t.r(reg::RSI), 0); // 0xff + 0 + 1 wraps
    assert_eq!(t.r(reg::RDI), 0);
    assert_eq!(
        t.r(reg::R8),
        8,
        "carry from the 16-bit adc, upper half zeroed"
    );
}

#[test]
fn flag_instructions_pushf_popf_lahf_sahf() {
    let mut t = Run::new(64, |c| {
        c.cmp(eax, ebx)?; // 1 - 2: CF, SF, AF, PF
        c.lahf()?;
        c.mov(cl, ah)?;
        c.cmc()?;
        c.std()?;
        c.pushfq()?;
        c.pop(rdx)?;
        c.mov(ah, 0xd5)?;
        c.sahf()?;
        c.cld()?;
        c.push(0x0cd5u64 as i32)?;
        c.popfq()
    });
    t.cpu.gpr[reg::RAX] = 1;
    t.cpu.gpr[reg::RBX] = 2;
    t.go().unwrap();
    let cmp_flags = rflags::CF | rflags::SF | rflags::AF | rflags::PF;
    assert_eq!(t.r(reg::RCX) & 0xff, cmp_flags | 2);
    assert_eq!(t.r(reg::RDX), (cmp_flags & !rflags::CF) | rflags::DF | 2);
    // POPF at CPL 0 took every arithmetic flag and DF; IF came from the image (0x200 not set).
    assert_eq!(t.cpu.rflags, 0x0cd5 | 2);
}

#[test]
fn popf_at_cpl3_keeps_if_and_iopl() {
    let mut t = Run::new(64, |c| {
        c.push(0x3000 | 0x200 | 0x1)?; // IOPL 3, IF, CF
        c.popfq()
    });
    t.cpu.cs.dpl = 3;
    t.cpu.rflags = rflags::FIXED1 | rflags::IF;
    t.go().unwrap();
    assert_eq!(t.cpu.rflags, rflags::FIXED1 | rflags::IF | rflags::CF);
}

#[test]
fn conditional_loop_and_block_runner() {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.dec(rcx).unwrap();
    a.jne(top).unwrap();
    let bytes = a.assemble(CODE).unwrap();
    let mut mem = FlatMem::new(0, 0x10000);
    mem.write(CODE, &bytes).unwrap();
    let mut c = cpu(64);
    c.gpr[reg::RCX] = 10;
    // Decode the block once, run it repeatedly.
    let mut block = Vec::new();
    let mut probe = c.clone();
    for _ in 0..3 {
        let i = decode(&probe, &mut mem).unwrap();
        probe.rip = i.next_ip();
        block.push(i);
    }
    let mut runs = 0;
    while c.rip == CODE {
        let exit = run_block(&mut c, &mut mem, &block);
        assert_eq!((exit.executed, exit.exception), (3, None));
        runs += 1;
    }
    assert_eq!(runs, 10);
    assert_eq!(c.gpr[reg::RAX], 55);
    assert_ne!(c.rflags & rflags::ZF, 0);
}

#[test]
fn jrcxz_and_loop() {
    let mut t = Run::new(64, |c| {
        let mut top = c.create_label();
        let mut out = c.create_label();
        c.set_label(&mut top)?;
        c.inc(rax)?;
        c.loop_(top)?;
        c.jrcxz(out)?;
        c.ud2()?;
        c.set_label(&mut out)?;
        c.nop()
    });
    t.cpu.gpr[reg::RCX] = 4;
    t.go().unwrap();
    assert_eq!((t.r(reg::RAX), t.r(reg::RCX)), (4, 0));
}

#[test]
fn faults_and_traps() {
    // ud2: #UD, RIP unchanged.
    let mut t = Run::new(64, |c| c.ud2());
    assert_eq!(t.go(), Err(Exception::cpu(UD)));
    assert_eq!(t.cpu.rip, CODE);
    // int3: #BP is a trap, RIP after it.
    let mut t = Run::new(64, |c| c.int3());
    assert_eq!(t.go(), Err(Exception::cpu(BP)));
    assert_eq!(t.cpu.rip, CODE + 1);
    // Undecodable bytes (PUSH ES is invalid in 64-bit mode; F0 on a non-lockable op).
    for bytes in [&[0x06][..], &[0xf0, 0x90], &[0x0f, 0xff, 0xff, 0xff]] {
        let mut t = Run::bytes(64, bytes);
        assert_eq!(
            step(&mut t.cpu, &mut t.mem),
            Err(Exception::cpu(UD)),
            "{bytes:x?}"
        );
    }
    // An instruction that runs off the end of memory is a memory fault, not a panic.
    let mut mem = FlatMem::new(0, 0x1002);
    mem.write(0x1000, &[0x48, 0xb8]).unwrap(); // mov rax, imm64 cut short
    let mut c = cpu(64);
    assert!(matches!(step(&mut c, &mut mem), Err(Exception::Memory(_))));
    // Non-canonical data address: #GP(0); stack-relative: #SS(0); state unchanged.
    let gp = Exception::Cpu {
        vector: GP,
        error: Some(0),
    };
    let ssf = Exception::Cpu {
        vector: SS,
        error: Some(0),
    };
    let mut t = Run::new(64, |c| c.mov(qword_ptr(rbx), rax));
    t.cpu.gpr[reg::RBX] = 0x0000_8000_0000_0000;
    assert_eq!(t.go(), Err(gp));
    let mut t = Run::new(64, |c| c.push(rax));
    t.cpu.gpr[reg::RSP] = 0x0000_8000_0000_0008;
    let before = t.cpu.clone();
    assert_eq!(t.go(), Err(ssf));
    assert_eq!(t.cpu, before);
    // A jump or call to a non-canonical target faults at the branch, pushing nothing.
    let mut t = Run::new(64, |c| c.call(rbx));
    t.cpu.gpr[reg::RBX] = 0x1234_5678_9abc_def0;
    let before = t.cpu.clone();
    assert_eq!(t.go(), Err(gp));
    assert_eq!(t.cpu, before);
    // Memory that does not exist.
    let mut t = Run::new(64, |c| c.mov(rax, qword_ptr(0x20000)));
    assert!(matches!(t.go(), Err(Exception::Memory(_))));
    assert_eq!(t.cpu.rip, CODE);
}

#[test]
fn lazy_flags_survive_a_fault() {
    // The cmp's lazy flags are pending when the store faults; RFLAGS must show the cmp result.
    let mut t = Run::new(64, |c| {
        c.cmp(eax, ebx)?;
        c.add(qword_ptr(0x20000), 1)
    });
    t.cpu.gpr[reg::RAX] = 5;
    t.cpu.gpr[reg::RBX] = 5;
    let mut block = Vec::new();
    let mut probe = t.cpu.clone();
    for _ in 0..2 {
        let i = decode(&probe, &mut t.mem).unwrap();
        probe.rip = i.next_ip();
        block.push(i);
    }
    let exit = run_block(&mut t.cpu, &mut t.mem, &block);
    assert_eq!(exit.executed, 1);
    assert!(matches!(exit.exception, Some(Exception::Memory(_))));
    assert_eq!(t.cpu.rflags, rflags::FIXED1 | rflags::ZF | rflags::PF);
    assert_eq!(t.cpu.rip, block[1].ip());
}

#[test]
fn bit_test_memory_offsets_beyond_the_operand() {
    let mut t = Run::new(64, |c| {
        c.bts(dword_ptr(0x3010), ecx)?; // bit 100: dword at +12, bit 4
        c.bt(dword_ptr(0x3010), edx)?; // bit -1: dword at -4, bit 31
        c.btc(word_ptr(0x3010), 17)?; // immediate: modulo 16 -> bit 1
        c.setb(al)
    });
    t.cpu.gpr[reg::RCX] = 100;
    t.cpu.gpr[reg::RDX] = u64::MAX;
    t.mem.write(0x300c, &0x8000_0000u32.to_le_bytes()).unwrap();
    t.go().unwrap();
    assert_eq!(t.m64(0x3018) >> 32 & 0xffff_ffff, 0x10);
    assert_eq!(t.m64(0x3010) & 0xffff, 2);
    assert_eq!(t.r(reg::RAX) & 0xff, 0, "bit 1 was clear before btc");
}

#[test]
fn shift_by_zero_keeps_flags_and_rotate_mod_width() {
    let mut t = Run::new(64, |c| {
        c.cmp(eax, ebx)?; // sets CF
        c.shl(edx, cl)?; // cl = 32 -> masked to 0: flags kept, but still a 32-bit write
        c.rol(si, cl)?; // 16-bit rotate by 32 mod 16 = 0, but flags update (CF = bit 0)
        c.mov(edi, 0x81)?;
        c.ror(dil, 9)?; // 9 mod 8 = 1
        c.rcl(r8b, 9) // 9 mod 9 = 0: value and CF unchanged
    });
    t.cpu.gpr[reg::RAX] = 1;
    t.cpu.gpr[reg::RBX] = 2;
    t.cpu.gpr[reg::RCX] = 32;
    t.cpu.gpr[reg::RDX] = 0xffff_ffff_0000_0001;
    t.cpu.gpr[reg::RSI] = 0x1234_0002;
    t.cpu.gpr[reg::R8] = 0x5a;
    t.go().unwrap();
    assert_eq!(t.r(reg::RDX), 1);
    assert_eq!(t.r(reg::RSI), 0x1234_0002);
    assert_eq!(t.r(reg::RDI), 0xc0);
    assert_eq!(t.r(reg::R8), 0x5a);
    assert_ne!(
        t.cpu.rflags & rflags::CF,
        0,
        "ror 0x81 by 1: CF = new MSB = 1, kept by rcl 9"
    );
}

#[test]
fn protected_mode_32_bit_segments_and_stack() {
    let mut t = Run::new(32, |c| {
        c.push(eax)?;
        c.push(ax)?;
        c.pop(bx)?;
        c.mov(ecx, dword_ptr(0x100))?; // DS base applies outside 64-bit mode
        c.call(dword_ptr(0x104))
    });
    t.cpu.ds.base = 0x3000;
    t.cpu.gpr[reg::RAX] = 0xcafe_f00d;
    t.cpu.gpr[reg::RBX] = 0xffff_0000;
    t.mem.write(0x3100, &0x4444u32.to_le_bytes()).unwrap();
    t.mem.write(0x3104, &0x2000u32.to_le_bytes()).unwrap();
    t.end = 0x2000;
    t.go().unwrap();
    assert_eq!(t.r(reg::RBX), 0xffff_f00d);
    assert_eq!(t.r(reg::RCX), 0x4444);
    assert_eq!(t.r(reg::RSP), STACK - 8);
    assert_eq!(t.m64(STACK - 8) & 0xffff_ffff, 0x1000 + 1 + 2 + 2 + 6 + 6);
}

#[test]
fn real_mode_16_bit_addressing() {
    let mut t = Run::new(16, |c| {
        c.mov(ax, word_ptr(bx + si + 2))?;
        c.lea(dx, word_ptr(bx + si - 1))?; // wraps at 64 KiB
        c.push(ax)?;
        c.cwd()
    });
    t.cpu.ds = Segment::real_mode(0x300);
    t.cpu.ss = Segment::real_mode(0x0);
    t.cpu.gpr[reg::RBX] = 0xfff0;
    t.cpu.gpr[reg::RSI] = 0x10;
    t.mem.write(0x3002, &0x8123u16.to_le_bytes()).unwrap();
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x8123);
    assert_eq!(t.r(reg::RDX), 0xffff);
    assert_eq!(t.r(reg::RSP), STACK - 2);
}

#[test]
fn accumulator_sign_extensions() {
    let mut t = Run::new(64, |c| {
        c.cbw()?;
        c.cwde()?;
        c.cdqe()?;
        c.cqo()
    });
    t.cpu.gpr[reg::RAX] = 0x1234_5678_9abc_de80;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), u64::MAX - 0x7f);
    assert_eq!(t.r(reg::RDX), u64::MAX);
}

#[test]
fn system_instructions_stop_the_tier_before_any_change() {
    let mut t = Run::new(64, |c| c.cpuid());
    assert_eq!(t.go(), Err(Exception::System(iced_x86::Mnemonic::Cpuid)));
    assert_eq!(t.cpu.rip, CODE);
    let mut t = Run::new(64, |c| c.mov(ds, ax));
    assert_eq!(t.go(), Err(Exception::System(iced_x86::Mnemonic::Mov)));
    let mut t = Run::new(64, |c| c.call(fword_ptr(rax)));
    assert_eq!(t.go(), Err(Exception::System(iced_x86::Mnemonic::Call)));
    assert_eq!(t.cpu.rip, CODE);
}

#[test]
fn unimplemented_instructions_are_reported_by_name() {
    let mut t = Run::new(64, |c| c.vpaddd(ymm0, ymm1, ymm2));
    // The model does not advertise AVX: the decoder's CPUID gate makes it #UD.
    assert_eq!(t.go(), Err(Exception::cpu(UD)));
    assert_eq!(t.cpu.rip, CODE);
    // The semantics still name what they lack when handed such an instruction directly.
    let insn = iced_x86::Decoder::with_ip(64, &t.mem.bytes[CODE as usize..], CODE, 0).decode();
    let mut it = ringzero_translator::interp::Interp::new(&mut t.cpu, &mut t.mem);
    assert_eq!(
        it.execute(&insn),
        Err(Exception::Unimplemented(iced_x86::Mnemonic::Vpaddd))
    );
}

/// A 64-bit CPU at CPL 3 with CR0.AM set and RFLAGS.AC as given.
fn user_with_am(t: &mut Run, ac: bool) {
    t.cpu.cs.dpl = 3;
    t.cpu.cs.selector |= 3;
    t.cpu.ss.dpl = 3;
    t.cpu.ss.selector |= 3;
    t.cpu.cr0 |= ringzero_translator::state::ctl::CR0_AM;
    if ac {
        t.cpu.rflags |= rflags::AC;
    }
}

#[test]
fn alignment_check_needs_am_ac_and_cpl3() {
    let ac = Exception::Cpu {
        vector: ringzero_translator::sem::AC,
        error: Some(0),
    };
    let build = |c: &mut CodeAssembler| c.push(qword_ptr(rdi));
    // Misaligned quadword read at CPL 3 with AM and AC: #AC(0), nothing changed.
    let mut t = Run::new(64, build);
    user_with_am(&mut t, true);
    t.cpu.gpr[reg::RDI] = 0x3001;
    let before = t.cpu.clone();
    assert_eq!(t.go(), Err(ac));
    assert_eq!(t.cpu, before);
    // Without AC, at CPL 0, or aligned: no fault.
    for (cpl3, flag, rdi_value) in [
        (true, false, 0x3001),
        (false, true, 0x3001),
        (true, true, 0x3008),
    ] {
        let mut t = Run::new(64, build);
        if cpl3 {
            user_with_am(&mut t, flag);
        } else {
            t.cpu.cr0 |= ringzero_translator::state::ctl::CR0_AM;
            t.cpu.rflags |= rflags::AC;
        }
        t.cpu.gpr[reg::RDI] = rdi_value;
        t.go().unwrap();
        assert_eq!(t.r(reg::RSP), STACK - 8);
    }
    // The stack side: a push to a misaligned RSP faults before RSP moves; byte accesses never.
    let mut t = Run::new(64, |c| {
        c.mov(byte_ptr(rdi), 1)?;
        c.push(rax)
    });
    user_with_am(&mut t, true);
    t.cpu.gpr[reg::RDI] = 0x3001;
    t.cpu.gpr[reg::RSP] = STACK - 4;
    assert_eq!(t.go(), Err(ac));
    assert_eq!(t.r(reg::RSP), STACK - 4);
    assert_eq!(t.mem.bytes[0x3001], 1);
    // POPF setting AC makes the next access checked (AC is a run-time bit).
    let mut t = Run::new(64, |c| {
        c.push(0x40000)?;
        c.popfq()?;
        c.mov(eax, dword_ptr(rdi))
    });
    user_with_am(&mut t, false);
    t.cpu.gpr[reg::RDI] = 0x3002;
    assert_eq!(t.go(), Err(ac));
    assert_eq!(t.cpu.rip, t.end - 2);
}

#[test]
fn xadd_and_cmpxchg_known_answers() {
    // XADD: dst = sum, src = old dst, flags of the ADD; xadd r, r with one register keeps the sum.
    let mut t = Run::new(64, |c| {
        c.xadd(qword_ptr(rdi), rbx)?;
        c.xadd(ecx, ecx)
    });
    t.cpu.gpr[reg::RDI] = 0x3000;
    t.mem.write(0x3000, &u64::MAX.to_le_bytes()).unwrap();
    t.cpu.gpr[reg::RBX] = 1;
    t.cpu.gpr[reg::RCX] = 0xffff_ffff_8000_0000;
    t.go().unwrap();
    assert_eq!(t.m64(0x3000), 0);
    assert_eq!(t.r(reg::RBX), u64::MAX);
    assert_eq!(t.r(reg::RCX), 0);
    // 0x80000000 + 0x80000000: CF, OF, ZF, PF.
    let f = rflags::CF | rflags::OF | rflags::ZF | rflags::PF;
    assert_eq!(t.cpu.rflags & f, f);

    // CMPXCHG success: ZF, dst = src, accumulator untouched (upper half kept).
    let mut t = Run::new(64, |c| c.lock().cmpxchg(dword_ptr(rdi), ecx));
    t.cpu.gpr[reg::RDI] = 0x3000;
    t.mem.write(0x3000, &0x1234u32.to_le_bytes()).unwrap();
    t.cpu.gpr[reg::RAX] = 0xaaaa_bbbb_0000_1234;
    t.cpu.gpr[reg::RCX] = 0x5678;
    t.go().unwrap();
    assert_eq!(t.m64(0x3000) & 0xffff_ffff, 0x5678);
    assert_eq!(t.r(reg::RAX), 0xaaaa_bbbb_0000_1234);
    assert_ne!(t.cpu.rflags & rflags::ZF, 0);
    // Failure: accumulator = dst (zero-extended), flags of CMP acc, dst; a register destination
    // keeps all of its bits.
    let mut t = Run::new(64, |c| c.cmpxchg(r9d, r12d));
    t.cpu.gpr[reg::RAX] = 0xffff_ffff_ffff_ffff;
    t.cpu.gpr[reg::R9] = 0xffff_ffff_ffff_fff7;
    t.cpu.gpr[reg::R12] = 7;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0xffff_fff7);
    assert_eq!(t.r(reg::R9), 0xffff_ffff_ffff_fff7);
    assert_eq!(t.cpu.rflags & (rflags::ZF | rflags::CF), 0);
    // Byte form with a high-byte destination.
    let mut t = Run::new(64, |c| c.cmpxchg(ah, cl));
    t.cpu.gpr[reg::RAX] = 0x4242;
    t.cpu.gpr[reg::RCX] = 0x99;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x9942);
}

#[test]
fn cmpxchg8b_16b_known_answers() {
    let run16 = |addr: u64, mem_lo: u64, mem_hi: u64, acc: u64| {
        let mut t = Run::new(64, |c| c.lock().cmpxchg16b(xmmword_ptr(rdi)));
        t.cpu.gpr[reg::RDI] = addr;
        t.mem.write(addr & !7, &mem_lo.to_le_bytes()).unwrap();
        t.mem.write((addr & !7) + 8, &mem_hi.to_le_bytes()).unwrap();
        t.cpu.gpr[reg::RAX] = acc;
        t.cpu.gpr[reg::RDX] = 2;
        t.cpu.gpr[reg::RBX] = 3;
        t.cpu.gpr[reg::RCX] = 4;
        let r = t.go();
        (t, r)
    };
    let (mut t, r) = run16(0x3000, 1, 2, 1);
    r.unwrap();
    assert_eq!((t.m64(0x3000), t.m64(0x3008)), (3, 4));
    assert_ne!(t.cpu.rflags & rflags::ZF, 0);
    let (mut t, r) = run16(0x3000, 1, 5, 1);
    r.unwrap();
    assert_eq!((t.m64(0x3000), t.m64(0x3008)), (1, 5));
    assert_eq!((t.r(reg::RAX), t.r(reg::RDX)), (1, 5));
    assert_eq!(t.cpu.rflags & rflags::ZF, 0);
    // Not 16-byte aligned: #GP(0) even for an 8-aligned operand, nothing written.
    let (mut t, r) = run16(0x3008, 1, 2, 1);
    assert_eq!(
        r,
        Err(Exception::Cpu {
            vector: GP,
            error: Some(0)
        })
    );
    assert_eq!(t.m64(0x3008), 1);
    assert_eq!(t.cpu.rip, CODE);

    // CMPXCHG8B: EDX:EAX vs m64; failure loads EDX:EAX (zero-extended), only ZF changes.
    let mut t = Run::new(64, |c| c.cmpxchg8b(qword_ptr(rdi)));
    t.cpu.gpr[reg::RDI] = 0x3000;
    t.mem
        .write(0x3000, &0x1111_2222_3333_4444u64.to_le_bytes())
        .unwrap();
    t.cpu.gpr[reg::RAX] = 0xffff_0000_3333_4444;
    t.cpu.gpr[reg::RDX] = 0xffff_0000_1111_2222;
    t.cpu.gpr[reg::RBX] = 0xdead_0000_5555_6666;
    t.cpu.gpr[reg::RCX] = 0xdead_0000_7777_8888;
    t.cpu.rflags |= rflags::CF;
    t.go().unwrap();
    assert_eq!(t.m64(0x3000), 0x7777_8888_5555_6666);
    assert_eq!(t.r(reg::RAX), 0xffff_0000_3333_4444);
    assert_eq!(
        t.cpu.rflags & (rflags::ZF | rflags::CF),
        rflags::ZF | rflags::CF
    );
    t.cpu.rip = CODE;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x5555_6666);
    assert_eq!(t.r(reg::RDX), 0x7777_8888);
    assert_eq!(t.cpu.rflags & rflags::ZF, 0);
}

#[test]
fn movbe_known_answers() {
    let mut t = Run::new(64, |c| {
        c.movbe(eax, dword_ptr(rdi))?;
        c.movbe(bx, word_ptr(rdi))?;
        c.movbe(qword_ptr(rdi + 8), rcx)
    });
    t.cpu.gpr[reg::RDI] = 0x3000;
    t.mem.write(0x3000, &[0x11, 0x22, 0x33, 0x44]).unwrap();
    t.cpu.gpr[reg::RAX] = u64::MAX;
    t.cpu.gpr[reg::RBX] = u64::MAX;
    t.cpu.gpr[reg::RCX] = 0x0102_0304_0506_0708;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x1122_3344);
    assert_eq!(t.r(reg::RBX), 0xffff_ffff_ffff_1122);
    assert_eq!(t.m64(0x3008), 0x0807_0605_0403_0201);
}

#[test]
fn enter_levels_and_leave() {
    // Level 0: push rbp; rbp = frame; rsp -= alloc. LEAVE undoes it.
    let mut t = Run::new(64, |c| {
        c.enter(0x10u32, 0u32)?;
        c.mov(rbx, rsp)?;
        c.leave()
    });
    t.cpu.gpr[reg::RBP] = 0x1111;
    t.go().unwrap();
    assert_eq!(t.r(reg::RBX), STACK - 8 - 0x10);
    assert_eq!(t.m64(STACK - 8), 0x1111);
    assert_eq!((t.r(reg::RSP), t.r(reg::RBP)), (STACK, 0x1111));

    // Level 1: the frame pointer is pushed as well.
    let mut t = Run::new(64, |c| c.enter(8u32, 1u32));
    t.cpu.gpr[reg::RBP] = 0x2222;
    t.go().unwrap();
    let frame = STACK - 8;
    assert_eq!(t.m64(frame), 0x2222);
    assert_eq!(t.m64(frame - 8), frame);
    assert_eq!((t.r(reg::RBP), t.r(reg::RSP)), (frame, frame - 8 - 8));

    // Level 3: two enclosing frame pointers copied from [rbp-8], [rbp-16]; level mod 32.
    let mut t = Run::new(64, |c| c.enter(0u32, 35u32));
    t.cpu.gpr[reg::RBP] = 0x6000;
    t.mem.write(0x6000 - 8, &0xaaaau64.to_le_bytes()).unwrap();
    t.mem.write(0x6000 - 16, &0xbbbbu64.to_le_bytes()).unwrap();
    t.go().unwrap();
    assert_eq!(t.m64(frame), 0x6000);
    assert_eq!(t.m64(frame - 8), 0xaaaa);
    assert_eq!(t.m64(frame - 16), 0xbbbb);
    assert_eq!(t.m64(frame - 24), frame);
    assert_eq!((t.r(reg::RBP), t.r(reg::RSP)), (frame, frame - 24));

    // A copy source that overlaps the freshly pushed rBP reads the new bytes (SDM order).
    let mut t = Run::new(64, |c| c.enter(0u32, 2u32));
    t.cpu.gpr[reg::RBP] = STACK; // [rbp - 8] is the slot rBP itself is pushed to
    t.go().unwrap();
    assert_eq!(t.m64(frame - 8), STACK);

    // 32-bit mode, operand size 32.
    let mut t = Run::new(32, |c| c.enter(4u32, 2u32));
    t.cpu.gpr[reg::RBP] = 0x6000;
    t.mem.write(0x6000 - 4, &0xccccu32.to_le_bytes()).unwrap();
    t.go().unwrap();
    let f32 = STACK - 4;
    assert_eq!(t.m64(f32) & 0xffff_ffff, 0x6000);
    assert_eq!(t.m64(f32 - 4) & 0xffff_ffff, 0xcccc);
    assert_eq!(t.m64(f32 - 8) & 0xffff_ffff, f32);
    assert_eq!((t.r(reg::RBP), t.r(reg::RSP)), (f32, f32 - 8 - 4));

    // A fault on the lowest slot leaves everything unchanged (probed before the first store).
    let mut t = Run::new(64, |c| c.enter(0u32, 3u32));
    t.cpu.gpr[reg::RBP] = 0x6000;
    t.cpu.gpr[reg::RSP] = 0x10;
    let before = (t.cpu.clone(), t.mem.clone());
    assert!(matches!(t.go(), Err(Exception::Memory(_))));
    assert_eq!(t.cpu, before.0);
    assert!(t.mem == before.1);
}

#[test]
fn xlat_known_answers() {
    let mut t = Run::new(64, |c| {
        c.xlatb()?;
        c.mov(ecx, eax)?;
        c.mov(al, 0xff)?;
        c.xlatb()
    });
    t.cpu.gpr[reg::RBX] = 0x3000;
    t.cpu.gpr[reg::RAX] = 0xaabb_cc05;
    t.mem.bytes[0x3005] = 0x42;
    t.mem.bytes[0x30ff] = 0x99;
    t.go().unwrap();
    assert_eq!(t.r(reg::RCX), 0xaabb_cc42);
    assert_eq!(t.r(reg::RAX), 0xaabb_cc99);
}

#[test]
fn rep_strings_count_direction_and_overlap() {
    // rep movsb with count 0: nothing happens, flags untouched, RIP moves on.
    let mut t = Run::new(64, |c| c.rep().movsb());
    t.cpu.gpr[reg::RCX] = 0;
    t.cpu.gpr[reg::RSI] = 0x3000;
    t.cpu.gpr[reg::RDI] = 0x3100;
    t.cpu.rflags |= rflags::CF;
    let before = t.cpu.clone();
    t.go().unwrap();
    assert_eq!(t.cpu.rip, t.end);
    assert_eq!((t.cpu.gpr, t.cpu.rflags), (before.gpr, before.rflags));

    // One element per step; RIP stays on the instruction until the count runs out.
    let mut t = Run::new(64, |c| c.rep().movsb());
    t.mem.bytes[0x3000..0x3008].copy_from_slice(b"abcdefgh");
    t.cpu.gpr[reg::RCX] = 8;
    t.cpu.gpr[reg::RSI] = 0x3000;
    t.cpu.gpr[reg::RDI] = 0x3002; // overlapping forward copy smears the first two bytes
    step(&mut t.cpu, &mut t.mem).unwrap();
    assert_eq!((t.cpu.rip, t.r(reg::RCX)), (CODE, 7));
    t.go().unwrap();
    assert_eq!(&t.mem.bytes[0x3000..0x300a], b"ababababab");
    assert_eq!(
        (t.r(reg::RCX), t.r(reg::RSI), t.r(reg::RDI)),
        (0, 0x3008, 0x300a)
    );

    // DF set: rep stosd walks down; 32-bit address size (0x67) wraps EDI and zero-extends it.
    let mut t = Run::new(64, |c| {
        c.std()?;
        c.rep().stosd()?;
        c.cld()
    });
    t.cpu.gpr[reg::RAX] = 0x1122_3344;
    t.cpu.gpr[reg::RCX] = 2;
    t.cpu.gpr[reg::RDI] = 0x3008;
    t.go().unwrap();
    assert_eq!(t.m64(0x3004), 0x1122_3344_1122_3344);
    assert_eq!(t.r(reg::RDI), 0x3000);
    let mut t = Run::bytes(64, &[0x67, 0xf3, 0xaa]); // rep stosb with EDI/ECX
    t.cpu.gpr[reg::RDI] = 0xffff_ffff_0000_3000;
    t.cpu.gpr[reg::RCX] = 0xffff_ffff_0000_0002;
    t.cpu.gpr[reg::RAX] = 0x5a;
    t.go().unwrap();
    assert_eq!(&t.mem.bytes[0x3000..0x3002], &[0x5a, 0x5a]);
    assert_eq!((t.r(reg::RDI), t.r(reg::RCX)), (0x3002, 0));

    // lodsw merges into AX; repe cmpsb stops at the first difference; repne scasb at a match.
    let mut t = Run::new(64, |c| {
        c.lodsw()?;
        c.mov(rsi, 0x3000u64)?;
        c.mov(ecx, 8)?;
        c.repe().cmpsb()?;
        c.mov(r8, rcx)?;
        c.mov(rdi, 0x3000u64)?;
        c.mov(ecx, 8)?;
        c.mov(al, b'd' as u32)?;
        c.repne().scasb()
    });
    t.mem.bytes[0x3000..0x3008].copy_from_slice(b"abcdefgh");
    t.mem.bytes[0x3100..0x3108].copy_from_slice(b"abcXefgh");
    t.cpu.gpr[reg::RAX] = 0xffff_ffff_ffff_ffff;
    t.cpu.gpr[reg::RSI] = 0x3000;
    t.cpu.gpr[reg::RDI] = 0x3100;
    t.go().unwrap();
    assert_eq!(t.r(reg::R8), 4); // four compared, the fourth differs
    assert_eq!(t.r(reg::RSI), 0x3004);
    assert_eq!(t.r(reg::RCX), 4); // 'd' found as the fourth byte
    assert_eq!(t.r(reg::RDI), 0x3004);
    assert_ne!(t.cpu.rflags & rflags::ZF, 0);
    assert_eq!(t.r(reg::RAX) & 0xffff_ffff_ffff_ff00, 0xffff_ffff_ffff_6200);

    // A fault in iteration 3 leaves the registers as after iteration 2, RIP on the instruction.
    let mut t = Run::new(64, |c| c.rep().movsq());
    t.cpu.gpr[reg::RCX] = 5;
    t.cpu.gpr[reg::RSI] = 0x3000;
    t.cpu.gpr[reg::RDI] = 0xfff0;
    assert!(matches!(t.go(), Err(Exception::Memory(_))));
    assert_eq!(t.cpu.rip, CODE);
    assert_eq!(
        (t.r(reg::RCX), t.r(reg::RSI), t.r(reg::RDI)),
        (3, 0x3010, 0x10000)
    );
}

#[test]
fn bcd_adjustments_in_32_bit_mode() {
    const SZAPC: u64 = rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF;
    // SDM DAA example: 79h + 35h = AEh, DAA gives 14h with CF, AF, PF.
    let mut t = Run::new(32, |c| {
        c.add(al, bl)?;
        c.daa()
    });
    t.cpu.gpr[reg::RAX] = 0x79;
    t.cpu.gpr[reg::RBX] = 0x35;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x14);
    assert_eq!(t.cpu.rflags & SZAPC, rflags::AF | rflags::PF | rflags::CF);
    // SDM DAS example: 35h - 47h = EEh, DAS gives 88h with SF, AF, PF, CF.
    let mut t = Run::new(32, |c| {
        c.sub(al, bl)?;
        c.das()
    });
    t.cpu.gpr[reg::RAX] = 0x35;
    t.cpu.gpr[reg::RBX] = 0x47;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x88);
    assert_eq!(
        t.cpu.rflags & SZAPC,
        rflags::SF | rflags::AF | rflags::PF | rflags::CF
    );
    // AAA: 9 + 8 = 11h with AF, adjusted to AX = 0107h; AAS: 03h - 08h in AX = 0203h -> 0105h.
    let mut t = Run::new(32, |c| {
        c.add(al, bl)?;
        c.aaa()?;
        c.mov(ecx, eax)?;
        c.mov(eax, 0x0203)?;
        c.sub(al, 8)?;
        c.aas()
    });
    t.cpu.gpr[reg::RAX] = 9;
    t.cpu.gpr[reg::RBX] = 8;
    t.go().unwrap();
    assert_eq!(t.r(reg::RCX), 0x0107);
    assert_eq!(t.r(reg::RAX), 0x0105);
    assert_eq!(
        t.cpu.rflags & (rflags::AF | rflags::CF),
        rflags::AF | rflags::CF
    );
    // AAA without adjustment clears CF and AF and only masks AL.
    let mut t = Run::new(32, |c| {
        c.stc()?;
        c.aaa()
    });
    t.cpu.gpr[reg::RAX] = 0x1234_5634;
    t.go().unwrap();
    assert_eq!(t.r(reg::RAX), 0x1234_5604);
    assert_eq!(t.cpu.rflags & (rflags::AF | rflags::CF), 0);
    // AAM 63 -> 0603h; AAD back to 3Fh; AAM with base 0 is #DE and changes nothing.
    let mut t = Run::new(32, |c| {
        c.aam(10)?;
        c.mov(ecx, eax)?;
        c.aad(10)?;
        c.aam(0)
    });
    t.cpu.gpr[reg::RAX] = 0xaaaa_003f;
    assert_eq!(t.go(), Err(Exception::cpu(DE)));
    assert_eq!(t.r(reg::RCX), 0xaaaa_0603);
    assert_eq!(t.r(reg::RAX), 0xaaaa_003f);
    assert_eq!(t.cpu.rflags & SZAPC, rflags::PF); // 3Fh: six bits set
                                                  // 64-bit mode: the opcodes are #UD.
    for op in [0x27u8, 0x2f, 0x37, 0x3f] {
        let mut t = Run::bytes(64, &[op]);
        assert_eq!(t.go(), Err(Exception::cpu(UD)), "{op:#x}");
    }
    let mut t = Run::bytes(64, &[0xd4, 0x0a]);
    assert_eq!(t.go(), Err(Exception::cpu(UD)));
}

#[test]
fn pushad_and_popad_save_and_restore_every_register() {
    let mut t = Run::new(32, |c| {
        c.pushad()?;
        c.xor(eax, eax)?;
        c.xor(ebx, ebx)?;
        c.mov(ebp, 0x77)?;
        c.popad()
    });
    for (i, v) in [1u64, 2, 3, 4, 0, 6, 7, 8].iter().enumerate() {
        if i != reg::RSP {
            t.cpu.gpr[i] = *v;
        }
    }
    let top = t.r(reg::RSP);
    t.end = CODE + 1;
    t.go().unwrap();
    assert_eq!(t.r(reg::RSP), top - 32);
    // Pushed in order EAX, ECX, EDX, EBX, original ESP, EBP, ESI, EDI: EDI is lowest.
    let mut b = [0u8; 32];
    t.mem.read(top - 32, &mut b).unwrap();
    let words: Vec<u32> = b
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, [8, 7, 6, top as u32, 4, 3, 2, 1]);
    t.end = CODE + 1 + 2 + 2 + 5 + 1;
    t.go().unwrap();
    assert_eq!(t.r(reg::RSP), top);
    assert_eq!(
        (t.r(reg::RAX), t.r(reg::RBX), t.r(reg::RBP)),
        (1, 4, 6),
        "popad restores what pushad saved"
    );
}

#[test]
fn prefetch_hints_never_touch_memory() {
    let mut t = Run::new(64, |c| {
        c.prefetchw(byte_ptr(rax))?;
        c.endbr64()?;
        c.nop()
    });
    // Unbacked address: a real access would fault; a hint must not.
    t.cpu.gpr[reg::RAX] = 0xdead_0000_0000;
    t.end = CODE + 3 + 4;
    t.go().unwrap();
}

#[test]
fn salc_sets_al_from_carry_outside_64_bit_mode() {
    let mut t = Run::new(32, |c| {
        c.stc()?;
        c.db(&[0xd6])?; // salc
        c.mov(bl, al)?;
        c.clc()?;
        c.db(&[0xd6])
    });
    t.cpu.gpr[reg::RAX] = 0x1234_5600;
    t.end = CODE + 1 + 1 + 2 + 1 + 1;
    t.go().unwrap();
    assert_eq!(t.r(reg::RBX) & 0xff, 0xff);
    assert_eq!(t.r(reg::RAX), 0x1234_5600, "only AL changes");
}

#[test]
fn cli_runs_in_the_tiers_with_the_iopl_rule() {
    // CPL 0: IF cleared.
    let mut t = Run::new(64, |c| c.cli());
    t.cpu.rflags |= rflags::IF;
    t.end = CODE + 1;
    t.go().unwrap();
    assert_eq!(t.cpu.rflags & rflags::IF, 0);
    // CPL 3 with IOPL 0: #GP(0), nothing changes.
    let mut t = Run::new(64, |c| c.cli());
    user_with_am(&mut t, false);
    t.cpu.rflags |= rflags::IF;
    let before = t.cpu.clone();
    assert_eq!(
        t.go(),
        Err(Exception::Cpu {
            vector: 13,
            error: Some(0)
        })
    );
    assert_eq!(t.cpu, before);
    // CPL 3 with IOPL 3: allowed.
    let mut t = Run::new(64, |c| c.cli());
    user_with_am(&mut t, false);
    t.cpu.rflags |= rflags::IF | rflags::IOPL;
    t.end = CODE + 1;
    t.go().unwrap();
    assert_eq!(t.cpu.rflags & rflags::IF, 0);
}

#[test]
fn segment_register_reads_run_in_the_tiers() {
    let mut t = Run::new(64, |c| {
        c.mov(ax, ds)?;
        c.mov(ecx, fs)?;
        c.mov(rdx, cs)?;
        c.mov(word_ptr(rbx), gs)?;
        c.nop()
    });
    t.cpu.ds.selector = 0x2b;
    t.cpu.fs.selector = 0x53;
    t.cpu.gs.selector = 0x1234;
    t.cpu.gpr[reg::RAX] = 0xffff_ffff_ffff_ffff;
    t.cpu.gpr[reg::RCX] = 0xffff_ffff_ffff_ffff;
    t.cpu.gpr[reg::RBX] = STACK - 0x100;
    t.mem.write(STACK - 0x100, &[0xaa; 4]).unwrap();
    t.end = CODE + 3 + 2 + 3 + 3;
    t.go().unwrap();
    assert_eq!(
        t.r(reg::RAX),
        0xffff_ffff_ffff_002b,
        "16-bit form keeps the upper bits"
    );
    assert_eq!(t.r(reg::RCX), 0x53, "32-bit form zero-extends");
    assert_eq!(t.r(reg::RDX), u64::from(t.cpu.cs.selector));
    let mut b = [0u8; 4];
    t.mem.read(STACK - 0x100, &mut b).unwrap();
    assert_eq!(b, [0x34, 0x12, 0xaa, 0xaa], "memory takes 16 bits");
}
