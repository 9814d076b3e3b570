# systest fpu: x87 and SSE2 in long mode (README.md, "fpu"): known-answer 80-bit results
# (1/3 under every rounding and precision control, fsqrt, fist rounding), FXSAVE/FXRSTOR round
# trip, SSE2 integer and double ops, #NM with CR0.TS, #MF, #XM and #UD for unmasked SIMD
# exceptions.

        .include "../systests/systest.inc"

        .equ FCW_DEFAULT, 0x037F            # after finit: extended precision, nearest, masked

# R3CHECK name, expected, got: for code at CPL 3, which cannot print (no I/O there on PVM):
# stores expected and got into a results entry (name, expected, got) that report_results
# checks at CPL 0. Clobbers rax.
.macro R3CHECK name, expected, got
        .pushsection .rodata.names, "a"
.Lrname\@: .asciz "\name"
        .popsection
        .pushsection .data.results, "aw"
        .balign 8
.Lres\@: .quad .Lrname\@, 0, 0
        .popsection
        mov rax, \got
        mov [.Lres\@ + 16], rax
        mov rax, \expected
        mov [.Lres\@ + 8], rax
.endm
.macro R3CHECKD name, expected, got
        .pushsection .rodata.names, "a"
.Lrname\@: .asciz "\name"
        .popsection
        .pushsection .data.results, "aw"
        .balign 8
.Lres\@: .quad .Lrname\@, 0, 0
        .popsection
        mov eax, \got
        mov [.Lres\@ + 16], rax
        mov eax, \expected
        mov [.Lres\@ + 8], rax
.endm

# X87_THIRD prefix, fcw, sign, exp, mant: st0 = +-1/3 under fcw, stored as 80 bits and checked.
.macro X87_THIRD prefix, fcw, neg, exp, mant
        mov word ptr [cw], \fcw
        fninit
        fldcw [cw]
        fld1
        .if \neg
        fchs
        .endif
        fild dword ptr [three]
        fdivp st(1), st
        fstp tbyte ptr [ext]
        mov rdx, \mant
        R3CHECK "\prefix\().mantissa", rdx, [ext]
        movzx eax, word ptr [ext + 8]
        R3CHECK "\prefix\().sign-exponent", \exp, rax
.endm

# FIST_CHECK prefix, fcw, double, expected: fistp of a double under fcw.
.macro FIST_CHECK prefix, fcw, value, expected
        mov word ptr [cw], \fcw
        fninit
        fldcw [cw]
        mov rax, \value
        mov [dbl], rax
        fld qword ptr [dbl]
        fistp dword ptr [i32]
        movsxd rax, dword ptr [i32]
        R3CHECK "\prefix", \expected, rax
.endm

        .section .text, "ax"
        .code32
main32:
        ENTER_LONG
        mov rax, cr0
        and eax, ~(CR0_EM | CR0_TS)
        or eax, CR0_MP | CR0_NE
        mov cr0, rax
        mov rax, cr4
        or eax, CR4_OSFXSR | CR4_OSXMMEXCPT
        mov cr4, rax
        # The known-answer part runs at CPL 3 and reports through R3CHECK: it needs no
        # privilege, and on PVM ring-0 x87 code cannot run at all (KVM's emulator has no x87).
        ARM64 1f
        RING3_64 known_answers
1:      mov rax, offset known_answers_end
        CHECK64 "fpu.ring3-part-completed", rax, [exc_eip]
        call report_results
        jmp exceptions

# report_results: check64 for every R3CHECK entry, in order.
report_results:
        mov rbx, offset __results_start
1:      cmp rbx, offset __results_end
        jae 2f
        mov rsi, [rbx]
        mov rdx, [rbx + 8]
        mov rax, [rbx + 16]
        call check64
        add rbx, 24
        jmp 1b
2:      ret

