# ringzero demo guest: real mode -> 32-bit protected mode -> long mode -> ring 3 and back.
#
# A flat image loaded at 0x8000 and entered in real mode with no BIOS. It walks through every CPU
# mode a PC kernel passes through, printing one fixed line per stage over the 16550A, takes three
# PIT interrupts through a remapped 8259, runs a deterministic compute kernel at ring 3 (the part
# that runs natively under KVM and is the translator's benchmark workload), comes back through a
# DPL-3 trap gate (int3) carrying the checksum, and leaves through isa-debug-exit.
#
# Why int3 and not int 0x80 or syscall: under PVM, the software hypervisor behind /dev/kvm here,
# `int n` from ring 3 raises #UD and `syscall` does not reach ring 0 in a guest that has not
# registered with PVM's paravirtual interface, while int3 is delivered through the IDT like any
# exception. int3 through a DPL-3 gate is architecturally the same kind of transition (privilege
# check against the gate's DPL, stack switch to TSS.RSP0, an interrupt frame with the user CS).
#
# Ring-0 work is kept to a few thousand instructions because a software hypervisor emulates every
# ring-0 instruction; the tens of millions of instructions live at ring 3.
#
# Memory map (README.md has the table): page tables 0x1000-0x3fff, IDT 0x4000, TSS 0x5000,
# #DF stack top 0x7000, image 0x8000, ring-0 stack top 0x20000, user page 0x200000-0x3fffff.

        .intel_syntax noprefix
        .include "pc.inc"

        .equ PML4, 0x1000
        .equ PDPT, 0x2000
        .equ PD, 0x3000
        .equ IDT, 0x4000
        .equ TSS, 0x5000
        .equ IST1_TOP, 0x7000
        .equ KSTACK_TOP, 0x20000
        .equ USER_BASE, 0x200000        # the one user (U/S=1) 2 MiB page
        .equ USER_BUF, 0x210000         # compute kernel's data, N 32-bit words
        .equ USER_STACK_TOP, 0x400000

        .equ SEL_CODE32, 0x08
        .equ SEL_DATA, 0x10
        .equ SEL_CODE64, 0x18
        .equ SEL_KDATA64, 0x20
        .equ SEL_UDATA, 0x30 | 3
        .equ SEL_UCODE64, 0x38 | 3
        .equ SEL_TSS, 0x40

        .equ MSR_EFER, 0xC0000080
        .equ EFER_LME, 0x100
        .equ EFER_LMA, 0x400

        .equ EXIT_SUCCESS, 0x10         # VMM status (0x10 << 1) | 1 = 33
        .equ EXIT_EXCEPTION, 0x11       # status 35: an unexpected exception
        .equ EXIT_CHECK, 0x12           # status 37: a self-check failed

        .equ TICKS_WANTED, 3
        .equ EXC_STUB_SIZE, 16          # bytes per exception stub (defined before any use:
                                        # gas reads a forward-referenced name as memory)
        .equ PIT_DIVISOR, 1193          # 1.193182 MHz / 1193 = ~1 kHz

        # Compute kernel parameters; test-images/demo/checksum.py must use the same values.
        .equ N_WORDS, 4096              # buffer size, a power of two
        .equ ROUNDS, 512
        .equ XORSHIFT_SEED, 0x9E3779B97F4A7C15
        .equ FNV_BASIS, 0xCBF29CE484222325
        .equ FNV_PRIME, 0x100000001B3

# ---------------------------------------------------------------------------------------------
# Real mode, entered at 0000:8000 with no BIOS.
        .section .text16, "ax"
        .code16
        .globl _start
_start:
        cli
        cld
        ljmp 0, rm_start                # pin CS to 0 whatever segment:offset we were entered with
rm_start:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        xor sp, sp                      # first push lands at 0xfffe, above the image
        UART_INIT
        mov si, offset msg_real
        call puts16
        lgdt [gdt_ptr]                  # 24-bit base is enough: the GDT is below 64 KiB
        mov eax, cr0
        or eax, 1                       # CR0.PE
        mov cr0, eax
        ljmp SEL_CODE32, pm_entry

