# systest smc: self-modifying code (README.md, "smc"). Each piece of code is run many times
# before it is changed (so a translator has compiled it), then changed and run again.

        .include "../systests/systest.inc"

        .equ HOT, 3000                      # runs before the change
        .equ VA_ALIAS_X, WINDOW + 0xC000    # pt_win[12]: the frame, read-only, executable
        .equ VA_ALIAS_W, WINDOW + 0xD000    # pt_win[13]: the same frame, writable, NX
        .equ ALIAS_FRAME, 0x3000            # offset in win_pages

        .section .text, "ax"
        .code32
main32:
        # --- 32-bit PM: patch an immediate, then run it.
        mov ecx, HOT
1:      call imm32_fn
        loop 1b
        CHECK "pm32.imm-before", 0x11111111, eax
        mov dword ptr [imm32_fn + 1], 0x22222222
        call imm32_fn
        CHECK "pm32.imm-after-patch", 0x22222222, eax

        # --- 32-bit PM: each pass stores into the next instruction's immediate, then runs it.
        xor edx, edx
        xor ecx, ecx
1:      mov [next32 + 1], cl
next32: mov al, 0                           # immediate rewritten just above
        movzx eax, al
        add edx, eax
        inc ecx
        cmp ecx, 200
        jb 1b
        CHECK "pm32.next-insn-sum", 19900, edx

        ENTER_LONG
        # --- 64-bit: immediate patch.
        mov ecx, HOT
1:      call imm64_fn
        loop 1b
        mov rdx, 0x1111111111111111
        CHECK64 "lm.imm-before", rdx, rax
        mov rax, 0x2222222233333333
        mov [imm64_fn + 2], rax
        call imm64_fn
        mov rdx, 0x2222222233333333
        CHECK64 "lm.imm-after-patch", rdx, rax

        # --- 64-bit: straight-line next instruction, opcode too: add <-> sub.
        xor edx, edx
        xor ecx, ecx
1:      mov byte ptr [next64], 0x48         # REX.W
        mov byte ptr [next64 + 1], 0x83     # group 1, imm8
        mov al, 0xC2                        # add rdx, imm8
        test ecx, 1
        jz 2f
        mov al, 0xEA                        # sub rdx, imm8
2:      mov [next64 + 2], al
        mov [next64 + 3], cl
next64: add rdx, 0                          # 48 83 c2 ib, rewritten above
        inc ecx
        cmp ecx, 100
        jb 1b
        CHECK64 "lm.next-insn-add-sub", -50, rdx   # 0 - 1 + 2 - 3 ... - 99

        # --- 64-bit: the instruction right after the store, same block, many passes.
        xor edx, edx
        mov ecx, 1000
1:      mov byte ptr [next64b + 1], 7
next64b: mov dl, 3                          # b2 ib: becomes mov dl, 7 before it runs
        dec ecx
        jnz 1b
        CHECK64 "lm.store-then-next-insn", 7, rdx

        # --- 64-bit: code changed through a second (aliased) mapping of its frame.
        mov rax, offset win_pages + ALIAS_FRAME + PTE_P
        mov [pt_win + 12 * 8], rax          # executable, read-only
        mov rax, offset win_pages + ALIAS_FRAME + PTE_P + PTE_W
        bts rax, 63
        mov [pt_win + 13 * 8], rax          # writable, NX
        mov rax, cr3
        mov cr3, rax
        mov rdi, VA_ALIAS_W
        mov byte ptr [rdi], 0xB8            # mov eax, imm32
        mov dword ptr [rdi + 1], 0xAAAA0001
        mov byte ptr [rdi + 5], 0xC3        # ret
        mov rbx, VA_ALIAS_X
        mov ecx, HOT
1:      call rbx
        loop 1b
        CHECK64 "lm.alias-before", 0xAAAA0001, rax
        mov dword ptr [rdi + 1], 0xBBBB0002
        call rbx
        CHECK64 "lm.alias-after-write-through-alias", 0xBBBB0002, rax
        # The code frame written through its identity mapping (physical alias).
        mov dword ptr [win_pages + ALIAS_FRAME + 1], 0xCCCC0003
        call rbx
        CHECK64 "lm.alias-after-write-through-identity", 0xCCCC0003, rax
        # A whole new routine over the old one (rep movsb), longer than the old one.
        mov esi, offset new_routine
        mov rdi, VA_ALIAS_W
        mov ecx, new_routine_end - new_routine
        rep movsb
        mov edx, 5
        call rbx
        CHECK64 "lm.alias-rep-movsb-new-routine", 0x500, rax

        # --- 64-bit: a write to data sharing the code's page does not disturb the code.
        mov ecx, HOT
1:      call imm64_fn
        mov [imm64_fn_data], rcx
        loop 1b
        mov rdx, 0x2222222233333333
        CHECK64 "lm.data-in-code-page", rdx, rax
        jmp finish64

        .code32
imm32_fn:
        mov eax, 0x11111111                 # b8 id
        ret
        .code64
imm64_fn:
        mov rax, 0x1111111111111111         # 48 b8 iq
        ret
imm64_fn_data:  .quad 0                     # data right after the code, same page
new_routine:                                # rax = rdx << 8, through a loop
        xor eax, eax
        mov ecx, 8
1:      add rdx, rdx
        loop 1b
        mov rax, rdx
        ret
new_routine_end:

        .section .note.GNU-stack, "", @progbits
