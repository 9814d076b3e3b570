# ringzero Multiboot (v1) test kernel: reports what the boot loader handed over, then exits.
#
# An ELF32 kernel linked at 1 MiB. It checks the boot magic, that .bss arrived zeroed, and that
# the info structure has the MEM, CMDLINE, MODS, MMAP and BOOT_LOADER_NAME flags; prints one line
# per item in the fixed format of README.md; exits through isa-debug-exit with 0 when every check
# passed and 1 otherwise. Runs under any Multiboot loader (QEMU -kernel, ringzero --kernel).

        .intel_syntax noprefix
        .include "pc.inc"

        .equ MB_HEADER_MAGIC, 0x1BADB002
        .equ MB_HEADER_FLAGS, 0x00000003    # bit 0: page-align modules, bit 1: want mem info
        .equ MB_BOOT_MAGIC, 0x2BADB002

        .equ MBI_FLAGS, 0
        .equ MBI_MEM_LOWER, 4
        .equ MBI_MEM_UPPER, 8
        .equ MBI_CMDLINE, 16
        .equ MBI_MODS_COUNT, 20
        .equ MBI_MODS_ADDR, 24
        .equ MBI_MMAP_LENGTH, 44
        .equ MBI_MMAP_ADDR, 48
        .equ MBI_LOADER_NAME, 64

        .equ F_MEM, 1 << 0
        .equ F_CMDLINE, 1 << 2
        .equ F_MODS, 1 << 3
        .equ F_MMAP, 1 << 6
        .equ F_LOADER_NAME, 1 << 9
        .equ F_REQUIRED, F_MEM | F_CMDLINE | F_MODS | F_MMAP | F_LOADER_NAME

        .equ MAX_STRING, 256                # longest string printed from the info structure
        .equ MAX_MODULE_TEXT, 200           # longest module text printed
        .equ MAX_MMAP_ENTRIES, 1024         # stop counting a runaway memory map here

        .equ EXIT_PASS, 0                   # VMM status 1
        .equ EXIT_FAIL, 1                   # VMM status 3

        .section .multiboot, "a"
        .balign 4
        .long MB_HEADER_MAGIC
        .long MB_HEADER_FLAGS
        .long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

        .section .text, "ax"
        .code32
        .globl _start
_start:
        cli
        cld
        mov ebp, eax                        # boot magic
        # .bss must be zero before anything (the stack included) touches it: compare it with
        # zero using registers only. repe scasd leaves ZF=1 only if every dword was zero.
        xor eax, eax
        mov edi, offset __bss_start
        mov ecx, offset __bss_dwords
        repe scasd
        setne byte ptr [bss_dirty]
        mov esp, offset stack_top
        UART_INIT

        mov esi, offset msg_magic_ok
        cmp ebp, MB_BOOT_MAGIC
        je 1f
        inc dword ptr [failures]
        mov esi, offset msg_magic_bad
        call puts
        mov eax, ebp
        call print_hex32
        call newline
        jmp finish                          # without the magic, ebx means nothing
1:      call puts

        mov esi, offset msg_bss_ok
        cmp byte ptr [bss_dirty], 0
        je 1f
        inc dword ptr [failures]
        mov esi, offset msg_bss_bad
1:      call puts

        mov edi, [ebx + MBI_FLAGS]
        mov eax, edi
        and eax, F_REQUIRED
        cmp eax, F_REQUIRED
        jne 1f
        mov esi, offset msg_flags_ok
        call puts
        jmp 2f
1:      inc dword ptr [failures]
        mov esi, offset msg_flags_bad
        call puts
        mov eax, edi
        call print_hex32
        call newline
2:
        test edi, F_LOADER_NAME
        jz 1f
        mov esi, offset msg_loader
        call puts
        mov esi, [ebx + MBI_LOADER_NAME]
        call puts_guest
        call newline
1:
        test edi, F_MEM
        jz 1f
        mov esi, offset msg_mem_lower
        call puts
        mov eax, [ebx + MBI_MEM_LOWER]
        call print_dec
        mov esi, offset msg_mem_upper
        call puts
        mov eax, [ebx + MBI_MEM_UPPER]
        call print_dec
        mov esi, offset msg_kib
        call puts
1:
        test edi, F_CMDLINE
        jz 1f
        mov esi, offset msg_cmdline
        call puts
        mov esi, [ebx + MBI_CMDLINE]
        call puts_guest
        call newline
1:
        test edi, F_MMAP
        jz 1f
        mov esi, offset msg_mmap
        call puts
        call count_mmap
        call print_dec
        call newline
1:
        test edi, F_MODS
        jz 1f
        mov esi, offset msg_mods
        call puts
        mov eax, [ebx + MBI_MODS_COUNT]
        call print_dec
        call newline
        cmp dword ptr [ebx + MBI_MODS_COUNT], 0
        je 1f
        call print_module0
