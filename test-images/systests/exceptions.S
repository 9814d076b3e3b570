# systest exceptions: exception delivery in 32-bit protected mode and in 64-bit long mode
# (README.md, "exceptions"): vector, error code, pushed (R/E)IP, CS, (R/E)FLAGS, SS:(R/E)SP, CR2,
# the stack the handler ran on (TSS ESP0/RSP0, IST1), and #DF from a not-present #GP gate.

        .include "../systests/systest.inc"

        .equ FLAGS_SET, 0x8C7               # CF PF ZF SF OF + bit 1, loaded before a fault
        .equ RF, 0x10000                    # RF is masked out: Intel sets it in fault frames
        .equ BAD_SEL, 0x1000                # beyond the GDT limit
        .equ PF_PAGE32, 0x1F0000            # identity page unmapped for the 32-bit #PF checks
        .equ NONCANON, 0x0000800000000000
        .equ NX_PAGE, WINDOW + 0x2000       # window page 2: user, NX

# EXPECT32 prefix, vector, error, eip: checks the recorded vector, error code, EIP and CS
# (SEL_CODE32) of the last exception.
.macro EXPECT32 prefix, vector, error, eip, cs=SEL_CODE32
        CHECK "\prefix\().vector", \vector, [exc_vector]
        CHECK "\prefix\().error", \error, [exc_error]
        mov ecx, offset \eip
        CHECK "\prefix\().eip", ecx, [exc_eip]
        CHECK "\prefix\().cs", \cs, [exc_cs]
.endm
.macro EXPECT64 prefix, vector, error, rip, cs=SEL_CODE64
        CHECK64 "\prefix\().vector", \vector, [exc_vector]
        CHECK64 "\prefix\().error", \error, [exc_error]
        mov rdx, offset \rip
        CHECK64 "\prefix\().rip", rdx, [exc_eip]
        CHECK64 "\prefix\().cs", \cs, [exc_cs]
.endm
# FLAGS32 prefix / FLAGS64 prefix: the pushed flags (RF masked) are FLAGS_SET.
.macro FLAGS32 prefix
        mov eax, [exc_eflags]
        and eax, ~RF
        CHECK "\prefix\().eflags", FLAGS_SET, eax
.endm
.macro FLAGS64 prefix
        mov rax, [exc_eflags]
        and eax, ~RF
        CHECK64 "\prefix\().rflags", FLAGS_SET, rax
.endm

        .section .text, "ax"
        .code32
main32:
        # ---------------------------------------------------------------- 32-bit PM, CPL 0
        ARM32 1f
        mov eax, 1
        xor edx, edx
        xor ecx, ecx
        push FLAGS_SET
        popfd
de32:   div ecx
        DISARM
1:      EXPECT32 pm32.de, 0, NOERR, de32
        FLAGS32 pm32.de
        mov ecx, esp
        CHECK "pm32.de.esp", ecx, [exc_esp]

        ARM32 1f
ud32:   ud2
        DISARM
1:      EXPECT32 pm32.ud, 6, NOERR, ud32

        PVM_SKIP pm32.bp-trap, "PVM cannot emulate INT n in 32-bit ring 0", 2f
        ARM32 1f
        int3
bp32:   DISARM
1:      EXPECT32 pm32.bp-trap, 3, NOERR, bp32
2:

        PVM_SKIP pm32.of-trap, "PVM cannot emulate INTO in 32-bit ring 0", 2f
        ARM32 1f
        mov al, 0x7F
        add al, 1                           # OF = 1
        into
of32:   DISARM
1:      EXPECT32 pm32.of-trap, 4, NOERR, of32
2:

        ARM32 1f
        xor eax, eax                        # OF = 0: into does nothing
        into
        mov dword ptr [exc_vector], 0x1234
        DISARM
1:      CHECK "pm32.into-of-clear-no-exception", 0x1234, [exc_vector]

        ARM32 1f
        mov eax, BAD_SEL
gpsel32: mov ds, eax
        DISARM
1:      EXPECT32 pm32.gp-selector-beyond-gdt, 13, BAD_SEL, gpsel32

        ARM32 1f
        mov eax, SEL_UDATA | 3
gpss32: mov ss, eax                         # RPL != CPL for SS
        DISARM
1:      EXPECT32 pm32.gp-ss-rpl, 13, SEL_UDATA, gpss32

        ARM32 1f
        mov eax, SEL_NPDATA
np32:   mov es, eax
        DISARM
1:      EXPECT32 pm32.np-data, 11, SEL_NPDATA, np32
        mov eax, SEL_DATA
        mov es, eax

        ARM32 1f
