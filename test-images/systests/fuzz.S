# systest fuzz: runs random bytes (the first Multiboot module, `--initrd`) at ring 0 or ring 3,
# in 64-bit or compatibility mode, and reports every fault it takes (README.md, "fuzz").
#
# Command line: `ring3` (default ring 0) and `compat` (default 64-bit). The bytes (up to 4 KiB,
# the rest of the page 0xCC) run from a code page in a window at FZ_WIN with their own page
# tables: code page (writable, executable), a data page and a stack page (NX), each with guard
# pages around it; user pages for ring 3, supervisor for ring 0. Below 4 MiB the kernel is
# identity-mapped supervisor-only, so ring-3 code can reach nothing but its three pages.
#
# Every entry starts from the same state: code page recopied from the module, data and stack
# pages zeroed, every GPR a fixed pointer into the data page, RSP in the stack page, RFLAGS IF.
# Every IDT vector runs on IST1 (ring-0 code may leave any RSP) into one handler, which prints
#
#     FUZZ: vector=<dec> error=<0xhex|none> rip=0x<hex> cpl=<n> [cr2=0x<hex>] entry=0x<hex> [hang]
#
# (cr2 for #PF only) and re-enters the bytes one byte past the faulting RIP (or one byte past
# the last entry when the fault is outside the code or before the entry point), MAX_FAULTS
# times; then `FUZZ-DONE faults=<n>` and debug-exit FUZZ_EXIT_VALUE. The PIT (1 kHz, IRQ0 at
# vector 0x20) catches code that never faults: a tick returns to the code transparently until
# HANG_TSC TSC cycles have passed since the entry; then it counts as a fault with `hang` (vector
# 32, RIP not deterministic). Time, not a tick count: KVM's PIT reinjects the ticks missed while
# the kernel printed with IF = 0, back to back, right after the entry. For ring 0 every entry first restores GDTR, IDTR, TR, CR0, CR3, CR4, CR8, EFER,
# DR7, the TSS stacks, the fuzz page tables, the PIC and the PIT.

        .include "../systests/systest.inc"

        .equ FZ_WIN, 0x40000000             # 1 GiB: far from the kernel, below 4 GiB (compat)
        .equ FZ_CODE, FZ_WIN + 0x1000       # pt slot 1 (0 and 2 are guards)
        .equ FZ_DATA, FZ_WIN + 0x3000       # pt slot 3 (4 is a guard)
        .equ FZ_STACK, FZ_WIN + 0x5000      # pt slot 5 (6 is a guard)
        .equ FZ_RSP, FZ_STACK + 0x800       # room for pushes and pops
        .equ FZ_RFLAGS, 0x202               # IF: the PIT can stop a loop
        .equ MAX_FAULTS, 64
        .equ HANG_TSC, 100000000            # TSC cycles in one entry that make a hang
        .equ FUZZ_EXIT_VALUE, 0x21          # FUZZ-DONE: VMM status 67
        .equ EXIT_NO_MODULE, 1              # status 3
        .equ PIT_DIVISOR, 1193              # 1 kHz

# PIC_INIT base: both 8259s in cascade, master at base, slave at base + 8, only IRQ0 unmasked.
.macro PIC_INIT base
        OUTB 0x20, 0x11
        OUTB 0xA0, 0x11
        OUTB 0x21, \base
        OUTB 0xA1, \base + 8
        OUTB 0x21, 0x04
        OUTB 0xA1, 0x02
        OUTB 0x21, 0x01
        OUTB 0xA1, 0x01
        OUTB 0x21, 0xFE
        OUTB 0xA1, 0xFF
.endm

# PIT_START: channel 0, mode 2 (rate generator), PIT_DIVISOR.
.macro PIT_START
        OUTB 0x43, 0x34
        OUTB 0x40, PIT_DIVISOR & 0xFF
        OUTB 0x40, PIT_DIVISOR >> 8
.endm

# FZ_TABLES: writes the fuzz page tables (the same bytes in 32- and 64-bit code: absolute
# addresses, dword stores). Clobbers eax, edx.
.macro FZ_TABLES
        mov dword ptr [fz_pml4], offset fz_pdpt + PTE_P + PTE_W + PTE_U
        mov dword ptr [fz_pdpt], offset fz_pd + PTE_P + PTE_W + PTE_U
        mov dword ptr [fz_pdpt + 8], offset fz_pdw + PTE_P + PTE_W + PTE_U
        mov dword ptr [fz_pd], 0 + PTE_P + PTE_W + PTE_PS                 # kernel: supervisor
        mov dword ptr [fz_pd + 8], 0x200000 + PTE_P + PTE_W + PTE_PS
        mov dword ptr [fz_pdw], offset fz_pt + PTE_P + PTE_W + PTE_U
        movzx edx, byte ptr [fz_user]                                      # PTE_U or 0
        mov eax, offset fz_code_frame + PTE_P + PTE_W
        or eax, edx
        mov [fz_pt + 1 * 8], eax
        mov eax, offset fz_data_frame + PTE_P + PTE_W
        or eax, edx
        mov [fz_pt + 3 * 8], eax
        mov dword ptr [fz_pt + 3 * 8 + 4], PTE_NX_HI
        mov eax, offset fz_stack_frame + PTE_P + PTE_W
        or eax, edx
        mov [fz_pt + 5 * 8], eax
        mov dword ptr [fz_pt + 5 * 8 + 4], PTE_NX_HI
