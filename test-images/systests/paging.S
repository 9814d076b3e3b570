# systest paging: 4-level paging in long mode (README.md, "paging").
#
# The permission matrix U/S x R/W x NX x CR0.WP x CPL (0, 3) x access (read, write, fetch) for a
# 4 KiB page and a 2 MiB page (192 checks, each the #PF error code or "no fault"), accessed and
# dirty bits set by the CPU (PTE, 2 MiB PDE, the PDE above a PT), and INVLPG / CR3 reload
# (a changed PTE is seen after invlpg, after a CR3 write, a global page after invlpg).

        .include "../systests/systest.inc"

        .equ VA_4K, WINDOW + 0x8000         # pt_win[8] -> win_pages + 0x7000
        .equ FRAME_4K, 0x7000               # offset in win_pages
        .equ VA_AD, WINDOW + 0x9000         # pt_win[9] -> win_pages + 0x6000
        .equ VA_INV, WINDOW + 0xA000        # pt_win[10] -> frame A or B
        .equ VA_GLOBAL, WINDOW + 0xB000     # pt_win[11] -> frame A or B, global
        .equ NO_FAULT, 0xFF                 # "got" when the access did not fault
        .equ CR2_WRONG, 0x8000              # or-ed into "got" when CR2 is not the address

        .section .text, "ax"
        .code32
main32:
        ENTER_LONG
        call matrix
        call accessed_dirty
        call invalidation
        jmp finish64

        .code64
# ---------------------------------------------------------------- permission matrix
# r12 = combination: bit 0 U/S, 1 R/W, 2 NX, 3 WP, 4 CPL 3, 5-6 access (0 read, 1 write,
# 2 fetch), 7 size (0 = 4 KiB, 1 = 2 MiB). r13 = access, r14 = the linear address.
matrix:
        xor r12d, r12d
1:      mov eax, r12d
        shr eax, 5
        and eax, 3
        cmp eax, 3
        je 9f                               # no access kind 3
        call matrix_one
9:      inc r12d
        cmp r12d, 256
        jb 1b
        ret

matrix_one:
        mov r13d, r12d
        shr r13d, 5
        and r13d, 3
        # The entry: P, U/S, R/W, NX as the combination says.
        mov eax, PTE_P
        test r12d, 1
        jz 1f
        or eax, PTE_U
1:      test r12d, 2
        jz 1f
        or eax, PTE_W
1:      test r12d, 4
        jz 1f
        bts rax, 63
1:      test r12d, 0x80
        jnz 2f
        mov rdx, offset win_pages + FRAME_4K
        or rax, rdx
        mov [pt_win + 8 * 8], rax
        mov r14, VA_4K
        mov byte ptr [win_pages + FRAME_4K], 0xC3   # ret, for the fetch
        jmp 3f
2:      or rax, WIN_2M_PHYS + PTE_PS
        mov [pd_win + 8], rax
        mov r14, WINDOW_2M
        mov byte ptr [WIN_2M_PHYS], 0xC3
3:      invlpg [r14]
        mov rax, cr0
        and eax, ~CR0_WP
        test r12d, 8
        jz 1f
        or eax, CR0_WP
1:      mov cr0, rax
        # The access.
        mov rbx, r14
        ARM64 8f
        test r12d, 0x10
        jnz 5f
        call access                         # CPL 0
        DISARM
        jmp 8f
5:      RING3_64 r3_access                  # ends in ud2 (vector 6) when it does not fault
8:      # got: the #PF error code (| CR2_WRONG), NO_FAULT, or 0x100 | any other vector.
        mov eax, NO_FAULT
        mov rcx, [exc_vector]
        cmp rcx, NOEXC
        je 1f
        cmp rcx, 6
        jne 2f
        test r12d, 0x10
        jnz 1f
2:      lea eax, [rcx + 0x100]
        cmp rcx, 14
        jne 1f
        mov rax, [exc_error]
        lea rdx, [r14 + 0x20]               # the address `access` touches for this kind
        cmp r13d, 1
        jb 3f
        lea rdx, [r14 + 0x10]
        je 3f
        mov rdx, r14
3:      cmp rdx, [exc_cr2]
        je 1f
        or eax, CR2_WRONG