known_answers:

        # ------------------------------------------------------------ x87 known answers
        X87_THIRD x87.third.nearest, FCW_DEFAULT, 0, 0x3FFD, 0xAAAAAAAAAAAAAAAB
        X87_THIRD x87.third.down, 0x077F, 0, 0x3FFD, 0xAAAAAAAAAAAAAAAA
        X87_THIRD x87.third.up, 0x0B7F, 0, 0x3FFD, 0xAAAAAAAAAAAAAAAB
        X87_THIRD x87.third.chop, 0x0F7F, 0, 0x3FFD, 0xAAAAAAAAAAAAAAAA
        X87_THIRD x87.minus-third.down, 0x077F, 1, 0xBFFD, 0xAAAAAAAAAAAAAAAB
        X87_THIRD x87.minus-third.up, 0x0B7F, 1, 0xBFFD, 0xAAAAAAAAAAAAAAAA
        X87_THIRD x87.third.pc-single, 0x007F, 0, 0x3FFD, 0xAAAAAB0000000000
        X87_THIRD x87.third.pc-double, 0x027F, 0, 0x3FFD, 0xAAAAAAAAAAAAA800

        fninit
        fild dword ptr [two]
        fsqrt
        fstp tbyte ptr [ext]
        mov rdx, 0xB504F333F9DE6484
        R3CHECK "x87.fsqrt2.mantissa", rdx, [ext]
        movzx eax, word ptr [ext + 8]
        R3CHECK "x87.fsqrt2.sign-exponent", 0x3FFF, rax
        # fsqrt of -1: invalid, masked: the default QNaN (real indefinite), IE set.
        fninit
        fld1
        fchs
        fsqrt
        fstp tbyte ptr [ext]
        mov rdx, 0xC000000000000000
        R3CHECK "x87.fsqrt-minus-1.indefinite-mantissa", rdx, [ext]
        movzx eax, word ptr [ext + 8]
        R3CHECK "x87.fsqrt-minus-1.indefinite-exponent", 0xFFFF, rax
        fnstsw ax
        and eax, 1
        R3CHECK "x87.fsqrt-minus-1.ie", 1, rax

        FIST_CHECK x87.fist.nearest-2.5, FCW_DEFAULT, 0x4004000000000000, 2
        FIST_CHECK x87.fist.nearest-3.5, FCW_DEFAULT, 0x400C000000000000, 4
        FIST_CHECK x87.fist.nearest-minus-2.5, FCW_DEFAULT, 0xC004000000000000, -2
        FIST_CHECK x87.fist.down-minus-2.5, 0x077F, 0xC004000000000000, -3
        FIST_CHECK x87.fist.up-2.1, 0x0B7F, 0x4000CCCCCCCCCCCD, 3
        FIST_CHECK x87.fist.chop-minus-2.7, 0x0F7F, 0xC00599999999999A, -2
        # Out of range for 32 bits, masked invalid: the integer indefinite 0x80000000.
        FIST_CHECK x87.fist.overflow-indefinite, FCW_DEFAULT, 0x41F0000000000000, -0x80000000

        # ------------------------------------------------------------ FXSAVE / FXRSTOR
        fninit
        mov word ptr [cw], 0x027F
        fldcw [cw]
        fild dword ptr [two]
        fld1
        fild dword ptr [three]
        fdivp st(1), st                     # st0 = 1/3 (double precision), st1 = 2
        mov dword ptr [mxcsr], 0x3F80       # all masked, round down
        ldmxcsr [mxcsr]
        movdqa xmm0, [pattern0]
        movdqa xmm15, [pattern1]
        fxsave64 [fxarea]
        movzx eax, word ptr [fxarea]
        R3CHECK "fxsave.fcw", 0x027F, rax
        movzx eax, word ptr [fxarea + 2]
        and eax, 0x3800
        R3CHECK "fxsave.fsw-top-6", 0x3000, rax
        movzx eax, byte ptr [fxarea + 4]
        R3CHECK "fxsave.abridged-tags", 0xC0, rax
        mov eax, [fxarea + 24]
        R3CHECK "fxsave.mxcsr", 0x3F80, rax
        mov rdx, 0xAAAAAAAAAAAAA800
        R3CHECK "fxsave.st0-mantissa", rdx, [fxarea+32]
        movzx eax, word ptr [fxarea + 40]
        R3CHECK "fxsave.st0-exponent", 0x3FFD, rax
        movzx eax, word ptr [fxarea + 56]
        R3CHECK "fxsave.st1-exponent", 0x4000, rax
        mov rdx, [pattern0]
        R3CHECK "fxsave.xmm0-low", rdx, [fxarea+160]
        mov rdx, [pattern1 + 8]
        R3CHECK "fxsave.xmm15-high", rdx, [fxarea+408]
        # Clobber everything, restore, compare.
        fninit
        pxor xmm0, xmm0
        pxor xmm15, xmm15
        mov dword ptr [mxcsr], 0x1F80
        ldmxcsr [mxcsr]
        fxrstor64 [fxarea]
        fnstcw [cw]
        movzx eax, word ptr [cw]
        R3CHECK "fxrstor.fcw", 0x027F, rax
        stmxcsr [mxcsr]
        mov eax, [mxcsr]
        R3CHECK "fxrstor.mxcsr", 0x3F80, rax
        movq rax, xmm0
        R3CHECK "fxrstor.xmm0-low", [pattern0], rax
        psrldq xmm15, 8
        movq rax, xmm15
        R3CHECK "fxrstor.xmm15-high", [pattern1+8], rax
        fstp tbyte ptr [ext]
        mov rdx, 0xAAAAAAAAAAAAA800
        R3CHECK "fxrstor.st0", rdx, [ext]
        fistp dword ptr [i32]
        R3CHECKD "fxrstor.st1", 2, [i32]
        mov dword ptr [mxcsr], 0x1F80
        ldmxcsr [mxcsr]

        # ------------------------------------------------------------ SSE2 integer
        movdqa xmm0, [v_dwords]
        paddd xmm0, [v_ones]
        movq rax, xmm0
        mov rdx, 0x0000000300000002
        R3CHECK "sse2.paddd-low", rdx, rax
        psrldq xmm0, 8
        movq rax, xmm0
        mov rdx, 0x8000000000000004
        R3CHECK "sse2.paddd-high-wraps", rdx, rax
        movdqa xmm1, [v_bytes10]
        psubusb xmm1, [v_bytes20]
        movq rax, xmm1
        R3CHECK "sse2.psubusb-saturates-at-0", 0, rax
        movdqa xmm1, [v_words7fff]
        paddsw xmm1, [v_wordsone]
        movq rax, xmm1
        mov rdx, 0x7FFF7FFF7FFF7FFF
        R3CHECK "sse2.paddsw-saturates", rdx, rax
        movdqa xmm1, [v_allones]
        pmuludq xmm1, xmm1
        movq rax, xmm1
        mov rdx, 0xFFFFFFFE00000001
        R3CHECK "sse2.pmuludq", rdx, rax
        pshufd xmm1, [v_dwords], 0x1B       # reverse the dwords
        movq rax, xmm1
        mov rdx, 0x000000037FFFFFFF
        R3CHECK "sse2.pshufd-reverse", rdx, rax
        movdqa xmm1, [v_pack]
        packsswb xmm1, xmm1
        movd eax, xmm1
        R3CHECK "sse2.packsswb", 0xFB057F80, rax
        movdqa xmm1, [v_bytes10]
        pcmpeqb xmm1, [v_cmp]
        pmovmskb eax, xmm1
        R3CHECK "sse2.pcmpeqb-pmovmskb", 0x8001, rax

        # ------------------------------------------------------------ SSE2 double
        movsd xmm0, [d_1_5]
        addsd xmm0, [d_2_25]
        movq rax, xmm0
        mov rdx, 0x400E000000000000
        R3CHECK "sse2.addsd", rdx, rax
        movsd xmm0, [d_1]
        divsd xmm0, [d_3]
        movq rax, xmm0
        mov rdx, 0x3FD5555555555555
        R3CHECK "sse2.divsd-third", rdx, rax
        sqrtsd xmm0, [d_2]
        movq rax, xmm0
        mov rdx, 0x3FF6A09E667F3BCD
        R3CHECK "sse2.sqrtsd-2", rdx, rax
        movapd xmm0, [v_pd_a]
        mulpd xmm0, [v_pd_b]
        movq rax, xmm0
        mov rdx, 0x4020000000000000         # 2 * 4 = 8
        R3CHECK "sse2.mulpd-low", rdx, rax
        psrldq xmm0, 8
        movq rax, xmm0
        mov rdx, 0x402E000000000000         # 3 * 5 = 15
        R3CHECK "sse2.mulpd-high", rdx, rax
        cvttsd2si eax, [d_m2_7]
        movsxd rax, eax
        R3CHECK "sse2.cvttsd2si-truncates", -2, rax
        cvtsd2si eax, [d_m2_5]
        movsxd rax, eax
        R3CHECK "sse2.cvtsd2si-nearest-even", -2, rax
        mov dword ptr [mxcsr], 0x3F80       # round down
        ldmxcsr [mxcsr]
        cvtsd2si eax, [d_m2_5]
        movsxd rax, eax
        R3CHECK "sse2.cvtsd2si-round-down", -3, rax
        mov dword ptr [mxcsr], 0x1F80
        ldmxcsr [mxcsr]
        movsd xmm0, [d_nan]
        ucomisd xmm0, xmm0
        pushfq
        pop rax
        and eax, 0x45                       # ZF PF CF
        R3CHECK "sse2.ucomisd-nan-unordered", 0x45, rax