.endm

        .section .text, "ax"
        .code32
main32:
        mov ebx, [mb_info]
        test ebx, ebx
        jz no_module
        # Command line: "ring3", "compat".
        test byte ptr [ebx], 4
        jz 3f
        mov esi, [ebx + 16]
1:      mov eax, [esi]
        test al, al
        jz 3f
        cmp eax, 0x676E6972                 # "ring"
        jne 2f
        cmp byte ptr [esi + 4], '3'
        jne 2f
        mov byte ptr [fz_ring3], 1
        mov byte ptr [fz_user], PTE_U
2:      cmp eax, 0x706D6F63                 # "comp"
        jne 4f
        cmp word ptr [esi + 4], 0x7461      # "at"
        jne 4f
        mov byte ptr [fz_compat], 1
4:      inc esi
        jmp 1b
3:
        # The first module: its bytes (at most a page) into fz_orig, the rest of it int3.
        test byte ptr [ebx], 8
        jz no_module
        cmp dword ptr [ebx + 20], 0
        je no_module
        mov esi, [ebx + 24]
        mov ecx, [esi + 4]
        mov esi, [esi]
        sub ecx, esi
        jbe no_module
        cmp ecx, 4096
        jbe 5f
        mov ecx, 4096
5:      mov [fz_len], ecx
        mov edi, offset fz_orig
        push ecx
        mov ecx, 4096
        mov al, 0xCC
        rep stosb
        pop ecx
        mov edi, offset fz_orig
        rep movsb

        FZ_TABLES
        # Ring-3 code sees what a ring-3 process does: alignment checks armed (AM; an OS
        # normally sets it), SSE on, x87 errors native.
        mov eax, cr0
        or eax, CR0_MP | CR0_NE | CR0_WP | CR0_AM
        and eax, ~(CR0_EM | CR0_TS)
        mov cr0, eax
        mov eax, cr4
        or eax, CR4_OSFXSR | CR4_OSXMMEXCPT
        mov cr4, eax
        # Like a BIOS: APIC software-enabled, LINT0 = ExtINT (the 8259), LINT1 = NMI.
        mov dword ptr [0xFEE000F0], 0x1FF
        mov dword ptr [0xFEE00350], 0x700
        mov dword ptr [0xFEE00360], 0x400
        PIC_INIT 0x20
        PIT_START
        # Every vector on IST1 into fuzz_fault; IRQ0 into fuzz_tick.
        xor ecx, ecx
6:      mov edx, ecx
        shl edx, 4
        mov byte ptr [idt64 + edx + 4], 1
        mov dword ptr [vec_handler64 + ecx * 8], offset fuzz_fault
        inc ecx
        cmp ecx, 256
        jb 6b
        mov dword ptr [vec_handler64 + 0x20 * 8], offset fuzz_tick

        ENTER_LONG
        mov eax, offset fz_pml4
        mov cr3, rax
        mov rax, cr0
        mov [fz_cr0], rax
        mov rax, cr4
        mov [fz_cr4], rax
        mov esi, offset s_start
        call puts
        movzx eax, byte ptr [fz_ring3]
        lea eax, [eax + eax * 2]            # 0 or 3
        call print_dec64
        mov esi, offset s_compat
        call puts
        movzx eax, byte ptr [fz_compat]
        call print_dec64
        mov esi, offset s_len
        call puts
        mov rax, [fz_len]
        call print_hex64min
        mov esi, offset s_code
        call puts
        mov eax, FZ_CODE
        call print_hex64min
        call newline
        mov qword ptr [fz_entry], 0
        jmp fuzz_enter

        .code32
no_module:
        mov esi, offset s_no_module
        call puts
        DEBUG_EXIT_WITH EXIT_NO_MODULE

        .code64
# fuzz_enter: runs the bytes at fz_entry from the fixed start state (see the header).
fuzz_enter:
        cli
        cld
        mov rsp, offset stack_top
        cmp byte ptr [fz_ring3], 0
        jne 1f
        call restore_system
