#!/usr/bin/env python3
"""Reference implementation of the demo guest's ring-3 compute kernel (demo.S, section .user).

Written independently of the assembly from the same description; prints the line the guest must
print. Run once when the kernel or its parameters change and paste the line into
expected-output.txt:  python3 test-images/demo/checksum.py
"""

N_WORDS = 4096
ROUNDS = 512
XORSHIFT_SEED = 0x9E3779B97F4A7C15
FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def rotl64(x, s):
    s &= 63
    return ((x << s) | (x >> (64 - s))) & M64 if s else x


def checksum():
    x = XORSHIFT_SEED
    buf = []
    for _ in range(N_WORDS):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        buf.append(x & M32)

    h = FNV_BASIS
    for r in range(ROUNDS):
        for i in range(N_WORDS):
            a = buf[i]
            b = buf[a & (N_WORDS - 1)]
            h = ((h ^ a) * FNV_PRIME) & M64
            buf[i] = ((a + 3 * b) & M32) if a & 1 else ((a >> 3) ^ b)
        q, rem = divmod(h, 2 * r + 3)
        h = (h + (q ^ rem)) & M64
        h = rotl64(h, r)

    return h ^ sum(buf)


if __name__ == "__main__":
    print(f"demo: checksum=0x{checksum():016x}")
