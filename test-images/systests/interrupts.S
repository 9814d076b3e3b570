# systest interrupts: PIT channel 0 -> 8259 PIC -> CPU in real mode (IVT), 32-bit PM and long
# mode (IDT); the STI interrupt shadow; HLT waiting for an interrupt; the local APIC timer (xAPIC
# MMIO at 0xFEE00000) one-shot and periodic, and what EOI does (README.md, "interrupts").

        .include "../systests/systest.inc"

        .equ PIT_DIVISOR, 1193              # 1 kHz
        .equ LAPIC, 0xFEE00000
        .equ LAPIC_EOI, 0xB0
        .equ LAPIC_SVR, 0xF0
        .equ LAPIC_LVT_TIMER, 0x320
        .equ LAPIC_LVT_LINT0, 0x350
        .equ LAPIC_LVT_LINT1, 0x360
        .equ LAPIC_TIMER_INIT, 0x380
        .equ LAPIC_TIMER_CUR, 0x390
        .equ LAPIC_TIMER_DIV, 0x3E0
        .equ TIMER_VECTOR, 0x30
        .equ TIMER_COUNT, 200000            # / 16 at the APIC bus clock: a few ms at most

# PIC_INIT base: both 8259s in cascade, master at base, slave at base + 8, only IRQ0 unmasked.
# Mode neutral (al, dx only).
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

        .section .lowtext, "ax"
        .balign 4
rm_ticks:       .long 0
rm_loops:       .long 0
rm_idt_desc:    .word 0x3FF
                .long 0
        .set R_TICKS, rm_ticks - low_start + LOW_BASE
        .set R_LOOPS, rm_loops - low_start + LOW_BASE
        .set RM_IDT_DESC, rm_idt_desc - low_start + LOW_BASE

        .code16
pm16_to_rm:
        mov ax, SEL_DATA16
        mov ds, ax
        mov es, ax
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
        mov word ptr [8 * 4], rm_irq0 - low_start + LOW_BASE
        mov word ptr [8 * 4 + 2], 0
        PIC_INIT 0x08
        PIT_START
1:      inc dword ptr [R_LOOPS]
        sti
        hlt
        cli
        cmp dword ptr [R_TICKS], 3
        jb 1b
        mov eax, cr0
        or eax, CR0_PE
        mov cr0, eax
        .byte 0x66, 0xEA
        .long back_from_rm
        .word SEL_CODE32

rm_irq0:
        push ax
        inc dword ptr [R_TICKS]
        mov al, 0x20
        out 0x20, al
        pop ax
        iret

        .section .text, "ax"
        .code32
main32:
        mov [saved_esp], esp
        # Like a BIOS: APIC software-enabled, LINT0 = ExtINT (the 8259), LINT1 = NMI.
        mov dword ptr [LAPIC + LAPIC_SVR], 0x1FF
        mov dword ptr [LAPIC + LAPIC_LVT_LINT0], 0x700
        mov dword ptr [LAPIC + LAPIC_LVT_LINT1], 0x400

        # --- real mode: IRQ0 through the IVT (vector 8), sti; hlt until 3 ticks.
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
        CHECK "rm.irq0-ticks", 3, [R_TICKS]
        mov eax, [R_LOOPS]
        cmp eax, 3
        setbe al                            # each hlt waited for a tick
        movzx eax, al
        CHECK "rm.hlt-waits-for-irq0", 1, eax
2:
        # --- 32-bit PM: IRQ0 at vector 0x20 through the IDT.
        PVM_SKIP pm32.irq0, "PVM cannot emulate IRETD in 32-bit ring 0", 9f
        PIC_INIT 0x20
        PIT_START
        SET_HANDLER32 0x20, pit_handler32
        xor ecx, ecx
1:      inc ecx
        sti
        hlt
        cli
        cmp dword ptr [ticks], 3
        jb 1b
        CHECK "pm32.irq0-ticks", 3, [ticks]
        cmp ecx, 3
        setbe al
        movzx eax, al
        CHECK "pm32.hlt-waits-for-irq0", 1, eax

        # STI shadow with IRQ0 already pending: `sti; hlt` takes it after the hlt (return EIP
        # after hlt, and hlt wakes), `sti; nop` after the nop.
        SET_HANDLER32 0x20, pit_record32
        call wait_irq0_pending
        mov dword ptr [first_eip], 0
        sti
        hlt
after_hlt32:
        cli
        mov ecx, offset after_hlt32
        CHECK "pm32.sti-hlt-shadow.eip", ecx, [first_eip]
        call wait_irq0_pending
        mov dword ptr [first_eip], 0
        sti
        nop
after_nop32:
        cli
        mov ecx, offset after_nop32
        CHECK "pm32.sti-nop-shadow.eip", ecx, [first_eip]
9:      PIC_INIT 0x20
        PIT_START

        # --- long mode: IRQ0 through the 64-bit IDT.
        ENTER_LONG
        SET_HANDLER64 0x20, pit_handler64
        mov dword ptr [ticks], 0
        xor ecx, ecx
1:      inc ecx
        sti
        hlt
        cli
        cmp dword ptr [ticks], 3
        jb 1b
        CHECK64D "lm.irq0-ticks", 3, [ticks]
        SET_HANDLER64 0x20, pit_record64
        call wait_irq0_pending
        mov qword ptr [first_eip], 0
        sti
        hlt