1:      mov esi, offset fz_orig
        mov edi, offset fz_code_frame
        mov ecx, 512
        rep movsq
        xor eax, eax
        mov edi, offset fz_data_frame
        mov ecx, 512
        rep stosq
        mov edi, offset fz_stack_frame
        mov ecx, 512
        rep stosq
        mov byte ptr [fz_hang], 0
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov [fz_tsc0], rax
        mov rdx, [fz_entry]
        add rdx, FZ_CODE
        cmp byte ptr [fz_ring3], 0
        je 2f
        mov eax, SEL_UDATA | 3
        mov ecx, SEL_UCODE64 | 3
        mov ebx, SEL_UCODE32 | 3
        jmp 3f
2:      mov eax, SEL_DATA
        mov ecx, SEL_CODE64
        mov ebx, SEL_CODE32
3:      cmp byte ptr [fz_compat], 0
        cmovne ecx, ebx
        mov ds, eax
        mov es, eax
        mov fs, eax
        mov gs, eax
        push rax                            # SS
        push FZ_RSP
        push FZ_RFLAGS
        push rcx                            # CS
        push rdx                            # RIP
        mov byte ptr [fz_active], 1
        mov eax, FZ_DATA + 0x080
        mov ecx, FZ_DATA + 0x180
        mov edx, FZ_DATA + 0x280
        mov ebx, FZ_DATA + 0x380
        mov ebp, FZ_DATA + 0x480
        mov esi, FZ_DATA + 0x580
        mov edi, FZ_DATA + 0x680
        mov r8d, FZ_DATA + 0x780
        mov r9d, FZ_DATA + 0x880
        mov r10d, FZ_DATA + 0x980
        mov r11d, FZ_DATA + 0xA80
        mov r12d, FZ_DATA + 0xB80
        mov r13d, FZ_DATA + 0xC80
        mov r14d, FZ_DATA + 0xD80
        mov r15d, FZ_DATA + 0xE80
        iretq

# restore_system: undoes what ring-0 random code may have changed (GDTR, IDTR, CR0/3/4/8, EFER,
# DR7, TR and the TSS stacks, the fuzz page tables, PIC and PIT). Clobbers rax, rcx, rdx.
restore_system:
        lgdt [gdt_desc]
        lidt [idt64_desc]
        mov rax, [fz_cr4]
        mov cr4, rax
        mov rax, [fz_cr0]
        mov cr0, rax
        FZ_TABLES
        mov eax, offset fz_pml4
        mov cr3, rax
        xor eax, eax
        mov cr8, rax
        mov dr7, rax
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LMA
        or eax, EFER_LME | EFER_NXE
        xor edx, edx
        wrmsr
        mov eax, SEL_DATA
        mov ss, eax
        mov qword ptr [tss64 + 4], offset stack_r0_top
        mov qword ptr [tss64 + 0x24], offset stack_ist_top
        and byte ptr [gdt + SEL_TSS64 + 5], 0xFD
        mov eax, SEL_TSS64
        ltr ax
        PIC_INIT 0x20
        PIT_START
        ret

# fuzz_tick (IRQ0, called by isr_common64, which saved rax..rdx): a tick returns to the code
# unless this entry has run HANG_TSC cycles; then it is a fault with `hang`.
fuzz_tick:
        mov al, 0x20
        out 0x20, al
        cmp byte ptr [fz_active], 0
        je 1f
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, [fz_tsc0]
        cmp rax, HANG_TSC
        jae 2f
1:      ret
2:      mov byte ptr [fz_hang], 1
        # fall through with the same stack: [rsp] return address, then rdx, rcx, rbx, rax,
        # the vector and the CPU's frame.

# fuzz_fault (every vector, called by isr_common64): records and prints the fault, then enters
# the bytes again (or finishes after MAX_FAULTS).
fuzz_fault:
        cld
        mov byte ptr [fz_active], 0
        movzx eax, byte ptr [rsp + 40]      # the stub pushed the vector (sign-extended imm8)
        mov [fz_vec], rax
        lea rbx, [rsp + 48]
        mov rcx, -1
        bt [errcode_mask], eax
        jnc 1f
        mov rcx, [rbx]
        add rbx, 8
1:      mov [fz_err], rcx
        mov rcx, [rbx]
        mov [fz_rip], rcx
        mov rcx, [rbx + 8]
        mov [fz_cs], rcx
        mov rcx, cr2
        mov [fz_cr2], rcx
        mov rsp, offset stack_top
        mov eax, SEL_DATA
        mov ds, eax
        mov es, eax

        mov esi, offset s_vector
        call puts
        mov rax, [fz_vec]
        call print_dec64
        mov esi, offset s_fz_error
        call puts
        mov rax, [fz_err]
        cmp rax, -1
        jne 2f
        mov esi, offset s_none
        call puts
        jmp 3f
