# ringzero ACPI power-off test: finds the ACPI tables as an OS does and enters S5.
#
# A Multiboot v1 ELF32 kernel linked at 1 MiB, entered in 32-bit protected mode with paging off.
# It scans 0xE0000-0xFFFFF for the RSDP, checks every checksum on the way, follows the XSDT (or
# the RSDT on an ACPI 1.0 RSDP) to the FADT, takes PM1a_CNT_BLK and the DSDT from it, finds
# `Name (_S5_, Package { SLP_TYPa, ... })` in the DSDT's AML, and writes SLP_TYPa << 10 | SLP_EN
# to PM1a_CNT the way ACPICA does (type first, then type with SLP_EN). The machine must power
# off on that write; if it does not, or any step fails, the kernel prints a FAIL line and exits
# through isa-debug-exit with 1 (VMM status 3). Output format: README.md.

        .intel_syntax noprefix
        .include "pc.inc"

        .equ MB_HEADER_MAGIC, 0x1BADB002
        .equ MB_HEADER_FLAGS, 0x00000000    # nothing asked for: loaded by its ELF headers
        .equ MB_BOOT_MAGIC, 0x2BADB002

        .equ SCAN_START, 0xE0000            # the BIOS area an OS scans without EFI
        .equ SCAN_END, 0x100000
        .equ HEADER_LEN, 36                 # ACPI system description table header
        .equ MAX_TABLE_LEN, 0x10000         # refuse anything larger: a corrupt length
        .equ SIG_RSD, 0x20445352            # "RSD "
        .equ SIG_PTR, 0x20525450            # "PTR "
        .equ SIG_XSDT, 0x54445358           # "XSDT"
        .equ SIG_RSDT, 0x54445352           # "RSDT"
        .equ SIG_FACP, 0x50434146           # "FACP"
        .equ SIG_DSDT, 0x54445344           # "DSDT"
        .equ NAME_S5, 0x5F35535F            # "_S5_"

        # FADT field offsets (ACPI 6.5 table 5.9)
        .equ FADT_DSDT, 40
        .equ FADT_SMI_CMD, 48
        .equ FADT_ACPI_ENABLE, 52
        .equ FADT_PM1A_CNT_BLK, 64
        .equ FADT_X_DSDT, 140
        .equ FADT_X_PM1A_CNT_BLK, 172       # Generic Address Structure, 12 bytes

        # AML opcodes
        .equ AML_ZERO, 0x00
        .equ AML_ONE, 0x01
        .equ AML_NAME, 0x08
        .equ AML_BYTE_PREFIX, 0x0A
        .equ AML_PACKAGE, 0x12
        .equ AML_ROOT_PREFIX, 0x5C          # '\'

        .equ SCI_EN, 1 << 0
        .equ ACPI_ENABLE_POLLS, 1000000     # reads of PM1a_CNT before giving up on SCI_EN
        .equ POWER_OFF_GRACE_READS, 20000   # reads of PM1a_CNT after SLP_EN before failing
        .equ SLP_TYP_SHIFT, 10
        .equ SLP_TYP_MASK, 7 << 10
        .equ SLP_EN, 1 << 13

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
        mov esp, offset stack_top
        mov ebp, eax                        # boot magic
        UART_INIT
        mov esi, offset msg_bad_magic
        cmp ebp, MB_BOOT_MAGIC
        jne fail

# --- 1. the RSDP: "RSD PTR " on a 16-byte boundary with a valid 20-byte checksum
        mov ebx, SCAN_START
1:      cmp dword ptr [ebx], SIG_RSD
        jne 2f
        cmp dword ptr [ebx + 4], SIG_PTR
        jne 2f
        mov esi, ebx
        mov ecx, 20
        call checksum
        jz 3f
2:      add ebx, 16
        cmp ebx, SCAN_END
        jb 1b
        mov esi, offset msg_no_rsdp
        jmp fail