puts16:                                 # ds:si -> NUL-terminated string
        lodsb
        test al, al
        jz 1f
        PUTC_AL
        jmp puts16
1:      ret

# ---------------------------------------------------------------------------------------------
# 32-bit protected mode, paging off.
        .section .text32, "ax"
        .code32
pm_entry:
        mov ax, SEL_DATA
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, KSTACK_TOP
        mov esi, offset msg_pm
        call puts32

        # Page tables: one PML4 entry -> one PDPT entry -> two 2 MiB pages. The first 2 MiB
        # (image, tables, stacks) is supervisor-only; the second is the user page. U/S must be
        # set at every level for ring 3 to reach the user page.
        mov edi, PML4
        xor eax, eax
        mov ecx, 3 * 1024
        rep stosd
        mov dword ptr [PML4], PDPT | 0x7            # P | RW | US
        mov dword ptr [PDPT], PD | 0x7
        mov dword ptr [PD], 0x0 | 0x83              # P | RW | PS, supervisor
        mov dword ptr [PD + 8], USER_BASE | 0x87    # P | RW | US | PS

        mov eax, cr4
        or eax, 0x20                    # CR4.PAE
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, MSR_EFER
        rdmsr
        or eax, EFER_LME
        wrmsr
        mov eax, cr0
        or eax, 0x80000000              # CR0.PG: with EFER.LME this activates long mode
        mov cr0, eax
        ljmp SEL_CODE64, lm_entry

puts32:                                 # esi -> NUL-terminated string
        lodsb
        test al, al
        jz 1f
        PUTC_AL
        jmp puts32
1:      ret

# ---------------------------------------------------------------------------------------------
# 64-bit long mode, ring 0.
        .section .text64, "ax"
        .code64
lm_entry:
        mov ax, SEL_KDATA64
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, KSTACK_TOP
        mov esi, offset msg_lm
        call puts64

        # Read the control registers back: what we wrote must be what the CPU reports.
        mov esi, offset fail_cr0
        mov rax, cr0
        and eax, 0x80000001
        cmp eax, 0x80000001             # PG and PE
        jne check_fail
        mov esi, offset fail_cr3
        mov rax, cr3
        cmp rax, PML4
        jne check_fail
        mov esi, offset fail_cr4
        mov rax, cr4
        test eax, 0x20                  # PAE
        jz check_fail
        mov esi, offset fail_efer
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LME | EFER_LMA
        cmp eax, EFER_LME | EFER_LMA    # the CPU sets LMA itself when paging turns on
        jne check_fail
        mov esi, offset msg_cr
        call puts64
        mov rax, cr3
        mov ecx, 16
        call print_hex
        mov al, '\n'
        call putc64

        # TSS: RSP0 for the ring 3 -> 0 transition, IST1 for #DF, no I/O bitmap.
        mov edi, TSS
        xor eax, eax
        mov ecx, 13                     # 104 bytes
        rep stosq
        mov qword ptr [TSS + 4], KSTACK_TOP     # RSP0
        mov qword ptr [TSS + 0x24], IST1_TOP    # IST1
        mov word ptr [TSS + 0x66], 104          # I/O map base past the limit: no bitmap
        mov ax, SEL_TSS
        ltr ax

        # IDT: exceptions 0-31, IRQ0 at 0x20, spurious IRQ7/15; then vector 3 (int3) becomes the
        # ring-3 entry.
        mov edi, IDT
        xor eax, eax
        mov ecx, 256 * 16 / 8
        rep stosq
        xor ebx, ebx
        mov r12d, offset exc_stubs
1:      mov rax, r12
        mov ecx, ebx
        mov edx, 0x008E                 # present, DPL 0, 64-bit interrupt gate, IST 0
        cmp ebx, 8
        jne 2f
        mov edx, 0x018E                 # #DF runs on IST1: a known-good stack
