#!/usr/bin/env bash
# Build the guest workloads (rzbench) as one static baseline x86-64 binary with the host's gcc.
# See README.md here. test-images/linux/build.sh calls this for the yardstick's initramfs.
#
# Usage: test-images/workloads/build.sh OUTPUT
#   writes the binary to OUTPUT. Needs gcc and libc6-dev (the static libc.a): as root the
#   script installs missing ones with apt-get, otherwise it stops with the command to run.
#   `build.sh --toolchain` prints the toolchain identity (gcc and libc versions) and exits:
#   callers fold it into their cache keys.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'workloads: %s\n' "$*" >&2; }
die() {
    printf 'workloads: error: %s\n' "$*" >&2
    exit 1
}

# Baseline x86-64 only: ringzero's BT advertises an x86-64-v1 CPU (SSE2, CX16, POPCNT, MOVBE,
# LZCNT). -fno-pie/-no-pie keeps a classic static executable (no self-relocation at start).
CFLAGS=(-static -O2 -march=x86-64 -mtune=generic -fno-pie -no-pie -std=gnu11 -Wall -Wextra
    -Werror -s)

libc_a() { gcc -print-file-name=libc.a 2>/dev/null; }

have_toolchain() {
    command -v gcc >/dev/null || return 1
    local a
    a=$(libc_a)
    [[ $a == /* && -f $a ]]
}

# The gcc and libc the binary comes from; a different toolchain may give different bytes.
toolchain_id() {
    gcc --version 2>/dev/null | head -n1 || echo "no gcc"
    dpkg-query -W -f='${Package} ${Version}\n' libc6-dev 2>/dev/null || echo "no libc6-dev"
}

ensure_toolchain() {
    have_toolchain && return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        die "needs gcc and the static C library: run \`sudo apt-get install -y gcc libc6-dev\` and retry"
    fi
    log "installing gcc libc6-dev"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >&2; } ||
        die "apt-get install gcc libc6-dev failed"
    have_toolchain || die "gcc still cannot find libc.a after installing libc6-dev"
}

main() {
    [[ $# == 1 ]] || die "usage: $0 OUTPUT | --toolchain"
    if [[ $1 == --toolchain ]]; then
        toolchain_id
        return 0
    fi
    local out=$1
    ensure_toolchain
    log "gcc ${CFLAGS[*]} rzbench.c -> $out"
    gcc "${CFLAGS[@]}" -o "$out.tmp" "$HERE/rzbench.c"
    mv -f "$out.tmp" "$out"
}

main "$@"