3:      mov esi, offset msg_rsdp
        call puts
        mov eax, ebx
        call print_hex32
        mov esi, offset msg_revision
        call puts
        movzx eax, byte ptr [ebx + 15]
        call print_dec
        # Revision 2+: the extended checksum covers `length` bytes and the XSDT is the root.
        cmp byte ptr [ebx + 15], 2
        jb 4f
        mov ecx, [ebx + 20]
        mov esi, offset msg_bad_rsdp_length
        cmp ecx, 36
        jb fail
        cmp ecx, MAX_TABLE_LEN
        ja fail
        mov esi, ebx
        call checksum
        mov esi, offset msg_bad_xchecksum
        jnz fail
        cmp dword ptr [ebx + 24], 0         # XSDT address, low half
        je 4f
        mov esi, offset msg_above_4g
        cmp dword ptr [ebx + 28], 0         # high half: we run without paging
        jne fail
        mov esi, offset msg_checksums_ok
        call puts
        mov esi, offset msg_xsdt
        mov edi, SIG_XSDT
        mov eax, [ebx + 24]
        mov edx, 8                          # entry size
        jmp 5f
4:      mov esi, offset msg_checksum_ok
        call puts
        mov esi, offset msg_rsdt
        mov edi, SIG_RSDT
        mov eax, [ebx + 16]
        mov edx, 4

# --- 2. the root table (XSDT or RSDT): find the FADT among its entries
5:      call puts                           # "acpi: xsdt at " / "acpi: rsdt at "
        call print_hex32
        mov ebx, eax
        mov esi, ebx
        call check_table                    # edi = signature; ecx = length
        sub ecx, HEADER_LEN
        mov eax, ecx
        push edx
        xor edx, edx
        div dword ptr [esp]                 # eax = entries
        pop edx
        mov ecx, eax
        mov esi, offset msg_entries
        call puts
        call print_dec
        mov esi, offset msg_checksum_ok
        call puts
        lea esi, [ebx + HEADER_LEN]
6:      test ecx, ecx
        jz 8f
        mov eax, [esi]
        cmp edx, 8
        jne 7f
        cmp dword ptr [esi + 4], 0          # a table above 4 GiB cannot be the FADT we read
        jne 9f
7:      test eax, eax
        jz 9f
        cmp dword ptr [eax], SIG_FACP
        je 10f
9:      add esi, edx
        dec ecx
        jmp 6b
8:      mov esi, offset msg_no_fadt
        jmp fail

# --- 3. the FADT: PM1a_CNT_BLK (X_ form when present and in I/O space) and ACPI mode
10:     mov ebx, eax
        mov esi, offset msg_fadt
        call puts
        call print_hex32
        mov esi, offset msg_revision
        call puts
        movzx eax, byte ptr [ebx + 8]
        call print_dec
        mov esi, ebx
        mov edi, SIG_FACP
        call check_table
        mov esi, offset msg_length
        call puts
        mov eax, ecx
        call print_dec
        mov esi, offset msg_checksum_ok
        call puts
        mov ebp, ecx                        # FADT length, to know which fields exist

        xor edx, edx
        cmp ebp, FADT_X_PM1A_CNT_BLK + 12
        jb 1f
        cmp byte ptr [ebx + FADT_X_PM1A_CNT_BLK], 1   # address space: system I/O
        jne 1f
        mov edx, [ebx + FADT_X_PM1A_CNT_BLK + 4]
1:      test edx, edx
        jnz 2f
        mov edx, [ebx + FADT_PM1A_CNT_BLK]
2:      mov esi, offset msg_no_pm1a
        test edx, edx
        jz fail
        cmp edx, 0xFFFF
        ja fail
        mov [pm1a_cnt_port], dx
        mov esi, offset msg_smi_cmd
        call puts
        mov eax, [ebx + FADT_SMI_CMD]
        call print_hex32
        mov esi, offset msg_pm1a_cnt
        call puts
        movzx eax, word ptr [pm1a_cnt_port]
        call print_hex16
        mov esi, offset msg_sci_en
        call puts
        mov dx, [pm1a_cnt_port]
        in ax, dx
        and eax, SCI_EN
        push eax
        call print_dec
        call newline
        pop eax
        test eax, eax
        jnz 3f
        # Legacy mode (QEMU starts so): write ACPI_ENABLE to SMI_CMD and wait for SCI_EN.
        mov esi, offset msg_not_acpi_mode
        mov edx, [ebx + FADT_SMI_CMD]
        test edx, edx
        jz fail
        cmp edx, 0xFFFF
        ja fail
        mov esi, offset msg_enable_acpi
        call puts
        movzx eax, byte ptr [ebx + FADT_ACPI_ENABLE]
        out dx, al
        mov dx, [pm1a_cnt_port]
        mov ecx, ACPI_ENABLE_POLLS
1:      in ax, dx
        test ax, SCI_EN
        jnz 2f
        loop 1b
        call newline
        mov esi, offset msg_not_acpi_mode
        jmp fail