1:      mov r15d, eax
        call matrix_expected
        mov edx, eax
        mov eax, r15d
        call matrix_name
        mov esi, offset name_buf
        call check64
        ret

# access: r13 = kind, rbx = address. Read [rbx+0x20], write [rbx+0x10], or call rbx (ret).
access:
        cmp r13d, 1
        je 1f
        ja 2f
        mov al, [rbx + 0x20]
        ret
1:      mov byte ptr [rbx + 0x10], 0x5A
        ret
2:      call rbx
        ret

r3_access:
        call access
        ud2

# matrix_expected: eax = the #PF error code the combination r12 must give, or NO_FAULT.
matrix_expected:
        xor ecx, ecx                        # ecx = 1 when it faults
        test r12d, 0x10
        jz 1f
        test r12d, 1
        jnz 1f
        mov ecx, 1                          # CPL 3 on a supervisor page
1:      cmp r13d, 1
        jne 2f
        test r12d, 2
        jnz 2f
        test r12d, 0x18                     # read-only: faults at CPL 3, or CPL 0 with WP
        jz 2f
        mov ecx, 1
2:      cmp r13d, 2
        jne 3f
        test r12d, 4
        jz 3f
        mov ecx, 1                          # fetch from NX
3:      mov eax, NO_FAULT
        test ecx, ecx
        jz 9f
        mov eax, 1                          # P: every entry is present
        cmp r13d, 1
        jne 4f
        or eax, 2                           # W/R
4:      test r12d, 0x10
        jz 5f
        or eax, 4                           # U/S
5:      cmp r13d, 2
        jne 9f
        or eax, 0x10                        # I/D
9:      ret

# matrix_name: name_buf = "pg.<4k|2m>.us<n>.rw<n>.nx<n>.wp<n>.cpl<0|3>.<read|write|fetch>".
# Preserves eax, edx.
matrix_name:
        push rax
        push rdx
        mov edi, offset name_buf
        mov esi, offset s_pg4k
        test r12d, 0x80
        jz 1f
        mov esi, offset s_pg2m
1:      call append
        mov esi, offset s_us
        mov ecx, 1
        call append_bit
        mov esi, offset s_rw
        mov ecx, 2
        call append_bit
        mov esi, offset s_nx
        mov ecx, 4
        call append_bit
        mov esi, offset s_wp
        mov ecx, 8
        call append_bit
        mov esi, offset s_cpl0
        test r12d, 0x10
        jz 1f
        mov esi, offset s_cpl3
1:      call append
        mov esi, offset s_read
        cmp r13d, 1
        jb 1f
        mov esi, offset s_write
        je 1f
        mov esi, offset s_fetch
1:      call append
        mov byte ptr [rdi], 0
        pop rdx
        pop rax
        ret

append:                                     # copy the string at rsi (without NUL) to rdi
        lodsb
        test al, al
        jz 1f
        stosb
        jmp append
1:      ret

append_bit:                                 # string at rsi, then '0' or '1' for r12 & ecx
        call append
        test r12d, ecx
        setnz al
        add al, '0'
        stosb
        ret

# ---------------------------------------------------------------- accessed / dirty
accessed_dirty:
        mov rax, cr0
        or eax, CR0_WP
        mov cr0, rax
        mov rax, offset win_pages + 0x6000 + PTE_P + PTE_W + PTE_U
        mov [pt_win + 9 * 8], rax
        mov rbx, VA_AD
        invlpg [rbx]
        mov al, [rbx]
        mov rax, [pt_win + 9 * 8]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.4k.read-sets-a-only", PTE_A, rax
        mov byte ptr [rbx], 1
        mov rax, [pt_win + 9 * 8]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.4k.write-sets-d", PTE_A | PTE_D, rax
        # A write as the first access sets both.
        and byte ptr [pt_win + 9 * 8], ~(PTE_A | PTE_D)
        invlpg [rbx]
        mov byte ptr [rbx + 8], 1
        mov rax, [pt_win + 9 * 8]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.4k.first-write-sets-a-and-d", PTE_A | PTE_D, rax
        # The PDE above the page table gets A on a walk (it has no D).
        and byte ptr [pd_win], ~PTE_A
        mov rax, cr3
        mov cr3, rax
        mov al, [rbx]
        mov rax, [pd_win]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.pde-of-pt.walk-sets-a", PTE_A, rax
        # 2 MiB page: A and D in the PDE.
        mov rax, WIN_2M_PHYS + PTE_P + PTE_W + PTE_U + PTE_PS
        mov [pd_win + 8], rax
        mov rbx, WINDOW_2M
        invlpg [rbx]
        mov al, [rbx + 0x1234]
        mov rax, [pd_win + 8]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.2m.read-sets-a-only", PTE_A, rax
        mov byte ptr [rbx + 0x100000], 1
        mov rax, [pd_win + 8]
        and eax, PTE_A | PTE_D
        CHECK64 "ad.2m.write-sets-d", PTE_A | PTE_D, rax
        ret