npjmp32: ljmp SEL_NPCODE, offset 1f
        DISARM
1:      EXPECT32 pm32.np-far-jmp, 11, SEL_NPCODE, npjmp32

        ARM32 1f
        mov eax, SEL_NPDATA
ss32:   mov ss, eax
        DISARM
1:      EXPECT32 pm32.ss-not-present, 12, SEL_NPDATA, ss32

        # #PF with 32-bit PAE paging: one identity page made not present, then read-only.
        PVM_SKIP pm32.pf, "PVM cannot enable paging outside long mode", 2f
        mov byte ptr [pt0 + (PF_PAGE32 >> 12) * 8], 0
        mov eax, cr4
        or eax, CR4_PAE
        mov cr4, eax
        mov eax, offset pdpt_pae32
        mov cr3, eax
        mov eax, cr0
        or eax, CR0_PG
        mov cr0, eax
        ARM32 1f
pfr32:  mov eax, [PF_PAGE32 + 0x123]
        DISARM
1:      EXPECT32 pm32.pf-not-present-read, 14, 0, pfr32
        CHECK "pm32.pf-not-present-read.cr2", PF_PAGE32 + 0x123, [exc_cr2]
        ARM32 1f
pfw32:  mov dword ptr [PF_PAGE32 + 0xFFC], 1
        DISARM
1:      EXPECT32 pm32.pf-not-present-write, 14, 2, pfw32
        CHECK "pm32.pf-not-present-write.cr2", PF_PAGE32 + 0xFFC, [exc_cr2]
        mov byte ptr [pt0 + (PF_PAGE32 >> 12) * 8], PTE_P | PTE_U  # read-only
        invlpg [PF_PAGE32]
        mov eax, cr0
        or eax, CR0_WP
        mov cr0, eax
        ARM32 1f
pfro32: mov dword ptr [PF_PAGE32 + 8], 1
        DISARM
1:      EXPECT32 pm32.pf-wp-write-readonly, 14, 3, pfro32
        CHECK "pm32.pf-wp-write-readonly.cr2", PF_PAGE32 + 8, [exc_cr2]
        mov eax, cr0
        and eax, ~(CR0_PG | CR0_WP)
        mov cr0, eax
        mov eax, cr4
        and eax, ~CR4_PAE
        mov cr4, eax
        mov byte ptr [pt0 + (PF_PAGE32 >> 12) * 8], PTE_P | PTE_W | PTE_U
2:

        # Ring 3 -> ring 0 through TSS.ESP0: #GP(0) from cli at CPL 3 (IOPL 0).
        PVM_SKIP pm32.ring3, "PVM cannot emulate IRET to ring 3 in 32-bit PM", 2f
        ARM32 1f
        RING3_32 r3gp32
1:      EXPECT32 pm32.r3-gp, 13, 0, r3gp32_insn, SEL_UCODE32|3
        CHECK "pm32.r3-gp.ss", SEL_UDATA | 3, [exc_ss]
        mov ecx, offset user_stack_top
        CHECK "pm32.r3-gp.esp", ecx, [exc_esp]
        mov ecx, offset stack_r0_top - 24
        CHECK "pm32.r3-gp.handler-esp-is-esp0-frame", ecx, [exc_entry_sp]

        # #AC: CR0.AM and EFLAGS.AC, misaligned dword read at CPL 3.
        mov eax, cr0
        or eax, CR0_AM
        mov cr0, eax
        ARM32 1f
        RING3_32 r3ac32, RFLAGS_AC
1:      EXPECT32 pm32.ac, 17, 0, r3ac32_insn, SEL_UCODE32|3
        mov eax, [exc_eflags]
        and eax, RFLAGS_AC
        CHECK "pm32.ac.eflags-ac", RFLAGS_AC, eax
        mov eax, cr0
        and eax, ~CR0_AM
        mov cr0, eax
2:

        # #DF: the #GP gate is not present, so #GP -> #NP (both contributory) -> #DF(0).
        and byte ptr [idt32 + 13 * 8 + 5], 0x7F
        mov dword ptr [exc_count], 0
        ARM32 1f
        mov eax, BAD_SEL
        mov ds, eax
        DISARM
1:      or byte ptr [idt32 + 13 * 8 + 5], 0x80
        CHECK "pm32.df.vector", 8, [exc_vector]
        CHECK "pm32.df.error", 0, [exc_error]
        CHECK "pm32.df.count", 1, [exc_count]      # exactly one exception reached a handler

        # ---------------------------------------------------------------- 64-bit, CPL 0
        ENTER_LONG
        ARM64 1f
        mov eax, 1
        xor edx, edx
        xor ecx, ecx
        push FLAGS_SET
        popfq
