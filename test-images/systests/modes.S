# systest modes: mode switches (README.md, "modes").
#
# 32-bit PM -> 16-bit PM code segment -> 32-bit PM; 32-bit PM -> 16-bit PM -> real mode (IVT,
# segment arithmetic) -> 32-bit PM; 32-bit PM -> long mode (PAE, EFER.LME, far jump) -> 64-bit
# code -> compatibility mode -> 64-bit -> 32-bit PM. Each mode records what it saw; the checks run
# back in 32- or 64-bit mode.

        .include "../systests/systest.inc"

        .section .lowtext, "ax"
        # Results written by 16-bit and real-mode code (dwords, at their LOW_BASE copies).
        .balign 4
r_pm16_cs:      .long 0
r_pm16_dec:     .long 0
r_pm16_push:    .long 0
r_rm_cs:        .long 0
r_rm_pe:        .long 0
r_rm_seg:       .long 0
r_rm_push:      .long 0
r_rm_int_ran:   .long 0
r_rm_int_ip:    .long 0
r_rm_int_cs:    .long 0
rm_idt_desc:    .word 0x3FF
                .long 0
        .set R_PM16_CS, r_pm16_cs - low_start + LOW_BASE
        .set R_PM16_DEC, r_pm16_dec - low_start + LOW_BASE
        .set R_PM16_PUSH, r_pm16_push - low_start + LOW_BASE
        .set R_RM_CS, r_rm_cs - low_start + LOW_BASE
        .set R_RM_PE, r_rm_pe - low_start + LOW_BASE
        .set R_RM_SEG, r_rm_seg - low_start + LOW_BASE
        .set R_RM_PUSH, r_rm_push - low_start + LOW_BASE
        .set R_RM_INT_RAN, r_rm_int_ran - low_start + LOW_BASE
        .set R_RM_INT_IP, r_rm_int_ip - low_start + LOW_BASE
        .set R_RM_INT_CS, r_rm_int_cs - low_start + LOW_BASE
        .set RM_AFTER_INT, rm_after_int - low_start + LOW_BASE
        .set RM_IDT_DESC, rm_idt_desc - low_start + LOW_BASE

        .code16
# 16-bit protected mode (CS = SEL_CODE16, DS = SEL_DATA still): default operand size 16.
pm16_entry:
        mov ax, cs
        movzx eax, ax
        mov [R_PM16_CS], eax
        mov eax, 0x1234ABCD
        .byte 0x48                          # dec ax (16-bit operand): upper half untouched
        mov [R_PM16_DEC], eax
        mov ecx, esp
        push ax                             # 2 bytes
        sub ecx, esp
        pop ax
        mov [R_PM16_PUSH], ecx
        .byte 0x66, 0xEA                    # jmp far ptr16:32 back to 32-bit code
        .long back_from_pm16
        .word SEL_CODE32

# 16-bit PM on the way to real mode: 64 KiB segments, IVT, CR0.PE off, far jump.
pm16_to_rm:
        mov ax, SEL_DATA16
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        lidt [RM_IDT_DESC]
        mov eax, cr0
        and eax, ~CR0_PE
        mov cr0, eax
        ljmp 0, rm_entry - low_start + LOW_BASE
rm_entry:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        mov ax, cs
        movzx eax, ax
        mov [R_RM_CS], eax
        smsw ax
        and eax, CR0_PE
        mov [R_RM_PE], eax
        mov ax, 0x0700                      # es:0x800 = physical 0x7800
        mov es, ax
        mov word ptr es:[0x800], 0xBEEF
        movzx eax, word ptr ds:[0x7800]
        mov [R_RM_SEG], eax
        xor ax, ax
        mov es, ax
        mov cx, sp
        push ax
        sub cx, sp
        pop ax
        movzx ecx, cx
        mov [R_RM_PUSH], ecx
        mov word ptr [0x60 * 4], rm_isr60 - low_start + LOW_BASE
        mov word ptr [0x60 * 4 + 2], 0
        int 0x60
rm_after_int:
        mov eax, cr0
        or eax, CR0_PE
        mov cr0, eax
        .byte 0x66, 0xEA
        .long back_from_rm
        .word SEL_CODE32

rm_isr60:
        mov bp, sp
        movzx eax, word ptr [bp]
        mov [R_RM_INT_IP], eax
        movzx eax, word ptr [bp + 2]
        mov [R_RM_INT_CS], eax
        mov dword ptr [R_RM_INT_RAN], 1
        iret

        .section .text, "ax"
        .code32