2:      call set_gate
        add r12, EXC_STUB_SIZE
        inc ebx
        cmp ebx, 32
        jb 1b
        mov eax, offset irq0_handler
        mov ecx, 0x20
        mov edx, 0x008E
        call set_gate
        mov eax, offset spurious_master
        mov ecx, 0x27
        mov edx, 0x008E
        call set_gate
        mov eax, offset spurious_slave
        mov ecx, 0x2F
        mov edx, 0x008E
        call set_gate
        mov eax, offset ring3_return
        mov ecx, 3
        mov edx, 0x00EF                 # present, DPL 3 (int3 allowed from ring 3), trap gate
        call set_gate
        lidt [idt_ptr]
        mov esi, offset msg_idt
        call puts64

        # 8259 pair: ICW1-4, vectors 0x20/0x28, then mask everything but IRQ0.
        OUTB 0x20, 0x11                 # ICW1: edge triggered, cascade, ICW4 follows
        OUTB 0xA0, 0x11
        OUTB 0x21, 0x20                 # ICW2: master vector base
        OUTB 0xA1, 0x28                 # ICW2: slave vector base
        OUTB 0x21, 0x04                 # ICW3: slave on IRQ2
        OUTB 0xA1, 0x02                 # ICW3: slave identity 2
        OUTB 0x21, 0x01                 # ICW4: 8086 mode
        OUTB 0xA1, 0x01
        OUTB 0x21, 0xFE                 # OCW1: only IRQ0
        OUTB 0xA1, 0xFF
        # 8254 channel 0, mode 2 (rate generator), lobyte/hibyte, ~1 kHz.
        OUTB 0x43, 0x34
        OUTB 0x40, PIT_DIVISOR & 0xFF
        OUTB 0x40, PIT_DIVISOR >> 8

        # Sleep until the handler has counted TICKS_WANTED interrupts. sti;hlt is atomic
        # (the STI shadow), so no tick is lost between the check and the halt.
3:      cli
        cmp dword ptr [ticks], TICKS_WANTED
        jae 4f
        sti
        hlt
        jmp 3b
4:      mov esi, offset msg_ticks
        call puts64
        mov eax, [ticks]
        add al, '0'
        call putc64
        mov al, '\n'
        call putc64

        # Ring 3: copy the user code into the user page, then iretq to it.
        mov esi, offset msg_ring3
        call puts64
        mov esi, offset __user_lma
        mov edi, USER_BASE
        mov ecx, offset __user_size
        rep movsb
        push SEL_UDATA                  # SS
        push USER_STACK_TOP             # RSP (sign-extended imm32: below 2 GiB, fine)
        push 0x202                      # RFLAGS: IF=1, IOPL=0 (ring 3 cannot touch ports)
        push SEL_UCODE64                # CS
        push USER_BASE                  # RIP
        iretq

# set_gate: ecx = vector, rax = handler, dl = type/attributes, dh = IST index.
set_gate:
        shl ecx, 4
        add ecx, IDT
        mov [rcx], ax                   # offset 15:0
        mov word ptr [rcx + 2], SEL_CODE64
        mov [rcx + 4], dh
        mov [rcx + 5], dl
        shr rax, 16
        mov [rcx + 6], ax               # offset 31:16
        shr rax, 16
        mov [rcx + 8], eax              # offset 63:32
        mov dword ptr [rcx + 12], 0
        ret

irq0_handler:
        push rax
        push rdx
        mov eax, [ticks]
        inc eax
        mov [ticks], eax
        cmp eax, TICKS_WANTED
        jb 1f
        OUTB 0x21, 0xFF                 # enough ticks: mask IRQ0 so the count stays exact
1:      OUTB 0x20, 0x20                 # non-specific EOI
        pop rdx
        pop rax
        iretq

spurious_master:                        # spurious IRQ7: no EOI, nothing was in service
        iretq

spurious_slave:                         # spurious IRQ15: the master did see IRQ2, EOI it only
        push rax
        push rdx
        OUTB 0x20, 0x20
        pop rdx
        pop rax
        iretq

# int3 from ring 3: rax = checksum, edi = CS as ring 3 read it. Never returns.
ring3_return:
        cli
        mov r15, rax
        mov esi, offset fail_cpl
        mov rax, [rsp + 8]              # interrupted CS: RPL 3 says the gate saw ring 3
        and eax, 3
        cmp eax, 3
        jne check_fail
        mov eax, edi                    # and ring 3 saw itself there too
        and eax, 3
        cmp eax, 3
        jne check_fail
        mov esi, offset msg_back
        call puts64
        mov esi, offset msg_checksum
        call puts64
        mov rax, r15
        mov ecx, 16
        call print_hex
        mov al, '\n'
        call putc64
        mov esi, offset msg_done
        call puts64
        DEBUG_EXIT_WITH EXIT_SUCCESS

