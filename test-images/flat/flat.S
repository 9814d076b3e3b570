# ringzero flat real-mode test image: checks the flat loader's entry state with a segment != 0.
#
# Loaded at 0x10000, so the loader enters it at 1000:0000 with DS=ES=FS=GS=SS=0x1000, SP=0,
# EFLAGS=2 and zero GPRs. It verifies exactly that, prints the lines of expected-output.txt
# (the CS value is read from the register, not assumed), writes the scratch latch at 0xE0 and
# reads it back, and exits through isa-debug-exit: 0x08 (status 17) if every check passed,
# 0x09 (status 19) otherwise. Real-mode code only; no BIOS.

        .intel_syntax noprefix
        .include "pc.inc"

        .equ LATCH_VALUE, 0x600DF1A7
        .equ EXIT_PASS, 0x08
        .equ EXIT_FAIL, 0x09

        # Entry-state failure bits, printed as entry mask on failure.
        .equ BAD_GPRS, 1 << 0
        .equ BAD_SP, 1 << 1
        .equ BAD_FLAGS, 1 << 2
        .equ BAD_SEGMENTS, 1 << 3

        .section .text, "ax"
        .code16
        .globl _start
_start:
        # Inspect the entry state before changing anything; ebp collects failure bits. EFLAGS
        # goes first (to SS:FFFC, inside our 64 KiB segment) since every test below changes it.
        pushfd
        or eax, ebx
        or eax, ecx
        or eax, edx
        or eax, esi
        or eax, edi
        or eax, ebp
        mov ebp, 0                      # mov leaves the flags of the last or intact
        jz 1f
        or bp, BAD_GPRS
1:      pop eax                         # entry EFLAGS; SP is back to its entry value
        cmp eax, 0x00000002
        je 1f
        or bp, BAD_FLAGS
1:      test sp, sp
        jz 1f
        or bp, BAD_SP
1:      mov ax, cs
        mov bx, ds
        cmp ax, bx
        jne 2f
        mov bx, es
        cmp ax, bx
        jne 2f
        mov bx, fs
        cmp ax, bx
        jne 2f
        mov bx, gs
        cmp ax, bx
        jne 2f
        mov bx, ss
        cmp ax, bx
        je 3f
2:      or bp, BAD_SEGMENTS
        mov ds, ax                      # our data is addressed relative to CS from here on
3:      cli
        cld
        UART_INIT

        mov si, offset msg_entry_ok
        test bp, bp
        jz 1f
        mov si, offset msg_entry_bad
        call puts
        mov ax, bp
        call print_hex16
        call newline
        jmp 2f
1:      call puts
2:
        mov si, offset msg_cs
        call puts
        mov ax, cs
        call print_hex16
        call newline

        # Scratch latch: a 32-bit register at 0xE0-0xE3 that returns what was written.
        mov dx, SCRATCH
        mov eax, LATCH_VALUE
        out dx, eax
        xor eax, eax
        in eax, dx
        cmp eax, LATCH_VALUE
        je 1f
        or bp, 0x80                     # not an entry-state bit; only fails the run
1:      mov ebx, eax
        mov si, offset msg_latch
        call puts
        mov eax, ebx
        shr eax, 16
        call print_hex16
        mov ax, bx
        call print_hex16
        call newline

        test bp, bp
        jnz 1f
        mov si, offset msg_pass
        call puts
        DEBUG_EXIT_WITH EXIT_PASS
1:      mov si, offset msg_fail
        call puts
        DEBUG_EXIT_WITH EXIT_FAIL

        PRINT_ROUTINES                  # puts, newline, putc (common/pc.inc)

print_hex16:                            # ax as 4 hex digits; clobbers ax, cx, dx, di
        mov di, ax
        mov cx, 4
1:      rol di, 4
        mov ax, di
        and ax, 0xF
        push si
        mov si, ax
        mov al, [si + hex_digits]
        pop si
        call putc
        loop 1b
        ret

        .section .rodata, "a"
hex_digits:     .ascii "0123456789abcdef"
msg_entry_ok:   .asciz "flat: entry state ok (segments = cs, sp = 0, eflags = 2, gprs = 0)\n"
msg_entry_bad:  .asciz "flat: FAIL entry state mask=0x"
msg_cs:         .asciz "flat: real mode ok cs="
msg_latch:      .asciz "flat: scratch latch=0x"
msg_pass:       .asciz "flat: all checks passed\n"
msg_fail:       .asciz "flat: checks FAILED\n"

        .section .note.GNU-stack, "", @progbits