# ---------------------------------------------------------------- invalidation
invalidation:
        mov byte ptr [win_pages + 0x4000], 0x11     # frame A
        mov byte ptr [win_pages + 0x5000], 0x22     # frame B
        mov r8, offset win_pages + 0x4000 + PTE_P + PTE_W
        mov r9, offset win_pages + 0x5000 + PTE_P + PTE_W
        mov rbx, VA_INV
        mov [pt_win + 10 * 8], r8
        invlpg [rbx]
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.frame-a", 0x11, rax
        mov [pt_win + 10 * 8], r9
        invlpg [rbx]
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.invlpg-sees-new-pte", 0x22, rax
        mov [pt_win + 10 * 8], r8
        mov rax, cr3
        mov cr3, rax
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.cr3-write-sees-new-pte", 0x11, rax
        mov qword ptr [pt_win + 10 * 8], 0
        invlpg [rbx]
        ARM64 1f
        mov al, [rbx]
        DISARM
1:      CHECK64 "tlb.invlpg-unmapped-faults", 14, [exc_vector]
        # invlpg of any address inside a 2 MiB page drops the whole translation.
        mov byte ptr [WIN_2M_PHYS + 0x100], 0x33
        mov byte ptr [0x600000 + 0x100], 0x44
        mov rax, WIN_2M_PHYS + PTE_P + PTE_W + PTE_PS
        mov [pd_win + 8], rax
        mov rbx, WINDOW_2M
        invlpg [rbx]
        movzx eax, byte ptr [rbx + 0x100]
        CHECK64 "tlb.2m.old-frame", 0x33, rax
        mov rax, 0x600000 + PTE_P + PTE_W + PTE_PS
        mov [pd_win + 8], rax
        invlpg [rbx + 0x1FF000]
        movzx eax, byte ptr [rbx + 0x100]
        CHECK64 "tlb.2m.invlpg-elsewhere-in-page", 0x44, rax
        # A global page (CR4.PGE) is dropped by invlpg too.
        mov rax, cr4
        or eax, 0x80
        mov cr4, rax
        mov rbx, VA_GLOBAL
        lea rax, [r8 + PTE_G]
        mov [pt_win + 11 * 8], rax
        invlpg [rbx]
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.global.frame-a", 0x11, rax
        lea rax, [r9 + PTE_G]
        mov [pt_win + 11 * 8], rax
        invlpg [rbx]
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.global.invlpg-sees-new-pte", 0x22, rax
        # Clearing CR4.PGE flushes global entries too.
        lea rax, [r8 + PTE_G]
        mov [pt_win + 11 * 8], rax
        mov rax, cr4
        and eax, ~0x80
        mov cr4, rax
        movzx eax, byte ptr [rbx]
        CHECK64 "tlb.global.pge-off-flushes", 0x11, rax
        ret

        .section .rodata, "a"
s_pg4k:         .asciz "pg.4k"
s_pg2m:         .asciz "pg.2m"
s_us:           .asciz ".us"
s_rw:           .asciz ".rw"
s_nx:           .asciz ".nx"
s_wp:           .asciz ".wp"
s_cpl0:         .asciz ".cpl0"
s_cpl3:         .asciz ".cpl3"
s_read:         .asciz ".read"
s_write:        .asciz ".write"
s_fetch:        .asciz ".fetch"

        .section .bss, "aw", @nobits
name_buf:       .skip 64

        .section .note.GNU-stack, "", @progbits
