# Dev-check only (qemu-check.sh): a floppy boot sector that stands in for ringzero's flat loader
# under QEMU + SeaBIOS. It reads SECTORS sectors following it on the floppy to LOAD_ADDR with
# int 13h, recreates the entry state ringzero promises for flat images (segments, SP=0,
# EFLAGS=2, zero GPRs) and jumps in. Not used by cargo builds or tests.
#
# Assemble with --defsym LOAD_ADDR=<16-byte-aligned address below 640 KiB> --defsym SECTORS=<n>.

        .intel_syntax noprefix
        .include "pc.inc"

        .if LOAD_ADDR <= 0xFFFF
        .equ ENTRY_SEG, 0
        .equ ENTRY_IP, LOAD_ADDR
        .else
        .equ ENTRY_SEG, LOAD_ADDR >> 4
        .equ ENTRY_IP, LOAD_ADDR & 0xF
        .endif
        .equ SECTORS_PER_TRACK, 18          # 1.44 MB floppy geometry
        .equ HEADS, 2

        .section .text, "ax"
        .code16
        .globl _start
_start:
        cli
        cld
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7C00
        mov [drive], dl
        mov ax, LOAD_ADDR >> 4
        mov es, ax
        mov si, 1                           # LBA of the first image sector
        mov di, SECTORS
next_sector:
        mov ax, si
        xor dx, dx
        mov cx, SECTORS_PER_TRACK
        div cx                              # ax = track (cylinder * HEADS + head), dx = sector-1
        mov cl, dl
        inc cl                              # CHS sectors count from 1
        mov dh, al
        and dh, HEADS - 1
        shr ax, 1
        mov ch, al                          # cylinder (< 256 for our sizes)
        mov dl, [drive]
        xor bx, bx
        mov ax, 0x0201                      # read one sector to es:bx
        int 0x13
        jc disk_error
        mov ax, es
        add ax, 512 >> 4
        mov es, ax
        inc si
        dec di
        jnz next_sector

        # The flat loader's entry state.
        mov ax, ENTRY_SEG
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        xor eax, eax
        xor ebx, ebx
        xor ecx, ecx
        xor edx, edx
        xor esi, esi
        xor edi, edi
        xor ebp, ebp
        mov sp, 0                           # mov, not xor: flags are set last, below
        pushd 2
        popfd                               # EFLAGS = 2; SP is 0 again
        ljmp ENTRY_SEG, ENTRY_IP

disk_error:
        DEBUG_EXIT_WITH 0x7F

drive:  .byte 0
        .org 510
        .byte 0x55, 0xAA

        .section .note.GNU-stack, "", @progbits
