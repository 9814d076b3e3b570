# systest syscall: SYSCALL/SYSRET (64-bit), SYSENTER/SYSEXIT (32-bit PM), INT n through a DPL-3
# gate and #GP through a DPL-0 gate from ring 3 (README.md, "syscall").

        .include "../systests/systest.inc"

        .equ MSR_SYSENTER_CS, 0x174
        .equ MSR_SYSENTER_ESP, 0x175
        .equ MSR_SYSENTER_EIP, 0x176
        .equ MSR_STAR, 0xC0000081
        .equ MSR_LSTAR, 0xC0000082
        .equ MSR_FMASK, 0xC0000084
        .equ USER_FLAGS, 0x8C7 | RFLAGS_AC  # loaded at ring 3 before SYSCALL
        .equ FMASK, RFLAGS_AC | 0x400 | 0x100 | RFLAGS_IF   # AC DF TF IF
        .equ OP_ECHO, 1                     # kernel returns with SYSRET/SYSEXIT
        .equ OP_EXIT, 2                     # kernel resumes its own code

        .section .text, "ax"
        .code32
main32:
        # ---------------------------------------------------------------- SYSENTER/SYSEXIT
        mov ecx, MSR_SYSENTER_CS
        xor edx, edx
        mov eax, SEL_CODE64                 # CS 0x08 (SS 0x10); SYSEXIT: CS 0x1b, SS 0x23
        wrmsr
        mov ecx, MSR_SYSENTER_ESP
        mov eax, offset stack_r0_top
        wrmsr
        mov ecx, MSR_SYSENTER_EIP
        mov eax, offset sysenter_entry32
        wrmsr
        # SYSENTER loads a flat CS from SYSENTER_CS even outside long mode; with selector 0x08
        # (a 64-bit descriptor) the GDT is not read, so 32-bit code runs until CS is reloaded.
        mov [k_esp], esp
        mov ecx, offset user_stack_top
        mov edx, offset u_sysenter32
        sysexit                             # to ring 3 at edx, esp = ecx
k_cont32:
        mov esp, [k_esp]
        mov eax, SEL_DATA
        mov ds, eax
        mov es, eax
        CHECK "pm32.sysexit.user-cs", SEL_UCODE32 | 3, [u_cs]
        CHECK "pm32.sysexit.user-ss", SEL_UDATA | 3, [u_ss]
        mov ecx, offset user_stack_top
        CHECK "pm32.sysexit.user-esp", ecx, [u_esp]
        CHECK "pm32.sysenter.cs", SEL_CODE64, [se_cs]
        CHECK "pm32.sysenter.ss", SEL_DATA, [se_ss]
        mov ecx, offset stack_r0_top
        CHECK "pm32.sysenter.esp", ecx, [se_esp]
        mov eax, [se_flags]
        and eax, RFLAGS_IF
        CHECK "pm32.sysenter.if-clear", 0, eax
        CHECK "pm32.sysenter.round-trips", 2, [se_count]
9:
        # ---------------------------------------------------------------- 64-bit
        ENTER_LONG
        mov ecx, MSR_EFER
        rdmsr
        or eax, EFER_SCE
        wrmsr
        mov ecx, MSR_STAR
        xor eax, eax
        mov edx, (SEL_UCODE32 << 16) | SEL_CODE64
        wrmsr
        mov ecx, MSR_LSTAR
        mov eax, offset syscall_entry
        xor edx, edx
        wrmsr
        mov ecx, MSR_FMASK
        mov eax, FMASK
        wrmsr

        PVM_SKIP lm.syscall, "PVM raises #GP on SYSRETQ to this GDT layout", 9f
        mov [k_rsp], rsp
        mov qword ptr [k_rip], offset k_cont64
        RING3_64 u_syscall
k_cont64:
        mov rsp, [k_rsp]
        mov eax, SEL_DATA
        mov ss, eax
        CHECK64 "lm.syscall.cs", SEL_CODE64, [sc_cs]
        CHECK64 "lm.syscall.ss", SEL_DATA, [sc_ss]
        mov rax, offset u_after_syscall
        CHECK64 "lm.syscall.rcx-is-next-rip", rax, [sc_rcx]
        mov rax, [sc_r11]
        and eax, ~0x10000
        CHECK64 "lm.syscall.r11-is-user-rflags", USER_FLAGS, rax
        mov rax, [sc_flags]
        and eax, FMASK
        CHECK64 "lm.syscall.fmask-applied", 0, rax
        mov rax, offset user_stack_top
        CHECK64 "lm.syscall.rsp-unchanged", rax, [sc_rsp]
        CHECK64 "lm.sysret.user-cs", SEL_UCODE64 | 3, [u_cs]
        CHECK64 "lm.sysret.user-ss", SEL_UDATA | 3, [u_ss]
        mov rax, [u_flags]
        and eax, ~0x10000
        CHECK64 "lm.sysret.rflags-from-r11", USER_FLAGS, rax
        CHECK64 "lm.sysret.rax-from-kernel", 0x5A5A, [u_rax]
        CHECK64 "lm.syscall.round-trips", 2, [sc_count]