after_hlt64:
        cli
        mov rcx, offset after_hlt64
        CHECK64 "lm.sti-hlt-shadow.rip", rcx, [first_eip]
        SET_HANDLER64 0x20, pit_handler64

        # --- local APIC timer, one-shot: fires once, then the current count stays 0.
        mov rbx, LAPIC
        SET_HANDLER64 TIMER_VECTOR, apic_handler64
        mov dword ptr [rbx + LAPIC_TIMER_DIV], 0x3          # divide by 16
        mov dword ptr [rbx + LAPIC_LVT_TIMER], TIMER_VECTOR # one-shot
        mov dword ptr [rbx + LAPIC_TIMER_INIT], TIMER_COUNT
        mov eax, [rbx + LAPIC_TIMER_CUR]
        test eax, eax
        setnz al
        movzx eax, al
        CHECK64 "apic.oneshot.counting", 1, rax
1:      sti
        hlt                                 # PIT ticks wake us too
        cli
        cmp dword ptr [apic_count], 1
        jb 1b
        mov eax, [ticks]
        add eax, 20
        mov [deadline], eax
1:      sti
        hlt
        cli
        mov eax, [ticks]
        cmp eax, [deadline]
        jb 1b
        CHECK64D "apic.oneshot.fired-once", 1, [apic_count]
        CHECK64D "apic.oneshot.current-count-0", 0, [rbx+LAPIC_TIMER_CUR]

        # --- periodic: fires again and again; stopped by masking and a zero initial count.
        mov dword ptr [apic_count], 0
        mov dword ptr [rbx + LAPIC_LVT_TIMER], TIMER_VECTOR | (1 << 17)
        mov dword ptr [rbx + LAPIC_TIMER_INIT], TIMER_COUNT
1:      sti
        hlt
        cli
        cmp dword ptr [apic_count], 4
        jb 1b
        mov eax, [rbx + LAPIC_TIMER_CUR]
        test eax, eax
        setnz al
        movzx eax, al
        CHECK64 "apic.periodic.reloads", 1, rax
        CHECK64D "apic.periodic.fired-4", 4, [apic_count]

        # --- EOI: without it the in-service timer vector blocks the next timer interrupt; the
        # EOI lets the pending one in.
        PVM_SKIP apic.eoi, "PVM does not keep the timer vector in service until EOI", 9f
        SET_HANDLER64 TIMER_VECTOR, apic_handler_no_eoi64
        mov dword ptr [apic_count], 0
1:      sti
        hlt
        cli
        cmp dword ptr [apic_count], 1
        jb 1b
        mov eax, [rbx + 0x110]              # ISR bits 32-63
        and eax, 1 << (TIMER_VECTOR - 32)
        CHECK64 "apic.no-eoi.isr-bit-set", 1 << (TIMER_VECTOR - 32), rax
        mov eax, [ticks]
        add eax, 20                         # >= 4 timer periods
        mov [deadline], eax
1:      sti
        hlt
        cli
        mov eax, [ticks]
        cmp eax, [deadline]
        jb 1b
        CHECK64D "apic.no-eoi-blocks-timer", 1, [apic_count]
        mov dword ptr [rbx + LAPIC_EOI], 0
1:      sti
        hlt
        cli
        cmp dword ptr [apic_count], 2
        jb 1b
        CHECK64D "apic.eoi-lets-pending-in", 2, [apic_count]
9:
        mov dword ptr [rbx + LAPIC_LVT_TIMER], 0x10000 | TIMER_VECTOR
        mov dword ptr [rbx + LAPIC_TIMER_INIT], 0
        mov dword ptr [rbx + LAPIC_EOI], 0
        OUTB 0x21, 0xFF                     # PIC: everything masked
        jmp finish64

# ---------------------------------------------------------------- helpers
        .code32
# wait_irq0_pending: with IF = 0, wait until the master PIC's IRR shows IRQ0.
wait_irq0_pending:
        OUTB 0x20, 0x0A                     # OCW3: read IRR
1:      in al, 0x20
        test al, 1
        jz 1b
        ret

pit_handler32:
        inc dword ptr [ticks]
        mov al, 0x20
        out 0x20, al
        ret

pit_record32:                               # first interrupt's pushed EIP into first_eip
        cmp dword ptr [first_eip], 0
        jne pit_handler32
        mov eax, [esp + 32]
        mov [first_eip], eax
        jmp pit_handler32

        .code64
pit_handler64:
        inc dword ptr [ticks]
        mov al, 0x20
        out 0x20, al
        ret

pit_record64:
        cmp qword ptr [first_eip], 0
        jne pit_handler64
        mov rax, [rsp + 48]
        mov [first_eip], rax
        jmp pit_handler64

apic_handler64:
        inc dword ptr [apic_count]
        mov eax, LAPIC                      # not a disp32: that would sign-extend
        mov dword ptr [rax + LAPIC_EOI], 0
        ret

apic_handler_no_eoi64:
        inc dword ptr [apic_count]
        ret

        .section .data, "aw"
        .balign 8
saved_esp:      .long 0
ticks:          .long 0
apic_count:     .long 0
deadline:       .long 0
first_eip:      .quad 0

        .section .note.GNU-stack, "", @progbits