main32:
        mov [saved_esp], esp
        # --- 32-bit PM -> 16-bit PM -> 32-bit PM
        ljmp SEL_CODE16, pm16_entry - low_start + LOW_BASE
back_from_pm16:
        CHECK "pm16.cs", SEL_CODE16, [R_PM16_CS]
        CHECK "pm16.operand-size-16", 0x1234ABCC, [R_PM16_DEC]
        CHECK "pm16.push-2-bytes", 2, [R_PM16_PUSH]
        mov eax, cs
        CHECK "pm16.back-in-32bit-cs", SEL_CODE32, eax

        # --- 32-bit PM -> 16-bit PM -> real mode -> 32-bit PM
        cli
        ljmp SEL_CODE16, pm16_to_rm - low_start + LOW_BASE
back_from_rm:
        mov eax, SEL_DATA
        mov ds, eax
        mov es, eax
        mov fs, eax
        mov gs, eax
        mov ss, eax
        mov esp, [saved_esp]
        lidt [idt32_desc]
        CHECK "rm.cs-is-0", 0, [R_RM_CS]
        CHECK "rm.cr0-pe-clear", 0, [R_RM_PE]
        CHECK "rm.segment-times-16", 0xBEEF, [R_RM_SEG]
        CHECK "rm.push-2-bytes", 2, [R_RM_PUSH]
        CHECK "rm.ivt-int-ran", 1, [R_RM_INT_RAN]
        CHECK "rm.ivt-int-pushed-ip", RM_AFTER_INT, [R_RM_INT_IP]
        CHECK "rm.ivt-int-pushed-cs", 0, [R_RM_INT_CS]
        mov eax, cr0
        and eax, CR0_PE | CR0_PG
        CHECK "rm.back-in-pm", CR0_PE, eax

        # --- 32-bit PM -> long mode
        ENTER_LONG
        mov ecx, cs
        CHECK64 "lm.cs", SEL_CODE64, rcx
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LMA | EFER_LME
        CHECK64 "lm.efer-lma-lme", EFER_LMA | EFER_LME, rax
        mov rax, cr0
        mov rcx, 0x80000001
        and rax, rcx
        CHECK64 "lm.cr0-pg-pe", 0x80000001, rax
        mov rax, cr4
        and eax, CR4_PAE
        CHECK64 "lm.cr4-pae", CR4_PAE, rax
        mov rcx, 0x123456789ABCDEF0
        add rcx, rcx
        CHECK64 "lm.64bit-add", 0x2468ACF13579BDE0, rcx
        mov rcx, rsp
        push rax
        sub rcx, rsp
        pop rax
        CHECK64 "lm.push-8-bytes", 8, rcx
        lea rcx, [rip]
rip_here:
        mov rdx, offset rip_here
        CHECK64 "lm.rip-relative", rdx, rcx

        # --- 64-bit -> compatibility mode -> 64-bit
        push SEL_CODE32
        push offset compat_entry
        retfq
        .code32
compat_entry:
        mov eax, 5
        .byte 0x48                          # dec eax in compatibility mode (REX in 64-bit)
        mov [r_cm_dec], eax
        mov ecx, esp
        push eax
        sub ecx, esp
        pop eax
        mov [r_cm_push], ecx
        mov ecx, MSR_EFER
        rdmsr
        mov [r_cm_efer], eax
        mov eax, cs
        mov [r_cm_cs], eax
        ljmp SEL_CODE64, offset back_to_64
        .code64
back_to_64:
        mov ecx, cs
        CHECK64 "cm.back-in-64bit-cs", SEL_CODE64, rcx
        CHECK64D "cm.dec-eax", 4, [r_cm_dec]
        CHECK64D "cm.push-4-bytes", 4, [r_cm_push]
        mov eax, [r_cm_efer]
        and eax, EFER_LMA
        CHECK64D "cm.efer-lma-still-set", EFER_LMA, eax
        CHECK64D "cm.cs", SEL_CODE32, [r_cm_cs]

        # --- long mode -> 32-bit PM (paging and LME off)
        LEAVE_LONG
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LMA | EFER_LME
        CHECK "pm32.efer-lma-clear", 0, eax
        mov eax, cr0
        and eax, CR0_PG
        CHECK "pm32.cr0-pg-clear", 0, eax
        mov eax, 0x7FFFFFFF
        .byte 0x40                          # inc eax in 32-bit PM
        CHECK "pm32.inc-eax", 0x80000000, eax
        ret

        .section .data, "aw"
saved_esp:      .long 0
r_cm_dec:       .long 0
r_cm_push:      .long 0
r_cm_efer:      .long 0
r_cm_cs:        .long 0

        .section .note.GNU-stack, "", @progbits