9:

        # INT 0x40 (DPL 3 gate) from ring 3, twice, returning with iretq; then ud2.
        PVM_SKIP lm.int40, "PVM does not deliver INT n from ring 3 through the IDT", 9f
        SET_HANDLER64 0x40, int40_handler
        ARM64 1f
        RING3_64 u_int40
1:      CHECK64 "lm.int40.count", 2, [int40_count]
        CHECK64 "lm.int40.pushed-cs", SEL_UCODE64 | 3, [int40_cs]
        mov rax, offset u_int40_ret
        CHECK64 "lm.int40.pushed-rip", rax, [int40_rip]
        mov rax, offset stack_r0_top - 40
        CHECK64 "lm.int40.frame-on-rsp0", rax, [int40_frame]
        CHECK64 "lm.int40.returned-to-ring3", 6, [exc_vector]
        mov rax, offset u_int40_ud
        CHECK64 "lm.int40.returned-rip", rax, [exc_eip]
9:

        # INT 0x41 (DPL 0 gate) from ring 3: #GP(0x41 * 8 + 2).
        PVM_SKIP lm.int41-dpl0, "PVM does not deliver INT n from ring 3 through the IDT", 9f
        ARM64 1f
        RING3_64 u_int41
1:      CHECK64 "lm.int41-dpl0.vector", 13, [exc_vector]
        CHECK64 "lm.int41-dpl0.error", 0x20A, [exc_error]   # 0x41 * 8 + IDT bit
        mov rax, offset u_int41
        CHECK64 "lm.int41-dpl0.rip", rax, [exc_eip]
        CHECK64 "lm.int41-dpl0.cs", SEL_UCODE64 | 3, [exc_cs]
9:
        jmp finish64

# ---------------------------------------------------------------- kernel entries
        .code64
syscall_entry:
        inc qword ptr [sc_count]
        cmp eax, OP_EXIT
        je 1f
        mov [sc_rcx], rcx
        mov [sc_r11], r11
        mov [sc_rsp], rsp
        mov ecx, cs
        mov [sc_cs], rcx
        mov ecx, ss
        mov [sc_ss], rcx
        pushfq
        pop qword ptr [sc_flags]
        mov rcx, [sc_rcx]
        mov eax, 0x5A5A
        sysretq
1:      mov rsp, [k_rsp]
        jmp [k_rip]

int40_handler:                              # called from isr_common64 (4 pushes + vector)
        inc qword ptr [int40_count]
        mov rax, [rsp + 48]
        mov [int40_rip], rax
        mov rax, [rsp + 56]
        mov [int40_cs], rax
        lea rax, [rsp + 48]
        mov [int40_frame], rax
        ret

        .code32
sysenter_entry32:                           # CS = 0x08 loaded flat by SYSENTER, 32-bit code
        inc dword ptr [se_count]
        mov [se_esp], esp
        mov eax, cs
        mov [se_cs], eax
        mov eax, ss
        mov [se_ss], eax
        pushfd
        pop dword ptr [se_flags]
        cmp ebx, OP_EXIT
        je 1f
        mov ecx, [u_esp]
        mov edx, offset u_after_sysenter
        sysexit
1:      ljmp SEL_CODE32, offset k_cont32    # a real 32-bit CS again

# ---------------------------------------------------------------- ring 3
u_sysenter32:
        mov eax, cs
        mov [u_cs], eax
        mov eax, ss
        mov [u_ss], eax
        mov [u_esp], esp
        mov ebx, OP_ECHO
        sysenter
u_after_sysenter:
        mov ebx, OP_EXIT
        sysenter

        .code64
u_syscall:
        push USER_FLAGS
        popfq
        mov eax, OP_ECHO
        syscall
u_after_syscall:
        mov [u_rax], rax
        pushfq
        pop qword ptr [u_flags]
        mov eax, cs
        mov [u_cs], rax
        mov eax, ss
        mov [u_ss], rax
        push 2                              # AC off again
        popfq
        mov eax, OP_EXIT
        syscall

u_int40:
        int 0x40
        int 0x40
u_int40_ret:
u_int40_ud:
        ud2
u_int41:
        int 0x41
        ud2

        .section .data, "aw"
        .balign 8
k_esp:          .quad 0
k_rsp:          .quad 0
k_rip:          .quad 0
u_cs:           .quad 0
u_ss:           .quad 0
u_esp:          .quad 0
u_flags:        .quad 0
u_rax:          .quad 0
se_count:       .quad 0
se_esp:         .quad 0
se_cs:          .quad 0
se_ss:          .quad 0
se_flags:       .quad 0
sc_count:       .quad 0
sc_rcx:         .quad 0
sc_r11:         .quad 0
sc_rsp:         .quad 0
sc_cs:          .quad 0
sc_ss:          .quad 0
sc_flags:       .quad 0
int40_count:    .quad 0
int40_rip:      .quad 0
int40_cs:       .quad 0
int40_frame:    .quad 0

        .section .note.GNU-stack, "", @progbits