# check_fail: rsi = what failed.
check_fail:
        push rsi
        mov esi, offset msg_fail
        call puts64
        pop rsi
        call puts64
        DEBUG_EXIT_WITH EXIT_CHECK

# Exception stubs, EXC_STUB_SIZE bytes each so the IDT loop can step through them. Vectors
# without a CPU-pushed error code push a zero so every frame looks the same.
        .balign EXC_STUB_SIZE
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign EXC_STUB_SIZE
        .if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
        .else
        push 0
        .endif
        push \v
        jmp exc_common
        .endr

# Frame: [rsp] vector, [rsp+8] error code, [rsp+16] RIP, [rsp+24] CS.
exc_common:
        cli
        mov esi, offset msg_exc_vector
        call puts64
        mov rax, [rsp]
        mov ecx, 2
        call print_hex
        mov esi, offset msg_exc_error
        call puts64
        mov rax, [rsp + 8]
        mov ecx, 8
        call print_hex
        mov esi, offset msg_exc_rip
        call puts64
        mov rax, [rsp + 16]
        mov ecx, 16
        call print_hex
        mov esi, offset msg_exc_cr2
        call puts64
        mov rax, cr2
        mov ecx, 16
        call print_hex
        mov al, '\n'
        call putc64
        DEBUG_EXIT_WITH EXIT_EXCEPTION

puts64:                                 # rsi -> NUL-terminated string
        lodsb
        test al, al
        jz 1f
        call putc64
        jmp puts64
1:      ret

putc64:                                 # al = character; clobbers ax, dx
        PUTC_AL
        ret

# print_hex: the low ecx (1-16) hex digits of rax. Clobbers rax, rcx, rdx.
print_hex:
        push rbx
        mov rbx, rax
        mov edx, 16
        sub edx, ecx
        shl edx, 2                      # bits above the digits we print
        xchg ecx, edx
        rol rbx, cl
        mov ecx, edx
1:      rol rbx, 4
        mov eax, ebx
        and eax, 0xF
        mov al, [rax + hex_digits]
        push rcx
        call putc64
        pop rcx
        dec ecx
        jnz 1b
        pop rbx
        ret

# ---------------------------------------------------------------------------------------------
# Ring 3 compute kernel, linked at USER_BASE and copied there before the iretq. It touches only
# the user page; checksum.py is its reference implementation.
        .section .user, "ax"
        .code64
user_entry:
        # Fill the buffer with xorshift64 output (low 32 bits).
        mov ebx, USER_BUF
        movabs rax, XORSHIFT_SEED
        xor ecx, ecx
1:      mov rdx, rax
        shl rdx, 13
        xor rax, rdx
        mov rdx, rax
        shr rdx, 7
        xor rax, rdx
        mov rdx, rax
        shl rdx, 17
        xor rax, rdx
        mov [rbx + rcx * 4], eax
        inc ecx
        cmp ecx, N_WORDS
        jb 1b

        # ROUNDS passes: FNV-style hash of every word, data-dependent loads, and a rewrite of
        # each word that depends on an unpredictable branch.
        movabs r8, FNV_BASIS
        movabs r9, FNV_PRIME
        xor r10d, r10d                  # round
2:      xor ecx, ecx
3:      mov eax, [rbx + rcx * 4]        # a = buf[i]
        mov edx, eax
        and edx, N_WORDS - 1
        mov edx, [rbx + rdx * 4]        # b = buf[a % N]
        xor r8, rax
        imul r8, r9                     # h = (h ^ a) * prime
        test al, 1
        jz 4f
        lea edx, [rdx + rdx * 2]
        add eax, edx                    # odd a: a + 3b
        jmp 5f
4:      shr eax, 3
        xor eax, edx                    # even a: (a >> 3) ^ b