2:      mov esi, offset msg_acpi_enabled
        call puts
3:

# --- 4. the DSDT (X_DSDT when the FADT has it and it is set)
        xor eax, eax
        cmp ebp, FADT_X_DSDT + 8
        jb 1f
        mov eax, [ebx + FADT_X_DSDT]
        test eax, eax
        jz 1f
        mov esi, offset msg_above_4g
        cmp dword ptr [ebx + FADT_X_DSDT + 4], 0
        jne fail
1:      test eax, eax
        jnz 2f
        mov eax, [ebx + FADT_DSDT]
2:      mov ebx, eax
        mov esi, offset msg_dsdt
        call puts
        call print_hex32
        mov esi, ebx
        mov edi, SIG_DSDT
        call check_table
        mov esi, offset msg_length
        call puts
        mov eax, ecx
        call print_dec
        mov esi, offset msg_checksum_ok
        call puts

# --- 5. `Name (_S5_, Package (n) { SLP_TYPa, ... })` in the AML: the first element
        lea esi, [ebx + HEADER_LEN]
        lea edi, [ebx + ecx - 8]            # room for name, PackageOp, PkgLength, count, byte
1:      cmp esi, edi
        ja 3f
        cmp dword ptr [esi], NAME_S5
        jne 2f
        cmp byte ptr [esi - 1], AML_NAME
        je 4f
        cmp byte ptr [esi - 1], AML_ROOT_PREFIX
        jne 2f
        cmp byte ptr [esi - 2], AML_NAME
        je 4f
2:      inc esi
        jmp 1b
3:      mov esi, offset msg_no_s5
        jmp fail
4:      add esi, 4
        cmp byte ptr [esi], AML_PACKAGE
        jne 3b
        movzx eax, byte ptr [esi + 1]       # PkgLength lead byte: bits 7-6 = extra bytes
        shr eax, 6
        lea esi, [esi + eax + 2]            # past PackageOp and PkgLength
        cmp byte ptr [esi], 0               # NumElements
        je 3b
        inc esi
        movzx eax, byte ptr [esi]
        cmp al, AML_ZERO
        je 5f
        cmp al, AML_ONE
        je 5f
        mov ecx, offset msg_bad_s5
        cmp al, AML_BYTE_PREFIX
        jne 6f
        movzx eax, byte ptr [esi + 1]
5:      cmp eax, 7                          # SLP_TYP is 3 bits wide
        jbe 7f
        mov ecx, offset msg_bad_s5
6:      mov esi, ecx
        jmp fail
7:      mov [slp_typ], eax
        mov esi, offset msg_s5
        call puts
        call print_dec
        call newline

# --- 6. enter S5 as ACPICA does: SLP_TYP first, then SLP_TYP | SLP_EN, other bits preserved
        mov dx, [pm1a_cnt_port]
        in ax, dx
        and ax, ~(SLP_TYP_MASK | SLP_EN)
        mov ecx, [slp_typ]
        shl ecx, SLP_TYP_SHIFT
        or eax, ecx
        movzx ebx, ax
        mov esi, offset msg_enter_s5
        call puts
        mov eax, ebx
        or eax, SLP_EN
        call print_hex16
        mov esi, offset msg_to
        call puts
        movzx eax, word ptr [pm1a_cnt_port]
        call print_hex16
        call newline
        mov dx, [pm1a_cnt_port]
        mov eax, ebx
        out dx, ax                          # write 1: the sleep type
        or eax, SLP_EN
        out dx, ax                          # write 2: go; the machine powers off here
        # A VMM may act on the request asynchronously (QEMU does): give it time, reading
        # PM1a_CNT so every iteration is an I/O exit, before calling the write a failure.
        mov ecx, POWER_OFF_GRACE_READS
1:      in ax, dx
        loop 1b
        mov esi, offset msg_still_running

# fail: prints "acpi: FAIL <esi>" and leaves with EXIT_FAIL.
fail:
        push esi
        mov esi, offset msg_fail
        call puts
        pop esi
        call puts
        DEBUG_EXIT_WITH EXIT_FAIL

# check_table: the table at esi must carry signature edi, a sane length (returned in ecx) and a
# zero byte sum; otherwise it fails with a message. Preserves everything else.
check_table:
        push esi
        mov ecx, offset msg_bad_signature
        cmp [esi], edi
        jne 1f
        mov ecx, [esi + 4]
        cmp ecx, HEADER_LEN
        jb 2f
        cmp ecx, MAX_TABLE_LEN
        ja 2f
        push ecx
        call checksum
        pop ecx
        jnz 3f
        pop esi
        ret