de64:   div rcx
        DISARM
1:      EXPECT64 lm.de, 0, -1, de64
        FLAGS64 lm.de
        CHECK64 "lm.de.rsp", rsp, [exc_esp]
        CHECK64 "lm.de.ss", SEL_DATA, [exc_ss]

        ARM64 1f
ud64:   ud2
        DISARM
1:      EXPECT64 lm.ud, 6, -1, ud64

        PVM_SKIP lm.bp-trap, "PVM cannot emulate INT3 in 64-bit ring 0", 2f
        ARM64 1f
        int3
bp64:   DISARM
1:      EXPECT64 lm.bp-trap, 3, -1, bp64
2:

        ARM64 1f
into64: .byte 0xCE                          # into: invalid in 64-bit mode
        DISARM
1:      EXPECT64 lm.into-is-ud, 6, -1, into64

        ARM64 1f
        mov eax, BAD_SEL
gpsel64: mov ds, eax
        DISARM
1:      EXPECT64 lm.gp-selector-beyond-gdt, 13, BAD_SEL, gpsel64

        mov rax, cr2
        mov [saved_cr2], rax
        ARM64 1f
        mov rax, NONCANON
gpnc64: mov rax, [rax]
        DISARM
1:      EXPECT64 lm.gp-noncanonical, 13, 0, gpnc64
        CHECK64 "lm.gp-noncanonical.cr2-unchanged", [saved_cr2], [exc_cr2]

        ARM64 1f
        mov eax, SEL_NPDATA
np64:   mov es, eax
        DISARM
1:      EXPECT64 lm.np-data, 11, SEL_NPDATA, np64

        ARM64 1f
        mov eax, SEL_NPDATA
ss64:   mov ss, eax
        DISARM
1:      EXPECT64 lm.ss-not-present, 12, SEL_NPDATA, ss64

        ARM64 1f
        mov rbp, NONCANON
ssnc64: mov al, [rbp]                       # rBP-based: #SS(0), not #GP
        DISARM
1:      EXPECT64 lm.ss-noncanonical-rbp, 12, 0, ssnc64

        # #PF error codes through the window's 4 KiB pages (pt_win[i] -> win_pages + i * 4K).
        mov rax, cr0
        or eax, CR0_WP
        mov cr0, rax
        mov qword ptr [pt_win], 0                   # page 0: not present
        mov rax, offset win_pages + 0x1000 + PTE_P  # page 1: read-only, supervisor
        mov [pt_win + 8], rax
        mov rax, offset win_pages + 0x2000 + PTE_P + PTE_W + PTE_U
        bts rax, 63                                 # page 2: user, NX
        mov [pt_win + 16], rax
        mov rax, offset win_pages + 0x3000 + PTE_P + PTE_U  # page 3: user, read-only
        mov [pt_win + 24], rax
        mov rax, cr3
        mov cr3, rax
        mov byte ptr [win_pages + 0x2000], 0xC3     # ret, in the NX page

        ARM64 1f
        mov rbx, WINDOW + 0x10
pfnp64: mov eax, [rbx]
        DISARM
1:      EXPECT64 lm.pf-not-present-read, 14, 0, pfnp64
        CHECK64 "lm.pf-not-present-read.cr2", WINDOW + 0x10, [exc_cr2]

        ARM64 1f
        mov rbx, WINDOW + 0xFF8
pfnpw64: mov [rbx], eax
        DISARM
1:      EXPECT64 lm.pf-not-present-write, 14, 2, pfnpw64
        CHECK64 "lm.pf-not-present-write.cr2", WINDOW + 0xFF8, [exc_cr2]

        ARM64 1f
        mov rbx, WINDOW + 0x1000
pfro64: mov byte ptr [rbx], 1
        DISARM
1:      EXPECT64 lm.pf-wp-write-readonly, 14, 3, pfro64
        CHECK64 "lm.pf-wp-write-readonly.cr2", WINDOW + 0x1000, [exc_cr2]

        ARM64 1f
        mov rbx, NX_PAGE
pfnx64: call rbx
        DISARM
1:      EXPECT64 lm.pf-nx-fetch, 14, 0x11, NX_PAGE
        CHECK64 "lm.pf-nx-fetch.cr2", WINDOW + 0x2000, [exc_cr2]
        mov rbx, rsp
        sub rbx, 8                                  # the call pushed its return address
        CHECK64 "lm.pf-nx-fetch.rsp", rbx, [exc_esp]

        # Ring 3: supervisor read, read-only write, NX fetch (error code bit 2 set).
        ARM64 1f
        RING3_64 r3pfsup