1:
finish:
        cmp dword ptr [failures], 0
        jne 1f
        mov esi, offset msg_pass
        call puts
        DEBUG_EXIT_WITH EXIT_PASS
1:      mov esi, offset msg_fail
        call puts
        DEBUG_EXIT_WITH EXIT_FAIL

# count_mmap: eax = number of memory-map entries (each is `size` bytes plus the size field).
count_mmap:
        push esi
        push edx
        push ecx
        mov esi, [ebx + MBI_MMAP_ADDR]
        mov edx, [ebx + MBI_MMAP_LENGTH]
        add edx, esi                        # end
        xor eax, eax
1:      cmp esi, edx
        jae 2f
        cmp eax, MAX_MMAP_ENTRIES
        jae 2f
        inc eax
        mov ecx, [esi]
        lea esi, [esi + ecx + 4]
        jmp 1b
2:      pop ecx
        pop edx
        pop esi
        ret

# print_module0: "multiboot: mod0 size=<n> text=<first line>\n".
print_module0:
        mov ebp, [ebx + MBI_MODS_ADDR]
        mov esi, offset msg_mod0_size
        call puts
        mov eax, [ebp + 4]                  # mod_end
        sub eax, [ebp]                      # - mod_start
        mov ecx, eax
        call print_dec
        mov esi, offset msg_mod0_text
        call puts
        mov esi, [ebp]
        cmp ecx, MAX_MODULE_TEXT
        jbe 1f
        mov ecx, MAX_MODULE_TEXT
1:      test ecx, ecx
        jz 2f
        lodsb
        cmp al, '\n'
        je 2f
        call putc_printable
        dec ecx
        jmp 1b
2:      jmp newline

# puts_guest: a NUL-terminated string from the boot loader at esi, at most MAX_STRING bytes,
# non-printable bytes shown as '.'.
puts_guest:
        push ecx
        mov ecx, MAX_STRING
1:      lodsb
        test al, al
        jz 2f
        call putc_printable
        dec ecx
        jnz 1b
2:      pop ecx
        ret

putc_printable:                             # al, with bytes outside 0x20-0x7e as '.'
        cmp al, 0x20
        jb 1f
        cmp al, 0x7E
        jbe putc
1:      mov al, '.'
        jmp putc

        PRINT_ROUTINES                  # puts, newline, putc (common/pc.inc)

# print_dec: eax as unsigned decimal. Clobbers eax, edx.
print_dec:
        push ecx
        push ebx
        mov ebx, 10
        xor ecx, ecx
1:      xor edx, edx
        div ebx
        push edx
        inc ecx
        test eax, eax
        jnz 1b
2:      pop eax
        add al, '0'
        call putc
        loop 2b
        pop ebx
        pop ecx
        ret

# print_hex32: eax as 8 hex digits. Clobbers eax, edx.
print_hex32:
        push ecx
        push ebx
        mov ebx, eax
        mov ecx, 8
1:      rol ebx, 4
        mov eax, ebx
        and eax, 0xF
        mov al, [eax + hex_digits]
        call putc
        loop 1b
        pop ebx
        pop ecx
        ret

        .section .rodata, "a"
hex_digits:     .ascii "0123456789abcdef"
msg_magic_ok:   .asciz "multiboot: magic ok\n"
msg_magic_bad:  .asciz "multiboot: FAIL magic=0x"
msg_bss_ok:     .asciz "multiboot: bss zeroed\n"
msg_bss_bad:    .asciz "multiboot: FAIL bss not zeroed\n"
msg_flags_ok:   .asciz "multiboot: flags ok\n"
msg_flags_bad:  .asciz "multiboot: FAIL flags=0x"
msg_loader:     .asciz "multiboot: loader="
msg_mem_lower:  .asciz "multiboot: mem_lower="
msg_mem_upper:  .asciz "KiB mem_upper="
msg_kib:        .asciz "KiB\n"
msg_cmdline:    .asciz "multiboot: cmdline="
msg_mmap:       .asciz "multiboot: mmap entries="
msg_mods:       .asciz "multiboot: mods="
msg_mod0_size:  .asciz "multiboot: mod0 size="
msg_mod0_text:  .asciz " text="
msg_pass:       .asciz "multiboot: all checks passed\n"
msg_fail:       .asciz "multiboot: checks FAILED\n"

        .section .data, "aw"
failures:       .long 0
bss_dirty:      .byte 0

        .section .bss, "aw", @nobits
        .balign 16
stack:          .skip 4096
stack_top:
bss_probe:      .skip 4096                  # never written: more bytes for the zero check

        .section .note.GNU-stack, "", @progbits