2:      mov ecx, offset msg_bad_length
        jmp 1f
3:      mov ecx, offset msg_bad_checksum
1:      call newline
        mov esi, ecx
        jmp fail

# checksum: ZF=1 when the ecx bytes at esi sum to 0 (mod 256). Clobbers eax, ecx, esi.
checksum:
        xor ah, ah
1:      lodsb
        add ah, al
        loop 1b
        test ah, ah
        ret

puts:                                       # esi -> NUL-terminated string; clobbers esi
        push eax
        push edx
1:      lodsb
        test al, al
        jz 2f
        PUTC_AL
        jmp 1b
2:      pop edx
        pop eax
        ret

newline:                                    # preserves eax
        push eax
        push edx
        mov al, '\n'
        PUTC_AL
        pop edx
        pop eax
        ret

putc:                                       # al; clobbers ax, dx
        PUTC_AL
        ret

# print_dec: eax as unsigned decimal. Preserves all registers.
print_dec:
        pushad
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
        popad
        ret

# print_hex32 / print_hex16: "0x" and eax as 8 / 4 hex digits. Preserve all registers.
print_hex32:
        pushad
        mov ecx, 8
        mov ebx, eax
        jmp print_hex
print_hex16:
        pushad
        mov ecx, 4
        mov ebx, eax
        shl ebx, 16
print_hex:
        mov al, '0'
        call putc
        mov al, 'x'
        call putc
1:      rol ebx, 4
        mov eax, ebx
        and eax, 0xF
        mov al, [eax + hex_digits]
        call putc
        loop 1b
        popad
        ret

        .section .rodata, "a"
hex_digits:             .ascii "0123456789abcdef"
msg_rsdp:               .asciz "acpi: rsdp at "
msg_revision:           .asciz " revision "
msg_checksums_ok:       .asciz " checksums ok\n"
msg_checksum_ok:        .asciz " checksum ok\n"
msg_xsdt:               .asciz "acpi: xsdt at "
msg_rsdt:               .asciz "acpi: rsdt at "
msg_entries:            .asciz " entries "
msg_fadt:               .asciz "acpi: fadt at "
msg_length:             .asciz " length "
msg_smi_cmd:            .asciz "acpi: smi_cmd "
msg_pm1a_cnt:           .asciz " pm1a_cnt "
msg_sci_en:             .asciz " sci_en "
msg_dsdt:               .asciz "acpi: dsdt at "
msg_s5:                 .asciz "acpi: _S5_ slp_typ_a "
msg_enable_acpi:        .asciz "acpi: enabling ACPI mode through smi_cmd:"
msg_acpi_enabled:       .asciz " sci_en 1\n"
msg_enter_s5:           .asciz "acpi: entering S5: writing "
msg_to:                 .asciz " to pm1a_cnt "
msg_fail:               .asciz "acpi: FAIL "
msg_bad_magic:          .asciz "not booted by a Multiboot loader\n"
msg_no_rsdp:            .asciz "no RSDP in 0xe0000-0xfffff\n"
msg_bad_rsdp_length:    .asciz "RSDP length out of range\n"
msg_bad_xchecksum:      .asciz "RSDP extended checksum\n"
msg_above_4g:           .asciz "table above 4 GiB\n"
msg_no_fadt:            .asciz "no FADT in the root table\n"
msg_no_pm1a:            .asciz "no usable PM1a_CNT_BLK\n"
msg_not_acpi_mode:      .asciz "SCI_EN is clear (not in ACPI mode)\n"
msg_no_s5:              .asciz "no _S5_ package in the DSDT\n"
msg_bad_s5:             .asciz "_S5_ SLP_TYPa is not a small constant\n"
msg_bad_signature:      .asciz "table signature mismatch\n"
msg_bad_length:         .asciz "table length out of range\n"
msg_bad_checksum:       .asciz "table checksum\n"
msg_still_running:      .asciz "machine still running after S5\n"

        .section .data, "aw"
pm1a_cnt_port:  .word 0
        .balign 4
slp_typ:        .long 0

        .section .bss, "aw", @nobits
        .balign 16
stack:          .skip 4096
stack_top:

        .section .note.GNU-stack, "", @progbits