known_answers_end:
        ud2

# ---------------------------------------------------------------- exceptions
# Each faulting instruction runs at CPL 3 (a stub ending in ud2); the handler resumes at CPL 0.
exceptions:
        PVM_SKIP nm.ts, "PVM ignores the guest's CR0.TS at CPL 3", 9f
        mov rax, cr0
        or eax, CR0_TS
        mov cr0, rax
        ARM64 1f
        RING3_64 nm_x87
1:      CHECK64 "nm.x87.vector", 7, [exc_vector]
        mov rax, offset nm_x87
        CHECK64 "nm.x87.rip", rax, [exc_eip]
        ARM64 1f
        RING3_64 nm_sse
1:      CHECK64 "nm.sse.vector", 7, [exc_vector]
        mov rax, offset nm_sse
        CHECK64 "nm.sse.rip", rax, [exc_eip]
        ARM64 1f
        RING3_64 nm_wait
1:      CHECK64 "nm.fwait-with-mp.vector", 7, [exc_vector]
9:      clts
        ARM64 1f
        RING3_64 no_nm
1:      mov rax, offset no_nm_end
        CHECK64 "nm.clts-then-no-fault", rax, [exc_eip]

        # #MF (CR0.NE): a masked-off ZE is pending after fdivp and taken at the next fwait.
        ARM64 1f
        RING3_64 mf_code