5:      mov [rbx + rcx * 4], eax
        inc ecx
        cmp ecx, N_WORDS
        jb 3b
        call user_mix_round
        inc r10d
        cmp r10d, ROUNDS
        jb 2b

        # Fold the buffer's sum into the hash and hand it to ring 0.
        xor esi, esi
        xor ecx, ecx
6:      mov eax, [rbx + rcx * 4]
        add rsi, rax
        inc ecx
        cmp ecx, N_WORDS
        jb 6b
        xor r8, rsi
        mov rax, r8
        mov edi, cs
        int3                            # to ring 0 through the DPL-3 gate at vector 3
        ud2                             # ring 0 never returns here

# h += (h / (2r+3)) ^ (h % (2r+3)); h = rotl(h, r & 63). Exercises div, variable rotates and
# the user stack.
user_mix_round:
        push rcx
        push rdx
        mov rax, r8
        xor edx, edx
        lea rcx, [r10 * 2 + 3]
        div rcx
        xor rax, rdx
        add r8, rax
        mov ecx, r10d
        rol r8, cl
        pop rdx
        pop rcx
        ret

# ---------------------------------------------------------------------------------------------
        .section .rodata, "a"
        .balign 8
gdt:
        .quad 0                         # 0x00 null
        .quad 0x00CF9A000000FFFF        # 0x08 32-bit code, ring 0
        .quad 0x00CF92000000FFFF        # 0x10 data, ring 0
        .quad 0x00AF9A000000FFFF        # 0x18 64-bit code, ring 0
        .quad 0x00CF92000000FFFF        # 0x20 data, ring 0 (SYSCALL SS = STAR.CS + 8)
        .quad 0x00CFFA000000FFFF        # 0x28 32-bit code, ring 3 (SYSRET layout, unused)
        .quad 0x00CFF2000000FFFF        # 0x30 data, ring 3
        .quad 0x00AFFA000000FFFF        # 0x38 64-bit code, ring 3
        # 0x40 64-bit TSS at TSS, limit 103, type 9 (available), present
        .word 103, TSS & 0xFFFF
        .byte (TSS >> 16) & 0xFF, 0x89, 0x00, (TSS >> 24) & 0xFF
        .long 0, 0
gdt_end:

        .balign 8
gdt_ptr:                                # one pseudo-descriptor serves 16-, 32- and 64-bit lgdt
        .word gdt_end - gdt - 1
        .quad gdt
        .balign 8
idt_ptr:
        .word 256 * 16 - 1
        .quad IDT

hex_digits:     .ascii "0123456789abcdef"
msg_real:       .asciz "demo: real mode, uart 8n1 ok\n"
msg_pm:         .asciz "demo: 32-bit protected mode ok\n"
msg_lm:         .asciz "demo: 64-bit long mode ok (4-level paging, 2 MiB pages)\n"
msg_cr:         .asciz "demo: cr0.pe=1 cr0.pg=1 cr4.pae=1 efer.lme=1 efer.lma=1 cr3=0x"
msg_idt:        .asciz "demo: gdt, tss and idt loaded\n"
msg_ticks:      .asciz "demo: pit irq0 via 8259 vector 0x20, ticks="
msg_ring3:      .asciz "demo: entering ring 3 compute kernel\n"
msg_back:       .asciz "demo: back in ring 0 via int3 (dpl-3 trap gate) from cpl 3\n"
msg_checksum:   .asciz "demo: checksum=0x"
msg_done:       .asciz "demo: all stages passed\n"
msg_fail:       .asciz "demo: FAIL "
fail_cr0:       .asciz "cr0 lacks PE or PG\n"
fail_cr3:       .asciz "cr3 is not the PML4 we loaded\n"
fail_cr4:       .asciz "cr4 lacks PAE\n"
fail_efer:      .asciz "efer lacks LME or LMA\n"
fail_cpl:       .asciz "int3 did not come from ring 3\n"
msg_exc_vector: .asciz "demo: EXCEPTION vector=0x"
msg_exc_error:  .asciz " error=0x"
msg_exc_rip:    .asciz " rip=0x"
msg_exc_cr2:    .asciz " cr2=0x"

        .section .data, "aw"
        .balign 4
ticks:  .long 0

        .section .note.GNU-stack, "", @progbits