1:      EXPECT64 lm.pf-user-read-supervisor, 14, 5, r3pfsup_i, SEL_UCODE64|3
        CHECK64 "lm.pf-user-read-supervisor.cr2", WINDOW + 0x1008, [exc_cr2]
        ARM64 1f
        RING3_64 r3pfro
1:      EXPECT64 lm.pf-user-write-readonly, 14, 7, r3pfro_i, SEL_UCODE64|3
        CHECK64 "lm.pf-user-write-readonly.cr2", WINDOW + 0x3010, [exc_cr2]
        ARM64 1f
        RING3_64 r3pfnx
1:      EXPECT64 lm.pf-user-nx-fetch, 14, 0x15, NX_PAGE, SEL_UCODE64|3
        ARM64 1f
        RING3_64 r3pfnp
1:      EXPECT64 lm.pf-user-not-present-write, 14, 6, r3pfnp_i, SEL_UCODE64|3

        # Ring 3 -> ring 0 through TSS.RSP0: #GP(0) from cli.
        ARM64 1f
        RING3_64 r3gp64
1:      EXPECT64 lm.r3-gp, 13, 0, r3gp64, SEL_UCODE64|3
        CHECK64 "lm.r3-gp.ss", SEL_UDATA | 3, [exc_ss]
        mov rax, offset user_stack_top
        CHECK64 "lm.r3-gp.rsp", rax, [exc_esp]
        mov rax, offset stack_r0_top - 48
        CHECK64 "lm.r3-gp.handler-rsp-is-rsp0-frame", rax, [exc_entry_sp]

        # #AC at ring 3.
        mov rax, cr0
        or eax, CR0_AM
        mov cr0, rax
        ARM64 1f
        RING3_64 r3ac64, RFLAGS_AC
1:      EXPECT64 lm.ac, 17, 0, r3ac64_i, SEL_UCODE64|3
        mov rax, cr0
        and eax, ~CR0_AM
        mov cr0, rax

        # IST1 for #UD at CPL 0: the frame is at the top of the IST stack.
        mov byte ptr [idt64 + 6 * 16 + 4], 1
        ARM64 1f
udist64: ud2
        DISARM
1:      mov byte ptr [idt64 + 6 * 16 + 4], 0
        EXPECT64 lm.ist-ud, 6, -1, udist64
        mov rax, offset stack_ist_top - 40
        CHECK64 "lm.ist-ud.handler-rsp-is-ist1-frame", rax, [exc_entry_sp]

        # #DF on IST1 from a not-present #GP gate.
        mov byte ptr [idt64 + 8 * 16 + 4], 1
        and byte ptr [idt64 + 13 * 16 + 5], 0x7F
        mov qword ptr [exc_count], 0
        ARM64 1f
        mov eax, BAD_SEL
        mov ds, eax
        DISARM
1:      or byte ptr [idt64 + 13 * 16 + 5], 0x80
        CHECK64 "lm.df.vector", 8, [exc_vector]
        CHECK64 "lm.df.error", 0, [exc_error]
        CHECK64 "lm.df.count", 1, [exc_count]
        mov rax, offset stack_ist_top - 48
        CHECK64 "lm.df.handler-rsp-is-ist1-frame", rax, [exc_entry_sp]
        jmp finish64

# ---------------------------------------------------------------- ring-3 bodies
        .code32
r3gp32:
r3gp32_insn:
        cli
        ud2                                 # not reached
r3ac32:
        mov eax, SEL_UDATA | 3
        mov ds, eax
        mov ebx, offset misaligned
r3ac32_insn:
        mov eax, [ebx + 1]
        ud2

        .code64
r3pfsup: mov rbx, WINDOW + 0x1008
r3pfsup_i: mov eax, [rbx]
        ud2
r3pfro: mov rbx, WINDOW + 0x3010
r3pfro_i: mov [rbx], eax
        ud2
r3pfnx: mov rbx, NX_PAGE
        call rbx
        ud2
r3pfnp: mov rbx, WINDOW + 0x20
r3pfnp_i: mov [rbx], eax
        ud2
r3gp64: cli
        ud2
r3ac64: mov ebx, offset misaligned
r3ac64_i: mov eax, [rbx + 1]
        ud2

        .section .data, "aw"
        .balign 8
saved_cr2:      .quad 0
misaligned:     .quad 0, 0

        .section .note.GNU-stack, "", @progbits