1:      CHECK64 "mf.vector", 16, [exc_vector]
        mov rax, offset mf_wait
        CHECK64 "mf.rip-is-next-wait", rax, [exc_eip]
        ARM64 1f
        RING3_64 mf_status
1:      movzx eax, word ptr [fsw]
        and eax, 0x84                       # ES, ZE
        CHECK64 "mf.fsw-es-ze", 0x84, rax

        # #XM with CR4.OSXMMEXCPT, #UD without it.
        ARM64 1f
        RING3_64 xm_code
1:      CHECK64 "xm.vector", 19, [exc_vector]
        mov rax, offset xm_div
        CHECK64 "xm.rip", rax, [exc_eip]
        ARM64 1f
        RING3_64 xm_status
1:      mov eax, [mxcsr]
        and eax, 4
        CHECK64 "xm.mxcsr-ze-flag", 4, rax
        PVM_SKIP xm.no-osxmmexcpt, "PVM ignores the guest's CR4.OSXMMEXCPT at CPL 3", 9f
        mov rax, cr4
        and eax, ~CR4_OSXMMEXCPT
        mov cr4, rax
        ARM64 1f
        RING3_64 xm_code
1:      CHECK64 "xm.without-osxmmexcpt-is-ud", 6, [exc_vector]
        mov rax, offset xm_div
        CHECK64 "xm.without-osxmmexcpt-rip", rax, [exc_eip]
9:      jmp finish64

nm_x87: fld1
        ud2
nm_sse: movaps xmm0, xmm1
        ud2
nm_wait: fwait                              # MP = 1: wait faults too
        ud2
no_nm:  fninit
        fld1
        fstp st(0)
no_nm_end:
        ud2
mf_code:
        fninit
        fldcw [cw_unmask_ze]
        fld1
        fldz
        fdivp st(1), st
mf_wait: fwait
        ud2
mf_status:
        fnstsw [fsw]
        fnclex
        fninit
        ud2
xm_code:
        ldmxcsr [mxcsr_unmask_ze]
        movsd xmm0, [d_1]
        xorpd xmm1, xmm1
xm_div: divsd xmm0, xmm1
        ud2
xm_status:
        stmxcsr [mxcsr]
        ldmxcsr [mxcsr_default]
        ud2

        .section .rodata, "a"
        .balign 16
pattern0:       .quad 0x8899AABBCCDDEEFF, 0x0011223344556677
pattern1:       .quad 0x0123456789ABCDEF, 0xFEDCBA9876543210
v_dwords:       .long 1, 2, 3, 0x7FFFFFFF
v_ones:         .long 1, 1, 1, 1
v_bytes10:      .fill 16, 1, 0x10
v_bytes20:      .fill 16, 1, 0x20
v_words7fff:    .fill 8, 2, 0x7FFF
v_wordsone:     .fill 8, 2, 1
v_allones:      .quad -1, -1
v_pack:         .short -300, 300, 5, -5, 0, 0, 0, 0
v_cmp:          .byte 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10
v_pd_a:         .double 2.0, 3.0
v_pd_b:         .double 4.0, 5.0
d_1:            .double 1.0
d_2:            .double 2.0
d_3:            .double 3.0
d_1_5:          .double 1.5
d_2_25:         .double 2.25
d_m2_7:         .double -2.7
d_m2_5:         .double -2.5
d_nan:          .quad 0x7FF8000000000000
mxcsr_unmask_ze: .long 0x1F80 & ~0x200
mxcsr_default:  .long 0x1F80
cw_unmask_ze:   .word FCW_DEFAULT & ~4
two:            .long 2
three:          .long 3

        .section .data, "aw"
        .balign 16
ext:            .skip 16
dbl:            .quad 0
i32:            .long 0
mxcsr:          .long 0
cw:             .word 0
fsw:            .word 0

        .section .bss, "aw", @nobits
        .balign 16
fxarea:         .skip 512

        .section .note.GNU-stack, "", @progbits