2:      call print_hex64min
3:      mov esi, offset s_rip
        call puts
        mov rax, [fz_rip]
        call print_hex64min
        mov esi, offset s_cpl
        call puts
        mov eax, [fz_cs]
        and eax, 3
        call print_dec64
        cmp qword ptr [fz_vec], 14
        jne 4f
        mov esi, offset s_cr2
        call puts
        mov rax, [fz_cr2]
        call print_hex64min
4:      mov esi, offset s_entry
        call puts
        mov rax, [fz_entry]
        call print_hex64min
        cmp byte ptr [fz_hang], 0
        je 5f
        mov esi, offset s_hang
        call puts
5:      call newline

        inc qword ptr [fz_faults]
        cmp qword ptr [fz_faults], MAX_FAULTS
        jae fuzz_done
        # Next entry: one byte past the faulting RIP when it is in the code at or after the
        # entry point, else one byte past the entry point (a hang's RIP is not deterministic).
        mov rax, [fz_entry]
        cmp byte ptr [fz_hang], 0
        jne 6f
        mov rcx, [fz_rip]
        sub rcx, FZ_CODE
        cmp rcx, [fz_len]
        jae 6f
        cmp rcx, rax
        jb 6f
        mov rax, rcx
6:      inc rax
        cmp rax, [fz_len]
        jb 7f
        sub rax, [fz_len]
7:      mov [fz_entry], rax
        jmp fuzz_enter

fuzz_done:
        mov esi, offset s_done
        call puts
        mov rax, [fz_faults]
        call print_dec64
        call newline
        DEBUG_EXIT_WITH FUZZ_EXIT_VALUE

# print_dec64: rax as unsigned decimal. Clobbers rax, rdx.
print_dec64:
        push rbx
        push rcx
        push rsi
        mov ebx, 10
        mov esi, offset numbuf_end
        mov byte ptr [rsi], 0
1:      xor edx, edx
        div rbx
        add dl, '0'
        dec rsi
        mov [rsi], dl
        test rax, rax
        jnz 1b
        call puts
        pop rsi
        pop rcx
        pop rbx
        ret

# print_hex64min: "0x" and rax in hex without leading zeros. Clobbers rax, rdx.
print_hex64min:
        push rbx
        push rsi
        mov rbx, rax
        mov esi, offset numbuf_end
        mov byte ptr [rsi], 0
1:      mov eax, ebx
        and eax, 0xF
        mov al, [rax + hex_digits]
        dec rsi
        mov [rsi], al
        shr rbx, 4
        jnz 1b
        dec rsi
        mov byte ptr [rsi], 'x'
        dec rsi
        mov byte ptr [rsi], '0'
        call puts
        pop rsi
        pop rbx
        ret

        .section .rodata, "a"
s_start:        .asciz "FUZZ-START ring="
s_compat:       .asciz " compat="
s_len:          .asciz " len="
s_code:         .asciz " code="
s_vector:       .asciz "FUZZ: vector="
s_fz_error:        .asciz " error="
s_none:         .asciz "none"
s_rip:          .asciz " rip="
s_cpl:          .asciz " cpl="
s_cr2:          .asciz " cr2="
s_entry:        .asciz " entry="
s_hang:         .asciz " hang"
s_done:         .asciz "FUZZ-DONE faults="
s_no_module:    .asciz "FUZZ-ERROR: no module (pass the bytes with --initrd)\n"

        .section .data, "aw"
        .balign 8
fz_len:         .quad 0                     # bytes from the module (1..4096)
fz_entry:       .quad 0                     # offset the current entry started at
fz_faults:      .quad 0
fz_vec:         .quad 0
fz_err:         .quad 0
fz_rip:         .quad 0
fz_cs:          .quad 0
fz_cr2:         .quad 0
fz_cr0:         .quad 0
fz_cr4:         .quad 0
fz_tsc0:        .quad 0                     # TSC at the entry
fz_ring3:       .byte 0
fz_user:        .byte 0                     # PTE_U for ring 3
fz_compat:      .byte 0
fz_active:      .byte 0                     # the random code is running
fz_hang:        .byte 0
numbuf:         .skip 24
numbuf_end:     .byte 0

        .section .bss, "aw", @nobits
        .balign 4096
fz_pml4:        .skip 4096
fz_pdpt:        .skip 4096
fz_pd:          .skip 4096
fz_pdw:         .skip 4096
fz_pt:          .skip 4096
fz_code_frame:  .skip 4096
fz_data_frame:  .skip 4096
fz_stack_frame: .skip 4096
fz_orig:        .skip 4096
