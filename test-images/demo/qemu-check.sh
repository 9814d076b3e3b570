#!/bin/sh
# Dev check, not part of `cargo test`: runs the demo and flat guests under QEMU TCG (SeaBIOS boots
# a floppy whose boot sector, qemu-boot.S, loads the image and recreates ringzero's flat entry
# state) and compares their serial output and exit status with what ringzero must produce.
# The multiboot kernel needs no wrapper: qemu-system-x86_64 -kernel loads it (see its README).
#
# Needs binutils and qemu-system-x86 (apt-get install -y qemu-system-x86). Exit 0 if both match.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
images=$(cd "$here/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# build NAME ARCH(32|64) EMULATION: the same as/ld/objcopy steps as build.rs.
build() {
    as "--$2" --fatal-warnings -I "$images/common" -o "$tmp/$1.o" "$images/$1/$1.S"
    ld -m "$3" --fatal-warnings --no-warn-rwx-segments --build-id=none -z noexecstack \
        -T "$images/$1/$1.ld" -o "$tmp/$1.elf" "$tmp/$1.o"
    objcopy -O binary "$tmp/$1.elf" "$tmp/$1.bin"
}

# run NAME LOAD_ADDR EXPECTED_STATUS: boots the image, diffs the serial output.
run() {
    size=$(wc -c < "$tmp/$1.bin")
    sectors=$(( (size + 511) / 512 ))
    as --32 --fatal-warnings -I "$images/common" --defsym LOAD_ADDR="$2" \
        --defsym SECTORS="$sectors" -o "$tmp/boot-$1.o" "$here/qemu-boot.S"
    ld -m elf_i386 --fatal-warnings --no-warn-rwx-segments --build-id=none -z noexecstack \
        -Ttext 0x7c00 -e _start -o "$tmp/boot-$1.elf" "$tmp/boot-$1.o"
    objcopy -O binary -j .text "$tmp/boot-$1.elf" "$tmp/boot-$1.bin"
    cat "$tmp/boot-$1.bin" "$tmp/$1.bin" > "$tmp/$1.img"
    truncate -s 1474560 "$tmp/$1.img"
    status=0
    timeout 120 qemu-system-x86_64 -accel tcg -m 64 -display none -no-reboot -serial stdio \
        -monitor none -device isa-debug-exit,iobase=0xf4,iosize=4 -device pc-testdev \
        -drive "file=$tmp/$1.img,if=floppy,format=raw" -boot a \
        > "$tmp/$1.out" || status=$?
    # SeaBIOS may print to the serial port before our first line; keep our lines only.
    grep -a "^$1: " "$tmp/$1.out" | tr -d '\r' > "$tmp/$1.lines" || true
    if diff -u "$images/$1/expected-output.txt" "$tmp/$1.lines" && [ "$status" -eq "$3" ]; then
        echo "qemu-check: $1 ok (status $status)"
    else
        echo "qemu-check: $1 FAILED (status $status, want $3)"
        return 1
    fi
}

build demo 64 elf_x86_64
build flat 32 elf_i386
fail=0
run demo 0x8000 33 || fail=1
run flat 0x10000 17 || fail=1
exit $fail
